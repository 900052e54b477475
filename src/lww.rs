//! The last-writer-wins map (PROTOCOL.md §4.2): key → [`LwwRecord`], tombstones included.
//!
//! The map is HLC-free: it only compares timestamps. Callers that receive records feed their
//! timestamps to their own [`crate::hlc::Hlc`] and stamp local writes with it. Convergence
//! relies on timestamps being unique per write, which the HLC guarantees (distinct node ids,
//! strictly increasing per node); on an exact tie the local record is kept.

use std::collections::BTreeSet;

use hashbrown::hash_map::EntryRef;
use serde_json::Value;
use smol_str::SmolStr;

use crate::hlc::Timestamp;
use crate::record::LwwRecord;

/// What a merge did to the map.
#[derive(Debug, Clone, PartialEq)]
pub enum MergeOutcome {
    /// The record was stored; `previous` is what it replaced, if anything.
    Applied {
        /// The record that lost, or `None` if the key was new.
        previous: Option<LwwRecord>,
    },
    /// The local record is at least as new; nothing changed.
    Ignored,
}

/// What [`LwwMap::try_merge`] did with a record.
#[derive(Debug, PartialEq)]
pub enum Merged<'a> {
    /// The record won and is stored; `previous` is the record it replaced.
    Applied {
        previous: Option<LwwRecord>,
        stored: &'a LwwRecord,
    },
    /// The record lost (the held one is at least as new); here it is back.
    Ignored(LwwRecord),
}

impl MergeOutcome {
    /// True when the map changed.
    pub fn is_applied(&self) -> bool {
        matches!(self, Self::Applied { .. })
    }
}

/// A last-writer-wins map ordered by key.
///
/// Tombstones (`value: None`) are kept so deletions sync and win against older writes; they
/// are dropped only by [`LwwMap::prune`] once every replica is past the GC horizon.
///
/// Records live in a hash table, so a merge costs one hash probe: a B-tree search compared
/// the key against a dozen others, each a cache miss behind a pointer, and that search was
/// the largest single cost of a server write. Keys of up to 23 bytes are held inline, so the
/// probe reads a hit's key from the table itself rather than behind another pointer; longer
/// ones are shared (`Arc<str>`) with the key order iteration promises, a set of the same keys
/// beside the table, touched only when a key arrives or leaves. Records are
/// boxed: a table doubles as it grows, and half-empty slots of a whole record each cost a
/// server holding 1M records ~80 MiB more than slots of a pointer did.
#[derive(Debug, Clone, Default)]
pub struct LwwMap {
    records: hashbrown::HashMap<SmolStr, Box<LwwRecord>, foldhash::fast::RandomState>,
    order: BTreeSet<SmolStr>,
}

impl PartialEq for LwwMap {
    fn eq(&self, other: &Self) -> bool {
        // `order` is the key set of `records`, so comparing the tables is enough.
        self.records == other.records
    }
}

