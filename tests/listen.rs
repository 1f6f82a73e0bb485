//! `tether listen`, the terminal client, against the real server: every frame a JSON line,
//! resumed by itself across restarts with nothing lost and nothing printed twice.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::Server;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// A port nobody holds now, for a server that must come back on the same one.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Listen {
    child: Child,
    out: Lines<BufReader<ChildStdout>>,
}

impl Listen {
    fn start(args: &[&str]) -> Listen {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .arg("listen")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap()).lines();
        Listen { child, out }
    }

    /// The next line on stdout, as JSON.
    async fn frame(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(20), self.out.next_line())
            .await
            .expect("a line within 20 s")
            .unwrap()
            .expect("stdout still open");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// The next frame of `kind`, with every frame before it.
    async fn until(&mut self, kind: &str) -> (Value, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let f = self.frame().await;
            if f["type"] == kind {
                return (f, before);
            }
            before.push(f);
        }
    }

    async fn send_line(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    async fn stderr(mut self) -> String {
        let mut err = String::new();
        use tokio::io::AsyncReadExt;
        let _ = self
            .child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await;
        err
    }
}

async fn send(server: &Server, user: &str, n: u64) -> Value {
    let (status, body) = server
        .send_json(
            reqwest::Method::POST,
            &format!("/v1/users/{user}/messages"),
            json!({"data": {"n": n}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Messages sent before, during and after a restart (SIGTERM, then kill -9) are printed
/// once each, in order, and the client resumes the same connection each time by itself.
#[tokio::test]
async fn listen_prints_every_message_once_in_order_across_restarts() {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut server = Server::start(&["--listen", &listen]).await;
    let dir = server.dir.clone();
    let url = format!("ws://{listen}/ws");
    let mut client = Listen::start(&[
        "--url",
        &url,
        "--user",
        "lin",
        "--data-dir",
        common::arg(&dir),
    ]);
    let (welcome, _) = client.until("welcome").await;
    assert_eq!(welcome["userId"], "lin");
    assert_eq!(welcome["resumed"], false);

    // A line typed on stdin is sent as a frame.
    client.send_line(r#"{"type":"ping","id":7}"#).await;
    let (pong, _) = client.until("pong").await;
    assert_eq!(pong["id"], 7);

    let mut sent = 0u64;
    let mut printed = Vec::new();
    for _ in 0..3 {
        sent += 1;
        send(&server, "lin", sent).await;
    }
    while printed.len() < 3 {
        printed.push(client.until("message").await.0);
    }

    let mut previous = welcome["connectionId"].as_str().unwrap().to_string();
    let mut resume_token = String::new();
    for kill9 in [false, true] {
        if kill9 {
            server.kill9().await;
        } else {
            server.stop().await;
        }
        server.restart().await;
        // Sent while the client is (most likely) still waiting to reconnect: kept for it.
        for _ in 0..3 {
            sent += 1;
            send(&server, "lin", sent).await;
        }
        let (again, before) = client.until("welcome").await;
        assert!(
            before.iter().all(|f| f["type"] != "message"),
            "no message between the close and the welcome: {before:?}"
        );
        assert_eq!(again["resumed"], true, "{again}");
        assert_eq!(again["previousConnectionId"], previous.as_str());
        previous = again["connectionId"].as_str().unwrap().to_string();
        resume_token = again["resumeToken"].as_str().unwrap().to_string();
        for _ in 0..2 {
            sent += 1;
            send(&server, "lin", sent).await;
        }
        while printed.len() < sent as usize {
            printed.push(client.until("message").await.0);
        }
    }
    let data: Vec<u64> = printed
        .iter()
        .map(|f| f["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(data, (1..=sent).collect::<Vec<_>>(), "in order, each once");
    let seqs: Vec<u64> = printed.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=sent).collect::<Vec<_>>());

    // Nothing more arrives twice: a last message is the next line and the next seq.
    sent += 1;
    send(&server, "lin", sent).await;
    let (last, _) = client.until("message").await;
    assert_eq!(last["seq"], sent);

    // What was printed was acked: a resume that names no lastSeq (which replays everything
    // not acked) gets nothing back. The client is killed so that its connection stays
    // resumable; its newest resume token is in the last welcome it printed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client.child.kill().await.unwrap();
    let mut ws = server
        .ws(&format!(
            "token={}&resume={previous}&resume_token={}",
            server.token("lin", json!({})),
            resume_token
        ))
        .await;
    let w = ws.recv_type("welcome").await;
    assert_eq!(w["resumed"], true, "{w}");
    sent += 1;
    send(&server, "lin", sent).await;
    let next = ws.recv().await;
    assert_eq!(next["type"], "message", "nothing replayed first: {next}");
    assert_eq!(next["seq"], sent);
}

/// An operator's disconnect (4506) is final: the client prints the `disconnect` frame,
/// says why on stderr, exits non-zero, and does not come back.
#[tokio::test]
async fn listen_stops_for_good_on_an_operator_disconnect() {
    let server = Server::start(&[]).await;
    let url = format!("ws://{}/ws", server.addr);
    let token = server.token("max", json!({}));
    let mut client = Listen::start(&["--url", &url, "--token", &token]);
    let (welcome, _) = client.until("welcome").await;
    let id = welcome["connectionId"].as_str().unwrap();
    let status = common::http()
        .delete(server.url(&format!("/v1/connections/{id}?reason=bye")))
        .bearer_auth(&server.admin_key)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    let (disconnect, _) = client.until("disconnect").await;
    assert_eq!(disconnect["code"], 4506);
    let exit = tokio::time::timeout(Duration::from_secs(10), client.child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(!exit.success());
    let err = client.stderr().await;
    assert!(err.contains("4506") && err.contains("bye"), "{err}");
    assert!(!err.contains("reconnecting"), "{err}");
    let (_, conns) = server.get_json("/v1/users/max/connections").await;
    assert_eq!(conns, json!([]));
}

/// Without --url it finds the server running on the data directory (started on port 0,
/// which no configuration names).
#[tokio::test]
async fn listen_finds_the_server_running_on_the_data_directory() {
    let server = Server::start(&[]).await;
    let mut client = Listen::start(&["--user", "ned", "--data-dir", common::arg(&server.dir)]);
    let (welcome, _) = client.until("welcome").await;
    assert_eq!(welcome["userId"], "ned");
    send(&server, "ned", 1).await;
    let (m, _) = client.until("message").await;
    assert_eq!(m["data"], json!({"n": 1}));
}
