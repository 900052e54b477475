//! TTL expiry and tombstone garbage collection (issue 4, PROTOCOL.md §3.14).
//!
//! A periodic pass over every loaded map (1) turns TTL-expired records into tombstones —
//! LWW tombstones at `{millis: timestamp.millis + ttl, counter: 0, nodeId: server}`, OR records
//! by tombstoning their tag — persists them and fans them out like writes; (2) prunes
//! tombstones older than the GC horizon `now − gc_age_ms` from memory and store; and (3) tells
//! every authenticated connection `GC_PRUNE {olderThan: horizon}`. Clients whose last sync is
//! older than the same age are sent `SYNC_RESET_REQUIRED` by the sync handlers, so no client
//! can resurrect a pruned deletion by merging against a stale copy.
//!
//! Expiry applies in slices of [`SLICE`] records with the map lock released and the task
//! yielding between slices, so a large map does not stall writers for a whole pass.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use crate::hlc::Timestamp;
use crate::ormap::RemovedTag;
use crate::protocol::{EventType, GcPrune, GcPrunePayload, ServerEventPayload};
use crate::record::LwwRecord;
use crate::replica::{LwwReplica, OrReplica, Replica};
use crate::store::{Mutation, StoreError, WriteBatch};

use super::Shared;
use super::connections::{ConnHandle, ConnId, Registry};
use super::operations;
use super::session::send_to;
use super::storage::MapHandle;

/// Most records expired under one hold of a map's lock.
pub const SLICE: usize = 512;

/// Connections that authenticated, the recipients of `GC_PRUNE`. Ids of closed connections
/// are dropped lazily at each broadcast (ids are never reused, so a stale one is harmless).
#[derive(Debug, Default)]
pub struct Audience(Mutex<HashSet<ConnId>>);

impl Audience {
    /// Records that connection `id` authenticated.
    pub fn admit(&self, id: ConnId) {
        self.lock().insert(id);
    }

    /// Handles of the authenticated connections still open.
    fn members(&self, registry: &Registry) -> Vec<ConnHandle> {
        let mut ids = self.lock();
        let mut open = Vec::with_capacity(ids.len());
        ids.retain(|id| match registry.get(*id) {
            Some(handle) => {
                open.push(handle);
                true
            }
            None => false,
        });
        open
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<ConnId>> {
        // A set of ids cannot be left inconsistent by a panic elsewhere.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why part of a pass failed. The in-memory change stays; the next pass redoes whatever the
/// store missed (a reload brings back unpruned tombstones and unexpired records).
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("persisting GC changes of map {map} failed: {source}")]
    Persist { map: String, source: StoreError },
}

/// What one pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Records turned into tombstones by TTL expiry.
    pub expired: usize,
    /// Tombstones (LWW keys or OR tags) pruned past the horizon.
    pub pruned: usize,
    /// Maps whose changes could not be persisted.
    pub failed_maps: usize,
    /// The horizon sent in `GC_PRUNE`.
    pub horizon: Timestamp,
}

/// Runs a pass every `gc_interval_ms` until shutdown; an interval of 0 disables the task.
pub async fn run(shared: Arc<Shared>) {
    let interval_ms = shared.limits.gc_interval_ms;
    if interval_ms == 0 {
        return;
    }
    let period = Duration::from_millis(interval_ms);
    let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut stop = shared.shutdown_signal();
    while !shared.is_shutting_down() {
        tokio::select! {
            _ = ticker.tick() => {
                let report = collect(&shared).await;
                tracing::debug!(
                    expired = report.expired,
                    pruned = report.pruned,
                    failed_maps = report.failed_maps,
                    horizon = %report.horizon,
                    "GC pass"
                );
            }
            _ = stop.changed() => return,
        }
    }
}

/// One full pass: expiry, pruning and the `GC_PRUNE` broadcast.
pub async fn collect(shared: &Shared) -> PassReport {
    let now = shared.now_millis();
    let horizon = horizon(now, shared.limits.gc_age_ms);
    let node_id = shared.hlc().node_id().to_owned();
    let mut report = PassReport {
        expired: 0,
        pruned: 0,
        failed_maps: 0,
        horizon: horizon.clone(),
    };
    for map in shared.maps.loaded() {
        let outcome = async {
            report.expired += expire_map(shared, &map, now, &node_id).await?;
            report.pruned += prune_map(shared, &map, &horizon).await?;
            Ok::<(), GcError>(())
        }
        .await;
        if let Err(e) = outcome {
            tracing::error!(error = %e, "GC pass incomplete");
            report.failed_maps += 1;
        }
    }
    broadcast_prune(shared, &horizon);
    report
}

