//! The bus: typed events between the writes that cause them and whoever reacts.
//!
//! Channels are the seed's (`session:updates`, `session:created`, `session:deleted`,
//! `session:expired`, `connection:events`); their JSON is SPEC §5's. A node also has a
//! topic of its own ([`Topic::Node`]) for commands addressed to the sockets it holds
//! (close, deliver), so that whoever decides a socket must close reaches it wherever it is.
//!
//! [`MemoryBus`] is the one-process bus; [`RedisBus`] is cluster mode's, over Redis pub/sub.
//! Publishing never waits for subscribers: a
//! subscriber that falls behind loses the oldest events and is told how many
//! ([`Received::Lagged`]), then goes on.

pub mod memory;
pub mod redis;

use std::pin::Pin;

use async_trait::async_trait;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::model::{Assignment, Source};
use crate::protocol::{Disconnect, FrameKind, FrameTemplate};

pub use self::redis::RedisBus;
pub use memory::MemoryBus;

/// The channels (names are the seed's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Where an event goes: a channel everyone may follow, or one node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Channel(Channel),
    Node(String),
}

/// A session event (SPEC §5): `{"sessionId", "userId", "updates" (for updates), "source",
/// "timestamp", "connectionId"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionEvent {
    pub session_id: String,
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updates: Option<Value>,
    pub source: Source,
    pub timestamp: String,
    pub connection_id: Option<Uuid>,
}

/// A command for the node that holds some sockets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "camelCase")]
pub enum NodeCommand {
    /// Close a socket (force disconnect, eviction, a replaced resume, expiry).
    Close {
        user: String,
        id: Uuid,
        disconnect: Disconnect,
    },
    /// Send the frames of a delivery to the sockets here.
    Deliver {
        user: String,
        assignments: Vec<(Uuid, u64)>,
        kind: FrameKind,
        rest: String,
    },
    /// A connection's rate limit changed.
    RateLimit {
        user: String,
        id: Uuid,
        messages_per_minute: u32,
    },
    /// A connection was migrated to a new id.
    Rekey { user: String, old: Uuid, new: Uuid },
    /// A node's own probe of its subscription: it publishes one and expects to see it.
    Probe { n: u64 },
}

impl NodeCommand {
    pub fn deliver(user: &str, to: &[Assignment], template: &FrameTemplate) -> NodeCommand {
        NodeCommand::Deliver {
            user: user.to_string(),
            assignments: to.iter().map(|a| (a.id, a.seq)).collect(),
            kind: template.kind,
            rest: template.rest.clone(),
        }
    }
}

/// One event on the bus.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", content = "payload", rename_all = "camelCase")]
pub enum BusEvent {
    SessionUpdated(SessionEvent),
    SessionCreated(SessionEvent),
    SessionDeleted(SessionEvent),
    SessionExpired(SessionEvent),
    /// A `ConnectionEvent` of SPEC §5.
    Connection(Value),
    /// A command for node `node`.
    Command {
        node: String,
        command: NodeCommand,
    },
}

impl BusEvent {
    pub fn topic(&self) -> Topic {
        match self {
            BusEvent::SessionUpdated(_) => Topic::Channel(Channel::SessionUpdates),
            BusEvent::SessionCreated(_) => Topic::Channel(Channel::SessionCreated),
            BusEvent::SessionDeleted(_) => Topic::Channel(Channel::SessionDeleted),
            BusEvent::SessionExpired(_) => Topic::Channel(Channel::SessionExpired),
            BusEvent::Connection(_) => Topic::Channel(Channel::ConnectionEvents),
            BusEvent::Command { node, .. } => Topic::Node(node.clone()),
        }
    }

    /// The event's JSON as an app backend sees it on its channel (SPEC §5).
    pub fn payload(&self) -> Value {
        match self {
            BusEvent::SessionUpdated(e)
            | BusEvent::SessionCreated(e)
            | BusEvent::SessionDeleted(e)
            | BusEvent::SessionExpired(e) => {
                serde_json::to_value(e).expect("a session event serializes")
            }
            BusEvent::Connection(v) => v.clone(),
            BusEvent::Command { command, .. } => {
                serde_json::to_value(command).expect("a command serializes")
            }
        }
    }
}

/// What a subscription yields.
#[derive(Debug, Clone)]
pub enum Received {
    Event(BusEvent),
    /// This many events were lost because the subscriber fell behind.
    Lagged(u64),
    /// The subscription was down and is back: events published meanwhile were not seen
    /// (a subscriber catches up from the store).
    Resubscribed,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("the bus is unavailable: {0}")]
    Unavailable(String),
}

pub type Subscription = Pin<Box<dyn Stream<Item = Received> + Send + Sync>>;

#[async_trait]
pub trait Bus: Send + Sync {
    /// Publishes `event` on its topic; returns once the bus has it.
    async fn publish(&self, event: BusEvent) -> Result<(), BusError>;
    /// Every event on `topics` from now on, until the bus closes.
    fn subscribe(&self, topics: &[Topic]) -> Subscription;
    /// Whether anyone follows `channel` (so building an event nobody reads can be skipped).
    fn has_subscribers(&self, channel: Channel) -> bool;
    /// Events published per channel since start.
    fn published(&self, channel: Channel) -> u64;
    /// Events lost by lagging subscribers since start.
    fn lagged(&self) -> u64;
}
