//! The connection store's conformance suite ([`tether::store::ConnStore`]).

use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use tether::auth::AuthUser;
use tether::bus::{BusEvent, NodeCommand, Received, Subscription, Topic};
use tether::model::{Assignment, ConnType, EventType, Metadata, RateLimit};
use tether::protocol::{CloseCode, Disconnect, Fate, FrameTemplate};
use tether::store::{
    AdmitError, Admitted, ConnStore, MetadataPatch, MigrateError, NewConn, ResumeRequest, Target,
};
use tether::time::now_ms;

use crate::{Opened, GRACE_SECONDS, MAX_PER_USER, MAX_TOTAL, NODE, REPLAY, REPLAY_BYTES};

fn user(id: &str) -> AuthUser {
    AuthUser {
        id: id.into(),
        permissions: vec!["chat".into()],
        roles: vec![],
        name: None,
        claims: Map::new(),
    }
}

pub fn new_conn(user_id: &str, session: Option<&str>, resume: Option<ResumeRequest>) -> NewConn {
    let now = now_ms();
    NewConn {
        id: Uuid::new_v4(),
        user: user(user_id),
        session_id: session.map(str::to_string),
        meta: Metadata {
            ip: "127.0.0.1".into(),
            user_agent: "conformance".into(),
            connected_at: now,
            last_activity: now,
            client_version: Some("1.0".into()),
            connection_type: ConnType::WebSocket,
            permissions: vec!["chat".into()],
            rate_limit: RateLimit {
                messages_per_minute: 120,
                last_reset: now,
                count: 0,
            },
        },
        resume,
        trusted_resume: false,
    }
}

pub async fn admit(c: &dyn ConnStore, user_id: &str, session: Option<&str>) -> Admitted {
    c.admit(new_conn(user_id, session, None), NODE)
        .await
        .expect("admitted")
}

/// Admits and activates a connection, as a connect does.
/// Admits a resume of `old` for `user_id` from `last_seq` with its token, on [`NODE`].
pub async fn resume(
    c: &dyn ConnStore,
    old: &Admitted,
    user_id: &str,
    last_seq: Option<u64>,
) -> Admitted {
    let req = ResumeRequest {
        connection_id: old.id.to_string(),
        token: old.resume_token.clone(),
        last_seq,
    };
    c.admit(new_conn(user_id, None, Some(req)), NODE)
        .await
        .unwrap()
}

pub async fn connect(c: &dyn ConnStore, user_id: &str, session: Option<&str>) -> Admitted {
    let a = admit(c, user_id, session).await;
    c.activate(&a.id, a.replay_after)
        .await
        .expect("store")
        .expect("activated");
    // Distinct connectedAt, so "oldest" is well defined.
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    a
}

/// What a delivery handed to the sockets of node [`NODE`]: through the `sockets` callback
/// (one store for one node), or as Deliver commands on the node's bus topic (a shared
/// store, which reaches every node's sockets that way).
pub struct Sockets {
    calls: Mutex<Vec<(String, Vec<Assignment>, String)>>,
    node: Option<tokio::sync::Mutex<Subscription>>,
}

impl Sockets {
    pub async fn new(o: &Opened) -> Sockets {
        Sockets::of(o, NODE).await
    }

    /// What reaches node `node`'s sockets.
    pub async fn of(o: &Opened, node: &str) -> Sockets {
        let node = if o.stores.admin.shared() {
            let sub = crate::subscribe(o, &[Topic::Node(node.to_string())]).await;
            Some(tokio::sync::Mutex::new(sub))
        } else {
            None
        };
        Sockets {
            calls: Mutex::new(Vec::new()),
            node,
        }
    }

    fn take(&self, user: &str, to: &[Assignment], t: &FrameTemplate) -> usize {
        self.calls
            .lock()
            .unwrap()
            .push((user.to_string(), to.to_vec(), t.render(0)));
        to.len()
    }

    /// Everything handed over since the last call: for a shared store, what arrives until
    /// the topic has been quiet a moment.
    pub async fn seen(&self) -> Vec<(String, Vec<Assignment>, String)> {
        let mut out = std::mem::take(&mut *self.calls.lock().unwrap());
        let Some(sub) = &self.node else { return out };
        let mut sub = sub.lock().await;
        let mut wait = Duration::from_millis(1500);
        while let Ok(Some(r)) = tokio::time::timeout(wait, sub.next()).await {
            if let Received::Event(BusEvent::Command {
                command:
                    NodeCommand::Deliver {
                        user,
                        assignments,
                        kind,
                        rest,
                    },
                ..
            }) = r
            {
                let to = assignments
                    .into_iter()
                    .map(|(id, seq)| Assignment { id, seq })
                    .collect();
                out.push((user, to, FrameTemplate { kind, rest }.render(0)));
                wait = Duration::from_millis(200);
            }
        }
        out
    }

