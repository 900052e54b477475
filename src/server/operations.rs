//! The write path: `OP_BATCH` and `CLIENT_OP`.
//!
//! Each op is checked (permission, HLC drift), merged with the **client's** timestamp and tag
//! (no re-stamping), persisted, fanned out to the map's query subscribers, and acknowledged
//! only once it has reached the level the client asked for. An ack never names an op that
//! was not applied, and replays change nothing (the CRDT merges are idempotent).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::time::Instant;

use crate::hlc::Timestamp;
use crate::lww::Merged;
use crate::protocol::{
    ClientOp, EventType, OpAck, OpAckPayload, OpBatchPayload, OpRejected, OpRejectedPayload,
    OpResult, OpType, OrMapEntry, ServerBatchEvent, ServerBatchEventPayload, ServerEventPayload,
    WriteConcern,
};
use crate::replica::{MapKind, Replica};
use crate::security::Action;
use crate::store::{EncodedLww, Mutation, StoreError, WriteBatch};

use super::Shared;
use super::dispatch::Flow;
use super::journal;
use super::metrics::Metrics;
use super::partitions::Route;
use super::session::{Session, send_to};
use super::storage::{MapError, MapHandle};

/// What a set of ops changed: the store mutations to persist, the events to fan out and the
/// changes to journal.
#[derive(Debug, Default, PartialEq)]
pub struct MapChanges {
    mutations: WriteBatch,
    events: BTreeMap<String, Vec<ServerEventPayload>>,
    journal: Vec<journal::Change>,
    numbering: Numbering,
    /// Set while merging into a map nothing listens to (no live query, no search index):
    /// LWW writes then build no events. Decided under the map's lock, so a listener that
    /// registers later still sees these writes in the snapshot it takes under that lock.
    unheard: bool,
}

/// The journal that numbers changes the moment they are applied (under the map's lock, so
/// journal order is apply order); without one, changes are journaled after the merge.
#[derive(Clone, Default)]
struct Numbering(Option<Arc<Shared>>);

impl std::fmt::Debug for Numbering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Numbering(now)"
        } else {
            "Numbering(later)"
        })
    }
}

impl PartialEq for Numbering {
    /// Where numbering happens does not change what was merged.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl MapChanges {
    /// Records one applied change for the event journal: numbered right away when the
    /// journal has sequences reserved, else kept for [`Journal::append`] after the merge.
    fn journal(&mut self, change: journal::Change) {
        if !self.number(change.as_ref()) {
            self.journal.push(change);
        }
    }

    /// [`MapChanges::journal`] for a change borrowed from the replica: copied only when it
    /// has to wait for numbering.
    fn journal_ref(&mut self, change: journal::ChangeRef<'_>) {
        if !self.number(change) {
            self.journal.push(change.to_owned());
        }
    }

    /// Whether changes are journaled: false only when the journal is known to be off, so
    /// the OR paths skip the value snapshots a change needs.
    fn journaling(&self) -> bool {
        self.numbering
            .0
            .as_ref()
            .is_none_or(|shared| shared.journal.is_on())
    }

    /// Numbers `change` now if the journal can; false when it must wait.
    fn number(&mut self, change: journal::ChangeRef<'_>) -> bool {
        self.numbering
            .0
            .as_ref()
            .is_some_and(|shared| shared.journal.number(shared, change, &mut self.mutations))
    }

    fn event(&mut self, event: ServerEventPayload) {
        self.events
            .entry(event.map_name.clone())
            .or_default()
            .push(event);
    }
}

/// Why one op was not applied.
#[derive(Debug)]
enum OpFailure {
    /// Final: the client should drop the op (it will never succeed as sent).
    Rejected { code: u32, reason: String },
    /// Transient: the op must not be acked so the client sends it again.
    Unavailable { reason: String },
}

/// Handles `OP_BATCH`.
pub async fn handle_op_batch(
    shared: &Arc<Shared>,
    session: &mut Session,
    batch: OpBatchPayload,
) -> Flow {
    let received = Instant::now();
    let mut last_acked: Option<String> = None;
    let mut ack_blocked = false;
    let mut denied = 0usize;
    let mut tracked: Vec<(String, WriteConcern)> = Vec::new();
    let mut strongest = WriteConcern::FireAndForget;

    let meta_len = batch.ops.len();
    let mut meta = Vec::with_capacity(meta_len);
    let mut checked = Vec::with_capacity(batch.ops.len());
    // One clock read per batch: a batch is checked within microseconds.
    let horizon = shared.now_millis().saturating_sub(shared.limits.gc_age_ms);
    // Ops of a batch mostly share one map and action: what was granted for one serves the next.
    let mut granted: Option<Granted> = None;
    for mut op in batch.ops {
        // The id is only needed for the ack and for rejections, which `meta` answers.
        meta.push((
            op.id.take(),
            op.write_concern.or(batch.write_concern).unwrap_or_default(),
        ));
        // Checked by reference and moved once, into its `CheckedOp`: an op is a few hundred
        // bytes, and every move through an `await` copies it.
        let map = check_op(shared, session, &op, horizon, &mut granted).await;
        checked.push(map.and_then(|map| CheckedOp::new(op, map)));
    }
    let Some((outcomes, mut changes)) = merge_checked(shared, checked).await else {
        session.send_error(
            shared,
            500,
            "Merging the batch failed; it was not acknowledged",
        );
        return Flow::Continue;
    };

    for ((id, concern), outcome) in meta.into_iter().zip(outcomes) {
        match outcome {
            Ok(()) => {
                Metrics::inc(&shared.metrics.ops_applied);
                if let Some(id) = &id {
                    if concern >= WriteConcern::Applied {
                        tracked.push((id.clone(), concern));
                    }
                }
                strongest = strongest.max(concern);
            }
            Err(OpFailure::Rejected { code, reason }) => {
                Metrics::inc(&shared.metrics.ops_rejected);
                if code == 403 {
                    denied += 1;
                }
                reject(shared, session, id.as_deref(), code, reason);
            }
            Err(OpFailure::Unavailable { reason }) => {
                Metrics::inc(&shared.metrics.ops_rejected);
                reject(shared, session, id.as_deref(), 503, reason);
                ack_blocked = true;
            }
        }
        if !ack_blocked && id.is_some() {
            last_acked = id;
        }
    }
    // Before the ack, so a search sent after the ack waits for these writes to be indexed.
    shared.search.note_writes(&changes.events);
    if denied > 0 {
        session.send_error(
            shared,
            403,
            format!("Partial batch failure: {denied} ops denied"),
        );
    }

    let heavy = meta_len > shared.limits.pool_batch_ops;
    let Some(mutations) = journal_changes(shared, &mut changes, heavy).await else {
        session.send_error(
            shared,
            500,
            "Journaling the batch failed; it was not acknowledged",
        );
        return Flow::Continue;
    };
    let durable = strongest >= WriteConcern::Replicated;
    if !persist(shared, mutations, durable).await {
        session.send_error(
            shared,
            500,
            "Persisting the batch failed; it was not acknowledged",
        );
        return Flow::Continue;
    }
    fan_out(shared, session, std::mem::take(&mut changes.events));

    if let Some(last_id) = last_acked {
        let achieved = if durable {
            WriteConcern::Persisted
        } else {
            WriteConcern::Applied
        };
        let results = (!tracked.is_empty()).then(|| {
            tracked
                .into_iter()
                .map(|(op_id, _)| OpResult {
                    op_id,
                    success: true,
                    achieved_level: achieved,
                    error: None,
                })
                .collect()
        });
        let ack = OpAck {
            payload: OpAckPayload {
                last_id,
                achieved_level: Some(achieved),
                results,
            },
        };
        let _ = session.send(shared, ack);
        shared.metrics.observe_ack_latency(received.elapsed());
    }
    Flow::Continue
}

