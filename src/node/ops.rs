//! What the HTTP API asks of a node: each route's work, durable when it returns, with the
//! sockets it concerns reached through the hub (or the bus, when another node holds them).

use serde_json::{json, Value};
use uuid::Uuid;

use super::Node;
use crate::bus::{Channel, Subscription, Topic};
use crate::model::{EventType, SessionRecord, Source};
use crate::protocol::{Disconnect, FrameTemplate};
use crate::store::{
    Delivery, EventQuery, MetadataPatch, MigrateError, NewSession, SessionError, SessionPatch,
    Sockets, StoreError, Target,
};
use crate::time::{now_ms, rfc3339};

impl Node {
    /// Hands a delivery's frames to the sockets on this node.
    fn sockets(
        &self,
    ) -> impl Fn(&str, &[crate::model::Assignment], &FrameTemplate) -> usize + Sync + '_ {
        move |user, to, template| self.hub.deliver(user, to, template)
    }

    pub(super) async fn deliver(
        &self,
        target: Target<'_>,
        template: FrameTemplate,
        durable: bool,
    ) -> Result<Delivery, StoreError> {
        let sockets = self.sockets();
        let sockets: Sockets<'_> = &sockets;
        let d = self
            .stores
            .conns
            .deliver(target, template, sockets, durable)
            .await?;
        self.metrics
            .messages_delivered
            .fetch_add(d.stored as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(d)
    }

    // ----- connections ---------------------------------------------------------------

    pub async fn connection(&self, id: &Uuid) -> Option<Value> {
        self.stores.conns.info(id).await
    }

    pub async fn connection_user(&self, id: &Uuid) -> Option<crate::auth::AuthUser> {
        self.stores.conns.user(id).await
    }

    pub async fn connection_valid(&self, id: &Uuid) -> bool {
        self.stores.conns.valid(id).await
    }

    /// `updateConnectionMetadata`; a new rate limit reaches the live socket at once.
    pub async fn update_metadata(
        &self,
        id: &Uuid,
        patch: MetadataPatch,
    ) -> Result<Option<Value>, StoreError> {
        let limit = patch.messages_per_minute;
        let Some((user, info)) = self.stores.conns.update_metadata(id, patch).await? else {
            return Ok(None);
        };
        if let Some(v) = limit {
            if let Some(h) = self.hub.get(&user, id) {
                h.set_messages_per_minute(v);
            }
        }
        Ok(Some(info))
    }

    pub async fn extend_ttl(
        &self,
        id: &Uuid,
        ttl_seconds: u64,
    ) -> Result<Option<Value>, StoreError> {
        self.stores.conns.extend_ttl(id, ttl_seconds).await
    }

    /// `migrateConnection` by an operator: the record, and a live socket, move to `new`.
    pub async fn migrate(
        &self,
        id: &Uuid,
        new: Uuid,
    ) -> Result<Result<Value, MigrateError>, StoreError> {
        Ok(match self.stores.conns.migrate(id, new).await? {
            Ok((user, info)) => {
                self.hub.rekey(&user, id, new);
                Ok(info)
            }
            Err(e) => Err(e),
        })
    }

    /// `forceDisconnect`: removes the connection and closes its socket with `d`. Returns
    /// whether it existed.
    pub async fn disconnect(&self, id: &Uuid, d: Disconnect) -> Result<bool, StoreError> {
        let event = if d.code == crate::protocol::CloseCode::SessionEnded {
            EventType::Disconnected
        } else {
            EventType::Forced
        };
        let Some(removed) = self.stores.conns.remove(id, &d, event).await? else {
            return Ok(false);
        };
        if let Some(c) = removed.closing {
            self.close(c);
        }
        Ok(true)
    }

    /// `send` to one connection: `None` if it is unknown.
    pub async fn send_to_connection(
        &self,
        id: &Uuid,
        data: &str,
    ) -> Result<Option<Delivery>, StoreError> {
        let template = FrameTemplate::message(data, &rfc3339(now_ms()));
        let d = self.deliver(Target::Connection(id), template, true).await?;
        Ok((d.stored > 0).then_some(d))
    }

    pub async fn user_connections(&self, user: &str) -> Vec<Value> {
        self.stores.conns.user_connections(user).await
    }

    /// Every connection, a page at a time (the dashboard's table).
    pub async fn list_connections(
        &self,
        user: Option<&str>,
        after: Option<&Uuid>,
        limit: usize,
    ) -> Vec<Value> {
        self.stores.conns.list(user, after, limit).await
    }

    /// Closes every connection of `user` with `d`; returns how many there were.
    pub async fn disconnect_user(&self, user: &str, d: Disconnect) -> Result<usize, StoreError> {
        let event = if d.code == crate::protocol::CloseCode::SessionEnded {
            EventType::Disconnected
        } else {
            EventType::Forced
        };
        let removed = self.stores.conns.remove_user(user, &d, event).await?;
        let n = removed.len();
        for c in removed.into_iter().filter_map(|r| r.closing) {
            self.close(c);
        }
        Ok(n)
    }

    pub async fn send_to_user(&self, user: &str, data: &str) -> Result<Delivery, StoreError> {
        let template = FrameTemplate::message(data, &rfc3339(now_ms()));
        self.deliver(Target::User(user), template, true).await
    }

    /// `cleanupExpiredConnections`: expires what is due now. Returns how many it expired
    /// or removed.
    pub async fn cleanup(&self) -> Result<usize, StoreError> {
        let sweep = self.stores.conns.sweep().await?;
        let closed = sweep
            .expired
            .into_iter()
            .filter(|c| self.close(c.clone()))
            .count();
        Ok(sweep.removed + closed)
    }

    pub fn limits(&self) -> Value {
        let l = self.stores.conns.limits();
        json!({"maxPerUser": l.max_per_user, "maxTotal": l.max_total, "ttlSeconds": l.ttl_seconds})
    }

    /// `getConnectionHealth`, with this node's figures (and, in a cluster, how many nodes
    /// are alive).
    pub async fn health(&self) -> Value {
        let mut h = self.stores.conns.health().await;
        h["memoryUsage"] = json!(crate::metrics::rss_bytes());
        h["sessions"] = json!(self.stores.sessions.count().await);
        h["bus"] = self.bus_figures();
        if self.stores.admin.shared() {
            h["nodes"] = json!(self.stores.nodes.nodes().await.map_or(0, |n| n.len()));
        }
        h
    }

    /// `GET /v1/nodes`: the live nodes (one, this one, without a cluster).
    pub async fn nodes(&self) -> Result<Vec<crate::store::NodeInfo>, StoreError> {
        if self.stores.admin.shared() {
            return self.stores.nodes.nodes().await;
        }
        Ok(vec![crate::store::NodeInfo {
            node_id: self.id.clone(),
            listen: self.listen.get().cloned().unwrap_or_default(),
            started_at: rfc3339(self.started_at),
            last_seen: rfc3339(now_ms()),
            connections: self.hub.len() as u64,
        }])
    }

    /// `getConnectionStats`.
    pub async fn stats(&self) -> Value {
        let mut s = self.stores.conns.stats().await;
        s["messagesPerSecond"] = json!(f64::from_bits(
            self.messages_per_second
                .load(std::sync::atomic::Ordering::Relaxed)
        ));
        s
    }

    pub fn set_messages_per_second(&self, v: f64) {
        self.messages_per_second
            .store(v.to_bits(), std::sync::atomic::Ordering::Relaxed);
    }

    pub async fn events(&self, q: &EventQuery) -> Result<Vec<Value>, StoreError> {
        self.stores.events.query(q).await
    }

    // ----- sessions ------------------------------------------------------------------

    /// The API's `Session` shape, with the connections linked now.
    pub async fn session_json(&self, s: &SessionRecord) -> Value {
        let connections = self.stores.conns.session_connections(&s.id).await;
        let mut v = json!({
            "sessionId": s.id,
            "userId": s.user_id,
            "createdAt": rfc3339(s.created_at),
            "expiresAt": rfc3339(s.expires_at),
            "lastSeen": rfc3339(s.last_seen),
            "data": serde_json::from_str::<Value>(&s.data_json).unwrap_or(json!({})),
            "permissions": s.permissions,
            "device": serde_json::from_str::<Value>(&s.device_json).unwrap_or(Value::Null),
        });
        v["connections"] = json!(connections);
        v
    }

    pub async fn create_session(&self, new: NewSession) -> Result<Value, SessionError> {
        let s = self.stores.sessions.create(new).await?;
        Ok(self.session_json(&s).await)
    }

    pub async fn session(&self, id: &str) -> Result<Option<Value>, StoreError> {
        Ok(match self.stores.sessions.get(id).await? {
            Some(s) => Some(self.session_json(&s).await),
            None => None,
        })
    }

    /// `PATCH /v1/sessions/{id}`: merged, durable, published with source `http`.
    pub async fn update_session(
        &self,
        id: &str,
        data: Option<&serde_json::Map<String, Value>>,
        ttl_seconds: Option<u64>,
    ) -> Result<Value, SessionError> {
        let patch = SessionPatch {
            data,
            ttl_seconds,
            source: Source::Http,
            connection: None,
        };
        let s = self.stores.sessions.update(id, patch).await?;
        Ok(self.session_json(&s).await)
    }

    pub async fn delete_session(&self, id: &str) -> Result<(), SessionError> {
        self.stores.sessions.delete(id).await.map(|_| ())
    }

    pub async fn user_sessions(&self, user: &str) -> Result<Vec<Value>, StoreError> {
        let mut out = Vec::new();
        for s in self.stores.sessions.list_user(user).await? {
            out.push(self.session_json(&s).await);
        }
        Ok(out)
    }

    /// A page of the user's sessions, in session id order, after `after`.
    pub async fn user_sessions_page(
        &self,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Value>, StoreError> {
        let mut out = Vec::new();
        for s in self
            .stores
            .sessions
            .list_user_page(user, after, limit)
            .await?
        {
            out.push(self.session_json(&s).await);
        }
        Ok(out)
    }

    /// Logout everywhere: every session of `user` deleted, every connection closed 4503.
    /// Returns (sessions, connections).
    pub async fn logout_everywhere(&self, user: &str) -> Result<(usize, usize), StoreError> {
        // Connections first: deleting the sessions publishes `session:deleted`, and the
        // reactor would race us to close the session-linked ones, so `connections` would
        // count only what it had not reached yet.
        let connections = self
            .disconnect_user(user, Disconnect::session_ended("logged out everywhere"))
            .await?;
        let sessions = self.stores.sessions.delete_user(user).await?;
        Ok((sessions, connections))
    }

    // ----- operations ----------------------------------------------------------------

    /// A consistent snapshot of the store in the backup format (`GET /v1/backup`).
    pub async fn snapshot(&self) -> Result<Vec<u8>, StoreError> {
        let secrets =
            std::fs::read(crate::secrets::path(&self.config.data_dir)).unwrap_or_default();
        self.stores.admin.snapshot(secrets).await
    }

    /// Bus events on `channels`, for `GET /v1/bus`.
    pub fn subscribe(&self, channels: &[Channel]) -> Subscription {
        let topics: Vec<Topic> = channels.iter().map(|c| Topic::Channel(*c)).collect();
        self.bus.subscribe(&topics)
    }

    pub fn bus_figures(&self) -> Value {
        let published: serde_json::Map<String, Value> = Channel::ALL
            .iter()
            .map(|c| (c.name().to_string(), json!(self.bus.published(*c))))
            .collect();
        json!({"published": published, "lagged": self.bus.lagged()})
    }

    /// `/metrics`: this node's counters and gauges.
    pub async fn metrics_text(&self) -> String {
        let (by_state, by_type) = self.stores.conns.counts().await;
        let series = |label: &str, m: Vec<(String, u64)>| {
            m.into_iter()
                .map(|(k, v)| (format!("{label}=\"{k}\""), v as f64))
                .collect::<Vec<_>>()
        };
        let published = Channel::ALL
            .iter()
            .map(|c| {
                (
                    format!("channel=\"{}\"", c.name()),
                    self.bus.published(*c) as f64,
                )
            })
            .collect();
        let mut gauges = vec![
            (
                "tether_connections",
                "Connections in the registry, by state",
                series("state", by_state),
            ),
            (
                "tether_connections_by_type",
                "Connections in the registry, by transport",
                series("type", by_type),
            ),
            (
                "tether_sessions",
                "Sessions stored",
                vec![(String::new(), self.stores.sessions.count().await as f64)],
            ),
            (
                "tether_bus_published",
                "Bus events published since start, by channel",
                published,
            ),
            (
                "tether_bus_lagged",
                "Bus events lost by lagging subscribers since start",
                vec![(String::new(), self.bus.lagged() as f64)],
            ),
            (
                "tether_resident_memory_bytes",
                "Resident set size of the server",
                vec![(String::new(), crate::metrics::rss_bytes() as f64)],
            ),
        ];
        for (name, help, v) in self.stores.admin.figures() {
            gauges.push((name, help, vec![(String::new(), v)]));
        }
        let mut text = self.metrics.render(&gauges);
        self.stores.admin.render_metrics(&mut text);
        text
    }
}