    /// The close commands that reached the node (shared stores only).
    pub async fn closes(&self) -> Vec<(Uuid, CloseCode)> {
        let mut out = Vec::new();
        let Some(sub) = &self.node else { return out };
        let mut sub = sub.lock().await;
        let mut wait = Duration::from_millis(1500);
        while let Ok(Some(r)) = tokio::time::timeout(wait, sub.next()).await {
            if let Received::Event(BusEvent::Command {
                command: NodeCommand::Close { id, disconnect, .. },
                ..
            }) = r
            {
                out.push((id, disconnect.code));
                wait = Duration::from_millis(200);
            }
        }
        out
    }
}

pub async fn send(
    c: &dyn ConnStore,
    target: Target<'_>,
    n: u64,
    sockets: &Sockets,
) -> tether::store::Delivery {
    let t = FrameTemplate::message(&json!({ "n": n }).to_string(), "t");
    let f = |u: &str, to: &[Assignment], t: &FrameTemplate| sockets.take(u, to, t);
    c.deliver(target, t, &f, true).await.expect("delivered")
}

pub fn seqs_of(replay: &[(u64, String)]) -> Vec<u64> {
    replay.iter().map(|(s, _)| *s).collect()
}

pub fn data_n(frame: &str) -> u64 {
    let v: Value = serde_json::from_str(frame).unwrap();
    v["data"]["n"].as_u64().unwrap()
}

pub async fn admits_activates_and_answers_lookups(o: &Opened) {
    let c = &*o.stores.conns;
    let a = admit(c, "ann", None).await;
    assert!(!a.resumed && a.previous.is_none() && a.resume_error.is_none());
    assert!(!a.resume_token.is_empty());
    let info = c.info(&a.id).await.expect("the record exists");
    assert_eq!(info["state"], "authenticated");
    assert!(!c.valid(&a.id).await, "not Active yet");
    let act = c.activate(&a.id, 0).await.unwrap().expect("activated");
    assert_eq!(act.record.id, a.id);
    assert!(act.replay.is_empty());
    let info = c.info(&a.id).await.unwrap();
    assert_eq!(info["state"], "active");
    assert_eq!(info["node"], NODE);
    assert_eq!(info["userId"], "ann");
    assert_eq!(info["metadata"]["clientVersion"], "1.0");
    assert!(c.valid(&a.id).await);
    assert_eq!(c.user(&a.id).await.unwrap().id, "ann");
    let list = c.user_connections("ann").await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["connectionId"], a.id.to_string());
    assert!(c.info(&Uuid::new_v4()).await.is_none());
    assert!(c.user_connections("nobody").await.is_empty());
    let page = c.list(None, None, 10).await;
    assert_eq!(page.len(), 1);
}