/// The GC horizon: tombstones strictly older than this may be forgotten.
pub fn horizon(now_millis: u64, gc_age_ms: u64) -> Timestamp {
    Timestamp::new(now_millis.saturating_sub(gc_age_ms), 0, "")
}

/// The records of one map that may have expired, found in a single read pass.
enum Expiring {
    Lww(Vec<String>),
    Or(Vec<RemovedTag>),
}

/// What one slice changed: the mutations to persist and the events to fan out.
#[derive(Default)]
struct SliceChanges {
    batch: WriteBatch,
    events: Vec<ServerEventPayload>,
    /// Expiries are applied changes like any other: they go to the event journal too.
    journal: Vec<super::journal::Change>,
}

async fn expire_map(
    shared: &Shared,
    map: &MapHandle,
    now: u64,
    node_id: &str,
) -> Result<usize, GcError> {
    let name = map.name();
    let candidates = expiring(&map.lock(), now);
    match candidates {
        Expiring::Lww(keys) => {
            in_slices(shared, map, &keys, |replica, slice| match replica {
                Replica::Lww(r) => expire_lww(r, name, slice, now, node_id),
                Replica::Or(_) => SliceChanges::default(),
            })
            .await
        }
        Expiring::Or(tags) => {
            in_slices(shared, map, &tags, |replica, slice| match replica {
                Replica::Or(r) => expire_or(r, name, slice, now),
                Replica::Lww(_) => SliceChanges::default(),
            })
            .await
        }
    }
}

/// Applies `expire` to `items` a slice at a time, each under its own hold of the map lock,
/// persisting and fanning out each slice before the next. Returns how many records expired.
async fn in_slices<T>(
    shared: &Shared,
    map: &MapHandle,
    items: &[T],
    expire: impl Fn(&mut Replica, &[T]) -> SliceChanges,
) -> Result<usize, GcError> {
    let mut expired = 0;
    for slice in items.chunks(SLICE) {
        // The lock is a temporary of this statement, so it is released before the commit.
        let changes = expire(&mut map.lock(), slice);
        expired += changes.events.len();
        publish(shared, map.name(), changes).await?;
        tokio::task::yield_now().await;
    }
    Ok(expired)
}

fn expiring(replica: &Replica, now: u64) -> Expiring {
    match replica {
        Replica::Lww(r) => Expiring::Lww(
            r.map()
                .records()
                .filter(|(_, record)| is_expiring_lww(record, now))
                .map(|(key, _)| key.to_owned())
                .collect(),
        ),
        Replica::Or(r) => Expiring::Or(
            r.map()
                .keys()
                .flat_map(|key| {
                    r.map()
                        .records(key)
                        .filter(|record| record.is_expired(now))
                        .map(|record| RemovedTag {
                            key: key.to_owned(),
                            tag: record.tag.clone(),
                        })
                })
                .collect(),
        ),
    }
}

fn is_expiring_lww(record: &LwwRecord, now: u64) -> bool {
    !record.is_tombstone() && record.is_expired(now)
}

/// The tombstone that expires `record` (the same rule as [`LwwReplica::expire`], which works
/// on a whole map at once and so cannot be sliced).
fn expiry_tombstone(record: &LwwRecord, node_id: &str) -> LwwRecord {
    let ttl = record.ttl_ms.unwrap_or(0);
    LwwRecord {
        value: None,
        timestamp: Timestamp::new(record.timestamp.millis.saturating_add(ttl), 0, node_id),
        ttl_ms: None,
    }
}

fn expire_lww(
    replica: &mut LwwReplica,
    map: &str,
    keys: &[String],
    now: u64,
    node_id: &str,
) -> SliceChanges {
    let mut changes = SliceChanges::default();
    for key in keys {
        let Some(record) = replica.map().record(key) else {
            continue;
        };
        if !is_expiring_lww(record, now) {
            continue;
        }
        let tombstone = expiry_tombstone(record, node_id);
        // Encoded before the merge, so no tombstone is applied without being stored.
        let put = match Mutation::put_lww(map, key.as_str(), &tombstone) {
            Ok(put) => put,
            Err(error) => {
                tracing::error!(map, key, %error, "expiry tombstone not storable: key kept");
                continue;
            }
        };
        let expired = record.clone();
        if !replica.merge(key, tombstone.clone()).is_applied() {
            continue;
        }
        changes.journal.push(super::journal::Change::lww(
            map,
            key,
            &tombstone,
            Some(&expired),
        ));
        changes.batch.push(put);
        changes.events.push(ServerEventPayload {
            map_name: map.to_owned(),
            key: key.clone(),
            event_type: EventType::Remove,
            record: Some(tombstone),
            or_record: None,
            or_tag: None,
            epoch: None,
        });
    }
    changes
}

