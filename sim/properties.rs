//! The properties a run must keep, as pure functions over its history and final states. Each
//! returns the violations it found (empty when the property holds).

use std::collections::{BTreeMap, BTreeSet};

use topgun::protocol::WriteConcern;

use crate::client::MapState;
use crate::harness::EPOCH_MS;
use crate::history::{Change, Event, History, Outcome};
use crate::scenario::Finals;

/// A property that did not hold, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub property: &'static str,
    pub detail: String,
}

fn violation(property: &'static str, detail: String) -> Violation {
    Violation { property, detail }
}

/// Property 1: Convergence: every client holds the server's state of every map (see
/// [`MapState::converged_to`] for tombstones), with equal Merkle roots, and the root the
/// server advertised in the final sync is the one computed from its store.
pub fn convergence(finals: &Finals) -> Vec<Violation> {
    let mut found = Vec::new();
    for (client, maps) in &finals.clients {
        for (map, mine) in maps {
            let Some(server) = finals.server.get(map) else {
                found.push(violation("convergence", format!("server has no {map}")));
                continue;
            };
            if !mine.state.converged_to(&server.state) {
                found.push(violation(
                    "convergence",
                    format!(
                        "{client} holds a different {map} than the server: {}",
                        mine.state.differences(&server.state)
                    ),
                ));
            }
            if mine.root != server.root {
                found.push(violation(
                    "convergence",
                    format!(
                        "{client}'s {map} root {:08x} != server {:08x}",
                        mine.root, server.root
                    ),
                ));
            }
            // A client that cannot observe the advertised root (the real client) reports
            // `None` with `synced`; its state and own root are still compared above.
            let advertised_ok = match mine.server_root {
                Some(root) => root == server.root,
                None => mine.synced,
            };
            if !advertised_ok {
                found.push(violation(
                    "convergence",
                    format!(
                        "{client}'s final sync of {map} saw server root {:?}, store has {:08x}",
                        mine.server_root, server.root
                    ),
                ));
            }
        }
    }
    found
}

/// Whether an acknowledged op must survive: `PERSISTED` acks must, unless a crash that lost
/// the store may have come after the server committed them; `APPLIED` acks must unless any
/// crash may have. The commit happened at some unknown time between the write and the ack's
/// arrival (an ack can be in flight when the server dies), so only crashes before the write
/// are surely earlier.
fn must_survive(level: WriteConcern, written_ms: u64, crashes: &[(u64, bool)]) -> bool {
    let later = |kept_ok: bool| {
        crashes
            .iter()
            .any(|(at, kept)| *at >= written_ms && (!kept || !kept_ok))
    };
    match level {
        WriteConcern::Persisted | WriteConcern::Replicated => !later(true),
        WriteConcern::Applied | WriteConcern::Memory => !later(false),
        WriteConcern::FireAndForget => false,
    }
}

/// Property 2: No lost acknowledged writes: each surviving acked op is in the server's final state
/// unless a later write superseded it (a newer LWW record, or its OR tag removed).
pub fn no_lost_acked_writes(history: &History, finals: &Finals) -> Vec<Violation> {
    let crashes = history.crashes();
    let mut found = Vec::new();
    for (write, outcome, answered) in history.writes() {
        let (Some(Outcome::Acked(level)), Some(acked_ms)) = (outcome, answered) else {
            continue;
        };
        let Event::Write {
            client,
            op_id,
            at_ms,
            map,
            key,
            change,
            ..
        } = write
        else {
            continue;
        };
        if !must_survive(level, *at_ms, &crashes) {
            continue;
        }
        let state = finals.server.get(map).map(|m| &m.state);
        let kept = match (change, state) {
            (Change::Lww(record), Some(MapState::Lww(records))) => records
                .get(key)
                .is_some_and(|now| now.timestamp > record.timestamp || now == record),
            (
                Change::OrAdd(record),
                Some(MapState::Or {
                    records,
                    tombstones,
                }),
            ) => {
                tombstones.contains(&record.tag)
                    || records
                        .get(key)
                        .is_some_and(|rs| rs.iter().any(|r| r == record))
            }
            (Change::OrRemove { tag }, Some(MapState::Or { records, .. })) => {
                records.values().flatten().all(|r| &r.tag != tag)
            }
            _ => false,
        };
        if !kept {
            found.push(violation(
                "no lost acknowledged writes",
                format!(
                    "{client} #{op_id} on {map}/{key} acked {level:?} at {acked_ms} ms is missing"
                ),
            ));
        }
    }
    found
}

