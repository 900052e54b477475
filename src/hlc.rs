//! Hybrid logical clock timestamps and the clock that issues them (PROTOCOL.md §1.5, §4.1).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::clock::SharedClock;

/// An HLC timestamp: `{millis, counter, nodeId}` on the wire, `millis:counter:nodeId` as a string.
///
/// Ordered by `millis`, then `counter`, then `nodeId` in byte order (PROTOCOL.md §4.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timestamp {
    /// Physical component: milliseconds since the Unix epoch.
    pub millis: u64,
    /// Logical component, ordering events within one millisecond.
    pub counter: u32,
    /// The node that issued the timestamp; never contains `:`.
    pub node_id: String,
}

impl Timestamp {
    /// A timestamp from its parts.
    pub fn new(millis: u64, counter: u32, node_id: impl Into<String>) -> Self {
        Self {
            millis,
            counter,
            node_id: node_id.into(),
        }
    }
}

impl Ord for Timestamp {
    fn cmp(&self, other: &Self) -> Ordering {
        self.millis
            .cmp(&other.millis)
            .then(self.counter.cmp(&other.counter))
            .then_with(|| self.node_id.as_bytes().cmp(other.node_id.as_bytes()))
    }
}

impl PartialOrd for Timestamp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.millis, self.counter, self.node_id)
    }
}

/// Why a string is not a `millis:counter:nodeId` timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid HLC timestamp string {0:?}: expected millis:counter:nodeId")]
pub struct ParseTimestampError(pub String);

impl FromStr for Timestamp {
    type Err = ParseTimestampError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseTimestampError(s.to_owned());
        let mut parts = s.split(':');
        let (Some(millis), Some(counter), Some(node_id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err());
        };
        if node_id.is_empty() {
            return Err(err());
        }
        Ok(Self {
            millis: millis.parse().map_err(|_| err())?,
            counter: counter.parse().map_err(|_| err())?,
            node_id: node_id.to_owned(),
        })
    }
}

/// The largest `millis` the HLC will hold or accept: JavaScript's `Number.MAX_SAFE_INTEGER`.
///
/// TS clients carry `millis` as a float64, so anything above 2^53 − 1 cannot round-trip
/// exactly. Bounding here also keeps `millis + 1` (counter roll-over) far from `u64::MAX`.
pub const MAX_WIRE_MILLIS: u64 = (1 << 53) - 1;

/// Default bound on how far a remote timestamp may run ahead of the local physical clock.
pub const DEFAULT_MAX_DRIFT_MS: u64 = 300_000;

/// Minimum interval, in injected-clock milliseconds, between two drift warnings.
const DRIFT_WARN_INTERVAL_MS: u64 = 10_000;

/// Why a node id, a remote timestamp or a clock update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HlcError {
    /// Node ids identify the issuer in every timestamp and tag; an empty one is meaningless.
    #[error("HLC node id must not be empty")]
    EmptyNodeId,
    /// `:` separates the parts of the string form, so it cannot appear in a node id.
    #[error("HLC node id {0:?} must not contain ':'")]
    NodeIdContainsColon(String),
    /// Strict mode refused a remote timestamp too far ahead of the local physical clock.
    #[error(
        "clock drift detected: remote millis {remote_millis} is {drift_ms} ms ahead of local \
         wall clock {wall_millis} (max {max_drift_ms} ms)"
    )]
    ClockDrift {
        /// `millis` of the refused remote timestamp.
        remote_millis: u64,
        /// The local physical clock reading at the time of the update.
        wall_millis: u64,
        /// How far ahead the remote was.
        drift_ms: u64,
        /// The configured bound.
        max_drift_ms: u64,
    },
    /// A remote `millis` beyond [`MAX_WIRE_MILLIS`] cannot come from a sane clock and would
    /// poison every later timestamp this node issues.
    #[error("timestamp millis {0} exceeds the maximum {MAX_WIRE_MILLIS}")]
    MillisOutOfRange(u64),
}

/// Checks a node id for use in timestamps: non-empty and free of `:`.
pub fn validate_node_id(node_id: &str) -> Result<(), HlcError> {
    if node_id.is_empty() {
        return Err(HlcError::EmptyNodeId);
    }
    if node_id.contains(':') {
        return Err(HlcError::NodeIdContainsColon(node_id.to_owned()));
    }
    Ok(())
}

