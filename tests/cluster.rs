//! Cluster mode (SPEC §10): real tether nodes over one real `redis-server`, each test with
//! its own Redis on a free port, killed (and nodes killed) when the test ends.

mod common;

use std::time::Duration;

use common::redis::RedisServer;
use common::{resume_query, Server, WAIT};
use reqwest::Method;
use serde_json::{json, Value};

/// Short leases, so that a dead node is noticed in about a second.
const FAST: &[&str] = &["--node-heartbeat-ms", "200", "--node-lease-ms", "1000"];

async fn nodes(redis: &RedisServer, n: usize, extra: &[&str]) -> Vec<Server> {
    let mut args: Vec<&str> = FAST.to_vec();
    args.extend_from_slice(extra);
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Server::start_node(&redis.url(), &args).await);
    }
    out
}

fn id_of(welcome: &Value) -> String {
    welcome["connectionId"].as_str().unwrap().to_string()
}

/// Resumes `welcome`'s connection on `node` after seq 1, and checks that it is resumed and
/// given the message with seq 2 (whose data is 2); returns the socket and its welcome.
async fn resume_for_the_second_message(
    node: &Server,
    user: &str,
    welcome: &Value,
) -> (common::Ws, Value) {
    let mut ws = node.ws(&resume_query(node, user, welcome, Some(1))).await;
    let w = ws.recv_type("welcome").await;
    assert_eq!(
        (w["resumed"].clone(), w["resumeError"].clone()),
        (json!(true), Value::Null),
        "{w}"
    );
    let m = ws.recv_type("message").await;
    assert_eq!(
        (m["seq"].clone(), m["data"].clone()),
        (json!(2), json!(2)),
        "{m}"
    );
    (ws, w)
}

async fn node_id(server: &Server) -> String {
    let (status, health) = server.get_json("/v1/nodes").await;
    assert_eq!(status, 200, "{health}");
    // The node answering is one of those listed; find it by its address.
    let me = server.addr.to_string();
    health
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["listen"] == me)
        .map(|n| n["nodeId"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("{me} is not among the nodes: {health}"))
}

