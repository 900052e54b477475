//! Merkle sync: the client walks our per-map trie from the root down to the leaves that
//! differ (PROTOCOL.md §3.4, §3.5).
//!
//! Every request is answered (an unknown path gets empty buckets), leaves carry full records
//! including tombstones and TTLs, and roots are computed with the combine function this
//! client uses, so equal data means equal roots and no walk.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::merkle::{Combine, DEEP_SYNC_MARKER, DeepRequest, MerkleTree};
use crate::protocol::{
    BucketRequest, Buckets, BucketsPayload, LeafRecord, OrMapDiffRequestPayload, OrMapDiffResponse,
    OrMapDiffResponsePayload, OrMapEntry, OrMapPushDiffPayload, OrMapSyncInit,
    OrMapSyncRespBuckets, OrMapSyncRespLeaf, OrMapSyncRespLeafPayload, OrMapSyncRespRoot,
    OrMapSyncRespRootPayload, SyncInit, SyncResetRequired, SyncResetRequiredPayload,
    SyncRespBuckets, SyncRespLeaf, SyncRespLeafPayload, SyncRespRoot, SyncRespRootPayload,
};
use crate::replica::{LwwReplica, MapKind, OrReplica, Replica};
use crate::security::Action;

use super::Shared;
use super::dispatch::Flow;
use super::operations::{self, MapChanges};
use super::session::Session;
use super::storage::{MapError, MapHandle};

/// `SYNC_INIT`: answer the LWW root (or ask the client to reset after the GC age).
pub async fn handle_sync_init(shared: &Arc<Shared>, session: &mut Session, m: SyncInit) -> Flow {
    if !may_read(shared, session, &m.map_name)
        || needs_reset(shared, session, &m.map_name, m.last_sync_timestamp)
    {
        return Flow::Continue;
    }
    let Some(map) = load(shared, session, &m.map_name, MapKind::Lww).await else {
        return Flow::Continue;
    };
    let combine = session.combine(shared);
    let root = match &*map.lock() {
        Replica::Lww(r) => Some(r.merkle().root(combine)),
        Replica::Or(_) => None,
    };
    match root {
        Some(root_hash) => {
            let _ = session.send(
                shared,
                SyncRespRoot {
                    payload: SyncRespRootPayload {
                        map_name: m.map_name,
                        root_hash,
                        timestamp: shared.now_timestamp(),
                    },
                },
            );
        }
        None => session.send_error(
            shared,
            501,
            format!("Merkle Sync not supported for ORMap {}", m.map_name),
        ),
    }
    Flow::Continue
}

/// `MERKLE_REQ_BUCKET`: a leaf's records, or a node's child hashes; the root's answer
/// advertises the deep-sync extension ([`DeepRequest`]), which is answered here too.
pub async fn handle_bucket_request(
    shared: &Arc<Shared>,
    session: &mut Session,
    req: BucketRequest,
) -> Flow {
    if !may_read(shared, session, &req.map_name) {
        return Flow::Continue;
    }
    let Some(map) = load(shared, session, &req.map_name, MapKind::Lww).await else {
        return Flow::Continue;
    };
    let combine = session.combine(shared);
    let reply = {
        let guard = map.lock();
        let Replica::Lww(replica) = &*guard else {
            drop(guard);
            session.send_error(
                shared,
                501,
                format!("Merkle Sync not supported for ORMap {}", req.map_name),
            );
            return Flow::Continue;
        };
        match lww_answer(replica.merkle(), &req.path, combine) {
            LwwAnswer::Leaf(keys) => {
                SyncReply::Leaf(leaf_records(shared, session, &req.map_name, replica, keys))
            }
            LwwAnswer::Buckets(buckets) => SyncReply::Buckets(buckets),
        }
    };
    let BucketRequest { map_name, path } = req;
    let _ = match reply {
        SyncReply::Leaf(records) => {
            let rows = records.len();
            let leaf = SyncRespLeaf {
                payload: SyncRespLeafPayload {
                    map_name,
                    path,
                    records,
                },
            };
            session.send_rows(shared, leaf, rows).await
        }
        SyncReply::Buckets(buckets) => session.send(
            shared,
            SyncRespBuckets {
                payload: BucketsPayload {
                    map_name,
                    path,
                    buckets,
                },
            },
        ),
    };
    Flow::Continue
}

