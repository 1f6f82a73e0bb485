//! Cluster membership and what crosses nodes ([`tether::store::NodeStore`], and the
//! connection and session stores seen from several nodes over one state). Each case needs a
//! backend with peers ([`crate::Opened::peer`]).

use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use tether::model::{EventType, Source};
use tether::protocol::{CloseCode, Fate};
use tether::store::{EventQuery, NewSession, NodeInfo, ResumeRequest, SessionPatch, Target};
use tether::time::{now_ms, parse_rfc3339, rfc3339};

use crate::conns::{connect, data_n, new_conn, send, seqs_of, Sockets};
use crate::{Opened, NODE};

fn info(node: &str, connections: u64) -> NodeInfo {
    NodeInfo {
        node_id: node.into(),
        listen: "127.0.0.1:1".into(),
        started_at: rfc3339(now_ms()),
        last_seen: String::new(),
        connections,
    }
}

fn ids(nodes: Vec<NodeInfo>) -> Vec<String> {
    let mut v: Vec<String> = nodes.into_iter().map(|n| n.node_id).collect();
    v.sort();
    v
}

/// The `detached` events logged for connection `id`.
async fn detached_events(o: &tether::store::Stores, id: &Uuid) -> Vec<Value> {
    o.events
        .query(&EventQuery {
            connection_id: Some(*id),
            event_type: Some(EventType::Detached),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
}

pub async fn leases_list_live_nodes_and_expire_dead_ones(o: &Opened) {
    let a = &o.stores;
    let b = o.peer("node-b").await;
    a.nodes.heartbeat(&info(NODE, 2), 300).await.unwrap();
    b.nodes.heartbeat(&info("node-b", 0), 60_000).await.unwrap();
    let live = b.nodes.nodes().await.unwrap();
    assert_eq!(
        ids(live.clone()),
        vec![NODE, "node-b"],
        "every node sees every node"
    );
    let mine = live.iter().find(|n| n.node_id == NODE).unwrap();
    assert_eq!(mine.connections, 2);
    assert_eq!(mine.listen, "127.0.0.1:1");
    assert!(
        parse_rfc3339(&mine.last_seen).is_some(),
        "{}",
        mine.last_seen
    );
    assert!(b.nodes.expired().await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        ids(b.nodes.nodes().await.unwrap()),
        vec!["node-b"],
        "a lapsed lease"
    );
    assert_eq!(b.nodes.expired().await.unwrap(), vec![NODE.to_string()]);
    // A node that renews its lease is alive again.
    a.nodes.heartbeat(&info(NODE, 2), 60_000).await.unwrap();
    assert_eq!(ids(a.nodes.nodes().await.unwrap()), vec![NODE, "node-b"]);
    assert!(a.nodes.expired().await.unwrap().is_empty());
}

pub async fn a_dead_nodes_connections_are_detached_once(o: &Opened) {
    let a = &o.stores;
    let x = connect(&*a.conns, "oda", None).await;
    let y = connect(&*a.conns, "oda", None).await;
    let z = connect(&*a.conns, "pia", None).await;
    let sockets = Sockets::new(o).await;
    send(&*a.conns, Target::Connection(&x.id), 1, &sockets).await;
    a.conns.finish(&z.id, Fate::Detach, None, None).await;
    a.nodes.heartbeat(&info(NODE, 3), 200).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (b, c) = (o.peer("node-b").await, o.peer("node-c").await);
    assert_eq!(b.nodes.expired().await.unwrap(), vec![NODE.to_string()]);
    let (rb, rc) = tokio::join!(
        b.nodes.detach_node(NODE, "node-b"),
        c.nodes.detach_node(NODE, "node-c")
    );
    let mut results = vec![rb.unwrap(), rc.unwrap()];
    results.sort();
    assert_eq!(
        results,
        vec![None, Some(2)],
        "one claimer wins and detaches the two the dead node held"
    );
    for id in [&x.id, &y.id, &z.id] {
        let info = b.conns.info(id).await.expect("still resumable");
        assert_eq!(info["state"], "detached");
        assert_eq!(info["node"], Value::Null);
    }
    assert!(b.nodes.expired().await.unwrap().is_empty(), "cleaned up");
    assert!(!ids(b.nodes.nodes().await.unwrap()).contains(&NODE.to_string()));

    // One `detached` event per connection, however many nodes noticed.
    for s in [a, &b, &c] {
        s.admin.shutdown().await.unwrap();
    }
    for id in [&x.id, &y.id] {
        let events = detached_events(&b, id).await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["details"]["reason"], "node lost");
    }
    assert_eq!(
        detached_events(&b, &z.id).await.len(),
        1,
        "z was detached before"
    );

    // Resumed on another node with what it was owed.
    let req = ResumeRequest {
        connection_id: x.id.to_string(),
        token: x.resume_token.clone(),
        last_seq: Some(0),
    };
    let r = b
        .conns
        .admit(new_conn("oda", None, Some(req)), "node-b")
        .await
        .unwrap();
    assert!(r.resumed);
    assert!(
        r.closing.is_empty(),
        "a Detached connection has no socket to close"
    );
    let act = b
        .conns
        .activate(&r.id, r.replay_after)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seqs_of(&act.replay), vec![1]);
    assert_eq!(b.conns.info(&r.id).await.unwrap()["node"], "node-b");
}

