//! A map replica: a CRDT map and its Merkle tree, kept in step on every change.
//!
//! Both the server and the client hold maps this way, so a change can never update the data
//! without the tree (or the other way round) and the roots they compare always describe the
//! data they hold.

use crate::hlc::Timestamp;
use crate::lww::{LwwMap, MergeOutcome, Merged};
use crate::merkle::{MerkleTree, lww_item_hash, or_entry_hash};
use crate::ormap::{MergeKeyOutcome, OrMap, RemovedTag};
use crate::record::{LwwRecord, OrMapRecord};

/// Which CRDT a map holds.
pub use crate::store::MapKind;

/// An LWW map with its Merkle tree.
#[derive(Debug, Clone, Default)]
pub struct LwwReplica {
    map: LwwMap,
    merkle: MerkleTree,
}

impl LwwReplica {
    /// A replica holding `records` (as reloaded from a store).
    pub fn from_records(records: impl IntoIterator<Item = (String, LwwRecord)>) -> Self {
        let mut replica = Self::default();
        for (key, record) in records {
            replica.merge(&key, record);
        }
        replica
    }

    /// LWW-merges one record; the tree follows when it wins.
    pub fn merge(&mut self, key: &str, record: LwwRecord) -> MergeOutcome {
        match self.try_merge(key, record) {
            Merged::Applied { previous, .. } => MergeOutcome::Applied { previous },
            Merged::Ignored(_) => MergeOutcome::Ignored,
        }
    }

    /// [`LwwReplica::merge`] that hands an ignored record back (see [`LwwMap::try_merge`]).
    pub fn try_merge(&mut self, key: &str, record: LwwRecord) -> Merged<'_> {
        let hash = lww_item_hash(key, &record.timestamp);
        let merged = self.map.try_merge(key, record);
        if matches!(merged, Merged::Applied { .. }) {
            self.merkle.update(key, hash);
        }
        merged
    }

    /// Withdraws `key`'s record if it still carries `timestamp` (see [`LwwMap::forget`]).
    pub fn forget(&mut self, key: &str, timestamp: &Timestamp) -> bool {
        let forgotten = self.map.forget(key, timestamp);
        if forgotten {
            self.merkle.remove(key);
        }
        forgotten
    }

    /// Turns TTL-expired records into tombstones (see [`LwwMap::expire`]).
    pub fn expire(&mut self, now_millis: u64, server_node_id: &str) -> Vec<(String, LwwRecord)> {
        let tombstones = self.map.expire(now_millis, server_node_id);
        for (key, record) in &tombstones {
            self.merkle
                .update(key, lww_item_hash(key, &record.timestamp));
        }
        tombstones
    }

    /// Drops tombstones older than `older_than` from the map and the tree.
    pub fn prune(&mut self, older_than: &Timestamp) -> Vec<String> {
        let keys = self.map.prune(older_than);
        for key in &keys {
            self.merkle.remove(key);
        }
        keys
    }

    /// The CRDT (read-only: changes go through the replica).
    pub fn map(&self) -> &LwwMap {
        &self.map
    }

    /// The Merkle tree over every key, tombstones included.
    pub fn merkle(&self) -> &MerkleTree {
        &self.merkle
    }
}

/// An OR map with its Merkle tree.
#[derive(Debug, Clone, Default)]
pub struct OrReplica {
    map: OrMap,
    merkle: MerkleTree,
}

impl OrReplica {
    /// A replica holding `records` and `tombstones` (as reloaded from a store).
    pub fn from_parts(
        records: impl IntoIterator<Item = (String, Vec<OrMapRecord>)>,
        tombstones: impl IntoIterator<Item = String>,
    ) -> Self {
        let mut replica = Self::default();
        for tag in tombstones {
            replica.map.apply_tombstone(&tag);
        }
        for (key, key_records) in records {
            for record in key_records {
                replica.map.apply(&key, record);
            }
            replica.rehash(&key);
        }
        replica
    }

    /// Adds one record (an `OR_ADD`); false when it was already known or is tombstoned.
    pub fn apply(&mut self, key: &str, record: OrMapRecord) -> bool {
        let changed = self.map.apply(key, record);
        if changed {
            self.rehash(key);
        }
        changed
    }

    /// Removes one tag (an `OR_REMOVE`); returns the key that lost a record.
    pub fn apply_tombstone(&mut self, tag: &str) -> Option<String> {
        let key = self.map.apply_tombstone(tag);
        if let Some(key) = &key {
            self.rehash(key);
        }
        key
    }