pub async fn evicts_the_oldest_past_max_per_user(o: &Opened) {
    let c = &*o.stores.conns;
    let mut ids = Vec::new();
    for _ in 0..MAX_PER_USER {
        let a = connect(c, "bea", None).await;
        assert!(a.closing.is_empty(), "room left: nobody is evicted");
        ids.push(a.id);
    }
    let newest = connect(c, "bea", None).await;
    assert_eq!(newest.closing.len(), 1, "{:?}", newest.closing);
    let evicted = &newest.closing[0];
    assert_eq!(evicted.id, ids[0], "the oldest goes");
    assert_eq!(evicted.disconnect.code, CloseCode::Evicted);
    assert_eq!(evicted.node.as_deref(), Some(NODE));
    let list: Vec<String> = c
        .user_connections("bea")
        .await
        .iter()
        .map(|i| i["connectionId"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = ids[1..]
        .iter()
        .chain([&newest.id])
        .map(|i| i.to_string())
        .collect();
    assert_eq!(list, want, "oldest first, the evicted one gone");
    // A Detached connection goes before a live one, and needs no socket closed.
    c.finish(&ids[2], Fate::Detach, None, None).await;
    let again = connect(c, "bea", None).await;
    assert_eq!(again.closing.len(), 0, "{:?}", again.closing);
    assert!(
        c.info(&ids[2]).await.is_none(),
        "the Detached one was evicted"
    );
    assert!(c.info(&ids[1]).await.is_some());
}

pub async fn refuses_past_max_total_and_frees_the_slot_on_removal(o: &Opened) {
    let c = &*o.stores.conns;
    let mut ids = Vec::new();
    for n in 0..MAX_TOTAL {
        ids.push(connect(c, &format!("u{n}"), None).await.id);
    }
    match c.admit(new_conn("late", None, None), NODE).await {
        Err(AdmitError::Refused(d)) => assert_eq!(d.code, CloseCode::ServerFull),
        other => panic!("expected a 1013 refusal, got {other:?}"),
    }
    let removed = c
        .remove(&ids[0], &Disconnect::operator("x"), EventType::Forced)
        .await
        .unwrap()
        .expect("it existed");
    assert_eq!(
        removed.closing.unwrap().disconnect.code,
        CloseCode::Operator
    );
    admit(c, "late", None).await;
    // A Detached connection holds no slot.
    c.finish(&ids[1], Fate::Detach, None, None).await;
    admit(c, "later", None).await;
}

pub async fn resumes_with_the_token_and_refuses_another_users(o: &Opened) {
    let c = &*o.stores.conns;
    let old = connect(c, "cid", Some("s-cid")).await;
    let sockets = Sockets::new(o).await;
    send(c, Target::Connection(&old.id), 1, &sockets).await;
    let connected_at = c.info(&old.id).await.unwrap()["connectedAt"].clone();
    c.finish(&old.id, Fate::Detach, Some(4010), None).await;
    assert_eq!(c.info(&old.id).await.unwrap()["state"], "detached");
    assert_eq!(c.info(&old.id).await.unwrap()["node"], Value::Null);

    // Another user's resume is refused and leaves the connection untouched.
    let foreign = ResumeRequest {
        connection_id: old.id.to_string(),
        token: old.resume_token.clone(),
        last_seq: Some(0),
    };
    match c.admit(new_conn("dan", None, Some(foreign)), NODE).await {
        Err(AdmitError::Refused(d)) => assert_eq!(d.code, CloseCode::Unauthorized),
        other => panic!("expected 4501, got {other:?}"),
    }
    assert_eq!(c.info(&old.id).await.unwrap()["state"], "detached");

    // A wrong token connects fresh, with the reason.
    let wrong = ResumeRequest {
        connection_id: old.id.to_string(),
        token: "nope".into(),
        last_seq: Some(0),
    };
    let fresh = c
        .admit(new_conn("cid", None, Some(wrong)), NODE)
        .await
        .unwrap();
    assert!(!fresh.resumed);
    assert!(fresh.resume_error.is_some());
    c.remove(&fresh.id, &Disconnect::normal(), EventType::Disconnected)
        .await
        .unwrap();

    // The right token takes the old identity over, under a new id.
    let req = ResumeRequest {
        connection_id: old.id.to_string(),
        token: old.resume_token.clone(),
        last_seq: Some(0),
    };
    let resumed = c
        .admit(new_conn("cid", None, Some(req.clone())), NODE)
        .await
        .unwrap();
    assert!(resumed.resumed);
    assert_eq!(resumed.previous, Some(old.id));
    assert_ne!(resumed.resume_token, old.resume_token, "tokens rotate");
    assert!(c.info(&old.id).await.is_none(), "the old id stops existing");
    let act = c
        .activate(&resumed.id, resumed.replay_after)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seqs_of(&act.replay), vec![1], "what it missed");
    let info = c.info(&resumed.id).await.unwrap();
    assert_eq!(
        info["connectedAt"], connected_at,
        "connectedAt carries over"
    );
    assert_eq!(info["sessionId"], "s-cid", "the session link carries over");
    assert_eq!(c.session_connections("s-cid").await, vec![resumed.id]);
    // The old token no longer works.
    let stale = ResumeRequest {
        connection_id: resumed.id.to_string(),
        token: old.resume_token,
        last_seq: None,
    };
    let again = c
        .admit(new_conn("cid", None, Some(stale)), NODE)
        .await
        .unwrap();
    assert!(!again.resumed);
}

pub async fn delivers_each_connection_its_own_seq_and_keeps_it_for_replay(o: &Opened) {
    let c = &*o.stores.conns;
    let a = connect(c, "eve", Some("s-eve")).await;
    let sockets = Sockets::new(o).await;
    send(c, Target::Connection(&a.id), 1, &sockets).await;
    let b = connect(c, "eve", Some("s-eve")).await;
    let d = send(c, Target::User("eve"), 2, &sockets).await;
    assert_eq!(d.stored, 2);
    assert_eq!(d.delivered, 2, "both have sockets");
    let seen = sockets.seen().await;
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].1, vec![Assignment { id: a.id, seq: 1 }]);
    let mut second = seen[1].1.clone();
    second.sort_by_key(|x| x.seq);
    assert_eq!(
        second,
        vec![
            Assignment { id: b.id, seq: 1 },
            Assignment { id: a.id, seq: 2 }
        ],
        "each its own next seq"
    );
    // A session's delivery skips its origin.
    let d = send(
        c,
        Target::Session {
            id: "s-eve",
            except: Some(&a.id),
        },
        3,
        &sockets,
    )
    .await;
    assert_eq!(d.stored, 1);
    assert_eq!(
        sockets.seen().await[0].1,
        vec![Assignment { id: b.id, seq: 2 }]
    );
    // A Detached connection is given its seq and kept, but no socket is handed it.
    c.finish(&b.id, Fate::Detach, None, None).await;
    let d = send(c, Target::User("eve"), 4, &sockets).await;
    assert_eq!((d.stored, d.delivered), (2, 1));
    assert_eq!(
        sockets.seen().await[0].1,
        vec![Assignment { id: a.id, seq: 3 }]
    );
    // Resumed from lastSeq 1, b gets 2 and 3 (messages 3 and 4), in order.
    let r = resume(c, &b, "eve", Some(1)).await;
    let act = c.activate(&r.id, r.replay_after).await.unwrap().unwrap();
    assert_eq!(seqs_of(&act.replay), vec![2, 3]);
    let data: Vec<u64> = act.replay.iter().map(|(_, f)| data_n(f)).collect();
    assert_eq!(data, vec![3, 4]);
    assert_eq!(act.record.seq, 3);
    // A delivery to nobody stores nothing.
    let d = send(c, Target::User("nobody"), 5, &sockets).await;
    assert_eq!((d.stored, d.delivered), (0, 0));
    assert!(sockets.seen().await.is_empty());
}

