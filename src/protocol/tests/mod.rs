//! Tests of the protocol module: golden frames recorded from real clients and servers,
//! codec round trips and byte-level rules, validation, and schema staleness.

mod codec;
mod golden;
mod schema;
mod validation;