    /// The sync path: merges a remote key's records and tombstones.
    pub fn merge_key(
        &mut self,
        key: &str,
        records: impl IntoIterator<Item = OrMapRecord>,
        tombstones: impl IntoIterator<Item = String>,
    ) -> MergeKeyOutcome {
        let outcome = self.map.merge_key(key, records, tombstones);
        for touched in outcome.touched_keys(key) {
            self.rehash(&touched);
        }
        outcome
    }

    /// Turns TTL-expired records into tombstones.
    pub fn expire(&mut self, now_millis: u64) -> Vec<RemovedTag> {
        let removed = self.map.expire(now_millis);
        let mut keys: Vec<String> = removed.iter().map(|r| r.key.clone()).collect();
        keys.dedup();
        for key in &keys {
            self.rehash(key);
        }
        removed
    }

    /// Drops tombstone tags older than `older_than` (the tree does not hash tombstones).
    pub fn prune(&mut self, older_than: &Timestamp) -> Vec<String> {
        self.map.prune(older_than)
    }

    /// The CRDT (read-only: changes go through the replica).
    pub fn map(&self) -> &OrMap {
        &self.map
    }

    /// The Merkle tree over every key with live records.
    pub fn merkle(&self) -> &MerkleTree {
        &self.merkle
    }

    fn rehash(&mut self, key: &str) {
        let mut records = self.map.records(key).peekable();
        if records.peek().is_none() {
            self.merkle.remove(key);
        } else {
            let hash = or_entry_hash(key, records);
            self.merkle.update(key, hash);
        }
    }
}

/// A map of either kind.
#[derive(Debug, Clone)]
pub enum Replica {
    Lww(LwwReplica),
    Or(OrReplica),
}

impl Replica {
    /// An empty replica of `kind`.
    pub fn empty(kind: MapKind) -> Self {
        match kind {
            MapKind::Lww => Self::Lww(LwwReplica::default()),
            MapKind::Or => Self::Or(OrReplica::default()),
        }
    }

    /// Which CRDT this is.
    pub fn kind(&self) -> MapKind {
        match self {
            Self::Lww(_) => MapKind::Lww,
            Self::Or(_) => MapKind::Or,
        }
    }

