//! A hostile client and a hostile operator against the real binary: what they send, how
//! big, in which shape, and what a damaged data directory or backup holds. Every case gets a
//! clear refusal and loses nothing, and nothing stops the server.

mod common;

use common::Server;
use serde_json::{json, Value};

// ----- 1. sessions are bounded -----------------------------------------------------------

/// The next frame after the `welcome`.
async fn reply(ws: &mut common::Ws) -> Value {
    loop {
        let f = ws.recv().await;
        if f["type"] != "welcome" {
            return f;
        }
    }
}

#[tokio::test]
async fn a_session_is_capped_at_session_max_bytes_and_nothing_past_it_is_written() {
    let server = Server::start(&[]).await;
    let s = server
        .create_session(json!({"userId": "ana", "data": {"small": 1}}))
        .await;
    let sid = s["sessionId"].as_str().unwrap().to_string();
    let mut ws = server.ws(&format!("session_id={sid}")).await;
    ws.recv_type("welcome").await;

    // Two 30 KB keys fit the default 64 KiB; the third would take the session past it.
    let pad = "x".repeat(30_000);
    for (n, key) in ["a", "b"].iter().enumerate() {
        ws.send(json!({"type": "session.update", "id": n, "updates": {*key: pad}}))
            .await;
        let r = reply(&mut ws).await;
        assert_eq!(r["type"], "ack", "update {key}: {r}");
    }
    ws.send(json!({"type": "session.update", "id": "c", "updates": {"c": pad}}))
        .await;
    let r = reply(&mut ws).await;
    assert_eq!(r["type"], "error", "a third 30 KB key was accepted: {r}");
    assert_eq!(r["code"], "session_too_large", "{r}");
    assert_eq!(r["id"], "c", "{r}");
    let (_, now) = server.get_json(&format!("/v1/sessions/{sid}")).await;
    let keys: Vec<&str> = now["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["a", "b", "small"],
        "nothing of the refused update is kept"
    );

    // The same cap over HTTP: a PATCH past it and a create past it are 413, nothing stored.
    let (status, body) = server
        .send_json(
            reqwest::Method::PATCH,
            &format!("/v1/sessions/{sid}"),
            json!({"data": {"c": pad}}),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "session_too_large", "{body}");
    let (status, body) = server
        .send_json(
            reqwest::Method::POST,
            "/v1/sessions",
            json!({"userId": "ana", "data": {"big": "y".repeat(70_000)}}),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "session_too_large", "{body}");
    let (_, list) = server.get_json("/v1/users/ana/sessions").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    // Removing a key makes room again: the cap is on the merged data, not on the update.
    ws.send(json!({"type": "session.update", "id": "d", "updates": {"a": null, "c": pad}}))
        .await;
    let r = reply(&mut ws).await;
    assert_eq!(r["type"], "ack", "{r}");
}

#[tokio::test]
async fn a_user_has_at_most_max_sessions_per_user_and_the_list_is_paged() {
    let server = Server::start(&[]).await;
    // The default cap is 100.
    let mut ids = Vec::new();
    for _ in 0..100 {
        let s = server.create_session(json!({"userId": "bo"})).await;
        ids.push(s["sessionId"].as_str().unwrap().to_string());
    }
    let (status, body) = server
        .send_json(
            reqwest::Method::POST,
            "/v1/sessions",
            json!({"userId": "bo"}),
        )
        .await;
    assert_eq!(status, 409, "the 101st session of one user: {body}");
    assert_eq!(body["error"]["code"], "too_many_sessions", "{body}");
    // Another user is not concerned, and a deleted session frees its place.
    server.create_session(json!({"userId": "cy"})).await;
    let r = server
        .admin(reqwest::Method::DELETE, &format!("/v1/sessions/{}", ids[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    server.create_session(json!({"userId": "bo"})).await;

    // Without paging parameters the answer is the whole list, a plain array.
    let (status, all) = server.get_json("/v1/users/bo/sessions").await;
    assert_eq!(status, 200);
    let all: Vec<String> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sessionId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(all.len(), 100);

    // Pages of 30: each a plain array, ordered by session id; the next page starts after
    // the last id of this one, and `Link` names it until the last page.
    let mut paged = Vec::new();
    let mut path = "/v1/users/bo/sessions?limit=30".to_string();
    loop {
        let r = server
            .admin(reqwest::Method::GET, &path)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let link = r
            .headers()
            .get("link")
            .map(|v| v.to_str().unwrap().to_string());
        let page: Value = r.json().await.unwrap();
        let page = page.as_array().expect("a page is a plain array").clone();
        assert!(page.len() <= 30, "{path}: {} sessions", page.len());
        paged.extend(
            page.iter()
                .map(|s| s["sessionId"].as_str().unwrap().to_string()),
        );
        let Some(link) = link else { break };
        let next = link
            .strip_prefix('<')
            .and_then(|l| l.split_once(">; rel=\"next\""))
            .map(|(u, _)| u.to_string())
            .unwrap_or_else(|| panic!("Link: {link}"));
        assert!(
            next.contains(&format!("after={}", paged.last().unwrap())),
            "{next}"
        );
        path = next;
    }
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(paged, sorted, "every session once, in id order");
    for bad in ["limit=0", "limit=1001", "limit=x", "page=2"] {
        let (status, body) = server
            .get_json(&format!("/v1/users/bo/sessions?{bad}"))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}
