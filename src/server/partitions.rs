//! The partition-ownership seam.
//!
//! Every map/key operation asks who owns the key's partition (`fnv1a(key) % 271`,
//! PROTOCOL.md §4.6) before touching data. Today one node owns all 271 partitions; the
//! cluster will replace [`SingleNode`] with a real table without touching the handlers.

use crate::hash::partition_id;

/// Where an operation on a key must run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This node owns the partition: apply locally.
    Local,
    /// Another node owns it: forward there.
    Forward { node_id: String },
}

/// Answers "who owns this key".
pub trait Ownership: Send + Sync + 'static {
    /// The route for `key` (the map name is not part of the partition id).
    fn route(&self, key: &str) -> Route;
}

/// The single-node table: this node owns every partition.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleNode;

impl Ownership for SingleNode {
    fn route(&self, key: &str) -> Route {
        debug_assert!(partition_id(key) < crate::hash::PARTITION_COUNT);
        Route::Local
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_node_owns_every_key() {
        for key in ["user-1", "hello", "", "ключ"] {
            assert_eq!(SingleNode.route(key), Route::Local);
        }
    }
}
