//! The scenario API: hosts (one server, named clients), a workload, a fault schedule and a
//! timeline, all drawn from one seed; [`run`] plays it under turmoil and returns the history
//! and every replica's final state.
//!
//! Timeline of a run: the workload and the faults happen in `[0, window_ms)`; at `window_ms`
//! every fault is healed; clients then reconnect and flush their op logs until
//! `window_ms + flush_ms`; after a short settle every client Merkle-syncs every map and
//! reports its state. The server's final state is read from its store afterwards.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use topgun::protocol::WriteConcern;
use topgun::replica::{LwwReplica, OrReplica};
use topgun::store::{MapSnapshot, MemoryStore, Store};

use crate::client::{COMBINE, ClientContext, MapSpec, MapState, SimClientHost};
use crate::faults::{FaultEvent, FaultInjector};
use crate::harness::{SERVER, ServerSpec, SimClock, SkewCell, StoreSlot, elapsed_ms, run_server};
use crate::history::{Event, History, Recorder};
use crate::workload::{WorkItem, WorkOp};

/// A client host.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    pub name: String,
    pub initial_skew_ms: i64,
    pub write_concern: WriteConcern,
}

/// Everything one run does; built from a seed by a scenario family, replayable exactly.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub server: ServerSpec,
    pub server_skew_ms: i64,
    pub clients: Vec<ClientSpec>,
    pub maps: Vec<MapSpec>,
    pub plans: BTreeMap<String, Vec<WorkItem>>,
    pub faults: Vec<FaultEvent>,
    pub window_ms: u64,
    pub flush_ms: u64,
    /// Base message latency range.
    pub latency_ms: (u64, u64),
    /// Longest wait for any one server answer before a client treats its connection as lost.
    pub timeout: Duration,
}

/// One replica's view of a map: its state, its Merkle root, and (for clients) the root the
/// server advertised in the final sync.
#[derive(Debug, Clone, PartialEq)]
pub struct MapFinal {
    pub state: MapState,
    pub root: u32,
    pub server_root: Option<u32>,
    /// Whether the final sync completed (always true for the server).
    pub synced: bool,
}

/// Final states: the server's and each client's, by map name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Finals {
    pub server: BTreeMap<String, MapFinal>,
    pub clients: BTreeMap<String, BTreeMap<String, MapFinal>>,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub history: History,
    pub finals: Finals,
    pub trace_hash: u64,
    /// A host failed or the simulation ran out of time.
    pub sim_error: Option<String>,
}

/// Plays `scenario` with clients of type `C`.
pub fn run<C: SimClientHost>(scenario: &Scenario) -> RunOutcome {
    let recorder = Recorder::default();
    let store = StoreSlot::default();
    let finals: Arc<Mutex<BTreeMap<String, BTreeMap<String, MapFinal>>>> = Arc::default();
    let total = scenario.window_ms + scenario.flush_ms + 60_000;
    let mut sim = turmoil::Builder::new()
        .rng_seed(scenario.seed)
        .min_message_latency(Duration::from_millis(scenario.latency_ms.0))
        .max_message_latency(Duration::from_millis(scenario.latency_ms.1))
        .simulation_duration(Duration::from_millis(total))
        .build();

    let server_clock = SimClock::default();
    server_clock.skew.set(scenario.server_skew_ms);
    let mut skews: BTreeMap<String, SkewCell> = BTreeMap::new();
    skews.insert(SERVER.to_owned(), server_clock.skew.clone());
    {
        let (seed, spec, store) = (scenario.seed, scenario.server, store.clone());
        sim.host(SERVER, move || {
            run_server(seed, spec, store.clone(), server_clock.clone())
        });
    }
    for spec in &scenario.clients {
        let clock = SimClock::default();
        clock.skew.set(spec.initial_skew_ms);
        skews.insert(spec.name.clone(), clock.skew.clone());
        let context = ClientContext {
            name: spec.name.clone(),
            clock,
            maps: scenario.maps.clone(),
            write_concern: spec.write_concern,
            timeout: scenario.timeout,
            entropy_seed: scenario.seed ^ crate::harness::trace_hash(&[&spec.name]),
        };
        let driver = Driver {
            plan: scenario.plans.get(&spec.name).cloned().unwrap_or_default(),
            window_ms: scenario.window_ms,
            flush_ms: scenario.flush_ms,
            recorder: recorder.clone(),
            finals: finals.clone(),
        };
        sim.client(spec.name.as_str(), async move {
            driver.drive::<C>(context).await;
            Ok(())
        });
    }

    let base_latency = Duration::from_millis(scenario.latency_ms.1);
    let mut injector = FaultInjector::new(
        scenario.faults.clone(),
        skews,
        store.clone(),
        recorder.clone(),
    );
    let mut healed = false;
    let mut sim_error = None;
    loop {
        let now = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
        if !healed && now >= scenario.window_ms {
            injector.heal(&mut sim, now, base_latency);
            healed = true;
        } else if !healed {
            injector.apply_due(&mut sim, now);
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                sim_error = Some(e.to_string());
                break;
            }
        }
    }

    let history = recorder.snapshot();
    let server = server_finals(&store.current(), &scenario.maps);
    let clients = std::mem::take(&mut *finals.lock().unwrap_or_else(|e| e.into_inner()));
    let finals = Finals { server, clients };
    // The final states belong to the trace too: equal histories must end in equal states.
    let mut lines = history.trace_lines();
    lines.push(format!("{finals:?}"));
    let trace_hash = crate::harness::trace_hash(&lines);
    RunOutcome {
        history,
        finals,
        trace_hash,
        sim_error,
    }
}

