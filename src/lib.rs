//! topgun-rs: a reference implementation of the TopGun offline-first data grid.
//!
//! The crate is layered so that the pure core can be tested without I/O and the same
//! server and client code can run on real sockets or inside a deterministic simulation:
//!
//! - **Seams** for nondeterminism: [`clock`] (wall clock), [`entropy`] (randomness),
//!   [`net`] (listeners and streams), [`store`] (persistence).
//! - **Pure core** (synchronous, no I/O): [`hlc`], [`record`] (with [`user_value`]),
//!   [`lww`], [`ormap`], [`pncounter`], [`hash`], [`merkle`], [`replica`] (a CRDT and its
//!   Merkle tree in step), [`query`], [`search`].
//! - **Protocol**: [`protocol`] holds every wire message, the msgpack/JSON codecs and the
//!   JSON-Schema validator that guards ingress.
//! - **Storage**: [`store`] defines the backend-neutral `Store` trait and its backends.
//! - **Security**: [`auth`] (JWT, principals) and [`security`] (permission policies).
//! - **Server**: [`server`], the WebSocket server built from all of the above.
//! - **Client**: [`client`], the offline-first Rust client SDK.
//! - **Tools**: [`bench`], `topgun bench`, a load generator speaking the raw protocol.

pub mod auth;
pub mod bench;
pub mod client;
pub mod clock;
pub mod entropy;
pub mod hash;
pub mod hlc;
pub mod lww;
pub mod merkle;
pub mod net;
pub mod ormap;
pub mod pncounter;
pub mod protocol;
pub mod query;
pub mod record;
pub mod replica;
pub mod search;
pub mod security;
pub mod server;
pub mod store;
pub mod user_value;
