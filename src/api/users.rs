//! `/v1/users/{userId}/…`: everything of one user at once.

use serde_json::json;
use warp::http::{HeaderValue, Method};
use warp::reply::Response;

use super::body::{message_data, reason};
use super::{not_allowed, ok, sessions_perm, Body, Ctx, Result, ADMIN, READ};
use crate::error::ApiError;
use crate::protocol::Disconnect;

/// The largest page of `GET /v1/users/{id}/sessions`, and the page size when only `after`
/// is given.
const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;

pub async fn route(ctx: &Ctx<'_>, user: &str, rest: &[&str], body: Body) -> Result<Response> {
    let m = &ctx.req.method;
    match (m, rest) {
        (&Method::GET, ["connections"]) => {
            ctx.authorize(READ)?;
            ok(&json!(ctx.node.user_connections(user).await))
        }
        (&Method::DELETE, ["connections"]) => {
            ctx.authorize(ADMIN)?;
            let d = Disconnect::operator(&reason(ctx.req));
            let n = ctx.node.disconnect_user(user, d).await?;
            ok(&json!({ "disconnected": n }))
        }
        (_, ["connections"]) => Err(not_allowed(ctx.req, &[Method::GET, Method::DELETE])),
        (&Method::POST, ["messages"]) => {
            ctx.authorize(ADMIN)?;
            let data = message_data(&ctx.object(body).await?)?;
            let d = ctx.node.send_to_user(user, &data).await?;
            ok(&json!({"delivered": d.delivered, "stored": d.stored}))
        }
        (_, ["messages"]) => Err(not_allowed(ctx.req, &[Method::POST])),
        (&Method::GET, ["sessions"]) => {
            ctx.authorize(sessions_perm(ctx))?;
            sessions_page(ctx, user).await
        }
        (&Method::DELETE, ["sessions"]) => {
            ctx.authorize(sessions_perm(ctx))?;
            let (sessions, connections) = ctx.node.logout_everywhere(user).await?;
            ok(&json!({"sessions": sessions, "connections": connections}))
        }
        (_, ["sessions"]) => Err(not_allowed(ctx.req, &[Method::GET, Method::DELETE])),
        _ => Err(super::no_route(ctx.req)),
    }
}

/// `GET /v1/users/{id}/sessions[?limit=&after=]`: without paging parameters every live
/// session (at most `max_sessions_per_user`); with them a page in session id order. Either
/// way a plain array; a full page carries `Link: <…?after=<last id>&limit=n>; rel="next"`.
async fn sessions_page(ctx: &Ctx<'_>, user: &str) -> Result<Response> {
    let mut limit = None;
    let mut after = None;
    for (k, v) in crate::transport::query_pairs(Some(&ctx.req.query)) {
        match k.as_str() {
            "limit" => limit = Some(super::body::limit(&v, MAX_PAGE)?),
            "after" if v.is_empty() => {}
            "after" => after = Some(v),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{k}` (allowed: limit, after)"
                )))
            }
        }
    }
    if limit.is_none() && after.is_none() {
        return ok(&json!(ctx.node.user_sessions(user).await?));
    }
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    let page = ctx
        .node
        .user_sessions_page(user, after.as_deref(), limit)
        .await?;
    let next = (page.len() == limit)
        .then(|| page.last().and_then(|s| s["sessionId"].as_str()))
        .flatten()
        .map(|last| {
            format!(
                "</v1/users/{}/sessions?after={}&limit={limit}>; rel=\"next\"",
                encode(user),
                encode(last)
            )
        });
    let mut r = ok(&json!(page))?;
    if let Some(v) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
        r.headers_mut().insert("link", v);
    }
    Ok(r)
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