pub async fn an_ack_trims_what_a_resume_replays(o: &Opened) {
    let c = &*o.stores.conns;
    let a = connect(c, "fay", None).await;
    let sockets = Sockets::new(o).await;
    for n in 1..=3 {
        send(c, Target::Connection(&a.id), n, &sockets).await;
    }
    c.ack(&a.id, 2).await.unwrap();
    c.finish(&a.id, Fate::Detach, None, None).await;
    // No lastSeq: everything not acked.
    let r = resume(c, &a, "fay", None).await;
    let act = c.activate(&r.id, r.replay_after).await.unwrap().unwrap();
    assert_eq!(seqs_of(&act.replay), vec![3]);
}

/// `replay_buffer_bytes` bounds the frames kept as a resume would send them, the oldest
/// dropped first; the newest is kept whatever its size.
pub async fn the_replay_buffer_is_bounded_in_bytes_too(o: &Opened) {
    let c = &*o.stores.conns;
    let a = connect(c, "gil", None).await;
    let sockets = Sockets::new(o).await;
    let f = |u: &str, to: &[Assignment], t: &FrameTemplate| sockets.take(u, to, t);
    let mut sizes = Vec::new();
    for (n, pad) in [
        (1, 100),
        (2, 100),
        (3, REPLAY_BYTES / 2),
        (4, 100),
        (5, REPLAY_BYTES),
    ] {
        let data = json!({"n": n, "pad": "p".repeat(pad)}).to_string();
        let t = FrameTemplate::message(&data, "t");
        sizes.push(t.render(n).len());
        c.deliver(Target::Connection(&a.id), t, &f, true)
            .await
            .expect("delivered");
        let kept = c.replay(&a.id, 0).await.unwrap();
        let bytes: usize = kept.iter().map(|(_, f)| f.len()).sum();
        let newest = kept.last().map(|(s, _)| *s);
        assert_eq!(newest, Some(n), "the newest is kept: {:?}", seqs_of(&kept));
        assert!(
            bytes <= REPLAY_BYTES || kept.len() == 1,
            "after {n}: {bytes} bytes in {:?}",
            seqs_of(&kept)
        );
        // Nothing is dropped that would have fit.
        let first = kept[0].0 as usize;
        if first > 1 {
            let with_one_more: usize = bytes + sizes[first - 2];
            assert!(
                with_one_more > REPLAY_BYTES,
                "after {n}: {:?}",
                seqs_of(&kept)
            );
        }
    }
    assert_eq!(seqs_of(&c.replay(&a.id, 0).await.unwrap()), vec![5]);
}

/// After every message, what a replay, a resume's "oldest kept seq" and the resumed
/// connection's replay see is exactly what the bounds keep (the newest
/// `replay_buffer_messages` frames, and of those the newest within `replay_buffer_bytes`),
/// whatever the store holds besides (the Redis store trims a full list only every few
/// messages).
pub async fn the_replay_buffer_keeps_exactly_its_bounds_after_every_message(o: &Opened) {
    let c = &*o.stores.conns;
    let mut a = connect(c, "kit", None).await;
    let sockets = Sockets::new(o).await;
    let f = |u: &str, to: &[Assignment], t: &FrameTemplate| sockets.take(u, to, t);
    // The frames the bounds keep, as (seq, rendered length).
    let mut kept: std::collections::VecDeque<(u64, usize)> = Default::default();
    for n in 1..=(4 * REPLAY as u64 + 3) {
        let pad = if n % 3 == 0 {
            REPLAY_BYTES / 2 - 20
        } else {
            10
        };
        let data = json!({"n": n, "pad": "p".repeat(pad)}).to_string();
        let t = FrameTemplate::message(&data, "t");
        kept.push_back((n, t.render(n).len()));
        let d = c
            .deliver(Target::Connection(&a.id), t, &f, true)
            .await
            .expect("delivered");
        assert_eq!(d.seq, n);
        while kept.len() > REPLAY
            || (kept.len() > 1 && kept.iter().map(|k| k.1).sum::<usize>() > REPLAY_BYTES)
        {
            kept.pop_front();
        }
        let want: Vec<u64> = kept.iter().map(|k| k.0).collect();
        assert_eq!(
            seqs_of(&c.replay(&a.id, 0).await.unwrap()),
            want,
            "replay after message {n}"
        );
        c.finish(&a.id, Fate::Detach, None, None).await;
        let r = resume(c, &a, "kit", Some(0)).await;
        assert!(r.resumed, "after message {n}");
        let first = want[0];
        if first > 1 {
            let why = r.resume_error.clone().unwrap_or_default();
            assert!(
                why.contains(&format!("the oldest kept seq is {first},")),
                "after message {n}: {why}"
            );
        } else {
            assert_eq!(r.resume_error, None, "after message {n}");
        }
        let act = c.activate(&r.id, r.replay_after).await.unwrap().unwrap();
        assert_eq!(seqs_of(&act.replay), want, "resumed after message {n}");
        a = r;
    }
}

