//! The client's write backpressure: decides what a new write does when too many ops are in
//! flight (TOPGUN-REFERENCE.md §3.5, defect 15).
//!
//! The window is the **in-flight** count (ops sent on this session and not yet acked), which
//! the engine reports with [`BackpressureController::set_in_flight`]. Offline nothing is in
//! flight, so offline writes are never refused: durable offline capacity is the local store
//! holding the op log, not this window. Strategies when the window is full:
//! - `Pause`: the write waits on [`BackpressureController::released`], which resolves for
//!   every waiter at once when the window drains to the low-water mark; each waiter then asks
//!   [`BackpressureController::admit`] again, so released writes never overshoot the max.
//! - `Throw`: the write fails with a typed [`BackpressureError`].
//! - `DropOldest`: the write proceeds and the engine durably drops the oldest unsent op
//!   (`OpLog::drop_oldest`), reporting it as [`BackpressureEvent::Dropped`].
//!
//! Water marks: `High` fires once when the window reaches `floor(max × high_water)`, and
//! `Low` fires once it has drained to `floor(max × low_water)` again (hysteresis, so a window
//! hovering near a mark does not flood the app with events).

use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::protocol::ClientOp;

/// What a write does when the window is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BackpressureStrategy {
    /// Wait until the window drains to the low-water mark.
    #[default]
    Pause,
    /// Fail with [`BackpressureError`].
    Throw,
    /// Drop the oldest unsent op, durably, and proceed.
    DropOldest,
}

/// Backpressure settings. Defaults: 1,000 ops in flight, `Pause`, marks 0.8 / 0.5.
#[derive(Debug, Clone, PartialEq)]
pub struct BackpressureConfig {
    /// The most ops in flight before writes are held back (at least 1 is used).
    pub max_in_flight: u64,
    /// What a write does when the window is full.
    pub strategy: BackpressureStrategy,
    /// Fraction of `max_in_flight` at which `High` fires (clamped to 0..=1).
    pub high_water: f64,
    /// Fraction of `max_in_flight` at which paused writes resume and `Low` fires (clamped to
    /// 0..=`high_water`).
    pub low_water: f64,
}

impl Default for BackpressureConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 1_000,
            strategy: BackpressureStrategy::Pause,
            high_water: 0.8,
            low_water: 0.5,
        }
    }
}

/// Something the app may want to know about the window.
#[derive(Debug, Clone, PartialEq)]
pub enum BackpressureEvent {
    /// The window reached the high-water mark.
    High {
        /// Ops in flight.
        in_flight: u64,
        /// The window's size.
        max: u64,
    },
    /// A write is waiting for the window to drain (fires once per pause).
    Paused,
    /// Paused writes may proceed again.
    Resumed,
    /// The window drained to the low-water mark after reaching the high one.
    Low {
        /// Ops in flight.
        in_flight: u64,
        /// The window's size.
        max: u64,
    },
    /// An unsent op was dropped durably to make room (`DropOldest`).
    Dropped {
        /// The dropped op's id.
        op_id: u64,
        /// Its map.
        map_name: String,
        /// Its key.
        key: String,
    },
}

impl BackpressureEvent {
    /// The `Dropped` event for an op removed by `OpLog::drop_oldest`.
    pub fn dropped(op: &ClientOp, op_id: u64) -> Self {
        Self::Dropped {
            op_id,
            map_name: op.map_name.clone(),
            key: op.key.to_string(),
        }
    }
}

/// A write refused by the `Throw` strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("write refused: {in_flight} ops are in flight (the window holds {max})")]
pub struct BackpressureError {
    /// Ops in flight when the write was refused.
    pub in_flight: u64,
    /// The window's size.
    pub max: u64,
}

/// What a new write must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Proceed,
    /// Await [`BackpressureController::released`], then ask again.
    Wait,
    /// Fail the write with this error.
    Fail(BackpressureError),
    /// Drop the oldest unsent op (and report it), then go ahead.
    DropOldest,
}

/// A snapshot of the window, for the app.
#[derive(Debug, Clone, PartialEq)]
pub struct BackpressureStatus {
    /// Ops in flight.
    pub in_flight: u64,
    /// The window's size.
    pub max: u64,
    /// `in_flight` as a percentage of `max` (may exceed 100 after a shrink).
    pub percentage: f64,
    /// Whether writes are waiting.
    pub paused: bool,
    /// The configured strategy.
    pub strategy: BackpressureStrategy,
}

#[derive(Debug, Default)]
struct State {
    in_flight: u64,
    paused: bool,
    above_high: bool,
}

