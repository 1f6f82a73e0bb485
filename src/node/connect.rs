//! One connection's lifecycle, the same for every transport: authenticate, admit, activate,
//! `welcome` and replay ([`Node::connect`]); what its frames ask for while it lives; and its
//! end ([`Node::finish`]).

use std::sync::Arc;

use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::Node;
use crate::auth::{AuthMethod, AuthUser};
use crate::error::ErrorCode;
use crate::hub::Handle;
use crate::metrics::Metrics;
use crate::model::{ConnRecord, ConnType, EventType, Metadata, RateLimit, Source};
use crate::protocol::{Disconnect, Fate, ServerFrame, WelcomeLimits};
use crate::store::{
    Activity, AdmitError, Admitted, NewConn, ResumeRequest, SessionError, SessionPatch,
};
use crate::time::{now_ms, rfc3339};

/// A credential as presented, before it is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    Token(String),
    Session(String),
}

/// Everything a connection request says about who and where it is.
#[derive(Debug, Clone, Default)]
pub struct Handshake {
    pub credential: Option<Presented>,
    pub resume: Option<ResumeRequest>,
    pub ip: String,
    pub user_agent: String,
    pub client_version: Option<String>,
    /// SSE's `Last-Event-ID` (`<connectionId>:<seq>`).
    pub last_event_id: Option<String>,
}

/// A verified identity, with the session it links to.
struct Identity {
    user: AuthUser,
    session_id: Option<String>,
    #[allow(dead_code)]
    method: AuthMethod,
}

/// A connection that is Active: who it is, for the frames it sends.
#[derive(Debug, Clone)]
pub struct Attached {
    pub id: Uuid,
    pub user: String,
    pub session_id: Option<String>,
    /// The rate-limit window it had used (a resumed connection keeps it).
    pub window_start: i64,
    pub window_count: u32,
}

impl Node {
    /// Checks a presented credential: a JWT or API key, or a session id.
    async fn authenticate(&self, cred: &Presented) -> Result<Identity, Disconnect> {
        let result = match cred {
            Presented::Token(c) | Presented::Session(c) if c.is_empty() => {
                Err(Disconnect::unauthorized("empty credential"))
            }
            Presented::Token(raw) => match self.auth.verify(raw) {
                Err(e) => Err(Disconnect::unauthorized(e.reason())),
                Ok(v) => {
                    // A `sid` claim links the connection when that session is live and the
                    // user's.
                    let session_id = match v.session_hint.as_deref() {
                        Some(sid) => self
                            .stores
                            .sessions
                            .get(sid)
                            .await
                            .map_err(|e| unavailable(&e))?
                            .filter(|s| s.user_id == v.user.id)
                            .map(|s| s.id),
                        None => None,
                    };
                    Ok(Identity {
                        user: v.user,
                        session_id,
                        method: v.method,
                    })
                }
            },
            Presented::Session(sid) => match self.stores.sessions.get(sid).await {
                Err(e) => Err(unavailable(&e)),
                Ok(None) => Err(Disconnect::unauthorized("unknown or expired session")),
                Ok(Some(s)) => Ok(Identity {
                    user: AuthUser {
                        id: s.user_id.clone(),
                        permissions: s.permissions.clone(),
                        roles: Vec::new(),
                        name: None,
                        claims: Map::new(),
                    },
                    session_id: Some(s.id),
                    method: AuthMethod::Session,
                }),
            },
        };
        if matches!(&result, Err(d) if d.code == crate::protocol::CloseCode::Unauthorized) {
            Metrics::inc(&self.metrics.auth_failures);
        }
        result
    }