/// Waits until `check` holds for what `path` answers on `server`.
async fn eventually(
    server: &Server,
    path: &str,
    what: &str,
    check: impl Fn(u16, &Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = server.get_json(path).await;
        if check(status, &body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: last answer {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn any_node_lists_a_users_connections_on_every_node_and_messages_reach_them_all() {
    let redis = RedisServer::start(false);
    let n = nodes(&redis, 3, &[]).await;
    let (a, b, c) = (&n[0], &n[1], &n[2]);
    let (mut wa, welcome_a) = a.connect("ada").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (mut wb, welcome_b) = b.connect("ada").await;
    // A message to the first connection alone gives it seq 1.
    let (status, one) = c
        .send_json(
            Method::POST,
            &format!("/v1/connections/{}/messages", id_of(&welcome_a)),
            json!({"data": "first"}),
        )
        .await;
    assert_eq!((status, &one["seq"]), (200, &json!(1)), "{one}");
    assert_eq!(wa.recv_type("message").await["seq"], 1);

    // Listed from the third node, oldest first, each with the node that holds it.
    let (status, list) = c.get_json("/v1/users/ada/connections").await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["connectionId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id_of(&welcome_a), id_of(&welcome_b)], "{list}");
    assert_eq!(list[0]["node"], node_id(a).await);
    assert_eq!(list[1]["node"], node_id(b).await);
    assert_eq!(list[0]["state"], "active");

    // A message to the user through the third node reaches both, each with its next seq.
    let (status, sent) = c
        .send_json(
            Method::POST,
            "/v1/users/ada/messages",
            json!({"data": {"n": 2}}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["stored"], 2, "{sent}");
    let ma = wa.recv_type("message").await;
    let mb = wb.recv_type("message").await;
    assert_eq!(
        (ma["seq"].clone(), ma["data"]["n"].clone()),
        (json!(2), json!(2))
    );
    assert_eq!(
        (mb["seq"].clone(), mb["data"]["n"].clone()),
        (json!(1), json!(2))
    );

    // Every node answers for the cluster.
    let (_, health) = b.get_json("/v1/health").await;
    assert_eq!(health["activeConnections"], 2, "{health}");
    assert_eq!(health["nodes"], 3, "{health}");
    let (_, listed) = a.get_json("/v1/nodes").await;
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
}

#[tokio::test]
async fn the_per_user_limit_holds_across_nodes_and_evicts_the_oldest_wherever_it_is() {
    let redis = RedisServer::start(false);
    let n = nodes(&redis, 2, &["--max-per-user", "2"]).await;
    let (a, b) = (&n[0], &n[1]);
    let (mut oldest, w1) = a.connect("bo").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (_second, _) = b.connect("bo").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (_third, w3) = b.connect("bo").await;
    let closed = oldest.closed().await;
    assert_eq!(closed.code, Some(4505), "{closed:?}");
    let (_, list) = a.get_json("/v1/users/bo/connections").await;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["connectionId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{list}");
    assert!(
        !ids.contains(&id_of(&w1).as_str()),
        "the oldest is gone: {list}"
    );
    assert!(ids.contains(&id_of(&w3).as_str()));
}

#[tokio::test]
async fn connects_racing_over_two_nodes_never_over_admit() {
    let redis = RedisServer::start(false);
    let n = nodes(&redis, 2, &["--max-total", "10", "--max-per-user", "100"]).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let server = &n[i % 2];
        let url = server.ws_url(&format!(
            "token={}",
            server.token(&format!("u{}", i % 3), json!({}))
        ));
        tasks.push(tokio::spawn(async move {
            let mut ws = common::Ws::connect(url, &[]).await;
            match ws.try_recv(WAIT).await {
                Some(v) if v["type"] == "welcome" => (true, Some(ws)),
                _ => (false, None),
            }
        }));
    }
    let mut admitted = 0;
    let mut keep = Vec::new();
    for t in tasks {
        let (ok, ws) = t.await.unwrap();
        if ok {
            admitted += 1;
            keep.push(ws);
        }
    }
    assert_eq!(admitted, 10, "exactly max_total are admitted");
    let (_, health) = n[0].get_json("/v1/health").await;
    assert_eq!(health["activeConnections"], 10, "{health}");
}

#[tokio::test]
async fn a_disconnect_on_one_node_closes_the_socket_on_another_with_its_reason() {
    let redis = RedisServer::start(false);
    let n = nodes(&redis, 2, &[]).await;
    let (mut ws, welcome) = n[0].connect("cy").await;
    let r = n[1]
        .admin(
            Method::DELETE,
            &format!("/v1/connections/{}?reason=moved", id_of(&welcome)),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let closed = ws.closed().await;
    assert_eq!(closed.code, Some(4506), "{closed:?}");
    assert_eq!(closed.reason, "moved");
    let (mut w2, _) = n[0].connect("cy").await;
    let (status, body) = n[1]
        .send_json(Method::DELETE, "/v1/users/cy/connections", json!({}))
        .await;
    assert_eq!((status, &body["disconnected"]), (200, &json!(1)), "{body}");
    assert_eq!(w2.closed().await.code, Some(4506));
}

#[tokio::test]
async fn session_updates_cross_nodes_both_ways_and_are_published_once() {
    let redis = RedisServer::start(false);
    let n = nodes(&redis, 2, &[]).await;
    let (a, b) = (&n[0], &n[1]);
    let (status, s) = a
        .send_json(
            Method::POST,
            "/v1/sessions",
            json!({"userId": "di", "data": {"theme": "dark"}}),
        )
        .await;
    assert_eq!(status, 201, "{s}");
    let sid = s["sessionId"].as_str().unwrap().to_string();
    // A plain Redis client following the channel, as an app backend would.
    let mut sub = tokio::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port().to_string(),
            "--raw",
            "SUBSCRIBE",
            "tether:session:updates",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-cli");
    let mut out = tokio::io::BufReader::new(sub.stdout.take().unwrap());
    let mut lines = Vec::new();
    // Subscribed once it says so: `subscribe`, the channel, the count.
    while !lines
        .iter()
        .any(|l: &String| l.trim() == "tether:session:updates")
    {
        read_lines(&mut out, &mut lines, 1).await;
    }
    read_lines(&mut out, &mut lines, 1).await;
    let mut on_a = a.ws(&format!("session_id={sid}")).await;
    on_a.recv_type("welcome").await;
    let mut on_b = b.ws(&format!("session_id={sid}")).await;
    on_b.recv_type("welcome").await;

    // HTTP on node A reaches the socket on node B.
    let (status, _) = a
        .send_json(
            Method::PATCH,
            &format!("/v1/sessions/{sid}"),
            json!({"data": {"theme": "light"}}),
        )
        .await;
    assert_eq!(status, 200);
    let u = on_b.recv_type("session.updated").await;
    assert_eq!(u["updates"], json!({"theme": "light"}));
    assert_eq!(u["source"], "http");
    assert_eq!(on_a.recv_type("session.updated").await["seq"], 1);

    // A session.update on node B reaches the socket on node A, and the session.
    on_b.send(json!({"type": "session.update", "id": 7, "updates": {"lang": "fr"}}))
        .await;
    assert_eq!(on_b.recv_type("ack").await["id"], 7);
    let u = on_a.recv_type("session.updated").await;
    assert_eq!(u["updates"], json!({"lang": "fr"}));
    assert_eq!(u["source"], "websocket");
    let (_, got) = a.get_json(&format!("/v1/sessions/{sid}")).await;
    assert_eq!(got["data"], json!({"theme": "light", "lang": "fr"}));

    // Two changes: exactly two events on the channel, each the JSON of SPEC §5.
    let events = |lines: &[String]| -> Vec<Value> {
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
            .filter(|v| v.is_object())
            .collect()
    };
    while events(&lines).len() < 2 {
        read_lines(&mut out, &mut lines, 1).await;
    }
    let events = events(&lines);
    assert_eq!(events.len(), 2, "{lines:?}");
    assert_eq!(events[0]["sessionId"], sid);
    assert_eq!(events[0]["updates"], json!({"theme": "light"}));
    assert_eq!(events[1]["source"], "websocket");
    // And no third.
    let more = tokio::time::timeout(
        Duration::from_millis(500),
        read_lines(&mut out, &mut lines, 1),
    )
    .await;
    assert!(more.is_err(), "one event per change: {lines:?}");
    drop(sub);
}

async fn read_lines<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    into: &mut Vec<String>,
    n: usize,
) {
    use tokio::io::AsyncBufReadExt;
    for _ in 0..n {
        let mut line = String::new();
        let read = tokio::time::timeout(WAIT, r.read_line(&mut line))
            .await
            .expect("redis-cli printed nothing in time")
            .unwrap();
        assert!(read > 0, "redis-cli ended");
        into.push(line);
    }
}

#[tokio::test]
async fn a_killed_node_s_connections_resume_on_another_with_every_message_once_in_order() {
    let redis = RedisServer::start(false);
    let mut n = nodes(&redis, 2, &[]).await;
    let (mut ws, welcome) = n[0].connect("ed").await;
    let id = id_of(&welcome);
    for k in 1..=2 {
        n[1].send_json(Method::POST, "/v1/users/ed/messages", json!({"data": k}))
            .await;
        assert_eq!(ws.recv_type("message").await["data"], k);
    }
    n[0].kill9().await;
    drop(ws);
    // Messages while the node is dead, and after its lease ran out.
    let (_, sent) = n[1]
        .send_json(Method::POST, "/v1/users/ed/messages", json!({"data": 3}))
        .await;
    assert_eq!(sent["stored"], 1, "{sent}");
    let info = eventually(
        &n[1],
        &format!("/v1/connections/{id}"),
        "detached after the lease",
        |s, i| s == 200 && i["state"] == "detached",
    )
    .await;
    assert_eq!(info["node"], Value::Null, "{info}");
    let (_, events) = n[1]
        .get_json(&format!("/v1/events?connectionId={id}&type=detached"))
        .await;
    assert_eq!(
        events.as_array().unwrap().len(),
        1,
        "one detached event: {events}"
    );
    n[1].send_json(Method::POST, "/v1/users/ed/messages", json!({"data": 4}))
        .await;
    // The client resumes on the other node from what it had.
    let mut ws = n[1].ws(&resume_query(&n[1], "ed", &welcome, Some(2))).await;
    let w = ws.recv_type("welcome").await;
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(w["previousConnectionId"], id.as_str());
    for (seq, data) in [(3, 3), (4, 4)] {
        let m = ws.recv_type("message").await;
        assert_eq!(
            (m["seq"].clone(), m["data"].clone()),
            (json!(seq), json!(data)),
            "{m}"
        );
    }
    assert!(
        ws.try_recv(Duration::from_millis(300)).await.is_none(),
        "each once"
    );
    n[1].send_json(Method::POST, "/v1/users/ed/messages", json!({"data": 5}))
        .await;
    assert_eq!(ws.recv_type("message").await["seq"], 5);
}

#[tokio::test]
async fn a_dropped_socket_resumes_on_another_node_and_a_stopped_node_detaches_at_once() {
    let redis = RedisServer::start(false);
    let mut n = nodes(&redis, 2, &[]).await;
    let (ws, welcome) = n[0].connect("flo").await;
    drop(ws);
    eventually(
        &n[1],
        &format!("/v1/connections/{}", id_of(&welcome)),
        "detached",
        |_, i| i["state"] == "detached",
    )
    .await;
    n[1].send_json(Method::POST, "/v1/users/flo/messages", json!({"data": "x"}))
        .await;
    let mut ws = n[1]
        .ws(&resume_query(&n[1], "flo", &welcome, Some(0)))
        .await;
    let w = ws.recv_type("welcome").await;
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(ws.recv_type("message").await["data"], "x");

    // A node stopped gracefully closes with 1001 and its connections are Detached at once.
    let (mut on0, w0) = n[0].connect("gil").await;
    n[0].stop().await;
    assert_eq!(on0.closed().await.code, Some(1001));
    let (_, info) = n[1]
        .get_json(&format!("/v1/connections/{}", id_of(&w0)))
        .await;
    assert_eq!(info["state"], "detached", "{info}");
}

#[tokio::test]
async fn redis_killed_refuses_new_work_keeps_sockets_and_recovers_without_a_restart() {
    let mut redis = RedisServer::start(true);
    let n = nodes(&redis, 2, &[]).await;
    let (mut ws, welcome) = n[0].connect("hu").await;
    let (status, _) = n[1]
        .send_json(Method::POST, "/v1/users/hu/messages", json!({"data": 1}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(ws.recv_type("message").await["seq"], 1);

    redis.kill();
    for server in &n {
        eventually(server, "/ready", "/ready turns 503", |s, _| s == 503).await;
    }
    let (status, e) = n[1]
        .send_json(Method::POST, "/v1/users/hu/messages", json!({"data": 2}))
        .await;
    assert_eq!(
        (status, &e["error"]["code"]),
        (503, &json!("unavailable")),
        "{e}"
    );
    let r = common::http()
        .get(n[1].url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let refused = common::http()
        .get(
            n[1].ws_url(&format!("token={}", n[1].token("hu", json!({}))))
                .replace("ws://", "http://"),
        )
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status(),
        503,
        "a new connection is refused before the upgrade"
    );
    // The open socket stays open: it still answers a ping.
    ws.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(ws.recv_type("pong").await["id"], 1);

    redis.restart();
    for server in &n {
        eventually(server, "/ready", "/ready back to 200", |s, _| s == 200).await;
    }
    // Acknowledged before the crash: still there (appendfsync always).
    let (_, info) = n[1]
        .get_json(&format!("/v1/connections/{}", id_of(&welcome)))
        .await;
    assert_eq!(info["state"], "active", "{info}");
    let (status, sent) = n[1]
        .send_json(Method::POST, "/v1/users/hu/messages", json!({"data": 3}))
        .await;
    assert_eq!(status, 200, "{sent}");
    let m = ws.recv_type("message").await;
    assert_eq!(
        (m["seq"].clone(), m["data"].clone()),
        (json!(2), json!(3)),
        "{m}"
    );
}

#[tokio::test]
async fn a_cluster_node_without_secrets_is_refused_naming_them() {
    let out = common::cli(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--redis-url",
        "redis://127.0.0.1:1/",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("jwt_secret") && err.contains("admin_api_key"),
        "{err}"
    );
}

#[tokio::test]
async fn backup_and_inspect_in_cluster_mode_point_at_redis() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("tether.toml");
    std::fs::write(
        &config,
        format!(
            "redis_url = \"redis://127.0.0.1:1/\"\njwt_secret = \"{}\"\nadmin_api_key = \"{}\"\n",
            common::CLUSTER_JWT_SECRET,
            common::CLUSTER_ADMIN_KEY
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let out_file = tmp.path().join("b.bin");
    for args in [
        vec!["inspect", "--config", cfg],
        vec![
            "backup",
            "--config",
            cfg,
            "--out",
            out_file.to_str().unwrap(),
        ],
    ] {
        let out = common::cli(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cluster mode") && err.contains("BGSAVE"),
            "{args:?}: {err}"
        );
    }
    assert!(!out_file.exists());
}

/// Sends `signal` (STOP, CONT) to a node's process.
fn signal(server: &Server, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &server.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal}");
}

#[tokio::test]
async fn a_node_paused_past_its_lease_closes_its_sockets_to_resume_elsewhere_losing_nothing() {
    let redis = RedisServer::start(false);
    let n = nodes(&redis, 2, &[]).await;
    let (mut ws, welcome) = n[0].connect("fay").await;
    let id = id_of(&welcome);
    n[1].send_json(Method::POST, "/v1/users/fay/messages", json!({"data": 1}))
        .await;
    assert_eq!(ws.recv_type("message").await["seq"], 1);
    // The node stops (a long GC-like pause, a frozen VM): its socket stays open, but its
    // lease runs out and the other node detaches its connection for a resume.
    signal(&n[0], "STOP");
    let info = eventually(
        &n[1],
        &format!("/v1/connections/{id}"),
        "detached after the paused node's lease",
        |s, i| s == 200 && i["state"] == "detached",
    )
    .await;
    assert_eq!(info["node"], Value::Null, "{info}");
    n[1].send_json(Method::POST, "/v1/users/fay/messages", json!({"data": 2}))
        .await;
    // Back from the pause, the node finds its lease gone and closes the socket with a code
    // that says "reconnect": the connection must still be there to resume.
    signal(&n[0], "CONT");
    let closed = ws.closed().await;
    assert_eq!(closed.code, Some(1013), "{:?}", closed.disconnect);
    assert_eq!(
        closed.disconnect.as_ref().map(|d| d["reconnect"].clone()),
        Some(json!(true))
    );
    // Once the paused node has finished with the socket, the record is still there.
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, info) = n[1].get_json(&format!("/v1/connections/{id}")).await;
    assert_eq!(
        (status, info["state"].clone()),
        (200, json!("detached")),
        "{info}"
    );
    let (mut ws, _) = resume_for_the_second_message(&n[1], "fay", &welcome).await;
    assert!(
        ws.try_recv(Duration::from_millis(300)).await.is_none(),
        "each once"
    );
}

#[tokio::test]
async fn a_resume_takes_over_a_dead_node_s_connection_before_its_lease_runs_out() {
    let redis = RedisServer::start(false);
    // A long lease: the resume below must not depend on it running out.
    let mut n = Vec::new();
    for _ in 0..2 {
        n.push(Server::start_node(&redis.url(), &["--node-lease-ms", "60000"]).await);
    }
    let (mut ws, welcome) = n[0].connect("gil").await;
    n[1].send_json(Method::POST, "/v1/users/gil/messages", json!({"data": 1}))
        .await;
    assert_eq!(ws.recv_type("message").await["seq"], 1);
    n[0].kill9().await;
    drop(ws);
    n[1].send_json(Method::POST, "/v1/users/gil/messages", json!({"data": 2}))
        .await;
    let (_ws, w) = resume_for_the_second_message(&n[1], "gil", &welcome).await;
    let (_, info) = n[1]
        .get_json(&format!("/v1/connections/{}", id_of(&w)))
        .await;
    assert_eq!(info["state"], "active", "{info}");
}

/// Opens `SOCKETS` connections on one node, stops Redis (SIGSTOP) for `pause` while their
/// clients close, lets it go on, and checks that every record is gone with one
/// `disconnected` event each; `via_sweep`: whether the ends outlived their retries.
async fn ends_while_redis_is_stopped(pause: Duration, via_sweep: bool) {
    const SOCKETS: usize = 20;
    let redis = RedisServer::start(false);
    let n = nodes(&redis, 2, &[]).await;
    let mut open = Vec::new();
    for i in 0..SOCKETS {
        let (ws, welcome) = n[0].connect(&format!("end{i}")).await;
        open.push((ws, id_of(&welcome)));
    }
    redis.signal("STOP");
    for (ws, _) in &mut open {
        ws.close().await;
    }
    tokio::time::sleep(pause).await;
    redis.signal("CONT");
    for (_, id) in &open {
        eventually(
            &n[1],
            &format!("/v1/connections/{id}"),
            "the record of a closed connection is gone",
            |s, _| s == 404,
        )
        .await;
        let events = eventually(
            &n[1],
            &format!("/v1/events?connectionId={id}&type=disconnected"),
            "its disconnected event is logged",
            |s, e| s == 200 && !e.as_array().unwrap().is_empty(),
        )
        .await;
        assert_eq!(events.as_array().unwrap().len(), 1, "once: {events}");
    }
    let (_, health) = n[1].get_json("/v1/health").await;
    assert_eq!(health["activeConnections"], 0, "{health}");
    assert_eq!(
        n[0].logs().contains("the sweep tries again"),
        via_sweep,
        "whether ends were left to the sweep"
    );
}

#[tokio::test]
async fn connections_ended_while_redis_stalls_past_the_command_timeout_are_still_ended_once() {
    // Longer than a node's command timeout (2 s): every end's first try times out, and a
    // retry stores it.
    ends_while_redis_is_stopped(Duration::from_secs(3), false).await;
}

#[tokio::test]
async fn connections_ended_while_redis_stalls_past_every_retry_are_ended_by_the_sweep() {
    // Longer than an end's retries (five command timeouts, 10 s): the ends wait for the
    // sweep, which stores them once Redis answers again.
    ends_while_redis_is_stopped(Duration::from_secs(12), true).await;
}
