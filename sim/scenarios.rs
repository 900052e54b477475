//! Scenarios: each runs over many seeds and checks properties at the end.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use topgun::hlc::{Hlc, HlcConfig};
use topgun::merkle::Combine;
use topgun::protocol::{
    BucketRequest, ClientOp, MerkleReqBucket, Message, OpBatch, OpBatchPayload, OpType, SyncInit,
};
use topgun::record::LwwRecord;
use topgun::replica::LwwReplica;

use crate::harness::{SimClient, SimClock, run_server, seeds, trace_hash};

const MAP: &str = "sim-race";
const KEYS: usize = 8;

/// What one run observed.
#[derive(Debug, Default)]
struct Outcome {
    /// Every acknowledged write: key → records.
    acked: Vec<(String, LwwRecord)>,
    /// Each client's final replica root and the server's advertised root.
    roots: Vec<(u32, u32)>,
    /// Final records as pulled by each client.
    finals: Vec<BTreeMap<String, LwwRecord>>,
    trace: Vec<String>,
}

/// Two writers race on the same keys with skewed clocks over a jittery network; afterwards
/// each pulls the map by Merkle sync. Checks convergence (equal roots everywhere) and that no
/// acknowledged write is lost (each key holds the newest acknowledged write).
#[test]
fn two_writers_racing_on_the_same_keys_converge() {
    for seed in seeds(12) {
        let outcome = run_race(seed);
        let hash = trace_hash(&outcome.trace);
        println!("seed {seed}: trace hash {hash:016x}");
        let replay = format!("replay: just sim SEED={seed}");
        assert_eq!(outcome.roots.len(), 2, "{replay}");
        assert!(
            outcome.acked.len() >= 12,
            "each writer acked at least 6 batches; {replay}"
        );
        assert!(!outcome.finals[0].is_empty(), "{replay}");
        for (local, server) in &outcome.roots {
            assert_eq!(
                local, server,
                "a client's pulled data must hash to the server root; {replay}"
            );
        }
        assert_eq!(
            outcome.finals[0], outcome.finals[1],
            "clients diverged; {replay}"
        );
        let mut newest: BTreeMap<&str, &LwwRecord> = BTreeMap::new();
        for (key, record) in &outcome.acked {
            let slot = newest.entry(key).or_insert(record);
            if record.timestamp > slot.timestamp {
                *slot = record;
            }
        }
        for (key, record) in newest {
            assert_eq!(
                outcome.finals[0].get(key),
                Some(record),
                "acknowledged write lost for {key}; {replay}"
            );
        }
    }
}

/// The same seed gives the same history.
#[test]
fn a_seed_replays_to_the_same_trace() {
    let seed = seeds(1)[0];
    let first = run_race(seed);
    let second = run_race(seed);
    assert_eq!(
        trace_hash(&first.trace),
        trace_hash(&second.trace),
        "seed {seed} is not deterministic"
    );
    assert_eq!(first.finals, second.finals);
}

fn run_race(seed: u64) -> Outcome {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(25))
        .simulation_duration(Duration::from_secs(120))
        .build();
    sim.host("server", move || run_server(seed));
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    for (index, name) in ["alice", "bob"].into_iter().enumerate() {
        let outcome = outcome.clone();
        let client_seed = seed.wrapping_mul(31).wrapping_add(index as u64);
        sim.client(name, async move {
            let mut rng = ChaCha8Rng::seed_from_u64(client_seed);
            let skew = rng.random_range(-2_000i64..2_000);
            let clock = SimClock { skew_ms: skew };
            let mut client = SimClient::connect(name, &clock).await?;
            let mut hlc = Hlc::new(
                format!("node-{name}"),
                Arc::new(clock),
                HlcConfig::default(),
            )?;
            let mut acked = Vec::new();
            let mut next_id = 1u64;
            for _ in 0..6 {
                let mut ops = Vec::new();
                for _ in 0..rng.random_range(1..5) {
                    let key = format!("k{}", rng.random_range(0..KEYS));
                    let value = rng
                        .random_bool(0.8)
                        .then(|| serde_json::json!({"by": name, "n": next_id}));
                    let record = LwwRecord {
                        value,
                        timestamp: hlc.now(),
                        ttl_ms: None,
                    };
                    ops.push(ClientOp {
                        id: Some(next_id.to_string()),
                        map_name: MAP.to_owned(),
                        key,
                        op_type: Some(if record.value.is_some() {
                            OpType::Put
                        } else {
                            OpType::Remove
                        }),
                        record: Some(record),
                        or_record: None,
                        or_tag: None,
                        write_concern: None,
                        timeout: None,
                    });
                    next_id += 1;
                }
                let last = (next_id - 1).to_string();
                client
                    .send(
                        OpBatch {
                            payload: OpBatchPayload {
                                ops: ops.clone(),
                                write_concern: None,
                                timeout: None,
                            },
                        }
                        .into(),
                    )
                    .await?;
                loop {
                    if let Message::OpAck(ack) = client.recv().await? {
                        assert_eq!(ack.payload.last_id, last);
                        break;
                    }
                }
                acked.extend(ops.into_iter().filter_map(|op| Some((op.key, op.record?))));
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
            }
            // Let the other writer finish, then pull everything by Merkle sync.
            tokio::time::sleep(Duration::from_secs(5)).await;
            let (local, server_root) = pull_all(&mut client).await?;
            let mut out = outcome.lock().unwrap();
            out.acked.extend(acked);
            out.roots
                .push((local.merkle().root(Combine::Fmix), server_root));
            out.finals.push(
                local
                    .map()
                    .records()
                    .map(|(k, r)| (k.to_owned(), r.clone()))
                    .collect(),
            );
            out.trace
                .extend(client.trace.iter().map(|l| format!("{name} {l}")));
            Ok(())
        });
    }
    sim.run().expect("simulation failed");
    let mut outcome = Arc::try_unwrap(outcome)
        .expect("clients finished")
        .into_inner()
        .unwrap();
    outcome.finals.sort_by_key(|m| m.len());
    outcome
}

/// A client walk from an empty replica: request every non-zero bucket down to the leaves.
async fn pull_all(client: &mut SimClient) -> Result<(LwwReplica, u32), Box<dyn std::error::Error>> {
    client
        .send(
            SyncInit {
                map_name: MAP.to_owned(),
                last_sync_timestamp: Some(0),
            }
            .into(),
        )
        .await?;
    let server_root = loop {
        if let Message::SyncRespRoot(root) = client.recv().await? {
            break root.payload.root_hash;
        }
    };
    let mut replica = LwwReplica::default();
    let mut pending = vec![String::new()];
    while let Some(path) = pending.pop() {
        client
            .send(
                MerkleReqBucket {
                    payload: BucketRequest {
                        map_name: MAP.to_owned(),
                        path,
                    },
                }
                .into(),
            )
            .await?;
        match client.recv().await? {
            Message::SyncRespBuckets(b) => pending.extend(
                b.payload
                    .buckets
                    .into_iter()
                    .filter(|(_, hash)| *hash != 0)
                    .map(|(c, _)| format!("{}{c}", b.payload.path)),
            ),
            Message::SyncRespLeaf(leaf) => {
                for r in leaf.payload.records {
                    replica.merge(&r.key, r.record);
                }
            }
            other => return Err(format!("unexpected {}", other.type_name()).into()),
        }
    }
    Ok((replica, server_root))
}
