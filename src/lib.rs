//! tether keeps WebSocket and SSE connections tied to their users and sessions, and keeps
//! them across restarts.
//!
//! # A walk through the layout
//!
//! A request arrives at the listener in [`server`], which wires the pieces together and
//! shuts them down cleanly. Each accepted connection is served by [`listener`]: its
//! timeouts, the cap on unauthenticated ones, the open-file reserve, and what is refused
//! before any route sees it. `GET /ws` goes to [`transport::ws`], which performs the
//! WebSocket upgrade itself (to choose small socket buffers) and runs one connection's state
//! machine ([`transport::ws::conn`]); `GET /sse` goes to [`transport::sse`]; every other
//! route is in [`api`], one module per resource. A panic anywhere is one log line
//! ([`panics`]).
//!
//! Every transport and route talks to the [`node`]: the coordinator that owns the
//! configuration ([`config`]), the authenticator ([`auth`]: JWT, API keys, and [`secrets`]
//! generated on first start), the live sockets and the state of record. [`node::Node::connect`]
//! is the one connection lifecycle; every API mutation is a node method that returns once
//! its write is durable.
//!
//! The node's live sockets are in the [`hub`]: one [`hub::Handle`] per connection with a
//! socket here, sharded by user, each with its bounded [`hub::Outbox`] written through a
//! small [`hub::Transport`] (one per wire). The hub knows nothing of storage.
//!
//! The state of record is behind the traits of [`store`]: connections (records, indexes,
//! `seq`, replay buffers, resume tokens, limits), sessions and the event log. Its first
//! implementation is [`store::embedded`]: sled under the data directory, records in memory
//! and written through, values encoded by [`codec`] (bincode behind a version byte) and made
//! durable by group commit ([`durability`]); [`space`] keeps it from ever filling its disk
//! (below a reserve of free space, writes are refused until space is back).
//!
//! Changes travel over the [`bus`] as typed events (`session:*`, `connection:events`, and
//! commands addressed to a node); the node's reactor turns them into frames and closes.
//! [`protocol`] is the wire: client and server frames, close codes; [`error`] is the one
//! error body and the one mapping to HTTP statuses. [`model`] holds the records and their
//! JSON shapes, [`metrics`] the counters of `/metrics`, [`backup`] the `backup`, `restore`
//! and `inspect` commands ([`running`] finds the server running on a data directory, for
//! them and for `listen`), [`listen`] the terminal client, [`time`] and [`sync`] small
//! shared pieces.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod backup;
pub mod bus;
pub mod codec;
pub mod config;
pub mod durability;
pub mod error;
pub mod hub;
pub mod listen;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod node;
pub mod panics;
pub mod protocol;
pub mod running;
pub mod secrets;
pub mod server;
pub mod space;
pub mod store;
pub mod sync;
pub mod time;
pub mod transport;