/// What a `MERKLE_REQ_BUCKET` for `path` is answered with, before field-level security.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LwwAnswer<'t> {
    /// `SYNC_RESP_LEAF` with the records of these keys.
    Leaf(BTreeSet<&'t str>),
    /// `SYNC_RESP_BUCKETS` with these hashes.
    Buckets(Buckets),
}

/// The answer to `MERKLE_REQ_BUCKET {path}` over `tree`: a standard leaf or node, or a
/// [`DeepRequest`]. The root's buckets carry [`DEEP_SYNC_MARKER`] so our walkers know they
/// may send deep requests.
pub fn lww_answer<'t>(tree: &'t MerkleTree, path: &str, combine: Combine) -> LwwAnswer<'t> {
    match DeepRequest::parse(path) {
        Some(DeepRequest::Expand(prefixes)) => LwwAnswer::Buckets(
            prefixes
                .iter()
                .flat_map(|prefix| tree.prefix_buckets(prefix, combine))
                .collect(),
        ),
        Some(DeepRequest::Fetch(prefixes)) => LwwAnswer::Leaf(
            prefixes
                .iter()
                .flat_map(|prefix| tree.prefix_keys(prefix))
                .collect(),
        ),
        None => match tree.leaf_keys(path) {
            Some(keys) => LwwAnswer::Leaf(keys.collect()),
            None => {
                let mut buckets = bucket_map(tree, path, combine);
                if path.is_empty() {
                    buckets.insert(DEEP_SYNC_MARKER.to_owned(), 0);
                }
                LwwAnswer::Buckets(buckets)
            }
        },
    }
}

/// The records of `keys` as a leaf carries them, with field-level security applied.
fn leaf_records(
    shared: &Shared,
    session: &Session,
    map_name: &str,
    replica: &LwwReplica,
    keys: BTreeSet<&str>,
) -> Vec<LeafRecord> {
    let principal = session.principal();
    keys.into_iter()
        .filter_map(|key| {
            replica.map().record(key).map(|record| {
                // Field-level security: the LWW item hash covers key and timestamp only, so
                // filtered values keep the trees equal; a value withheld entirely reads as
                // deleted.
                let mut record = record.clone();
                record.value = record.value.and_then(|value| {
                    shared
                        .permissions
                        .filter_user_value(principal, map_name, value)
                });
                LeafRecord {
                    key: key.to_owned(),
                    record,
                }
            })
        })
        .collect()
}

enum SyncReply<T> {
    Leaf(Vec<T>),
    Buckets(Buckets),
}

/// `ORMAP_SYNC_INIT`: answer the OR root. The client's own root tells us which combine
/// function it computes, so later answers match its hashes.
pub async fn handle_ormap_sync_init(
    shared: &Arc<Shared>,
    session: &mut Session,
    m: OrMapSyncInit,
) -> Flow {
    if !may_read(shared, session, &m.map_name)
        || needs_reset(shared, session, &m.map_name, m.last_sync_timestamp)
    {
        return Flow::Continue;
    }
    let Some(map) = load_or(shared, session, &m.map_name).await else {
        return Flow::Continue;
    };
    let (sum_root, fmix_root) = {
        let guard = map.lock();
        let tree = guard.merkle();
        (tree.root(Combine::Sum), tree.root(Combine::Fmix))
    };
    if m.claimed_epoch.is_some() || (m.root_hash == fmix_root && m.root_hash != sum_root) {
        session.note_generation(Combine::Fmix);
    } else if m.root_hash == sum_root && m.root_hash != fmix_root {
        session.note_generation(Combine::Sum);
    }
    let root_hash = match session.combine(shared) {
        Combine::Sum => sum_root,
        Combine::Fmix => fmix_root,
    };
    let _ = session.send(
        shared,
        OrMapSyncRespRoot {
            payload: OrMapSyncRespRootPayload {
                map_name: m.map_name,
                root_hash,
                timestamp: shared.now_timestamp(),
                covering_epoch: None,
                full_resync: None,
            },
        },
    );
    Flow::Continue
}

