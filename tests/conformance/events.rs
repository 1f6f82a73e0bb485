//! The event log's conformance suite ([`tether::store::EventStore`]).

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use uuid::Uuid;

use tether::bus::{BusEvent, Channel, Received, Topic};
use tether::model::EventType;
use tether::store::EventQuery;
use tether::time::now_ms;

use crate::Opened;

pub async fn logs_filters_and_bounds_the_log(o: &Opened) {
    let e = &*o.stores.events;
    let mut published = crate::subscribe(o, &[Topic::Channel(Channel::ConnectionEvents)]).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    e.log(a, "amy", EventType::Connected, json!({"n": 0}));
    match tokio::time::timeout(Duration::from_secs(5), published.next()).await {
        Ok(Some(Received::Event(BusEvent::Connection(v)))) => {
            assert_eq!(v["eventType"], "connected");
            assert_eq!(v["connectionId"], a.to_string());
            assert_eq!(v["details"]["n"], 0);
        }
        other => panic!("expected the event on connection:events, got {other:?}"),
    }
    let mid = now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    for n in 1..60 {
        let (id, user) = if n % 2 == 0 { (a, "amy") } else { (b, "bob") };
        e.log(id, user, EventType::Detached, json!({ "n": n }));
    }
    e.log(b, "bob", EventType::Expired, json!({"n": 60}));
    // Bounded: 50 kept, the newest.
    assert_eq!(e.count().await, 50);
    let all = e
        .query(&EventQuery {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 50);
    let seqs: Vec<u64> = all.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "oldest first");
    assert_eq!(all.last().unwrap()["details"]["n"], 60, "newest last");
    let amy = e
        .query(&EventQuery {
            user_id: Some("amy".into()),
            limit: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(amy.len(), 5, "the newest 5");
    assert!(amy.iter().all(|v| v["userId"] == "amy"));
    assert_eq!(amy.last().unwrap()["details"]["n"], 58);
    let expired = e
        .query(&EventQuery {
            event_type: Some(EventType::Expired),
            connection_id: Some(b),
            since: Some(mid),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0]["eventType"], "expired");
}
