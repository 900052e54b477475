//! The `topgun` command line.

fn main() {}