/// The server's committed state of each map, read from its store.
fn server_finals(store: &MemoryStore, maps: &[MapSpec]) -> BTreeMap<String, MapFinal> {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return BTreeMap::new();
    };
    maps.iter()
        .map(|map| {
            let snapshot = runtime.block_on(store.load_map(&map.name)).ok().flatten();
            let (state, root) = match snapshot {
                Some(snapshot) => snapshot_state(snapshot),
                None => empty_state(map.kind),
            };
            (
                map.name.clone(),
                MapFinal {
                    state,
                    root,
                    server_root: None,
                    synced: true,
                },
            )
        })
        .collect()
}

/// A stored map's state and its Merkle root under our combine.
pub fn snapshot_state(snapshot: MapSnapshot) -> (MapState, u32) {
    match snapshot {
        MapSnapshot::Or {
            records,
            tombstones,
        } => {
            let replica = OrReplica::from_parts(records, tombstones);
            (MapState::from_or(&replica), replica.merkle().root(COMBINE))
        }
        MapSnapshot::Lww { records } => {
            let replica = LwwReplica::from_records(records);
            (MapState::from_lww(&replica), replica.merkle().root(COMBINE))
        }
    }
}

/// The state of a map nobody wrote.
pub fn empty_state(kind: crate::client::MapKind) -> (MapState, u32) {
    match kind {
        crate::client::MapKind::Lww => (MapState::from_lww(&LwwReplica::default()), 0),
        crate::client::MapKind::Or => (MapState::from_or(&OrReplica::default()), 0),
    }
}

/// Runs one client's plan, then its quiescence flush and final sync.
struct Driver {
    plan: Vec<WorkItem>,
    window_ms: u64,
    flush_ms: u64,
    recorder: Recorder,
    finals: Arc<Mutex<BTreeMap<String, BTreeMap<String, MapFinal>>>>,
}

/// Sleeps until `at_ms` of simulated time.
async fn sleep_until(at_ms: u64) {
    let now = elapsed_ms();
    if at_ms > now {
        tokio::time::sleep(Duration::from_millis(at_ms - now)).await;
    }
}