/// `ORMAP_MERKLE_REQ_BUCKET`: a leaf's entries, or a node's child hashes.
pub async fn handle_ormap_bucket_request(
    shared: &Arc<Shared>,
    session: &mut Session,
    req: BucketRequest,
) -> Flow {
    let Some(map) = readable_or_map(shared, session, &req.map_name).await else {
        return Flow::Continue;
    };
    let combine = session.combine(shared);
    let reply = with_or(&map, |replica| {
        match replica.merkle().leaf_keys(&req.path) {
            Some(keys) => {
                let keys: Vec<String> = keys.map(str::to_owned).collect();
                SyncReply::Leaf(or_entries(replica, &keys))
            }
            None => SyncReply::Buckets(bucket_map(replica.merkle(), &req.path, combine)),
        }
    });
    let BucketRequest { map_name, path } = req;
    let _ = match reply {
        Some(SyncReply::Leaf(entries)) => {
            let rows = or_rows(&entries);
            let leaf = OrMapSyncRespLeaf {
                payload: OrMapSyncRespLeafPayload {
                    map_name,
                    path,
                    entries,
                    covering_epoch: None,
                },
            };
            session.send_rows(shared, leaf, rows).await
        }
        Some(SyncReply::Buckets(buckets)) => session.send(
            shared,
            OrMapSyncRespBuckets {
                payload: BucketsPayload {
                    map_name,
                    path,
                    buckets,
                },
            },
        ),
        None => {
            session.send_error(shared, 400, format!("Map {map_name} is not an ORMap"));
            Ok(())
        }
    };
    Flow::Continue
}

/// `ORMAP_DIFF_REQUEST`: the entries of the requested keys (`records: []` when unknown).
pub async fn handle_ormap_diff_request(
    shared: &Arc<Shared>,
    session: &mut Session,
    req: OrMapDiffRequestPayload,
) -> Flow {
    let Some(map) = readable_or_map(shared, session, &req.map_name).await else {
        return Flow::Continue;
    };
    if let Some(entries) = with_or(&map, |replica| or_entries(replica, &req.keys)) {
        let rows = or_rows(&entries);
        let response = OrMapDiffResponse {
            payload: OrMapDiffResponsePayload {
                map_name: req.map_name,
                entries,
                covering_epoch: None,
            },
        };
        let _ = session.send_rows(shared, response, rows).await;
    }
    Flow::Continue
}

/// `ORMAP_PUSH_DIFF`: merge the client's entries (records and tombstones), persist, and tell
/// the map's other subscribers. No reply: an `OP_ACK` here would name no real op.
pub async fn handle_ormap_push_diff(
    shared: &Arc<Shared>,
    session: &mut Session,
    push: OrMapPushDiffPayload,
) -> Flow {
    if !shared
        .permissions
        .check(session.principal(), &push.map_name, Action::Put)
    {
        session.send_error(
            shared,
            403,
            format!("Access Denied for map {}", push.map_name),
        );
        return Flow::Continue;
    }
    let Some(map) = load_or(shared, session, &push.map_name).await else {
        return Flow::Continue;
    };
    let mut changes = MapChanges::default();
    for mut entry in push.entries {
        // Under HLC strict mode a record too far ahead of our clock is dropped, not merged.
        entry
            .records
            .retain(|record| match shared.hlc().update(&record.timestamp) {
                Ok(()) => true,
                Err(e) => {
                    tracing::info!(conn = session.id, error = %e, "dropping pushed OR record");
                    false
                }
            });
        operations::merge_or_entry(&map, entry, &mut changes);
    }
    operations::finish_changes(shared, session, changes).await;
    Flow::Continue
}

