//! Transports: one connection's life over a socket. [`ws`] for WebSocket, [`sse`] for
//! Server-Sent Events. What both share (where credentials and device info come from, how a
//! credential becomes a user, the `welcome` frame) is here.

pub mod outbox;
pub mod sse;
pub mod ws;

use std::net::SocketAddr;

use serde_json::json;
use warp::http::HeaderMap;

use crate::app::App;
use crate::auth::{AuthMethod, AuthUser};
use crate::error::Disconnect;
use crate::metrics::Metrics;
use crate::model::{ConnRecord, ConnType, Metadata, RateLimit};
use crate::registry::{NewConn, Registered, ResumeRequest};
use crate::time::{now_ms, rfc3339};

/// The peer address of an HTTP connection, put into request extensions by the listener.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// A credential as presented, before it is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    Token(String),
    Session(String),
}

/// Everything a connection request says about who and where it is.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub credential: Option<Presented>,
    pub resume: Option<ResumeRequest>,
    pub ip: String,
    pub user_agent: String,
    pub client_version: Option<String>,
    /// SSE's `Last-Event-ID` (`<connectionId>:<seq>`).
    pub last_event_id: Option<String>,
}

/// Parses a query string into decoded pairs.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    let Some(q) = query else { return Vec::new() };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// Decodes one URL path segment: `%XX` escapes only; `+` is a plain character in a path
/// (`bob+1@example.com` is a user id, not "bob 1@example.com").
pub fn path_segment(s: &str) -> String {
    percent_decode(s, false)
}

/// `%XX` escapes, and in a query (form encoding) `+` for a space.
fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.split(';').find_map(|kv| {
                let (k, val) = kv.trim().split_once('=')?;
                (k == name).then(|| val.trim_matches('"').to_string())
            })
        })
}

impl Handshake {
    /// Reads credentials (SPEC §2 order: bearer header, `token` query, session id from cookie,
    /// header or query), resume parameters and device info from a request.
    pub fn from_request(
        app: &App,
        headers: &HeaderMap,
        query: Option<&str>,
        peer: Option<SocketAddr>,
    ) -> Handshake {
        let q = query_pairs(query);
        let param = |name: &str| {
            q.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };

        let bearer = header("authorization").and_then(|h| {
            let (scheme, rest) = h.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim().to_string())
        });
        let credential = bearer
            .or_else(|| param("token"))
            .map(Presented::Token)
            .or_else(|| {
                cookie(headers, &app.config.session_cookie)
                    .or_else(|| header("x-session-id"))
                    .or_else(|| param("session_id"))
                    .map(Presented::Session)
            });
        let resume = param("resume").map(|id| ResumeRequest {
            connection_id: id,
            token: param("resume_token").unwrap_or_default(),
            last_seq: param("last_seq").and_then(|s| s.parse().ok()),
        });
        let forwarded = if app.config.trust_proxy {
            header("x-forwarded-for")
                .and_then(|h| h.split(',').next().map(|s| s.trim().to_string()))
        } else {
            None
        };
        Handshake {
            credential,
            resume,
            ip: forwarded
                .or_else(|| peer.map(|p| p.ip().to_string()))
                .unwrap_or_default(),
            user_agent: header("user-agent").unwrap_or_default(),
            client_version: header("x-client-version").or_else(|| param("client_version")),
            last_event_id: header("last-event-id"),
        }
    }
}

/// A verified identity, with the session it links to.
pub struct Identity {
    pub user: AuthUser,
    pub session_id: Option<String>,
    pub method: AuthMethod,
}

/// Checks a presented credential: a JWT or API key, or a session id.
pub fn authenticate(app: &App, cred: &Presented) -> Result<Identity, Disconnect> {
    let result = match cred {
        Presented::Token(raw) => app
            .auth
            .verify(raw)
            .map_err(|e| Disconnect::unauthorized(e.reason()))
            .map(|v| {
                // A `sid` claim links the connection when that session is live and the user's.
                let session_id = v
                    .session_hint
                    .as_deref()
                    .and_then(|sid| app.sessions.get(sid))
                    .filter(|s| s.user_id == v.user.id)
                    .map(|s| s.id);
                Identity {
                    user: v.user,
                    session_id,
                    method: v.method,
                }
            }),
        Presented::Session(sid) => match app.sessions.authenticate(sid) {
            Some((user, s)) => Ok(Identity {
                user,
                session_id: Some(s.id),
                method: AuthMethod::Session,
            }),
            None => Err(Disconnect::unauthorized("unknown or expired session")),
        },
    };
    if result.is_err() {
        Metrics::inc(&app.metrics.auth_failures);
    }
    result
}

/// The registration of a verified connection made now, with a new id.
pub fn new_conn(
    app: &App,
    hs: &Handshake,
    identity: Identity,
    kind: ConnType,
    resume: Option<ResumeRequest>,
) -> NewConn {
    let meta = metadata(app, hs, &identity.user, kind);
    NewConn {
        id: uuid::Uuid::new_v4(),
        user: identity.user,
        session_id: identity.session_id,
        meta,
        resume,
    }
}

/// Fresh metadata for a connection made now.
pub fn metadata(app: &App, hs: &Handshake, user: &AuthUser, kind: ConnType) -> Metadata {
    let now = now_ms();
    Metadata {
        ip: hs.ip.clone(),
        user_agent: hs.user_agent.clone(),
        connected_at: now,
        last_activity: now,
        client_version: hs.client_version.clone(),
        connection_type: kind,
        permissions: user.permissions.clone(),
        rate_limit: RateLimit {
            messages_per_minute: app.config.messages_per_minute,
            last_reset: now,
            count: 0,
        },
    }
}

/// The `welcome` frame for a registered connection.
pub fn welcome(app: &App, reg: &Registered, rec: &ConnRecord) -> String {
    json!({
        "type": "welcome",
        "connectionId": rec.id,
        "userId": rec.user.id,
        "sessionId": rec.session_id,
        "resumeToken": reg.resume_token,
        "resumed": reg.resumed,
        "previousConnectionId": reg.previous,
        "resumeError": reg.resume_error,
        "expiresAt": rfc3339(rec.expires_at),
        "heartbeatIntervalMs": app.config.heartbeat_interval_ms,
        "limits": {
            "messagesPerMinute": rec.meta.rate_limit.messages_per_minute,
            "maxMessageBytes": app.config.max_message_bytes,
        },
        "seq": rec.seq,
    })
    .to_string()
}

/// Closes a just-activated connection whose session ended while it was being registered.
/// (A delete or expiry after activation finds the connection through the registry; one
/// before it would otherwise be missed.)
pub fn session_still_live(app: &App, id: &uuid::Uuid, session_id: Option<&str>) -> bool {
    let Some(sid) = session_id else { return true };
    if app.sessions.get(sid).is_some() {
        return true;
    }
    app.registry.force_disconnect(
        id,
        Disconnect::session_ended("session ended"),
        crate::model::EventType::Disconnected,
    );
    false
}
