//! The HTTP API (SPEC §5): `/health`, `/ready`, `/metrics` and every `/v1` route.
//!
//! One warp filter hands each request to [`dispatch`], which sends it by its first path
//! segment to the module of its resource: [`connections`], [`users`], [`sessions`],
//! [`ops`] (limits, health, stats, events, cleanup, the bus, backups, metrics, the OpenAPI
//! document of `docs/openapi.json`), and [`dashboard`] (the operator's page). Each module
//! is one `match` over (method, path) that names every route it serves, so a known path with
//! another method is a 405 with `Allow`. Every failure is a JSON `{"error": {...}}` with a
//! fitting status ([`crate::error`]); nothing a client sends can produce a 500. Routes reach
//! state and sockets only through the [`Node`].

pub mod body;
mod connections;
mod dashboard;
mod ops;
mod sessions;
mod users;

use std::pin::Pin;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use warp::filters::BoxedFilter;
use warp::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use warp::reply::{Reply, Response};
use warp::Filter;

use crate::auth::{ApiKey, Permission};
use crate::error::{ApiError, ErrorCode};
use crate::node::Node;
use crate::transport::{query_pairs, PeerAddr};

type Result<T> = std::result::Result<T, ApiError>;

/// How `PATCH /v1/connections/{id}/metadata` reads its body; public for the fuzzers.
pub use connections::metadata_patch;

pub fn routes(node: Arc<Node>) -> BoxedFilter<(Response,)> {
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(warp::path::full())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<PeerAddr>())
        .and(warp::body::stream())
        .then(
            move |method, path: warp::path::FullPath, query: String, headers, peer, body| {
                let node = node.clone();
                async move {
                    let req = Req {
                        method,
                        path: path.as_str().to_string(),
                        query,
                        headers,
                        peer,
                    };
                    dispatch(node, req, Body::new(body)).await
                }
            },
        )
        .boxed()
}

/// A request as the routes see it.
pub struct Req {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub peer: Option<PeerAddr>,
}

impl Req {
    pub fn param(&self, name: &str) -> Option<String> {
        query_pairs(Some(&self.query))
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

type Chunks = Pin<Box<dyn Stream<Item = std::result::Result<Bytes, warp::Error>> + Send>>;

/// A request body, read only by the routes that take one, after they authorized it.
pub struct Body(Chunks);

impl Body {
    fn new<S, B>(s: S) -> Body
    where
        S: Stream<Item = std::result::Result<B, warp::Error>> + Send + 'static,
        B: Buf + Send,
    {
        Body(Box::pin(
            s.map(|c| c.map(|mut b| b.copy_to_bytes(b.remaining()))),
        ))
    }

    /// Reads the whole body, refusing more than `limit` bytes (413).
    async fn read(mut self, limit: usize) -> Result<Bytes> {
        let mut out = Vec::new();
        while let Some(chunk) = self.0.next().await {
            let chunk = chunk
                .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
            if out.len() + chunk.len() > limit {
                return Err(ApiError::too_large(format!(
                    "request body is over max_body_bytes ({limit} bytes)"
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.into())
    }
}

/// One request in a route: the node, the request, and what a route does first.
pub struct Ctx<'a> {
    pub node: &'a Arc<Node>,
    pub req: &'a Req,
}

impl Ctx<'_> {
    /// The API key of the request, with one of the permissions its route needs.
    fn authorize(&self, needed: &[Permission]) -> Result<ApiKey> {
        let header = |n: &str| {
            self.req
                .headers
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
        let key = self
            .node
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

    /// The body as a JSON object (400 otherwise), refusing more than `max_body_bytes`.
    async fn object(&self, body: Body) -> Result<serde_json::Map<String, Value>> {
        let bytes = body.read(self.node.config.max_body_bytes as usize).await?;
        body::object(&bytes)
    }

    fn is_get(&self) -> bool {
        self.req.method == Method::GET
    }
}

/// The permissions of the session routes: `sessions`, or `read` for a GET.
fn sessions_perm(ctx: &Ctx<'_>) -> &'static [Permission] {
    if ctx.is_get() {
        &[Permission::Sessions, Permission::Read]
    } else {
        &[Permission::Sessions]
    }
}

const READ: &[Permission] = &[Permission::Read];
const ADMIN: &[Permission] = &[Permission::Admin];

pub fn json_reply(status: StatusCode, v: &Value) -> Response {
    warp::reply::with_status(warp::reply::json(v), status).into_response()
}

fn ok(v: &Value) -> Result<Response> {
    Ok(json_reply(StatusCode::OK, v))
}

fn error_reply(e: &ApiError) -> Response {
    json_reply(e.status, &e.body())
}

/// A route's path is known but not its method: 405, with the methods it takes.
fn not_allowed(req: &Req, allow: &[Method]) -> ApiError {
    let names: Vec<&str> = allow.iter().map(Method::as_str).collect();
    let mut e = ApiError::method_not_allowed(format!(
        "{} is not allowed on {} (allowed: {})",
        req.method,
        req.path,
        names.join(", ")
    ));
    e.allow = names.join(", ");
    e
}

fn no_route(req: &Req) -> ApiError {
    ApiError::not_found(format!("no route {} {}", req.method, req.path))
}

async fn dispatch(node: Arc<Node>, req: Req, body: Body) -> Response {
    if req.path.starts_with("/v1/") {
        node.metrics
            .http_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let ctx = Ctx {
        node: &node,
        req: &req,
    };
    match route(&ctx, body).await {
        Ok(r) => r,
        Err(e) => {
            let mut r = error_reply(&e);
            if !e.allow.is_empty() {
                if let Ok(v) = HeaderValue::from_str(&e.allow) {
                    r.headers_mut().insert(header::ALLOW, v);
                }
            }
            r
        }
    }
}

async fn route(ctx: &Ctx<'_>, body: Body) -> Result<Response> {
    let segments: Vec<String> = ctx
        .req
        .path
        .trim_start_matches('/')
        .split('/')
        .map(crate::transport::path_segment)
        .collect();
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    // A node that cannot reach its state of record (Redis) answers nothing it cannot stand
    // behind: every /v1 route is 503 until it is back. (A full disk refuses writes only;
    // reads of what is in memory still answer.)
    if seg.first() == Some(&"v1") {
        if let Err((ErrorCode::Unavailable, why)) = ctx.node.writable() {
            return Err(ApiError::unavailable(why));
        }
    }
    match seg.as_slice() {
        ["v1", "connections", rest @ ..] => connections::route(ctx, rest, body).await,
        ["v1", "users", user, rest @ ..] => users::route(ctx, user, rest, body).await,
        ["v1", "sessions", rest @ ..] => sessions::route(ctx, rest, body).await,
        ["v1", rest @ ..] => ops::route_v1(ctx, rest).await,
        ["dashboard", rest @ ..] => dashboard::route(ctx, rest),
        rest => ops::route_open(ctx, rest).await,
    }
}
