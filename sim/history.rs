//! A run's history: every op with its client, simulated time and ack outcome, every lock hold,
//! every fault, in the order the simulation produced them. The property checkers read it, and
//! its trace lines feed the determinism hash.

use std::sync::{Arc, Mutex};

use topgun::protocol::WriteConcern;
use topgun::record::{LwwRecord, OrMapRecord};

/// What one write changes.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// An LWW put (value) or remove (tombstone, no value).
    Lww(LwwRecord),
    OrAdd(OrMapRecord),
    OrRemove {
        tag: String,
    },
}

/// How the server answered an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Acked(WriteConcern),
    /// A final rejection (`OP_REJECTED` with a non-transient code).
    Rejected(u32),
}

/// One entry of the history.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A client stamped and queued a write.
    Write {
        client: String,
        op_id: u64,
        at_ms: u64,
        map: String,
        key: String,
        change: Change,
        /// The writer's clock skew when it stamped the op.
        skew_ms: i64,
    },
    /// The server answered an op.
    Answer {
        client: String,
        op_id: u64,
        at_ms: u64,
        outcome: Outcome,
    },
    /// Ops sent again after a reconnect (their first send was never answered).
    Resent {
        client: String,
        op_ids: Vec<u64>,
        at_ms: u64,
    },
    Connected {
        client: String,
        at_ms: u64,
    },
    Disconnected {
        client: String,
        at_ms: u64,
        reason: String,
    },
    /// A client believed it held `lock` with `token` from `from_ms` until `until_ms`.
    LockHeld {
        client: String,
        lock: String,
        token: u64,
        from_ms: u64,
        until_ms: u64,
    },
    /// A fault from the schedule took effect.
    Fault {
        at_ms: u64,
        description: String,
    },
    /// The server host crashed; `store_kept` says whether its durable store survived.
    ServerCrash {
        at_ms: u64,
        store_kept: bool,
    },
    /// A client finished its quiescence flush with ops still unanswered.
    Unflushed {
        client: String,
        at_ms: u64,
        pending: usize,
    },
}

impl Event {
    /// One stable line for the trace hash and for failure reports.
    pub fn trace_line(&self) -> String {
        match self {
            Event::Write {
                client,
                op_id,
                at_ms,
                map,
                key,
                change,
                skew_ms,
            } => format!("{at_ms} {client} write #{op_id} {map}/{key} {change:?} skew={skew_ms}"),
            Event::Answer {
                client,
                op_id,
                at_ms,
                outcome,
            } => format!("{at_ms} {client} answer #{op_id} {outcome:?}"),
            Event::Resent {
                client,
                op_ids,
                at_ms,
            } => format!("{at_ms} {client} resent {op_ids:?}"),
            Event::Connected { client, at_ms } => format!("{at_ms} {client} connected"),
            Event::Disconnected {
                client,
                at_ms,
                reason,
            } => format!("{at_ms} {client} disconnected: {reason}"),
            Event::LockHeld {
                client,
                lock,
                token,
                from_ms,
                until_ms,
            } => format!("{from_ms}..{until_ms} {client} held {lock} token {token}"),
            Event::Fault { at_ms, description } => format!("{at_ms} fault {description}"),
            Event::ServerCrash { at_ms, store_kept } => {
                format!("{at_ms} server crash store_kept={store_kept}")
            }
            Event::Unflushed {
                client,
                at_ms,
                pending,
            } => format!("{at_ms} {client} unflushed {pending}"),
        }
    }
}

/// The history of one run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    pub events: Vec<Event>,
}

impl History {
    pub fn trace_lines(&self) -> Vec<String> {
        self.events.iter().map(Event::trace_line).collect()
    }

    /// Each write with the server's answer to it, if any (the first answer counts).
    pub fn writes(&self) -> Vec<(&Event, Option<Outcome>, Option<u64>)> {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::Write { .. }))
            .map(|write| {
                let answer = self.answer_to(write);
                (write, answer.map(|(o, _)| o), answer.map(|(_, at)| at))
            })
            .collect()
    }

    fn answer_to(&self, write: &Event) -> Option<(Outcome, u64)> {
        let Event::Write { client, op_id, .. } = write else {
            return None;
        };
        self.events.iter().find_map(|e| match e {
            Event::Answer {
                client: c,
                op_id: id,
                at_ms,
                outcome,
            } if c == client && id == op_id => Some((*outcome, *at_ms)),
            _ => None,
        })
    }

    /// Simulated times of server crashes, with whether the store survived.
    pub fn crashes(&self) -> Vec<(u64, bool)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::ServerCrash { at_ms, store_kept } => Some((*at_ms, *store_kept)),
                _ => None,
            })
            .collect()
    }
}

/// The history shared by every host of a run (turmoil runs hosts on one thread, one at a
/// time, so the push order is deterministic).
#[derive(Debug, Clone, Default)]
pub struct Recorder(Arc<Mutex<History>>);

impl Recorder {
    pub fn push(&self, event: Event) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .events
            .push(event);
    }

    pub fn snapshot(&self) -> History {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
