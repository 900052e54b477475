//! Unit tests of the client's one-shot and live search, driven with hand-built and recorded
//! server frames.

use serde_json::{Value, json};
use tokio::sync::oneshot::error::TryRecvError;

use super::*;
use crate::protocol::codec::{Frame, decode};
use crate::protocol::{SearchRespPayload, SearchUpdatePayload};

const WIRE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/wire");

fn manager() -> SearchManager {
    SearchManager::new(SearchConfig::default())
}

fn hit(key: &str, score: f64) -> SearchHit {
    SearchHit {
        key: key.into(),
        value: json!({"title": key}),
        score,
        matched_terms: vec!["rust".into()],
    }
}

fn resp(id: &str, hits: Vec<SearchHit>, error: Option<&str>) -> Message {
    SearchResp {
        payload: SearchRespPayload {
            request_id: id.into(),
            total_count: hits.len() as u64,
            results: hits,
            error: error.map(str::to_owned),
            next_cursor: None,
        },
    }
    .into()
}

fn legacy_update(id: &str, hit: SearchHit, change: ChangeType) -> Message {
    let mut update = SearchUpdate::new(id, hit, change);
    update.payload.change_type = None;
    update.into()
}

fn request_id(message: &Message) -> String {
    match message {
        Message::Search(search) => search.payload.request_id.clone(),
        other => panic!("expected SEARCH, got {other:?}"),
    }
}

fn keys(snapshot: &SearchSnapshot) -> Vec<&str> {
    snapshot.hits.iter().map(|h| h.key.as_str()).collect()
}

#[test]
fn one_shot_search_is_refused_offline() {
    let mut m = manager();
    assert_eq!(
        m.search("docs", "rust", SearchOptions::default(), false, 0)
            .unwrap_err(),
        SearchError::Offline
    );
    assert_eq!(m.pending_count(), 0);
}

#[test]
fn one_shot_search_sends_search_and_resolves_on_its_response() {
    let mut m = manager();
    let options = SearchOptions {
        limit: Some(5),
        ..SearchOptions::default()
    };
    let (message, mut rx) = m.search("docs", "rust", options.clone(), true, 0).unwrap();
    assert_eq!(
        message,
        Message::Search(Search {
            payload: SearchPayload {
                request_id: "s1".into(),
                map_name: "docs".into(),
                query: "rust".into(),
                options: Some(options),
            }
        })
    );
    assert!(!m.on_message(&resp("s99", vec![], None)), "unknown id");
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    assert!(m.on_message(&resp("s1", vec![hit("a", 2.0)], None)));
    assert_eq!(rx.try_recv(), Ok(Ok(vec![hit("a", 2.0)])));
    assert_eq!(m.pending_count(), 0);
    assert_eq!(m.next_deadline(), None);
}

#[test]
fn server_errors_reject_one_shot_searches() {
    let mut m = manager();
    let (message, mut rx) = m
        .search("docs", "rust", SearchOptions::default(), true, 0)
        .unwrap();
    let error = "Full-text search not enabled for map: docs";
    m.on_message(&resp(&request_id(&message), vec![], Some(error)));
    assert_eq!(rx.try_recv(), Ok(Err(SearchError::Server(error.into()))));
}

#[test]
fn disconnect_fails_every_pending_search() {
    let mut m = manager();
    let (_, mut a) = m
        .search("d", "x", SearchOptions::default(), true, 0)
        .unwrap();
    let (_, mut b) = m
        .search("d", "y", SearchOptions::default(), true, 0)
        .unwrap();
    m.disconnected();
    assert_eq!(a.try_recv(), Ok(Err(SearchError::Disconnected)));
    assert_eq!(b.try_recv(), Ok(Err(SearchError::Disconnected)));
    assert_eq!(m.pending_count(), 0);
}

