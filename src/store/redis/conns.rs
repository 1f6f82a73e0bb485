//! [`ConnStore`] over Redis: each write one script over the user's keys (see `lua/`), each
//! read one script or one command.
//!
//! It is over 600 lines because it is one trait of twenty-odd methods, each a short call of
//! its script and the decoding of what the script answers; splitting it would scatter the
//! one mapping between the trait and the scripts.

use std::collections::HashMap;

use async_trait::async_trait;
use serde_json::{json, Value};
use uuid::Uuid;

use super::record::{self, items, str_of};
use super::{args, Inner, RedisStore};
use crate::auth::{new_token, sha256, AuthUser};
use crate::model::{ConnState, EventType, StoredUser};
use crate::protocol::{Disconnect, Fate, FrameTemplate};
use crate::store::{
    Activation, Activity, AdmitError, Admitted, Closing, ConnStore, Counts, Delivery, Limits,
    MetadataPatch, MigrateError, NewConn, RecoveryReport, Removed, Sockets, StoreError, Sweep,
    Target,
};
use crate::time::now_ms;

/// Records the sweeper looks at per script call, and calls per sweep.
const SWEEP_BATCH: usize = 200;
const SWEEP_ROUNDS: usize = 10;
/// How long before an expired Active connection's close is asked for again.
const EXPIRED_RETRY_MS: u64 = 10_000;
/// Users read per page of `list`.
const LIST_USERS: usize = 100;

fn closing_of(v: &Value, disconnect: impl Fn(u64) -> Disconnect) -> Option<Closing> {
    let id = Uuid::parse_str(str_of(v, "id")?).ok()?;
    Some(Closing {
        id,
        user: str_of(v, "user").unwrap_or_default().to_string(),
        node: str_of(v, "node").map(str::to_string),
        disconnect: disconnect(v.get("code").and_then(Value::as_u64).unwrap_or(0)),
    })
}

/// The JSON a Deliver command carries after its assignments: `"kind":…,"rest":…}`.
pub(super) fn deliver_tail(template: &FrameTemplate) -> String {
    let full = json!({"kind": template.kind, "rest": template.rest}).to_string();
    full[1..].to_string()
}

impl Inner {
    pub(super) async fn read_conn(&self, id: &Uuid) -> Result<Option<record::Conn>, StoreError> {
        let v = self
            .run(
                "reading a connection",
                &self.scripts.read,
                &args!["conn", id],
            )
            .await?;
        match v.get("rec") {
            Some(rec) => Ok(Some(record::conn(&self.settings.prefix, rec)?)),
            None => Ok(None),
        }
    }

    async fn read_user(&self, user: &str) -> Result<Vec<record::Conn>, StoreError> {
        let v = self
            .run(
                "reading a user's connections",
                &self.scripts.read,
                &args!["user", user],
            )
            .await?;
        items(&v, "recs")
            .iter()
            .map(|r| record::conn(&self.settings.prefix, r))
            .collect()
    }

    /// Removes connections (by id, of a user, of a session) and logs `event` for each.
    async fn remove_by(
        &self,
        mode: &str,
        what: &str,
        d: &Disconnect,
        event: EventType,
    ) -> Result<Vec<Removed>, StoreError> {
        let v = self
            .run(
                "removing connections",
                &self.scripts.remove,
                &args![mode, what],
            )
            .await?;
        let details = json!({"code": d.code.as_u16(), "reason": d.reason});
        Ok(items(&v, "removed")
            .iter()
            .filter_map(|r| {
                let id = Uuid::parse_str(str_of(r, "id")?).ok()?;
                let user = str_of(r, "user").unwrap_or_default();
                self.events.log(id, user, event, details.clone());
                Some(Removed {
                    closing: str_of(r, "node").map(|node| Closing {
                        id,
                        user: user.to_string(),
                        node: Some(node.to_string()),
                        disconnect: d.clone(),
                    }),
                })
            })
            .collect())
    }

    /// Changes fields of an existing record; its new form, if it existed.
    async fn update(
        &self,
        id: &Uuid,
        set: Value,
        unset: &[&str],
    ) -> Result<Option<record::Conn>, StoreError> {
        let v = self
            .run(
                "updating a connection",
                &self.scripts.update,
                &args![id, set, json!(unset)],
            )
            .await?;
        match v.get("rec") {
            Some(rec) => Ok(Some(record::conn(&self.settings.prefix, rec)?)),
            None => Ok(None),
        }
    }

    async fn stats_hash(&self) -> Result<HashMap<String, i64>, StoreError> {
        let cmd = redis::cmd("HGETALL").arg(self.key("stats")).clone();
        self.query("reading the counts", &cmd).await
    }
}

