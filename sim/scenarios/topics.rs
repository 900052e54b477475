//! Property 6, the offline topic queue, with the real client: a publisher publishes numbered
//! messages through two long partitions of its link (so it spends seconds knowingly offline
//! and queues), while a subscriber stays connected with its `TOPIC_SUB` live the whole run,
//! since the server relays topics fire-and-forget to current subscribers only. Three queue
//! configurations: roomy (nothing overflows), drop-oldest and reject with a small bound.
//!
//! Topic runs have their own hosts and history (see [`crate::topics`]), so they use their own
//! small runner; the seed, trace hash and replay command work as for the other families.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use tokio::sync::broadcast;
use topgun::client::connection::ConnectionState;
use topgun::client::topics::{DropReason, TopicError, TopicEvent, TopicOverflow, TopicQueueConfig};
use topgun::client::{ClientError, ClientEvent, Seams, TopGunClient};
use topgun::entropy::SeededEntropy;
use topgun::protocol::WriteConcern;
use topgun::store::MemoryStore;

use crate::client::ClientContext;
use crate::faults::{Fault, FaultEvent, FaultInjector};
use crate::harness::{SERVER, ServerSpec, SimClock, StoreSlot, elapsed_ms, run_server, seeds};
use crate::history::Recorder;
use crate::properties::Violation;
use crate::real_client::{RealClient, TurmoilConnector};
use crate::topics::{TopicEntry, TopicHistory, offline_topic_queue};

const TOPIC: &str = "sim-news";
const PUBLISHER: &str = "publisher";
const SUBSCRIBER: &str = "subscriber";
/// Publishes per run, spread over the window.
const PUBLISHES: usize = 120;
/// Faults happen before this; then the link heals and the queue flushes.
const WINDOW_MS: u64 = 30_000;
/// Both clients stop here (time for the last reconnect and flush).
const END_MS: u64 = WINDOW_MS + 8_000;
/// Seeds per configuration under `cargo test`.
const SEEDS: u64 = 2;
/// The small bound of the overflow configurations.
const SMALL_QUEUE: usize = 6;

/// One topic run, drawn from a seed.
#[derive(Debug, Clone)]
struct TopicScenario {
    seed: u64,
    config: TopicQueueConfig,
    publish_at: Vec<u64>,
    faults: Vec<FaultEvent>,
}

/// What a topic run produced: its history and anything that went wrong outside the property.
struct TopicOutcome {
    history: TopicHistory,
    errors: Vec<String>,
    trace_hash: u64,
}

fn link_fault(at_ms: u64, cut: bool) -> FaultEvent {
    let (a, b) = (PUBLISHER.to_owned(), SERVER.to_owned());
    FaultEvent {
        at_ms,
        fault: if cut {
            Fault::Partition { a, b }
        } else {
            Fault::Repair { a, b }
        },
    }
}

/// Two partitions of the publisher's link, long enough to outlast the heartbeat timeout (so
/// the client knows it is offline and queues), with a healthy gap between them for the flush.
fn scenario(seed: u64, config: TopicQueueConfig) -> TopicScenario {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut publish_at: Vec<u64> = (0..PUBLISHES)
        .map(|_| rng.random_range(2_000..WINDOW_MS - 1_000))
        .collect();
    publish_at.sort_unstable();
    let first = rng.random_range(3_000..5_000);
    let first_end = first + rng.random_range(8_000..11_000);
    let second = first_end + rng.random_range(4_000..6_000);
    let second_end = (second + rng.random_range(6_000..9_000)).min(WINDOW_MS - 1_000);
    TopicScenario {
        seed,
        config,
        publish_at,
        faults: vec![
            link_fault(first, true),
            link_fault(first_end, false),
            link_fault(second, true),
            link_fault(second_end, false),
        ],
    }
}

fn context(name: &str, seed: u64) -> ClientContext {
    ClientContext {
        name: name.to_owned(),
        clock: SimClock::default(),
        maps: Vec::new(),
        write_concern: WriteConcern::Applied,
        timeout: Duration::from_secs(2),
        entropy_seed: seed ^ crate::harness::trace_hash(&[name]),
    }
}

