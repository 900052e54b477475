//! Core benchmarks.
fn main() {}
