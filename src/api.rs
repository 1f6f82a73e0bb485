//! The HTTP API (SPEC §5): `/health`, `/ready`, `/metrics`, `/sse` and every `/v1` route.
//!
//! One warp filter hands each request to [`dispatch`], which routes on (method, path
//! segments) with a plain `match`. That keeps every route, its permission and its errors in
//! one readable table, and every failure a JSON `{"error": {...}}` with a fitting status;
//! nothing a client sends can produce a 500.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt};
use serde_json::{json, Map, Value};
use uuid::Uuid;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, Method, StatusCode};
use warp::reply::{Reply, Response};
use warp::Filter;

use crate::app::App;
use crate::auth::{ApiKey, Permission};
use crate::bus::Channel;
use crate::error::{ApiError, Disconnect};
use crate::model::EventType;
use crate::registry::{FrameTemplate, MetadataPatch, MigrateError};
use crate::sessions::{SessionError, Sessions, Source};
use crate::transport::{query_pairs, PeerAddr};

pub fn routes(app: Arc<App>) -> BoxedFilter<(Response,)> {
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(warp::path::full())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<PeerAddr>())
        .and(warp::body::stream())
        .then(
            move |method, path: warp::path::FullPath, query: String, headers, peer, body| {
                let app = app.clone();
                async move {
                    let req = Req {
                        method,
                        path: path.as_str().to_string(),
                        query,
                        headers,
                        peer,
                    };
                    dispatch(app, req, body).await
                }
            },
        )
        .boxed()
}

pub struct Req {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub peer: Option<PeerAddr>,
}

impl Req {
    fn param(&self, name: &str) -> Option<String> {
        query_pairs(Some(&self.query))
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

fn json_reply(status: StatusCode, v: &Value) -> Response {
    warp::reply::with_status(warp::reply::json(v), status).into_response()
}

fn error_reply(e: &ApiError) -> Response {
    json_reply(e.status, &e.body())
}

type Result<T> = std::result::Result<T, ApiError>;

async fn dispatch<S, B>(app: Arc<App>, req: Req, body: S) -> Response
where
    S: Stream<Item = std::result::Result<B, warp::Error>> + Send + Unpin,
    B: Buf,
{
    if req.path.starts_with("/v1/") {
        app.metrics
            .http_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    match route(&app, &req, body).await {
        Ok(r) => r,
        Err(e) => error_reply(&e),
    }
}

/// Reads the whole body, refusing more than `max_body_bytes` (413).
async fn read_body<S, B>(app: &App, mut body: S) -> Result<Bytes>
where
    S: Stream<Item = std::result::Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let limit = app.config.max_body_bytes as usize;
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        if out.len() + chunk.remaining() > limit {
            return Err(ApiError::too_large(format!(
                "request body is over max_body_bytes ({limit} bytes)"
            )));
        }
        while chunk.has_remaining() {
            let piece = chunk.chunk();
            out.extend_from_slice(piece);
            let n = piece.len();
            chunk.advance(n);
        }
    }
    Ok(out.into())
}

/// Parses a JSON object body (400 otherwise).
fn object(body: &[u8]) -> Result<Map<String, Value>> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad_request("expected a JSON object body"));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request("expected a JSON object body")),
        Err(e) => Err(ApiError::bad_request(format!("invalid JSON: {e}"))),
    }
}

/// Rejects fields a route does not know (a typo should not be silently ignored).
fn only(m: &Map<String, Value>, allowed: &[&str]) -> Result<()> {
    match m.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::invalid(format!(
            "unknown or read-only field `{k}` (allowed: {})",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

fn opt_u64(m: &Map<String, Value>, key: &str, min: u64) -> Result<Option<u64>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v >= min => Ok(Some(v)),
            _ => Err(ApiError::invalid(format!(
                "`{key}` must be a whole number >= {min}"
            ))),
        },
        Some(_) => Err(ApiError::bad_request(format!("`{key}` must be a number"))),
    }
}