pub async fn a_node_that_leaves_detaches_its_connections_at_once(o: &Opened) {
    let a = &o.stores;
    a.nodes.heartbeat(&info(NODE, 2), 60_000).await.unwrap();
    let x = connect(&*a.conns, "ray", None).await;
    let y = connect(&*a.conns, "ray", None).await;
    assert_eq!(a.nodes.leave(NODE).await.unwrap(), 2);
    for id in [&x.id, &y.id] {
        assert_eq!(a.conns.info(id).await.unwrap()["state"], "detached");
    }
    assert!(
        a.nodes.nodes().await.unwrap().is_empty(),
        "its lease is gone"
    );
    assert!(
        a.nodes.expired().await.unwrap().is_empty(),
        "nothing left to clean up"
    );
    assert_eq!(a.nodes.leave(NODE).await.unwrap(), 0);
    a.admin.shutdown().await.unwrap();
    let events = detached_events(a, &x.id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["details"]["reason"], "node stopped");
}

pub async fn a_resume_on_another_node_gets_what_it_missed(o: &Opened) {
    let a = &o.stores;
    let b = o.peer("node-b").await;
    let old = connect(&*a.conns, "sal", None).await;
    let on_a = Sockets::new(o).await;
    for n in 1..=2 {
        send(&*a.conns, Target::Connection(&old.id), n, &on_a).await;
    }
    assert_eq!(on_a.seen().await.len(), 2, "A's socket had both");
    // Its socket on A is half dead (still Active there) when the client comes back on B.
    let req = ResumeRequest {
        connection_id: old.id.to_string(),
        token: old.resume_token.clone(),
        last_seq: Some(1),
    };
    let r = b
        .conns
        .admit(new_conn("sal", None, Some(req)), "node-b")
        .await
        .unwrap();
    assert!(r.resumed);
    assert_eq!(r.previous, Some(old.id));
    assert_eq!(r.closing.len(), 1);
    assert_eq!(r.closing[0].id, old.id);
    assert_eq!(
        r.closing[0].node.as_deref(),
        Some(NODE),
        "closed where it is"
    );
    assert_eq!(r.closing[0].disconnect.code, CloseCode::Replaced);
    // A message sent from A between admission and activation is not lost.
    send(&*a.conns, Target::Connection(&r.id), 3, &on_a).await;
    let act = b
        .conns
        .activate(&r.id, r.replay_after)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seqs_of(&act.replay), vec![2, 3]);
    let data: Vec<u64> = act.replay.iter().map(|(_, f)| data_n(f)).collect();
    assert_eq!(data, vec![2, 3]);
    let info = a.conns.info(&r.id).await.unwrap();
    assert_eq!(info["node"], "node-b");
    assert_eq!(info["state"], "active");
    assert_eq!(
        a.nodes.leave(NODE).await.unwrap(),
        0,
        "A holds nothing any more"
    );
    // And B's socket gets the next one.
    let on_b = Sockets::of(o, "node-b").await;
    let d = send(&*a.conns, Target::User("sal"), 4, &on_b).await;
    assert_eq!((d.stored, d.delivered, d.seq), (1, 1, 4));
    let seen = on_b.seen().await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].1[0].id, r.id);
    assert_eq!(seen[0].1[0].seq, 4);
    assert!(on_a.seen().await.is_empty(), "nothing for A");
}

pub async fn deliveries_and_session_changes_reach_every_node_that_holds_a_socket(o: &Opened) {
    let b = o.peer("node-b").await;
    let on_a = Sockets::of(o, NODE).await;
    let on_b = Sockets::of(o, "node-b").await;
    let s = b
        .sessions
        .create(NewSession {
            user_id: "quin".into(),
            ttl_seconds: None,
            data: json!({}),
            permissions: vec![],
            device: json!(null),
        })
        .await
        .unwrap();
    let p = connect(&*o.stores.conns, "quin", Some(&s.id)).await;
    let q = connect(&*b.conns, "quin", Some(&s.id)).await;
    assert_eq!(b.conns.info(&q.id).await.unwrap()["node"], "node-b");

    let d = send(&*b.conns, Target::User("quin"), 1, &on_b).await;
    assert_eq!((d.stored, d.delivered), (2, 2));
    let seen = on_a.seen().await;
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].1,
        vec![tether::model::Assignment { id: p.id, seq: 1 }]
    );
    let seen = on_b.seen().await;
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].1,
        vec![tether::model::Assignment { id: q.id, seq: 1 }]
    );

    // An update from p (on A) reaches q on B, and not p.
    let updates = json!({"k": 1});
    o.stores
        .sessions
        .update(
            &s.id,
            SessionPatch {
                data: updates.as_object(),
                ttl_seconds: None,
                source: Source::WebSocket,
                connection: Some(p.id),
            },
        )
        .await
        .unwrap();
    let seen = on_b.seen().await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].1,
        vec![tether::model::Assignment { id: q.id, seq: 2 }]
    );
    let frame: Value = serde_json::from_str(&seen[0].2).unwrap();
    assert_eq!(frame["type"], "session.updated");
    assert_eq!(frame["updates"], updates);
    assert_eq!(frame["connectionId"], p.id.to_string());
    assert!(on_a.seen().await.is_empty(), "not to its origin");

    // Deleting the session closes both sockets, wherever they are, and removes both.
    b.sessions.delete(&s.id).await.unwrap();
    assert_eq!(on_a.closes().await, vec![(p.id, CloseCode::SessionEnded)]);
    assert_eq!(on_b.closes().await, vec![(q.id, CloseCode::SessionEnded)]);
    assert!(o.stores.conns.info(&p.id).await.is_none());
    assert!(o.stores.conns.info(&q.id).await.is_none());
    assert!(o.stores.conns.session_connections(&s.id).await.is_empty());
}

