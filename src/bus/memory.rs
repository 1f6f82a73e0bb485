//! The one-process bus: a tokio broadcast channel per channel, and one for node commands.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::stream;
use tokio::sync::broadcast::{self, error::RecvError};

use super::{Bus, BusError, BusEvent, Channel, Received, Subscription, Topic};

pub struct MemoryBus {
    inner: Arc<Inner>,
}

/// Commands to this one node are few (its own probes; a single node closes its sockets
/// directly), so their channel keeps few.
const COMMAND_CAPACITY: usize = 1024;

/// Each channel's ring holds `capacity` slots, allocated up front: an `Arc` per slot keeps
/// them a pointer wide instead of an event wide (65,536 slots of a 136-byte event are 9 MB
/// per channel).
type Shared = Arc<BusEvent>;

struct Inner {
    channels: Vec<broadcast::Sender<Shared>>,
    commands: broadcast::Sender<Shared>,
    published: Vec<AtomicU64>,
    lagged: AtomicU64,
}

impl MemoryBus {
    /// `capacity` events are kept per channel for slow subscribers.
    pub fn new(capacity: usize) -> MemoryBus {
        MemoryBus {
            inner: Arc::new(Inner {
                channels: Channel::ALL
                    .iter()
                    .map(|_| broadcast::channel(capacity).0)
                    .collect(),
                commands: broadcast::channel(capacity.min(COMMAND_CAPACITY)).0,
                published: Channel::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
                lagged: AtomicU64::new(0),
            }),
        }
    }

    fn sender(&self, topic: &Topic) -> &broadcast::Sender<Shared> {
        match topic {
            Topic::Channel(c) => &self.inner.channels[c.index()],
            Topic::Node(_) => &self.inner.commands,
        }
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, event: BusEvent) -> Result<(), BusError> {
        let topic = event.topic();
        if let Topic::Channel(c) = topic {
            self.inner.published[c.index()].fetch_add(1, Ordering::Relaxed);
        }
        // No subscriber is not an error: nobody is listening.
        let _ = self.sender(&topic).send(Arc::new(event));
        Ok(())
    }

    fn subscribe(&self, topics: &[Topic]) -> Subscription {
        let streams = topics.iter().map(|topic| {
            let rx = self.sender(topic).subscribe();
            let node = match topic {
                Topic::Node(n) => Some(n.clone()),
                Topic::Channel(_) => None,
            };
            let inner = self.inner.clone();
            let s = stream::unfold((rx, node, inner), |(mut rx, node, inner)| async move {
                loop {
                    let item = match rx.recv().await {
                        Ok(event) => match &*event {
                            BusEvent::Command { node: to, .. }
                                if node.as_deref() != Some(to.as_str()) =>
                            {
                                continue
                            }
                            _ => Received::Event((*event).clone()),
                        },
                        Err(RecvError::Lagged(n)) => {
                            inner.lagged.fetch_add(n, Ordering::Relaxed);
                            Received::Lagged(n)
                        }
                        Err(RecvError::Closed) => return None,
                    };
                    return Some((item, (rx, node, inner)));
                }
            });
            Box::pin(s) as Subscription
        });
        Box::pin(stream::select_all(streams))
    }

    fn has_subscribers(&self, channel: Channel) -> bool {
        self.inner.channels[channel.index()].receiver_count() > 0
    }

    fn published(&self, channel: Channel) -> u64 {
        self.inner.published[channel.index()].load(Ordering::Relaxed)
    }

    fn lagged(&self) -> u64 {
        self.inner.lagged.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::NodeCommand;
    use crate::protocol::Disconnect;
    use futures_util::StreamExt;
    use serde_json::json;

    #[tokio::test]
    async fn a_lagging_subscriber_is_told_and_recovers_without_blocking_publishers() {
        let bus = MemoryBus::new(4);
        // Nobody listening is fine.
        bus.publish(BusEvent::Connection(json!({"n": -1})))
            .await
            .unwrap();
        let mut slow = bus.subscribe(&[Topic::Channel(Channel::ConnectionEvents)]);
        assert!(bus.has_subscribers(Channel::ConnectionEvents));
        assert!(!bus.has_subscribers(Channel::SessionCreated));
        // Ten publishes into room for four: none of them waits for the reader.
        for n in 0..10 {
            bus.publish(BusEvent::Connection(json!({"n": n})))
                .await
                .unwrap();
        }
        assert_eq!(bus.published(Channel::ConnectionEvents), 11);
        match slow.next().await {
            Some(Received::Lagged(6)) => {}
            other => panic!("expected Lagged(6), got {other:?}"),
        }
        assert_eq!(bus.lagged(), 6);
        // Then it goes on with the newest kept events, in order.
        for n in 6..10 {
            match slow.next().await {
                Some(Received::Event(BusEvent::Connection(v))) => assert_eq!(v["n"], n),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_node_sees_only_its_own_commands() {
        let bus = MemoryBus::new(16);
        let mut a = bus.subscribe(&[Topic::Node("a".into())]);
        for node in ["b", "a"] {
            bus.publish(BusEvent::Command {
                node: node.into(),
                command: NodeCommand::Close {
                    user: "u".into(),
                    id: uuid::Uuid::nil(),
                    disconnect: Disconnect::evicted(),
                },
            })
            .await
            .unwrap();
        }
        match a.next().await {
            Some(Received::Event(BusEvent::Command { node, .. })) => assert_eq!(node, "a"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn channel_names_round_trip() {
        for c in Channel::ALL {
            assert_eq!(Channel::parse(c.name()), Some(c));
        }
        assert_eq!(Channel::parse("session:nope"), None);
    }
}
