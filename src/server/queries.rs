//! Query subscriptions: `QUERY_SUB` / `QUERY_UNSUB` and the registry that decides who hears
//! about changes to a map.
//!
//! Subscriptions are keyed by (connection, query id), never by the client-chosen id alone
//! (TopGun 2026-01 kept one global namespace, so two clients could collide), and bounded per
//! connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

use crate::protocol::{
    QueryIdPayload, QueryResp, QueryRespPayload, QueryResultRow, QuerySubPayload,
};
use crate::query::{CompiledQuery, CursorContext, QueryLimits};
use crate::replica::{MapKind, Replica};

use super::Shared;
use super::connections::{ConnHandle, ConnId};
use super::dispatch::Flow;
use super::session::Session;
use super::sync::{may_read, report_map_error};

/// Most live queries one connection may hold.
pub const MAX_QUERIES_PER_CONNECTION: usize = 256;

/// One live query.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub conn: ConnHandle,
    pub map: String,
    pub query: Arc<CompiledQuery>,
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
}

impl QueryRegistry {
    /// Registers (or replaces) a subscription; false when the connection is at its bound.
    pub fn add(&self, query_id: String, sub: Subscription) -> bool {
        let mut inner = self.lock();
        let conn = sub.conn.id;
        let owned = inner.by_conn.entry(conn).or_default();
        if !owned.contains_key(&query_id) && owned.len() >= MAX_QUERIES_PER_CONNECTION {
            return false;
        }
        if let Some(previous_map) = owned.insert(query_id.clone(), sub.map.clone()) {
            if let Some(subs) = inner.by_map.get_mut(&previous_map) {
                subs.remove(&(conn, query_id.clone()));
            }
        }
        inner
            .by_map
            .entry(sub.map.clone())
            .or_default()
            .insert((conn, query_id), sub);
        true
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
        self.lock().by_map.values().map(HashMap::len).sum()
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
        subs.remove(&(conn, query_id.to_owned()));
        if subs.is_empty() {
            inner.by_map.remove(map);
        }
    }
}

/// `QUERY_SUB`: evaluate the query, answer `QUERY_RESP`, and register it for live events.
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
    let now = shared.now_millis();
    let context = CursorContext::new(&shared.cursor_secret, now);
    let page = {
        let guard = map.lock();
        match &*guard {
            Replica::Lww(r) => compiled.execute(r.map().entries(now), &context),
            Replica::Or(r) => {
                let rows: Vec<(String, Value)> = r
                    .map()
                    .keys()
                    .filter_map(|key| {
                        let values = r.map().get(key, now);
                        (!values.is_empty()).then(|| {
                            (
                                key.to_owned(),
                                Value::Array(values.into_iter().cloned().collect()),
                            )
                        })
                    })
                    .collect();
                compiled.execute(rows.iter().map(|(k, v)| (k.as_str(), v)), &context)
            }
        }
    };
    let page = match page {
        Ok(page) => page,
        Err(e) => {
            session.send_error(shared, 400, format!("Query {} failed: {e}", sub.query_id));
            return Flow::Continue;
        }
    };
    let registered = shared.queries.add(
        sub.query_id.clone(),
        Subscription {
            conn: session.handle().clone(),
            map: sub.map_name.clone(),
            query: Arc::new(compiled),
        },
    );
    if !registered {
        session.send_error(
            shared,
            429,
            format!("Query limit reached: at most {MAX_QUERIES_PER_CONNECTION} live queries per connection"),
        );
        return Flow::Continue;
    }
    let principal = session.principal().clone();
    let results = page
        .results
        .into_iter()
        .filter_map(|(key, value)| {
            shared
                .permissions
                .filter_value(&principal, &sub.map_name, value)
                .map(|value| QueryResultRow { key, value })
        })
        .collect();
    let _ = session.send(
        shared,
        QueryResp {
            payload: QueryRespPayload {
                query_id: sub.query_id,
                results,
                next_cursor: page.next_cursor,
                has_more: Some(page.has_more),
                cursor_status: Some(page.cursor_status),
                merkle_root_hash: None,
                error: None,
                code: None,
            },
        },
    );
    Flow::Continue
}

/// `QUERY_UNSUB`: silent, as in TopGun.
pub fn handle_query_unsub(shared: &Shared, session: &mut Session, unsub: QueryIdPayload) -> Flow {
    shared.queries.remove(session.id, &unsub.query_id);
    Flow::Continue
}
