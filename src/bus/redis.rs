//! The bus over Redis pub/sub (cluster mode).
//!
//! Each channel of SPEC §5 is the Redis channel `<prefix>:<name>` (`tether:session:updates`,
//! …) carrying exactly the event's JSON ([`BusEvent::payload`]), so any Redis client can
//! follow it. Node `N`'s commands go on `<prefix>:node:N` as the [`NodeCommand`]'s JSON. The
//! Redis store publishes its own writes' events from its scripts, in the same step as the
//! write; this bus publishes what the node itself sends.
//!
//! A subscription is one Redis connection, pinged now and then: when it is lost (or a ping
//! gets no answer within the command timeout) it reconnects by itself, with backoff, and
//! yields [`Received::Resubscribed`] once it is back, so the subscriber catches up from the
//! store. A subscriber that falls behind loses the events that no longer fit its queue and
//! is told how many ([`Received::Lagged`]) as soon as it has room again; publishing never
//! waits for subscribers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{stream, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc::{self, error::TrySendError};

use super::{Bus, BusError, BusEvent, Channel, NodeCommand, Received, Subscription, Topic};

/// How often a subscription checks that its connection still answers.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Backoff between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    con: ConnectionManager,
    prefix: String,
    timeout: Duration,
    capacity: usize,
    published: Vec<AtomicU64>,
    lagged: AtomicU64,
}