fn expire_or(replica: &mut OrReplica, map: &str, tags: &[RemovedTag], now: u64) -> SliceChanges {
    let mut changes = SliceChanges::default();
    let mut removed = Vec::new();
    let mut touched: Vec<&str> = Vec::new();
    for candidate in tags {
        let still_expired = replica
            .map()
            .records(&candidate.key)
            .any(|record| record.tag == candidate.tag && record.is_expired(now));
        if !still_expired {
            continue;
        }
        let values = |r: &OrReplica| -> Vec<serde_json::Value> {
            r.map()
                .records(&candidate.key)
                .map(|record| record.value.clone())
                .collect()
        };
        let before = values(replica);
        if replica.apply_tombstone(&candidate.tag).is_none() {
            continue;
        }
        changes.journal.push(super::journal::Change::or(
            map,
            &candidate.key,
            before,
            values(replica),
            true,
            None,
        ));
        removed.push(candidate.tag.clone());
        touched.push(&candidate.key);
        changes.events.push(ServerEventPayload {
            map_name: map.to_owned(),
            key: candidate.key.clone(),
            event_type: EventType::OrRemove,
            record: None,
            or_record: None,
            or_tag: Some(candidate.tag.clone()),
            epoch: None,
        });
    }
    if removed.is_empty() {
        return changes;
    }
    changes.batch.push(Mutation::AddOrTombstones {
        map: map.to_owned(),
        tags: removed,
    });
    touched.sort_unstable();
    touched.dedup();
    for key in touched {
        changes.batch.push(Mutation::PutOrKey {
            map: map.to_owned(),
            key: key.to_owned(),
            records: replica.map().records(key).cloned().collect(),
        });
    }
    changes
}

/// Persists a slice, then fans its events out to every subscriber of the map.
async fn publish(shared: &Shared, map: &str, changes: SliceChanges) -> Result<(), GcError> {
    if changes.batch.is_empty() {
        return Ok(());
    }
    let mut batch = changes.batch;
    shared
        .journal
        .append(shared, changes.journal, &mut batch)
        .await;
    commit(shared, map, batch).await?;
    let mut events = BTreeMap::new();
    events.insert(map.to_owned(), changes.events);
    // Expired documents leave search results like deleted ones.
    shared.search.note_writes(&events);
    operations::fan_out_server_events(shared, events);
    Ok(())
}

async fn commit(shared: &Shared, map: &str, batch: WriteBatch) -> Result<(), GcError> {
    shared
        .store
        .commit(batch)
        .await
        .map_err(|source| GcError::Persist {
            map: map.to_owned(),
            source,
        })
}

/// Forgets the map's tombstones older than `horizon`, in memory and in the store.
async fn prune_map(
    shared: &Shared,
    map: &MapHandle,
    horizon: &Timestamp,
) -> Result<usize, GcError> {
    let name = map.name().to_owned();
    let (batch, pruned) = {
        let mut guard = map.lock();
        let mut batch = WriteBatch::new();
        let pruned = match &mut *guard {
            Replica::Lww(replica) => {
                let keys = replica.prune(horizon);
                let count = keys.len();
                for key in keys {
                    batch.push(Mutation::DeleteLww {
                        map: name.clone(),
                        key,
                    });
                }
                count
            }
            Replica::Or(replica) => {
                let tags = replica.prune(horizon);
                let count = tags.len();
                if count > 0 {
                    batch.push(Mutation::RemoveOrTombstones {
                        map: name.clone(),
                        tags,
                    });
                }
                count
            }
        };
        (batch, pruned)
    };
    if !batch.is_empty() {
        commit(shared, &name, batch).await?;
    }
    Ok(pruned)
}

fn broadcast_prune(shared: &Shared, horizon: &Timestamp) {
    let message = GcPrune {
        payload: GcPrunePayload {
            older_than: horizon.clone(),
        },
    }
    .into();
    for conn in shared.gc_audience.members(&shared.connections) {
        if let Err(e) = send_to(shared, &conn, &message) {
            tracing::debug!(conn = conn.id, error = %e, "GC_PRUNE not delivered");
        }
    }
}

#[cfg(test)]
mod tests;