#[test]
fn searches_time_out_at_their_deadline_and_leave_nothing_behind() {
    let mut m = manager();
    let (_, mut early) = m
        .search("d", "x", SearchOptions::default(), true, 1_000)
        .unwrap();
    let (_, mut late) = m
        .search("d", "y", SearchOptions::default(), true, 5_000)
        .unwrap();
    let (_, abandoned) = m
        .search("d", "z", SearchOptions::default(), true, 5_000)
        .unwrap();
    drop(abandoned);
    assert_eq!(m.next_deadline(), Some(31_000));
    m.expire(30_999);
    assert_eq!(early.try_recv(), Err(TryRecvError::Empty));
    assert_eq!(m.pending_count(), 2, "the abandoned request is forgotten");
    m.expire(31_000);
    assert_eq!(
        early.try_recv(),
        Ok(Err(SearchError::Timeout { timeout_ms: 30_000 }))
    );
    assert_eq!(late.try_recv(), Err(TryRecvError::Empty));
    m.expire(35_000);
    assert!(matches!(
        late.try_recv(),
        Ok(Err(SearchError::Timeout { .. }))
    ));
    assert_eq!(m.pending_count(), 0);
}

#[test]
fn pending_searches_are_bounded() {
    let mut m = SearchManager::new(SearchConfig {
        max_pending: 2,
        ..SearchConfig::default()
    });
    let (_, _a) = m
        .search("d", "1", SearchOptions::default(), true, 0)
        .unwrap();
    let (_, b) = m
        .search("d", "2", SearchOptions::default(), true, 0)
        .unwrap();
    assert_eq!(
        m.search("d", "3", SearchOptions::default(), true, 0)
            .unwrap_err(),
        SearchError::TooManyPending { max: 2 }
    );
    drop(b);
    assert!(
        m.search("d", "3", SearchOptions::default(), true, 0)
            .is_ok()
    );
}

#[test]
fn a_live_search_made_offline_subscribes_on_authentication() {
    let mut m = manager();
    let offline = m
        .subscribe("docs", "rust", SearchOptions::default(), false)
        .unwrap();
    assert!(offline.subscribe.is_none());
    let online = m
        .subscribe("docs", "tokio", SearchOptions::default(), true)
        .unwrap();
    assert_eq!(
        online.subscribe,
        Some(Message::SearchSub(SearchSub {
            payload: SearchSubPayload {
                subscription_id: online.id.clone(),
                map_name: "docs".into(),
                query: "tokio".into(),
                options: Some(SearchOptions::default()),
            }
        }))
    );
    // After every authentication, both go out again, in creation order.
    for _ in 0..2 {
        let ids: Vec<String> = m
            .resubscribe()
            .into_iter()
            .map(|msg| match msg {
                Message::SearchSub(sub) => sub.payload.subscription_id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ids, [offline.id.clone(), online.id.clone()]);
    }
}

#[test]
fn live_results_follow_snapshots_and_updates_of_both_generations() {
    let mut m = manager();
    let live = m
        .subscribe("docs", "rust", SearchOptions::default(), true)
        .unwrap();
    let id = live.id.as_str();
    assert!(!live.results.borrow().from_server);

    m.on_message(&resp(id, vec![hit("b", 1.0), hit("a", 2.0)], None));
    assert_eq!(keys(&live.results.borrow()), ["a", "b"]);
    assert!(live.results.borrow().from_server);

    assert!(m.on_message(&SearchUpdate::new(id, hit("c", 3.0), ChangeType::Enter).into()));
    assert_eq!(keys(&live.results.borrow()), ["c", "a", "b"]);
    m.on_message(&legacy_update(id, hit("c", 0.5), ChangeType::Update));
    assert_eq!(keys(&live.results.borrow()), ["a", "b", "c"]);
    assert_eq!(live.results.borrow().hits[2].score, 0.5);
    m.on_message(&legacy_update(id, hit("a", 0.0), ChangeType::Leave));
    assert_eq!(keys(&live.results.borrow()), ["b", "c"]);

    // An error keeps the last good hits; an empty answer clears them.
    m.on_message(&resp(id, vec![], Some("Access denied for map: docs")));
    assert_eq!(keys(&live.results.borrow()), ["b", "c"]);
    assert_eq!(
        live.results.borrow().error,
        Some(SearchError::Server("Access denied for map: docs".into()))
    );
    m.on_message(&resp(id, vec![], None));
    assert!(live.results.borrow().hits.is_empty());
    assert_eq!(live.results.borrow().error, None);

    assert!(!m.on_message(&SearchUpdate::new("s99", hit("x", 1.0), ChangeType::Enter).into()));
}

#[test]
fn recorded_2026_08_search_frames_are_applied() {
    let mut m = manager();
    let (_, mut once) = m
        .search(
            "wire-articles",
            "websocket server",
            SearchOptions::default(),
            true,
            0,
        )
        .unwrap();
    let live = m
        .subscribe("wire-articles", "websocket", SearchOptions::default(), true)
        .unwrap();
    let path = format!("{WIRE}/client-2026-08/g-search.jsonl");
    let mut applied = 0;
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let record: Value = serde_json::from_str(line).unwrap();
        if record["dir"] != "s2c" || !record["type"].as_str().unwrap().starts_with("SEARCH_") {
            continue;
        }
        let hex = record["hex"].as_str().unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        // The recording's ids are the TypeScript client's UUIDs: the first response answers the
        // one-shot search, the rest belong to the subscription.
        let message = match decode(Frame::Binary(&bytes)).unwrap() {
            Message::SearchResp(mut r) => {
                r.payload.request_id = if applied == 0 { "s1" } else { &live.id }.into();
                Message::SearchResp(r)
            }
            Message::SearchUpdate(mut u) => {
                u.payload.subscription_id = live.id.clone();
                Message::SearchUpdate(u)
            }
            other => panic!("unexpected {other:?}"),
        };
        assert!(m.on_message(&message));
        applied += 1;
    }
    assert_eq!(applied, 3);
    let hits = once.try_recv().unwrap().unwrap();
    assert_eq!(
        hits.iter().map(|h| h.key.as_str()).collect::<Vec<_>>(),
        ["a1", "a2"]
    );
    assert_eq!(hits[0].matched_terms, ["websocket", "server"]);
    // a1 and a2 tie on score, so they are ordered by key; a4 entered with a higher score.
    assert_eq!(keys(&live.results.borrow()), ["a4", "a1", "a2"]);
}