/// The longest TTL an API call may set: the same bound `ttl_seconds` has in the config.
/// Larger values would overflow the millisecond clock and land in the past.
const MAX_TTL_SECONDS: u64 = crate::config::MAX_SECONDS;

/// A TTL in seconds: 1 to [`MAX_TTL_SECONDS`] (422 otherwise).
fn opt_ttl(m: &Map<String, Value>, key: &str) -> Result<Option<u64>> {
    match opt_u64(m, key, 1)? {
        Some(v) if v > MAX_TTL_SECONDS => Err(ApiError::invalid(format!(
            "`{key}` must be a whole number from 1 to {MAX_TTL_SECONDS}"
        ))),
        v => Ok(v),
    }
}

fn opt_string(m: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match m.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(format!("`{key}` must be a string"))),
    }
}

fn opt_strings(m: &Map<String, Value>, key: &str) -> Result<Option<Vec<String>>> {
    match m.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("`{key}` must be an array of strings"))),
        Some(_) => Err(ApiError::bad_request(format!(
            "`{key}` must be an array of strings"
        ))),
    }
}

fn conn_id(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|_| ApiError::not_found(format!("unknown connection {s}")))
}

fn unknown_conn(id: &Uuid) -> ApiError {
    ApiError::not_found(format!("unknown connection {id}"))
}

