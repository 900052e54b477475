//! Tests of the protocol module: golden frames recorded from real clients and servers,
//! codec round trips and byte-level rules, the msgpack fast path against the general decoder,
//! validation, and schema staleness.

mod codec;
mod fast_path;
mod golden;
mod schema;
mod validation;