/// Property 3: Idempotence: replays after reconnects changed nothing. Every final LWW record is a
/// record some client sent (a replay re-stamped or merged twice would show a record nobody
/// wrote), every final OR record was sent by some `OR_ADD`, and no OR tag appears twice.
pub fn idempotence(history: &History, finals: &Finals) -> Vec<Violation> {
    let mut lww_sent: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut or_sent: BTreeSet<(String, String, String)> = BTreeSet::new();
    for event in &history.events {
        if let Event::Write {
            map, key, change, ..
        } = event
        {
            match change {
                Change::Lww(r) => {
                    lww_sent.insert((map.clone(), key.clone(), format!("{r:?}")));
                }
                Change::OrAdd(r) => {
                    or_sent.insert((map.clone(), key.clone(), format!("{r:?}")));
                }
                Change::OrRemove { .. } => {}
            }
        }
    }
    let mut found = Vec::new();
    for (map, server) in &finals.server {
        match &server.state {
            MapState::Lww(records) => {
                for (key, record) in records {
                    if !lww_sent.contains(&(map.clone(), key.clone(), format!("{record:?}"))) {
                        found.push(violation(
                            "idempotence",
                            format!("{map}/{key} holds a record no client sent: {record:?}"),
                        ));
                    }
                }
            }
            MapState::Or { records, .. } => {
                let mut tags = BTreeSet::new();
                for (key, list) in records {
                    for record in list {
                        if !tags.insert(record.tag.clone()) {
                            found.push(violation(
                                "idempotence",
                                format!("{map}/{key} holds tag {} twice", record.tag),
                            ));
                        }
                        if !or_sent.contains(&(map.clone(), key.clone(), format!("{record:?}"))) {
                            found.push(violation(
                                "idempotence",
                                format!(
                                    "{map}/{key} holds an OR record no client sent: {record:?}"
                                ),
                            ));
                        }
                    }
                }
            }
        }
    }
    found
}

/// Property 4: Lock safety: no two clients believed they held the same lock at overlapping times, and
/// fencing tokens strictly increase, per lock, in the order the holds began.
pub fn lock_safety(history: &History) -> Vec<Violation> {
    let mut holds: BTreeMap<&str, Vec<(u64, u64, u64, &str)>> = BTreeMap::new();
    for event in &history.events {
        if let Event::LockHeld {
            client,
            lock,
            token,
            from_ms,
            until_ms,
        } = event
        {
            holds
                .entry(lock)
                .or_default()
                .push((*from_ms, *until_ms, *token, client));
        }
    }
    let mut found = Vec::new();
    for (lock, mut list) in holds {
        list.sort();
        for pair in list.windows(2) {
            let (a_from, a_until, a_token, a) = pair[0];
            let (b_from, _, b_token, b) = pair[1];
            if b_from < a_until {
                found.push(violation(
                    "lock safety",
                    format!("{a} ({a_from}..{a_until}) and {b} (from {b_from}) both held {lock}"),
                ));
            }
            if b_token <= a_token {
                found.push(violation(
                    "lock safety",
                    format!("{lock}: token {b_token} of {b} after {a_token} of {a}"),
                ));
            }
        }
    }
    found
}

