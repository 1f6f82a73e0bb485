//! What a node runs beside its sockets: start-up recovery, the reactor (bus events become
//! frames and closes) and the sweeper (expiry, once a second).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::Node;
use crate::bus::{BusEvent, Channel, NodeCommand, Received, Topic};
use crate::model::{Assignment, EventType};
use crate::protocol::{Disconnect, FrameTemplate};
use crate::store::{RecoveryReport, StoreError, Target};

impl Node {
    /// Start-up recovery: every stored connection becomes Detached.
    pub async fn recover(&self) -> Result<RecoveryReport, StoreError> {
        self.stores.conns.recover().await
    }

    /// Starts the reactor and the sweeper. They stop when the node starts shutting down.
    pub fn start_background(self: &Arc<Self>) {
        let topics = [
            Topic::Channel(Channel::SessionUpdates),
            Topic::Channel(Channel::SessionDeleted),
            Topic::Channel(Channel::SessionExpired),
            Topic::Node(self.id.clone()),
        ];
        let node = self.clone();
        tokio::spawn(async move { node.react(&topics).await });
        let node = self.clone();
        tokio::spawn(async move { node.sweep_loop().await });
    }

    /// The reactor: the one subscriber that turns session changes into `session.updated`
    /// frames and 4503 closes, and commands addressed to this node into socket work.
    async fn react(&self, topics: &[Topic]) {
        let mut events = self.bus.subscribe(topics);
        let mut stopping = self.stopping.subscribe();
        // Where session events reach their connections: here, or in the store's own writes.
        let sessions_here = !self.stores.sessions.reaches_connections();
        loop {
            let received = tokio::select! {
                r = events.next() => r,
                () = self.resubscribe.notified() => {
                    events = self.bus.subscribe(topics);
                    continue;
                }
                _ = stopping.wait_for(|s| *s) => return,
            };
            let event = match received {
                Some(Received::Event(e)) => e,
                Some(Received::Lagged(n)) => {
                    tracing::warn!(missed = n, "the reactor fell behind the bus; catching up");
                    self.catch_up().await;
                    continue;
                }
                Some(Received::Resubscribed) => {
                    tracing::info!("the bus subscription is back; catching sockets up");
                    self.catch_up().await;
                    continue;
                }
                None => return,
            };
            match event {
                BusEvent::SessionUpdated(e) if sessions_here => {
                    let ts = e.timestamp.clone();
                    let connection = e.connection_id.map(|c| c.to_string());
                    let updates = e.updates.clone().unwrap_or_default();
                    let template = FrameTemplate::session_updated(
                        &e.session_id,
                        &updates,
                        e.source.as_str(),
                        connection.as_deref(),
                        &ts,
                    );
                    let target = Target::Session {
                        id: &e.session_id,
                        except: e.connection_id.as_ref(),
                    };
                    if let Err(err) = self.deliver(target, template, false).await {
                        tracing::error!(error = %err, "a session update was not delivered");
                    }
                }
                BusEvent::SessionDeleted(e) if sessions_here => {
                    self.session_ended(&e.session_id, "session deleted").await
                }
                BusEvent::SessionExpired(e) if sessions_here => {
                    self.session_ended(&e.session_id, "session expired").await
                }
                // The store's own writes reached the session's connections.
                BusEvent::SessionUpdated(_)
                | BusEvent::SessionDeleted(_)
                | BusEvent::SessionExpired(_) => {}
                BusEvent::Command { command, .. } => self.run_command(command),
                BusEvent::SessionCreated(_) | BusEvent::Connection(_) => {}
            }
        }
    }

    /// Closes every connection of a session that ended (4503).
    async fn session_ended(&self, session: &str, why: &str) {
        match self
            .stores
            .conns
            .remove_session(session, &Disconnect::session_ended(why))
            .await
        {
            Ok(removed) => {
                for c in removed.into_iter().filter_map(|r| r.closing) {
                    self.close(c);
                }
            }
            Err(e) => tracing::error!(error = %e, "a session's connections were not closed"),
        }
    }

    /// A command another node (or this one) addressed to the sockets here.
    fn run_command(&self, command: NodeCommand) {
        match command {
            NodeCommand::Close {
                user,
                id,
                disconnect,
            } => {
                self.hub.close(&user, &id, disconnect);
            }
            NodeCommand::Deliver {
                user,
                assignments,
                kind,
                rest,
            } => {
                let to: Vec<Assignment> = assignments
                    .into_iter()
                    .map(|(id, seq)| Assignment { id, seq })
                    .collect();
                self.hub.deliver(&user, &to, &FrameTemplate { kind, rest });
            }
            NodeCommand::RateLimit {
                user,
                id,
                messages_per_minute,
            } => {
                if let Some(h) = self.hub.get(&user, &id) {
                    h.set_messages_per_minute(messages_per_minute);
                }
            }
            NodeCommand::Rekey { user, old, new } => self.hub.rekey(&user, &old, new),
            NodeCommand::Probe { n } => self.probed(n),
        }
    }

    /// Brings every socket here up to date from its replay buffer: what was delivered while
    /// this node could not hear the bus. The hub's seq gate drops what a socket already has.
    async fn catch_up(&self) {
        for handle in self.hub.all() {
            let Some(last) = handle.outbox.last_seq() else {
                continue;
            };
            match self.stores.conns.replay(&handle.id(), last).await {
                Ok(frames) => {
                    for (seq, text) in frames {
                        handle.outbox.push_rendered(seq, &text);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "a socket was not caught up"),
            }
        }
    }

    /// Once a second: TTL expiry and detached clean-up, session expiry, the message-rate
    /// figure.
    async fn sweep_loop(&self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut stopping = self.stopping.subscribe();
        let delivered = || {
            self.metrics
                .messages_delivered
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let mut last = delivered();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            match self.stores.conns.sweep().await {
                Ok(sweep) => {
                    for c in sweep.expired {
                        if c.node.as_deref() == Some(self.id.as_str())
                            && self.hub.get(&c.user, &c.id).is_none()
                        {
                            // Expired, named as this node's, and no socket here: its end was
                            // never stored (Redis out of reach past every retry). Nothing else
                            // would ever remove it, so the sweep does.
                            if let Err(e) = self
                                .stores
                                .conns
                                .remove(&c.id, &c.disconnect, EventType::Expired)
                                .await
                            {
                                tracing::warn!(error = %e, "an orphaned connection was not removed");
                            }
                            continue;
                        }
                        self.close(c);
                    }
                }
                Err(e) => tracing::error!(error = %e, "the connection sweep failed"),
            }
            if let Err(e) = self.stores.sessions.sweep().await {
                tracing::error!(error = %e, "the session sweep failed");
            }
            let now = delivered();
            self.set_messages_per_second((now - last) as f64);
            last = now;
        }
    }
}
