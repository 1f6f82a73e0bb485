//! `/v1/connections…`: the seed's ConnectionManager, one route each.

use serde_json::{json, Value};
use uuid::Uuid;
use warp::http::{Method, StatusCode};
use warp::reply::{Reply, Response};

use super::body::{
    conn_id, message_data, only, only_in, opt_range, opt_string, opt_strings, opt_ttl, reason,
    unknown_conn,
};
use super::{not_allowed, ok, Body, Ctx, Result, ADMIN, READ};
use crate::error::ApiError;
use crate::node::{MetadataPatch, MigrateError};
use crate::protocol::Disconnect;

pub async fn route(ctx: &Ctx<'_>, rest: &[&str], body: Body) -> Result<Response> {
    let m = &ctx.req.method;
    match (m, rest) {
        (&Method::GET, [id]) => {
            ctx.authorize(READ)?;
            let id = conn_id(id)?;
            let info = ctx
                .node
                .connection(&id)
                .await
                .ok_or_else(|| unknown_conn(&id))?;
            ok(&info)
        }
        (&Method::DELETE, [id]) => {
            ctx.authorize(ADMIN)?;
            let id = conn_id(id)?;
            let reason = reason(ctx.req);
            let reconnect = matches!(ctx.req.param("reconnect").as_deref(), Some("true" | "1"));
            let d = if reconnect {
                Disconnect::operator_reconnect(&reason)
            } else {
                Disconnect::operator(&reason)
            };
            if !ctx.node.disconnect(&id, d).await? {
                return Err(unknown_conn(&id));
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (_, [_]) => Err(not_allowed(ctx.req, &[Method::GET, Method::DELETE])),
        (&Method::GET, [id, "user"]) => {
            ctx.authorize(READ)?;
            let id = conn_id(id)?;
            let user = ctx
                .node
                .connection_user(&id)
                .await
                .ok_or_else(|| unknown_conn(&id))?;
            ok(&json!(user))
        }
        (&Method::GET, [id, "valid"]) => {
            ctx.authorize(READ)?;
            let valid = match Uuid::parse_str(id) {
                Ok(id) => ctx.node.connection_valid(&id).await,
                Err(_) => false,
            };
            ok(&json!({ "valid": valid }))
        }
        (&Method::PATCH, [id, "metadata"]) => {
            ctx.authorize(ADMIN)?;
            let id = conn_id(id)?;
            let patch = metadata_patch(&ctx.object(body).await?)?;
            let info = ctx
                .node
                .update_metadata(&id, patch)
                .await?
                .ok_or_else(|| unknown_conn(&id))?;
            ok(&info)
        }
        (&Method::POST, [id, "ttl"]) => {
            ctx.authorize(ADMIN)?;
            let id = conn_id(id)?;
            let b = ctx.object(body).await?;
            only(&b, &["ttlSeconds"])?;
            let ttl = opt_ttl(&b, "ttlSeconds")?
                .ok_or_else(|| ApiError::bad_request("`ttlSeconds` is required"))?;
            let info = ctx
                .node
                .extend_ttl(&id, ttl)
                .await?
                .ok_or_else(|| unknown_conn(&id))?;
            ok(&info)
        }
        (&Method::POST, [id, "migrate"]) => {
            ctx.authorize(ADMIN)?;
            let id = conn_id(id)?;
            let b = ctx.object(body).await?;
            only(&b, &["newConnectionId"])?;
            let new = opt_string(&b, "newConnectionId")?
                .ok_or_else(|| ApiError::bad_request("`newConnectionId` is required"))?;
            let new = Uuid::parse_str(&new)
                .map_err(|_| ApiError::invalid("`newConnectionId` must be a UUID"))?;
            match ctx.node.migrate(&id, new).await? {
                Ok(info) => ok(&info),
                Err(MigrateError::Unknown) => Err(unknown_conn(&id)),
                Err(MigrateError::Exists) => Err(ApiError::conflict(format!(
                    "connection {new} already exists"
                ))),
            }
        }
        (&Method::POST, [id, "messages"]) => {
            ctx.authorize(ADMIN)?;
            let id = conn_id(id)?;
            let data = message_data(&ctx.object(body).await?)?;
            let d = ctx
                .node
                .send_to_connection(&id, &data)
                .await?
                .ok_or_else(|| unknown_conn(&id))?;
            ok(&json!({"delivered": d.delivered, "seq": d.seq}))
        }
        (_, [_, "user" | "valid"]) => Err(not_allowed(ctx.req, &[Method::GET])),
        (_, [_, "metadata"]) => Err(not_allowed(ctx.req, &[Method::PATCH])),
        (_, [_, "ttl" | "migrate" | "messages"]) => Err(not_allowed(ctx.req, &[Method::POST])),
        _ => Err(super::no_route(ctx.req)),
    }
}

/// `GET /v1/registry?userId=&after=&limit=`: every connection, ordered by user id and
/// then connectedAt, a page at a time; `next` is the `after` of the next page.
pub async fn list(ctx: &Ctx<'_>) -> Result<Response> {
    ctx.authorize(READ)?;
    let mut user = None;
    let mut after = None;
    let mut limit = 100usize;
    for (k, v) in crate::transport::query_pairs(Some(&ctx.req.query)) {
        match k.as_str() {
            "userId" if !v.is_empty() => user = Some(v),
            "userId" => {}
            "after" => {
                after = Some(
                    Uuid::parse_str(&v)
                        .map_err(|_| ApiError::bad_request("`after` must be a connection id"))?,
                )
            }
            "limit" => limit = super::body::limit(&v, 1000)?,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{k}`"
                )))
            }
        }
    }
    let page = ctx
        .node
        .list_connections(user.as_deref(), after.as_ref(), limit)
        .await;
    let next = if page.len() == limit {
        page.last().map(|c| c["connectionId"].clone())
    } else {
        None
    };
    ok(&json!({"connections": page, "next": next}))
}

/// The patch of `PATCH /v1/connections/{id}/metadata`, read from its body object.
pub fn metadata_patch(b: &serde_json::Map<String, Value>) -> Result<MetadataPatch> {
    only(
        b,
        &[
            "ip",
            "userAgent",
            "clientVersion",
            "permissions",
            "rateLimit",
        ],
    )?;
    let mut patch = MetadataPatch {
        ip: opt_string(b, "ip")?,
        user_agent: opt_string(b, "userAgent")?,
        permissions: opt_strings(b, "permissions")?,
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
            only_in(rl, "rateLimit.", &["messagesPerMinute"])?;
            let v = opt_range(
                rl,
                "messagesPerMinute",
                "rateLimit.messagesPerMinute",
                1,
                u32::MAX.into(),
            )?;
            patch.messages_per_minute = v.map(|v| u32::try_from(v).expect("checked above"));
        }
        Some(_) => return Err(ApiError::bad_request("`rateLimit` must be an object")),
    }
    Ok(patch)
}
