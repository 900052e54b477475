//! End-to-end suites: a real server on an ephemeral port, real WebSocket clients speaking raw
//! msgpack, one `#[tokio::test]` per scenario, each asserting behaviour and snapshotting its
//! redacted transcript into `snapshots/`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod auth_store;
mod client;
mod counters;
mod gc;
mod generations;
mod handshake;
mod harness;
mod journal;
mod lifecycle;
mod live;
mod locks;
mod process;
mod search;
mod sync;
mod timeouts;
mod topics;
mod walk;
mod workers;
mod writes;
