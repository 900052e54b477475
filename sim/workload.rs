//! Workloads: each client's timed list of operations, drawn from the run's seed.

use rand::{Rng, RngExt};
use serde_json::json;

use crate::client::{MapKind, MapSpec, WriteRequest};

/// One thing a client does.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkOp {
    /// A write to `maps[map]`, sent at once (and again after reconnects until answered).
    Write { map: usize, request: WriteRequest },
    /// Ask for a lock with a `ttl_ms` lease and hold it `hold_ms` before releasing.
    Lock {
        name: String,
        ttl_ms: u64,
        hold_ms: u64,
    },
    /// A Merkle sync of `maps[map]` in the middle of the workload.
    Sync { map: usize },
}

/// An operation and when it starts (simulated milliseconds).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkItem {
    pub at_ms: u64,
    pub op: WorkOp,
}

/// The mix of operations a scenario draws, inside `[0, window_ms)`.
#[derive(Debug, Clone)]
pub struct WorkloadProfile {
    pub window_ms: u64,
    pub ops_per_client: usize,
    /// Keys per map (small, so writers collide).
    pub keys: usize,
    pub maps: Vec<MapSpec>,
    /// Per-mille shares of lock and sync operations (the rest are writes).
    pub lock_permille: u32,
    pub sync_permille: u32,
    /// Per-mille share of removes among writes.
    pub remove_permille: u32,
    pub locks: Vec<String>,
    /// Lease and hold ranges for lock operations.
    pub lock_ttl_ms: std::ops::Range<u64>,
    pub lock_hold_ms: std::ops::Range<u64>,
}

impl Default for WorkloadProfile {
    fn default() -> Self {
        Self {
            window_ms: 20_000,
            ops_per_client: 30,
            keys: 8,
            maps: vec![
                MapSpec {
                    name: "sim-lww".to_owned(),
                    kind: MapKind::Lww,
                },
                MapSpec {
                    name: "sim-or".to_owned(),
                    kind: MapKind::Or,
                },
            ],
            lock_permille: 0,
            sync_permille: 50,
            remove_permille: 200,
            locks: vec!["job".to_owned()],
            lock_ttl_ms: 1_000..4_000,
            lock_hold_ms: 100..3_000,
        }
    }
}

impl WorkloadProfile {
    /// Draws `client`'s operations from `rng`, sorted by time.
    pub fn generate(&self, rng: &mut impl Rng, client: &str) -> Vec<WorkItem> {
        let mut items: Vec<WorkItem> = (0..self.ops_per_client)
            .map(|n| WorkItem {
                at_ms: rng.random_range(0..self.window_ms.max(1)),
                op: self.draw_op(rng, client, n),
            })
            .collect();
        items.sort_by_key(|item| item.at_ms);
        items
    }

    fn draw_op(&self, rng: &mut impl Rng, client: &str, n: usize) -> WorkOp {
        let roll = rng.random_range(0..1_000);
        if roll < self.lock_permille && !self.locks.is_empty() {
            return WorkOp::Lock {
                name: self.locks[rng.random_range(0..self.locks.len())].clone(),
                ttl_ms: rng.random_range(self.lock_ttl_ms.clone()),
                hold_ms: rng.random_range(self.lock_hold_ms.clone()),
            };
        }
        let map = rng.random_range(0..self.maps.len().max(1));
        if roll < self.lock_permille + self.sync_permille {
            return WorkOp::Sync { map };
        }
        let key = format!("k{}", rng.random_range(0..self.keys.max(1)));
        let remove = rng.random_range(0..1_000) < self.remove_permille;
        let value = json!({"by": client, "n": n});
        let kind = self.maps.get(map).map_or(MapKind::Lww, |m| m.kind);
        let request = match (kind, remove) {
            (MapKind::Lww, false) => WriteRequest::Put { key, value },
            (MapKind::Lww, true) => WriteRequest::Remove { key },
            (MapKind::Or, false) => WriteRequest::OrAdd { key, value },
            (MapKind::Or, true) => WriteRequest::OrRemove {
                key,
                pick: rng.random_range(0..8),
            },
        };
        WorkOp::Write { map, request }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn plans_are_seeded_sorted_and_follow_the_mix() {
        let profile = WorkloadProfile {
            ops_per_client: 400,
            lock_permille: 100,
            ..WorkloadProfile::default()
        };
        let a = profile.generate(&mut ChaCha8Rng::seed_from_u64(3), "alice");
        let b = profile.generate(&mut ChaCha8Rng::seed_from_u64(3), "alice");
        assert_eq!(a, b);
        assert_eq!(a.len(), 400);
        assert!(a.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        let locks = a
            .iter()
            .filter(|i| matches!(i.op, WorkOp::Lock { .. }))
            .count();
        let syncs = a
            .iter()
            .filter(|i| matches!(i.op, WorkOp::Sync { .. }))
            .count();
        // 10% locks and 5% syncs of 400, with generous slack for the draw.
        assert!((20..=60).contains(&locks), "{locks} locks");
        assert!((5..=40).contains(&syncs), "{syncs} syncs");
        for item in &a {
            if let WorkOp::Write { map, request } = &item.op {
                let or = profile.maps[*map].kind == MapKind::Or;
                let or_request = matches!(
                    request,
                    WriteRequest::OrAdd { .. } | WriteRequest::OrRemove { .. }
                );
                assert_eq!(or, or_request, "write kind matches the map kind");
            }
        }
    }
}