/// Messages to the whole user, to one connection and to a session, interleaved, with one
/// connection that nothing reads for many messages and one that joins half way: after each,
/// every connection has its own next seq, and its replay and its resume see exactly what the
/// bounds keep of its own frames. (The Redis store keeps a message to the whole user once, in
/// the user's log, and writes it into a connection's list only when the list is next read or
/// written.)
pub async fn mixed_deliveries_keep_each_connections_seq_and_bounds(o: &Opened) {
    let c = &*o.stores.conns;
    let a = connect(c, "mix", Some("ms")).await;
    let quiet = connect(c, "mix", None).await;
    let sockets = Sockets::new(o).await;
    let f = |u: &str, to: &[Assignment], t: &FrameTemplate| sockets.take(u, to, t);
    // Each connection's (seq, rendered length) kept by the bounds, and its seq.
    type Kept = std::collections::VecDeque<(u64, usize)>;
    let mut model: Vec<(Uuid, u64, Kept)> =
        vec![(a.id, 0, Kept::new()), (quiet.id, 0, Kept::new())];
    let mut late = None;
    let mut last_to_all = 0;
    let rounds = 6 * REPLAY as u64 + 5;
    for n in 1..=rounds {
        if n == 2 * REPLAY as u64 {
            let l = connect(c, "mix", Some("ms")).await;
            model.push((l.id, 0, Kept::new()));
            late = Some(l);
        }
        let pad = match n % 5 {
            0 => REPLAY_BYTES / 2 - 20,
            3 => REPLAY_BYTES,
            _ => 10,
        };
        let data = json!({"n": n, "pad": "p".repeat(pad)}).to_string();
        let t = FrameTemplate::message(&data, "t");
        // Mostly to the user; every fourth to `a` alone, every seventh to the session.
        let (target, to): (Target, Vec<Uuid>) = if n % 4 == 0 {
            (Target::Connection(&a.id), vec![a.id])
        } else if n % 7 == 0 {
            let mut to = vec![a.id];
            to.extend(late.as_ref().map(|l| l.id));
            (
                Target::Session {
                    id: "ms",
                    except: None,
                },
                to,
            )
        } else {
            last_to_all = n;
            (Target::User("mix"), model.iter().map(|m| m.0).collect())
        };
        let d = c
            .deliver(target, t.clone(), &f, true)
            .await
            .expect("delivered");
        assert_eq!(d.stored, to.len(), "message {n}");
        for (id, seq, kept) in model.iter_mut().filter(|m| to.contains(&m.0)) {
            *seq += 1;
            kept.push_back((*seq, t.render(*seq).len()));
            while kept.len() > REPLAY
                || (kept.len() > 1 && kept.iter().map(|k| k.1).sum::<usize>() > REPLAY_BYTES)
            {
                kept.pop_front();
            }
            if to.len() == 1 {
                assert_eq!(d.seq, *seq, "message {n} to {id}");
            }
        }
        // `quiet` is read only at the end; the others after every message.
        for (id, _, kept) in model.iter().filter(|m| m.0 != quiet.id) {
            let want: Vec<u64> = kept.iter().map(|k| k.0).collect();
            assert_eq!(
                seqs_of(&c.replay(id, 0).await.unwrap()),
                want,
                "{id} after message {n}"
            );
        }
    }
    let (_, seq, kept) = model.iter().find(|m| m.0 == quiet.id).unwrap();
    let want: Vec<u64> = kept.iter().map(|k| k.0).collect();
    c.finish(&quiet.id, Fate::Detach, None, None).await;
    let r = resume(c, &quiet, "mix", Some(0)).await;
    assert!(r.resumed);
    let why = r.resume_error.clone().unwrap_or_default();
    assert!(
        why.contains(&format!("the oldest kept seq is {},", want[0])),
        "{why}"
    );
    let act = c.activate(&r.id, r.replay_after).await.unwrap().unwrap();
    assert_eq!(seqs_of(&act.replay), want, "the quiet one, resumed");
    assert_eq!(act.record.seq, *seq);
    let frames = c.replay(&r.id, 0).await.unwrap();
    assert_eq!(data_n(&frames.last().unwrap().1), last_to_all);
    // What the sockets were handed: each connection its seqs in order, none twice.
    let mut last: std::collections::HashMap<Uuid, u64> = Default::default();
    for (_, to, _) in sockets.seen().await {
        for a in to {
            let prev = last.insert(a.id, a.seq).unwrap_or(0);
            assert_eq!(a.seq, prev + 1, "{} handed {} after {prev}", a.id, a.seq);
        }
    }
}

