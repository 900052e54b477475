//! The observed-remove map (PROTOCOL.md §4.3): key → (tag → [`OrMapRecord`]) plus one
//! map-wide set of tombstoned tags. Adds win per tag; a remove only kills the tags it saw.
//!
//! Like [`crate::lww::LwwMap`] the map is HLC-free: callers update their HLC from the records
//! they receive and stamp local adds with it.
//!
//! # Bounded tombstones
//!
//! Every remove leaves its tag in the tombstone set so that a late copy of the add cannot
//! resurrect the value. The set is bounded only by [`OrMap::prune`]: callers must prune at a
//! GC horizon that every replica has passed (the 2026-01 server uses min-active-HLC − 30 days,
//! §3.14); after that the set holds at most the tags removed since the horizon, however long
//! a key has been churned (TOPGUN-REFERENCE §5 defect 32).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use crate::hlc::Timestamp;
use crate::record::OrMapRecord;

/// A record that left the map, with the key it was stored under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedTag {
    /// The key that lost a record.
    pub key: String,
    /// The tag of the removed record (now tombstoned).
    pub tag: String,
}

/// What [`OrMap::merge_key`] changed, so callers can emit events and update Merkle and store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergeKeyOutcome {
    /// Records whose tag was new to this map.
    pub added: Vec<OrMapRecord>,
    /// Records that replaced an older record with the same tag.
    pub updated: Vec<OrMapRecord>,
    /// Local records dropped because the remote tombstoned their tag (any key).
    pub removed: Vec<RemovedTag>,
}

impl MergeKeyOutcome {
    /// True when the merge changed nothing.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.updated.is_empty() && self.removed.is_empty()
    }

    /// The keys whose record set changed, sorted and unique: every key that lost a record,
    /// plus `key` (the merged key) when it gained or replaced one.
    pub fn touched_keys(&self, key: &str) -> Vec<String> {
        let mut touched: Vec<&str> = self.removed.iter().map(|r| r.key.as_str()).collect();
        if !self.added.is_empty() || !self.updated.is_empty() {
            touched.push(key);
        }
        touched.sort_unstable();
        touched.dedup();
        touched.into_iter().map(str::to_owned).collect()
    }
}

/// How a single record was applied.
enum Applied {
    Added,
    Updated,
    Ignored,
}

/// An observed-remove map with O(1) tag → key lookup for tombstones.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrMap {
    items: BTreeMap<String, BTreeMap<String, OrMapRecord>>,
    tombstones: BTreeSet<String>,
    /// Which key holds each live tag, so a tombstone finds its record without a scan.
    tag_keys: HashMap<String, String>,
}

