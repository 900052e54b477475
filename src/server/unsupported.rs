//! Honest answers for features this server does not implement: entry processors, conflict
//! resolvers, SQL, vector and hybrid search, hybrid live queries, and the cluster partition map
//! of a single node.
//!
//! Each request gets the response type its client waits for, with `success: false` or an
//! `error` naming the missing feature, so a client fails fast instead of hanging until its
//! own timeout (TopGun-REFERENCE §5: nothing is dropped silently).

use indexmap::IndexMap;

use crate::hash::PARTITION_COUNT;
use crate::protocol::{
    EntryProcess, EntryProcessBatch, EntryProcessBatchResponse, EntryProcessOutcome,
    EntryProcessResponse, HybridSearchResp, HybridSearchRespPayload, ListResolvers,
    ListResolversResponse, Message, NodeEndpoints, NodeInfo, NodeStatus, PartitionInfo,
    PartitionMap, PartitionMapMessage, RegisterResolver, RegisterResolverResponse, SqlQueryResp,
    SqlQueryRespPayload, UnregisterResolver, UnregisterResolverResponse, VectorSearchResp,
    VectorSearchRespPayload,
};

use super::Shared;
use super::dispatch::Flow;
use super::session::Session;

/// Why an entry processor did not run.
pub const ENTRY_PROCESSORS: &str = "Entry processors are not implemented by this server yet";
/// Why a conflict resolver was not (un)registered.
pub const CONFLICT_RESOLVERS: &str = "Custom conflict resolvers are not implemented by this server yet; maps use plain LWW/OR merges";
/// Why a SQL query returned nothing.
pub const SQL: &str = "SQL queries are not implemented by this server yet";
/// Why a vector search returned nothing.
pub const VECTOR_SEARCH: &str = "Vector search is not implemented by this server yet";
/// Why a hybrid search returned nothing.
pub const HYBRID_SEARCH: &str = "Hybrid search is not implemented by this server yet";
/// Why a hybrid live query was refused.
pub const HYBRID_QUERY: &str =
    "HYBRID_QUERY_SUBSCRIBE (hybrid full-text live queries) is not implemented by this server yet";
/// The version of the single-node partition map; ownership never changes, so neither does it.
pub const PARTITION_MAP_VERSION: u64 = 1;

/// Answers one request for an unimplemented feature. Any other message is a routing bug and
/// gets the generic `ERROR 501`.
pub fn answer(shared: &Shared, session: &Session, message: Message) -> Flow {
    let reply: Message = match message {
        Message::EntryProcess(m) => entry_process(m).into(),
        Message::EntryProcessBatch(m) => entry_process_batch(m).into(),
        Message::RegisterResolver(m) => register_resolver(m).into(),
        Message::UnregisterResolver(m) => unregister_resolver(m).into(),
        Message::ListResolvers(m) => list_resolvers(m).into(),
        Message::SqlQuery(m) => sql_query(m.payload.query_id).into(),
        Message::VectorSearch(m) => vector_search(m.payload.id).into(),
        Message::HybridSearch(m) => hybrid_search(m.payload.request_id).into(),
        Message::HybridSearchSub(m) => hybrid_search(m.payload.subscription_id).into(),
        Message::HybridQuerySubscribe(_) => {
            session.send_error(shared, 501, HYBRID_QUERY);
            return Flow::Continue;
        }
        Message::PartitionMapRequest(_) => {
            // Copied out so the HLC lock is not held while the map is built.
            let node_id = shared.hlc().node_id().to_owned();
            partition_map(&node_id, websocket_endpoint(shared), shared.now_millis()).into()
        }
        other => {
            session.send_error(
                shared,
                501,
                format!(
                    "{} is not implemented by this server yet",
                    other.type_name()
                ),
            );
            return Flow::Continue;
        }
    };
    let _ = session.send(shared, reply);
    Flow::Continue
}

fn entry_process(request: EntryProcess) -> EntryProcessResponse {
    EntryProcessResponse {
        request_id: request.request_id,
        success: false,
        result: None,
        new_value: None,
        error: Some(ENTRY_PROCESSORS.to_owned()),
    }
}

fn entry_process_batch(request: EntryProcessBatch) -> EntryProcessBatchResponse {
    let failed = || EntryProcessOutcome {
        success: false,
        result: None,
        new_value: None,
        error: Some(ENTRY_PROCESSORS.to_owned()),
    };
    let results: IndexMap<String, EntryProcessOutcome> = request
        .keys
        .into_iter()
        .map(|key| (key, failed()))
        .collect();
    EntryProcessBatchResponse {
        request_id: request.request_id,
        results,
    }
}

fn register_resolver(request: RegisterResolver) -> RegisterResolverResponse {
    RegisterResolverResponse {
        request_id: request.request_id,
        success: false,
        error: Some(CONFLICT_RESOLVERS.to_owned()),
    }
}

fn unregister_resolver(request: UnregisterResolver) -> UnregisterResolverResponse {
    UnregisterResolverResponse {
        request_id: request.request_id,
        success: false,
        error: Some(CONFLICT_RESOLVERS.to_owned()),
    }
}

/// No resolver can ever be registered, so the list is truthfully empty.
fn list_resolvers(request: ListResolvers) -> ListResolversResponse {
    ListResolversResponse {
        request_id: request.request_id,
        resolvers: Vec::new(),
    }
}

fn sql_query(query_id: String) -> SqlQueryResp {
    SqlQueryResp {
        payload: SqlQueryRespPayload {
            query_id,
            columns: Vec::new(),
            rows: Vec::new(),
            error: Some(SQL.to_owned()),
            code: Some("NOT_IMPLEMENTED".to_owned()),
        },
    }
}

