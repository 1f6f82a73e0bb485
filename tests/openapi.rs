//! The OpenAPI document (`docs/openapi.json`, served at `GET /v1/openapi.json`), the dashboard
//! page, and the server bugs the document's schemathesis run found (`scripts/openapi-check`
//! runs it against a live server in `scripts/test`).

mod common;

use common::Server;
use serde_json::{json, Value};

const DOC: &str = include_str!("../docs/openapi.json");

fn doc() -> Value {
    serde_json::from_str(DOC).expect("docs/openapi.json is JSON")
}

#[tokio::test]
async fn the_document_is_served_to_a_read_key_as_it_is_in_docs() {
    let reader = "tk_openapi_reader_0123456789abcdef";
    let keys = format!(r#"[{{key = "{reader}", name = "reader", permissions = ["read"]}}]"#);
    let server = Server::start(&["--api-keys", &keys]).await;
    let r = common::http()
        .get(server.url("/v1/openapi.json"))
        .header("x-api-key", reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.text().await.unwrap(), DOC);
    let anonymous = common::http()
        .get(server.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

/// Every route of the API is in the document, with its method, its error statuses and its
/// security; nothing is there that the server does not serve.
#[test]
fn the_document_names_every_route_with_its_errors_and_security() {
    let d = doc();
    assert_eq!(d["openapi"], "3.1.0");
    let routes = [
        ("get", "/health"),
        ("get", "/ready"),
        ("get", "/metrics"),
        ("get", "/dashboard"),
        ("get", "/dashboard/dashboard.js"),
        ("get", "/dashboard/dashboard.css"),
        ("get", "/v1/connections/{connectionId}"),
        ("delete", "/v1/connections/{connectionId}"),
        ("get", "/v1/connections/{connectionId}/user"),
        ("get", "/v1/connections/{connectionId}/valid"),
        ("patch", "/v1/connections/{connectionId}/metadata"),
        ("post", "/v1/connections/{connectionId}/ttl"),
        ("post", "/v1/connections/{connectionId}/migrate"),
        ("post", "/v1/connections/{connectionId}/messages"),
        ("get", "/v1/users/{userId}/connections"),
        ("delete", "/v1/users/{userId}/connections"),
        ("post", "/v1/users/{userId}/messages"),
        ("get", "/v1/users/{userId}/sessions"),
        ("delete", "/v1/users/{userId}/sessions"),
        ("post", "/v1/sessions"),
        ("get", "/v1/sessions/{sessionId}"),
        ("patch", "/v1/sessions/{sessionId}"),
        ("delete", "/v1/sessions/{sessionId}"),
        ("post", "/v1/cleanup"),
        ("get", "/v1/limits"),
        ("get", "/v1/health"),
        ("get", "/v1/stats"),
        ("get", "/v1/events"),
        ("get", "/v1/bus"),
        ("get", "/v1/registry"),
        ("get", "/v1/nodes"),
        ("get", "/v1/backup"),
        ("get", "/v1/openapi.json"),
    ];
    let paths = d["paths"].as_object().unwrap();
    let mut documented = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            documented += 1;
            assert!(
                routes.contains(&(method.as_str(), path.as_str())),
                "{method} {path} is documented but not served"
            );
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path}: no success response"
            );
            if path.starts_with("/v1/") {
                for status in ["401", "403", "503"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path}: no {status}"
                    );
                }
                assert_eq!(
                    op["security"],
                    json!([{"bearer": []}, {"apiKey": []}]),
                    "{method} {path}"
                );
                assert!(op["x-permission"].is_string(), "{method} {path}");
            }
            if op.get("requestBody").is_some() {
                for status in ["400", "413", "422"] {
                    assert!(
                        responses.contains_key(status),
                        "{method} {path}: a body, and no {status}"
                    );
                }
            }
        }
    }
    assert_eq!(documented, routes.len(), "every route is documented");
    let error = &d["components"]["schemas"]["Error"];
    assert_eq!(error["required"], json!(["error"]));
    assert_eq!(
        error["properties"]["error"]["required"],
        json!(["code", "message"])
    );
}

/// Found by schemathesis: `60.0` is the whole number 60 (JSON Schema's `integer` says so,
/// and some clients write every number as a float), but the API refused it with 422.
#[tokio::test]
async fn a_whole_number_written_with_a_fraction_is_accepted() {
    let server = Server::start(&[]).await;
    let (status, s) = server
        .send_json(
            reqwest::Method::POST,
            "/v1/sessions",
            json!({"userId": "ola", "ttlSeconds": 60.0}),
        )
        .await;
    assert_eq!(status, 201, "{s}");
    let created = tether::time::parse_rfc3339(s["createdAt"].as_str().unwrap()).unwrap();
    let expires = tether::time::parse_rfc3339(s["expiresAt"].as_str().unwrap()).unwrap();
    assert_eq!(expires - created, 60_000);
    let (status, e) = server
        .send_json(
            reqwest::Method::POST,
            "/v1/sessions",
            json!({"userId": "ola", "ttlSeconds": 60.5}),
        )
        .await;
    assert_eq!(status, 422, "{e}");
    let (_ws, welcome) = server.connect("ola").await;
    let id = welcome["connectionId"].as_str().unwrap();
    let (status, info) = server
        .send_json(
            reqwest::Method::POST,
            &format!("/v1/connections/{id}/ttl"),
            json!({"ttlSeconds": 120.0}),
        )
        .await;
    assert_eq!(status, 200, "{info}");
    let (status, info) = server
        .send_json(
            reqwest::Method::PATCH,
            &format!("/v1/connections/{id}/metadata"),
            json!({"rateLimit": {"messagesPerMinute": 30.0}}),
        )
        .await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["metadata"]["rateLimit"]["messagesPerMinute"], 30);
}

