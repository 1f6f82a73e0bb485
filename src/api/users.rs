//! `/v1/users/{userId}/…`: everything of one user at once.

use serde_json::json;
use warp::http::Method;
use warp::reply::Response;

use super::body::{message_data, reason};
use super::{not_allowed, ok, sessions_perm, Body, Ctx, Result, ADMIN, READ};
use crate::protocol::Disconnect;

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
            ok(&json!(ctx.node.user_sessions(user).await?))
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
