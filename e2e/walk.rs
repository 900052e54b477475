//! The client side of Merkle delta sync, as the TypeScript clients do it: compare the
//! server's root with the local tree's, then descend only into buckets whose hashes differ
//! and merge the leaves' records (PROTOCOL.md §3.4, §3.5).

use std::collections::VecDeque;

use serde_json::json;
use topgun::merkle::Combine;
use topgun::protocol::Message;
use topgun::replica::{LwwReplica, OrReplica};

use crate::harness::{Client, msg};

/// The server's combine function for clients of unknown generation.
pub const COMBINE: Combine = Combine::Fmix;

/// What a walk did.
#[derive(Debug, Default)]
pub struct Walk {
    /// The server root the walk started from.
    pub server_root: u32,
    /// Every path requested, in order.
    pub requested: Vec<String>,
    /// Paths answered with a leaf.
    pub leaves: Vec<String>,
}

/// Syncs an LWW map into `local`: SYNC_INIT, then the bucket walk.
pub async fn lww_sync(client: &mut Client, map: &str, local: &mut LwwReplica) -> Walk {
    client
        .send(msg(json!({"type": "SYNC_INIT", "mapName": map})))
        .await;
    let Message::SyncRespRoot(root) = client.expect_type("SYNC_RESP_ROOT").await else {
        unreachable!()
    };
    let mut walk = Walk {
        server_root: root.payload.root_hash,
        ..Walk::default()
    };
    if walk.server_root == local.merkle().root(COMBINE) {
        return walk;
    }
    let mut queue = VecDeque::from([String::new()]);
    while let Some(path) = queue.pop_front() {
        client
            .send(msg(
                json!({"type": "MERKLE_REQ_BUCKET", "payload": {"mapName": map, "path": path}}),
            ))
            .await;
        walk.requested.push(path.clone());
        match client.recv().await {
            Message::SyncRespBuckets(b) => {
                assert_eq!(b.payload.path, path);
                queue.extend(
                    local
                        .merkle()
                        .differing_children(&path, &b.payload.buckets, COMBINE),
                );
            }
            Message::SyncRespLeaf(leaf) => {
                assert_eq!(leaf.payload.path, path);
                walk.leaves.push(path);
                for r in leaf.payload.records {
                    local.merge(&r.key, r.record);
                }
            }
            other => panic!("unexpected answer to MERKLE_REQ_BUCKET: {other:?}"),
        }
    }
    walk
}

/// Syncs an OR map into `local`: ORMAP_SYNC_INIT with our root, then the bucket walk.
pub async fn or_sync(client: &mut Client, map: &str, local: &mut OrReplica) -> Walk {
    let root = local.merkle().root(COMBINE);
    client
        .send(msg(json!({"type": "ORMAP_SYNC_INIT", "mapName": map, "rootHash": root, "bucketHashes": {}})))
        .await;
    let Message::OrMapSyncRespRoot(resp) = client.expect_type("ORMAP_SYNC_RESP_ROOT").await else {
        unreachable!()
    };
    let mut walk = Walk {
        server_root: resp.payload.root_hash,
        ..Walk::default()
    };
    if walk.server_root == root {
        return walk;
    }
    let mut queue = VecDeque::from([String::new()]);
    while let Some(path) = queue.pop_front() {
        client
            .send(msg(json!({"type": "ORMAP_MERKLE_REQ_BUCKET", "payload": {"mapName": map, "path": path}})))
            .await;
        walk.requested.push(path.clone());
        match client.recv().await {
            Message::OrMapSyncRespBuckets(b) => {
                assert_eq!(b.payload.path, path);
                queue.extend(
                    local
                        .merkle()
                        .differing_children(&path, &b.payload.buckets, COMBINE),
                );
            }
            Message::OrMapSyncRespLeaf(leaf) => {
                assert_eq!(leaf.payload.path, path);
                walk.leaves.push(path);
                for entry in leaf.payload.entries {
                    local.merge_key(&entry.key, entry.records, entry.tombstones);
                }
            }
            other => panic!("unexpected answer to ORMAP_MERKLE_REQ_BUCKET: {other:?}"),
        }
    }
    walk
}