pub async fn a_resume_with_an_old_last_seq_says_what_was_lost(o: &Opened) {
    let c = &*o.stores.conns;
    let a = connect(c, "gus", None).await;
    let sockets = Sockets::new(o).await;
    let total = REPLAY as u64 + 2;
    for n in 1..=total {
        send(c, Target::Connection(&a.id), n, &sockets).await;
    }
    c.finish(&a.id, Fate::Detach, None, None).await;
    let r = resume(c, &a, "gus", Some(0)).await;
    assert!(r.resumed, "resumed, with what is kept");
    let why = r.resume_error.clone().expect("says messages were lost");
    assert!(why.contains("lost"), "{why}");
    let act = c.activate(&r.id, r.replay_after).await.unwrap().unwrap();
    assert_eq!(seqs_of(&act.replay), (3..=total).collect::<Vec<_>>());
}

pub async fn removes_by_id_by_user_and_by_session(o: &Opened) {
    let c = &*o.stores.conns;
    let a = connect(c, "hal", Some("s-hal")).await;
    let b = connect(c, "hal", Some("s-hal")).await;
    let x = connect(c, "hal", None).await;
    let other = connect(c, "ida", None).await;
    c.finish(&x.id, Fate::Detach, None, None).await;
    let gone = c
        .remove_session("s-hal", &Disconnect::session_ended("session deleted"))
        .await
        .unwrap();
    let mut ids: Vec<Uuid> = gone
        .iter()
        .map(|r| r.closing.as_ref().unwrap().id)
        .collect();
    ids.sort();
    let mut want = vec![a.id, b.id];
    want.sort();
    assert_eq!(ids, want);
    assert!(gone
        .iter()
        .all(|r| r.closing.as_ref().unwrap().disconnect.code == CloseCode::SessionEnded));
    assert!(c.session_connections("s-hal").await.is_empty());
    // The Detached one is removed too, with no socket to close.
    let gone = c
        .remove_user("hal", &Disconnect::operator("bye"), EventType::Forced)
        .await
        .unwrap();
    assert_eq!(gone.len(), 1);
    assert!(gone[0].closing.is_none());
    assert!(c.user_connections("hal").await.is_empty());
    assert!(c.info(&other.id).await.is_some(), "other users untouched");
    assert!(c
        .remove(&Uuid::new_v4(), &Disconnect::normal(), EventType::Forced)
        .await
        .unwrap()
        .is_none());
}

/// The registry listing (`GET /v1/registry`): every connection once, by user id and then
/// connectedAt, a page at a time from after the last one; one user's alone; a user whose
/// connections are all gone is skipped.
pub async fn lists_every_connection_in_pages(o: &Opened) {
    let c = &*o.stores.conns;
    let ids = |page: &[Value]| -> Vec<String> {
        page.iter()
            .map(|v| v["connectionId"].as_str().unwrap().to_string())
            .collect()
    };
    // Connected in an order that is neither the users' order nor one user at a time.
    let mut made: Vec<(String, Admitted)> = Vec::new();
    for user in ["cy", "al", "bo", "al", "cy", "al"] {
        made.push((user.to_string(), connect(c, user, None).await));
    }
    let in_order = |users: &[&str]| -> Vec<String> {
        let mut want = Vec::new();
        for u in users {
            for (owner, a) in &made {
                if owner == u {
                    want.push(a.id.to_string());
                }
            }
        }
        want
    };
    let whole = c.list(None, None, 100).await;
    assert_eq!(ids(&whole), in_order(&["al", "bo", "cy"]));
    for v in &whole {
        assert!(v["userId"].is_string() && v["state"] == "active", "{v}");
    }

    // Pages of 2: each starts after the last id of the one before.
    let mut paged = Vec::new();
    let mut after: Option<Uuid> = None;
    loop {
        let page = c.list(None, after.as_ref(), 2).await;
        assert!(page.len() <= 2);
        paged.extend(ids(&page));
        if page.len() < 2 {
            break;
        }
        after = Some(paged.last().unwrap().parse().unwrap());
    }
    assert_eq!(
        paged,
        in_order(&["al", "bo", "cy"]),
        "every connection once, in order"
    );

    // One user's, in pages too.
    let al = c.list(Some("al"), None, 2).await;
    assert_eq!(ids(&al), in_order(&["al"])[..2].to_vec());
    let last: Uuid = ids(&al)[1].parse().unwrap();
    assert_eq!(
        ids(&c.list(Some("al"), Some(&last), 2).await),
        in_order(&["al"])[2..].to_vec()
    );
    assert!(
        c.list(Some("ava"), None, 10).await.is_empty(),
        "a user with none"
    );

    // bo's only connection goes: the listing goes from al straight to cy.
    let bo = &made[2].1;
    c.remove(&bo.id, &Disconnect::normal(), EventType::Forced)
        .await
        .unwrap()
        .expect("removed");
    assert_eq!(ids(&c.list(None, None, 100).await), in_order(&["al", "cy"]));
    let al_last: Uuid = in_order(&["al"]).last().unwrap().parse().unwrap();
    assert_eq!(
        ids(&c.list(None, Some(&al_last), 100).await),
        in_order(&["cy"])
    );
    assert!(c.list(Some("bo"), None, 10).await.is_empty());
}

