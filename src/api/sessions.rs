//! `/v1/sessions…`: server-side sessions.

use serde_json::Value;
use warp::http::{Method, StatusCode};
use warp::reply::{Reply, Response};

use super::body::{only, opt_object, opt_string, opt_strings, opt_ttl, unknown_session};
use super::{json_reply, not_allowed, ok, sessions_perm, Body, Ctx, Result};
use crate::error::{ApiError, ErrorCode};
use crate::node::{NewSession, SessionError};

fn session_error(sid: &str, e: SessionError) -> ApiError {
    match e {
        SessionError::Unknown => unknown_session(sid),
        SessionError::TooLarge { .. } => ApiError::new(ErrorCode::SessionTooLarge, e.to_string()),
        SessionError::TooMany { .. } => ApiError::new(ErrorCode::TooManySessions, e.to_string()),
        SessionError::Store(e) => e.into(),
    }
}

pub async fn route(ctx: &Ctx<'_>, rest: &[&str], body: Body) -> Result<Response> {
    let m = &ctx.req.method;
    match (m, rest) {
        (&Method::POST, []) => {
            ctx.authorize(sessions_perm(ctx))?;
            let b = ctx.object(body).await?;
            only(
                &b,
                &["userId", "ttlSeconds", "data", "permissions", "device"],
            )?;
            let user = opt_string(&b, "userId")?
                .ok_or_else(|| ApiError::bad_request("`userId` is required"))?;
            if user.is_empty() || user.contains('\0') {
                return Err(ApiError::invalid(
                    "`userId` must be a non-empty string without NUL characters",
                ));
            }
            let new = NewSession {
                user_id: user,
                ttl_seconds: opt_ttl(&b, "ttlSeconds")?,
                data: Value::Object(opt_object(&b, "data")?.cloned().unwrap_or_default()),
                permissions: opt_strings(&b, "permissions")?.unwrap_or_default(),
                device: b.get("device").cloned().unwrap_or(Value::Null),
            };
            let s = ctx
                .node
                .create_session(new)
                .await
                .map_err(|e| session_error("", e))?;
            Ok(json_reply(StatusCode::CREATED, &s))
        }
        (_, []) => Err(not_allowed(ctx.req, &[Method::POST])),
        (&Method::GET, [sid]) => {
            ctx.authorize(sessions_perm(ctx))?;
            let s = ctx
                .node
                .session(sid)
                .await?
                .ok_or_else(|| unknown_session(sid))?;
            ok(&s)
        }
        (&Method::PATCH, [sid]) => {
            ctx.authorize(sessions_perm(ctx))?;
            let b = ctx.object(body).await?;
            only(&b, &["data", "ttlSeconds"])?;
            let data = opt_object(&b, "data")?;
            let ttl = opt_ttl(&b, "ttlSeconds")?;
            let s = ctx
                .node
                .update_session(sid, data, ttl)
                .await
                .map_err(|e| session_error(sid, e))?;
            ok(&s)
        }
        (&Method::DELETE, [sid]) => {
            ctx.authorize(sessions_perm(ctx))?;
            ctx.node
                .delete_session(sid)
                .await
                .map_err(|e| session_error(sid, e))?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (_, [_]) => Err(not_allowed(
            ctx.req,
            &[Method::GET, Method::PATCH, Method::DELETE],
        )),
        _ => Err(super::no_route(ctx.req)),
    }
}