/// Handles `CLIENT_OP`: one op through the same path as a batch.
pub async fn handle_client_op(shared: &Arc<Shared>, session: &mut Session, op: ClientOp) -> Flow {
    let payload = OpBatchPayload {
        ops: vec![op],
        write_concern: None,
        timeout: None,
    };
    handle_op_batch(shared, session, payload).await
}

fn reject(shared: &Shared, session: &Session, op_id: Option<&str>, code: u32, reason: String) {
    tracing::debug!(conn = session.id, op = op_id.unwrap_or("-"), code, %reason, "op rejected");
    let _ = session.send(
        shared,
        OpRejected {
            payload: OpRejectedPayload {
                op_id: op_id.unwrap_or_default().to_owned(),
                reason,
                code: Some(code),
            },
        },
    );
}

/// A map an op of this batch was found in, and the action its principal was granted there.
struct Granted {
    map: MapHandle,
    action: Action,
}

/// Checks one op (permission, ownership, map kind, HLC drift, the garbage-collection
/// `horizon` in wall-clock millis) and finds its map. The batch's next op on the same map,
/// kind and action takes the map and the permission from `granted` instead of asking again.
async fn check_op(
    shared: &Shared,
    session: &Session,
    op: &ClientOp,
    horizon: u64,
    granted: &mut Option<Granted>,
) -> Result<MapHandle, OpFailure> {
    let action = if op.op_type == Some(OpType::Remove)
        || op.record.as_ref().is_some_and(|r| r.value.is_none())
    {
        Action::Remove
    } else {
        Action::Put
    };
    let kind = if op.is_or_op() {
        MapKind::Or
    } else {
        MapKind::Lww
    };
    let remembered = granted
        .as_ref()
        .filter(|g| g.action == action && g.map.kind() == kind && g.map.name() == op.map_name)
        .map(|g| g.map.clone());
    if remembered.is_none()
        && !shared
            .permissions
            .check(session.principal(), &op.map_name, action)
    {
        return Err(OpFailure::Rejected {
            code: 403,
            reason: "Access Denied".to_owned(),
        });
    }
    if let Route::Forward { node_id } = shared.ownership.route(&op.key) {
        return Err(OpFailure::Unavailable {
            reason: format!("key {} is owned by node {node_id}", op.key),
        });
    }
    let map = match remembered {
        Some(map) => map,
        None => {
            let map = shared
                .maps
                .get(&op.map_name, kind, Some(kind))
                .await
                .map_err(|e| match e {
                    MapError::KindMismatch { .. } => OpFailure::Rejected {
                        code: 400,
                        reason: format!("Map type mismatch: {e}"),
                    },
                    MapError::LoadFailed { .. } => OpFailure::Unavailable {
                        reason: e.to_string(),
                    },
                })?;
            *granted = Some(Granted {
                map: map.clone(),
                action,
            });
            map
        }
    };
    if op.op_type == Some(OpType::OrRemove)
        && op
            .or_tag
            .as_deref()
            .is_some_and(|tag| tag.parse::<Timestamp>().is_err())
    {
        // Tags are HLC strings; anything else could never be pruned and would grow the
        // tombstone set without bound.
        return Err(OpFailure::Rejected {
            code: 400,
            reason: "orTag is not an HLC timestamp (millis:counter:nodeId)".to_owned(),
        });
    }
    if let Some(ts) = op_timestamp(op) {
        if ts.millis < horizon {
            // Tombstones older than the horizon may already be pruned: accepting this write
            // could resurrect a deletion every other replica has forgotten.
            return Err(OpFailure::Rejected {
                code: 409,
                reason: "write is older than the garbage-collection horizon; resync the map"
                    .to_owned(),
            });
        }
        shared.hlc().update(&ts).map_err(|e| OpFailure::Rejected {
            code: 400,
            reason: e.to_string(),
        })?;
    }
    Ok(map)
}