/// Checks a timestamp received from the wire: `millis` within [`MAX_WIRE_MILLIS`] and a valid
/// node id. (`counter` is a `u32` by type; non-finite numbers never get past the codec.)
pub fn validate_wire_timestamp(ts: &Timestamp) -> Result<(), HlcError> {
    check_millis(ts.millis)?;
    validate_node_id(&ts.node_id)
}

fn check_millis(millis: u64) -> Result<(), HlcError> {
    if millis > MAX_WIRE_MILLIS {
        return Err(HlcError::MillisOutOfRange(millis));
    }
    Ok(())
}

/// How the HLC treats remote timestamps that run ahead of the local physical clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HlcConfig {
    /// Refuse (instead of merely logging) remote timestamps more than `max_drift_ms` ahead.
    pub strict: bool,
    /// How far ahead of the local physical clock a remote timestamp may be.
    pub max_drift_ms: u64,
}

impl Default for HlcConfig {
    fn default() -> Self {
        Self {
            strict: false,
            max_drift_ms: DEFAULT_MAX_DRIFT_MS,
        }
    }
}

/// Counts of clock-drift warnings in non-strict mode, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriftStats {
    /// Warnings actually written to the log.
    pub logged: u64,
    /// Drift events swallowed by the rate limit since the service started.
    pub suppressed: u64,
}

/// Rate limiter for drift warnings, driven by the injected clock so simulations are
/// deterministic.
#[derive(Debug, Default)]
struct DriftLog {
    last_logged_at: Option<u64>,
    suppressed_since_last: u64,
    stats: DriftStats,
}

impl DriftLog {
    fn record(&mut self, remote_millis: u64, wall_millis: u64, drift_ms: u64, max_drift_ms: u64) {
        // A clock that moved backwards also reopens the window: better one extra line than
        // silence for an unbounded time.
        let due = self
            .last_logged_at
            .is_none_or(|last| wall_millis < last || wall_millis - last >= DRIFT_WARN_INTERVAL_MS);
        if !due {
            self.suppressed_since_last += 1;
            self.stats.suppressed += 1;
            return;
        }
        tracing::warn!(
            remote_millis,
            wall_millis,
            drift_ms,
            max_drift_ms,
            suppressed = self.suppressed_since_last,
            "clock drift: remote timestamp ahead of local wall clock; accepting (strict mode off)"
        );
        self.last_logged_at = Some(wall_millis);
        self.suppressed_since_last = 0;
        self.stats.logged += 1;
    }
}

/// A hybrid logical clock (PROTOCOL.md §4.1): issues strictly increasing timestamps that
/// track the physical clock and absorb causality from remote timestamps.
///
/// `millis` never exceeds [`MAX_WIRE_MILLIS`] except through counter roll-over (see
/// [`Hlc::now`]), which would take 2^32 issues per millisecond to matter.
pub struct Hlc {
    node_id: String,
    clock: SharedClock,
    config: HlcConfig,
    last_millis: u64,
    last_counter: u32,
    drift_log: DriftLog,
}

impl std::fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hlc")
            .field("node_id", &self.node_id)
            .field("config", &self.config)
            .field("last_millis", &self.last_millis)
            .field("last_counter", &self.last_counter)
            .field("drift_log", &self.drift_log)
            .finish_non_exhaustive()
    }
}

impl Hlc {
    /// An HLC for `node_id` reading `clock`. The node id must be non-empty and free of `:`.
    pub fn new(
        node_id: impl Into<String>,
        clock: SharedClock,
        config: HlcConfig,
    ) -> Result<Self, HlcError> {
        let node_id = node_id.into();
        validate_node_id(&node_id)?;
        Ok(Self {
            node_id,
            clock,
            config,
            last_millis: 0,
            last_counter: 0,
            drift_log: DriftLog::default(),
        })
    }

    /// The node id stamped into every timestamp.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The drift policy.
    pub fn config(&self) -> HlcConfig {
        self.config
    }

    /// The last timestamp issued by [`Hlc::now`] or absorbed by [`Hlc::update`].
    pub fn last(&self) -> Timestamp {
        Timestamp::new(self.last_millis, self.last_counter, self.node_id.clone())
    }

    /// Drift warnings logged and suppressed so far (non-strict mode).
    pub fn drift_stats(&self) -> DriftStats {
        self.drift_log.stats
    }