pub async fn migrates_to_a_new_id(o: &Opened) {
    let c = &*o.stores.conns;
    let a = connect(c, "jo", None).await;
    let b = connect(c, "jo", None).await;
    let new = Uuid::new_v4();
    assert_eq!(
        c.migrate(&a.id, b.id).await.unwrap().unwrap_err(),
        MigrateError::Exists
    );
    assert_eq!(
        c.migrate(&Uuid::new_v4(), new).await.unwrap().unwrap_err(),
        MigrateError::Unknown
    );
    let (user, info) = c.migrate(&a.id, new).await.unwrap().unwrap();
    assert_eq!(user, "jo");
    assert_eq!(info["connectionId"], new.to_string());
    assert!(c.info(&a.id).await.is_none());
    assert_eq!(c.info(&new).await.unwrap()["state"], "active");
}

pub async fn detached_connections_go_after_the_grace_period(o: &Opened) {
    let c = &*o.stores.conns;
    let a = connect(c, "kim", None).await;
    let live = connect(c, "kim", None).await;
    c.finish(&a.id, Fate::Detach, None, None).await;
    let sweep = c.sweep().await.unwrap();
    assert_eq!(sweep.removed, 0, "within the grace period");
    tokio::time::sleep(std::time::Duration::from_millis(GRACE_SECONDS * 1000 + 100)).await;
    let sweep = c.sweep().await.unwrap();
    assert_eq!(sweep.removed, 1);
    assert!(sweep.expired.is_empty(), "the live one has not expired");
    assert!(c.info(&a.id).await.is_none());
    assert!(c.info(&live.id).await.is_some());
}

pub async fn updates_metadata_and_ttl(o: &Opened) {
    let c = &*o.stores.conns;
    let a = connect(c, "lou", None).await;
    let patch = MetadataPatch {
        client_version: Some(None),
        messages_per_minute: Some(7),
        ..Default::default()
    };
    let (user, info) = c.update_metadata(&a.id, patch).await.unwrap().unwrap();
    assert_eq!(user, "lou");
    assert_eq!(info["metadata"]["clientVersion"], Value::Null);
    assert_eq!(info["metadata"]["rateLimit"]["messagesPerMinute"], 7);
    let before = c.info(&a.id).await.unwrap()["expiresAt"].clone();
    let info = c.extend_ttl(&a.id, 999_999).await.unwrap().unwrap();
    assert!(info["expiresAt"].as_str() > before.as_str());
    assert!(c
        .update_metadata(&Uuid::new_v4(), MetadataPatch::default())
        .await
        .unwrap()
        .is_none());
}

/// Before a restart: one connection Active, one Detached, each with a delivery.
pub async fn before_restart(o: &Opened) -> Value {
    let c = &*o.stores.conns;
    let a = connect(c, "max", None).await;
    let b = connect(c, "max", None).await;
    let sockets = Sockets::new(o).await;
    send(c, Target::User("max"), 1, &sockets).await;
    c.finish(&b.id, Fate::Detach, None, None).await;
    assert_eq!(c.info(&a.id).await.unwrap()["state"], "active");
    json!({"a": a.id, "b": b.id, "token": a.resume_token})
}

/// After it: both Detached, resumable, with their seq and replay.
pub async fn after_restart(o: &Opened, before: Value) {
    let c = &*o.stores.conns;
    let report = c.recover().await.unwrap();
    assert_eq!(report.detached, 2);
    let a: Uuid = serde_json::from_value(before["a"].clone()).unwrap();
    for id in [&a, &serde_json::from_value(before["b"].clone()).unwrap()] {
        assert_eq!(c.info(id).await.unwrap()["state"], "detached");
    }
    let req = ResumeRequest {
        connection_id: a.to_string(),
        token: before["token"].as_str().unwrap().into(),
        last_seq: Some(0),
    };
    let r = c
        .admit(new_conn("max", None, Some(req)), NODE)
        .await
        .unwrap();
    assert!(r.resumed);
    let act = c.activate(&r.id, r.replay_after).await.unwrap().unwrap();
    assert_eq!(seqs_of(&act.replay), vec![1]);
    assert_eq!(data_n(&act.replay[0].1), 1);
}

