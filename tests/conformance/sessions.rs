//! The session store's conformance suite ([`tether::store::SessionStore`]).

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use tether::bus::{BusEvent, Channel, Received, Subscription, Topic};
use tether::model::Source;
use tether::store::{NewSession, SessionError, SessionPatch};

use crate::Opened;

fn new(user: &str, ttl: Option<u64>, data: Value) -> NewSession {
    NewSession {
        user_id: user.into(),
        ttl_seconds: ttl,
        data,
        permissions: vec!["chat".into()],
        device: json!({"os": "test"}),
    }
}

fn patch(data: &Value) -> SessionPatch<'_> {
    SessionPatch {
        data: data.as_object(),
        ttl_seconds: None,
        source: Source::Http,
        connection: None,
    }
}

async fn next_event(sub: &mut Subscription) -> BusEvent {
    match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
        Ok(Some(Received::Event(e))) => e,
        other => panic!("expected a bus event, got {other:?}"),
    }
}

pub async fn creates_reads_and_lists(o: &Opened) {
    let s = &*o.stores.sessions;
    let mut created = crate::subscribe(o, &[Topic::Channel(Channel::SessionCreated)]).await;
    let a = s.create(new("amy", None, json!({"k": 1}))).await.unwrap();
    assert!(
        a.id.len() >= 22,
        "at least 128 random bits, URL-safe: {}",
        a.id
    );
    assert_eq!(a.user_id, "amy");
    let got = s.get(&a.id).await.unwrap().expect("readable");
    assert_eq!(got.data_json, json!({"k": 1}).to_string());
    assert_eq!(got.permissions, vec!["chat".to_string()]);
    match next_event(&mut created).await {
        BusEvent::SessionCreated(e) => {
            assert_eq!(e.session_id, a.id);
            assert_eq!(e.user_id, "amy");
        }
        other => panic!("{other:?}"),
    }
    let b = s.create(new("amy", None, json!({}))).await.unwrap();
    s.create(new("bob", None, json!({}))).await.unwrap();
    let mut ids: Vec<String> = s
        .list_user("amy")
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.id)
        .collect();
    ids.sort();
    let mut want = vec![a.id, b.id];
    want.sort();
    assert_eq!(ids, want);
    assert!(s.get("no-such-session").await.unwrap().is_none());
    assert_eq!(s.count().await, 3);
}

pub async fn merges_updates_and_publishes_them_in_order(o: &Opened) {
    let s = &*o.stores.sessions;
    let a = s
        .create(new(
            "cal",
            None,
            json!({"theme": "dark", "n": {"x": 1, "y": 2}}),
        ))
        .await
        .unwrap();
    let mut updates = crate::subscribe(o, &[Topic::Channel(Channel::SessionUpdates)]).await;
    let p1 = json!({"theme": "light", "n": {"x": null}});
    s.update(&a.id, patch(&p1)).await.unwrap();
    let p2 = json!({"added": true});
    let conn = uuid::Uuid::new_v4();
    let u = s
        .update(
            &a.id,
            SessionPatch {
                data: p2.as_object(),
                ttl_seconds: Some(10),
                source: Source::WebSocket,
                connection: Some(conn),
            },
        )
        .await
        .unwrap();
    let data: Value = serde_json::from_str(&u.data_json).unwrap();
    assert_eq!(
        data,
        json!({"theme": "light", "n": {"y": 2}, "added": true}),
        "RFC 7386 merge"
    );
    for (want, source) in [(p1, Source::Http), (p2, Source::WebSocket)] {
        match next_event(&mut updates).await {
            BusEvent::SessionUpdated(e) => {
                assert_eq!(e.session_id, a.id);
                assert_eq!(
                    e.updates.as_ref(),
                    Some(&want),
                    "the patch as sent, in order"
                );
                assert_eq!(e.source, source);
            }
            other => panic!("{other:?}"),
        }
    }
    match s.update("gone", patch(&json!({}))).await {
        Err(SessionError::Unknown) => {}
        other => panic!("expected Unknown, got {other:?}"),
    }
}