/// Property 5: Clock safety under HLC strict mode: no acknowledged op and no stored record carries a
/// timestamp more than `max_drift_ms` ahead of the server's physical clock (the server clock
/// is simulated time plus `server_skew_ms`; `end_ms` is when the run ended).
pub fn clock_safety_strict(
    history: &History,
    finals: &Finals,
    server_skew_ms: i64,
    max_drift_ms: u64,
    end_ms: u64,
) -> Vec<Violation> {
    let server_now = |at_ms: u64| (EPOCH_MS + at_ms).saturating_add_signed(server_skew_ms);
    let mut found = Vec::new();
    for (write, outcome, answered) in history.writes() {
        let (Some(Outcome::Acked(_)), Some(at_ms)) = (outcome, answered) else {
            continue;
        };
        let Event::Write {
            client,
            op_id,
            change,
            ..
        } = write
        else {
            continue;
        };
        if let Some(millis) = change_millis(change) {
            if millis > server_now(at_ms) + max_drift_ms {
                found.push(violation(
                    "clock safety",
                    format!(
                        "{client} #{op_id} stamped {millis} was accepted at server time {}",
                        server_now(at_ms)
                    ),
                ));
            }
        }
    }
    let limit = server_now(end_ms) + max_drift_ms;
    for (map, server) in &finals.server {
        let stamps: Vec<u64> = match &server.state {
            MapState::Lww(records) => records.values().map(|r| r.timestamp.millis).collect(),
            MapState::Or { records, .. } => records
                .values()
                .flatten()
                .map(|r| r.timestamp.millis)
                .collect(),
        };
        if let Some(max) = stamps.into_iter().filter(|m| *m > limit).max() {
            found.push(violation(
                "clock safety",
                format!("{map} stores a timestamp {max} beyond {limit}"),
            ));
        }
    }
    found
}

fn change_millis(change: &Change) -> Option<u64> {
    match change {
        Change::Lww(r) => Some(r.timestamp.millis),
        Change::OrAdd(r) => Some(r.timestamp.millis),
        Change::OrRemove { tag } => tag.parse::<topgun::hlc::Timestamp>().ok().map(|t| t.millis),
    }
}

/// Conflicts a skewed writer won against *later* writes (in simulated time) of others: LWW
/// keys whose final record is `skewed`'s although another client's write to that key was
/// acknowledged after it. With strict mode off this is how clock skew corrupts outcomes.
pub fn skewed_wins(history: &History, finals: &Finals, skewed: &str) -> usize {
    let mut wins = 0;
    for (map, server) in &finals.server {
        let MapState::Lww(records) = &server.state else {
            continue;
        };
        for (key, record) in records {
            let written_at = |who: &dyn Fn(&str) -> bool| -> Vec<u64> {
                history
                    .writes()
                    .into_iter()
                    .filter_map(|(w, outcome, _)| match w {
                        Event::Write {
                            client,
                            at_ms,
                            map: m,
                            key: k,
                            change: Change::Lww(r),
                            ..
                        } if m == map
                            && k == key
                            && who(client)
                            && matches!(outcome, Some(Outcome::Acked(_)))
                            && (client != skewed || r == record) =>
                        {
                            Some(*at_ms)
                        }
                        _ => None,
                    })
                    .collect()
            };
            let winner = written_at(&|c| c == skewed);
            let others = written_at(&|c| c != skewed);
            if let Some(won_at) = winner.first() {
                if others.iter().any(|at| at > won_at) {
                    wins += 1;
                }
            }
        }
    }
    wins
}