    /// Fresh metadata for a connection made now.
    fn metadata(&self, hs: &Handshake, user: &AuthUser, kind: ConnType) -> Metadata {
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
                messages_per_minute: self.config.messages_per_minute,
                last_reset: now,
                count: 0,
            },
        }
    }

    fn welcome(&self, a: &Admitted, rec: &ConnRecord) -> String {
        ServerFrame::Welcome {
            connection_id: rec.id,
            user_id: &rec.user.id,
            session_id: rec.session_id.as_deref(),
            resume_token: &a.resume_token,
            resumed: a.resumed,
            previous_connection_id: a.previous,
            resume_error: a.resume_error.as_deref(),
            expires_at: rfc3339(rec.expires_at),
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            limits: WelcomeLimits {
                messages_per_minute: rec.meta.rate_limit.messages_per_minute,
                max_message_bytes: self.config.max_message_bytes,
            },
            seq: rec.seq,
        }
        .to_text()
    }

    /// The connection lifecycle: checks `credential`, registers the connection (resuming
    /// the one `resume` names when allowed), makes it durable, attaches `handle` and opens
    /// it with `welcome` and the replay. On an error nothing is left behind: no record, no
    /// slot, no `welcome`.
    pub async fn connect(
        &self,
        hs: &Handshake,
        credential: &Presented,
        resume: Option<ResumeRequest>,
        trusted_resume: bool,
        handle: &Arc<Handle>,
    ) -> Result<Attached, Disconnect> {
        let identity = self.authenticate(credential).await?;
        let kind = handle.outbox.kind();
        let meta = self.metadata(hs, &identity.user, kind);
        let user = identity.user.id.clone();
        let new = NewConn {
            id: crate::auth::new_uuid(),
            user: identity.user,
            session_id: identity.session_id,
            meta,
            resume,
            trusted_resume,
        };
        let admitted = match self.stores.conns.admit(new, &self.id).await {
            Ok(a) => a,
            Err(AdmitError::Refused(d)) => return Err(d),
            Err(AdmitError::Store(e)) => return Err(unavailable(&e)),
        };
        for c in admitted.closing.iter().cloned() {
            self.close(c);
        }
        let id = admitted.id;
        handle.outbox.set_id(id);
        // Attached before it is activated: a delivery assigned after the activation reads
        // the record finds the socket (and waits at its gate for the `welcome`).
        self.hub.attach(&user, handle);
        let activation = match self.stores.conns.activate(&id, admitted.replay_after).await {
            Ok(Some(a)) => a,
            Ok(None) => {
                // Evicted or removed between admission and now.
                self.hub.detach(&user, handle);
                return Err(Disconnect::evicted());
            }
            Err(e) => {
                self.hub.detach(&user, handle);
                let _ = self
                    .stores
                    .conns
                    .remove(&id, &Disconnect::server_full(), EventType::Error)
                    .await;
                return Err(unavailable(&e));
            }
        };
        let rec = &activation.record;
        handle.set_messages_per_minute(rec.meta.rate_limit.messages_per_minute);
        let welcome = self.welcome(&admitted, rec);
        handle.outbox.open(&welcome, &activation.replay, rec.seq);
        Metrics::inc(&self.metrics.connects);
        if admitted.resumed {
            Metrics::inc(&self.metrics.resumes);
        }
        let attached = Attached {
            id,
            user,
            session_id: rec.session_id.clone(),
            window_start: rec.meta.rate_limit.last_reset,
            window_count: rec.meta.rate_limit.count,
        };
        // `welcome` is sent; a session that ended meanwhile closes the connection (4503).
        // (A delete or expiry after activation finds the connection through the store; one
        // before it would otherwise be missed.)
        if let Some(sid) = &attached.session_id {
            if let Ok(None) = self.stores.sessions.get(sid).await {
                self.disconnect(&id, Disconnect::session_ended("session ended"))
                    .await
                    .ok();
            }
        }
        Ok(attached)
    }

    /// Ends a connection whose socket is gone: applies `fate` unless the connection has
    /// moved on (migrated, evicted, resumed elsewhere, or already removed).
    pub async fn finish(
        &self,
        user: &str,
        handle: &Arc<Handle>,
        fate: Fate,
        code: Option<u16>,
        activity: Option<Activity>,
    ) {
        if let Some(code) = code {
            self.metrics.disconnect(code);
        }
        self.hub.detach(user, handle);
        let id = handle.id();
        if !id.is_nil() {
            self.stores.conns.finish(&id, fate, code, activity).await;
        }
    }

    // ----- what a connection's frames ask for ----------------------------------------

    /// The client has everything up to `seq`.
    pub async fn ack(&self, id: &Uuid, seq: u64) {
        if let Err(e) = self.stores.conns.ack(id, seq).await {
            tracing::warn!(error = %e, "an ack was not stored");
        }
    }

    /// Activity a connection's task hands over now and then.
    pub async fn touch(&self, id: &Uuid, activity: Activity) {
        self.stores.conns.touch(id, activity).await;
    }

    /// A client passed its rate limit (logged once per window).
    pub fn rate_limited(&self, id: &Uuid, user: &str, limit: u32) {
        self.stores
            .events
            .log(*id, user, EventType::RateLimited, json!({"limit": limit}));
    }

    /// `refresh`: a new JWT for the same user extends the connection's expiry. Returns the
    /// new `expiresAt`.
    pub async fn refresh(
        &self,
        conn: &Attached,
        id: &Uuid,
        token: &str,
    ) -> Result<String, (ErrorCode, String)> {
        match self.auth.verify_jwt(token) {
            Ok(v) if v.user.id == conn.user => {
                match self
                    .stores
                    .conns
                    .extend_ttl(id, self.config.ttl_seconds)
                    .await
                {
                    Ok(Some(info)) => Ok(info["expiresAt"].as_str().unwrap_or_default().into()),
                    Ok(None) => Err((ErrorCode::NotFound, "the connection is gone".into())),
                    Err(e) => Err(store_refused(&e)),
                }
            }
            Ok(_) => Err((
                ErrorCode::Unauthorized,
                "the new token is for another user".into(),
            )),
            Err(e) => Err((ErrorCode::Unauthorized, e.reason().into())),
        }
    }

    /// `session.update` from a connection: merged into its session, durable when this
    /// returns, and published with source `websocket`.
    pub async fn session_update(
        &self,
        conn: &Attached,
        id: &Uuid,
        updates: &Map<String, Value>,
    ) -> Result<(), (ErrorCode, String)> {
        let Some(sid) = &conn.session_id else {
            return Err((
                ErrorCode::NoSession,
                "this connection is not linked to a session".into(),
            ));
        };
        let patch = SessionPatch {
            data: Some(updates),
            ttl_seconds: None,
            source: Source::WebSocket,
            connection: Some(*id),
        };
        match self.stores.sessions.update(sid, patch).await {
            Ok(_) => Ok(()),
            Err(SessionError::Unknown) => Err((
                ErrorCode::SessionEnded,
                "the session no longer exists".into(),
            )),
            Err(e @ SessionError::TooLarge { .. }) => {
                Err((ErrorCode::SessionTooLarge, e.to_string()))
            }
            Err(e @ SessionError::TooMany { .. }) => {
                Err((ErrorCode::TooManySessions, e.to_string()))
            }
            Err(SessionError::Store(e)) => Err(store_refused(&e)),
        }
    }
}

/// A store that cannot take a connection now: the client may retry (1013).
fn unavailable(e: &crate::store::StoreError) -> Disconnect {
    tracing::error!(error = %e, "a connection was refused: the store cannot take it");
    let reason = match e {
        crate::store::StoreError::Refused { .. } => {
            "server cannot store connections right now; retry later"
        }
        _ => "server unavailable; retry shortly",
    };
    Disconnect::new(crate::protocol::CloseCode::ServerFull, reason)
}

/// The `error` frame's code and message for a write the store refused.
fn store_refused(e: &crate::store::StoreError) -> (ErrorCode, String) {
    tracing::error!(error = %e, "a connection's write was refused by the store");
    e.for_client()
}