impl LwwMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `record` iff the key is new or `record.timestamp` is strictly newer than the
    /// local one. Commutative, associative and idempotent.
    pub fn merge(&mut self, key: &str, record: LwwRecord) -> MergeOutcome {
        match self.try_merge(key, record) {
            Merged::Applied { previous, .. } => MergeOutcome::Applied { previous },
            Merged::Ignored(_) => MergeOutcome::Ignored,
        }
    }

    /// [`LwwMap::merge`] that lends the stored record out and hands an ignored one back, so
    /// a caller that still needs the record need not copy it first.
    pub fn try_merge(&mut self, key: &str, record: LwwRecord) -> Merged<'_> {
        // One probe by `&str`: the key is copied only when it is new.
        match self.records.entry_ref(key) {
            EntryRef::Occupied(slot) if record.timestamp > slot.get().timestamp => {
                let local: &mut LwwRecord = slot.into_mut();
                let previous = std::mem::replace(local, record);
                Merged::Applied {
                    previous: Some(previous),
                    stored: local,
                }
            }
            EntryRef::Occupied(_) => Merged::Ignored(record),
            EntryRef::Vacant(slot) => {
                let key = SmolStr::from(key);
                self.order.insert(key.clone());
                Merged::Applied {
                    previous: None,
                    stored: slot.insert_with_key(key, Box::new(record)),
                }
            }
        }
    }

    /// Writes `value` at `timestamp` (normally fresh from the caller's HLC).
    pub fn set(
        &mut self,
        key: &str,
        value: Value,
        timestamp: Timestamp,
        ttl_ms: Option<u64>,
    ) -> MergeOutcome {
        self.merge(
            key,
            LwwRecord {
                value: Some(value.into()),
                timestamp,
                ttl_ms,
            },
        )
    }

    /// Deletes `key` by writing a tombstone at `timestamp`.
    pub fn remove(&mut self, key: &str, timestamp: Timestamp) -> MergeOutcome {
        self.merge(
            key,
            LwwRecord {
                value: None,
                timestamp,
                ttl_ms: None,
            },
        )
    }

    /// Removes `key`'s record if it still carries `timestamp` (a write the server rejected is
    /// withdrawn; a newer write since is kept). Not a CRDT operation: only the writer of that
    /// record may do this, and only for a record no other replica accepted.
    pub fn forget(&mut self, key: &str, timestamp: &Timestamp) -> bool {
        let matches = self
            .records
            .get(key)
            .is_some_and(|record| record.timestamp == *timestamp);
        if matches {
            self.delete(key);
        }
        matches
    }

    /// The live value of `key`: `None` for missing keys, tombstones and expired records.
    pub fn get(&self, key: &str, now_millis: u64) -> Option<&Value> {
        self.records
            .get(key)
            .and_then(|record| live_value(record, now_millis))
    }

    /// The raw record of `key`, tombstones and expired records included (for sync).
    pub fn record(&self, key: &str) -> Option<&LwwRecord> {
        self.records.get(key).map(|record| &**record)
    }

    /// Live, unexpired entries in key order.
    pub fn entries(&self, now_millis: u64) -> impl Iterator<Item = (&str, &Value)> {
        self.records()
            .filter_map(move |(key, record)| Some((key, live_value(record, now_millis)?)))
    }

    /// Every stored record in key order, tombstones and expired records included.
    pub fn records(&self) -> impl Iterator<Item = (&str, &LwwRecord)> {
        self.order
            .iter()
            .filter_map(|key| Some((&**key, &**self.records.get(&**key)?)))
    }

    /// Number of stored records, tombstones included.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when no records, not even tombstones, are stored.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Turns every TTL-expired live record into a tombstone timestamped
    /// `{millis: timestamp.millis + ttl, counter: 0, nodeId: server_node_id}` (§3.14) and
    /// returns the new tombstones so callers can broadcast and persist them.
    ///
    /// The tombstone goes through [`LwwMap::merge`], so it never overrides a newer write; with
    /// `ttl ≥ 1` (enforced at ingress) it is always newer than the record it expires.
    pub fn expire(&mut self, now_millis: u64, server_node_id: &str) -> Vec<(String, LwwRecord)> {
        let expired: Vec<(String, LwwRecord)> = self
            .records()
            .filter(|(_, record)| !record.is_tombstone() && record.is_expired(now_millis))
            .map(|(key, record)| (key.to_owned(), expiry_tombstone(record, server_node_id)))
            .collect();
        expired
            .into_iter()
            .filter(|(key, tombstone)| self.merge(key, tombstone.clone()).is_applied())
            .collect()
    }

    /// Deletes tombstones older than `older_than` and returns their keys, so callers can drop
    /// them from the Merkle tree and the store.
    pub fn prune(&mut self, older_than: &Timestamp) -> Vec<String> {
        let doomed: Vec<String> = self
            .records()
            .filter(|(_, record)| record.is_tombstone() && record.timestamp < *older_than)
            .map(|(key, _)| key.to_owned())
            .collect();
        for key in &doomed {
            self.delete(key);
        }
        doomed
    }

    /// Drops `key`'s record and its place in the order.
    fn delete(&mut self, key: &str) {
        self.records.remove(key);
        self.order.remove(key);
    }
}

fn live_value(record: &LwwRecord, now_millis: u64) -> Option<&Value> {
    if record.is_expired(now_millis) {
        return None;
    }
    record.value.as_deref()
}