    /// Issues a timestamp greater than every one issued or observed before.
    ///
    /// When the logical counter would pass `u32::MAX` the HLC moves to the next millisecond
    /// with counter 0 instead of wrapping, so ordering is preserved.
    pub fn now(&mut self) -> Timestamp {
        let wall = self.wall();
        if wall > self.last_millis {
            self.last_millis = wall;
            self.last_counter = 0;
        } else {
            (self.last_millis, self.last_counter) = successor(self.last_millis, self.last_counter);
        }
        self.last()
    }

    /// Absorbs a remote timestamp so that every later [`Hlc::now`] is greater than it.
    ///
    /// In strict mode a remote more than `max_drift_ms` ahead of the physical clock is refused
    /// with [`HlcError::ClockDrift`]; otherwise it is accepted and a rate-limited warning is
    /// logged. A `millis` beyond [`MAX_WIRE_MILLIS`] is always refused. A refused update leaves
    /// the clock unchanged.
    pub fn update(&mut self, remote: &Timestamp) -> Result<(), HlcError> {
        check_millis(remote.millis)?;
        let wall = self.wall();
        let drift_ms = remote.millis.saturating_sub(wall);
        if drift_ms > self.config.max_drift_ms {
            if self.config.strict {
                return Err(HlcError::ClockDrift {
                    remote_millis: remote.millis,
                    wall_millis: wall,
                    drift_ms,
                    max_drift_ms: self.config.max_drift_ms,
                });
            }
            self.drift_log
                .record(remote.millis, wall, drift_ms, self.config.max_drift_ms);
        }

        let max = self.last_millis.max(wall).max(remote.millis);
        let (millis, counter) = if max == self.last_millis && max == remote.millis {
            successor(max, self.last_counter.max(remote.counter))
        } else if max == self.last_millis {
            successor(max, self.last_counter)
        } else if max == remote.millis {
            successor(max, remote.counter)
        } else {
            (max, 0)
        };
        self.last_millis = millis;
        self.last_counter = counter;
        Ok(())
    }

    /// The physical clock, clamped so a broken host clock cannot push `millis` past what the
    /// wire can carry.
    fn wall(&self) -> u64 {
        self.clock.now_millis().min(MAX_WIRE_MILLIS)
    }
}

/// The next `(millis, counter)` after the given one: counter + 1, rolling over into the next
/// millisecond rather than wrapping.
fn successor(millis: u64, counter: u32) -> (u64, u32) {
    match counter.checked_add(1) {
        Some(next) => (millis, next),
        // `millis` is bounded by MAX_WIRE_MILLIS plus roll-overs, so this never saturates.
        None => (millis.saturating_add(1), 0),
    }
}

#[cfg(test)]
mod timestamp_tests {
    use super::*;

    #[test]
    fn orders_by_millis_counter_then_node_bytes() {
        let a = Timestamp::new(1, 0, "b");
        assert!(a < Timestamp::new(2, 0, "a"));
        assert!(a < Timestamp::new(1, 1, "a"));
        assert!(
            Timestamp::new(1, 0, "B") < Timestamp::new(1, 0, "a"),
            "byte order, not locale"
        );
        assert_eq!(a.cmp(&a.clone()), Ordering::Equal);
    }

    #[test]
    fn string_form_round_trips() {
        let t = Timestamp::new(1_700_000_000_000, 3, "node-1");
        assert_eq!(t.to_string(), "1700000000000:3:node-1");
        assert_eq!("1700000000000:3:node-1".parse::<Timestamp>(), Ok(t));
        assert!("1:2".parse::<Timestamp>().is_err());
        assert!("1:2:a:b".parse::<Timestamp>().is_err());
        assert!("x:2:a".parse::<Timestamp>().is_err());
        assert!("1:2:".parse::<Timestamp>().is_err());
    }
}

