//! [`NodeStore`] over Redis: leases in `P:nodes`, each node's figures and the connections it
//! holds, and the claimed clean-up of a dead node.

use async_trait::async_trait;
use serde_json::{json, Value};
use uuid::Uuid;

use super::record::{items, str_of};
use super::{args, Inner, RedisStore};
use crate::model::EventType;
use crate::store::{NodeInfo, NodeStore, StoreError};
use crate::time::rfc3339;

/// Connections detached per script call.
const DETACH_BATCH: usize = 200;
/// How long a claim on a dead node's clean-up holds if its holder dies too.
const CLAIM_MS: u64 = 30_000;

impl Inner {
    /// Detaches every connection `node` holds (one `detached` event each, with `details`);
    /// returns how many.
    pub(super) async fn detach_held(
        &self,
        node: &str,
        details: Value,
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        loop {
            let v = self
                .run(
                    "detaching a node's connections",
                    &self.scripts.detach_node,
                    &args![node, DETACH_BATCH],
                )
                .await?;
            for d in items(&v, "detached") {
                let (Some(id), Some(user)) = (
                    str_of(d, "id").and_then(|i| Uuid::parse_str(i).ok()),
                    str_of(d, "user"),
                ) else {
                    continue;
                };
                self.events
                    .log(id, user, EventType::Detached, details.clone());
                n += 1;
            }
            if v.get("left").and_then(Value::as_u64).unwrap_or(0) == 0 {
                return Ok(n);
            }
        }
    }

    async fn node_gone(&self, node: &str) -> Result<(), StoreError> {
        self.run_raw::<i64>("removing a node", &self.scripts.node_gone, &args![node])
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl NodeStore for RedisStore {
    async fn heartbeat(&self, node: &NodeInfo, lease_ms: u64) -> Result<(), StoreError> {
        let inner = &self.inner;
        inner
            .run(
                "renewing the node's lease",
                &inner.scripts.nodes,
                &args![
                    "heartbeat",
                    node.node_id,
                    lease_ms,
                    node.listen,
                    node.started_at,
                    node.connections,
                ],
            )
            .await
            .map(|_| ())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let inner = &self.inner;
        let v = inner
            .run("listing the nodes", &inner.scripts.nodes, &args!["live"])
            .await?;
        Ok(items(&v, "nodes")
            .iter()
            .map(|n| {
                let s = |f: &str| str_of(n, f).unwrap_or_default().to_string();
                NodeInfo {
                    node_id: s("nodeId"),
                    listen: s("listen"),
                    started_at: s("startedAt"),
                    last_seen: str_of(n, "lastSeen")
                        .and_then(|t| t.parse().ok())
                        .map(rfc3339)
                        .unwrap_or_default(),
                    connections: s("connections").parse().unwrap_or(0),
                }
            })
            .collect())
    }

    async fn expired(&self) -> Result<Vec<String>, StoreError> {
        let inner = &self.inner;
        let v = inner
            .run(
                "listing dead nodes",
                &inner.scripts.nodes,
                &args!["expired"],
            )
            .await?;
        Ok(items(&v, "nodes")
            .iter()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect())
    }

    async fn detach_node(&self, node: &str, claimer: &str) -> Result<Option<usize>, StoreError> {
        let inner = &self.inner;
        let claim: String = inner
            .run_raw(
                "claiming a dead node's clean-up",
                &inner.scripts.claim_node,
                &args![node, claimer, CLAIM_MS],
            )
            .await?;
        match claim.as_str() {
            "held" => return Ok(None),
            "alive" => return Ok(Some(0)),
            _ => {}
        }
        let n = inner
            .detach_held(node, json!({"reason": "node lost", "node": node}))
            .await?;
        inner.node_gone(node).await?;
        if n > 0 {
            tracing::info!(
                node,
                connections = n,
                "detached the connections of a dead node"
            );
        }
        Ok(Some(n))
    }

    async fn leave(&self, node: &str) -> Result<usize, StoreError> {
        let inner = &self.inner;
        let n = inner
            .detach_held(node, json!({"reason": "node stopped", "node": node}))
            .await?;
        inner.node_gone(node).await?;
        Ok(n)
    }
}
