//! The front door: every TCP connection from accept until it is a WebSocket or closes.
//!
//! The accept loop in [`crate::server`] hands each accepted socket to [`Admission::admit`]
//! and spawns [`Admitted::serve`], which runs hyper's HTTP/1 connection under a watchdog.
//! A connection is in one of these phases, each with its own bound:
//!
//! | phase | ends when | bound |
//! | --- | --- | --- |
//! | first request's headers | the request is read | `http_header_timeout_ms` from accept |
//! | a request's body | its last byte is read | `http_body_timeout_ms` from the headers (then 408) |
//! | the request is served | the response is written | none: routes, SSE streams and upgrades end on their own |
//! | kept alive, silent | a byte of the next request arrives | `http_idle_timeout_ms` from the response |
//! | next request's headers | the request is read | `http_header_timeout_ms` from its first byte |
//!
//! A connection is *pending* from accept until it has completed a request, or, for `/ws`,
//! until the upgraded socket has authenticated (first-frame auth included: the upgrade takes
//! a [`Pending`] token with it). At most `max_pending_connections` are pending; one more
//! closes the oldest. Near the process's open-file limit ([`fds`]), idle kept-alive
//! connections and then pending ones are closed, oldest first, so that descriptors stay free
//! for `/health`, the store and authenticated clients. Authenticated WebSockets and SSE
//! streams are never closed by this module.
//!
//! Before a route sees a request, [`front`] answers what no route should have to: a request
//! target that is not a path (400), a declared body over `max_body_bytes` (413, before a
//! byte of it is read or a `100 Continue` is sent), and `HEAD` (served as `GET`; hyper sends
//! the headers without the body). A panic in a route becomes a JSON 500 on that request.

mod admission;
mod clock;
mod connection;
pub mod fds;
mod front;

pub use admission::{Admission, Admitted, FdHold, Pending};
pub use connection::Watched;
pub use front::{boxed, ConnAbort, Inner, PeerAddr, RequestBody, WithFirstFrame};

/// How long a connection may spend in each phase, from the configuration (milliseconds).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header_ms: u64,
    pub idle_ms: u64,
    pub body_ms: u64,
}

impl Timeouts {
    pub fn from_config(config: &crate::config::Config) -> Timeouts {
        Timeouts {
            header_ms: config.http_header_timeout_ms,
            idle_ms: config.http_idle_timeout_ms,
            body_ms: config.http_body_timeout_ms,
        }
    }
}
