//! tether keeps WebSocket and SSE connections tied to their users and sessions, and keeps
//! them across restarts.
//!
//! # A walk through the layout
//!
//! A request arrives at the listener in [`server`], which owns the accept loop, the
//! background tasks (expiry sweeper, session reactor) and graceful shutdown. Each accepted
//! connection is served by [`listener`]: its timeouts, the cap on unauthenticated ones, the
//! open-file reserve, and what is refused before any route sees it. `GET /ws` goes to
//! [`transport::ws`], which performs the WebSocket upgrade itself (to choose small socket
//! buffers) and runs one connection's state machine; `GET /sse` goes to [`transport::sse`];
//! every other route is in [`api`], one `match` over method and path.
//!
//! A connection proves who it is through [`auth`] (JWT, API key) or [`sessions`] (a
//! server-side session id), and is then registered in the [`registry`], the seed's
//! ConnectionManager: who is connected where, with which metadata, under which limits. The
//! registry answers from memory, sharded by user id, and writes every change through to the
//! sled [`store`]; values are encoded by [`codec`] (bincode behind a version byte), and
//! [`durability`] makes writes durable with one shared flush per burst (group commit) before
//! anything is acknowledged.
//!
//! Each connection has an [`transport::outbox::Outbox`]: producers hand it frames without
//! waiting; a WebSocket's outbox writes them to the socket at once and queues, boundedly,
//! only what the socket does not take, which the connection's writer sends later. Every `message` and
//! `session.updated` a connection is sent gets the next `seq` and is also kept in its replay
//! buffer in sled, so a client that comes back after a restart or a lost socket resumes
//! ([`registry::Registry::register`] migrates the old record to the new id) and is sent
//! what it missed, in order.
//!
//! Session changes travel over the [`bus`] (an in-process stand-in for Redis pub/sub);
//! [`sessions::run_reactor`] is the one subscriber that turns them into frames and closes.
//! Lifecycle events are kept in a bounded log ([`events`]) and mirrored on the bus.
//! [`metrics`] serves `/metrics`; [`config`] and [`secrets`] turn files, environment and
//! flags into a [`config::Config`]; [`backup`] copies a data directory in and out; [`panics`]
//! makes every panic one log line.

#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod auth;
pub mod backup;
pub mod bus;
pub mod codec;
pub mod config;
pub mod durability;
pub mod error;
pub mod events;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod panics;
pub mod registry;
pub mod secrets;
pub mod server;
pub mod sessions;
pub mod store;
pub mod sync;
pub mod time;
pub mod transport;
