//! [`EventStore`] over Redis: the log is the stream `P:events` (capped at `event_log_max`),
//! each event with the next seq of `P:events:seq`, published on `P:connection:events` by the
//! same script.
//!
//! [`EventStore::log`] is called where nothing may wait, so it only queues: one task per
//! store writes the queue out in order, a batch per script call. The queue is bounded; an
//! event that finds it full, or that Redis refuses twice, is dropped and counted
//! (`tether_store_events_dropped`). A query or a count first waits for what this store queued
//! before it (read your own writes).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::record::bad;
use super::{timed, RedisSettings, RedisStore};
use crate::model::EventType;
use crate::store::{EventQuery, EventStore, StoreError};
use crate::time::{now_ms, rfc3339};

/// Events waiting to be written, at most.
const QUEUE: usize = 65_536;
/// Events per script call.
const BATCH: usize = 256;
/// Stream entries read per call of a query.
const PAGE: usize = 500;

struct Event {
    conn: Uuid,
    user: String,
    event_type: EventType,
    ms: i64,
    /// The event's JSON after `{"seq":N,`.
    rest: String,
}

enum Job {
    Event(Event),
    Flush(oneshot::Sender<()>),
}

pub(super) struct Queue {
    tx: mpsc::Sender<Job>,
    dropped: Arc<AtomicU64>,
    timeout: Duration,
}

impl Queue {
    /// Starts the writer on the current runtime; it ends when the queue is dropped.
    pub fn start(con: ConnectionManager, settings: &RedisSettings, script: redis::Script) -> Queue {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(writer(rx, con, settings.clone(), script, dropped.clone()));
        Queue {
            tx,
            dropped,
            timeout: settings.command_timeout,
        }
    }

    pub fn log(&self, conn: Uuid, user: &str, event_type: EventType, details: Value) {
        let ms = now_ms();
        let full = json!({
            "connectionId": conn,
            "userId": user,
            "eventType": event_type.as_str(),
            "timestamp": rfc3339(ms),
            "details": details,
        })
        .to_string();
        let event = Event {
            conn,
            user: user.to_string(),
            event_type,
            ms,
            rest: full[1..].to_string(),
        };
        if self.tx.try_send(Job::Event(event)).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n + 1,
                    "the event queue is full: connection events are dropped"
                );
            }
        }
    }

    /// Waits until everything queued before this call is written (or given up on).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        // The writer may be waiting on a Redis call itself: twice the timeout, and a retry.
        let limit = self.timeout * 4;
        let late = || {
            StoreError::Unavailable(format!(
                "redis: the event log was not written within {} ms",
                limit.as_millis()
            ))
        };
        tokio::time::timeout(limit, self.tx.send(Job::Flush(done)))
            .await
            .map_err(|_| late())?
            .map_err(|_| StoreError::Unavailable("the event writer has stopped".into()))?;
        tokio::time::timeout(limit, wait)
            .await
            .map_err(|_| late())?
            .map_err(|_| StoreError::Unavailable("the event writer has stopped".into()))
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn writer(
    mut rx: mpsc::Receiver<Job>,
    con: ConnectionManager,
    settings: RedisSettings,
    script: redis::Script,
    dropped: Arc<AtomicU64>,
) {
    let mut jobs = Vec::with_capacity(BATCH);
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut jobs, BATCH).await > 0 {
        for job in jobs.drain(..) {
            match job {
                Job::Event(e) => batch.push(e),
                Job::Flush(done) => {
                    write(&con, &settings, &script, &mut batch, &dropped).await;
                    let _ = done.send(());
                }
            }
        }
        write(&con, &settings, &script, &mut batch, &dropped).await;
    }
}

async fn write(
    con: &ConnectionManager,
    settings: &RedisSettings,
    script: &redis::Script,
    batch: &mut Vec<Event>,
    dropped: &AtomicU64,
) {
    if batch.is_empty() {
        return;
    }
    let mut inv = script.prepare_invoke();
    inv.arg(&settings.prefix)
        .arg(now_ms())
        .arg(0)
        .arg(0)
        .arg(&settings.node_id)
        .arg(settings.event_log_max.max(1));
    for e in batch.iter() {
        inv.arg(e.conn.to_string())
            .arg(&e.user)
            .arg(e.event_type.as_str())
            .arg(e.ms)
            .arg(&e.rest);
    }
    for attempt in 0..2 {
        let mut c = con.clone();
        match timed(
            settings.command_timeout,
            "writing the event log",
            inv.invoke_async::<i64>(&mut c),
        )
        .await
        {
            Ok(_) => {
                batch.clear();
                return;
            }
            Err(e) if attempt == 0 => {
                tracing::warn!(error = %e, "the event log was not written; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, events = batch.len(), "connection events were dropped");
                dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
        }
    }
    batch.clear();
}

#[async_trait]
impl EventStore for RedisStore {
    fn log(&self, connection_id: Uuid, user_id: &str, event_type: EventType, details: Value) {
        self.inner
            .events
            .log(connection_id, user_id, event_type, details);
    }

    async fn query(&self, q: &EventQuery) -> Result<Vec<Value>, StoreError> {
        let inner = &self.inner;
        if let Err(e) = inner.events.flush().await {
            tracing::warn!(error = %e, "the event log is read without this node's latest events");
        }
        let key = inner.key("events");
        let conn = q.connection_id.map(|c| c.to_string());
        let mut out = Vec::new();
        let mut end = "+".to_string();
        'pages: loop {
            let cmd = redis::cmd("XREVRANGE")
                .arg(&key)
                .arg(&end)
                .arg("-")
                .arg("COUNT")
                .arg(PAGE)
                .clone();
            let page: Vec<(String, HashMap<String, String>)> =
                inner.query("reading the event log", &cmd).await?;
            for (id, f) in &page {
                let entry = || format!("{key} entry {id}");
                let field = |name: &str| {
                    f.get(name)
                        .ok_or_else(|| bad(&entry(), format!("field `{name}` is missing")))
                };
                let ms: i64 = field("ms")?
                    .parse()
                    .map_err(|e| bad(&entry(), format!("field `ms`: {e}")))?;
                if q.since.is_some_and(|s| ms < s) {
                    break 'pages;
                }
                let (c, u, t) = (field("c")?, field("u")?, field("t")?);
                if conn.as_deref().is_some_and(|x| x != c)
                    || q.user_id.as_deref().is_some_and(|x| x != u)
                    || q.event_type.is_some_and(|x| x.as_str() != t)
                {
                    continue;
                }
                let v: Value = serde_json::from_str(field("j")?)
                    .map_err(|e| bad(&entry(), format!("field `j`: {e}")))?;
                out.push(v);
                if out.len() >= q.limit {
                    break 'pages;
                }
            }
            match page.last() {
                Some((id, _)) if page.len() == PAGE => end = format!("({id}"),
                _ => break,
            }
        }
        out.reverse();
        Ok(out)
    }

    async fn count(&self) -> usize {
        let inner = &self.inner;
        if let Err(e) = inner.events.flush().await {
            tracing::warn!(error = %e, "the event log is counted without this node's latest events");
        }
        let cmd = redis::cmd("XLEN").arg(inner.key("events")).clone();
        inner
            .query::<usize>("counting the event log", &cmd)
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "the event log was not counted");
                0
            })
    }
}