pub async fn deletes_one_and_all_of_a_user(o: &Opened) {
    let s = &*o.stores.sessions;
    let mut deleted = crate::subscribe(o, &[Topic::Channel(Channel::SessionDeleted)]).await;
    let a = s.create(new("dee", None, json!({}))).await.unwrap();
    s.create(new("dee", None, json!({}))).await.unwrap();
    s.create(new("dee", None, json!({}))).await.unwrap();
    let keep = s.create(new("eli", None, json!({}))).await.unwrap();
    s.delete(&a.id).await.unwrap();
    assert!(s.get(&a.id).await.unwrap().is_none());
    assert!(matches!(s.delete(&a.id).await, Err(SessionError::Unknown)));
    assert_eq!(s.delete_user("dee").await.unwrap(), 2);
    assert!(s.list_user("dee").await.unwrap().is_empty());
    assert!(s.get(&keep.id).await.unwrap().is_some());
    for _ in 0..3 {
        assert!(matches!(
            next_event(&mut deleted).await,
            BusEvent::SessionDeleted(_)
        ));
    }
}

pub async fn expired_sessions_are_gone_and_swept_once(o: &Opened) {
    let s = &*o.stores.sessions;
    let mut expired = crate::subscribe(o, &[Topic::Channel(Channel::SessionExpired)]).await;
    let a = s.create(new("fox", Some(1), json!({}))).await.unwrap();
    let keep = s.create(new("fox", None, json!({}))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        s.get(&a.id).await.unwrap().is_none(),
        "an expired one is as good as gone"
    );
    assert_eq!(s.sweep().await.unwrap(), 1);
    assert_eq!(s.sweep().await.unwrap(), 0, "once");
    match next_event(&mut expired).await {
        BusEvent::SessionExpired(e) => assert_eq!(e.session_id, a.id),
        other => panic!("{other:?}"),
    }
    assert!(s.get(&keep.id).await.unwrap().is_some());
}

/// `session_max_bytes` holds on the merged data, `max_sessions_per_user` on live sessions,
/// and a refused write changes nothing and publishes nothing.
pub async fn holds_the_size_and_count_limits_and_pages_a_users_list(o: &Opened) {
    use crate::{SESSIONS_PER_USER, SESSION_MAX_BYTES};
    let s = &*o.stores.sessions;
    let mut updates = o.bus.subscribe(&[Topic::Channel(Channel::SessionUpdates)]);
    let too_big = json!({"k": "x".repeat(SESSION_MAX_BYTES)});
    assert!(matches!(
        s.create(new("gus", None, too_big.clone())).await,
        Err(SessionError::TooLarge { .. })
    ));
    assert!(
        s.list_user("gus").await.unwrap().is_empty(),
        "nothing created"
    );

    let a = s
        .create(new("gus", None, json!({"a": "1234567890"})))
        .await
        .unwrap();
    let half = json!({"b": "y".repeat(SESSION_MAX_BYTES / 2)});
    s.update(&a.id, patch(&half)).await.unwrap();
    next_event(&mut updates).await;
    let more = json!({"c": "z".repeat(SESSION_MAX_BYTES / 2)});
    match s.update(&a.id, patch(&more)).await {
        Err(SessionError::TooLarge { bytes, max }) => {
            assert!(bytes > max, "{bytes} > {max}");
            assert_eq!(max, SESSION_MAX_BYTES);
        }
        other => panic!("past the cap: {other:?}"),
    }
    let kept = s.get(&a.id).await.unwrap().unwrap();
    assert!(
        !kept.data_json.contains("zzz"),
        "nothing merged: {}",
        kept.data_json
    );
    // A patch that removes what it adds fits: the cap is on the result.
    let swap = json!({"b": null, "c": "z".repeat(SESSION_MAX_BYTES / 2)});
    s.update(&a.id, patch(&swap)).await.unwrap();
    match next_event(&mut updates).await {
        BusEvent::SessionUpdated(e) => assert_eq!(e.updates, Some(swap.clone())),
        other => panic!("the refused update was published: {other:?}"),
    }

    let mut ids = vec![a.id.clone()];
    for _ in 1..SESSIONS_PER_USER {
        ids.push(s.create(new("gus", None, json!({}))).await.unwrap().id);
    }
    assert!(matches!(
        s.create(new("gus", None, json!({}))).await,
        Err(SessionError::TooMany {
            max: SESSIONS_PER_USER
        })
    ));
    s.create(new("hal", None, json!({})))
        .await
        .expect("another user's");
    s.delete(&ids.pop().unwrap()).await.unwrap();
    ids.push(s.create(new("gus", None, json!({}))).await.unwrap().id);

    ids.sort();
    let first = s.list_user_page("gus", None, 3).await.unwrap();
    let first: Vec<String> = first.into_iter().map(|s| s.id).collect();
    assert_eq!(first, ids[..3]);
    let rest = s.list_user_page("gus", Some(&first[2]), 3).await.unwrap();
    let rest: Vec<String> = rest.into_iter().map(|s| s.id).collect();
    assert_eq!(rest, ids[3..]);
}