#[test]
fn live_searches_are_bounded_and_unsubscribed_only_when_online() {
    let mut m = SearchManager::new(SearchConfig {
        max_live_searches: 2,
        ..SearchConfig::default()
    });
    let a = m
        .subscribe("d", "a", SearchOptions::default(), true)
        .unwrap();
    let b = m
        .subscribe("d", "b", SearchOptions::default(), true)
        .unwrap();
    assert_eq!(
        m.subscribe("d", "c", SearchOptions::default(), true)
            .unwrap_err(),
        SearchError::TooManyLive { max: 2 }
    );
    assert_eq!(m.unsubscribe(&a.id, false), None);
    assert_eq!(m.unsubscribe(&a.id, true), None, "already gone");
    let b_id = b.id.clone();
    drop(b);
    assert_eq!(
        m.gc_unused(true),
        vec![Message::SearchUnsub(SearchUnsub {
            payload: SubscriptionIdPayload {
                subscription_id: b_id
            }
        })]
    );
    assert_eq!(m.live_count(), 0);
}

#[test]
fn updates_carrying_both_change_fields_prefer_the_2026_08_one() {
    let mut m = manager();
    let live = m
        .subscribe("d", "q", SearchOptions::default(), true)
        .unwrap();
    m.on_message(&resp(&live.id, vec![hit("a", 1.0)], None));
    let update = SearchUpdate {
        payload: SearchUpdatePayload {
            subscription_id: live.id.clone(),
            key: "a".into(),
            value: Value::Null,
            score: 0.0,
            matched_terms: vec![],
            legacy_type: Some(ChangeType::Update),
            change_type: Some(ChangeType::Leave),
        },
    };
    m.on_message(&update.into());
    assert!(live.results.borrow().hits.is_empty());
}