/// Found by schemathesis: `rateLimit.messagesPerMinute` had no `maximum` in the document, so
/// a schema-valid 7.7e15 was refused with 422. Every integer a request can carry (body or query)
/// names its bounds, so that what the document allows is what the server takes.
#[test]
fn every_integer_a_request_carries_has_both_bounds() {
    fn walk(v: &Value, at: &str, missing: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                let integer = match o.get("type") {
                    Some(Value::String(t)) => t == "integer",
                    Some(Value::Array(ts)) => ts.iter().any(|t| t == "integer"),
                    _ => false,
                };
                if integer && (o.get("minimum").is_none() || o.get("maximum").is_none()) {
                    missing.push(at.to_string());
                }
                for (k, v) in o {
                    walk(v, &format!("{at}/{k}"), missing);
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(v, &format!("{at}[{i}]"), missing);
                }
            }
            _ => {}
        }
    }
    let d = doc();
    let mut missing = Vec::new();
    for (path, item) in d["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let at = format!("{method} {path}");
            walk(&op["requestBody"], &format!("{at} body"), &mut missing);
            walk(&op["parameters"], &format!("{at} parameters"), &mut missing);
        }
    }
    assert!(missing.is_empty(), "integers without bounds: {missing:#?}");
}

/// The largest `messagesPerMinute` the document allows is taken, and one past it is refused.
#[tokio::test]
async fn a_rate_limit_at_the_documented_maximum_is_accepted() {
    let d = doc();
    let max = d["components"]["schemas"]["RateLimit"]["properties"]["messagesPerMinute"]["maximum"]
        .as_u64()
        .unwrap();
    let server = Server::start(&[]).await;
    let (_ws, welcome) = server.connect("ola").await;
    let id = welcome["connectionId"].as_str().unwrap();
    let path = format!("/v1/connections/{id}/metadata");
    let (status, info) = server
        .send_json(
            reqwest::Method::PATCH,
            &path,
            json!({"rateLimit": {"messagesPerMinute": max}}),
        )
        .await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["metadata"]["rateLimit"]["messagesPerMinute"], max);
    let (status, e) = server
        .send_json(
            reqwest::Method::PATCH,
            &path,
            json!({"rateLimit": {"messagesPerMinute": max + 1}}),
        )
        .await;
    assert_eq!(status, 422, "{e}");
}

/// Found by the document's `date-time`: a single node's `startedAt` was an empty string.
#[tokio::test]
async fn a_nodes_started_at_is_a_time() {
    let server = Server::start(&[]).await;
    let before = tether::time::now_ms();
    let (status, nodes) = server.get_json("/v1/nodes").await;
    assert_eq!(status, 200);
    let node = &nodes[0];
    let started = tether::time::parse_rfc3339(node["startedAt"].as_str().unwrap())
        .unwrap_or_else(|| panic!("startedAt is not a time: {node}"));
    let seen = tether::time::parse_rfc3339(node["lastSeen"].as_str().unwrap()).unwrap();
    assert!(started <= seen && started <= before, "{node}");
    assert!(before - started < 60_000, "{node}");
}

/// The dashboard is one page with its own script and style, from this server only.
#[tokio::test]
async fn the_dashboard_is_served_from_the_binary_and_loads_nothing_from_elsewhere() {
    let server = Server::start(&[]).await;
    let page = common::http()
        .get(server.url("/dashboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    for needle in [
        r#"id="api-key""#,
        r#"id="sign-in""#,
        r#"id="connections""#,
        r#"id="user-filter""#,
        r#"id="events""#,
    ] {
        assert!(html.contains(needle), "{needle}");
    }
    for attr in ["src=\"", "href=\""] {
        for (i, _) in html.match_indices(attr) {
            let target = &html[i + attr.len()..];
            assert!(
                target.starts_with("/dashboard/"),
                "{}",
                &target[..40.min(target.len())]
            );
        }
    }
    for (asset, kind) in [
        ("dashboard.js", "text/javascript"),
        ("dashboard.css", "text/css"),
    ] {
        let r = common::http()
            .get(server.url(&format!("/dashboard/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{asset}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
        let text = r.text().await.unwrap();
        assert!(!text.contains("https://"), "{asset} names another origin");
    }
    let post = common::http()
        .post(server.url("/dashboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    let missing = common::http()
        .get(server.url("/dashboard/other.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}
