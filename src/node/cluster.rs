//! A node among others (cluster mode, SPEC §10): its lease, the dead nodes whose
//! connections it detaches, and the checks that tell it when it cannot be trusted with
//! traffic (Redis out of reach, a subscription that stopped delivering, Redis that lost
//! its data).
//!
//! Every `node_heartbeat_ms` the node:
//! 1. reacts to lost data: if Redis came back empty (its epoch changed), every socket here
//!    names a record that no longer exists, so each is closed with 1013 (reconnect) and the
//!    client's resume says what was lost;
//! 2. renews its lease; after an outage longer than a lease, other nodes may have detached
//!    its connections meanwhile, so each socket whose record no longer names this node is
//!    closed with 1013 and resumes;
//! 3. probes its own subscription: it publishes a probe on its node channel and expects to
//!    see it come back. A subscription that delivers nothing while commands succeed (a
//!    pub/sub connection half dead) makes the node unready until a fresh subscription
//!    delivers again, and its sockets are then caught up from the replay buffers;
//! 4. detaches the connections of nodes whose lease ran out, claiming each clean-up so that
//!    it happens once, but only after it has itself been healthy for a whole lease: after an
//!    outage of Redis, every node's lease looks expired until the others have renewed theirs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Node;
use crate::bus::{BusEvent, NodeCommand};
use crate::protocol::{CloseCode, Disconnect};
use crate::store::NodeInfo;
use crate::time::{now_ms, rfc3339};

/// Probes that may be outstanding before the subscription counts as silent.
const PROBES_IN_FLIGHT: u64 = 3;

impl Node {
    /// Starts the cluster loop when the store is shared by several nodes.
    pub fn start_cluster(self: &Arc<Self>) {
        if !self.stores.admin.shared() {
            return;
        }
        let node = self.clone();
        tokio::spawn(async move { node.cluster_loop().await });
    }

    fn info(&self, started_at: &str) -> NodeInfo {
        NodeInfo {
            node_id: self.id.clone(),
            listen: self.listen.get().cloned().unwrap_or_default(),
            started_at: started_at.to_string(),
            last_seen: rfc3339(now_ms()),
            connections: self.hub.len() as u64,
        }
    }

    async fn cluster_loop(&self) {
        let every = Duration::from_millis(self.config.node_heartbeat_ms);
        let lease = Duration::from_millis(self.config.node_lease_ms);
        let started_at = rfc3339(self.started_at);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = self.stopping.subscribe();
        let mut last_renewed = Instant::now();
        let mut healthy_since: Option<Instant> = None;
        let mut probe = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            // 1. Redis lost its data.
            if self.stores.admin.data_lost() {
                let n = self.hub.close_all(&Disconnect::new(
                    CloseCode::ServerFull,
                    "the server lost its state; reconnect",
                ));
                tracing::error!(
                    closed = n,
                    "Redis lost its data; every socket here was closed to resume"
                );
                if let Err(e) = self.stores.admin.adopt_data_loss().await {
                    tracing::warn!(error = %e, "the new epoch was not taken yet");
                }
            }
            // 2. The lease.
            match self
                .stores
                .nodes
                .heartbeat(&self.info(&started_at), self.config.node_lease_ms)
                .await
            {
                Ok(()) => {
                    if last_renewed.elapsed() > lease {
                        self.close_moved_sockets().await;
                    }
                    last_renewed = Instant::now();
                }
                Err(e) => {
                    if last_renewed.elapsed() > every * 2 {
                        tracing::warn!(error = %e, "this node's lease was not renewed");
                    }
                }
            }
            // 3. The subscription.
            probe += 1;
            let seen = self.probe_seen.load(Ordering::SeqCst);
            let silent = probe.saturating_sub(seen) > PROBES_IN_FLIGHT;
            if silent && self.bus_ok.swap(false, Ordering::SeqCst) {
                tracing::warn!("this node's bus subscription delivers nothing; subscribing again");
                self.resubscribe.notify_one();
            } else if !silent && !self.bus_ok.swap(true, Ordering::SeqCst) {
                tracing::info!("this node's bus subscription delivers again");
            }
            let command = BusEvent::Command {
                node: self.id.clone(),
                command: NodeCommand::Probe { n: probe },
            };
            let _ = self.bus.publish(command).await;
            // 4. Dead nodes, once this node has been healthy for a whole lease.
            if self.writable().is_ok() {
                let since = *healthy_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= lease {
                    self.detach_dead_nodes().await;
                }
            } else {
                healthy_since = None;
            }
        }
    }

    async fn detach_dead_nodes(&self) {
        let dead = match self.stores.nodes.expired().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "dead nodes were not listed");
                return;
            }
        };
        for node in dead.into_iter().filter(|n| *n != self.id) {
            match self.stores.nodes.detach_node(&node, &self.id).await {
                Ok(Some(n)) if n > 0 => {
                    tracing::info!(node, connections = n, "detached a dead node's connections")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(node, error = %e, "a dead node was not cleaned up"),
            }
        }
    }

    /// After an outage longer than a lease: closes (1013, reconnect) every socket whose
    /// record another node detached meanwhile, so its client resumes.
    async fn close_moved_sockets(&self) {
        let mut closed = 0;
        for handle in self.hub.all() {
            let id = handle.id();
            let here = match self.stores.conns.info(&id).await {
                Some(info) => info["node"].as_str() == Some(self.id.as_str()),
                None => false,
            };
            if !here
                && handle.outbox.close(Disconnect::new(
                    CloseCode::ServerFull,
                    "this node lost its lease; reconnect",
                ))
            {
                closed += 1;
            }
        }
        if closed > 0 {
            tracing::warn!(
                closed,
                "closed sockets whose connections were detached while this node was away"
            );
        }
    }
}