    /// The Merkle tree.
    pub fn merkle(&self) -> &MerkleTree {
        match self {
            Self::Lww(r) => r.merkle(),
            Self::Or(r) => r.merkle(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::Combine;
    use serde_json::json;

    fn lww(value: serde_json::Value, millis: u64, node: &str) -> LwwRecord {
        LwwRecord {
            value: Some(value.into()),
            timestamp: Timestamp::new(millis, 0, node),
            ttl_ms: None,
        }
    }

    #[test]
    fn lww_tree_follows_winning_merges_only() {
        let mut r = LwwReplica::default();
        r.merge("user-1", lww(json!(1), 1_700_000_000_000, "node-1"));
        assert_eq!(r.merkle().root(Combine::Sum), 4_066_377_064);
        r.merge("user-1", lww(json!(2), 1_600_000_000_000, "node-1"));
        assert_eq!(
            r.merkle().root(Combine::Sum),
            4_066_377_064,
            "a losing write changes nothing"
        );
        assert_eq!(r.merkle().root(Combine::Fmix), 752_903_945);
    }

    #[test]
    fn forgetting_a_record_takes_it_out_of_the_tree() {
        let mut r = LwwReplica::default();
        r.merge("a", lww(json!(1), 10, "n"));
        let before = r.merkle().root(Combine::Fmix);
        r.merge("b", lww(json!(2), 20, "n"));
        assert!(!r.forget("b", &Timestamp::new(19, 0, "n")), "another write");
        assert!(r.forget("b", &Timestamp::new(20, 0, "n")));
        assert_eq!(r.map().record("b"), None);
        assert_eq!(r.merkle().root(Combine::Fmix), before);
    }

    #[test]
    fn reload_gives_the_same_roots() {
        let mut a = LwwReplica::default();
        a.merge("a", lww(json!("x"), 10, "n"));
        a.merge("b", lww(json!("y"), 11, "n"));
        let b = LwwReplica::from_records(a.map().records().map(|(k, r)| (k.to_owned(), r.clone())));
        assert_eq!(
            a.merkle().root(Combine::Fmix),
            b.merkle().root(Combine::Fmix)
        );
    }

    #[test]
    fn or_tree_tracks_adds_and_removes() {
        let mut r = OrReplica::default();
        let record = OrMapRecord {
            value: json!("v"),
            timestamp: Timestamp::new(1_700_000_000_000, 0, "n1"),
            tag: "1700000000000:0:n1".into(),
            ttl_ms: None,
        };
        assert!(r.apply("k", record.clone()));
        assert_eq!(r.merkle().root(Combine::Sum), 250_738_279);
        assert_eq!(r.apply_tombstone(&record.tag).as_deref(), Some("k"));
        assert_eq!(r.merkle().root(Combine::Sum), 0);
        assert!(!r.apply("k", record), "a tombstoned tag stays removed");
        let reloaded = OrReplica::from_parts(Vec::new(), ["1700000000000:0:n1".to_owned()]);
        assert!(reloaded.map().is_tombstoned("1700000000000:0:n1"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn lww_op() -> impl Strategy<Value = (String, LwwRecord)> {
            (
                0u8..6,
                0u64..50,
                0u32..3,
                0u8..3,
                proptest::option::of(0i64..100),
            )
                .prop_map(|(key, millis, counter, node, value)| {
                    (
                        format!("k{key}"),
                        LwwRecord {
                            value: value.map(|v| json!(v)).map(Into::into),
                            timestamp: Timestamp::new(millis, counter, format!("n{node}")),
                            ttl_ms: None,
                        },
                    )
                })
        }

        fn or_op() -> impl Strategy<Value = (String, OrMapRecord, bool)> {
            (0u8..4, 0u64..50, 0u8..3, 0i64..5, any::<bool>()).prop_map(
                |(key, millis, node, value, removed)| {
                    let timestamp = Timestamp::new(millis, 0, format!("n{node}"));
                    let record = OrMapRecord {
                        value: json!(value),
                        tag: timestamp.to_string(),
                        timestamp,
                        ttl_ms: None,
                    };
                    (format!("k{key}"), record, removed)
                },
            )
        }

        proptest! {
            /// Replicas that saw the same LWW ops in any order (with duplicates) hold the same
            /// records and the same Merkle roots under both combine functions.
            #[test]
            fn lww_replicas_converge_with_equal_roots(
                ops in proptest::collection::vec(lww_op(), 0..40),
                seed in any::<u64>(),
            ) {
                // Distinct timestamps per write, as HLCs guarantee.
                let mut seen = std::collections::HashSet::new();
                let ops: Vec<_> = ops.into_iter().filter(|(_, r)| seen.insert(r.timestamp.clone())).collect();
                let mut shuffled = ops.clone();
                shuffled.extend(ops.iter().take(5).cloned());
                let n = shuffled.len().max(1);
                shuffled.rotate_left((seed as usize) % n);
                shuffled.reverse();
                let (mut a, mut b) = (LwwReplica::default(), LwwReplica::default());
                for (k, r) in ops { a.merge(&k, r); }
                for (k, r) in shuffled { b.merge(&k, r); }
                prop_assert_eq!(a.map(), b.map());
                for combine in [Combine::Sum, Combine::Fmix] {
                    prop_assert_eq!(a.merkle().root(combine), b.merkle().root(combine));
                }
            }

            /// The same for OR replicas receiving adds and removes in any order.
            #[test]
            fn or_replicas_converge_with_equal_roots(
                ops in proptest::collection::vec(or_op(), 0..30),
            ) {
                let mut seen = std::collections::HashSet::new();
                let ops: Vec<_> = ops.into_iter().filter(|(_, r, _)| seen.insert(r.tag.clone())).collect();
                let apply = |replica: &mut OrReplica, (key, record, removed): &(String, OrMapRecord, bool)| {
                    replica.apply(key, record.clone());
                    if *removed {
                        replica.apply_tombstone(&record.tag);
                    }
                };
                let (mut a, mut b) = (OrReplica::default(), OrReplica::default());
                for op in &ops { apply(&mut a, op); }
                // b sees every remove before the matching add (the worst reordering).
                for (key, record, removed) in ops.iter().rev() {
                    if *removed { b.apply_tombstone(&record.tag); }
                    b.apply(key, record.clone());
                }
                for combine in [Combine::Sum, Combine::Fmix] {
                    prop_assert_eq!(a.merkle().root(combine), b.merkle().root(combine));
                }
                let keys_a: Vec<_> = a.map().keys().collect();
                let keys_b: Vec<_> = b.map().keys().collect();
                prop_assert_eq!(keys_a, keys_b);
            }
        }
    }
}
