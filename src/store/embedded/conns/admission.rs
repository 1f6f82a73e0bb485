//! Admission: a connection registered, resumed, made Active, and its end.

use std::sync::atomic::Ordering;

use serde_json::json;
use uuid::Uuid;

use super::store::apply_activity;
use super::{Entry, Inner, ResumeRefusal, Ring, Shard};
use crate::auth::{ct_eq, new_token, sha256};
use crate::model::{ConnRecord, ConnState, EventType, StoredUser};
use crate::protocol::{Disconnect, Fate};
use crate::store::{Activation, Activity, AdmitError, Admitted, Closing, NewConn, ResumeRequest};
use crate::sync::lock;
use crate::time::{now_ms, Millis};

impl Inner {
    // ----- admission -----------------------------------------------------------------

    /// Admission under the user's shard lock. Nothing is kept unless its record was
    /// written: a write that fails puts everything back and gives the slot up.
    pub(super) fn admit_locked(&self, new: NewConn) -> Result<Admitted, AdmitError> {
        if new.user.id.is_empty() || new.user.id.contains('\0') {
            return Err(Disconnect::unauthorized("invalid subject").into());
        }
        let now = now_ms();
        let shard_idx = self.shard_of_user(&new.user.id);
        let mut shard = lock(&self.shards[shard_idx]);

        let mut resumed_from: Option<Entry> = None;
        let mut resume_error = None;
        let mut replay_after = 0;
        if let Some(req) = &new.resume {
            match self.check_resume(&mut shard, &new.user.id, req, now, new.trusted_resume) {
                Ok((entry, after, lost)) => {
                    replay_after = after;
                    resume_error = lost;
                    resumed_from = Some(entry);
                }
                Err(ResumeRefusal::ForeignUser) => {
                    return Err(
                        Disconnect::unauthorized("resume of another user's connection").into(),
                    );
                }
                Err(ResumeRefusal::Cannot(why)) => resume_error = Some(why.to_string()),
            }
        }

        // Reserve the slot now (compare-and-swap), so concurrent connects on other shards
        // cannot both take the last one; `insert_locked` is told it is counted.
        let max = self.limits.max_total;
        if resumed_from.is_none()
            && self
                .attached
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_err()
        {
            return Err(Disconnect::server_full().into());
        }

        let token = new_token();
        let mut closing = Vec::new();
        if let Some(old) = resumed_from {
            // migrateConnection: the record moves to the new id.
            let old_id = old.rec.id;
            if let Some(c) = self.closing(&old.rec, Disconnect::replaced()) {
                closing.push(c);
            }
            let old_rec = old.rec.clone();
            let mut rec = old.rec;
            rec.id = new.id;
            rec.state = ConnState::Authenticated;
            rec.detached_at = None;
            rec.resume_hash = sha256(token.as_bytes());
            rec.expires_at = rec
                .expires_at
                .max(now + self.limits.ttl_seconds as i64 * 1000);
            rec.meta.last_activity = now;
            if let Err(e) = self.write_admitted(&mut rec) {
                // The old record stays as it was, resumable.
                self.insert_locked(
                    shard_idx,
                    &mut shard,
                    Entry {
                        rec: old_rec,
                        ring: old.ring,
                    },
                    false,
                );
                return Err(e.into());
            }
            self.unpersist(&old_rec);
            self.events.log(
                new.id,
                &rec.user.id,
                EventType::Migrated,
                json!({"from": old_id, "to": new.id}),
            );
            self.events.log(
                new.id,
                &rec.user.id,
                EventType::Resumed,
                json!({"previousConnectionId": old_id, "lastSeq": replay_after}),
            );
            // A resumed connection was Detached (not counted) or live (counted, and its
            // old entry's count was given back when it was taken out): count it again.
            self.insert_locked(
                shard_idx,
                &mut shard,
                Entry {
                    rec,
                    ring: old.ring,
                },
                false,
            );
            return Ok(Admitted {
                id: new.id,
                resume_token: token,
                resumed: true,
                previous: Some(old_id),
                resume_error,
                replay_after,
                closing,
            });
        }

        let mut rec = ConnRecord {
            id: new.id,
            user: StoredUser::from(&new.user),
            session_id: new.session_id,
            state: ConnState::Authenticated,
            // One instant for both: metadata.connectedAt must equal connectedAt.
            connected_at: new.meta.connected_at,
            expires_at: now + self.limits.ttl_seconds as i64 * 1000,
            detached_at: None,
            meta: new.meta,
            resume_hash: sha256(token.as_bytes()),
            seq: 0,
            acked: 0,
            replay_key: new.id,
        };
        if let Err(e) = self.write_admitted(&mut rec) {
            self.attached.fetch_sub(1, Ordering::SeqCst);
            return Err(e.into());
        }
        self.enforce_user_limit(&mut shard, &rec.user.id, &mut closing);
        self.events.log(
            rec.id,
            &rec.user.id,
            EventType::Authenticated,
            json!({
                "ip": rec.meta.ip, "connectionType": rec.meta.connection_type.as_str(),
            }),
        );
        let id = rec.id;
        self.insert_locked(
            shard_idx,
            &mut shard,
            Entry {
                rec,
                ring: Ring::default(),
            },
            true,
        );
        Ok(Admitted {
            id,
            resume_token: token,
            resumed: false,
            previous: None,
            resume_error,
            replay_after: 0,
            closing,
        })
    }