/// An op that passed its checks, with the map it merges into.
#[derive(Debug)]
struct CheckedOp {
    op: ClientOp,
    map: MapHandle,
    /// An LWW op's record as the store row it becomes if it wins, encoded before the map
    /// is locked: writers of the map do not wait for it, and a record the store cannot hold
    /// is refused before it changes anything.
    row: Option<EncodedLww>,
}

impl CheckedOp {
    fn new(op: ClientOp, map: MapHandle) -> Result<Self, OpFailure> {
        let row = match (&op.record, op.is_or_op()) {
            (Some(record), false) => Some(EncodedLww::new(record).map_err(unstorable)?),
            _ => None,
        };
        Ok(Self { op, map, row })
    }
}

/// Merges the checked ops of a batch: on the worker pool when the batch is large, inline
/// otherwise. `None` when the pooled merge failed.
async fn merge_checked(
    shared: &Arc<Shared>,
    checked: Vec<Result<CheckedOp, OpFailure>>,
) -> Option<(Vec<Result<(), OpFailure>>, MapChanges)> {
    let heavy = checked.len() > shared.limits.pool_batch_ops;
    let slice = shared.limits.merge_slice_ops;
    // Reserve journal sequences first so each change is numbered as it is applied.
    let numbering = match shared.journal.prepare(shared, checked.len() as u64).await {
        Ok(()) => Numbering(Some(shared.clone())),
        Err(e) => {
            tracing::warn!(error = %e, "journal not ready: numbering after the merge");
            Numbering(None)
        }
    };
    if !heavy {
        yield_while_locked(&checked).await;
    }
    let server = shared.clone();
    match shared
        .workers
        .run_if(heavy, move || {
            merge_ops(checked, slice, numbering, Some(&server))
        })
        .await
    {
        Ok(merged) => Some(merged),
        Err(e) => {
            tracing::error!(error = %e, "merging a batch on the worker pool failed");
            None
        }
    }
}

