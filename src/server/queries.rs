//! Query subscriptions: `QUERY_SUB` / `QUERY_UNSUB` / `QUERY_SYNC_INIT` and the registry that
//! decides who hears about changes to a map (the live maintenance itself is in [`super::live`]).
//!
//! Subscriptions are keyed by (connection, query id), never by the client-chosen id alone
//! (TopGun 2026-01 kept one global namespace, so two clients could collide), and bounded per
//! connection and server-wide (`Limits::max_live_queries`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::protocol::{
    QueryIdPayload, QueryResp, QueryRespPayload, QueryResultRow, QuerySubPayload, QuerySyncInit,
};
use crate::query::{CompiledQuery, CursorContext, QueryLimits, QueryPage};
use crate::replica::MapKind;

use super::Shared;
use super::connections::{ConnHandle, ConnId};
use super::dispatch::Flow;
use super::live::{LiveQuery, LiveWindow, execute};
use super::session::Session;
use super::sync::{may_read, report_map_error};

/// Most live queries one connection may hold.
pub const MAX_QUERIES_PER_CONNECTION: usize = 256;

/// One live query.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub conn: ConnHandle,
    pub map: String,
    pub live: Arc<LiveQuery>,
}

/// Why a subscription was not registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("Query limit reached: at most {0} live queries per connection")]
    PerConnection(usize),
    #[error("Query limit reached: the server holds at most {0} live queries")]
    Global(usize),
}

/// Every live query, by map.
#[derive(Debug, Default)]
pub struct QueryRegistry {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_map: HashMap<String, HashMap<(ConnId, String), Subscription>>,
    by_conn: HashMap<ConnId, HashMap<String, String>>,
    total: usize,
}

impl QueryRegistry {
    /// Registers (or replaces) a subscription unless the connection or the server
    /// (`global_max`) is at its bound.
    pub fn add(
        &self,
        query_id: String,
        sub: Subscription,
        global_max: usize,
    ) -> Result<(), RegisterError> {
        let mut inner = self.lock();
        let conn = sub.conn.id;
        let total = inner.total;
        let owned = inner.by_conn.entry(conn).or_default();
        let replacing = owned.contains_key(&query_id);
        if !replacing && owned.len() >= MAX_QUERIES_PER_CONNECTION {
            return Err(RegisterError::PerConnection(MAX_QUERIES_PER_CONNECTION));
        }
        if !replacing && total >= global_max {
            return Err(RegisterError::Global(global_max));
        }
        if let Some(previous_map) = owned.insert(query_id.clone(), sub.map.clone()) {
            remove_from_map(&mut inner, &previous_map, conn, &query_id);
        }
        inner
            .by_map
            .entry(sub.map.clone())
            .or_default()
            .insert((conn, query_id), sub);
        inner.total += 1;
        Ok(())
    }

    /// Whether `conn` may register `query_id` now (the checks `add` makes, without adding).
    pub fn has_room(
        &self,
        conn: ConnId,
        query_id: &str,
        global_max: usize,
    ) -> Result<(), RegisterError> {
        let inner = self.lock();
        let owned = inner.by_conn.get(&conn);
        if owned.is_some_and(|q| q.contains_key(query_id)) {
            return Ok(());
        }
        if owned.is_some_and(|q| q.len() >= MAX_QUERIES_PER_CONNECTION) {
            return Err(RegisterError::PerConnection(MAX_QUERIES_PER_CONNECTION));
        }
        if inner.total >= global_max {
            return Err(RegisterError::Global(global_max));
        }
        Ok(())
    }

    /// Drops one subscription.
    pub fn remove(&self, conn: ConnId, query_id: &str) {
        let mut inner = self.lock();
        let map = inner
            .by_conn
            .get_mut(&conn)
            .and_then(|q| q.remove(query_id));
        if let Some(map) = map {
            remove_from_map(&mut inner, &map, conn, query_id);
        }
    }

    /// Drops every subscription of a closed connection.
    pub fn remove_connection(&self, conn: ConnId) {
        let mut inner = self.lock();
        for (query_id, map) in inner.by_conn.remove(&conn).unwrap_or_default() {
            remove_from_map(&mut inner, &map, conn, &query_id);
        }
    }

    /// One subscription of a connection.
    pub fn get(&self, conn: ConnId, query_id: &str) -> Option<Subscription> {
        let inner = self.lock();
        let map = inner.by_conn.get(&conn)?.get(query_id)?;
        inner
            .by_map
            .get(map)?
            .get(&(conn, query_id.to_owned()))
            .cloned()
    }

