//! A WebSocket's side of the outbox: frames with the RFC 6455 header, written straight to
//! the TCP socket's write half.

use std::io::{self, IoSlice, Write};
use std::task::{Context, Poll};

use socket2::SockRef;
use tokio::net::tcp::OwnedWriteHalf;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use uuid::Uuid;

use crate::hub::{Head, Out, Transport};
use crate::model::ConnType;

pub struct TcpTransport {
    half: OwnedWriteHalf,
    /// The `101` response held back to go out with the first frame (empty once written).
    head: Box<[u8]>,
}

impl TcpTransport {
    /// `head` goes out before, and with, the first write.
    pub fn new(half: OwnedWriteHalf, head: Vec<u8>) -> TcpTransport {
        TcpTransport {
            half,
            head: head.into_boxed_slice(),
        }
    }

    fn send(&mut self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        // Straight to the socket: tokio's readiness bookkeeping is one more cache miss per
        // socket in a fan-out. Only a full socket goes through tokio, so that it knows to
        // wake the writer when there is room again.
        match SockRef::from(self.half.as_ref()).send_vectored(parts) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.half.try_write_vectored(parts),
            r => r,
        }
    }

    /// Writes the held head and `parts` in one call; answers how much of `parts` went (0
    /// while some of the head is still to go).
    fn send_after_head(&mut self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        let head = std::mem::take(&mut self.head);
        let mut all = [IoSlice::new(&[]); 4];
        all[0] = IoSlice::new(&head);
        let n = parts.len().min(3);
        all[1..=n].copy_from_slice(&parts[..n]);
        let written = match self.send(&all[..=n]) {
            Ok(w) => w,
            Err(e) => {
                self.head = head;
                return Err(e);
            }
        };
        if written < head.len() {
            self.head = head[written..].into();
            return Ok(0);
        }
        Ok(written - head.len())
    }
}

fn header(opcode: OpCode, len: usize, head: &mut Head) {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    header
        .format(len as u64, head)
        .expect("a frame header fits in the head");
}

impl Transport for TcpTransport {
    fn kind(&self) -> ConnType {
        ConnType::WebSocket
    }

    fn frame(&self, out: &Out<'_>, _connection: &Uuid, head: &mut Head) -> &'static [u8] {
        match *out {
            Out::Text { text, .. } => header(OpCode::Data(Data::Text), text.len(), head),
            Out::Ping => header(OpCode::Control(Control::Ping), 0, head),
            Out::Pong(p) => header(OpCode::Control(Control::Pong), p.len(), head),
            Out::Close { code, reason } => {
                // The close payload is small: it goes into the head with its header.
                header(OpCode::Control(Control::Close), 2 + reason.len(), head);
                let _ = head.write_all(&code.to_be_bytes());
                let _ = head.write_all(reason.as_bytes());
            }
            Out::Raw(_) => {}
        }
        &[]
    }

    fn try_write(&mut self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.head.is_empty() {
            self.send(parts)
        } else {
            self.send_after_head(parts)
        }
    }

    fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.half.as_ref().poll_write_ready(cx)
    }

    fn shut(&mut self) {
        let _ = SockRef::from(self.half.as_ref()).shutdown(std::net::Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::StreamExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    use super::*;
    use crate::hub::Outbox;
    use crate::metrics::Metrics;
    use crate::protocol::FrameTemplate;

    /// A real loopback TCP pair: the server side's write half in an outbox, the client side
    /// returned unread.
    async fn wired_pair(limit: usize) -> (Outbox, TcpStream, tokio::net::tcp::OwnedReadHalf) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read, write) = server.into_split();
        let outbox = Outbox::new(
            Box::new(TcpTransport::new(write, Vec::new())),
            limit,
            Arc::new(Metrics::default()),
        );
        (outbox, client, read)
    }

