//! Delivery: the next seq of each target, the replay buffers, the frames handed to the
//! sockets, one stored record per delivery.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use uuid::Uuid;

use super::{Delivered, Inner, Shard};
use crate::codec;
use crate::model::{Assignment, StoredDelivery};
use crate::protocol::FrameTemplate;
use crate::store::{Delivery, Sockets, StoreError, Target};
use crate::sync::lock;

impl Inner {
    // ----- delivery ------------------------------------------------------------------

    pub(super) fn new_delivery(&self, template: FrameTemplate) -> Arc<Delivered> {
        Arc::new(Delivered {
            id: self.next_delivery.fetch_add(1, Ordering::SeqCst),
            template,
            garbage: self.garbage.clone(),
        })
    }

    /// Assigns the next seq of every connection in `ids` (all in `shard`), keeps the frame
    /// in their replay buffers, hands the live ones to `sockets` and stores the delivery as
    /// one record, all before the shard lock is released: a resume can never miss a frame,
    /// and two deliveries reach a socket in seq order.
    pub(super) fn deliver_locked<'a>(
        &self,
        shard: &mut Shard,
        user: &str,
        ids: impl Iterator<Item = &'a Uuid>,
        template: FrameTemplate,
        sockets: Sockets<'_>,
    ) -> Result<Delivery, StoreError> {
        // Made at the first connection found: a delivery to nobody stores nothing and
        // leaves no id for the sweeper to clear.
        let mut template = Some(template);
        let mut delivered: Option<Arc<Delivered>> = None;
        let mut targets = Vec::new();
        let mut live = Vec::new();
        let mut last = 0;
        for id in ids {
            let Some(entry) = shard.conns.get_mut(id) else {
                continue;
            };
            let d = delivered
                .get_or_insert_with(|| self.new_delivery(template.take().expect("made once")));
            entry.rec.seq += 1;
            let seq = entry.rec.seq;
            entry.ring.keep(seq, d.clone(), &self.limits);
            targets.push((*entry.rec.replay_key.as_bytes(), seq));
            if entry.live() {
                live.push(Assignment { id: *id, seq });
            }
            last = seq;
        }
        let Some(d) = delivered else {
            return Ok(Delivery::default());
        };
        let n = if live.is_empty() {
            0
        } else {
            sockets(user, &live, &d.template)
        };
        let stored = targets.len();
        let record = StoredDelivery {
            kind: d.template.kind.as_str().to_string(),
            rest: d.template.rest.clone(),
            targets,
        };
        // The frames may be on the wire already; what was not stored is never acknowledged.
        self.trees
            .deliveries
            .insert(d.id.to_be_bytes(), codec::encode(&record)?)?;
        Ok(Delivery {
            delivered: n,
            stored,
            seq: last,
        })
    }

    pub(super) fn deliver(
        &self,
        target: Target<'_>,
        template: FrameTemplate,
        sockets: Sockets<'_>,
    ) -> Result<Delivery, StoreError> {
        match target {
            Target::Connection(id) => self
                .with_shard(id, |shard| {
                    let user = shard.conns[id].rec.user.id.clone();
                    self.deliver_locked(shard, &user, std::iter::once(id), template, sockets)
                })
                .unwrap_or(Ok(Delivery::default())),
            Target::User(user) => {
                let mut shard = lock(&self.shards[self.shard_of_user(user)]);
                let ids = shard.users.get(user).cloned().unwrap_or_default();
                self.deliver_locked(&mut shard, user, ids.iter(), template, sockets)
            }
            Target::Session { id, except } => {
                // A session's connections are all its user's, so they live in one shard.
                let ids: Vec<Uuid> = lock(&self.sessions).get(id).cloned().unwrap_or_default();
                let Some(first) = ids.first() else {
                    return Ok(Delivery::default());
                };
                let Some(idx) = self.locate(first) else {
                    return Ok(Delivery::default());
                };
                let mut shard = lock(&self.shards[idx]);
                let Some(user) = shard.conns.get(first).map(|e| e.rec.user.id.clone()) else {
                    return Ok(Delivery::default());
                };
                let ids = ids.iter().filter(|c| Some(*c) != except);
                self.deliver_locked(&mut shard, &user, ids, template, sockets)
            }
        }
    }
}