/// Yields to the runtime's other tasks while another thread holds a map lock this batch
/// merges under, at most [`LOCKED_YIELDS`] times, so that the thread serves other connections
/// instead of blocking in the lock. With one hot map and two runtime threads, measured at 150k
/// ops/s, 13 % of batches met a held lock and waited 90–120 µs on average, blocking a thread
/// 1,530 times a second. Yielding, unlike queueing for a fair async lock, never hands the lock
/// to a task that is not running: a FIFO turn per map halved pipelined throughput.
async fn yield_while_locked(checked: &[Result<CheckedOp, OpFailure>]) {
    for _ in 0..LOCKED_YIELDS {
        let mut previous: Option<&MapHandle> = None;
        let all_unlocked = checked.iter().flatten().all(|op| {
            let fresh = previous.is_none_or(|map| !map.is_same_map(&op.map));
            previous = Some(&op.map);
            !fresh || op.map.is_unlocked()
        });
        if all_unlocked {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// How often a batch yields to a held map lock before it waits in the lock itself.
const LOCKED_YIELDS: usize = 16;

/// Merges checked ops in order, returning each op's outcome and what changed. A map's lock
/// is held for at most `slice` consecutive ops on it, so other writers to the same map
/// interleave with a huge batch. `server` (absent in some unit tests) tells which maps have
/// listeners and counts the time spent blocked on a map's lock.
fn merge_ops(
    checked: Vec<Result<CheckedOp, OpFailure>>,
    slice: usize,
    numbering: Numbering,
    server: Option<&Shared>,
) -> (Vec<Result<(), OpFailure>>, MapChanges) {
    let mut changes = MapChanges {
        numbering,
        // An applied LWW op writes its record and its journal entry; the batch may end with
        // the journal's trim.
        mutations: WriteBatch::with_capacity(2 * checked.len() + 1),
        ..MapChanges::default()
    };
    let mut outcomes = Vec::with_capacity(checked.len());
    let mut rest = checked.into_iter().peekable();
    while let Some(next) = rest.next() {
        let first = match next {
            Ok(first) => first,
            Err(failure) => {
                outcomes.push(Err(failure));
                continue;
            }
        };
        let map = first.map;
        let mut guard = map.lock_reporting_wait(|waited| {
            if let Some(shared) = server {
                shared.metrics.observe_map_lock_blocked(waited);
            }
        });
        changes.unheard = server.is_some_and(|shared| !shared.listens_to(map.name()));
        outcomes.push(merge_op(&mut guard, first.op, first.row, &mut changes));
        for _ in 1..slice.max(1) {
            let Some(Ok(same)) =
                rest.next_if(|n| n.as_ref().is_ok_and(|c| c.map.is_same_map(&map)))
            else {
                break;
            };
            outcomes.push(merge_op(&mut guard, same.op, same.row, &mut changes));
        }
    }
    changes.unheard = false;
    (outcomes, changes)
}

/// Merges one checked op into its (locked) replica.
fn merge_op(
    replica: &mut Replica,
    op: ClientOp,
    row: Option<EncodedLww>,
    changes: &mut MapChanges,
) -> Result<(), OpFailure> {
    match op.op_type {
        Some(OpType::OrAdd) => apply_or_add(replica, op, changes),
        Some(OpType::OrRemove) => apply_or_remove(replica, op, changes),
        _ => apply_lww(replica, op, row, changes),
    }
}

/// The HLC timestamp an op carries (for the drift check and clock update); borrowed
/// unless it has to be parsed from an OR tag.
fn op_timestamp(op: &ClientOp) -> Option<Cow<'_, Timestamp>> {
    match op.op_type {
        Some(OpType::OrAdd) => op.or_record.as_ref().map(|r| Cow::Borrowed(&r.timestamp)),
        Some(OpType::OrRemove) => op
            .or_tag
            .as_deref()
            .and_then(|t| t.parse().ok())
            .map(Cow::Owned),
        _ => op.record.as_ref().map(|r| Cow::Borrowed(&r.timestamp)),
    }
}

fn missing(field: &str, op_type: &str) -> OpFailure {
    OpFailure::Rejected {
        code: 400,
        reason: format!("{op_type} op without {field}"),
    }
}

/// Merges an LWW op; `row` is its record encoded for the store ([`CheckedOp::row`]).
fn apply_lww(
    replica: &mut Replica,
    op: ClientOp,
    row: Option<EncodedLww>,
    changes: &mut MapChanges,
) -> Result<(), OpFailure> {
    let (Some(record), Some(row)) = (op.record, row) else {
        return Err(missing("record", "LWW"));
    };
    let Replica::Lww(replica) = replica else {
        return Err(missing("an LWW map", "LWW"));
    };
    let (previous, stored) = match replica.try_merge(&op.key, record) {
        Merged::Applied { previous, stored } => (previous, stored),
        Merged::Ignored(record) => {
            if replica.map().record(&op.key) == Some(&record) {
                // A replay of what we hold. Its first commit may have failed (the client
                // retries because it got no ack), so write it again: the store keeps the
                // newest record, and a PERSISTED ack must mean the record is on disk, not
                // merely in memory.
                changes.mutations.push(Mutation::PutLww {
                    map: op.map_name,
                    key: op.key,
                    record: row,
                });
            }
            return Ok(());
        }
    };
    changes.journal_ref(journal::ChangeRef::lww(
        &op.map_name,
        &op.key,
        stored,
        previous.as_ref(),
    ));
    if !changes.unheard {
        let event_type = if stored.is_tombstone() {
            EventType::Remove
        } else {
            EventType::Put
        };
        changes.event(ServerEventPayload {
            map_name: op.map_name.clone(),
            key: op.key.to_string(),
            event_type,
            record: Some(stored.clone()),
            or_record: None,
            or_tag: None,
            epoch: None,
        });
    }
    // The stored record is the op's own (it won), so its row is the one encoded up front.
    changes.mutations.push(Mutation::PutLww {
        map: op.map_name,
        key: op.key,
        record: row,
    });
    Ok(())
}

/// A record the store cannot encode: only a string, array or map beyond 4 GiB entries,
/// which no frame can carry.
fn unstorable(error: StoreError) -> OpFailure {
    OpFailure::Rejected {
        code: 413,
        reason: error.to_string(),
    }
}

fn apply_or_add(
    replica: &mut Replica,
    op: ClientOp,
    changes: &mut MapChanges,
) -> Result<(), OpFailure> {
    let record = *op.or_record.ok_or_else(|| missing("orRecord", "OR_ADD"))?;
    let Replica::Or(replica) = replica else {
        return Err(missing("an OR map", "OR_ADD"));
    };
    let before = changes.journaling().then(|| or_values(replica, &op.key));
    if replica.apply(&op.key, record.clone()) {
        if let Some(before) = before {
            changes.journal(journal::Change::or(
                &op.map_name,
                &op.key,
                before,
                or_values(replica, &op.key),
                false,
                Some(record.timestamp.clone()),
            ));
        }
        changes.mutations.push(Mutation::PutOrKey {
            map: op.map_name.clone(),
            key: op.key.to_string(),
            records: replica.map().records(&op.key).cloned().collect(),
        });
        changes.event(ServerEventPayload {
            map_name: op.map_name,
            key: op.key.into(),
            event_type: EventType::OrAdd,
            record: None,
            or_record: Some(record),
            or_tag: None,
            epoch: None,
        });
    } else if replica.map().records(&op.key).any(|held| *held == record) {
        // A replay of a record we hold: write it again (see `apply_lww`).
        changes.mutations.push(Mutation::PutOrKey {
            map: op.map_name,
            key: op.key.into(),
            records: vec![record],
        });
    }
    Ok(())
}

fn apply_or_remove(
    replica: &mut Replica,
    op: ClientOp,
    changes: &mut MapChanges,
) -> Result<(), OpFailure> {
    let tag = op.or_tag.ok_or_else(|| missing("orTag", "OR_REMOVE"))?;
    let Replica::Or(replica) = replica else {
        return Err(missing("an OR map", "OR_REMOVE"));
    };
    if replica.map().is_tombstoned(&tag) {
        return Ok(());
    }
    let before = changes.journaling().then(|| or_values(replica, &op.key));
    let owner = replica.apply_tombstone(&tag);
    if let (Some(owner), Some(before)) = (&owner, before) {
        // Only the named key's values were captured; a tag owned elsewhere has no previous.
        let before = if *owner == op.key { before } else { Vec::new() };
        changes.journal(journal::Change::or(
            &op.map_name,
            owner,
            before,
            or_values(replica, owner),
            true,
            None,
        ));
    }
    changes.mutations.push(Mutation::AddOrTombstones {
        map: op.map_name.clone(),
        tags: vec![tag.clone()],
    });
    if let Some(owner) = owner {
        changes.mutations.push(Mutation::PutOrKey {
            map: op.map_name.clone(),
            key: owner.clone(),
            records: replica.map().records(&owner).cloned().collect(),
        });
    }
    changes.event(ServerEventPayload {
        map_name: op.map_name,
        key: op.key.into(),
        event_type: EventType::OrRemove,
        record: None,
        or_record: None,
        or_tag: Some(tag),
        epoch: None,
    });
    Ok(())
}

/// Merges one pushed OR entry (the sync path), recording what changed.
pub fn merge_or_entry(map: &MapHandle, entry: OrMapEntry, changes: &mut MapChanges) {
    let mut guard = map.lock();
    let Replica::Or(replica) = &mut *guard else {
        return;
    };
    let new_tombstones: Vec<String> = entry
        .tombstones
        .iter()
        .filter(|t| !replica.map().is_tombstoned(t))
        .cloned()
        .collect();
    let before = changes.journaling().then(|| or_values(replica, &entry.key));
    let outcome = replica.merge_key(&entry.key, entry.records, entry.tombstones);
    let map_name = map.name().to_owned();
    if let Some(before) = before {
        journal_merge(replica, &map_name, &entry.key, before, &outcome, changes);
    }
    if !new_tombstones.is_empty() {
        changes.mutations.push(Mutation::AddOrTombstones {
            map: map_name.clone(),
            tags: new_tombstones,
        });
    }
    for key in outcome.touched_keys(&entry.key) {
        changes.mutations.push(Mutation::PutOrKey {
            map: map_name.clone(),
            records: replica.map().records(&key).cloned().collect(),
            key,
        });
    }
    for record in outcome.added.into_iter().chain(outcome.updated) {
        changes.event(ServerEventPayload {
            map_name: map_name.clone(),
            key: entry.key.clone(),
            event_type: EventType::OrAdd,
            record: None,
            or_record: Some(record),
            or_tag: None,
            epoch: None,
        });
    }
    for removed in outcome.removed {
        changes.event(ServerEventPayload {
            map_name: map_name.clone(),
            key: removed.key,
            event_type: EventType::OrRemove,
            record: None,
            or_record: None,
            or_tag: Some(removed.tag),
            epoch: None,
        });
    }
}

/// The live values of an OR key, for journal `value` / `previousValue`.
fn or_values(replica: &crate::replica::OrReplica, key: &str) -> Vec<serde_json::Value> {
    replica
        .map()
        .records(key)
        .map(|r| r.value.clone())
        .collect()
}

/// Journals what one OR sync merge did: the pushed key's change, then each other key that
/// lost records to the pushed tombstones.
fn journal_merge(
    replica: &crate::replica::OrReplica,
    map_name: &str,
    key: &str,
    before: Vec<serde_json::Value>,
    outcome: &crate::ormap::MergeKeyOutcome,
    changes: &mut MapChanges,
) {
    let key_removed = outcome.removed.iter().any(|r| r.key == key);
    let key_added = !outcome.added.is_empty() || !outcome.updated.is_empty();
    if key_added || key_removed {
        let newest = outcome
            .added
            .iter()
            .chain(&outcome.updated)
            .map(|r| &r.timestamp)
            .max()
            .cloned();
        changes.journal(journal::Change::or(
            map_name,
            key,
            before,
            or_values(replica, key),
            !key_added,
            newest,
        ));
    }
    let mut others: Vec<&str> = outcome
        .removed
        .iter()
        .map(|r| r.key.as_str())
        .filter(|k| *k != key)
        .collect();
    others.sort_unstable();
    others.dedup();
    for other in others {
        changes.journal(journal::Change::or(
            map_name,
            other,
            Vec::new(),
            or_values(replica, other),
            true,
            None,
        ));
    }
}

/// Journals `changes` and returns the store mutations with the journal rows added. A heavy
/// batch's journal entries (one serialized event per change) are built on the worker pool;
/// `None` when that pooled job failed.
async fn journal_changes(
    shared: &Arc<Shared>,
    changes: &mut MapChanges,
    heavy: bool,
) -> Option<WriteBatch> {
    let journaled = std::mem::take(&mut changes.journal);
    let mut mutations = std::mem::take(&mut changes.mutations);
    if journaled.is_empty() {
        // Everything was numbered during the merge.
        shared.journal.trim_into(&mut mutations);
        return Some(mutations);
    }
    if !heavy {
        shared
            .journal
            .append(shared, journaled, &mut mutations)
            .await;
        return Some(mutations);
    }
    let pooled = shared.clone();
    let runtime = tokio::runtime::Handle::current();
    let job = move || {
        // A blocking pool thread may drive the (briefly async) append to completion itself.
        runtime.block_on(pooled.journal.append(&pooled, journaled, &mut mutations));
        mutations
    };
    match shared.workers.run(job).await {
        Ok(mutations) => Some(mutations),
        Err(e) => {
            tracing::error!(error = %e, "journaling a batch on the worker pool failed");
            None
        }
    }
}

/// `event` as `principal` may see it: values filtered by field-level security, and the
/// event dropped when its value is withheld entirely (a tombstone always passes).
fn visible_event(
    shared: &Shared,
    principal: &crate::auth::Principal,
    event: &ServerEventPayload,
) -> Option<ServerEventPayload> {
    let mut event = event.clone();
    let permissions = &shared.permissions;
    if let Some(record) = &mut event.record
        && let Some(value) = record.value.take()
    {
        record.value = Some(permissions.filter_user_value(principal, &event.map_name, value)?);
    }
    if let Some(record) = &mut event.or_record {
        let value = std::mem::take(&mut record.value);
        record.value = permissions.filter_value(principal, &event.map_name, value)?;
    }
    Some(event)
}

/// Queues the persistence of, and fans out, changes made outside an `OP_BATCH`.
pub async fn finish_changes(shared: &Arc<Shared>, session: &Session, mut changes: MapChanges) {
    let journaled = std::mem::take(&mut changes.journal);
    shared
        .journal
        .append(shared, journaled, &mut changes.mutations)
        .await;
    if persist(shared, std::mem::take(&mut changes.mutations), false).await {
        fan_out(shared, session, std::mem::take(&mut changes.events));
    }
}

/// Hands `mutations` to the store. With `wait`, resolves after the commit is durable;
/// otherwise once it is queued behind every earlier commit (so a later durable ack still
/// covers it, and a store that falls behind slows writers down instead of piling up work).
/// Reports whether the store took the batch.
async fn persist(shared: &Arc<Shared>, mutations: WriteBatch, wait: bool) -> bool {
    // A durable ack also needs every earlier queued commit on disk; committing even an empty
    // batch behind them in the store's FIFO queue gives exactly that.
    if mutations.is_empty() && !wait {
        return true;
    }
    let committed = if wait {
        shared.store.commit(mutations).await
    } else {
        shared.store.commit_queued(mutations).await
    };
    match committed {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "persisting a batch failed");
            false
        }
    }
}

