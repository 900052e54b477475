//! The PN-counter (PROTOCOL.md §4.4, §3.9): per-node positive and negative totals, merged by
//! per-node maximum, value = Σp − Σn.
//!
//! Counts are `f64` because the TS clients send JS numbers. Every entry is kept finite and
//! non-negative, which makes the per-node max a total order and the merge a true CRDT join.
//! Mapping to the wire keys (`{p, n}` and `{positive, negative}`) is the protocol layer's job.

use std::collections::BTreeMap;

/// Which half of the counter an entry or delta belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Increments (`p` / `positive`).
    Positive,
    /// Decrements (`n` / `negative`).
    Negative,
}

/// Why a count or delta was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PnCounterError {
    /// NaN or ±∞ would poison the sum and make max-merge meaningless.
    #[error("counter {side:?} entry for node {node_id:?} is not finite: {value}")]
    NonFinite {
        /// The half the value was meant for.
        side: Side,
        /// The node it was meant for.
        node_id: String,
        /// The refused value.
        value: f64,
    },
    /// Each half only ever grows from zero, so a negative total is corrupt data.
    #[error("counter {side:?} entry for node {node_id:?} is negative: {value}")]
    Negative {
        /// The half the value was meant for.
        side: Side,
        /// The node it was meant for.
        node_id: String,
        /// The refused value.
        value: f64,
    },
}

/// A positive-negative counter keyed by node id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PnCounter {
    p: BTreeMap<String, f64>,
    n: BTreeMap<String, f64>,
}

impl PnCounter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a counter from wire data, refusing non-finite or negative entries.
    pub fn from_parts(
        p: BTreeMap<String, f64>,
        n: BTreeMap<String, f64>,
    ) -> Result<Self, PnCounterError> {
        for (side, entries) in [(Side::Positive, &p), (Side::Negative, &n)] {
            for (node_id, value) in entries {
                check_count(side, node_id, *value)?;
            }
        }
        Ok(Self { p, n })
    }

    /// Adds `delta` (finite, ≥ 0) to `node_id`'s positive total.
    pub fn increment(&mut self, node_id: &str, delta: f64) -> Result<(), PnCounterError> {
        self.bump(Side::Positive, node_id, delta)
    }

    /// Adds `delta` (finite, ≥ 0) to `node_id`'s negative total.
    pub fn decrement(&mut self, node_id: &str, delta: f64) -> Result<(), PnCounterError> {
        self.bump(Side::Negative, node_id, delta)
    }

    /// Adds `|delta|` to the positive side for `delta ≥ 0`, else to the negative side, and
    /// returns the new value (the clients' `addAndGet`).
    pub fn add(&mut self, node_id: &str, delta: f64) -> Result<f64, PnCounterError> {
        let side = if delta.is_sign_negative() {
            Side::Negative
        } else {
            Side::Positive
        };
        self.bump(side, node_id, delta.abs())?;
        Ok(self.value())
    }

    fn bump(&mut self, side: Side, node_id: &str, delta: f64) -> Result<(), PnCounterError> {
        check_count(side, node_id, delta)?;
        let entries = self.side_mut(side);
        let total = entries.get(node_id).copied().unwrap_or(0.0) + delta;
        // Two finite counts can still sum to infinity; refuse rather than store it.
        check_count(side, node_id, total)?;
        entries.insert(node_id.to_owned(), total);
        Ok(())
    }

    /// Σp − Σn.
    pub fn value(&self) -> f64 {
        self.p.values().sum::<f64>() - self.n.values().sum::<f64>()
    }

    /// Joins `other` into `self` by per-node maximum on each side; returns whether anything
    /// changed.
    pub fn merge(&mut self, other: &PnCounter) -> bool {
        let p_changed = merge_side(&mut self.p, &other.p);
        let n_changed = merge_side(&mut self.n, &other.n);
        p_changed || n_changed
    }

    /// Positive totals per node.
    pub fn p(&self) -> &BTreeMap<String, f64> {
        &self.p
    }

    /// Negative totals per node.
    pub fn n(&self) -> &BTreeMap<String, f64> {
        &self.n
    }

    fn side_mut(&mut self, side: Side) -> &mut BTreeMap<String, f64> {
        match side {
            Side::Positive => &mut self.p,
            Side::Negative => &mut self.n,
        }
    }
}

fn check_count(side: Side, node_id: &str, value: f64) -> Result<(), PnCounterError> {
    if !value.is_finite() {
        return Err(PnCounterError::NonFinite {
            side,
            node_id: node_id.to_owned(),
            value,
        });
    }
    if value < 0.0 {
        return Err(PnCounterError::Negative {
            side,
            node_id: node_id.to_owned(),
            value,
        });
    }
    Ok(())
}