/// The API key of a request, with the permission its route needs.
fn authorize(app: &App, req: &Req, needed: &[Permission]) -> Result<ApiKey> {
    let header = |n: &str| {
        req.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let presented = header("authorization")
        .and_then(|h| {
            h.split_once(' ')
                .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
                .map(|(_, k)| k.trim())
        })
        .or_else(|| header("x-api-key"));
    let Some(presented) = presented.filter(|k| !k.is_empty()) else {
        return Err(ApiError::unauthorized(
            "this route needs an API key (Authorization: Bearer tk_… or X-Api-Key)",
        ));
    };
    let key = app
        .auth
        .api_key(presented)
        .ok_or_else(|| ApiError::unauthorized("invalid API key"))?;
    if needed.iter().any(|p| key.allows(*p)) {
        Ok(key)
    } else {
        let names: Vec<&str> = needed.iter().map(|p| p.as_str()).collect();
        Err(ApiError::forbidden(format!(
            "API key `{}` lacks the permission this route needs ({})",
            key.name,
            names.join(" or ")
        )))
    }
}

async fn route<S, B>(app: &Arc<App>, req: &Req, body: S) -> Result<Response>
where
    S: Stream<Item = std::result::Result<B, warp::Error>> + Send + Unpin,
    B: Buf,
{
    let segments: Vec<String> = req
        .path
        .trim_start_matches('/')
        .split('/')
        .map(crate::transport::path_segment)
        .collect();
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let m = &req.method;
    let get = *m == Method::GET;

    // Unauthenticated routes.
    match (m, seg.as_slice()) {
        (&Method::GET, ["health"]) => {
            return Ok(json_reply(StatusCode::OK, &json!({"status": "ok"})))
        }
        (&Method::GET, ["ready"]) => {
            return Ok(if app.is_ready() {
                json_reply(StatusCode::OK, &json!({"status": "ready"}))
            } else {
                json_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "starting"}),
                )
            })
        }
        (&Method::GET, ["metrics"]) => {
            if app.config.metrics_require_key {
                authorize(app, req, &[Permission::Read])?;
            }
            return Ok(warp::reply::with_header(
                render_metrics(app),
                "content-type",
                "text/plain; version=0.0.4",
            )
            .into_response());
        }
        (&Method::GET, ["sse"]) => return Ok(crate::transport::sse::handle(app.clone(), req).await),
        (_, ["sse"]) => {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use GET",
            ))
        }
        _ => {}
    }
    if seg.first() != Some(&"v1") {
        return Err(ApiError::not_found(format!("no route {} {}", m, req.path)));
    }
    let read = [Permission::Read];
    let sessions_perm: &[Permission] = if get {
        &[Permission::Sessions, Permission::Read]
    } else {
        &[Permission::Sessions]
    };
    let admin = [Permission::Admin];
    let reg = &app.registry;

    match (m.clone(), &seg[1..]) {
        // ----- connections -----
        (Method::GET, ["connections", id]) => {
            authorize(app, req, &read)?;
            let id = conn_id(id)?;
            let info = reg.info(&id).ok_or_else(|| unknown_conn(&id))?;
            Ok(json_reply(StatusCode::OK, &info))
        }
        (Method::GET, ["connections", id, "user"]) => {
            authorize(app, req, &read)?;
            let id = conn_id(id)?;
            let user = reg.user(&id).ok_or_else(|| unknown_conn(&id))?;
            Ok(json_reply(StatusCode::OK, &json!(user)))
        }
        (Method::GET, ["connections", id, "valid"]) => {
            authorize(app, req, &read)?;
            let valid = Uuid::parse_str(id)
                .map(|id| reg.validate(&id))
                .unwrap_or(false);
            Ok(json_reply(StatusCode::OK, &json!({"valid": valid})))
        }
        (Method::PATCH, ["connections", id, "metadata"]) => {
            authorize(app, req, &admin)?;
            let id = conn_id(id)?;
            let b = object(&read_body(app, body).await?)?;
            only(
                &b,
                &[
                    "ip",
                    "userAgent",
                    "clientVersion",
                    "permissions",
                    "rateLimit",
                ],
            )?;
            let mut patch = MetadataPatch {
                ip: opt_string(&b, "ip")?,
                user_agent: opt_string(&b, "userAgent")?,
                permissions: opt_strings(&b, "permissions")?,
                ..Default::default()
            };
            match b.get("clientVersion") {
                None => {}
                Some(Value::Null) => patch.client_version = Some(None),
                Some(Value::String(s)) => patch.client_version = Some(Some(s.clone())),
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "`clientVersion` must be a string or null",
                    ))
                }
            }
            match b.get("rateLimit") {
                None => {}
                Some(Value::Object(rl)) => {
                    only(rl, &["messagesPerMinute"])?;
                    let v = opt_u64(rl, "messagesPerMinute", 1)?;
                    patch.messages_per_minute = v.map(|v| v.min(u32::MAX as u64) as u32);
                }
                Some(_) => return Err(ApiError::bad_request("`rateLimit` must be an object")),
            }
            let info = reg
                .update_metadata(&id, patch)
                .ok_or_else(|| unknown_conn(&id))?;
            app.store.commit().await?;
            Ok(json_reply(StatusCode::OK, &info))
        }
        (Method::POST, ["connections", id, "ttl"]) => {
            authorize(app, req, &admin)?;
            let id = conn_id(id)?;
            let b = object(&read_body(app, body).await?)?;
            only(&b, &["ttlSeconds"])?;
            let ttl = opt_ttl(&b, "ttlSeconds")?
                .ok_or_else(|| ApiError::bad_request("`ttlSeconds` is required"))?;
            let info = reg.extend_ttl(&id, ttl).ok_or_else(|| unknown_conn(&id))?;
            app.store.commit().await?;
            Ok(json_reply(StatusCode::OK, &info))
        }
        (Method::POST, ["connections", id, "migrate"]) => {
            authorize(app, req, &admin)?;
            let id = conn_id(id)?;
            let b = object(&read_body(app, body).await?)?;
            only(&b, &["newConnectionId"])?;
            let new = opt_string(&b, "newConnectionId")?
                .ok_or_else(|| ApiError::bad_request("`newConnectionId` is required"))?;
            let new = Uuid::parse_str(&new)
                .map_err(|_| ApiError::invalid("`newConnectionId` must be a UUID"))?;
            let info = match reg.migrate(&id, new) {
                Ok(info) => info,
                Err(MigrateError::Unknown) => return Err(unknown_conn(&id)),
                Err(MigrateError::Exists) => {
                    return Err(ApiError::conflict(format!(
                        "connection {new} already exists"
                    )))
                }
            };
            app.store.commit().await?;
            Ok(json_reply(StatusCode::OK, &info))
        }
        (Method::DELETE, ["connections", id]) => {
            authorize(app, req, &admin)?;
            let id = conn_id(id)?;
            let reason = req
                .param("reason")
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "disconnected by an operator".into());
            let reconnect = matches!(req.param("reconnect").as_deref(), Some("true" | "1"));
            let d = if reconnect {
                Disconnect::operator_reconnect(&reason)
            } else {
                Disconnect::operator(&reason)
            };
            if !reg.force_disconnect(&id, d, EventType::Forced) {
                return Err(unknown_conn(&id));
            }
            app.store.commit().await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Method::POST, ["connections", id, "messages"]) => {
            authorize(app, req, &admin)?;
            let id = conn_id(id)?;
            let data = message_data(&read_body(app, body).await?)?;
            let ts = crate::time::rfc3339(crate::time::now_ms());
            let d = reg
                .deliver(&id, FrameTemplate::message(&data, &ts))
                .ok_or_else(|| unknown_conn(&id))?;
            app.store.commit().await?;
            Ok(json_reply(
                StatusCode::OK,
                &json!({"delivered": d.delivered, "seq": d.seq}),
            ))
        }
        // ----- users -----
        (Method::GET, ["users", user, "connections"]) => {
            authorize(app, req, &read)?;
            Ok(json_reply(
                StatusCode::OK,
                &json!(reg.user_connections(user)),
            ))
        }
        (Method::DELETE, ["users", user, "connections"]) => {
            authorize(app, req, &admin)?;
            let reason = req
                .param("reason")
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "disconnected by an operator".into());
            let n = reg.disconnect_user(user, Disconnect::operator(&reason), EventType::Forced);
            app.store.commit().await?;
            Ok(json_reply(StatusCode::OK, &json!({"disconnected": n})))
        }
        (Method::POST, ["users", user, "messages"]) => {
            authorize(app, req, &admin)?;
            let data = message_data(&read_body(app, body).await?)?;
            let ts = crate::time::rfc3339(crate::time::now_ms());
            let d = reg.deliver_to_user(user, FrameTemplate::message(&data, &ts));
            app.store.commit().await?;
            Ok(json_reply(
                StatusCode::OK,
                &json!({"delivered": d.delivered, "stored": d.stored}),
            ))
        }
        // ----- registry-wide -----
        (Method::POST, ["cleanup"]) => {
            authorize(app, req, &admin)?;
            let app2 = app.clone();
            let n = tokio::task::spawn_blocking(move || app2.registry.sweep())
                .await
                .unwrap_or(0);
            app.store.commit().await?;
            Ok(json_reply(StatusCode::OK, &json!({"cleaned": n})))
        }
        (Method::GET, ["limits"]) => {
            authorize(app, req, &read)?;
            let l = reg.limits();
            Ok(json_reply(
                StatusCode::OK,
                &json!({"maxPerUser": l.max_per_user, "maxTotal": l.max_total, "ttlSeconds": l.ttl_seconds}),
            ))
        }
        (Method::GET, ["health"]) => {
            authorize(app, req, &read)?;
            let mut h = reg.health();
            h["sessions"] = json!(app.sessions.count());
            h["bus"] = bus_figures(app);
            Ok(json_reply(StatusCode::OK, &h))
        }
        (Method::GET, ["stats"]) => {
            authorize(app, req, &read)?;
            Ok(json_reply(StatusCode::OK, &reg.stats()))
        }
        (Method::GET, ["events"]) => {
            authorize(app, req, &read)?;
            let q = event_query(req)?;
            Ok(json_reply(StatusCode::OK, &json!(reg.events.query(&q))))
        }
        // ----- sessions -----
        (Method::POST, ["sessions"]) => {
            authorize(app, req, sessions_perm)?;
            let b = object(&read_body(app, body).await?)?;
            only(
                &b,
                &["userId", "ttlSeconds", "data", "permissions", "device"],
            )?;
            let user = opt_string(&b, "userId")?
                .ok_or_else(|| ApiError::bad_request("`userId` is required"))?;
            if user.is_empty() || user.contains('\0') {
                return Err(ApiError::invalid("`userId` must be a non-empty string"));
            }
            let ttl = opt_ttl(&b, "ttlSeconds")?;
            let data = match b.get("data") {
                None | Some(Value::Null) => json!({}),
                Some(v @ Value::Object(_)) => v.clone(),
                Some(_) => return Err(ApiError::bad_request("`data` must be an object")),
            };
            let permissions = opt_strings(&b, "permissions")?.unwrap_or_default();
            let device = b.get("device").cloned().unwrap_or(Value::Null);
            let s = app
                .sessions
                .create(&user, ttl, data, permissions, device)
                .map_err(session_error)?;
            app.store.commit().await?;
            Ok(json_reply(
                StatusCode::CREATED,
                &Sessions::to_json(&s, Some(Vec::new())),
            ))
        }
        (Method::GET, ["sessions", sid]) => {
            authorize(app, req, sessions_perm)?;
            let s = app.sessions.get(sid).ok_or_else(|| unknown_session(sid))?;
            Ok(json_reply(
                StatusCode::OK,
                &Sessions::to_json(&s, Some(reg.session_connections(sid))),
            ))
        }
        (Method::PATCH, ["sessions", sid]) => {
            authorize(app, req, sessions_perm)?;
            let b = object(&read_body(app, body).await?)?;
            only(&b, &["data", "ttlSeconds"])?;
            let data = match b.get("data") {
                None | Some(Value::Null) => None,
                Some(v @ Value::Object(_)) => Some(v.clone()),
                Some(_) => return Err(ApiError::bad_request("`data` must be an object")),
            };
            let ttl = opt_ttl(&b, "ttlSeconds")?;
            let s = app
                .sessions
                .update(sid, data.as_ref(), ttl, Source::Http, None)
                .map_err(|e| match e {
                    SessionError::Unknown => unknown_session(sid),
                    e => session_error(e),
                })?;
            app.store.commit().await?;
            Ok(json_reply(
                StatusCode::OK,
                &Sessions::to_json(&s, Some(reg.session_connections(sid))),
            ))
        }
        (Method::DELETE, ["sessions", sid]) => {
            authorize(app, req, sessions_perm)?;
            app.sessions.delete(sid).map_err(|e| match e {
                SessionError::Unknown => unknown_session(sid),
                e => session_error(e),
            })?;
            app.store.commit().await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Method::GET, ["users", user, "sessions"]) => {
            authorize(app, req, sessions_perm)?;
            let list: Vec<Value> = app
                .sessions
                .list_user(user)
                .iter()
                .map(|s| Sessions::to_json(s, Some(reg.session_connections(&s.id))))
                .collect();
            Ok(json_reply(StatusCode::OK, &json!(list)))
        }
        (Method::DELETE, ["users", user, "sessions"]) => {
            authorize(app, req, sessions_perm)?;
            // Connections first: deleting the sessions publishes `session:deleted`, and the
            // reactor would race us to close the session-linked ones, so `connections`
            // would count only what it had not reached yet.
            let connections = reg.disconnect_user(
                user,
                Disconnect::session_ended("logged out everywhere"),
                EventType::Disconnected,
            );
            let sessions = app.sessions.delete_user(user).map_err(session_error)?;
            app.store.commit().await?;
            Ok(json_reply(
                StatusCode::OK,
                &json!({"sessions": sessions, "connections": connections}),
            ))
        }
        (Method::GET, ["bus"]) => {
            authorize(app, req, sessions_perm)?;
            bus_stream(app, req)
        }
        (Method::GET, ["backup"]) => {
            authorize(app, req, &admin)?;
            crate::backup::http_snapshot(app).await
        }
        (_, rest) => {
            let known = matches!(
                rest,
                ["connections", _]
                    | [
                        "connections",
                        _,
                        "user" | "valid" | "metadata" | "ttl" | "migrate" | "messages"
                    ]
                    | ["users", _, "connections" | "messages" | "sessions"]
                    | ["cleanup"
                        | "limits"
                        | "health"
                        | "stats"
                        | "events"
                        | "sessions"
                        | "bus"
                        | "backup"]
                    | ["sessions", _]
            );
            if known {
                Err(ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{} is not allowed on {}", m, req.path),
                ))
            } else {
                Err(ApiError::not_found(format!("no route {} {}", m, req.path)))
            }
        }
    }
}