fn counts_with(stats: &HashMap<String, i64>, prefix: &str) -> serde_json::Map<String, Value> {
    stats
        .iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix(prefix)?;
            (*v > 0).then(|| (name.to_string(), json!(v)))
        })
        .collect()
}

fn logged<T: Default>(what: &str, r: Result<T, StoreError>) -> T {
    r.unwrap_or_else(|e| {
        tracing::error!(error = %e, "{what}");
        T::default()
    })
}

#[async_trait]
impl ConnStore for RedisStore {
    fn limits(&self) -> &Limits {
        self.inner.limits()
    }

    async fn admit(&self, new: NewConn, _node: &str) -> Result<Admitted, AdmitError> {
        let inner = &self.inner;
        if new.user.id.is_empty() || new.user.id.contains('\0') {
            return Err(Disconnect::unauthorized("invalid subject").into());
        }
        let token = new_token();
        let hash = record::hex(&sha256(token.as_bytes()));
        let mut resume_error = None;
        let (old_id, token_hash, last_seq) = match &new.resume {
            Some(r) => match Uuid::parse_str(&r.connection_id) {
                Ok(id) => (
                    id.to_string(),
                    record::hex(&sha256(r.token.as_bytes())),
                    r.last_seq.map(|s| s.to_string()).unwrap_or_default(),
                ),
                Err(_) => {
                    resume_error = Some("unknown connection".to_string());
                    Default::default()
                }
            },
            None => Default::default(),
        };
        let user = StoredUser::from(&new.user);
        let fields = record::new_conn_fields(&new.id, &user, new.session_id.as_deref(), &new.meta)?;
        let l = inner.limits();
        let v = inner
            .run(
                "admitting a connection",
                &inner.scripts.admit,
                &args![
                    user.id,
                    inner.epoch(),
                    new.id,
                    fields,
                    hash,
                    l.max_per_user,
                    l.max_total,
                    l.ttl_seconds.saturating_mul(1000),
                    old_id,
                    token_hash,
                    if new.trusted_resume { "1" } else { "0" },
                    last_seq,
                ],
            )
            .await?;
        match str_of(&v, "refused") {
            Some("foreign") => {
                return Err(Disconnect::unauthorized("resume of another user's connection").into())
            }
            Some("full") => return Err(Disconnect::server_full().into()),
            Some(_) => {
                return Err(StoreError::Unavailable(
                    "Redis lost its data (its epoch changed); connections are refused until the \
                     node has reacted"
                        .into(),
                )
                .into())
            }
            None => {}
        }
        let resumed = v.get("resumed").and_then(Value::as_bool).unwrap_or(false);
        let previous = str_of(&v, "previous").and_then(|p| Uuid::parse_str(p).ok());
        let replay_after = v.get("replay_after").and_then(Value::as_u64).unwrap_or(0);
        let closing: Vec<Closing> = items(&v, "closing")
            .iter()
            .filter_map(|c| {
                closing_of(c, |code| {
                    if code == 4507 {
                        Disconnect::replaced()
                    } else {
                        Disconnect::evicted()
                    }
                })
            })
            .map(|mut c| {
                c.user = user.id.clone();
                c
            })
            .collect();
        let ev = &inner.events;
        for victim in items(&v, "evicted").iter().filter_map(Value::as_str) {
            if let Ok(id) = Uuid::parse_str(victim) {
                ev.log(id, &user.id, EventType::Evicted, json!({"code": 4505}));
            }
        }
        if let (true, Some(old)) = (resumed, previous) {
            ev.log(
                new.id,
                &user.id,
                EventType::Migrated,
                json!({"from": old, "to": new.id}),
            );
            ev.log(
                new.id,
                &user.id,
                EventType::Resumed,
                json!({"previousConnectionId": old, "lastSeq": replay_after}),
            );
        } else {
            ev.log(
                new.id,
                &user.id,
                EventType::Authenticated,
                json!({"ip": new.meta.ip, "connectionType": new.meta.connection_type.as_str()}),
            );
        }
        Ok(Admitted {
            id: new.id,
            resume_token: token,
            resumed,
            previous: if resumed { previous } else { None },
            resume_error: str_of(&v, "resume_error")
                .map(str::to_string)
                .or(resume_error),
            replay_after,
            closing,
        })
    }