async fn start(
    context: &ClientContext,
    config: TopicQueueConfig,
) -> Result<TopGunClient, ClientError> {
    let mut options = RealClient::options(context);
    options.topics = config;
    let seams = Seams {
        store: Arc::new(MemoryStore::new()),
        connector: Arc::new(TurmoilConnector),
        clock: Arc::new(context.clock.clone()),
        entropy: Arc::new(SeededEntropy::new(context.entropy_seed)),
    };
    TopGunClient::start(options, seams).await
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

async fn sleep_until(at_ms: u64) {
    let now = elapsed_ms();
    if at_ms > now {
        tokio::time::sleep(Duration::from_millis(at_ms - now)).await;
    }
}

type Shared<T> = Arc<Mutex<T>>;

/// Stays connected and records every message's sequence number until the run ends.
async fn subscribe(
    context: ClientContext,
    history: Shared<TopicHistory>,
    errors: Shared<Vec<String>>,
) {
    let client = match start(&context, TopicQueueConfig::default()).await {
        Ok(client) => client,
        Err(e) => return lock(&errors).push(format!("subscriber start: {e}")),
    };
    if let Err(e) = client.wait_synced(Duration::from_secs(10)).await {
        lock(&errors).push(format!("subscriber never synced: {e}"));
    }
    let mut subscription = match client.topic(TOPIC).subscribe().await {
        Ok(subscription) => subscription,
        Err(e) => return lock(&errors).push(format!("subscribe: {e}")),
    };
    let end = tokio::time::Instant::now() + Duration::from_millis(END_MS - elapsed_ms());
    while let Ok(Some(delivery)) = tokio::time::timeout_at(end, subscription.next()).await {
        match delivery.data.get("seq").and_then(serde_json::Value::as_u64) {
            Some(seq) => lock(&history).received.push(seq),
            None => lock(&errors).push(format!("unexpected message {}", delivery.data)),
        }
    }
}

/// Takes the client's pending events: records flushes, returns the overflow drops.
fn drain(
    events: &mut broadcast::Receiver<ClientEvent>,
    history: &Shared<TopicHistory>,
    errors: &Shared<Vec<String>>,
) -> usize {
    let mut drops = 0;
    loop {
        match events.try_recv() {
            Ok(ClientEvent::Topic(TopicEvent::Flushed { count })) => {
                lock(history).publisher.push(TopicEntry::Flushed {
                    count,
                    at_ms: elapsed_ms(),
                });
            }
            Ok(ClientEvent::Topic(TopicEvent::Dropped { reason, topic })) => {
                if reason == DropReason::Overflow && topic == TOPIC {
                    drops += 1;
                } else {
                    lock(errors).push(format!("unexpected drop of {topic}: {reason:?}"));
                }
            }
            Ok(_) => {}
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                lock(errors).push(format!("publisher events lagged by {n}"));
            }
            Err(_) => return drops,
        }
    }
}

/// Publishes message `seq` at each planned time, noting whether it went to the offline queue.
async fn publish(
    context: ClientContext,
    scenario: TopicScenario,
    history: Shared<TopicHistory>,
    errors: Shared<Vec<String>>,
) {
    let client = match start(&context, scenario.config.clone()).await {
        Ok(client) => client,
        Err(e) => return lock(&errors).push(format!("publisher start: {e}")),
    };
    let mut events = client.events();
    let topic = client.topic(TOPIC);
    for (seq, at_ms) in (0u64..).zip(scenario.publish_at.iter().copied()) {
        sleep_until(at_ms).await;
        drain(&mut events, &history, &errors);
        // `Backoff`/`Connecting`: no session, the message is queued. Half-open states are
        // skipped: whether the engine already has a session there is a race.
        let offline = match client.connection_state() {
            ConnectionState::Backoff | ConnectionState::Connecting => true,
            ConnectionState::Connected => false,
            _ => continue,
        };
        let accepted = match topic.publish(&json!({ "seq": seq })).await {
            Ok(()) => true,
            Err(ClientError::Topic(TopicError::QueueFull { .. })) => false,
            Err(e) => {
                lock(&errors).push(format!("publish {seq}: {e}"));
                continue;
            }
        };
        let entry = TopicEntry::Published {
            seq,
            at_ms,
            offline,
            accepted,
            drops: 0,
        };
        let index = {
            let mut history = lock(&history);
            history.publisher.push(entry);
            history.publisher.len() - 1
        };
        let drops = drain(&mut events, &history, &errors);
        if let Some(TopicEntry::Published { drops: d, .. }) =
            lock(&history).publisher.get_mut(index)
        {
            *d = drops;
        }
    }
    while elapsed_ms() + 100 < END_MS {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drain(&mut events, &history, &errors);
    }
}