    /// A held `101` larger than the socket takes at once: what is left of it goes first, and
    /// the frames pushed meanwhile follow it whole and in order.
    #[tokio::test]
    async fn a_held_head_the_socket_takes_in_parts_goes_out_whole_before_the_frames() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_read, write) = server.into_split();
        let head: Vec<u8> = (0..8_000_000u32).map(|i| (i % 251) as u8).collect();
        let outbox = Outbox::new(
            Box::new(TcpTransport::new(write, head.clone())),
            1 << 20,
            Arc::new(Metrics::default()),
        );
        outbox.open(r#"{"w":1}"#, &[], 0);
        let t = FrameTemplate::message(r#"{"after":"head"}"#, "t");
        assert!(outbox.push_seq(&t, 1));
        assert!(outbox.backlog() > 0, "the socket took the head in parts");
        outbox.close(crate::protocol::Disconnect::shutdown());
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; head.len()];
            client.read_exact(&mut got).await.unwrap();
            assert!(got == head, "the head arrived whole and first");
            let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
            let mut texts = Vec::new();
            while let Some(m) = ws.next().await {
                match m.expect("every frame intact") {
                    Message::Text(t) => texts.push(t.to_string()),
                    Message::Close(_) => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            texts
        });
        tokio::time::timeout(std::time::Duration::from_secs(20), outbox.write_out())
            .await
            .expect("the head and the frames went out")
            .expect("the socket is fine");
        let texts = tokio::time::timeout(std::time::Duration::from_secs(20), reader)
            .await
            .expect("the client read the head and every frame")
            .unwrap();
        assert_eq!(texts[0], r#"{"w":1}"#);
        assert!(texts[1].contains(r#""after":"head""#), "{texts:?}");
        assert!(texts[2].contains("disconnect"), "{texts:?}");
    }

    /// A client that stops reading: frames larger than the queue limit fill the socket until
    /// one is taken only in part. That one must still go out whole, then the overflow
    /// closes with 4010, and a client reading again finds every frame intact, in order,
    /// followed by `disconnect` and the close frame.
    #[tokio::test]
    async fn a_frame_the_socket_took_in_part_is_finished_before_the_4010_close() {
        let limit = 4096;
        let (outbox, client, _read) = wired_pair(limit).await;
        outbox.open("{}", &[], 0);
        let pad = "x".repeat(16 * 1024);
        let mut pushed = 0u64;
        while outbox.backlog() == 0 {
            let t = FrameTemplate::message(&format!(r#"{{"i":{pushed},"pad":"{pad}"}}"#), "t");
            assert!(outbox.push_seq(&t, pushed + 1));
            pushed += 1;
            assert!(pushed < 100_000, "the socket never filled");
        }
        // The last frame was cut by a full socket: what is left of it passes the limit but
        // stays queued; the next push is the overflow.
        let t = FrameTemplate::message(&format!(r#"{{"i":{pushed},"pad":"{pad}"}}"#), "t");
        assert!(!outbox.push_seq(&t, pushed + 1));
        assert_eq!(outbox.closing().map(|d| d.code.as_u16()), Some(4010));

        let reader = tokio::spawn(async move {
            let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
            let mut frames = Vec::new();
            while let Some(m) = ws.next().await {
                match m.expect("every frame intact") {
                    Message::Close(f) => return (frames, f.map(|f| u16::from(f.code))),
                    Message::Text(t) => {
                        frames.push(serde_json::from_str::<serde_json::Value>(&t).unwrap())
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            (frames, None)
        });
        let closed = tokio::time::timeout(std::time::Duration::from_secs(10), outbox.write_out())
            .await
            .expect("the backlog and the close went out")
            .expect("the socket is fine");
        assert_eq!(closed.code.as_u16(), 4010);
        let (frames, close) = reader.await.unwrap();
        assert_eq!(close, Some(4010));
        let (messages, last) = frames.split_at(frames.len() - 1);
        assert_eq!(last[0]["type"], "disconnect");
        assert_eq!(last[0]["code"], 4010);
        // The welcome, then every message in order.
        assert_eq!(messages[0], serde_json::json!({}));
        let seen: Vec<u64> = messages[1..]
            .iter()
            .map(|m| m["data"]["i"].as_u64().unwrap())
            .collect();
        assert_eq!(seen, (0..pushed).collect::<Vec<_>>());
    }
}