    async fn activate(
        &self,
        id: &Uuid,
        replay_after: u64,
    ) -> Result<Option<Activation>, StoreError> {
        let inner = &self.inner;
        // The user is in the record; the script finds it through the locator.
        let Some(user) = inner
            .query::<Option<String>>(
                "finding a connection",
                redis::cmd("GET").arg(inner.key(&format!("cid:{id}"))),
            )
            .await?
        else {
            return Ok(None);
        };
        let v = inner
            .run(
                "activating a connection",
                &inner.scripts.activate,
                &args![user, id, replay_after],
            )
            .await?;
        let Some(rec) = v.get("rec") else {
            return Ok(None);
        };
        let conn = record::conn(&inner.settings.prefix, rec)?;
        let replay = record::replay(&inner.settings.prefix, &id.to_string(), &v)?;
        inner.events.log(
            *id,
            &conn.rec.user.id,
            EventType::Connected,
            json!({"connectionType": conn.rec.meta.connection_type.as_str()}),
        );
        Ok(Some(Activation {
            record: conn.rec,
            replay,
        }))
    }

    async fn finish(&self, id: &Uuid, fate: Fate, code: Option<u16>, activity: Option<Activity>) {
        let inner = &self.inner;
        let fate_name = match fate {
            Fate::Remove => "remove",
            Fate::Detach => "detach",
            Fate::Keep => "keep",
        };
        let activity = activity
            .map(|a| {
                json!({
                    "la": a.last_seen.to_string(),
                    "rlr": a.window_start.to_string(),
                    "rlc": a.window_count.to_string(),
                })
                .to_string()
            })
            .unwrap_or_default();
        match inner
            .run(
                "ending a connection",
                &inner.scripts.finish,
                &args![id, fate_name, activity],
            )
            .await
        {
            Ok(v) => {
                let user = str_of(&v, "user").unwrap_or_default();
                let event = match str_of(&v, "done") {
                    Some("removed") => EventType::Disconnected,
                    Some("detached") => EventType::Detached,
                    _ => return,
                };
                inner.events.log(*id, user, event, json!({"code": code}));
            }
            Err(e) => {
                tracing::error!(error = %e, connection = %id, "a connection's end was not stored")
            }
        }
    }

    async fn remove(
        &self,
        id: &Uuid,
        d: &Disconnect,
        event: EventType,
    ) -> Result<Option<Removed>, StoreError> {
        let mut removed = self
            .inner
            .remove_by("id", &id.to_string(), d, event)
            .await?;
        Ok(removed.pop())
    }

    async fn remove_user(
        &self,
        user: &str,
        d: &Disconnect,
        event: EventType,
    ) -> Result<Vec<Removed>, StoreError> {
        self.inner.remove_by("user", user, d, event).await
    }

    async fn remove_session(
        &self,
        session: &str,
        d: &Disconnect,
    ) -> Result<Vec<Removed>, StoreError> {
        self.inner
            .remove_by("session", session, d, EventType::Disconnected)
            .await
    }

    async fn info(&self, id: &Uuid) -> Option<Value> {
        logged("a connection lookup failed", self.inner.read_conn(id).await).map(|c| c.info())
    }

    async fn user(&self, id: &Uuid) -> Option<AuthUser> {
        logged("a connection lookup failed", self.inner.read_conn(id).await)
            .map(|c| c.rec.user.to_auth_user())
    }

    async fn valid(&self, id: &Uuid) -> bool {
        let now = now_ms();
        logged("a connection lookup failed", self.inner.read_conn(id).await)
            .is_some_and(|c| c.rec.state == ConnState::Active && c.rec.expires_at > now)
    }

    async fn user_connections(&self, user: &str) -> Vec<Value> {
        logged(
            "a user's connections were not read",
            self.inner.read_user(user).await,
        )
        .iter()
        .map(record::Conn::info)
        .collect()
    }

    async fn session_connections(&self, session: &str) -> Vec<Uuid> {
        let inner = &self.inner;
        let read = inner
            .run(
                "reading a session's connections",
                &inner.scripts.read,
                &args!["session", session],
            )
            .await;
        items(
            &logged("a session's connections were not read", read),
            "ids",
        )
        .iter()
        .filter_map(|i| Uuid::parse_str(i.as_str()?).ok())
        .collect()
    }