impl Driver {
    async fn drive<C: SimClientHost>(self, context: ClientContext) {
        let name = context.name.clone();
        let maps = context.maps.clone();
        let Ok(mut client) = C::create(context.clone()).await else {
            return;
        };
        for item in &self.plan {
            sleep_until(item.at_ms).await;
            // A plan that fell behind (waits on a broken network) stops at the window's end,
            // so no write races the final syncs.
            if elapsed_ms() >= self.window_ms {
                break;
            }
            self.ensure_connected(&mut client, &name).await;
            self.perform(&mut client, &name, &context, &item.op).await;
        }
        // Quiescence: faults are healed at `window_ms`; flush until every op is answered.
        sleep_until(self.window_ms + 200).await;
        let flush_deadline = self.window_ms + self.flush_ms;
        while client.pending().await > 0 && elapsed_ms() < flush_deadline {
            self.ensure_connected(&mut client, &name).await;
            self.flush(&mut client, &name).await;
            if client.pending().await > 0 {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        let pending = client.pending().await;
        if pending > 0 {
            self.recorder.push(Event::Unflushed {
                client: name.clone(),
                at_ms: elapsed_ms(),
                pending,
            });
        }
        // Everyone's writes are in: pull every map.
        sleep_until(flush_deadline + 1_000).await;
        let mut mine = BTreeMap::new();
        for map in &maps {
            let (mut server_root, mut synced) = (None, false);
            for _ in 0..5 {
                self.ensure_connected(&mut client, &name).await;
                match client.sync(map).await {
                    Ok(root) => {
                        (server_root, synced) = (root, true);
                        break;
                    }
                    Err(e) => self.lost(&mut client, &name, &e.to_string()),
                }
            }
            let (state, root) = client.state(map).await;
            mine.insert(
                map.name.clone(),
                MapFinal {
                    state,
                    root,
                    server_root,
                    synced,
                },
            );
        }
        // Answers that arrived during the syncs belong to the history too.
        self.flush(&mut client, &name).await;
        self.finals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, mine);
    }

    async fn ensure_connected<C: SimClientHost>(&self, client: &mut C, name: &str) {
        if client.is_connected() {
            return;
        }
        match client.connect().await {
            Ok(()) => self.recorder.push(Event::Connected {
                client: name.to_owned(),
                at_ms: elapsed_ms(),
            }),
            Err(e) => self.lost(client, name, &format!("connect: {e}")),
        }
    }

    fn lost<C: SimClientHost>(&self, client: &mut C, name: &str, reason: &str) {
        client.disconnect();
        self.recorder.push(Event::Disconnected {
            client: name.to_owned(),
            at_ms: elapsed_ms(),
            reason: reason.to_owned(),
        });
    }

    async fn flush<C: SimClientHost>(&self, client: &mut C, name: &str) {
        if !client.is_connected() {
            return;
        }
        match client.flush().await {
            Ok(report) => self.record_flush(name, report),
            Err(e) => self.lost(client, name, &format!("flush: {e}")),
        }
    }

    fn record_flush(&self, name: &str, report: crate::client::FlushReport) {
        let at_ms = elapsed_ms();
        if !report.resent.is_empty() {
            self.recorder.push(Event::Resent {
                client: name.to_owned(),
                op_ids: report.resent,
                at_ms,
            });
        }
        for (op_id, outcome, answered_ms) in report.answers {
            self.recorder.push(Event::Answer {
                client: name.to_owned(),
                op_id,
                at_ms: answered_ms,
                outcome,
            });
        }
    }

    async fn perform<C: SimClientHost>(
        &self,
        client: &mut C,
        name: &str,
        context: &ClientContext,
        op: &WorkOp,
    ) {
        match op {
            WorkOp::Write { map, request } => {
                let Some(map) = context.maps.get(*map) else {
                    return;
                };
                for stamped in client.write(map, request.clone()).await {
                    self.recorder.push(Event::Write {
                        client: name.to_owned(),
                        op_id: stamped.op_id,
                        at_ms: elapsed_ms(),
                        map: stamped.map,
                        key: stamped.key,
                        change: stamped.change,
                        skew_ms: context.clock.skew.get(),
                    });
                }
                self.flush(client, name).await;
            }
            WorkOp::Sync { map } => {
                let Some(map) = context.maps.get(*map) else {
                    return;
                };
                if client.is_connected() {
                    if let Err(e) = client.sync(map).await {
                        self.lost(client, name, &format!("sync: {e}"));
                    }
                }
            }
            WorkOp::Lock {
                name: lock,
                ttl_ms,
                hold_ms,
            } => self.hold_lock(client, name, lock, *ttl_ms, *hold_ms).await,
        }
    }

    /// Takes `lock`, holds it, releases it. The client believes it holds the lock from the
    /// grant until the release or until its lease runs out, counted from when it *asked*
    /// (the server's lease starts later, at the grant), on simulated time.
    async fn hold_lock<C: SimClientHost>(
        &self,
        client: &mut C,
        name: &str,
        lock: &str,
        ttl_ms: u64,
        hold_ms: u64,
    ) {
        if !client.is_connected() {
            return;
        }
        let asked = elapsed_ms();
        let wait = Duration::from_millis(2 * ttl_ms);
        let token = match client.lock(lock, ttl_ms, wait).await {
            Ok(Some(token)) => token,
            Ok(None) => return,
            Err(e) => return self.lost(client, name, &format!("lock: {e}")),
        };
        let from_ms = elapsed_ms();
        tokio::time::sleep(Duration::from_millis(hold_ms)).await;
        let until_ms = elapsed_ms().min(asked + ttl_ms);
        if until_ms > from_ms {
            self.recorder.push(Event::LockHeld {
                client: name.to_owned(),
                lock: lock.to_owned(),
                token,
                from_ms,
                until_ms,
            });
        }
        if client.is_connected() {
            if let Err(e) = client.unlock(lock, token).await {
                self.lost(client, name, &format!("unlock: {e}"));
            }
        }
    }
}