/// Decides what writes do as the in-flight window fills and drains. Shareable (`&self`).
#[derive(Debug)]
pub struct BackpressureController {
    strategy: BackpressureStrategy,
    max: u64,
    high_mark: u64,
    low_mark: u64,
    state: Mutex<State>,
    released: Notify,
}

impl BackpressureController {
    /// A controller with `config`, sanitised: `max_in_flight` at least 1, marks clamped to
    /// `0 ≤ low ≤ high ≤ 1`, and the high mark at least one op.
    pub fn new(config: BackpressureConfig) -> Self {
        let max = config.max_in_flight.max(1);
        let high = clamp_fraction(config.high_water);
        let low = clamp_fraction(config.low_water).min(high);
        Self {
            strategy: config.strategy,
            max,
            high_mark: mark(max, high).max(1),
            low_mark: mark(max, low),
            state: Mutex::new(State::default()),
            released: Notify::new(),
        }
    }

    /// Records the current in-flight count (after sends, acks, rejections and disconnects) and
    /// returns the events it causes; releases paused writes once it is at the low mark.
    pub fn set_in_flight(&self, in_flight: u64) -> Vec<BackpressureEvent> {
        let mut events = Vec::new();
        let mut state = self.lock();
        state.in_flight = in_flight;
        if !state.above_high && in_flight >= self.high_mark {
            state.above_high = true;
            events.push(BackpressureEvent::High {
                in_flight,
                max: self.max,
            });
        }
        if in_flight <= self.low_mark {
            if state.above_high {
                state.above_high = false;
                events.push(BackpressureEvent::Low {
                    in_flight,
                    max: self.max,
                });
            }
            if state.paused {
                state.paused = false;
                events.push(BackpressureEvent::Resumed);
                self.released.notify_waiters();
            }
        }
        events
    }

    /// What a new write must do now, and the `Paused` event when this write starts a pause.
    pub fn admit(&self) -> (Admission, Option<BackpressureEvent>) {
        let mut state = self.lock();
        if state.in_flight < self.max {
            // Writers released by a drain go ahead only while the window has room.
            return if state.paused {
                (Admission::Wait, None)
            } else {
                (Admission::Proceed, None)
            };
        }
        match self.strategy {
            BackpressureStrategy::Pause => {
                let event = (!state.paused).then_some(BackpressureEvent::Paused);
                state.paused = true;
                (Admission::Wait, event)
            }
            BackpressureStrategy::Throw => (
                Admission::Fail(BackpressureError {
                    in_flight: state.in_flight,
                    max: self.max,
                }),
                None,
            ),
            BackpressureStrategy::DropOldest => (Admission::DropOldest, None),
        }
    }