    async fn list(&self, user: Option<&str>, after: Option<&Uuid>, limit: usize) -> Vec<Value> {
        let inner = &self.inner;
        let mut out = Vec::new();
        if limit == 0 {
            return out;
        }
        // Where to start: the user of `after` (past it in that user's list), else `user`.
        let after_rec = match after {
            Some(a) => logged("a connection lookup failed", inner.read_conn(a).await),
            None => None,
        };
        let mut skip_until = after_rec.as_ref().map(|c| c.rec.id);
        let mut start = match (&after_rec, user) {
            (Some(c), _) => format!("[{}", c.rec.user.id),
            (None, Some(u)) => format!("[{u}"),
            (None, None) => "-".to_string(),
        };
        loop {
            let users: Vec<String> = match user {
                Some(u) => {
                    if start.starts_with('(') {
                        break;
                    }
                    vec![u.to_string()]
                }
                None => {
                    let cmd = redis::cmd("ZRANGEBYLEX")
                        .arg(inner.key("users"))
                        .arg(&start)
                        .arg("+")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(LIST_USERS)
                        .clone();
                    logged(
                        "the connection list was not read",
                        inner.query("listing users", &cmd).await,
                    )
                }
            };
            let Some(last) = users.last() else { break };
            start = format!("({last}");
            let page = users.len();
            for u in &users {
                let conns = logged(
                    "a user's connections were not read",
                    inner.read_user(u).await,
                );
                for c in conns {
                    if let Some(a) = skip_until {
                        if c.rec.id == a {
                            skip_until = None;
                        }
                        continue;
                    }
                    out.push(c.info());
                    if out.len() >= limit {
                        return out;
                    }
                }
                // `after` is gone from its user's list: go on with the next users.
                skip_until = None;
            }
            if user.is_some() || page < LIST_USERS {
                break;
            }
        }
        out
    }

    async fn update_metadata(
        &self,
        id: &Uuid,
        patch: MetadataPatch,
    ) -> Result<Option<(String, Value)>, StoreError> {
        let mut set = serde_json::Map::new();
        let mut unset = Vec::new();
        if let Some(v) = patch.ip {
            set.insert("ip".into(), json!(v));
        }
        if let Some(v) = patch.user_agent {
            set.insert("ua".into(), json!(v));
        }
        match patch.client_version {
            Some(Some(v)) => {
                set.insert("cv".into(), json!(v));
            }
            Some(None) => unset.push("cv"),
            None => {}
        }
        if let Some(v) = patch.permissions {
            set.insert(
                "perms".into(),
                json!(serde_json::to_string(&v).expect("strings serialize")),
            );
        }
        if let Some(v) = patch.messages_per_minute {
            set.insert("mpm".into(), json!(v.to_string()));
        }
        Ok(self
            .inner
            .update(id, Value::Object(set), &unset)
            .await?
            .map(|c| (c.rec.user.id.clone(), c.info())))
    }

    async fn extend_ttl(&self, id: &Uuid, ttl_seconds: u64) -> Result<Option<Value>, StoreError> {
        let now = now_ms();
        let exp =
            now.saturating_add((ttl_seconds.min(i64::MAX as u64) as i64).saturating_mul(1000));
        let set = json!({"exp": exp.to_string(), "la": now.to_string()});
        Ok(self.inner.update(id, set, &[]).await?.map(|c| c.info()))
    }

    async fn migrate(
        &self,
        old: &Uuid,
        new: Uuid,
    ) -> Result<Result<(String, Value), MigrateError>, StoreError> {
        let inner = &self.inner;
        let v = inner
            .run(
                "migrating a connection",
                &inner.scripts.migrate,
                &args![old, new],
            )
            .await?;
        match str_of(&v, "error") {
            Some("exists") => return Ok(Err(MigrateError::Exists)),
            Some(_) => return Ok(Err(MigrateError::Unknown)),
            None => {}
        }
        let rec = v.get("rec").unwrap_or(&Value::Null);
        let conn = record::conn(&inner.settings.prefix, rec)?;
        inner.events.log(
            new,
            &conn.rec.user.id,
            EventType::Migrated,
            json!({"from": old, "to": new}),
        );
        Ok(Ok((conn.rec.user.id.clone(), conn.info())))
    }

    /// In cluster mode every socket gets its frames through its node's channel (the script
    /// publishes them), so the order on a socket is the order of the scripts; `sockets` is
    /// not called. Every delivery is in Redis when this returns.
    async fn deliver(
        &self,
        target: Target<'_>,
        template: FrameTemplate,
        _sockets: Sockets<'_>,
        _durable: bool,
    ) -> Result<Delivery, StoreError> {
        let inner = &self.inner;
        let (mode, what, except) = match target {
            Target::Connection(id) => ("conn", id.to_string(), String::new()),
            Target::User(u) => ("user", u.to_string(), String::new()),
            Target::Session { id, except } => (
                "session",
                id.to_string(),
                except.map(|e| e.to_string()).unwrap_or_default(),
            ),
        };
        let v = inner
            .run(
                "delivering a message",
                &inner.scripts.deliver,
                &args![
                    mode,
                    what,
                    except,
                    template.kind.as_str(),
                    template.rest,
                    deliver_tail(&template),
                ],
            )
            .await?;
        let n = |f: &str| v.get(f).and_then(Value::as_u64).unwrap_or(0);
        Ok(Delivery {
            delivered: n("delivered") as usize,
            stored: n("stored") as usize,
            seq: n("seq"),
        })
    }