    /// Writes the record of a connection being admitted as it stands once activated, so
    /// that [`Inner::activate`] has nothing to write. The stored state is read only by
    /// `inspect` and by recovery, which detaches every record that is not Detached: a crash
    /// before the activation leaves the same store either way.
    fn write_admitted(&self, rec: &mut ConnRecord) -> Result<(), crate::store::StoreError> {
        rec.state = ConnState::Active;
        let written = self.write(rec);
        rec.state = ConnState::Authenticated;
        written
    }

    /// `enforceConnectionLimits`: makes room for one more connection of `user`.
    pub(super) fn enforce_user_limit(
        &self,
        shard: &mut Shard,
        user: &str,
        closing: &mut Vec<Closing>,
    ) {
        loop {
            let Some(list) = shard.users.get(user) else {
                return;
            };
            if list.len() < self.limits.max_per_user {
                return;
            }
            let victim = list
                .iter()
                .find(|id| {
                    shard
                        .conns
                        .get(id)
                        .is_some_and(|e| e.rec.state == ConnState::Detached)
                })
                .or_else(|| list.first())
                .copied();
            let Some(victim) = victim else { return };
            let d = Disconnect::evicted();
            let details = json!({"code": d.code.as_u16()});
            if let Some(entry) = self.drop_locked(shard, &victim, EventType::Evicted, details) {
                closing.extend(self.closing(&entry.rec, d));
            }
        }
    }

    pub(super) fn check_resume(
        &self,
        shard: &mut Shard,
        user: &str,
        req: &ResumeRequest,
        now: Millis,
        trusted: bool,
    ) -> Result<(Entry, u64, Option<String>), ResumeRefusal> {
        let Ok(old_id) = Uuid::parse_str(&req.connection_id) else {
            return Err(ResumeRefusal::Cannot("unknown connection"));
        };
        let Some(old) = shard.conns.get(&old_id) else {
            // Not in this user's shard: it may be another user's.
            if self.locate(&old_id).is_some() {
                return Err(ResumeRefusal::ForeignUser);
            }
            return Err(ResumeRefusal::Cannot("unknown connection"));
        };
        if old.rec.user.id != user {
            return Err(ResumeRefusal::ForeignUser);
        }
        if !trusted && !ct_eq(&sha256(req.token.as_bytes()), &old.rec.resume_hash) {
            return Err(ResumeRefusal::Cannot("invalid resume token"));
        }
        if old.rec.state == ConnState::Detached
            && old
                .rec
                .detached_at
                .is_some_and(|t| t + self.limits.resume_grace_seconds as i64 * 1000 <= now)
        {
            return Err(ResumeRefusal::Cannot("resume grace period over"));
        }
        if old.rec.state == ConnState::Authenticated {
            return Err(ResumeRefusal::Cannot("connection is still being set up"));
        }
        let seq = old.rec.seq;
        let first_kept = old.ring.first().unwrap_or(seq + 1);
        let (after, lost) = match req.last_seq {
            None => (old.rec.acked.max(first_kept - 1), None),
            Some(last) => {
                let last = last.min(seq);
                if last + 1 < first_kept {
                    (
                        first_kept - 1,
                        Some(format!(
                            "messages lost: the oldest kept seq is {first_kept}, lastSeq was {last}"
                        )),
                    )
                } else {
                    (last, None)
                }
            }
        };
        let entry = self.remove_locked(shard, &old_id).expect("present above");
        Ok((entry, after, lost))
    }

    pub(super) fn activate(&self, id: &Uuid, replay_after: u64) -> Option<Activation> {
        self.with_entry(id, |entry| {
            // Stored as Active at admission (`write_admitted`).
            entry.rec.state = ConnState::Active;
            self.events.log(
                *id,
                &entry.rec.user.id,
                EventType::Connected,
                json!({"connectionType": entry.rec.meta.connection_type.as_str()}),
            );
            let replay = entry.ring.after(replay_after);
            Activation {
                record: entry.rec.clone(),
                replay,
            }
        })
    }

    pub(super) fn finish(
        &self,
        id: &Uuid,
        fate: Fate,
        code: Option<u16>,
        activity: Option<Activity>,
    ) {
        self.with_shard(id, |shard| {
            let entry = shard.conns.get_mut(id).expect("checked");
            if let Some(a) = activity {
                apply_activity(&mut entry.rec, a);
            }
            match fate {
                Fate::Remove => {
                    self.drop_locked(shard, id, EventType::Disconnected, json!({"code": code}));
                }
                Fate::Detach => {
                    if entry.live() {
                        self.attached.fetch_sub(1, Ordering::Relaxed);
                    }
                    entry.rec.state = ConnState::Detached;
                    entry.rec.detached_at = Some(now_ms());
                    self.persist(&entry.rec);
                    let user = entry.rec.user.id.clone();
                    self.events
                        .log(*id, &user, EventType::Detached, json!({"code": code}));
                }
                Fate::Keep => self.persist(&entry.rec),
            }
        });
    }
}