/// Sends one `SERVER_BATCH_EVENT` per subscribed connection (not the writer) with the events
/// of the maps it holds a query on, stamped with a fresh server HLC timestamp.
fn fan_out(shared: &Shared, session: &Session, events: BTreeMap<String, Vec<ServerEventPayload>>) {
    fan_out_except(shared, Some(session.id), events);
}

/// Fans out changes the server made itself (TTL expiry): every subscriber gets them.
pub fn fan_out_server_events(shared: &Shared, events: BTreeMap<String, Vec<ServerEventPayload>>) {
    fan_out_except(shared, None, events);
}

fn fan_out_except(
    shared: &Shared,
    skip: Option<super::connections::ConnId>,
    events: BTreeMap<String, Vec<ServerEventPayload>>,
) {
    if events.is_empty() {
        return;
    }
    // Each subscriber is sent a copy of the events; decoding a still-encoded value once here
    // spares every copy its own decode when it is encoded for the wire.
    for record in events.values().flatten().filter_map(|e| e.record.as_ref()) {
        if let Some(value) = &record.value {
            value.value();
        }
    }
    super::live::on_changes(shared, &events);
    let mut per_conn: BTreeMap<u64, (super::connections::ConnHandle, Vec<ServerEventPayload>)> =
        BTreeMap::new();
    for (map, map_events) in events {
        let mut seen = std::collections::BTreeSet::new();
        for (conn, live) in shared.queries.live_on(&map) {
            if Some(conn.id) == skip || !seen.insert(conn.id) {
                continue;
            }
            // Field-level security applies to every value a subscriber is sent.
            let visible = map_events
                .iter()
                .filter_map(|event| visible_event(shared, &live.principal, event));
            per_conn
                .entry(conn.id)
                .or_insert_with(|| (conn, Vec::new()))
                .1
                .extend(visible);
        }
    }
    if per_conn.is_empty() {
        return;
    }
    let timestamp = shared.now_timestamp();
    for (_, (conn, events)) in per_conn {
        let message = ServerBatchEvent {
            payload: ServerBatchEventPayload { events },
            timestamp: Some(timestamp.clone()),
        };
        if let Err(e) = send_to(shared, &conn, &message.into()) {
            tracing::debug!(conn = conn.id, error = %e, "subscriber missed an event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{LwwRecord, OrMapRecord};
    use crate::server::storage::MapRegistry;
    use crate::server::workers::WorkerPool;
    use crate::store::MemoryStore;

    const OPS: usize = 3_000;

    use crate::server::Server;
    use crate::server::config::{JournalMode, Limits};

    /// A server on a memory store with `limits`.
    fn test_server(limits: Limits) -> Server {
        Server::for_tests(Arc::new(MemoryStore::new()), 5_000, limits)
    }

    /// With the journal off, OR writes take no value snapshots for it; on, they are numbered.
    #[tokio::test]
    async fn or_writes_build_journal_changes_only_when_the_journal_is_on() {
        for (mode, journaled) in [(JournalMode::Durable, true), (JournalMode::Off, false)] {
            let server = test_server(Limits {
                journal: mode,
                ..Limits::default()
            });
            let shared = server.shared();
            let map = shared.maps.get("o", MapKind::Or, None).await.unwrap();
            let mut add = base_op("o", "k".into(), OpType::OrAdd);
            let timestamp = Timestamp::new(10, 0, "client");
            add.or_record = Some(Box::new(OrMapRecord {
                value: serde_json::json!("v"),
                tag: timestamp.to_string(),
                timestamp: timestamp.clone(),
                ttl_ms: None,
            }));
            let mut remove = base_op("o", "k".into(), OpType::OrRemove);
            remove.or_tag = Some(timestamp.to_string());
            let ops = vec![
                CheckedOp::new(add, map.clone()),
                CheckedOp::new(remove, map),
            ];
            let (outcomes, changes) = merge_checked(shared, ops).await.unwrap();
            assert!(outcomes.iter().all(Result::is_ok), "{mode:?}");
            assert_eq!(changes.journaling(), journaled, "{mode:?}");
            let numbered = changes
                .mutations
                .mutations()
                .iter()
                .filter(|m| matches!(m, Mutation::AppendJournal { .. }))
                .count();
            assert_eq!(numbered, if journaled { 2 } else { 0 }, "{mode:?}");
            assert!(changes.journal.is_empty(), "{mode:?}: numbered at once");
        }
    }

    /// A batch that meets a map lock held by another thread yields instead of blocking: on
    /// this single-threaded runtime the test task runs on while the lock is held, and the
    /// batch merges once it is released.
    #[tokio::test]
    async fn a_batch_yields_its_thread_while_another_holds_the_map_lock() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::mpsc;
        let server = test_server(Limits::default());
        let shared = Arc::clone(server.shared());
        let map = shared.maps.get("m", MapKind::Lww, None).await.unwrap();
        let released = Arc::new(AtomicBool::new(false));
        let (locked_tx, locked_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let holder = std::thread::spawn({
            let map = map.clone();
            let released = Arc::clone(&released);
            move || {
                let guard = map.lock();
                locked_tx.send(()).unwrap();
                // Released on the test's word, or after a while if the test never gets to
                // give it (because the batch blocked the runtime's only thread).
                let _ = release_rx.recv_timeout(std::time::Duration::from_secs(2));
                released.store(true, Ordering::SeqCst);
                drop(guard);
            }
        });
        locked_rx.recv().unwrap();
        let mut op = base_op("m", "k".to_owned(), OpType::Put);
        op.record = Some(LwwRecord {
            value: Some(serde_json::json!(1).into()),
            timestamp: Timestamp::new(10, 0, "client"),
            ttl_ms: None,
        });
        let batch = tokio::spawn({
            let shared = Arc::clone(&shared);
            let ops = vec![CheckedOp::new(op, map.clone())];
            async move { merge_checked(&shared, ops).await }
        });
        for _ in 0..LOCKED_YIELDS / 2 {
            tokio::task::yield_now().await;
        }
        assert!(
            !released.load(Ordering::SeqCst),
            "the runtime thread was blocked until the lock was released"
        );
        assert!(!batch.is_finished());
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        let (outcomes, _) = batch.await.unwrap().unwrap();
        assert!(outcomes.iter().all(Result::is_ok));
        assert_eq!(map.lock().merkle().len(), 1);
    }

    /// A merge that has to block on a map lock another thread holds reports the wait in
    /// `topgun_map_lock_blocked_seconds`; an uncontended merge reports nothing.
    #[tokio::test]
    async fn a_merge_blocked_on_a_held_map_lock_reports_the_wait() {
        use std::sync::mpsc;
        const HELD: std::time::Duration = std::time::Duration::from_millis(50);
        let server = test_server(Limits::default());
        let shared = Arc::clone(server.shared());
        let map = shared.maps.get("m", MapKind::Lww, None).await.unwrap();
        let put = |n: u64| {
            let mut op = base_op("m", format!("k{n}"), OpType::Put);
            op.record = Some(LwwRecord {
                value: Some(serde_json::json!(n).into()),
                timestamp: Timestamp::new(10 + n, 0, "client"),
                ttl_ms: None,
            });
            vec![CheckedOp::new(op, map.clone())]
        };
        // One series of the histogram, as `/metrics` renders it.
        let series = |shared: &Shared, part: &str| {
            let prefix = format!("topgun_map_lock_blocked_seconds_{part} ");
            shared
                .metrics
                .render()
                .lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_owned))
        };

        let guard = map.lock();
        let (started_tx, started_rx) = mpsc::channel();
        let blocked = std::thread::spawn({
            let shared = Arc::clone(&shared);
            let ops = put(1);
            move || {
                started_tx.send(()).unwrap();
                merge_ops(ops, 64, Numbering::default(), Some(&shared))
            }
        });
        // Held well past the merge's start, so it finds the lock taken.
        started_rx.recv().unwrap();
        std::thread::sleep(HELD);
        drop(guard);
        let (outcomes, _) = blocked.join().unwrap();
        assert!(outcomes.iter().all(Result::is_ok));
        let text = shared.metrics.render();
        assert_eq!(series(&shared, "count").as_deref(), Some("1"), "{text}");
        let sum: f64 = series(&shared, "sum").unwrap().parse().unwrap();
        assert!(sum >= 0.01, "the wait lasted about {HELD:?}, not {sum} s");

        let (outcomes, _) = merge_ops(put(2), 64, Numbering::default(), Some(&shared));
        assert!(outcomes.iter().all(Result::is_ok));
        assert_eq!(series(&shared, "count").as_deref(), Some("1"));
    }

    fn base_op(map: &str, key: String, op_type: OpType) -> ClientOp {
        ClientOp {
            id: None,
            map_name: map.to_owned(),
            key: key.into(),
            op_type: Some(op_type),
            record: None,
            or_record: None,
            or_tag: None,
            write_concern: None,
            timeout: None,
        }
    }

    /// The `i`th op of a mixed batch: LWW puts (some losing to newer writes, some
    /// tombstones) on two maps in runs, OR adds and removes, and malformed ops.
    fn mixed_op(i: usize) -> ClientOp {
        let ts = |millis: u64| Timestamp::new(1_000 + millis, 0, "client");
        match i % 10 {
            0..=5 => {
                let map = if (i / 40) % 2 == 0 { "a" } else { "b" };
                let mut op = base_op(map, format!("k{}", i % 700), OpType::Put);
                // Every third write is stamped in the past and loses to a newer one.
                let millis = if i % 3 == 0 { (i / 2) as u64 } else { i as u64 };
                op.record = Some(LwwRecord {
                    value: (i % 11 != 0)
                        .then(|| serde_json::json!({"i": i}))
                        .map(Into::into),
                    timestamp: ts(millis),
                    ttl_ms: None,
                });
                op
            }
            6 | 7 => {
                let mut op = base_op("o", format!("o{}", i % 50), OpType::OrAdd);
                op.or_record = Some(Box::new(OrMapRecord {
                    value: serde_json::json!(i),
                    timestamp: ts(i as u64),
                    tag: ts(i as u64).to_string(),
                    ttl_ms: None,
                }));
                op
            }
            8 => {
                let mut op = base_op("o", format!("o{}", (i - 2) % 50), OpType::OrRemove);
                op.or_tag = Some(ts((i - 2) as u64).to_string());
                op
            }
            _ => base_op("a", format!("k{i}"), OpType::Put), // no record: rejected
        }
    }

    async fn checked(maps: &MapRegistry) -> Vec<Result<CheckedOp, OpFailure>> {
        let mut checked = Vec::with_capacity(OPS);
        for i in 0..OPS {
            let op = mixed_op(i);
            let kind = if op.is_or_op() {
                MapKind::Or
            } else {
                MapKind::Lww
            };
            checked.push(if i % 97 == 0 {
                Err(OpFailure::Rejected {
                    code: 403,
                    reason: "Access Denied".to_owned(),
                })
            } else {
                let map = maps.get(&op.map_name, kind, Some(kind)).await.unwrap();
                CheckedOp::new(op, map)
            });
        }
        checked
    }

    fn roots(maps: &MapRegistry) -> Vec<(String, usize, u32)> {
        let mut roots: Vec<_> = maps
            .loaded()
            .iter()
            .map(|m| {
                let guard = m.lock();
                let tree = guard.merkle();
                (
                    m.name().to_owned(),
                    tree.len(),
                    tree.root(crate::merkle::Combine::Fmix),
                )
            })
            .collect();
        roots.sort();
        roots
    }

    /// Journal sequences follow apply order even when two batches on one key finish their
    /// post-merge work in the opposite order (numbering happens under the map's lock).
    #[tokio::test]
    async fn journal_order_is_apply_order_for_racing_batches() {
        let server = test_server(Limits::default());
        let shared = server.shared();
        let map = shared.maps.get("m", MapKind::Lww, None).await.unwrap();
        let write = |millis: u64| {
            let mut op = base_op("m", "k".into(), OpType::Put);
            op.record = Some(LwwRecord {
                value: Some(serde_json::json!(millis).into()),
                timestamp: Timestamp::new(millis, 0, "client"),
                ttl_ms: None,
            });
            vec![CheckedOp::new(op, map.clone())]
        };
        let (_, mut first) = merge_checked(shared, write(10)).await.unwrap();
        let (_, mut second) = merge_checked(shared, write(20)).await.unwrap();
        // The second batch reaches its journaling and commit first.
        for changes in [&mut second, &mut first] {
            let batch = journal_changes(shared, changes, false).await.unwrap();
            shared.store.commit(batch).await.unwrap();
        }
        let (events, _) = shared
            .journal
            .read(&*shared.store, 0, 10, |_| true)
            .await
            .unwrap();
        let applied: Vec<_> = events
            .iter()
            .map(|e| {
                (
                    e.sequence.as_str(),
                    e.value.clone(),
                    e.previous_value.clone(),
                )
            })
            .collect();
        assert_eq!(
            applied,
            vec![
                ("1", Some(serde_json::json!(10)), None),
                (
                    "2",
                    Some(serde_json::json!(20)),
                    Some(serde_json::json!(10))
                ),
            ]
        );
    }

    #[tokio::test]
    async fn a_large_batch_merged_on_the_pool_in_slices_equals_the_inline_merge() {
        let inline_maps = MapRegistry::new(Arc::new(MemoryStore::new()), false);
        let pooled_maps = MapRegistry::new(Arc::new(MemoryStore::new()), false);
        let (inline_outcomes, inline_changes) =
            merge_ops(checked(&inline_maps).await, 512, Numbering::default(), None);
        let pool = WorkerPool::new(2);
        let pooled_input = checked(&pooled_maps).await;
        let (pooled_outcomes, pooled_changes) = pool
            .run(move || merge_ops(pooled_input, 3, Numbering::default(), None))
            .await
            .unwrap();

        assert_eq!(
            format!("{inline_outcomes:?}"),
            format!("{pooled_outcomes:?}")
        );
        let failures = inline_outcomes.iter().filter(|o| o.is_err()).count();
        assert!(
            failures > OPS / 10,
            "malformed and denied ops fail: {failures}"
        );
        assert_eq!(inline_changes, pooled_changes);
        assert!(inline_changes.mutations.mutations().len() > OPS / 2);
        let inline_roots = roots(&inline_maps);
        assert_eq!(inline_roots.len(), 3);
        assert!(
            inline_roots
                .iter()
                .all(|(_, len, root)| *len > 0 && *root != 0)
        );
        assert_eq!(inline_roots, roots(&pooled_maps));
    }

    #[tokio::test]
    async fn writes_to_maps_nobody_listens_to_build_no_events() {
        let server = crate::server::Server::new(
            crate::server::ServerOptions {
                node_id: "server-1".into(),
                jwt_secret: "unit-test-secret-0123456789abcdef0123".into(),
                permissions: crate::security::Permissions::development_default(),
                limits: crate::server::config::Limits::default(),
                max_connections: 10,
                debug: false,
                default_combine: crate::merkle::Combine::Fmix,
                search: Default::default(),
            },
            Arc::new(MemoryStore::new()),
            Arc::new(crate::clock::ManualClock::new(1_000)),
            Arc::new(crate::entropy::SeededEntropy::new(1)),
        )
        .unwrap();
        let shared = server.shared().clone();
        let (outcomes, changes) = merge_ops(
            checked(&shared.maps).await,
            512,
            Numbering::default(),
            Some(&shared),
        );
        assert!(outcomes.iter().any(Result::is_ok));
        // LWW maps "a" and "b" have no live query or search index: persisted, not evented.
        assert!(
            changes
                .mutations
                .mutations()
                .iter()
                .any(|m| matches!(m, Mutation::PutLww { map, .. } if map == "a"))
        );
        assert_eq!(changes.events.keys().collect::<Vec<_>>(), ["o"]);
        assert!(!changes.unheard, "the flag never outlives the merge");
    }

    #[tokio::test]
    async fn a_map_lock_is_released_between_slices() {
        let maps = MapRegistry::new(Arc::new(MemoryStore::new()), false);
        let map = maps.get("a", MapKind::Lww, None).await.unwrap();
        let ops: Vec<Result<CheckedOp, OpFailure>> = (0..20_000)
            .map(|i| {
                let mut op = base_op("a", format!("k{i}"), OpType::Put);
                op.record = Some(LwwRecord {
                    value: Some(serde_json::json!(i).into()),
                    timestamp: Timestamp::new(1 + i as u64, 0, "c"),
                    ttl_ms: None,
                });
                CheckedOp::new(op, map.clone())
            })
            .collect();
        let pool = WorkerPool::new(1);
        let merging = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.run(move || merge_ops(ops, 64, Numbering::default(), None))
                    .await
            }
        });
        // Another writer gets the lock while the batch is still merging.
        let mut interleaved = false;
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while !merging.is_finished() && Instant::now() < deadline {
            let seen = map.lock().merkle().len();
            if seen > 0 && seen < 20_000 {
                interleaved = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_micros(100)).await;
        }
        let (outcomes, _) = merging.await.unwrap().unwrap();
        assert!(outcomes.iter().all(Result::is_ok));
        assert_eq!(map.lock().merkle().len(), 20_000);
        assert!(interleaved, "the lock was never free mid-batch");
    }
}
