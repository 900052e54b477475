//! The connection state machine: the states an application can observe, the transition
//! table (TOPGUN-REFERENCE.md §3.2) and the history of the last [`HISTORY_LEN`] changes.
//!
//! Unlike TopGun's client, an invalid transition is an `Err` the caller must look at (it logs
//! it at warn), never a silent refusal that hides a bug.

use std::collections::VecDeque;

/// How many state changes [`StateMachine::history`] keeps.
pub const HISTORY_LEN: usize = 50;

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// Created, not yet connecting (also the state `reset` leaves `Error` for).
    Initial,
    /// Opening the socket and upgrading to WebSocket.
    Connecting,
    /// The socket is open; waiting for a token or for `AUTH_ACK`.
    Authenticating,
    /// Authenticated; the engine is running its Merkle sync round.
    Syncing,
    /// Authenticated and synced (the engine said so with `mark_synced`).
    Connected,
    /// Closed for good by the application.
    Disconnected,
    /// Waiting before the next connection attempt.
    Backoff,
    /// Reconnect attempts exhausted; only `reset` leaves it.
    Error,
}

impl ConnectionState {
    /// Whether the transition table allows going from `self` to `to`.
    ///
    /// The table is TOPGUN-REFERENCE.md §3.2 (with the 2026-06 `Backoff`/`Disconnected` →
    /// `Error` edges), plus `Error`/`Initial` → `Disconnected` so that `close` is valid in
    /// every state.
    pub fn can_transition_to(self, to: ConnectionState) -> bool {
        use ConnectionState::*;
        matches!(
            (self, to),
            (Initial, Connecting | Disconnected)
                | (Connecting, Authenticating | Backoff | Error | Disconnected)
                | (Authenticating, Syncing | Backoff | Error | Disconnected)
                | (Syncing, Connected | Backoff | Error | Disconnected)
                | (Connected, Syncing | Disconnected | Backoff)
                | (Disconnected, Connecting | Backoff | Initial | Error)
                | (Backoff, Connecting | Disconnected | Initial | Error)
                | (Error, Initial | Disconnected)
        )
    }

    /// True while the server has accepted our credentials (`Syncing` or `Connected`).
    pub fn is_authenticated(self) -> bool {
        matches!(self, ConnectionState::Syncing | ConnectionState::Connected)
    }
}

/// One observed change of state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub from: ConnectionState,
    pub to: ConnectionState,
    /// Wall-clock milliseconds (from the clock seam) when it happened.
    pub at_ms: u64,
}

/// A transition the table does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid connection state transition {from:?} -> {to:?}")]
pub struct InvalidTransition {
    pub from: ConnectionState,
    pub to: ConnectionState,
}

/// The current state and a bounded history of changes.
#[derive(Debug, Clone)]
pub struct StateMachine {
    current: ConnectionState,
    history: VecDeque<StateChange>,
}

impl Default for StateMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl StateMachine {
    /// A machine in `Initial` with an empty history.
    pub fn new() -> Self {
        Self {
            current: ConnectionState::Initial,
            history: VecDeque::with_capacity(HISTORY_LEN),
        }
    }

    /// The current state.
    pub fn current(&self) -> ConnectionState {
        self.current
    }

    /// Moves to `to`. A move to the current state is a no-op (`Ok(None)`); a move the table
    /// forbids leaves the state unchanged and returns the error.
    pub fn transition(
        &mut self,
        to: ConnectionState,
        at_ms: u64,
    ) -> Result<Option<StateChange>, InvalidTransition> {
        let from = self.current;
        if from == to {
            return Ok(None);
        }
        if !from.can_transition_to(to) {
            return Err(InvalidTransition { from, to });
        }
        self.current = to;
        let change = StateChange { from, to, at_ms };
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(change.clone());
        Ok(Some(change))
    }

    /// The last [`HISTORY_LEN`] changes, oldest first.
    pub fn history(&self) -> Vec<StateChange> {
        self.history.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectionState::*;
    use super::*;

    const ALL: [ConnectionState; 8] = [
        Initial,
        Connecting,
        Authenticating,
        Syncing,
        Connected,
        Disconnected,
        Backoff,
        Error,
    ];

    #[test]
    fn table_allows_exactly_the_listed_edges() {
        let allowed: &[(ConnectionState, &[ConnectionState])] = &[
            (Initial, &[Connecting, Disconnected]),
            (Connecting, &[Authenticating, Backoff, Error, Disconnected]),
            (Authenticating, &[Syncing, Backoff, Error, Disconnected]),
            (Syncing, &[Connected, Backoff, Error, Disconnected]),
            (Connected, &[Syncing, Disconnected, Backoff]),
            (Disconnected, &[Connecting, Backoff, Initial, Error]),
            (Backoff, &[Connecting, Disconnected, Initial, Error]),
            (Error, &[Initial, Disconnected]),
        ];
        for (from, tos) in allowed {
            for to in ALL {
                assert_eq!(
                    from.can_transition_to(to),
                    tos.contains(&to),
                    "{from:?} -> {to:?}"
                );
            }
        }
    }

    #[test]
    fn the_happy_path_and_a_reconnect_are_valid() {
        let mut machine = StateMachine::new();
        for (i, to) in [
            Connecting,
            Authenticating,
            Syncing,
            Connected,
            Backoff,
            Connecting,
        ]
        .into_iter()
        .enumerate()
        {
            let change = machine.transition(to, i as u64).unwrap().unwrap();
            assert_eq!(change.to, to);
            assert_eq!(change.at_ms, i as u64);
        }
        assert_eq!(machine.current(), Connecting);
        assert_eq!(machine.history().len(), 6);
        assert_eq!(machine.history()[0].from, Initial);
    }

    #[test]
    fn an_invalid_transition_is_an_error_and_changes_nothing() {
        let mut machine = StateMachine::new();
        assert_eq!(
            machine.transition(Connected, 1),
            Err(InvalidTransition {
                from: Initial,
                to: Connected
            })
        );
        assert_eq!(machine.current(), Initial);
        assert!(machine.history().is_empty());
        machine.transition(Connecting, 2).unwrap();
        machine.transition(Error, 3).unwrap();
        assert!(
            machine.transition(Connecting, 4).is_err(),
            "only reset leaves Error"
        );
        assert_eq!(machine.current(), Error);
    }

    #[test]
    fn a_transition_to_the_current_state_is_a_silent_no_op() {
        let mut machine = StateMachine::new();
        assert_eq!(machine.transition(Initial, 1), Ok(None));
        assert!(machine.history().is_empty());
    }

    #[test]
    fn history_keeps_the_last_fifty_changes() {
        let mut machine = StateMachine::new();
        machine.transition(Connecting, 0).unwrap();
        for i in 1..=60u64 {
            let to = if i % 2 == 1 { Backoff } else { Connecting };
            machine.transition(to, i).unwrap();
        }
        let history = machine.history();
        assert_eq!(history.len(), HISTORY_LEN);
        assert_eq!(history[0].at_ms, 11);
        assert_eq!(history[HISTORY_LEN - 1].at_ms, 60);
    }

    #[test]
    fn authenticated_means_syncing_or_connected() {
        let authenticated: Vec<_> = ALL.into_iter().filter(|s| s.is_authenticated()).collect();
        assert_eq!(authenticated, vec![Syncing, Connected]);
    }
}