impl OrMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value` under `key` with the tag `timestamp.to_string()` (normally a fresh HLC
    /// timestamp). Returns the record to send as `OR_ADD`, or `None` if that tag was already
    /// used or tombstoned (a reused timestamp).
    pub fn add(
        &mut self,
        key: &str,
        value: Value,
        timestamp: Timestamp,
        ttl_ms: Option<u64>,
    ) -> Option<OrMapRecord> {
        let record = OrMapRecord {
            value,
            tag: timestamp.to_string(),
            timestamp,
            ttl_ms,
        };
        self.apply(key, record.clone()).then_some(record)
    }

    /// Stores a remote record. Ignored (returns `false`) if its tag is tombstoned, if the same
    /// tag is held with an equal or newer timestamp, or if the tag already belongs to another
    /// key (tags are unique per add, so that is a malformed op).
    pub fn apply(&mut self, key: &str, record: OrMapRecord) -> bool {
        !matches!(self.apply_record(key, record), Applied::Ignored)
    }

    fn apply_record(&mut self, key: &str, record: OrMapRecord) -> Applied {
        if self.tombstones.contains(&record.tag) {
            return Applied::Ignored;
        }
        match self.tag_keys.get(&record.tag) {
            Some(owner) if owner != key => Applied::Ignored,
            Some(_) => {
                let local = self
                    .items
                    .get_mut(key)
                    .and_then(|tags| tags.get_mut(&record.tag));
                match local {
                    Some(local) if record.timestamp > local.timestamp => {
                        *local = record;
                        Applied::Updated
                    }
                    _ => Applied::Ignored,
                }
            }
            None => {
                self.tag_keys.insert(record.tag.clone(), key.to_owned());
                self.items
                    .entry(key.to_owned())
                    .or_default()
                    .insert(record.tag.clone(), record);
                Applied::Added
            }
        }
    }

    /// Tombstones `tag` and drops its record, returning the key that held it (if any).
    pub fn apply_tombstone(&mut self, tag: &str) -> Option<String> {
        if !self.tombstones.contains(tag) {
            self.tombstones.insert(tag.to_owned());
        }
        let key = self.tag_keys.remove(tag)?;
        if let Some(tags) = self.items.get_mut(&key) {
            tags.remove(tag);
            if tags.is_empty() {
                self.items.remove(&key);
            }
        }
        Some(key)
    }

    /// Client-side remove: tombstones every tag under `key` whose value equals `value` and
    /// returns those tags (one `OR_REMOVE` op each).
    ///
    /// Equality is structural (`serde_json::Value`), where JS compares objects by identity;
    /// structural is what a caller holding a value it read back can actually match.
    pub fn remove_value(&mut self, key: &str, value: &Value) -> Vec<String> {
        let tags: Vec<String> = self
            .records(key)
            .filter(|record| record.value == *value)
            .map(|record| record.tag.clone())
            .collect();
        for tag in &tags {
            self.apply_tombstone(tag);
        }
        tags
    }

    /// The sync path: applies remote `tombstones` (map-wide), then every remote record of
    /// `key` that is not tombstoned. Commutative and idempotent.
    pub fn merge_key(
        &mut self,
        key: &str,
        records: impl IntoIterator<Item = OrMapRecord>,
        tombstones: impl IntoIterator<Item = String>,
    ) -> MergeKeyOutcome {
        let mut outcome = MergeKeyOutcome::default();
        for tag in tombstones {
            if let Some(owner) = self.apply_tombstone(&tag) {
                outcome.removed.push(RemovedTag { key: owner, tag });
            }
        }
        for record in records {
            match self.apply_record(key, record.clone()) {
                Applied::Added => outcome.added.push(record),
                Applied::Updated => outcome.updated.push(record),
                Applied::Ignored => {}
            }
        }
        outcome
    }

    /// Values of the live, unexpired records of `key`, in tag order.
    pub fn get(&self, key: &str, now_millis: u64) -> Vec<&Value> {
        self.records(key)
            .filter(|record| !record.is_expired(now_millis))
            .map(|record| &record.value)
            .collect()
    }

    /// Every untombstoned record of `key` in tag order, expired ones included (what sync and
    /// the Merkle tree see).
    pub fn records(&self, key: &str) -> impl Iterator<Item = &OrMapRecord> {
        self.items.get(key).into_iter().flat_map(BTreeMap::values)
    }

    /// Keys holding at least one untombstoned record, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.items.keys().map(String::as_str)
    }

    /// Every tombstoned tag, in order.
    pub fn tombstones(&self) -> impl Iterator<Item = &str> {
        self.tombstones.iter().map(String::as_str)
    }

    /// True when `tag` has been removed (and not yet pruned).
    pub fn is_tombstoned(&self, tag: &str) -> bool {
        self.tombstones.contains(tag)
    }

    /// Number of keys holding at least one record.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when no key holds a record (tombstones may remain).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Forgets tombstones whose tag parses as an HLC timestamp older than `older_than` and
    /// returns them. Unparseable tags are kept, since their age is unknown.
    pub fn prune(&mut self, older_than: &Timestamp) -> Vec<String> {
        let doomed: Vec<String> = self
            .tombstones
            .iter()
            .filter(|tag| {
                tag.parse::<Timestamp>()
                    .is_ok_and(|issued| issued < *older_than)
            })
            .cloned()
            .collect();
        for tag in &doomed {
            self.tombstones.remove(tag);
        }
        doomed
    }

    /// Tombstones every record whose TTL ran out before `now_millis` and returns them.
    pub fn expire(&mut self, now_millis: u64) -> Vec<RemovedTag> {
        let expired: Vec<RemovedTag> = self
            .items
            .iter()
            .flat_map(|(key, tags)| {
                tags.values()
                    .filter(|record| record.is_expired(now_millis))
                    .map(|record| RemovedTag {
                        key: key.clone(),
                        tag: record.tag.clone(),
                    })
            })
            .collect();
        for removed in &expired {
            self.apply_tombstone(&removed.tag);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::clock::ManualClock;
    use crate::hlc::{Hlc, HlcConfig};

    fn ts(millis: u64, counter: u32, node: &str) -> Timestamp {
        Timestamp::new(millis, counter, node)
    }

    fn rec(value: Value, timestamp: Timestamp) -> OrMapRecord {
        OrMapRecord {
            value,
            tag: timestamp.to_string(),
            timestamp,
            ttl_ms: None,
        }
    }

    #[test]
    fn add_and_remove_value_tombstone_only_matching_tags() {
        let mut map = OrMap::new();
        let a = map.add("k", json!("x"), ts(1, 0, "n"), None).unwrap();
        map.add("k", json!("y"), ts(2, 0, "n"), None).unwrap();
        map.add("k", json!("x"), ts(3, 0, "n"), None).unwrap();
        assert_eq!(a.tag, "1:0:n");
        assert!(map.add("k", json!("z"), ts(1, 0, "n"), None).is_none());
        assert_eq!(map.get("k", 0), vec![&json!("x"), &json!("y"), &json!("x")]);

        assert_eq!(map.remove_value("k", &json!("x")), vec!["1:0:n", "3:0:n"]);
        assert_eq!(map.get("k", 0), vec![&json!("y")]);
        assert!(map.is_tombstoned("1:0:n") && map.is_tombstoned("3:0:n"));
        assert!(!map.apply("k", a), "tombstoned tag cannot come back");
        assert_eq!(map.remove_value("k", &json!("y")), vec!["2:0:n"]);
        assert_eq!(map.keys().count(), 0, "empty keys are dropped");
        assert!(map.is_empty());
    }

    #[test]
    fn same_tag_is_replaced_only_by_newer_timestamp() {
        let mut map = OrMap::new();
        let first = rec(json!(1), ts(5, 0, "n"));
        assert!(map.apply("k", first.clone()));
        let mut newer = first.clone();
        newer.value = json!(2);
        newer.timestamp = ts(6, 0, "n");
        assert!(!map.apply("k", first.clone()));
        assert!(map.apply("k", newer.clone()));
        assert!(!map.apply("k", first));
        assert_eq!(map.records("k").collect::<Vec<_>>(), vec![&newer]);
        assert!(!map.apply("other", newer), "a tag belongs to one key");
        assert_eq!(map.keys().collect::<Vec<_>>(), vec!["k"]);
    }

    #[test]
    fn apply_tombstone_reports_the_owning_key() {
        let mut map = OrMap::new();
        map.apply("k1", rec(json!(1), ts(1, 0, "n")));
        map.apply("k2", rec(json!(2), ts(2, 0, "n")));
        assert_eq!(map.apply_tombstone("2:0:n"), Some("k2".into()));
        assert_eq!(map.apply_tombstone("2:0:n"), None);
        assert_eq!(map.apply_tombstone("9:0:n"), None);
        assert_eq!(map.tombstones().collect::<Vec<_>>(), vec!["2:0:n", "9:0:n"]);
        assert_eq!(map.keys().collect::<Vec<_>>(), vec!["k1"]);
    }

    #[test]
    fn merge_key_reports_added_updated_and_removed() {
        let mut map = OrMap::new();
        let old = rec(json!("old"), ts(1, 0, "n"));
        map.apply("k", old.clone());
        map.apply("j", rec(json!("j"), ts(2, 0, "n")));
        let mut updated = old.clone();
        updated.timestamp = ts(4, 0, "n");
        let added = rec(json!("new"), ts(3, 0, "m"));
        let dead = rec(json!("dead"), ts(5, 0, "m"));
        let outcome = map.merge_key(
            "k",
            vec![updated.clone(), added.clone(), dead.clone()],
            vec!["2:0:n".to_owned(), dead.tag.clone()],
        );
        assert_eq!(
            outcome,
            MergeKeyOutcome {
                added: vec![added],
                updated: vec![updated],
                removed: vec![RemovedTag {
                    key: "j".into(),
                    tag: "2:0:n".into()
                }],
            }
        );
        assert_eq!(map.keys().collect::<Vec<_>>(), vec!["k"]);
        assert!(
            map.merge_key("k", map.records("k").cloned().collect::<Vec<_>>(), vec![])
                .is_empty()
        );
    }

    #[test]
    fn expired_records_are_hidden_from_get_but_synced_until_expire() {
        let mut map = OrMap::new();
        let mut r = rec(json!(1), ts(100, 0, "n"));
        r.ttl_ms = Some(10);
        map.apply("k", r);
        map.apply("k", rec(json!(2), ts(101, 0, "n")));
        assert_eq!(map.get("k", 111), vec![&json!(2)]);
        assert_eq!(map.records("k").count(), 2);
        assert!(map.expire(110).is_empty());
        assert_eq!(
            map.expire(111),
            vec![RemovedTag {
                key: "k".into(),
                tag: "100:0:n".into()
            }]
        );
        assert_eq!(map.records("k").count(), 1);
        assert!(map.is_tombstoned("100:0:n"));
    }

    #[test]
    fn prune_drops_old_parseable_tags_only() {
        let mut map = OrMap::new();
        for tag in ["1:0:n", "5:0:n", "10:0:n", "custom-tag"] {
            map.apply_tombstone(tag);
        }
        let mut pruned = map.prune(&ts(10, 0, "n"));
        pruned.sort();
        assert_eq!(pruned, vec!["1:0:n", "5:0:n"]);
        assert_eq!(
            map.tombstones().collect::<Vec<_>>(),
            vec!["10:0:n", "custom-tag"]
        );
    }

    #[test]
    fn tombstones_stay_bounded_under_churn_with_periodic_prune() {
        const HORIZON_MS: u64 = 500;
        let clock = ManualClock::new(1_000_000);
        let mut hlc = Hlc::new("churn", Arc::new(clock.clone()), HlcConfig::default()).unwrap();
        let mut map = OrMap::new();
        let mut issued = Vec::new();
        let mut peak = 0;
        for i in 0..20_000u64 {
            clock.advance(1);
            let stamp = hlc.now();
            issued.push(stamp.clone());
            map.add("hot", json!(i), stamp.clone(), None).unwrap();
            assert_eq!(map.remove_value("hot", &json!(i)).len(), 1);
            if i % 1_000 == 999 {
                let horizon = ts(stamp.millis - HORIZON_MS, 0, "");
                map.prune(&horizon);
                let newer = issued.iter().filter(|t| **t >= horizon).count();
                assert_eq!(map.tombstones().count(), newer);
            }
            peak = peak.max(map.tombstones().count());
        }
        assert!(peak <= 1_000 + HORIZON_MS as usize, "peak {peak}");
        assert!(map.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(String, OrMapRecord),
        Tombstone(String),
    }

    /// Ops over a small tag pool. Each tag belongs to one key (as real tags do) and every op
    /// has its own timestamp (as an HLC guarantees).
    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            3 => (0usize..6, 0u64..30, 0i64..5).prop_map(|(t, millis, v)| (Some(millis), t, v)),
            1 => (0usize..6).prop_map(|t| (None, t, 0)),
        ];
        prop::collection::vec(op, 0..30).prop_map(|raw| {
            let mut seen = HashSet::new();
            raw.into_iter()
                .filter_map(|(millis, t, v)| {
                    let tag = format!("{t}:0:n");
                    let key = format!("k{}", t % 3);
                    match millis {
                        None => Some(Op::Tombstone(tag)),
                        Some(m) => seen.insert(m).then(|| {
                            Op::Add(
                                key,
                                OrMapRecord {
                                    value: json!(v),
                                    timestamp: ts(m, 0, "n"),
                                    tag,
                                    ttl_ms: None,
                                },
                            )
                        }),
                    }
                })
                .collect()
        })
    }

    fn run(ops: &[Op]) -> OrMap {
        let mut map = OrMap::new();
        for op in ops {
            match op {
                Op::Add(key, record) => {
                    map.apply(key, record.clone());
                }
                Op::Tombstone(tag) => {
                    map.apply_tombstone(tag);
                }
            }
        }
        map
    }

    fn key_parts(ops: &[Op], key: &str) -> (Vec<OrMapRecord>, Vec<String>) {
        let mut records = Vec::new();
        let mut tombstones = Vec::new();
        for op in ops {
            match op {
                Op::Add(k, record) if k == key => records.push(record.clone()),
                Op::Add(..) => {}
                Op::Tombstone(tag) => tombstones.push(tag.clone()),
            }
        }
        (records, tombstones)
    }

    proptest! {
        #[test]
        fn replicas_converge_in_any_order_with_duplicates(
            (ops, shuffled) in ops().prop_flat_map(|ops| {
                let doubled: Vec<_> = ops.iter().chain(ops.iter()).cloned().collect();
                (Just(ops), Just(doubled).prop_shuffle())
            })
        ) {
            prop_assert_eq!(run(&ops), run(&shuffled));
        }

        #[test]
        fn merge_key_is_commutative_and_idempotent(
            (base, a, b) in ops().prop_flat_map(|all| {
                let n = all.len();
                (Just(all), 0..=n, 0..=n)
            }).prop_map(|(all, i, j)| {
                let (lo, hi) = (i.min(j), i.max(j));
                (all[..lo].to_vec(), all[lo..hi].to_vec(), all[hi..].to_vec())
            })
        ) {
            let start = run(&base);
            let (ra, ta) = key_parts(&a, "k0");
            let (rb, tb) = key_parts(&b, "k0");

            let mut ab = start.clone();
            ab.merge_key("k0", ra.clone(), ta.clone());
            ab.merge_key("k0", rb.clone(), tb.clone());
            let mut ba = start.clone();
            ba.merge_key("k0", rb.clone(), tb.clone());
            ba.merge_key("k0", ra.clone(), ta.clone());
            prop_assert_eq!(&ab, &ba);

            let mut again = ab.clone();
            prop_assert!(again.merge_key("k0", ra, ta).is_empty());
            prop_assert!(again.merge_key("k0", rb, tb).is_empty());
            prop_assert_eq!(again, ab);
        }
    }
}
