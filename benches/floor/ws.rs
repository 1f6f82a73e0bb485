//! The bare WebSocket upgrade and the held connection.
//!
//! The upgrade is one write: the `101` and the `welcome` frame together. Nothing is checked
//! but what RFC 6455 needs for the accept key; the token is not verified, only its `sub` is
//! read, to know whose sockets a message goes to. After it tungstenite reads the client's
//! frames with tether's settings (128-byte read buffer, no write buffer), which is what lets
//! the client close cleanly; the floor itself writes only in a fan-out.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use base64::Engine as _;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::fanout::{Peer, Sockets};
use super::http::Request;

/// tether's read buffer (`READ_BUFFER` in `src/transport/ws/mod.rs`).
const READ_BUFFER: usize = 128;

/// tether's `WebSocketConfig` for a socket, with its default message limit (64 KiB).
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024))
}

/// A `GET` asking for a WebSocket with a key.
pub fn is_upgrade(req: &Request) -> bool {
    req.method == "GET"
        && req.has_token("upgrade", "websocket")
        && req.has_token("connection", "upgrade")
        && req.header("sec-websocket-key").is_some()
}

/// Who a connection is for: the `sub` of its token, read without checking the signature
/// (empty when there is none).
fn user_of(req: &Request) -> String {
    #[derive(serde::Deserialize)]
    struct Claims {
        sub: String,
    }
    req.query("token")
        .and_then(|t| t.split('.').nth(1))
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<Claims>(&b).ok())
        .map(|c| c.sub)
        .unwrap_or_default()
}

/// Upgrades, sends the `welcome`, registers the socket for fan-outs and reads until the
/// client closes.
pub async fn serve(mut tcp: TcpStream, req: Request, rest: Vec<u8>, sockets: Arc<Sockets>) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, Relaxed);
    let key = req.header("sec-websocket-key").unwrap_or("");
    let user = user_of(&req);
    let welcome = format!(
        "{{\"type\":\"welcome\",\"connectionId\":\"{id}\",\"userId\":{},\"resumeToken\":\"\",\"seq\":0}}",
        serde_json::Value::String(user.clone())
    );
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    )
    .into_bytes();
    // The welcome is shorter than 126 bytes for any user id under 60 or so; a longer one
    // takes the 16-bit length.
    out.push(0x81);
    if welcome.len() < 126 {
        out.push(welcome.len() as u8);
    } else {
        out.push(126);
        out.extend_from_slice(&(welcome.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(welcome.as_bytes());
    if tcp.write_all(&out).await.is_err() {
        return;
    }
    let peer = Arc::new(Peer::new(tcp));
    sockets.add(&user, id, peer.clone());
    let mut ws =
        WebSocketStream::from_partially_read(Shared(peer), rest, Role::Server, Some(config()))
            .await;
    // Pings are answered and a close is replied to by tungstenite as it reads; the reply is
    // flushed before the socket goes.
    while let Some(Ok(_)) = ws.next().await {}
    let _ = futures_util::SinkExt::flush(&mut ws).await;
    sockets.remove(&user, id);
}

/// The socket as tungstenite's stream, shared with the fan-out (which writes to it without
/// tokio): reads and tungstenite's own writes go through tokio's readiness.
struct Shared(Arc<Peer>);

impl AsyncRead for Shared {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.tcp.poll_read_ready(cx))?;
            match self.0.tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Shared {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.tcp.poll_write_ready(cx))?;
            match self.0.tcp.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = socket2::SockRef::from(&self.0.tcp).shutdown(std::net::Shutdown::Write);
        Poll::Ready(Ok(()))
    }
}