fn vector_search(id: String) -> VectorSearchResp {
    VectorSearchResp {
        payload: VectorSearchRespPayload {
            id,
            results: Vec::new(),
            total_candidates: 0,
            search_time_ms: 0.0,
            error: Some(VECTOR_SEARCH.to_owned()),
        },
    }
}

/// `HYBRID_SEARCH_SUB` is answered the same way, keyed by its subscription id, since the
/// client waits for a response under that id.
fn hybrid_search(request_id: String) -> HybridSearchResp {
    HybridSearchResp {
        payload: HybridSearchRespPayload {
            request_id,
            results: Vec::new(),
            search_time_ms: 0.0,
            error: Some(HYBRID_SEARCH.to_owned()),
        },
    }
}

/// The WebSocket URL clients reach this node on: the bound address once the server runs.
fn websocket_endpoint(shared: &Shared) -> String {
    match shared.bound_addr.get() {
        Some(addr) => format!("ws://{addr}"),
        // Only a server whose listener could not report its address gets here; the client
        // is already connected to us, so "this host" is the honest best answer.
        None => "ws://localhost".to_owned(),
    }
}

/// The partition map of a single node: it owns all 271 partitions and has no backups.
fn partition_map(node_id: &str, websocket: String, now_millis: u64) -> PartitionMapMessage {
    let http = websocket.replacen("ws://", "http://", 1);
    PartitionMapMessage {
        payload: PartitionMap {
            version: PARTITION_MAP_VERSION,
            partition_count: PARTITION_COUNT,
            nodes: vec![NodeInfo {
                node_id: node_id.to_owned(),
                endpoints: NodeEndpoints {
                    websocket,
                    http: Some(http),
                },
                status: NodeStatus::Active,
            }],
            partitions: (0..PARTITION_COUNT)
                .map(|partition_id| PartitionInfo {
                    partition_id,
                    owner_node_id: node_id.to_owned(),
                    backup_node_ids: Vec::new(),
                })
                .collect(),
            generated_at: now_millis,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).unwrap()
    }

    fn processor() -> serde_json::Value {
        json!({"name": "inc", "code": "return value + 1"})
    }

    #[test]
    fn entry_process_fails_with_the_reason() {
        let request = parse(json!({
            "requestId": "r1", "mapName": "m", "key": "k", "processor": processor()
        }));
        let response = serde_json::to_value(entry_process(request)).unwrap();
        assert_eq!(
            response,
            json!({"requestId": "r1", "success": false, "error": ENTRY_PROCESSORS})
        );
    }

    #[test]
    fn entry_process_batch_fails_every_key_in_order() {
        let request = parse(json!({
            "requestId": "r2", "mapName": "m", "keys": ["b", "a", "c"], "processor": processor()
        }));
        let response = entry_process_batch(request);
        assert_eq!(response.request_id, "r2");
        let keys: Vec<&str> = response.results.keys().map(String::as_str).collect();
        assert_eq!(keys, ["b", "a", "c"]);
        assert!(
            response
                .results
                .values()
                .all(|outcome| !outcome.success
                    && outcome.error.as_deref() == Some(ENTRY_PROCESSORS))
        );
    }

    #[test]
    fn resolvers_are_refused_by_name_and_listed_as_none() {
        let register = register_resolver(parse(json!({
            "requestId": "r3", "mapName": "m",
            "resolver": {"name": "max", "code": "return a"}
        })));
        assert!(!register.success);
        assert!(register.error.unwrap().contains("conflict resolvers"));
        let unregister = unregister_resolver(parse(json!({
            "requestId": "r4", "mapName": "m", "resolverName": "max"
        })));
        assert_eq!(unregister.request_id, "r4");
        assert!(!unregister.success);
        let list = list_resolvers(parse(json!({"requestId": "r5"})));
        assert_eq!(list.request_id, "r5");
        assert!(list.resolvers.is_empty());
    }

    #[test]
    fn search_family_answers_carry_the_request_id_and_an_error() {
        let sql = sql_query("q1".into()).payload;
        assert_eq!(
            (sql.query_id.as_str(), sql.error.as_deref()),
            ("q1", Some(SQL))
        );
        let vector = vector_search("v1".into()).payload;
        assert_eq!(
            (vector.id.as_str(), vector.error.as_deref()),
            ("v1", Some(VECTOR_SEARCH))
        );
        let hybrid = hybrid_search("h1".into()).payload;
        assert_eq!(
            (hybrid.request_id.as_str(), hybrid.error.as_deref()),
            ("h1", Some(HYBRID_SEARCH))
        );
        assert!(hybrid.results.is_empty());
    }

    #[test]
    fn partition_map_gives_every_partition_to_this_node() {
        let map = partition_map("node-1", "ws://127.0.0.1:9000".into(), 42).payload;
        assert_eq!(map.partition_count, 271);
        assert_eq!(map.partitions.len(), 271);
        assert_eq!(map.generated_at, 42);
        for (i, partition) in map.partitions.iter().enumerate() {
            assert_eq!(partition.partition_id as usize, i);
            assert_eq!(partition.owner_node_id, "node-1");
            assert!(partition.backup_node_ids.is_empty());
        }
        assert_eq!(map.nodes.len(), 1);
        assert_eq!(map.nodes[0].endpoints.websocket, "ws://127.0.0.1:9000");
        assert_eq!(
            map.nodes[0].endpoints.http.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(map.nodes[0].status, NodeStatus::Active);
    }
}
