//! The Rust client SDK: an offline-first `TopGunClient` whose reads and writes never wait for
//! the network. A `SyncEngine` coordinates separately tested, sans-I/O parts: the connection
//! manager, the durable op log and backpressure, the query, search, topic, lock and counter
//! managers, and the Merkle sync walker.

pub mod counters;
pub mod locks;
pub mod queries;
pub mod search;
pub mod sync;
pub mod backpressure;
pub mod oplog;
pub mod topics;
pub mod connection;