fn unknown_session(sid: &str) -> ApiError {
    ApiError::not_found(format!("unknown session {sid}"))
}

fn session_error(e: SessionError) -> ApiError {
    match e {
        SessionError::Unknown => ApiError::not_found("unknown session"),
        e => ApiError::internal(e),
    }
}

/// The `data` of a message body, as JSON text.
fn message_data(body: &[u8]) -> Result<String> {
    let b = object(body)?;
    only(&b, &["data"])?;
    let data = b
        .get("data")
        .ok_or_else(|| ApiError::bad_request("`data` is required"))?;
    Ok(data.to_string())
}

fn event_query(req: &Req) -> Result<crate::events::EventQuery> {
    let mut q = crate::events::EventQuery {
        limit: 100,
        ..Default::default()
    };
    for (k, v) in query_pairs(Some(&req.query)) {
        match k.as_str() {
            "connectionId" => {
                q.connection_id = Some(
                    Uuid::parse_str(&v)
                        .map_err(|_| ApiError::bad_request("`connectionId` must be a UUID"))?,
                )
            }
            "userId" => q.user_id = Some(v),
            "type" => {
                q.event_type =
                    Some(EventType::parse(&v).ok_or_else(|| {
                        ApiError::bad_request(format!("unknown event type `{v}`"))
                    })?)
            }
            "since" => {
                q.since = Some(
                    crate::time::parse_rfc3339(&v)
                        .ok_or_else(|| ApiError::bad_request("`since` must be an RFC 3339 time"))?,
                )
            }
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request("`limit` must be a whole number from 1 to 10000")
                    })?
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{k}`"
                )))
            }
        }
    }
    Ok(q)
}

fn bus_figures(app: &App) -> Value {
    let published: HashMap<&str, u64> = Channel::ALL
        .iter()
        .map(|c| (c.name(), app.bus.published(*c)))
        .collect();
    json!({"published": published, "lagged": app.bus.lagged()})
}

/// `GET /v1/bus?channels=a,b`: bus events as an SSE stream, until the client leaves or the
/// server stops. A subscriber that falls behind gets a `lagged` event and goes on.
fn bus_stream(app: &Arc<App>, req: &Req) -> Result<Response> {
    let names = req.param("channels").unwrap_or_default();
    let channels: Vec<Channel> = if names.is_empty() {
        Channel::ALL.to_vec()
    } else {
        names
            .split(',')
            .map(|n| {
                Channel::parse(n.trim())
                    .ok_or_else(|| ApiError::bad_request(format!("unknown channel `{n}`")))
            })
            .collect::<Result<_>>()?
    };
    let receivers = channels.into_iter().map(|c| {
        let bus = app.bus.clone();
        tokio_stream_from(app.bus.subscribe(c), bus)
    });
    let merged = futures_util::stream::select_all(receivers);
    let mut stopping = app.stopping.subscribe();
    let stop = async move {
        let _ = stopping.wait_for(|s| *s).await;
    };
    let events = merged.take_until(Box::pin(stop)).map(Ok::<_, Infallible>);
    Ok(warp::sse::reply(warp::sse::keep_alive().stream(events)).into_response())
}

fn tokio_stream_from(
    rx: tokio::sync::broadcast::Receiver<crate::bus::BusEvent>,
    bus: Arc<dyn crate::bus::Bus>,
) -> std::pin::Pin<Box<dyn Stream<Item = warp::sse::Event> + Send + Sync>> {
    use tokio::sync::broadcast::error::RecvError;
    Box::pin(futures_util::stream::unfold(
        (rx, bus),
        |(mut rx, bus)| async move {
            let e = match rx.recv().await {
                Ok(ev) => warp::sse::Event::default()
                    .event(ev.channel.name())
                    .data(ev.payload.to_string()),
                Err(RecvError::Lagged(n)) => {
                    bus.record_lag(n);
                    warp::sse::Event::default()
                        .event("lagged")
                        .data(json!({"missed": n}).to_string())
                }
                Err(RecvError::Closed) => return None,
            };
            Some((e, (rx, bus)))
        },
    ))
}

fn render_metrics(app: &App) -> String {
    let (by_state, by_type) = app.registry.count_by();
    let state_series = by_state
        .iter()
        .map(|(k, v)| (format!("state=\"{k}\""), *v as f64))
        .collect();
    let type_series = by_type
        .iter()
        .map(|(k, v)| (format!("type=\"{k}\""), *v as f64))
        .collect();
    let published = Channel::ALL
        .iter()
        .map(|c| {
            (
                format!("channel=\"{}\"", c.name()),
                app.bus.published(*c) as f64,
            )
        })
        .collect();
    app.metrics.render(&[
        (
            "tether_connections",
            "Connections in the registry, by state",
            state_series,
        ),
        (
            "tether_connections_by_type",
            "Connections in the registry, by transport",
            type_series,
        ),
        (
            "tether_sessions",
            "Sessions stored",
            vec![(String::new(), app.sessions.count() as f64)],
        ),
        (
            "tether_bus_published",
            "Bus events published since start, by channel",
            published,
        ),
        (
            "tether_bus_lagged",
            "Bus events lost by lagging subscribers since start",
            vec![(String::new(), app.bus.lagged() as f64)],
        ),
        (
            "tether_resident_memory_bytes",
            "Resident set size of the server",
            vec![(String::new(), crate::metrics::rss_bytes() as f64)],
        ),
        (
            "tether_store_flushes",
            "Store flushes since start",
            vec![(String::new(), app.store.flusher.flushes() as f64)],
        ),
        (
            "tether_store_bytes",
            "Size of the store on disk",
            vec![(String::new(), app.store.trees.size_on_disk() as f64)],
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Bus, MemoryBus};

    /// `/v1/bus` tells a subscriber that fell behind how much it missed, then goes on.
    #[tokio::test]
    async fn a_lagging_bus_stream_gets_a_lagged_event_and_goes_on() {
        let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new(2));
        let mut events = tokio_stream_from(bus.subscribe(Channel::SessionCreated), bus.clone());
        for n in 0..5 {
            bus.publish(Channel::SessionCreated, json!({"n": n}));
        }
        let first = events.next().await.unwrap().to_string();
        assert!(first.contains("event:lagged"), "{first}");
        assert!(first.contains(r#"{"missed":3}"#), "{first}");
        assert_eq!(bus.lagged(), 3);
        for n in 3..5 {
            let e = events.next().await.unwrap().to_string();
            assert!(e.contains("event:session:created"), "{e}");
            assert!(e.contains(&format!(r#"{{"n":{n}}}"#)), "{e}");
        }
    }
}
