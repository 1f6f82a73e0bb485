//! The connection loop in process, without a socket: a channel of client messages in, the
//! frames the outbox writes recorded out, over a real node and store.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use serde_json::{json, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::*;
use crate::hub::{Head, Out, Outbox, Transport};
use crate::model::ConnType;

/// Records each frame the outbox writes; a text frame's payload is its JSON.
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Transport for Recorder {
    fn kind(&self) -> ConnType {
        ConnType::WebSocket
    }
    fn frame(&self, out: &Out<'_>, _: &Uuid, head: &mut Head) -> &'static [u8] {
        use std::io::Write;
        match out {
            Out::Ping => {
                let _ = head.write_all(b"<ping>");
            }
            Out::Close { code, .. } => {
                let _ = write!(head, "<close {code}>");
            }
            _ => {}
        }
        &[]
    }
    fn try_write(&mut self, parts: &[IoSlice<'_>]) -> std::io::Result<usize> {
        let bytes: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        self.0
            .lock()
            .unwrap()
            .push(String::from_utf8(bytes.clone()).unwrap());
        Ok(bytes.len())
    }
    fn poll_write_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn shut(&mut self) {}
}

/// A client socket made of a channel: what the test sends is what the loop reads.
struct Socket(mpsc::UnboundedReceiver<WsResult>);

impl Stream for Socket {
    type Item = WsResult;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WsResult>> {
        self.0.poll_recv(cx)
    }
}

impl Sink<Message> for Socket {
    type Error = tungstenite::Error;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, _: Message) -> Result<(), Self::Error> {
        Ok(())
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

const SECRET: &str = "an in-process test secret of 32+ bytes";

async fn node(dir: &std::path::Path) -> Arc<Node> {
    let config = crate::config::Config {
        data_dir: dir.to_path_buf(),
        jwt_secret: Some(SECRET.into()),
        admin_api_key: Some(format!("tk_{}", "a".repeat(40))),
        ..Default::default()
    };
    let bus: Arc<dyn crate::bus::Bus> = Arc::new(crate::bus::MemoryBus::new(64));
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let lock = crate::store::lock_data_dir(dir).unwrap();
    let store =
        crate::store::EmbeddedStore::open(&config, lock, bus.clone(), metrics.clone(), "n1".into())
            .unwrap();
    let auth = crate::auth::Authenticator::new(config.auth_settings()).unwrap();
    let node = Arc::new(Node::new(
        config,
        auth,
        store.stores(),
        bus,
        metrics,
        "n1".into(),
    ));
    node.recover().await.unwrap();
    node.set_ready(true);
    node
}

fn frames(log: &Mutex<Vec<String>>) -> Vec<Value> {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|f| serde_json::from_str(f).ok())
        .collect()
}

async fn until(log: &Mutex<Vec<String>>, what: impl Fn(&[String]) -> bool) {
    for _ in 0..500 {
        if what(&log.lock().unwrap()) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("never happened; frames: {:?}", log.lock().unwrap());
}

/// A connection's task is what every idle connection keeps: its state must stay small.
#[tokio::test]
async fn the_connection_task_is_small() {
    let tmp = tempfile::tempdir().unwrap();
    let node = node(&tmp.path().join("data")).await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let handle = Handle::new(
        Outbox::new(Box::new(Recorder(log)), 1 << 20, node.metrics.clone()),
        120,
    );
    let (_tx, rx) = mpsc::unbounded_channel();
    let attached = Attached {
        id: uuid::Uuid::nil(),
        user: "u".into(),
        session_id: None,
        window_start: 0,
        window_count: 0,
    };
    let task = serve(node.clone(), Socket(rx), handle, attached, ());
    let size = std::mem::size_of_val(&task);
    eprintln!("connection task state: {size} bytes");
    assert!(size < 1024, "the connection task keeps {size} bytes");
}

#[tokio::test]
async fn first_frame_auth_then_frames_answered_then_abuse_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let node = node(&tmp.path().join("data")).await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let handle = Handle::new(
        Outbox::new(
            Box::new(Recorder(log.clone())),
            1 << 20,
            node.metrics.clone(),
        ),
        120,
    );
    let (tx, rx) = mpsc::unbounded_channel();
    let mut socket = Socket(rx);
    let now = crate::time::now_ms() / 1000;
    let token = crate::auth::mint(
        SECRET.as_bytes(),
        crate::config::JwtAlgorithm::HS256,
        &json!({"sub": "ana", "exp": now + 60}),
    )
    .unwrap();
    let send = |v: Value| tx.send(Ok(Message::text(v.to_string()))).unwrap();
    send(json!({"type": "auth", "token": token}));
    let attached = establish(&node, &mut socket, &handle, Handshake::default(), None)
        .await
        .expect("authenticated by its first frame");
    let welcome = &frames(&log)[0];
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["userId"], "ana");
    assert_eq!(welcome["connectionId"], attached.id.to_string());

    let task = tokio::spawn(serve(
        node.clone(),
        socket,
        handle.clone(),
        attached.clone(),
        (),
    ));
    tx.send(Ok(Message::text(
        r#"{"type":"ping","id":1180591620717411303424}"#,
    )))
    .unwrap();
    send(json!({"type": "session.update", "id": "u1", "updates": {"a": 1}}));
    until(&log, |f| f.len() >= 3).await;
    assert_eq!(
        log.lock().unwrap()[1],
        r#"{"type":"pong","id":1180591620717411303424}"#,
        "the id comes back exactly as sent"
    );
    let err = &frames(&log)[2];
    assert_eq!(err["code"], "no_session");
    assert_eq!(err["id"], "u1");

    // A message through the node reaches this socket with the next seq.
    let d = node.send_to_user("ana", "{\"n\":1}").await.unwrap();
    assert_eq!((d.delivered, d.seq), (1, 1));
    until(&log, |f| {
        f.iter().any(|x| x.contains("\"type\":\"message\""))
    })
    .await;

    // Eleven bad frames in a minute: 4509, and the connection is removed.
    for _ in 0..11 {
        tx.send(Ok(Message::text("not json"))).unwrap();
    }
    until(&log, |f| f.iter().any(|x| x == "<close 4509>")).await;
    drop(tx);
    task.await.unwrap();
    let bad = frames(&log)
        .iter()
        .filter(|f| f["code"] == "bad_frame")
        .count();
    assert_eq!(bad, 10);
    assert!(node.connection(&attached.id).await.is_none(), "removed");
    assert!(node.hub.is_empty());
}