/// Updates of one session from two nodes at once: each is merged into what the others wrote,
/// none is lost, and each is published once.
pub async fn concurrent_session_updates_from_two_nodes_all_land(o: &Opened) {
    let b = o.peer("node-b").await;
    let mut published = crate::subscribe(
        o,
        &[tether::bus::Topic::Channel(
            tether::bus::Channel::SessionUpdates,
        )],
    )
    .await;
    let s = o
        .stores
        .sessions
        .create(NewSession {
            user_id: "rae".into(),
            ttl_seconds: None,
            data: json!({"start": true}),
            permissions: vec![],
            device: json!(null),
        })
        .await
        .unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|n| {
            let store = if n % 2 == 0 {
                o.stores.sessions.clone()
            } else {
                b.sessions.clone()
            };
            let id = s.id.clone();
            tokio::spawn(async move {
                let patch = json!({ format!("k{n}"): n });
                store
                    .update(
                        &id,
                        SessionPatch {
                            data: patch.as_object(),
                            ttl_seconds: None,
                            source: Source::Http,
                            connection: None,
                        },
                    )
                    .await
                    .map(|_| ())
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().expect("every update lands");
    }
    let data: Value =
        serde_json::from_str(&b.sessions.get(&s.id).await.unwrap().unwrap().data_json).unwrap();
    let data = data.as_object().unwrap();
    assert_eq!(data.len(), 21, "{data:?}");
    for n in 0..20 {
        assert_eq!(data[&format!("k{n}")], n);
    }
    let mut seen = 0;
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(500), {
        use futures_util::StreamExt;
        published.next()
    })
    .await
    {
        if matches!(
            r,
            tether::bus::Received::Event(tether::bus::BusEvent::SessionUpdated(_))
        ) {
            seen += 1;
        }
    }
    assert_eq!(seen, 20, "one event per update");
}

/// Every node sweeps; each expiry happens once: one removal, one event.
pub async fn expiry_happens_once_however_many_nodes_sweep(o: &Opened) {
    let b = o.peer("node-b").await;
    let mut expired = crate::subscribe(
        o,
        &[tether::bus::Topic::Channel(
            tether::bus::Channel::SessionExpired,
        )],
    )
    .await;
    let s = o
        .stores
        .sessions
        .create(NewSession {
            user_id: "sam".into(),
            ttl_seconds: Some(1),
            data: json!({}),
            permissions: vec![],
            device: json!(null),
        })
        .await
        .unwrap();
    let gone = connect(&*o.stores.conns, "sam", None).await;
    o.stores
        .conns
        .finish(&gone.id, Fate::Detach, None, None)
        .await;
    tokio::time::sleep(Duration::from_millis(crate::GRACE_SECONDS * 1000 + 150)).await;
    let (sa, sb) = tokio::join!(o.stores.sessions.sweep(), b.sessions.sweep());
    assert_eq!(sa.unwrap() + sb.unwrap(), 1, "one session expired, once");
    let (ca, cb) = tokio::join!(o.stores.conns.sweep(), b.conns.sweep());
    assert_eq!(
        ca.unwrap().removed + cb.unwrap().removed,
        1,
        "one connection, once"
    );
    assert!(o.stores.conns.info(&gone.id).await.is_none());
    let mut events = 0;
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(500), {
        use futures_util::StreamExt;
        expired.next()
    })
    .await
    {
        if let tether::bus::Received::Event(tether::bus::BusEvent::SessionExpired(e)) = r {
            assert_eq!(e.session_id, s.id);
            events += 1;
        }
    }
    assert_eq!(events, 1, "session:expired published once");
    for st in [&o.stores, &b] {
        st.admin.shutdown().await.unwrap();
    }
    let logged = b
        .events
        .query(&EventQuery {
            connection_id: Some(gone.id),
            event_type: Some(EventType::Expired),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(logged.len(), 1, "{logged:?}");
}