/// Ops the server rejected for `client`, by code.
pub fn rejections(history: &History, client: &str) -> BTreeMap<u32, usize> {
    let mut counts = BTreeMap::new();
    for event in &history.events {
        if let Event::Answer {
            client: c,
            outcome: Outcome::Rejected(code),
            ..
        } = event
        {
            if c == client {
                *counts.entry(*code).or_default() += 1;
            }
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::MapFinal;
    use topgun::hlc::Timestamp;
    use topgun::record::{LwwRecord, OrMapRecord};

    fn lww(millis: u64, node: &str, value: Option<i64>) -> LwwRecord {
        LwwRecord {
            value: value.map(serde_json::Value::from).map(Into::into),
            timestamp: Timestamp::new(millis, 0, node),
            ttl_ms: None,
        }
    }

    fn or(millis: u64, node: &str) -> OrMapRecord {
        let timestamp = Timestamp::new(millis, 0, node);
        OrMapRecord {
            value: serde_json::Value::from(1),
            tag: timestamp.to_string(),
            timestamp,
            ttl_ms: None,
        }
    }

    fn write(client: &str, op_id: u64, at_ms: u64, map: &str, key: &str, change: Change) -> Event {
        Event::Write {
            client: client.to_owned(),
            op_id,
            at_ms,
            map: map.to_owned(),
            key: key.to_owned(),
            change,
            skew_ms: 0,
        }
    }

    fn ack(client: &str, op_id: u64, at_ms: u64, level: WriteConcern) -> Event {
        Event::Answer {
            client: client.to_owned(),
            op_id,
            at_ms,
            outcome: Outcome::Acked(level),
        }
    }

    fn lww_final(records: &[(&str, LwwRecord)]) -> MapFinal {
        MapFinal {
            state: MapState::Lww(
                records
                    .iter()
                    .map(|(k, r)| ((*k).to_owned(), r.clone()))
                    .collect(),
            ),
            root: 7,
            server_root: Some(7),
            synced: true,
        }
    }

    fn finals_with(server: MapFinal) -> Finals {
        let mut finals = Finals::default();
        finals.server.insert("m".to_owned(), server);
        finals
    }

    #[test]
    fn convergence_flags_state_root_and_advertised_root_differences() {
        let server = lww_final(&[("k", lww(1, "a", Some(1)))]);
        let mut finals = finals_with(server.clone());
        finals.clients.insert(
            "alice".to_owned(),
            BTreeMap::from([("m".to_owned(), server.clone())]),
        );
        assert_eq!(convergence(&finals), vec![]);
        let mut sum_session = server.clone();
        sum_session.server_root = Some(70);
        finals.clients.insert(
            "carol".to_owned(),
            BTreeMap::from([("m".to_owned(), sum_session)]),
        );
        assert_eq!(
            convergence(&finals).len(),
            1,
            "a root under another combine (the Sum false positive) is not accepted"
        );
        finals.clients.remove("carol");

        let mut stale = lww_final(&[("k", lww(0, "a", Some(0)))]);
        stale.root = 8;
        stale.server_root = Some(9);
        finals
            .clients
            .insert("bob".to_owned(), BTreeMap::from([("m".to_owned(), stale)]));
        let found = convergence(&finals);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found
                .iter()
                .all(|v| v.property == "convergence" && v.detail.contains("bob"))
        );
    }

    #[test]
    fn a_client_may_lack_tombstones_but_not_hold_extra_ones_or_other_records() {
        let or_final = |tags: &[&str], tombstones: &[&str]| MapFinal {
            state: MapState::Or {
                records: BTreeMap::from([(
                    "k".to_owned(),
                    tags.iter()
                        .map(|tag| OrMapRecord {
                            value: serde_json::json!(1),
                            timestamp: Timestamp::new(1, 0, "a"),
                            tag: (*tag).to_owned(),
                            ttl_ms: None,
                        })
                        .collect(),
                )]),
                tombstones: tombstones.iter().map(|t| (*t).to_owned()).collect(),
            },
            root: 1,
            server_root: Some(1),
            synced: true,
        };
        let mut finals = finals_with(or_final(&["live"], &["gone", "never-seen"]));
        let mut client = |state| {
            finals.clients.insert(
                "alice".to_owned(),
                BTreeMap::from([("m".to_owned(), state)]),
            );
            convergence(&finals).len()
        };
        assert_eq!(client(or_final(&["live"], &["gone"])), 0);
        assert_eq!(client(or_final(&["live"], &["gone", "invented"])), 1);
        assert_eq!(client(or_final(&["live", "gone"], &[])), 1);
    }

    #[test]
    fn an_acked_write_missing_from_the_server_is_lost_unless_superseded() {
        let first = lww(10, "a", Some(1));
        let newer = lww(20, "b", Some(2));
        let history = History {
            events: vec![
                write("alice", 1, 0, "m", "k", Change::Lww(first.clone())),
                ack("alice", 1, 5, WriteConcern::Persisted),
                write("alice", 2, 6, "m", "gone", Change::Lww(first.clone())),
                ack("alice", 2, 8, WriteConcern::Persisted),
            ],
        };
        // "k" superseded by a newer record: fine. "gone" absent: lost.
        let finals = finals_with(lww_final(&[("k", newer)]));
        let found = no_lost_acked_writes(&history, &finals);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].detail.contains("#2"));

        let finals = finals_with(lww_final(&[("k", first.clone()), ("gone", first)]));
        assert_eq!(no_lost_acked_writes(&history, &finals), vec![]);
    }

    #[test]
    fn applied_acks_may_die_in_any_crash_persisted_only_with_the_store() {
        let record = lww(10, "a", Some(1));
        let events = |level, store_kept| History {
            events: vec![
                write("alice", 1, 0, "m", "k", Change::Lww(record.clone())),
                ack("alice", 1, 5, level),
                Event::ServerCrash {
                    at_ms: 9,
                    store_kept,
                },
            ],
        };
        let empty = finals_with(lww_final(&[]));
        let lost = |level, kept| no_lost_acked_writes(&events(level, kept), &empty).len();
        assert_eq!(lost(WriteConcern::Applied, true), 0);
        assert_eq!(lost(WriteConcern::Persisted, true), 1);
        assert_eq!(lost(WriteConcern::Persisted, false), 0);
        // An ack arriving after the crash may have been committed before it...
        let mut in_flight = events(WriteConcern::Persisted, false);
        if let Event::Answer { at_ms, .. } = &mut in_flight.events[1] {
            *at_ms = 12;
        }
        assert_eq!(no_lost_acked_writes(&in_flight, &empty).len(), 0);
        // ...but a write made after the crash must survive it.
        let mut late = events(WriteConcern::Applied, false);
        late.events.rotate_left(2);
        if let Event::Write { at_ms, .. } = &mut late.events[1] {
            *at_ms = 10;
        }
        if let Event::Answer { at_ms, .. } = &mut late.events[2] {
            *at_ms = 12;
        }
        assert_eq!(no_lost_acked_writes(&late, &empty).len(), 1);
    }

    #[test]
    fn or_adds_survive_as_records_or_tombstones_and_removes_must_stick() {
        let added = or(10, "a");
        let history = History {
            events: vec![
                write("alice", 1, 0, "m", "k", Change::OrAdd(added.clone())),
                ack("alice", 1, 1, WriteConcern::Applied),
                write(
                    "alice",
                    2,
                    2,
                    "m",
                    "k",
                    Change::OrRemove {
                        tag: added.tag.clone(),
                    },
                ),
                ack("alice", 2, 3, WriteConcern::Applied),
            ],
        };
        let state = |records: Vec<OrMapRecord>, tombstones: Vec<String>| {
            finals_with(MapFinal {
                state: MapState::Or {
                    records: BTreeMap::from([("k".to_owned(), records)]),
                    tombstones: tombstones.into_iter().collect(),
                },
                root: 0,
                server_root: None,
                synced: true,
            })
        };
        assert_eq!(
            no_lost_acked_writes(&history, &state(vec![], vec![added.tag.clone()])),
            vec![]
        );
        // The remove was acked but the tag is still live.
        let found = no_lost_acked_writes(&history, &state(vec![added.clone()], vec![]));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].detail.contains("#2"));
    }

    #[test]
    fn idempotence_flags_records_nobody_sent_and_duplicate_tags() {
        let sent = lww(10, "a", Some(1));
        let history = History {
            events: vec![
                write("alice", 1, 0, "m", "k", Change::Lww(sent.clone())),
                write("alice", 2, 0, "o", "k", Change::OrAdd(or(11, "a"))),
            ],
        };
        let mut finals = finals_with(lww_final(&[("k", sent)]));
        finals.server.insert(
            "o".to_owned(),
            MapFinal {
                state: MapState::Or {
                    records: BTreeMap::from([("k".to_owned(), vec![or(11, "a")])]),
                    tombstones: BTreeSet::new(),
                },
                root: 0,
                server_root: None,
                synced: true,
            },
        );
        assert_eq!(idempotence(&history, &finals), vec![]);

        // A replay re-stamped by the server, and an OR add merged twice under one tag.
        finals.server.insert(
            "m".to_owned(),
            lww_final(&[("k", lww(12, "server", Some(1)))]),
        );
        if let Some(MapFinal {
            state: MapState::Or { records, .. },
            ..
        }) = finals.server.get_mut("o")
        {
            records.insert("k".to_owned(), vec![or(11, "a"), or(11, "a")]);
        }
        let found = idempotence(&history, &finals);
        assert_eq!(found.len(), 2, "{found:?}");
    }

    fn held(client: &str, token: u64, from_ms: u64, until_ms: u64) -> Event {
        Event::LockHeld {
            client: client.to_owned(),
            lock: "job".to_owned(),
            token,
            from_ms,
            until_ms,
        }
    }

    #[test]
    fn lock_safety_flags_overlapping_holds_and_non_increasing_tokens() {
        let fine = History {
            events: vec![
                held("a", 1, 0, 100),
                held("b", 2, 100, 200),
                held("a", 5, 300, 301),
            ],
        };
        assert_eq!(lock_safety(&fine), vec![]);
        let overlap = History {
            events: vec![held("a", 1, 0, 100), held("b", 2, 99, 200)],
        };
        assert_eq!(lock_safety(&overlap).len(), 1);
        let reused = History {
            events: vec![held("a", 3, 0, 100), held("b", 3, 150, 200)],
        };
        assert_eq!(lock_safety(&reused).len(), 1);
    }

    #[test]
    fn strict_clock_safety_flags_accepted_ops_beyond_the_drift() {
        let ahead = lww(EPOCH_MS + 10 + 5_001, "a", Some(1));
        let near = lww(EPOCH_MS + 10 + 4_999, "a", Some(1));
        let history = History {
            events: vec![
                write("alice", 1, 0, "m", "k", Change::Lww(near.clone())),
                ack("alice", 1, 10, WriteConcern::Applied),
                write("alice", 2, 0, "m", "j", Change::Lww(ahead.clone())),
                ack("alice", 2, 10, WriteConcern::Applied),
            ],
        };
        let finals = finals_with(lww_final(&[("k", near)]));
        let found = clock_safety_strict(&history, &finals, 0, 5_000, 10);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].detail.contains("#2"));
        // The same record stored in the final state is flagged too.
        let finals = finals_with(lww_final(&[("j", ahead)]));
        assert_eq!(
            clock_safety_strict(&history, &finals, 0, 5_000, 10).len(),
            2
        );
        // With the server clock 2 s ahead, both are within the drift.
        assert_eq!(
            clock_safety_strict(&history, &finals, 2_000, 5_000, 10),
            vec![]
        );
    }

    #[test]
    fn skewed_wins_counts_keys_a_skewed_writer_won_against_later_writes() {
        let skewed = lww(EPOCH_MS + 60_000, "s", Some(1));
        let honest = lww(EPOCH_MS + 100, "h", Some(2));
        let history = History {
            events: vec![
                write("skewed", 1, 10, "m", "k", Change::Lww(skewed.clone())),
                ack("skewed", 1, 11, WriteConcern::Applied),
                write("honest", 1, 100, "m", "k", Change::Lww(honest.clone())),
                ack("honest", 1, 101, WriteConcern::Applied),
            ],
        };
        assert_eq!(
            skewed_wins(
                &history,
                &finals_with(lww_final(&[("k", skewed)])),
                "skewed"
            ),
            1
        );
        assert_eq!(
            skewed_wins(
                &history,
                &finals_with(lww_final(&[("k", honest)])),
                "skewed"
            ),
            0
        );
        let rejected = History {
            events: vec![Event::Answer {
                client: "skewed".to_owned(),
                op_id: 1,
                at_ms: 1,
                outcome: Outcome::Rejected(400),
            }],
        };
        assert_eq!(rejections(&rejected, "skewed"), BTreeMap::from([(400, 1)]));
    }
}
