//! The operator's routes: `/health`, `/ready`, `/metrics`, and `/v1` limits, health, stats,
//! events, cleanup, the bus stream and backups.

use std::convert::Infallible;

use futures_util::StreamExt;
use serde_json::json;
use uuid::Uuid;
use warp::http::{Method, StatusCode};
use warp::reply::{Reply, Response};

use super::{json_reply, not_allowed, ok, sessions_perm, Ctx, Result, ADMIN, READ};
use crate::auth::Permission;
use crate::bus::{Channel, Received};
use crate::error::{ApiError, ErrorCode};
use crate::model::EventType;
use crate::node::EventQuery;

/// Routes outside `/v1`: no API key (but `/metrics` may ask for one).
pub async fn route_open(ctx: &Ctx<'_>, seg: &[&str]) -> Result<Response> {
    let m = &ctx.req.method;
    match (m, seg) {
        (&Method::GET, ["health"]) => ok(&json!({"status": "ok"})),
        (&Method::GET, ["ready"]) => Ok(match ctx.node.writable() {
            // Not ready for traffic that writes (nor, at start-up, for recovery); reads and
            // /health still answer.
            Err((code, reason)) => json_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({
                    "status": if code == ErrorCode::Unavailable { "unavailable" } else { "unwritable" },
                    "code": code,
                    "reason": reason,
                }),
            ),
            Ok(()) if !ctx.node.is_ready() => json_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "starting"}),
            ),
            Ok(()) => json_reply(StatusCode::OK, &json!({"status": "ready"})),
        }),
        (&Method::GET, ["metrics"]) => {
            if ctx.node.config.metrics_require_key {
                ctx.authorize(&[Permission::Read])?;
            }
            Ok(warp::reply::with_header(
                ctx.node.metrics_text().await,
                "content-type",
                "text/plain; version=0.0.4",
            )
            .into_response())
        }
        (_, ["health" | "ready" | "metrics" | "sse" | "ws"]) => {
            Err(not_allowed(ctx.req, &[Method::GET]))
        }
        _ => Err(super::no_route(ctx.req)),
    }
}

/// The OpenAPI document of this API (`GET /v1/openapi.json`), as kept in `docs/`.
const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// `/v1` routes that are not of one resource.
pub async fn route_v1(ctx: &Ctx<'_>, rest: &[&str]) -> Result<Response> {
    let m = &ctx.req.method;
    match (m, rest) {
        (&Method::POST, ["cleanup"]) => {
            ctx.authorize(ADMIN)?;
            let n = ctx.node.cleanup().await?;
            ok(&json!({ "cleaned": n }))
        }
        (&Method::GET, ["registry"]) => super::connections::list(ctx).await,
        (&Method::GET, ["nodes"]) => {
            ctx.authorize(READ)?;
            ok(&json!(ctx.node.nodes().await?))
        }
        (&Method::GET, ["limits"]) => {
            ctx.authorize(READ)?;
            ok(&ctx.node.limits())
        }
        (&Method::GET, ["health"]) => {
            ctx.authorize(READ)?;
            ok(&ctx.node.health().await)
        }
        (&Method::GET, ["stats"]) => {
            ctx.authorize(READ)?;
            ok(&ctx.node.stats().await)
        }
        (&Method::GET, ["events"]) => {
            ctx.authorize(READ)?;
            let q = event_query(ctx)?;
            ok(&json!(ctx.node.events(&q).await?))
        }
        (&Method::GET, ["bus"]) => {
            ctx.authorize(sessions_perm(ctx))?;
            bus_stream(ctx)
        }
        (&Method::GET, ["openapi.json"]) => {
            ctx.authorize(READ)?;
            Ok(
                warp::reply::with_header(OPENAPI, "content-type", "application/json")
                    .into_response(),
            )
        }
        (&Method::GET, ["backup"]) => {
            ctx.authorize(ADMIN)?;
            let bytes = ctx.node.snapshot().await?;
            let mut res = Response::new(bytes.into());
            res.headers_mut().insert(
                "content-type",
                "application/octet-stream".parse().expect("static"),
            );
            Ok(res)
        }
        (_, ["cleanup"]) => Err(not_allowed(ctx.req, &[Method::POST])),
        (
            _,
            ["registry" | "nodes" | "limits" | "health" | "stats" | "events" | "bus" | "backup"
            | "openapi.json"],
        ) => Err(not_allowed(ctx.req, &[Method::GET])),
        _ => Err(super::no_route(ctx.req)),
    }
}

fn event_query(ctx: &Ctx<'_>) -> Result<EventQuery> {
    let mut q = EventQuery {
        limit: 100,
        ..Default::default()
    };
    for (k, v) in crate::transport::query_pairs(Some(&ctx.req.query)) {
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
            "limit" => q.limit = super::body::limit(&v, 10_000)?,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{k}`"
                )))
            }
        }
    }
    Ok(q)
}

/// `GET /v1/bus?channels=a,b`: bus events as an SSE stream, until the client leaves or the
/// server stops. A subscriber that falls behind gets a `lagged` event and goes on.
fn bus_stream(ctx: &Ctx<'_>) -> Result<Response> {
    let names = ctx.req.param("channels").unwrap_or_default();
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
    let mut stopping = ctx.node.stopping.subscribe();
    let stop = async move {
        let _ = stopping.wait_for(|s| *s).await;
    };
    let events = ctx
        .node
        .subscribe(&channels)
        .map(|r| Ok::<_, Infallible>(bus_event(r)))
        .take_until(Box::pin(stop));
    Ok(warp::sse::reply(warp::sse::keep_alive().stream(events)).into_response())
}

/// One received bus event as an SSE event named for its channel.
fn bus_event(r: Received) -> warp::sse::Event {
    match r {
        Received::Event(e) => {
            let name = match e.topic() {
                crate::bus::Topic::Channel(c) => c.name(),
                crate::bus::Topic::Node(_) => "command",
            };
            warp::sse::Event::default()
                .event(name)
                .data(e.payload().to_string())
        }
        Received::Lagged(n) => warp::sse::Event::default()
            .event("lagged")
            .data(json!({ "missed": n }).to_string()),
        // The bus itself was out of reach: how much was missed is not known.
        Received::Resubscribed => warp::sse::Event::default()
            .event("lagged")
            .data(json!({ "missed": null }).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Bus, BusEvent, MemoryBus, Topic};

    /// `/v1/bus` tells a subscriber that fell behind how much it missed, then goes on.
    #[tokio::test]
    async fn a_lagging_bus_stream_gets_a_lagged_event_and_goes_on() {
        let bus = MemoryBus::new(2);
        let mut events = bus
            .subscribe(&[Topic::Channel(Channel::ConnectionEvents)])
            .map(bus_event);
        for n in 0..5 {
            bus.publish(BusEvent::Connection(json!({ "n": n })))
                .await
                .unwrap();
        }
        let first = events.next().await.unwrap().to_string();
        assert!(first.contains("event:lagged"), "{first}");
        assert!(first.contains(r#"{"missed":3}"#), "{first}");
        assert_eq!(bus.lagged(), 3);
        for n in 3..5 {
            let e = events.next().await.unwrap().to_string();
            assert!(e.contains("event:connection:events"), "{e}");
            assert!(e.contains(&format!(r#"{{"n":{n}}}"#)), "{e}");
        }
    }
}