fn merge_side(local: &mut BTreeMap<String, f64>, remote: &BTreeMap<String, f64>) -> bool {
    let mut changed = false;
    for (node_id, &theirs) in remote {
        match local.get_mut(node_id) {
            Some(ours) if theirs > *ours => {
                *ours = theirs;
                changed = true;
            }
            Some(_) => {}
            None => {
                local.insert(node_id.clone(), theirs);
                changed = true;
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn map(entries: &[(&str, f64)]) -> BTreeMap<String, f64> {
        entries.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn increments_and_decrements_go_to_own_node_entry() {
        let mut c = PnCounter::new();
        c.increment("a", 3.0).unwrap();
        c.increment("a", 2.0).unwrap();
        c.decrement("b", 4.0).unwrap();
        assert_eq!(c.add("a", -1.5).unwrap(), -0.5);
        assert_eq!(c.add("b", 10.0).unwrap(), 9.5);
        assert_eq!(c.p(), &map(&[("a", 5.0), ("b", 10.0)]));
        assert_eq!(c.n(), &map(&[("a", 1.5), ("b", 4.0)]));
    }

    #[test]
    fn rejects_bad_deltas_without_changing_state() {
        let mut c = PnCounter::new();
        c.increment("a", 1.0).unwrap();
        assert!(matches!(
            c.increment("a", -1.0),
            Err(PnCounterError::Negative {
                side: Side::Positive,
                ..
            })
        ));
        assert!(matches!(
            c.add("a", f64::NAN),
            Err(PnCounterError::NonFinite { .. })
        ));
        assert!(matches!(
            c.decrement("a", f64::INFINITY),
            Err(PnCounterError::NonFinite {
                side: Side::Negative,
                ..
            })
        ));
        c.increment("big", f64::MAX).unwrap();
        assert!(matches!(
            c.increment("big", f64::MAX),
            Err(PnCounterError::NonFinite { .. })
        ));
        assert_eq!(c.p(), &map(&[("a", 1.0), ("big", f64::MAX)]));
        assert!(c.n().is_empty());
    }

    #[test]
    fn from_parts_validates_wire_entries() {
        let ok = PnCounter::from_parts(map(&[("a", 2.0)]), map(&[("b", 0.5)])).unwrap();
        assert_eq!(ok.value(), 1.5);
        assert_eq!(
            PnCounter::from_parts(map(&[]), map(&[("b", -1.0)])),
            Err(PnCounterError::Negative {
                side: Side::Negative,
                node_id: "b".into(),
                value: -1.0
            })
        );
        assert!(matches!(
            PnCounter::from_parts(map(&[("a", f64::NAN)]), map(&[])),
            Err(PnCounterError::NonFinite {
                side: Side::Positive,
                ..
            })
        ));
    }

    #[test]
    fn merge_takes_per_node_max_and_reports_change() {
        let mut a = PnCounter::from_parts(map(&[("x", 5.0), ("y", 1.0)]), map(&[])).unwrap();
        let b = PnCounter::from_parts(map(&[("x", 3.0), ("y", 4.0)]), map(&[("z", 2.0)])).unwrap();
        assert!(a.merge(&b));
        assert_eq!(a.p(), &map(&[("x", 5.0), ("y", 4.0)]));
        assert_eq!(a.n(), &map(&[("z", 2.0)]));
        assert_eq!(a.value(), 7.0);
        assert!(!a.merge(&b));
        assert!(!a.clone().merge(&a));
    }

    fn side() -> impl Strategy<Value = BTreeMap<String, f64>> {
        prop::collection::btree_map(
            prop::sample::select(vec!["a".to_owned(), "b".into(), "c".into(), "d".into()]),
            (0u32..1_000).prop_map(f64::from),
            0..4,
        )
    }

    fn counter() -> impl Strategy<Value = PnCounter> {
        (side(), side()).prop_map(|(p, n)| PnCounter::from_parts(p, n).unwrap())
    }

    fn joined(a: &PnCounter, b: &PnCounter) -> PnCounter {
        let mut out = a.clone();
        out.merge(b);
        out
    }

    proptest! {
        #[test]
        fn merge_is_commutative_associative_idempotent(a in counter(), b in counter(), c in counter()) {
            prop_assert_eq!(joined(&a, &b), joined(&b, &a));
            prop_assert_eq!(joined(&joined(&a, &b), &c), joined(&a, &joined(&b, &c)));
            prop_assert_eq!(joined(&a, &a), a.clone());
            let ab = joined(&a, &b);
            prop_assert!(!ab.clone().merge(&b), "joining again changes nothing");
        }

        #[test]
        fn value_is_the_sum_of_all_deltas(deltas in prop::collection::vec(
            (prop::sample::select(vec!["a", "b", "c"]), -1_000i32..1_000), 0..50,
        )) {
            let mut c = PnCounter::new();
            let mut expected = 0i64;
            for (node, delta) in deltas {
                c.add(node, f64::from(delta)).unwrap();
                expected += i64::from(delta);
            }
            let expected = expected as f64;
            prop_assert_eq!(c.value(), expected);
            let p: f64 = c.p().values().sum();
            let n: f64 = c.n().values().sum();
            prop_assert_eq!(c.value(), p - n);
        }

        #[test]
        fn replicas_converge_to_the_sum_of_their_own_deltas(
            ops in prop::collection::vec((0usize..3, -100i32..100), 0..40),
        ) {
            // Each replica only touches its own node entry, as clients do.
            let nodes = ["r0", "r1", "r2"];
            let mut replicas = vec![PnCounter::new(); 3];
            let mut expected = 0i64;
            for (r, delta) in ops {
                replicas[r].add(nodes[r], f64::from(delta)).unwrap();
                expected += i64::from(delta);
            }
            let mut merged = PnCounter::new();
            for r in replicas.iter().rev() {
                merged.merge(r);
            }
            let expected = expected as f64;
            prop_assert_eq!(merged.value(), expected);
        }
    }
}
