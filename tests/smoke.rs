mod common;

use common::Server;
use serde_json::json;

#[tokio::test]
async fn connect_welcome_message_and_lookup() {
    let server = Server::start(&[]).await;
    let (mut ws, welcome) = server.connect("alice").await;
    assert_eq!(welcome["userId"], "alice");
    assert_eq!(welcome["resumed"], false);
    let id = welcome["connectionId"].as_str().unwrap().to_string();

    ws.send(json!({"type": "ping", "id": 7})).await;
    assert_eq!(ws.recv_type("pong").await["id"], 7);

    let (status, body) = server
        .send_json(
            reqwest::Method::POST,
            &format!("/v1/connections/{id}/messages"),
            json!({"data": {"hello": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["delivered"], 1);
    let m = ws.recv_type("message").await;
    assert_eq!(m["data"]["hello"], 1);
    assert_eq!(m["seq"], body["seq"]);

    let (status, info) = server.get_json(&format!("/v1/connections/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(info["userId"], "alice");
    assert_eq!(info["state"], "active");
    assert_eq!(info["metadata"]["connectionType"], "websocket");

    ws.close().await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (status, _) = server.get_json(&format!("/v1/connections/{id}")).await;
    assert_eq!(status, 404, "a clean close removes the connection at once");
}

#[tokio::test]
async fn a_token_from_the_token_command_connects() {
    let server = Server::start(&[]).await;
    let out = common::cli_ok(&[
        "token",
        "--user",
        "tina",
        "--permissions",
        "chat",
        "--data-dir",
        common::arg(&server.dir),
    ]);
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut ws = server.ws(&format!("token={token}")).await;
    let welcome = ws.recv_type("welcome").await;
    assert_eq!(welcome["userId"], "tina");
    let id = welcome["connectionId"].as_str().unwrap();
    let (_, user) = server.get_json(&format!("/v1/connections/{id}/user")).await;
    assert_eq!(user["permissions"], json!(["chat"]));
}