/// After a node restart with a fixed node id over the same Redis (the state stayed in
/// Redis): the connections that node held are Detached (the other was already), each
/// resumable with its seq and replay.
pub async fn after_a_node_restart(o: &Opened, before: Value) {
    let c = &*o.stores.conns;
    let report = c.recover().await.unwrap();
    assert_eq!(
        report.detached, 1,
        "the one Active connection the node held"
    );
    let a: Uuid = serde_json::from_value(before["a"].clone()).unwrap();
    for id in [&a, &serde_json::from_value(before["b"].clone()).unwrap()] {
        assert_eq!(c.info(id).await.unwrap()["state"], "detached");
        assert_eq!(c.info(id).await.unwrap()["node"], Value::Null);
    }
    let req = ResumeRequest {
        connection_id: a.to_string(),
        token: before["token"].as_str().unwrap().into(),
        last_seq: Some(0),
    };
    let r = c
        .admit(new_conn("max", None, Some(req)), NODE)
        .await
        .unwrap();
    assert!(r.resumed);
    let act = c.activate(&r.id, r.replay_after).await.unwrap().unwrap();
    assert_eq!(seqs_of(&act.replay), vec![1]);
    assert_eq!(data_n(&act.replay[0].1), 1);
}

pub async fn replays_what_came_after_a_seq(o: &Opened) {
    let c = &*o.stores.conns;
    let a = connect(c, "nia", None).await;
    let sockets = Sockets::new(o).await;
    for n in 1..=3 {
        send(c, Target::Connection(&a.id), n, &sockets).await;
    }
    let replay = c.replay(&a.id, 1).await.unwrap();
    assert_eq!(seqs_of(&replay), vec![2, 3]);
    assert_eq!(data_n(&replay[0].1), 2, "the frame as it was sent");
    let frame: Value = serde_json::from_str(&replay[1].1).unwrap();
    assert_eq!(frame["type"], "message");
    assert_eq!(frame["seq"], 3);
    assert!(
        c.replay(&a.id, 3).await.unwrap().is_empty(),
        "nothing after the last"
    );
    c.ack(&a.id, 2).await.unwrap();
    assert_eq!(
        seqs_of(&c.replay(&a.id, 0).await.unwrap()),
        vec![3],
        "acked ones are let go"
    );
    assert!(c.replay(&Uuid::new_v4(), 0).await.unwrap().is_empty());
}

/// Twenty admissions racing (from two nodes where the backend has them): `max_per_user` and
/// `max_total` hold, whatever the interleaving.
pub async fn limits_hold_when_admits_race(o: &Opened) {
    let (other, other_node) = match &o.peer {
        Some(_) => (o.peer("node-b").await, "node-b"),
        None => (o.stores.clone(), NODE),
    };
    let both = [
        (o.stores.conns.clone(), NODE),
        (other.conns.clone(), other_node),
    ];
    let race = |users: Vec<String>| {
        let both = both.clone();
        async move {
            let tasks: Vec<_> = users
                .into_iter()
                .enumerate()
                .map(|(i, u)| {
                    let (c, node) = both[i % 2].clone();
                    tokio::spawn(async move { c.admit(new_conn(&u, None, None), node).await })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.expect("the admission task"));
            }
            out
        }
    };

    // One user, twenty connects: the oldest go, each evicted once, MAX_PER_USER stay.
    let results = race(vec!["racer".to_string(); 20]).await;
    let mut evicted = Vec::new();
    for r in &results {
        let a = r.as_ref().expect("a connect of one user is never refused");
        evicted.extend(a.closing.iter().map(|c| c.id));
        assert!(a
            .closing
            .iter()
            .all(|c| c.disconnect.code == CloseCode::Evicted));
    }
    let kept = o.stores.conns.user_connections("racer").await;
    assert_eq!(kept.len(), MAX_PER_USER);
    assert_eq!(
        evicted.len(),
        20 - MAX_PER_USER,
        "every other one was evicted"
    );
    evicted.sort();
    evicted.dedup();
    assert_eq!(evicted.len(), 20 - MAX_PER_USER, "each once");
    assert_eq!(
        other.conns.user_connections("racer").await.len(),
        MAX_PER_USER
    );

    // Twenty users at once: the slots left are taken, no more.
    let room = MAX_TOTAL - MAX_PER_USER;
    let results = race((0..20).map(|n| format!("crowd{n}")).collect()).await;
    let admitted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(admitted, room, "exactly the slots left");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        match r {
            AdmitError::Refused(d) => assert_eq!(d.code, CloseCode::ServerFull),
            other => panic!("expected 1013, got {other:?}"),
        }
    }
    assert_eq!(o.stores.conns.list(None, None, 100).await.len(), MAX_TOTAL);
}