fn run(scenario: &TopicScenario) -> TopicOutcome {
    let history: Shared<TopicHistory> = Arc::default();
    let errors: Shared<Vec<String>> = Arc::default();
    let store = StoreSlot::default();
    let mut sim = turmoil::Builder::new()
        .rng_seed(scenario.seed)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(25))
        .simulation_duration(Duration::from_millis(END_MS + 10_000))
        .build();
    {
        let (seed, store) = (scenario.seed, store.clone());
        sim.host(SERVER, move || {
            run_server(
                seed,
                ServerSpec::default(),
                store.clone(),
                SimClock::default(),
            )
        });
    }
    {
        let (context, history, errors) = (
            context(SUBSCRIBER, scenario.seed),
            history.clone(),
            errors.clone(),
        );
        sim.client(SUBSCRIBER, async move {
            subscribe(context, history, errors).await;
            Ok(())
        });
    }
    {
        let context = context(PUBLISHER, scenario.seed);
        let (plan, history, errors) = (scenario.clone(), history.clone(), errors.clone());
        sim.client(PUBLISHER, async move {
            publish(context, plan, history, errors).await;
            Ok(())
        });
    }
    let mut injector = FaultInjector::new(
        scenario.faults.clone(),
        Default::default(),
        store,
        Recorder::default(),
    );
    let mut healed = false;
    loop {
        let now = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
        if !healed && now >= WINDOW_MS {
            injector.heal(&mut sim, now, Duration::from_millis(25));
            healed = true;
        } else if !healed {
            injector.apply_due(&mut sim, now);
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                lock(&errors).push(format!("simulation: {e}"));
                break;
            }
        }
    }
    let history = std::mem::take(&mut *lock(&history));
    let errors = std::mem::take(&mut *lock(&errors));
    let trace_hash = crate::harness::trace_hash(&history.trace_lines());
    TopicOutcome {
        history,
        errors,
        trace_hash,
    }
}

/// Runs `config` over the seeds, panicking with a replayable report on the first failure.
/// Returns each run's `(offline publishes, lost to the policy)`.
fn run_family(name: &str, config: &TopicQueueConfig) -> Vec<(usize, usize)> {
    let started = Instant::now();
    let seeds = seeds(SEEDS);
    let mut counts = Vec::new();
    for &seed in &seeds {
        let scenario = scenario(seed, config.clone());
        let outcome = run(&scenario);
        println!(
            "{name} seed {seed}: trace hash {:016x} ({} entries, {} received)",
            outcome.trace_hash,
            outcome.history.publisher.len(),
            outcome.history.received.len()
        );
        let mut found: Vec<Violation> = outcome
            .errors
            .iter()
            .map(|e| Violation {
                property: "simulation",
                detail: e.clone(),
            })
            .collect();
        found.extend(offline_topic_queue(&outcome.history, config));
        if !found.is_empty() {
            let mut report = format!(
                "\n{name} failed on seed {seed} (trace hash {:016x})\nreplay: just sim SEED={seed}\n",
                outcome.trace_hash
            );
            for v in found.iter().take(20) {
                report.push_str(&format!("  [{}] {}\n", v.property, v.detail));
            }
            report.push_str(&format!("faults: {:?}\n", scenario.faults));
            for line in outcome.history.trace_lines() {
                report.push_str(&format!("  {line}\n"));
            }
            panic!("{report}");
        }
        counts.push(outcome.history.offline_counts());
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{name}: {} seeds in {secs:.1} s ({:.2} seeds/s)",
        seeds.len(),
        seeds.len() as f64 / secs.max(f64::EPSILON)
    );
    counts
}

fn small(overflow: TopicOverflow) -> TopicQueueConfig {
    TopicQueueConfig {
        max_size: SMALL_QUEUE,
        max_age: None,
        overflow,
    }
}

#[test]
fn messages_published_offline_arrive_in_order_after_reconnect() {
    let counts = run_family("topics_roomy", &TopicQueueConfig::default());
    for (offline, lost) in counts {
        assert!(offline > 0, "the publisher never queued");
        assert_eq!(lost, 0, "a roomy queue dropped or refused");
    }
}

#[test]
fn a_full_drop_oldest_queue_keeps_the_newest_and_reports_each_drop() {
    let counts = run_family("topics_drop_oldest", &small(TopicOverflow::DropOldest));
    assert!(
        counts.iter().any(|(_, lost)| *lost > 0),
        "nothing overflowed: {counts:?}"
    );
}

#[test]
fn a_full_reject_queue_refuses_and_delivers_what_it_accepted() {
    let counts = run_family("topics_reject", &small(TopicOverflow::Reject));
    assert!(
        counts.iter().any(|(_, lost)| *lost > 0),
        "nothing was refused: {counts:?}"
    );
}

#[test]
fn a_topic_seed_replays_to_the_same_history() {
    let scenario = scenario(seeds(1)[0], small(TopicOverflow::DropOldest));
    let first = run(&scenario);
    let second = run(&scenario);
    assert_eq!(first.history, second.history);
    assert_eq!(first.trace_hash, second.trace_hash);
}