    /// Whether any live query watches `map`.
    pub fn has_live_on(&self, map: &str) -> bool {
        self.lock()
            .by_map
            .get(map)
            .is_some_and(|subs| !subs.is_empty())
    }

    /// Every live query on `map` with its connection (a snapshot; the lock is released).
    pub fn live_on(&self, map: &str) -> Vec<(ConnHandle, Arc<LiveQuery>)> {
        let inner = self.lock();
        inner
            .by_map
            .get(map)
            .map(|subs| {
                subs.values()
                    .map(|s| (s.conn.clone(), s.live.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Connections holding at least one query on `map`, each once.
    pub fn subscribers(&self, map: &str) -> Vec<ConnHandle> {
        let inner = self.lock();
        let mut conns: Vec<ConnHandle> = inner
            .by_map
            .get(map)
            .map(|subs| subs.values().map(|s| s.conn.clone()).collect())
            .unwrap_or_default();
        conns.sort_by_key(|c| c.id);
        conns.dedup_by_key(|c| c.id);
        conns
    }

    /// Number of live queries.
    pub fn len(&self) -> usize {
        self.lock().total
    }

    /// True when no query is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn remove_from_map(inner: &mut Inner, map: &str, conn: ConnId, query_id: &str) {
    if let Some(subs) = inner.by_map.get_mut(map) {
        if subs.remove(&(conn, query_id.to_owned())).is_some() {
            inner.total = inner.total.saturating_sub(1);
        }
        if subs.is_empty() {
            inner.by_map.remove(map);
        }
    }
}

/// `QUERY_SUB`: evaluate the query, answer `QUERY_RESP`, and register it for live updates.
pub async fn handle_query_sub(
    shared: &Arc<Shared>,
    session: &mut Session,
    sub: QuerySubPayload,
) -> Flow {
    if !may_read(shared, session, &sub.map_name) {
        return Flow::Continue;
    }
    if matches!(sub.query.sort, Some(crate::query::SortSpec::Fields(_))) {
        session.note_generation(crate::merkle::Combine::Fmix);
    } else if matches!(sub.query.sort, Some(crate::query::SortSpec::Object(_))) {
        session.note_generation(crate::merkle::Combine::Sum);
    }
    let compiled = match CompiledQuery::compile(&sub.query, &QueryLimits::default()) {
        Ok(c) => c,
        Err(e) => {
            session.send_error(shared, 400, format!("Invalid query {}: {e}", sub.query_id));
            return Flow::Continue;
        }
    };
    let map = match shared.maps.get(&sub.map_name, MapKind::Lww, None).await {
        Ok(map) => map,
        Err(e) => {
            report_map_error(shared, session, &e);
            return Flow::Continue;
        }
    };
    if let Err(e) =
        shared
            .queries
            .has_room(session.id, &sub.query_id, shared.limits.max_live_queries)
    {
        session.send_error(shared, 429, e.to_string());
        return Flow::Continue;
    }
    let now = shared.now_millis();
    let context = CursorContext::new(&shared.cursor_secret, now);
    let (page, live) = {
        let replica = map.lock();
        let page = match execute(&compiled, &replica, now, &context) {
            Ok(page) => page,
            Err(e) => {
                drop(replica);
                session.send_error(shared, 400, format!("Query {} failed: {e}", sub.query_id));
                return Flow::Continue;
            }
        };
        let window = LiveWindow::from_page(&compiled, &page);
        let live = Arc::new(LiveQuery::new(
            sub.query_id.clone(),
            compiled,
            map.clone(),
            sub.fields,
            session.principal().clone(),
            now,
            window,
        ));
        (page, live)
    };
    // The response is queued before the subscription exists, so no update can overtake it;
    // a large one is encoded on the worker pool. What changed meanwhile follows as updates.
    let rows = page.results.len();
    let _ = session
        .send_rows(shared, query_resp(shared, &live, page), rows)
        .await;
    let registered = shared.queries.add(
        sub.query_id,
        Subscription {
            conn: session.handle().clone(),
            map: sub.map_name,
            live: live.clone(),
        },
        shared.limits.max_live_queries,
    );
    match registered {
        Ok(()) => super::live::catch_up(shared, session.handle(), &live),
        Err(e) => session.send_error(shared, 429, e.to_string()),
    }
    Flow::Continue
}

/// `QUERY_SYNC_INIT` (2026-08): answers with a fresh `QUERY_RESP` for the subscription,
/// which the client takes as its whole result set.
pub fn handle_query_sync_init(shared: &Shared, session: &Session, init: QuerySyncInit) -> Flow {
    let query_id = init.payload.query_id;
    let Some(sub) = shared.queries.get(session.id, &query_id) else {
        session.send_error(shared, 404, format!("Unknown query id {query_id}"));
        return Flow::Continue;
    };
    let live = sub.live;
    let replica = live.map.lock();
    match live.execute(shared, &replica) {
        Ok(page) => {
            *live.window() = LiveWindow::from_page(&live.query, &page);
            let _ = session.send(shared, query_resp(shared, &live, page));
        }
        Err(e) => session.send_error(shared, 400, format!("Query {query_id} failed: {e}")),
    }
    drop(replica);
    Flow::Continue
}

/// A `QUERY_RESP` carrying `page` as the subscriber may see it.
fn query_resp(shared: &Shared, live: &LiveQuery, page: QueryPage) -> QueryResp {
    let results = page
        .results
        .into_iter()
        .filter_map(|(key, value)| {
            live.visible(shared, value)
                .map(|value| QueryResultRow { key, value })
        })
        .collect();
    QueryResp {
        payload: QueryRespPayload {
            query_id: live.query_id.clone(),
            results,
            next_cursor: page.next_cursor,
            has_more: Some(page.has_more),
            cursor_status: Some(page.cursor_status),
            merkle_root_hash: None,
            error: None,
            code: None,
        },
    }
}

/// `QUERY_UNSUB`: silent, as in TopGun.
pub fn handle_query_unsub(shared: &Shared, session: &mut Session, unsub: QueryIdPayload) -> Flow {
    shared.queries.remove(session.id, &unsub.query_id);
    Flow::Continue
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Principal;
    use crate::query::Query;
    use crate::server::connections::outbound_queue;
    use crate::server::storage::MapRegistry;
    use crate::store::MemoryStore;

    async fn subscription(conn: ConnId, map: &str) -> Subscription {
        let maps = MapRegistry::new(Arc::new(MemoryStore::new()), false);
        let handle = maps.get(map, MapKind::Lww, None).await.unwrap();
        let query = CompiledQuery::compile(&Query::default(), &QueryLimits::default()).unwrap();
        let live = LiveQuery::new(
            "q".to_owned(),
            query,
            handle,
            None,
            Principal::new("u", vec!["USER".to_owned()]),
            0,
            LiveWindow::default(),
        );
        Subscription {
            conn: outbound_queue(conn, 8).0,
            map: map.to_owned(),
            live: Arc::new(live),
        }
    }

    #[tokio::test]
    async fn global_bound_refuses_new_queries_but_allows_replacing() {
        let registry = QueryRegistry::default();
        registry
            .add("a".into(), subscription(1, "m").await, 2)
            .unwrap();
        registry
            .add("b".into(), subscription(2, "m").await, 2)
            .unwrap();
        assert_eq!(
            registry.add("c".into(), subscription(3, "m").await, 2),
            Err(RegisterError::Global(2))
        );
        registry
            .add("a".into(), subscription(1, "other").await, 2)
            .unwrap();
        assert_eq!(registry.len(), 2);
        assert_eq!(registry.live_on("m").len(), 1);
        assert_eq!(registry.live_on("other").len(), 1);
        registry.remove_connection(1);
        registry
            .add("c".into(), subscription(3, "m").await, 2)
            .unwrap();
        assert!(registry.get(3, "c").is_some());
        assert!(registry.get(1, "a").is_none());
    }

    #[tokio::test]
    async fn per_connection_bound_is_enforced() {
        let registry = QueryRegistry::default();
        let sub = subscription(1, "m").await;
        for i in 0..MAX_QUERIES_PER_CONNECTION {
            registry
                .add(format!("q{i}"), sub.clone(), usize::MAX)
                .unwrap();
        }
        assert_eq!(
            registry.add("one-more".into(), sub, usize::MAX),
            Err(RegisterError::PerConnection(MAX_QUERIES_PER_CONNECTION))
        );
        registry.remove(1, "q0");
        assert_eq!(registry.len(), MAX_QUERIES_PER_CONNECTION - 1);
    }
}
