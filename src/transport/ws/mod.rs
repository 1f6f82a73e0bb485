//! The WebSocket transport: `GET /ws`.
//!
//! The upgrade is done here rather than by warp's `ws()` filter so that we choose the
//! `WebSocketConfig`: warp's filter gives every socket tungstenite's 128 KiB read buffer,
//! eagerly allocated, which is most of an idle connection's memory. We use a few KiB.
//!
//! The socket is split at the upgrade. Its write half belongs to the connection's outbox
//! (through [`wire::TcpTransport`]): whoever sends a frame (a fan-out, the session reactor,
//! the reader answering a ping) writes it to the socket directly. tungstenite reads and
//! parses the client's frames from the read half, and what it writes itself (pongs, the
//! reply to a client's close) goes through the outbox too, so frames never interleave.
//! [`conn`] is the connection's state machine.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

pub mod conn;
pub mod wire;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use warp::http::{header, Request, Response, StatusCode};
use warp::reply::Reply;

use super::PeerAddr;
use crate::error::{ApiError, ErrorCode};
use crate::hub::{Handle, Outbox};
use crate::listener::{FdHold, Pending, WithFirstFrame};
use crate::node::{Attached, Handshake, Node};

/// What tungstenite sees as its stream: reads from the socket's read half, writes into the
/// connection's outbox (which owns the write half).
struct Duplex {
    read: OwnedReadHalf,
    handle: Arc<Handle>,
    /// The socket's place in the listener's open-file estimate, given back with it.
    _hold: FdHold,
}

impl AsyncRead for Duplex {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Duplex {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.handle.outbox.push_raw(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Read buffer per socket, allocated up front by tungstenite and kept for the socket's life.
/// Client frames are small (ping, ack, refresh, session.update: tens of bytes); a larger
/// one is still read whole, the buffer growing for it, in reads of this size (a 64 KiB
/// session.update takes 512 reads). 1 KiB instead of 4 KiB measured 3 KiB less RSS per
/// idle connection, 256 B instead of 1 KiB 0.8 KiB less (6.00 to 5.21 KiB at 15,000), and
/// 128 B instead of 256 B 0.14 KiB less (5.06 to 4.92 KiB).
const READ_BUFFER: usize = 128;

fn is_websocket_key(key: &[u8]) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|nonce| nonce.len() == 16)
}

/// Answers `GET /ws`: validates the upgrade request, replies 101 and spawns the connection
/// task; anything else gets a plain JSON error, never a hang.
pub async fn handle<B>(
    node: Arc<Node>,
    mut req: Request<B>,
) -> Result<warp::reply::Response, Infallible> {
    let error = |code: ErrorCode, message: &str| {
        let e = ApiError::new(code, message);
        Ok(warp::reply::with_status(warp::reply::json(&e.body()), e.status).into_response())
    };
    if req.method() != warp::http::Method::GET {
        let mut r = error(
            ErrorCode::MethodNotAllowed,
            "use GET with a WebSocket upgrade",
        )?;
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return Ok(r);
    }
    // RFC 6455 §4.1: the opening handshake is an HTTP/1.1 (or later) GET.
    if req.version() < warp::http::Version::HTTP_11 {
        return error(
            ErrorCode::BadRequest,
            "a WebSocket upgrade needs HTTP/1.1 or later",
        );
    }
    let headers = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return error(
            ErrorCode::BadRequest,
            "this endpoint needs a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)",
        );
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        let mut r = error(
            ErrorCode::BadRequest,
            "unsupported WebSocket version; use 13",
        )?;
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            header::HeaderValue::from_static("13"),
        );
        return Ok(r);
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return error(ErrorCode::BadRequest, "missing Sec-WebSocket-Key");
    };
    // RFC 6455 §4.1: a nonce of 16 random bytes, base64-encoded (24 characters).
    if !is_websocket_key(key.as_bytes()) {
        return error(
            ErrorCode::BadRequest,
            "Sec-WebSocket-Key must be the base64 of 16 bytes",
        );
    }
    let key = derive_accept_key(key.as_bytes());
    if !node.is_ready() {
        return error(ErrorCode::Unavailable, "starting up; retry shortly");
    }
    // A connection is a write (its record, then `welcome` once durable): refused before the
    // upgrade while the store cannot take writes, with the store's code, always 503 (the
    // status a client retries).
    if let Err((code, _)) = node.admit_write() {
        let e = ApiError::store_refused_connect(code);
        return Ok(
            warp::reply::with_status(warp::reply::json(&e.body()), e.status).into_response(),
        );
    }
    let peer = req.extensions().get::<PeerAddr>().map(|p| p.0);
    let hs = super::handshake(&node.config, req.headers(), req.uri().query(), peer);
    // A client whose credential came with the request sends nothing before its welcome:
    // the 101 can wait and go out with it, one write and one segment instead of two.
    let with_welcome = hs.credential.is_some();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let pending = Pending::take(&mut req);

    let guard = node.tasks.enter();
    // One task for the handshake and the connection's life. The handshake's future is
    // boxed here, before the spawn, so that the task captures only the box: its state is
    // freed when it is done instead of staying in the task for as long as the connection
    // lives, and the task then holds `serve`'s state.
    let upgrading = Box::pin(upgrade(node, on_upgrade, hs, pending));
    tokio::spawn(async move {
        let Some((node, ws, handle, attached)) = upgrading.await else {
            return;
        };
        conn::serve(node, ws, handle, attached, guard).await;
    });

    let mut res = Response::new(Default::default());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        header::HeaderValue::from_str(&key).expect("base64 is a valid header value"),
    );
    if with_welcome {
        res.extensions_mut().insert(WithFirstFrame);
    }
    Ok(res)
}

/// Takes the upgraded socket from hyper and authenticates it; the connection, once it is
/// Active and has its `welcome`, or None once it has been refused (or the upgrade failed).
async fn upgrade(
    node: Arc<Node>,
    on_upgrade: hyper::upgrade::OnUpgrade,
    hs: Handshake,
    pending: Option<Pending>,
) -> Option<(Arc<Node>, WebSocketStream<Duplex>, Arc<Handle>, Attached)> {
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "WebSocket upgrade failed");
            return None;
        }
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(node.config.max_message_bytes))
        .max_frame_size(Some(node.config.max_message_bytes));
    // The listener serves plain TCP streams, so the downcast holds; the bytes hyper read
    // past the request (a client that did not wait for the 101) are tungstenite's first.
    let Ok(parts) = upgraded.downcast::<TokioIo<crate::listener::Watched>>() else {
        tracing::error!("WebSocket upgrade on a stream that is not TCP");
        return None;
    };
    let (tcp, hold, head) = parts.io.into_inner().into_parts();
    let (read, write) = tcp.into_split();
    // What hyper read past the request is a view into its whole read buffer (8 KiB or
    // more): copy the few bytes out and let the buffer go now, not when the handshake
    // is done, so that a burst of handshakes in flight holds less.
    let early = parts.read_buf.to_vec();
    drop(parts.read_buf);
    let handle = Handle::new(
        Outbox::new(
            Box::new(wire::TcpTransport::new(write, head)),
            node.config.outbound_queue_bytes,
            node.metrics.clone(),
        ),
        node.config.messages_per_minute,
    );
    let duplex = Duplex {
        read,
        handle: handle.clone(),
        _hold: hold,
    };
    let mut ws =
        WebSocketStream::from_partially_read(duplex, early, Role::Server, Some(config)).await;
    let attached = conn::establish(&node, &mut ws, &handle, hs, pending).await?;
    Some((node, ws, handle, attached))
}