    /// Resolves once writes are no longer paused (at once if they are not).
    pub async fn released(&self) {
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            // Registered before the check, so a release between the check and the await is
            // not missed.
            notified.as_mut().enable();
            if !self.lock().paused {
                return;
            }
            notified.await;
        }
    }

    /// The window as the app sees it.
    pub fn status(&self) -> BackpressureStatus {
        let state = self.lock();
        BackpressureStatus {
            in_flight: state.in_flight,
            max: self.max,
            percentage: state.in_flight as f64 * 100.0 / self.max as f64,
            paused: state.paused,
            strategy: self.strategy,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent under a panic elsewhere: every update is a plain store.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn clamp_fraction(fraction: f64) -> f64 {
    if fraction.is_nan() {
        0.0
    } else {
        fraction.clamp(0.0, 1.0)
    }
}

/// `floor(max × fraction)`, exact for the fractions apps use.
fn mark(max: u64, fraction: f64) -> u64 {
    (max as f64 * fraction).floor() as u64
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn controller(strategy: BackpressureStrategy) -> BackpressureController {
        BackpressureController::new(BackpressureConfig {
            max_in_flight: 10,
            strategy,
            ..BackpressureConfig::default()
        })
    }

    #[test]
    fn defaults_match_the_reference() {
        let config = BackpressureConfig::default();
        assert_eq!(config.max_in_flight, 1_000);
        assert_eq!(config.strategy, BackpressureStrategy::Pause);
        let controller = BackpressureController::new(config);
        assert_eq!((controller.high_mark, controller.low_mark), (800, 500));
    }

    #[test]
    fn water_marks_fire_once_per_crossing() {
        let controller = controller(BackpressureStrategy::Pause);
        assert!(controller.set_in_flight(7).is_empty());
        assert_eq!(
            controller.set_in_flight(8),
            vec![BackpressureEvent::High {
                in_flight: 8,
                max: 10
            }]
        );
        assert!(controller.set_in_flight(9).is_empty(), "already high");
        assert!(controller.set_in_flight(6).is_empty(), "not yet low");
        assert!(controller.set_in_flight(8).is_empty(), "still high");
        assert_eq!(
            controller.set_in_flight(5),
            vec![BackpressureEvent::Low {
                in_flight: 5,
                max: 10
            }]
        );
        assert!(controller.set_in_flight(0).is_empty());
        assert_eq!(controller.set_in_flight(10).len(), 1, "re-armed");
    }

    #[test]
    fn below_the_max_every_strategy_proceeds() {
        for strategy in [
            BackpressureStrategy::Pause,
            BackpressureStrategy::Throw,
            BackpressureStrategy::DropOldest,
        ] {
            let controller = controller(strategy);
            controller.set_in_flight(9);
            assert_eq!(
                controller.admit(),
                (Admission::Proceed, None),
                "{strategy:?}"
            );
        }
    }

    #[test]
    fn throw_refuses_with_a_typed_error() {
        let controller = controller(BackpressureStrategy::Throw);
        controller.set_in_flight(10);
        let error = BackpressureError {
            in_flight: 10,
            max: 10,
        };
        assert_eq!(controller.admit(), (Admission::Fail(error), None));
        assert_eq!(
            error.to_string(),
            "write refused: 10 ops are in flight (the window holds 10)"
        );
        controller.set_in_flight(9);
        assert_eq!(controller.admit().0, Admission::Proceed);
    }

    #[test]
    fn drop_oldest_lets_the_write_proceed_after_a_drop() {
        let controller = controller(BackpressureStrategy::DropOldest);
        controller.set_in_flight(12);
        assert_eq!(controller.admit(), (Admission::DropOldest, None));
        assert!(!controller.status().paused);
        let op = ClientOp {
            id: Some("7".into()),
            map_name: "todos".into(),
            key: "a".into(),
            op_type: None,
            record: None,
            or_record: None,
            or_tag: None,
            write_concern: None,
            timeout: None,
        };
        assert_eq!(
            BackpressureEvent::dropped(&op, 7),
            BackpressureEvent::Dropped {
                op_id: 7,
                map_name: "todos".into(),
                key: "a".into()
            }
        );
    }

    #[test]
    fn offline_writes_are_never_refused() {
        let controller = controller(BackpressureStrategy::Throw);
        controller.set_in_flight(10);
        // A disconnect returns every in-flight op to the log: the window is empty.
        controller.set_in_flight(0);
        assert_eq!(controller.admit().0, Admission::Proceed);
    }

    #[test]
    fn pause_holds_writes_until_the_low_mark() {
        let controller = controller(BackpressureStrategy::Pause);
        controller.set_in_flight(10);
        assert_eq!(
            controller.admit(),
            (Admission::Wait, Some(BackpressureEvent::Paused))
        );
        assert_eq!(controller.admit(), (Admission::Wait, None), "paused once");
        assert!(controller.status().paused);
        // Room below the max is not enough: the pause lasts until the low mark.
        assert!(controller.set_in_flight(7).is_empty());
        assert_eq!(controller.admit().0, Admission::Wait);
        assert_eq!(
            controller.set_in_flight(5),
            vec![
                BackpressureEvent::Low {
                    in_flight: 5,
                    max: 10
                },
                BackpressureEvent::Resumed
            ]
        );
        assert_eq!(controller.admit().0, Admission::Proceed);
        let status = controller.status();
        assert_eq!(
            status,
            BackpressureStatus {
                in_flight: 5,
                max: 10,
                percentage: 50.0,
                paused: false,
                strategy: BackpressureStrategy::Pause
            }
        );
    }

    #[tokio::test]
    async fn released_wakes_every_waiter_at_once() {
        let controller = Arc::new(controller(BackpressureStrategy::Pause));
        controller.set_in_flight(10);
        assert_eq!(controller.admit().0, Admission::Wait);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let controller = controller.clone();
                tokio::spawn(async move { controller.released().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()));
        controller.set_in_flight(6);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            waiters.iter().all(|w| !w.is_finished()),
            "above the low mark"
        );
        controller.set_in_flight(4);
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .unwrap()
                .unwrap();
        }
        // Not paused: resolves at once.
        tokio::time::timeout(Duration::from_secs(5), controller.released())
            .await
            .unwrap();
    }

    #[test]
    fn a_bad_config_is_sanitised() {
        let controller = BackpressureController::new(BackpressureConfig {
            max_in_flight: 0,
            strategy: BackpressureStrategy::Pause,
            high_water: f64::NAN,
            low_water: 3.0,
        });
        assert_eq!(controller.max, 1);
        assert_eq!((controller.high_mark, controller.low_mark), (1, 0));
        assert_eq!(controller.admit().0, Admission::Proceed);
        controller.set_in_flight(1);
        assert_eq!(controller.admit().0, Admission::Wait);
    }
}