fn expiry_tombstone(record: &LwwRecord, server_node_id: &str) -> LwwRecord {
    let ttl = record.ttl_ms.unwrap_or(0);
    LwwRecord {
        value: None,
        timestamp: Timestamp::new(
            record.timestamp.millis.saturating_add(ttl),
            0,
            server_node_id,
        ),
        ttl_ms: None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn ts(millis: u64, counter: u32, node: &str) -> Timestamp {
        Timestamp::new(millis, counter, node)
    }

    fn rec(value: Option<Value>, timestamp: Timestamp) -> LwwRecord {
        LwwRecord {
            value: value.map(Into::into),
            timestamp,
            ttl_ms: None,
        }
    }

    #[test]
    fn newer_wins_older_and_ties_are_ignored() {
        let mut map = LwwMap::new();
        assert_eq!(
            map.set("k", json!(1), ts(10, 0, "a"), None),
            MergeOutcome::Applied { previous: None }
        );
        assert_eq!(
            map.set("k", json!(2), ts(10, 0, "a"), None),
            MergeOutcome::Ignored
        );
        assert_eq!(
            map.set("k", json!(0), ts(9, 5, "z"), None),
            MergeOutcome::Ignored
        );
        assert_eq!(
            map.set("k", json!(3), ts(10, 0, "b"), None),
            MergeOutcome::Applied {
                previous: Some(rec(Some(json!(1)), ts(10, 0, "a")))
            }
        );
        assert_eq!(map.get("k", 0), Some(&json!(3)));
    }

    #[test]
    fn tombstones_hide_values_but_stay_as_records() {
        let mut map = LwwMap::new();
        map.set("k", json!("v"), ts(1, 0, "a"), None);
        assert!(map.remove("k", ts(2, 0, "a")).is_applied());
        assert_eq!(map.get("k", 0), None);
        assert_eq!(map.record("k"), Some(&rec(None, ts(2, 0, "a"))));
        assert_eq!(map.len(), 1);
        assert_eq!(map.entries(0).count(), 0);
        assert!(!map.set("k", json!("old"), ts(1, 5, "b"), None).is_applied());
        assert!(map.set("k", json!("new"), ts(3, 0, "b"), None).is_applied());
        assert_eq!(map.get("k", 0), Some(&json!("new")));
    }

    #[test]
    fn expired_records_are_hidden_then_tombstoned_at_expiry_time() {
        let mut map = LwwMap::new();
        map.set("ttl", json!(1), ts(100, 4, "a"), Some(50));
        map.set("keep", json!(2), ts(100, 0, "a"), None);
        assert_eq!(map.get("ttl", 150), Some(&json!(1)));
        assert_eq!(map.get("ttl", 151), None);
        let live: Vec<_> = map.entries(151).collect();
        assert_eq!(live, vec![("keep", &json!(2))]);

        assert!(map.expire(150, "srv").is_empty());
        let tombstones = map.expire(151, "srv");
        assert_eq!(
            tombstones,
            vec![("ttl".to_owned(), rec(None, ts(150, 0, "srv")))]
        );
        assert_eq!(map.record("ttl"), Some(&rec(None, ts(150, 0, "srv"))));
        assert!(map.expire(10_000, "srv").is_empty(), "already tombstoned");
        // a later write beats the expiry tombstone
        assert!(map.set("ttl", json!(9), ts(150, 1, "a"), None).is_applied());
    }

    #[test]
    fn prune_drops_only_tombstones_older_than_horizon() {
        let mut map = LwwMap::new();
        map.remove("old", ts(10, 0, "a"));
        map.remove("edge", ts(20, 0, "a"));
        map.set("value", json!(1), ts(5, 0, "a"), None);
        assert_eq!(map.prune(&ts(20, 0, "a")), vec!["old".to_owned()]);
        let keys: Vec<_> = map.records().map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["edge", "value"]);
        assert!(!map.is_empty());
    }

    fn op() -> impl Strategy<Value = (String, LwwRecord)> {
        (
            // Short keys are held inline, longer than 23 bytes behind a pointer: both kinds.
            prop::sample::select(vec![
                "a",
                "b",
                "c",
                "abcdefghijklmnopqrstuvw",
                "abcdefghijklmnopqrstuvwxyz0123456789",
            ]),
            0u64..20,
            0u32..3,
            prop::sample::select(vec!["n1", "n2", "n3"]),
            prop::option::of(0i64..100),
            prop::option::of(1u64..10),
        )
            .prop_map(|(key, millis, counter, node, value, ttl_ms)| {
                (
                    key.to_owned(),
                    LwwRecord {
                        value: value.map(|v| Value::from(v).into()),
                        timestamp: ts(millis, counter, node),
                        ttl_ms,
                    },
                )
            })
    }

    /// Operations with unique timestamps, as an HLC would issue them.
    fn unique_ops() -> impl Strategy<Value = Vec<(String, LwwRecord)>> {
        prop::collection::vec(op(), 0..40).prop_map(|ops| {
            let mut seen = std::collections::HashSet::new();
            ops.into_iter()
                .filter(|(_, r)| seen.insert(r.timestamp.clone()))
                .collect()
        })
    }

    fn apply_all(ops: &[(String, LwwRecord)]) -> LwwMap {
        let mut map = LwwMap::new();
        for (key, record) in ops {
            map.merge(key, record.clone());
        }
        map
    }

    proptest! {
        #[test]
        fn iteration_follows_key_order_through_merges_forgets_and_prunes(
            ops in unique_ops(), forgets in prop::collection::vec(0usize..40, 0..10), horizon in 0u64..20,
        ) {
            let mut map = LwwMap::new();
            let mut model = std::collections::BTreeMap::new();
            for (key, record) in &ops {
                if model.get(key).is_none_or(|held: &LwwRecord| record.timestamp > held.timestamp) {
                    model.insert(key.clone(), record.clone());
                }
                map.merge(key, record.clone());
            }
            for index in forgets {
                if let Some((key, record)) = ops.get(index) {
                    if map.forget(key, &record.timestamp) {
                        model.remove(key);
                    }
                }
            }
            let pruned = map.prune(&ts(horizon, 0, "n0"));
            model.retain(|key, _| !pruned.contains(key));
            let listed: Vec<_> = map.records().map(|(k, r)| (k.to_owned(), r.clone())).collect();
            let expected: Vec<_> = model.into_iter().collect();
            prop_assert_eq!(map.len(), expected.len());
            prop_assert_eq!(map.order.len(), expected.len(), "no stale keys in the order");
            prop_assert_eq!(listed, expected);
        }

        #[test]
        fn replicas_converge_regardless_of_order_and_duplicates(
            (ops, shuffled) in unique_ops().prop_flat_map(|ops| {
                let doubled: Vec<_> = ops.iter().chain(ops.iter()).cloned().collect();
                (Just(ops), Just(doubled).prop_shuffle())
            })
        ) {
            prop_assert_eq!(apply_all(&ops), apply_all(&shuffled));
        }

        #[test]
        fn merging_replica_states_is_associative_and_commutative(
            a in unique_ops(), b in unique_ops(), c in unique_ops(),
        ) {
            // ops shared between replicas must agree per timestamp, so draw them from one pool
            let pool: Vec<_> = a.iter().chain(&b).chain(&c).cloned().collect();
            let mut seen = std::collections::HashSet::new();
            let pool: Vec<_> = pool.into_iter().filter(|(_, r)| seen.insert(r.timestamp.clone())).collect();
            let third = pool.len() / 3;
            let (x, rest) = pool.split_at(third);
            let (y, z) = rest.split_at(third);
            let merge_states = |l: &LwwMap, r: &LwwMap| {
                let mut out = l.clone();
                for (k, rec) in r.records() {
                    out.merge(k, rec.clone());
                }
                out
            };
            let (mx, my, mz) = (apply_all(x), apply_all(y), apply_all(z));
            let left = merge_states(&merge_states(&mx, &my), &mz);
            let right = merge_states(&mx, &merge_states(&my, &mz));
            let swapped = merge_states(&merge_states(&mz, &my), &mx);
            prop_assert_eq!(&left, &right);
            prop_assert_eq!(&left, &swapped);
            prop_assert_eq!(&left, &merge_states(&left, &left));
            prop_assert_eq!(left, apply_all(&pool));
        }
    }
}