    async fn ack(&self, id: &Uuid, seq: u64) -> Result<(), StoreError> {
        let inner = &self.inner;
        inner
            .run_raw::<i64>("storing an ack", &inner.scripts.ack, &args![id, seq])
            .await
            .map(|_| ())
    }

    async fn replay(&self, id: &Uuid, after: u64) -> Result<Vec<(u64, String)>, StoreError> {
        let inner = &self.inner;
        let v = inner
            .run(
                "reading a replay buffer",
                &inner.scripts.read,
                &args!["replay", id, after],
            )
            .await?;
        record::replay(&inner.settings.prefix, &id.to_string(), &v)
    }

    async fn touch(&self, id: &Uuid, activity: Activity) {
        let set = json!({
            "la": activity.last_seen.to_string(),
            "rlr": activity.window_start.to_string(),
            "rlc": activity.window_count.to_string(),
        });
        if let Err(e) = self.inner.update(id, set, &[]).await {
            tracing::warn!(error = %e, connection = %id, "a connection's activity was not stored");
        }
    }

    async fn sweep(&self) -> Result<Sweep, StoreError> {
        let inner = &self.inner;
        let mut out = Sweep::default();
        for _ in 0..SWEEP_ROUNDS {
            let v = inner
                .run(
                    "sweeping connections",
                    &inner.scripts.sweep,
                    &args![SWEEP_BATCH, EXPIRED_RETRY_MS],
                )
                .await?;
            out.expired.extend(
                items(&v, "expired")
                    .iter()
                    .filter_map(|c| closing_of(c, |_| Disconnect::expired())),
            );
            for r in items(&v, "removed") {
                let (Some(id), Some(user)) = (
                    str_of(r, "id").and_then(|i| Uuid::parse_str(i).ok()),
                    str_of(r, "user"),
                ) else {
                    continue;
                };
                inner.events.log(
                    id,
                    user,
                    EventType::Expired,
                    json!({"reason": "resume grace period over"}),
                );
                out.removed += 1;
            }
            if v.get("seen").and_then(Value::as_u64).unwrap_or(0) < SWEEP_BATCH as u64 {
                break;
            }
        }
        Ok(out)
    }

    /// Start-up of a node: the connections a previous run under this node id held become
    /// Detached. (Other nodes' connections are theirs; a dead node's are detached by whoever
    /// claims its clean-up.)
    async fn recover(&self) -> Result<RecoveryReport, StoreError> {
        let node = self.inner.settings.node_id.clone();
        let detached = self
            .inner
            .detach_held(&node, json!({"reason": "server restarted"}))
            .await?;
        Ok(RecoveryReport {
            detached,
            ..Default::default()
        })
    }

    async fn health(&self) -> Value {
        let stats = logged("the counts were not read", self.inner.stats_hash().await);
        let n = |k: &str| stats.get(k).copied().unwrap_or(0).max(0);
        json!({
            "activeConnections": n("state:active"),
            "usersWithConnections": n("users:live"),
            "detachedConnections": n("state:detached"),
            "byConnectionType": counts_with(&stats, "live:type:"),
            "byState": counts_with(&stats, "state:"),
            "byClientVersion": counts_with(&stats, "live:ver:"),
        })
    }

    async fn stats(&self) -> Value {
        let stats = logged("the counts were not read", self.inner.stats_hash().await);
        let n = |k: &str| stats.get(k).copied().unwrap_or(0).max(0);
        let total: i64 = counts_with(&stats, "state:")
            .values()
            .filter_map(Value::as_i64)
            .sum();
        let active = n("state:active");
        let avg = if active == 0 {
            0.0
        } else {
            let since = stats.get("active:since").copied().unwrap_or(0);
            ((now_ms() as f64 * active as f64 - since as f64) / active as f64 / 1000.0).max(0.0)
        };
        json!({
            "totalConnections": total,
            "activeUsers": n("users:active"),
            "avgConnectionDuration": avg,
        })
    }

    async fn counts(&self) -> Counts {
        let stats = logged("the counts were not read", self.inner.stats_hash().await);
        let list = |prefix: &str| {
            counts_with(&stats, prefix)
                .into_iter()
                .map(|(k, v)| (k, v.as_u64().unwrap_or(0)))
                .collect()
        };
        (list("state:"), list("type:"))
    }
}