#[cfg(test)]
mod hlc_tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::clock::{Clock, ManualClock};

    fn hlc_at(millis: u64, config: HlcConfig) -> (Hlc, ManualClock) {
        let clock = ManualClock::new(millis);
        let hlc = Hlc::new("node-a", Arc::new(clock.clone()), config).unwrap();
        (hlc, clock)
    }

    fn strict() -> HlcConfig {
        HlcConfig {
            strict: true,
            max_drift_ms: 1_000,
        }
    }

    #[test]
    fn default_config_is_lenient_with_five_minutes_drift() {
        assert_eq!(
            HlcConfig::default(),
            HlcConfig {
                strict: false,
                max_drift_ms: 300_000
            }
        );
    }

    #[test]
    fn rejects_bad_node_ids() {
        let clock: SharedClock = Arc::new(ManualClock::new(0));
        assert_eq!(
            Hlc::new("", clock.clone(), HlcConfig::default()).unwrap_err(),
            HlcError::EmptyNodeId
        );
        assert_eq!(
            Hlc::new("a:b", clock, HlcConfig::default()).unwrap_err(),
            HlcError::NodeIdContainsColon("a:b".into())
        );
    }

    #[test]
    fn now_follows_wall_clock_and_counts_within_a_millisecond() {
        let (mut hlc, clock) = hlc_at(1_000, HlcConfig::default());
        assert_eq!(hlc.now(), Timestamp::new(1_000, 0, "node-a"));
        assert_eq!(hlc.now(), Timestamp::new(1_000, 1, "node-a"));
        clock.set(900);
        assert_eq!(
            hlc.now(),
            Timestamp::new(1_000, 2, "node-a"),
            "clock went back"
        );
        clock.set(2_000);
        assert_eq!(hlc.now(), Timestamp::new(2_000, 0, "node-a"));
        assert_eq!(hlc.last(), Timestamp::new(2_000, 0, "node-a"));
        assert_eq!(hlc.node_id(), "node-a");
    }

    #[test]
    fn update_follows_the_four_cases_of_the_spec() {
        // remote ahead of both: take remote counter + 1
        let (mut hlc, _clock) = hlc_at(1_000, HlcConfig::default());
        hlc.update(&Timestamp::new(1_500, 7, "r")).unwrap();
        assert_eq!(hlc.last(), Timestamp::new(1_500, 8, "node-a"));
        // local == remote millis: max counter + 1
        hlc.update(&Timestamp::new(1_500, 20, "r")).unwrap();
        assert_eq!(hlc.last(), Timestamp::new(1_500, 21, "node-a"));
        // local ahead: local counter + 1
        hlc.update(&Timestamp::new(1_200, 99, "r")).unwrap();
        assert_eq!(hlc.last(), Timestamp::new(1_500, 22, "node-a"));
        // wall ahead of both: counter 0
        let (mut hlc, _clock) = hlc_at(5_000, HlcConfig::default());
        hlc.update(&Timestamp::new(4_000, 3, "r")).unwrap();
        assert_eq!(hlc.last(), Timestamp::new(5_000, 0, "node-a"));
    }

    #[test]
    fn counter_overflow_rolls_into_next_millisecond() {
        let (mut hlc, _clock) = hlc_at(1_000, HlcConfig::default());
        hlc.update(&Timestamp::new(1_000, u32::MAX - 1, "r"))
            .unwrap();
        assert_eq!(hlc.last(), Timestamp::new(1_000, u32::MAX, "node-a"));
        assert_eq!(hlc.now(), Timestamp::new(1_001, 0, "node-a"));
        hlc.update(&Timestamp::new(1_001, u32::MAX, "r")).unwrap();
        assert_eq!(hlc.last(), Timestamp::new(1_002, 0, "node-a"));
    }

    #[test]
    fn millis_beyond_the_wire_range_are_refused_and_clock_unchanged() {
        let (mut hlc, _clock) = hlc_at(1_000, HlcConfig::default());
        let before = hlc.now();
        assert_eq!(
            hlc.update(&Timestamp::new(u64::MAX, 0, "r")),
            Err(HlcError::MillisOutOfRange(u64::MAX))
        );
        assert_eq!(hlc.last(), before);
        assert!(hlc.update(&Timestamp::new(MAX_WIRE_MILLIS, 0, "r")).is_ok());
    }

    #[test]
    fn broken_wall_clock_is_clamped_to_wire_range() {
        let (mut hlc, _clock) = hlc_at(u64::MAX, HlcConfig::default());
        assert_eq!(hlc.now().millis, MAX_WIRE_MILLIS);
    }

    #[test]
    fn strict_mode_refuses_drift_and_keeps_state() {
        let (mut hlc, _clock) = hlc_at(10_000, strict());
        let before = hlc.now();
        let err = hlc.update(&Timestamp::new(11_001, 0, "r")).unwrap_err();
        assert_eq!(
            err,
            HlcError::ClockDrift {
                remote_millis: 11_001,
                wall_millis: 10_000,
                drift_ms: 1_001,
                max_drift_ms: 1_000
            }
        );
        assert_eq!(hlc.last(), before);
        hlc.update(&Timestamp::new(11_000, 0, "r")).unwrap();
        assert_eq!(hlc.last(), Timestamp::new(11_000, 1, "node-a"));
    }

    #[test]
    fn lenient_mode_accepts_drift_and_rate_limits_warnings() {
        let (mut hlc, clock) = hlc_at(
            10_000,
            HlcConfig {
                strict: false,
                max_drift_ms: 1_000,
            },
        );
        for _ in 0..5 {
            hlc.update(&Timestamp::new(50_000, 0, "r")).unwrap();
        }
        assert_eq!(hlc.last().millis, 50_000);
        assert_eq!(
            hlc.drift_stats(),
            DriftStats {
                logged: 1,
                suppressed: 4
            }
        );
        clock.advance(9_999);
        hlc.update(&Timestamp::new(60_000, 0, "r")).unwrap();
        assert_eq!(hlc.drift_stats().logged, 1);
        clock.advance(1);
        hlc.update(&Timestamp::new(60_000, 0, "r")).unwrap();
        assert_eq!(
            hlc.drift_stats(),
            DriftStats {
                logged: 2,
                suppressed: 5
            }
        );
    }

    #[test]
    fn wire_validation_checks_millis_and_node_id() {
        assert!(validate_wire_timestamp(&Timestamp::new(1, 2, "n")).is_ok());
        assert_eq!(
            validate_wire_timestamp(&Timestamp::new(MAX_WIRE_MILLIS + 1, 0, "n")),
            Err(HlcError::MillisOutOfRange(MAX_WIRE_MILLIS + 1))
        );
        assert_eq!(
            validate_wire_timestamp(&Timestamp::new(1, 0, "")),
            Err(HlcError::EmptyNodeId)
        );
        assert_eq!(
            validate_wire_timestamp(&Timestamp::new(1, 0, "x:y")),
            Err(HlcError::NodeIdContainsColon("x:y".into()))
        );
    }

    #[derive(Debug, Clone)]
    enum Step {
        SetClock(u64),
        Now,
        Update(u64, u32),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u64..100_000).prop_map(Step::SetClock),
            Just(Step::Now),
            (
                0u64..100_000,
                prop_oneof![0u32..10, (u32::MAX - 3)..=u32::MAX]
            )
                .prop_map(|(m, c)| Step::Update(m, c)),
        ]
    }

    proptest! {
        #[test]
        fn now_is_strictly_monotonic_under_any_clock_moves(steps in prop::collection::vec(step(), 1..200)) {
            let (mut hlc, clock) = hlc_at(50_000, HlcConfig::default());
            let mut prev = hlc.now();
            for s in steps {
                match s {
                    Step::SetClock(m) => clock.set(m),
                    Step::Now => {
                        let t = hlc.now();
                        prop_assert!(t > prev, "{t} not after {prev}");
                        prev = t;
                    }
                    Step::Update(m, c) => {
                        let remote = Timestamp::new(m, c, "remote");
                        hlc.update(&remote).unwrap();
                        let t = hlc.now();
                        prop_assert!(t > prev);
                        prop_assert!(t > remote, "{t} not after remote {remote}");
                        prev = t;
                    }
                }
            }
        }

        #[test]
        fn strict_mode_never_runs_ahead_of_physical_clock_by_more_than_max_drift(
            start in 0u64..1_000_000,
            moves in prop::collection::vec((0u64..5_000, 0u64..10_000, any::<u32>()), 1..100),
        ) {
            let (mut hlc, clock) = hlc_at(start, strict());
            for (advance, ahead, counter) in moves {
                clock.advance(advance);
                let wall = clock.now_millis();
                let result = hlc.update(&Timestamp::new(wall + ahead, counter, "r"));
                prop_assert_eq!(result.is_ok(), ahead <= 1_000);
                // +1: a counter roll-over may step one millisecond past the accepted remote.
                prop_assert!(hlc.last().millis <= wall + 1_000 + 1);
            }
        }

        #[test]
        fn lenient_mode_accepts_any_in_range_remote(start in 0u64..1_000_000, ahead in 0u64..MAX_WIRE_MILLIS / 2, counter in 0u32..u32::MAX) {
            let (mut hlc, _clock) = hlc_at(start, strict_off(1_000));
            let remote = Timestamp::new(start + ahead, counter, "r");
            prop_assert!(hlc.update(&remote).is_ok());
            prop_assert_eq!(hlc.last(), Timestamp::new(start + ahead, counter + 1, "node-a"));
        }
    }

    fn strict_off(max_drift_ms: u64) -> HlcConfig {
        HlcConfig {
            strict: false,
            max_drift_ms,
        }
    }
}