impl RedisBus {
    /// Connects (within `command_timeout`). `capacity` events are kept per subscription for
    /// a subscriber that falls behind.
    pub async fn connect(
        url: &str,
        prefix: &str,
        command_timeout: Duration,
        capacity: usize,
    ) -> Result<RedisBus, BusError> {
        let shown = redacted(url);
        let client =
            redis::Client::open(url).map_err(|e| BusError::Unavailable(format!("{shown}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(command_timeout))
            .set_connection_timeout(Some(command_timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let con = tokio::time::timeout(
            command_timeout * 2,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| BusError::Unavailable(format!("{shown}: no answer")))?
        .map_err(|e| BusError::Unavailable(format!("{shown}: {e}")))?;
        Ok(RedisBus {
            inner: Arc::new(Inner {
                client,
                con,
                prefix: prefix.to_string(),
                timeout: command_timeout,
                capacity: capacity.max(1),
                published: Channel::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
                lagged: AtomicU64::new(0),
            }),
        })
    }
}

impl Inner {
    fn channel(&self, topic: &Topic) -> String {
        match topic {
            Topic::Channel(c) => format!("{}:{}", self.prefix, c.name()),
            Topic::Node(n) => format!("{}:node:{n}", self.prefix),
        }
    }

    /// The event a message on `channel` carries.
    fn decode(&self, channel: &str, payload: &[u8]) -> Result<BusEvent, String> {
        let name = channel
            .strip_prefix(&self.prefix)
            .and_then(|c| c.strip_prefix(':'))
            .ok_or("not one of this bus's channels")?;
        if let Some(node) = name.strip_prefix("node:") {
            let command: NodeCommand =
                serde_json::from_slice(payload).map_err(|e| e.to_string())?;
            return Ok(BusEvent::Command {
                node: node.to_string(),
                command,
            });
        }
        let c = Channel::parse(name).ok_or("an unknown channel")?;
        let session = || serde_json::from_slice(payload).map_err(|e| e.to_string());
        Ok(match c {
            Channel::SessionUpdates => BusEvent::SessionUpdated(session()?),
            Channel::SessionCreated => BusEvent::SessionCreated(session()?),
            Channel::SessionDeleted => BusEvent::SessionDeleted(session()?),
            Channel::SessionExpired => BusEvent::SessionExpired(session()?),
            Channel::ConnectionEvents => {
                BusEvent::Connection(serde_json::from_slice(payload).map_err(|e| e.to_string())?)
            }
        })
    }

    async fn subscribed(&self, channels: &[String]) -> Result<redis::aio::PubSub, String> {
        let t = self.timeout;
        let mut ps = tokio::time::timeout(t, self.client.get_async_pubsub())
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(t, ps.subscribe(channels))
            .await
            .map_err(|_| "no answer to SUBSCRIBE".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(ps)
    }
}

/// Hands `item` to the subscriber without waiting; what does not fit is counted, and the
/// subscriber told how much it missed before the next item that fits.
fn forward(tx: &mpsc::Sender<Received>, missed: &mut u64, lagged: &AtomicU64, item: Received) {
    if *missed > 0 {
        match tx.try_send(Received::Lagged(*missed)) {
            Ok(()) => *missed = 0,
            Err(TrySendError::Full(_)) => {
                *missed += 1;
                lagged.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(TrySendError::Closed(_)) => return,
        }
    }
    if let Err(TrySendError::Full(_)) = tx.try_send(item) {
        *missed += 1;
        lagged.fetch_add(1, Ordering::Relaxed);
    }
}

/// One subscription: connect, subscribe, forward; on a lost connection, again, with backoff.
async fn subscription(inner: Arc<Inner>, channels: Vec<String>, tx: mpsc::Sender<Received>) {
    let mut backoff = BACKOFF_MIN;
    let mut first = true;
    let mut missed = 0u64;
    let mut failing = false;
    loop {
        if tx.is_closed() {
            return;
        }
        match inner.subscribed(&channels).await {
            Ok(ps) => {
                if failing {
                    tracing::info!("the bus subscription is back");
                }
                backoff = BACKOFF_MIN;
                if !first {
                    forward(&tx, &mut missed, &inner.lagged, Received::Resubscribed);
                }
                first = false;
                let (mut sink, mut messages) = ps.split();
                let mut ping = tokio::time::interval(PING_EVERY);
                ping.tick().await;
                loop {
                    tokio::select! {
                        msg = messages.next() => {
                            let Some(msg) = msg else { break };
                            match inner.decode(msg.get_channel_name(), msg.get_payload_bytes()) {
                                Ok(event) => forward(&tx, &mut missed, &inner.lagged, Received::Event(event)),
                                Err(e) => tracing::warn!(channel = msg.get_channel_name(), error = %e, "a bus message does not decode; skipped"),
                            }
                        }
                        _ = ping.tick() => {
                            let answered = tokio::time::timeout(inner.timeout, sink.ping::<redis::Value>()).await;
                            if !matches!(answered, Ok(Ok(_))) {
                                break;
                            }
                        }
                        permit = tx.reserve(), if missed > 0 => {
                            let Ok(permit) = permit else { return };
                            permit.send(Received::Lagged(missed));
                            missed = 0;
                        }
                        _ = tx.closed() => return,
                    }
                }
                tracing::warn!("the bus subscription was lost; reconnecting");
                failing = true;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "the bus cannot subscribe; retrying");
                }
                failing = true;
            }
        }
        // Full jitter: anywhere up to the current backoff.
        let jitter = getrandom::u32().unwrap_or(u32::MAX / 2) as f64 / u32::MAX as f64;
        let wait = backoff.mul_f64(0.5 + jitter / 2.0);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tx.closed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, event: BusEvent) -> Result<(), BusError> {
        let inner = &self.inner;
        let topic = event.topic();
        let message = match &event {
            BusEvent::Command { command, .. } => {
                serde_json::to_string(command).expect("a command serializes")
            }
            other => other.payload().to_string(),
        };
        let mut con = inner.con.clone();
        let publish = redis::cmd("PUBLISH")
            .arg(inner.channel(&topic))
            .arg(message)
            .clone();
        match tokio::time::timeout(inner.timeout, publish.query_async::<i64>(&mut con)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(BusError::Unavailable(e.to_string())),
            Err(_) => {
                return Err(BusError::Unavailable(format!(
                    "no answer to PUBLISH within {} ms",
                    inner.timeout.as_millis()
                )))
            }
        }
        if let Topic::Channel(c) = topic {
            inner.published[c.index()].fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn subscribe(&self, topics: &[Topic]) -> Subscription {
        let channels: Vec<String> = topics.iter().map(|t| self.inner.channel(t)).collect();
        let (tx, rx) = mpsc::channel(self.inner.capacity);
        tokio::spawn(subscription(self.inner.clone(), channels, tx));
        Box::pin(stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
    }

    /// Redis does not say cheaply who follows a channel; events are always built.
    fn has_subscribers(&self, _channel: Channel) -> bool {
        true
    }

    /// Events this node published on `channel` (the store's scripts publish theirs in Redis).
    fn published(&self, channel: Channel) -> u64 {
        self.inner.published[channel.index()].load(Ordering::Relaxed)
    }

    fn lagged(&self) -> u64 {
        self.inner.lagged.load(Ordering::Relaxed)
    }
}

/// `url` without its credentials, for messages.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}
