//! Deterministic simulations.