fn or_entries(replica: &OrReplica, keys: &[String]) -> Vec<OrMapEntry> {
    let tombstones: Vec<String> = replica.map().tombstones().map(str::to_owned).collect();
    keys.iter()
        .map(|key| OrMapEntry {
            key: key.clone(),
            records: replica.map().records(key).cloned().collect(),
            tombstones: tombstones.clone(),
        })
        .collect()
}

/// The size of OR entries for the pool threshold: records plus the tombstone list each
/// entry repeats.
fn or_rows(entries: &[OrMapEntry]) -> usize {
    entries
        .iter()
        .map(|e| e.records.len() + e.tombstones.len())
        .sum()
}

fn bucket_map(tree: &MerkleTree, path: &str, combine: Combine) -> Buckets {
    tree.buckets(path, combine)
        .into_iter()
        .map(|(c, h)| (c.to_string(), h))
        .collect::<BTreeMap<_, _>>()
}

fn with_or<T>(map: &MapHandle, f: impl FnOnce(&OrReplica) -> T) -> Option<T> {
    match &*map.lock() {
        Replica::Or(replica) => Some(f(replica)),
        Replica::Lww(_) => None,
    }
}

/// READ permission on `map`, answering `ERROR 403` when denied.
pub fn may_read(shared: &Shared, session: &Session, map: &str) -> bool {
    let allowed = shared
        .permissions
        .check(session.principal(), map, Action::Read);
    if !allowed {
        session.send_error(shared, 403, format!("Access Denied for map {map}"));
    }
    allowed
}

/// True (and `SYNC_RESET_REQUIRED` sent) when the client last synced before the GC age.
fn needs_reset(shared: &Shared, session: &Session, map: &str, last_sync: Option<u64>) -> bool {
    let Some(last) = last_sync.filter(|t| *t > 0) else {
        return false;
    };
    if shared.now_millis().saturating_sub(last) <= shared.limits.gc_age_ms {
        return false;
    }
    let _ = session.send(
        shared,
        SyncResetRequired {
            payload: SyncResetRequiredPayload {
                map_name: map.to_owned(),
                reason: Some("last sync is older than the garbage-collection age".to_owned()),
            },
        },
    );
    true
}

async fn load(
    shared: &Shared,
    session: &Session,
    map: &str,
    first_touch: MapKind,
) -> Option<MapHandle> {
    match shared.maps.get(map, first_touch, None).await {
        Ok(handle) => Some(handle),
        Err(e) => {
            report_map_error(shared, session, &e);
            None
        }
    }
}

/// The OR map `map` if the client may read it (answering the error otherwise).
async fn readable_or_map(shared: &Shared, session: &Session, map: &str) -> Option<MapHandle> {
    if !may_read(shared, session, map) {
        return None;
    }
    load_or(shared, session, map).await
}

async fn load_or(shared: &Shared, session: &Session, map: &str) -> Option<MapHandle> {
    match shared.maps.get(map, MapKind::Or, Some(MapKind::Or)).await {
        Ok(handle) => Some(handle),
        Err(MapError::KindMismatch { .. }) => {
            session.send_error(shared, 400, format!("Map {map} is not an ORMap"));
            None
        }
        Err(e) => {
            report_map_error(shared, session, &e);
            None
        }
    }
}

/// `ERROR 500` for a failed load (retried on the next access), `ERROR 400` for a kind clash.
pub fn report_map_error(shared: &Shared, session: &Session, error: &MapError) {
    match error {
        MapError::LoadFailed { .. } => {
            tracing::error!(conn = session.id, error = %error, "map load failed");
            session.send_error(shared, 500, error.to_string());
        }
        MapError::KindMismatch { .. } => session.send_error(shared, 400, error.to_string()),
    }
}
