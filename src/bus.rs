//! The in-process broadcast bus that stands in for Redis pub/sub.
//!
//! Publishers never wait: each channel is a tokio broadcast channel, and a subscriber that
//! falls behind loses the oldest events and is told how many it missed (`Lagged`), then goes on.
//! Everything that reacts to a session change subscribes here rather than being called
//! directly, so a networked bus can take this one's place behind the [`Bus`] trait.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;
use tokio::sync::broadcast;

/// The channels (names are the seed's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    SessionUpdates,
    SessionCreated,
    SessionDeleted,
    SessionExpired,
    ConnectionEvents,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Channel::SessionUpdates,
        Channel::SessionCreated,
        Channel::SessionDeleted,
        Channel::SessionExpired,
        Channel::ConnectionEvents,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Channel::SessionUpdates => "session:updates",
            Channel::SessionCreated => "session:created",
            Channel::SessionDeleted => "session:deleted",
            Channel::SessionExpired => "session:expired",
            Channel::ConnectionEvents => "connection:events",
        }
    }

    pub fn parse(name: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.name() == name)
    }

    fn index(self) -> usize {
        Channel::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }
}

/// One published event.
#[derive(Debug, Clone)]
pub struct BusEvent {
    pub channel: Channel,
    pub payload: Value,
}

/// A pub/sub bus. `subscribe` hands back a receiver of every event on the given channels.
pub trait Bus: Send + Sync {
    fn publish(&self, channel: Channel, payload: Value);
    fn subscribe(&self, channel: Channel) -> broadcast::Receiver<BusEvent>;
    fn has_subscribers(&self, channel: Channel) -> bool;
    /// Events published per channel since start.
    fn published(&self, channel: Channel) -> u64;
    /// Events lost by lagging subscribers since start.
    fn lagged(&self) -> u64;
    fn record_lag(&self, missed: u64);
}

/// The in-process bus: one broadcast channel per bus channel.
pub struct MemoryBus {
    senders: Vec<broadcast::Sender<BusEvent>>,
    published: Vec<AtomicU64>,
    lagged: AtomicU64,
}

impl MemoryBus {
    /// `capacity` events are kept per channel for slow subscribers.
    pub fn new(capacity: usize) -> MemoryBus {
        MemoryBus {
            senders: Channel::ALL
                .iter()
                .map(|_| broadcast::channel(capacity).0)
                .collect(),
            published: Channel::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            lagged: AtomicU64::new(0),
        }
    }
}

impl Bus for MemoryBus {
    fn publish(&self, channel: Channel, payload: Value) {
        self.published[channel.index()].fetch_add(1, Ordering::Relaxed);
        // No subscriber is not an error: nobody is listening.
        let _ = self.senders[channel.index()].send(BusEvent { channel, payload });
    }

    fn subscribe(&self, channel: Channel) -> broadcast::Receiver<BusEvent> {
        self.senders[channel.index()].subscribe()
    }

    fn has_subscribers(&self, channel: Channel) -> bool {
        self.senders[channel.index()].receiver_count() > 0
    }

    fn published(&self, channel: Channel) -> u64 {
        self.published[channel.index()].load(Ordering::Relaxed)
    }

    fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }

    fn record_lag(&self, missed: u64) {
        self.lagged.fetch_add(missed, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};

    #[tokio::test]
    async fn a_lagging_subscriber_is_told_and_recovers_without_blocking_publishers() {
        let bus = MemoryBus::new(4);
        // Nobody listening is fine.
        bus.publish(Channel::SessionUpdates, json!({"n": -1}));
        let mut slow = bus.subscribe(Channel::SessionUpdates);
        let mut other = bus.subscribe(Channel::SessionDeleted);
        assert!(bus.has_subscribers(Channel::SessionUpdates));
        assert!(!bus.has_subscribers(Channel::SessionCreated));
        // Ten publishes into room for four: none of them waits for the reader.
        for n in 0..10 {
            bus.publish(Channel::SessionUpdates, json!({"n": n}));
        }
        assert_eq!(bus.published(Channel::SessionUpdates), 11);
        match slow.recv().await {
            Err(RecvError::Lagged(missed)) => {
                assert_eq!(missed, 6);
                bus.record_lag(missed);
            }
            other => panic!("expected Lagged, got {other:?}"),
        }
        assert_eq!(bus.lagged(), 6);
        // Then it goes on with the newest kept events, in order.
        for n in 6..10 {
            let e = slow.recv().await.unwrap();
            assert_eq!(e.channel, Channel::SessionUpdates);
            assert_eq!(e.payload["n"], n);
        }
        bus.publish(Channel::SessionUpdates, json!({"n": 10}));
        assert_eq!(slow.recv().await.unwrap().payload["n"], 10);
        // Channels are separate.
        assert!(matches!(other.try_recv(), Err(TryRecvError::Empty)));
    }

    #[test]
    fn channel_names_round_trip() {
        for c in Channel::ALL {
            assert_eq!(Channel::parse(c.name()), Some(c));
        }
        assert_eq!(Channel::parse("session:nope"), None);
    }
}
