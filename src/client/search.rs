//! The client's full-text search (PROTOCOL.md §3.13): one-shot `SEARCH` / `SEARCH_RESP`
//! requests and live `SEARCH_SUB` / `SEARCH_UPDATE` / `SEARCH_UNSUB` subscriptions.
//!
//! Unlike TopGun (REFERENCE defect 25), live searches are re-sent after every authentication
//! ([`SearchManager::resubscribe`]), and one created offline subscribes as soon as the client
//! is online, because it is simply part of that set. One-shot requests fail with `Offline`
//! when not connected, with `Disconnected` when the connection drops, and with `Timeout`
//! after [`SearchConfig::timeout_ms`]; none of them outlives its answer. Both collections are
//! bounded.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{oneshot, watch};

use crate::protocol::{
    ChangeType, Message, Search, SearchHit, SearchOptions, SearchPayload, SearchResp, SearchSub,
    SearchSubPayload, SearchUnsub, SearchUpdate, SubscriptionIdPayload,
};

/// Default one-shot timeout, as in TopGun.
pub const DEFAULT_SEARCH_TIMEOUT_MS: u64 = 30_000;

/// Bounds and timeout of the search manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchConfig {
    /// Most live searches held at once.
    pub max_live_searches: usize,
    /// Most one-shot searches awaiting an answer at once.
    pub max_pending: usize,
    /// How long a one-shot search waits for its answer.
    pub timeout_ms: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            max_live_searches: 64,
            max_pending: 256,
            timeout_ms: DEFAULT_SEARCH_TIMEOUT_MS,
        }
    }
}

/// Why a search failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SearchError {
    /// One-shot searches need a connection.
    #[error("cannot search while offline")]
    Offline,
    /// The connection dropped before the answer arrived.
    #[error("the connection dropped before the search was answered")]
    Disconnected,
    /// No answer within the timeout.
    #[error("the search was not answered within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    /// Too many one-shot searches are awaiting answers.
    #[error("too many searches in flight: at most {max} are allowed")]
    TooManyPending { max: usize },
    /// Too many live searches are registered.
    #[error("too many live searches: at most {max} are allowed")]
    TooManyLive { max: usize },
    /// The server answered with an error (e.g. search not enabled for the map, access denied).
    #[error("search failed on the server: {0}")]
    Server(String),
}

/// A live search's current hits.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SearchSnapshot {
    /// Hits by descending score, ties by key.
    pub hits: Vec<SearchHit>,
    /// The server has answered at least once since the subscription was made.
    pub from_server: bool,
    /// The server's last answer was an error; `hits` are the last good ones.
    pub error: Option<SearchError>,
}

/// The outcome of [`SearchManager::subscribe`].
#[derive(Debug)]
pub struct LiveSearch {
    /// The subscription id (`s1`, `s2`, ...).
    pub id: String,
    /// The current hits, updated on every server answer.
    pub results: watch::Receiver<Arc<SearchSnapshot>>,
    /// `SEARCH_SUB` to send now, when online.
    pub subscribe: Option<Message>,
}

/// The answer a one-shot search resolves to.
pub type SearchResult = Result<Vec<SearchHit>, SearchError>;

#[derive(Debug)]
struct Pending {
    reply: oneshot::Sender<SearchResult>,
    deadline_ms: u64,
}

#[derive(Debug)]
struct Subscription {
    map: String,
    query: String,
    options: SearchOptions,
    results: watch::Sender<Arc<SearchSnapshot>>,
}

impl Subscription {
    fn subscribe_message(&self, id: &str) -> Message {
        SearchSub {
            payload: SearchSubPayload {
                subscription_id: id.to_owned(),
                map_name: self.map.clone(),
                query: self.query.clone(),
                options: Some(self.options.clone()),
            },
        }
        .into()
    }
}

/// One-shot and live full-text searches.
#[derive(Debug)]
pub struct SearchManager {
    config: SearchConfig,
    pending: HashMap<String, Pending>,
    live: HashMap<String, Subscription>,
    next_id: u64,
}

impl SearchManager {
    /// An empty manager.
    pub fn new(config: SearchConfig) -> Self {
        Self {
            config,
            pending: HashMap::new(),
            live: HashMap::new(),
            next_id: 0,
        }
    }

    fn next_id(&mut self) -> String {
        self.next_id += 1;
        format!("s{}", self.next_id)
    }

    /// Number of one-shot searches awaiting an answer.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Number of live searches.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Starts a one-shot search at `now_ms`: the `SEARCH` to send and a receiver resolved by
    /// its `SEARCH_RESP`, or by a failure.
    pub fn search(
        &mut self,
        map: &str,
        query: &str,
        options: SearchOptions,
        online: bool,
        now_ms: u64,
    ) -> Result<(Message, oneshot::Receiver<SearchResult>), SearchError> {
        if !online {
            return Err(SearchError::Offline);
        }
        // Requests whose receivers are gone need no answer and must not hold a slot.
        self.pending.retain(|_, pending| !pending.reply.is_closed());
        if self.pending.len() >= self.config.max_pending {
            return Err(SearchError::TooManyPending {
                max: self.config.max_pending,
            });
        }
        let request_id = self.next_id();
        let (reply, receiver) = oneshot::channel();
        self.pending.insert(
            request_id.clone(),
            Pending {
                reply,
                deadline_ms: now_ms.saturating_add(self.config.timeout_ms),
            },
        );
        let message = Search {
            payload: SearchPayload {
                request_id,
                map_name: map.to_owned(),
                query: query.to_owned(),
                options: Some(options),
            },
        }
        .into();
        Ok((message, receiver))
    }

    /// Registers a live search; its `SEARCH_SUB` is returned when `online`, and otherwise
    /// goes out with the next [`SearchManager::resubscribe`].
    pub fn subscribe(
        &mut self,
        map: &str,
        query: &str,
        options: SearchOptions,
        online: bool,
    ) -> Result<LiveSearch, SearchError> {
        if self.live.len() >= self.config.max_live_searches {
            return Err(SearchError::TooManyLive {
                max: self.config.max_live_searches,
            });
        }
        let id = self.next_id();
        let (results, receiver) = watch::channel(Arc::new(SearchSnapshot::default()));
        let subscription = Subscription {
            map: map.to_owned(),
            query: query.to_owned(),
            options,
            results,
        };
        let subscribe = online.then(|| subscription.subscribe_message(&id));
        self.live.insert(id.clone(), subscription);
        Ok(LiveSearch {
            id,
            results: receiver,
            subscribe,
        })
    }

    /// Drops a live search; the `SEARCH_UNSUB` to send when online and it existed.
    pub fn unsubscribe(&mut self, id: &str, online: bool) -> Option<Message> {
        self.live.remove(id)?;
        online.then(|| {
            SearchUnsub {
                payload: SubscriptionIdPayload {
                    subscription_id: id.to_owned(),
                },
            }
            .into()
        })
    }

    /// Drops every live search whose receivers are all gone; the `SEARCH_UNSUB`s to send when
    /// online.
    pub fn gc_unused(&mut self, online: bool) -> Vec<Message> {
        let unused: Vec<String> = self
            .live
            .iter()
            .filter(|(_, sub)| sub.results.is_closed())
            .map(|(id, _)| id.clone())
            .collect();
        unused
            .into_iter()
            .filter_map(|id| self.unsubscribe(&id, online))
            .collect()
    }

    /// `SEARCH_SUB` for every live search, in creation order: send after each authentication.
    pub fn resubscribe(&self) -> Vec<Message> {
        let mut ids: Vec<(&String, &Subscription)> = self.live.iter().collect();
        ids.sort_by_key(|(id, _)| id_number(id));
        ids.into_iter()
            .map(|(id, sub)| sub.subscribe_message(id))
            .collect()
    }

    /// Applies `SEARCH_RESP` (one-shot answer or live snapshot) and `SEARCH_UPDATE`; `false`
    /// for other messages and unknown ids.
    pub fn on_message(&mut self, message: &Message) -> bool {
        match message {
            Message::SearchResp(resp) => self.on_resp(resp),
            Message::SearchUpdate(update) => self.on_update(update),
            _ => false,
        }
    }

    fn on_resp(&mut self, resp: &SearchResp) -> bool {
        let payload = &resp.payload;
        let outcome = match &payload.error {
            Some(error) => Err(SearchError::Server(error.clone())),
            None => Ok(payload.results.clone()),
        };
        if let Some(pending) = self.pending.remove(&payload.request_id) {
            // The caller may have stopped waiting; nothing is owed to it then.
            let _ = pending.reply.send(outcome);
            return true;
        }
        let Some(sub) = self.live.get(&payload.request_id) else {
            return false;
        };
        sub.results.send_modify(|snapshot| {
            let mut next = SearchSnapshot {
                hits: snapshot.hits.clone(),
                from_server: true,
                error: None,
            };
            match outcome {
                // Replaced even when empty: hits removed while offline must go.
                Ok(mut hits) => {
                    sort_hits(&mut hits);
                    next.hits = hits;
                }
                Err(error) => next.error = Some(error),
            }
            *snapshot = Arc::new(next);
        });
        true
    }

    fn on_update(&mut self, update: &SearchUpdate) -> bool {
        let payload = &update.payload;
        let Some(sub) = self.live.get(&payload.subscription_id) else {
            return false;
        };
        sub.results.send_modify(|snapshot| {
            let mut hits: Vec<SearchHit> = snapshot
                .hits
                .iter()
                .filter(|hit| hit.key != payload.key)
                .cloned()
                .collect();
            if update.change() != Some(ChangeType::Leave) {
                hits.push(SearchHit {
                    key: payload.key.clone(),
                    value: payload.value.clone(),
                    score: payload.score,
                    matched_terms: payload.matched_terms.clone(),
                });
                sort_hits(&mut hits);
            }
            *snapshot = Arc::new(SearchSnapshot {
                hits,
                from_server: snapshot.from_server,
                error: snapshot.error.clone(),
            });
        });
        true
    }

    /// The connection dropped: every pending one-shot search fails with `Disconnected`.
    pub fn disconnected(&mut self) {
        for (_, pending) in self.pending.drain() {
            let _ = pending.reply.send(Err(SearchError::Disconnected));
        }
    }

    /// Fails one-shot searches whose deadline has passed at `now_ms` with `Timeout`, and
    /// forgets those whose callers stopped waiting.
    pub fn expire(&mut self, now_ms: u64) {
        let timeout_ms = self.config.timeout_ms;
        let expired: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, pending)| now_ms >= pending.deadline_ms || pending.reply.is_closed())
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(pending) = self.pending.remove(&id) {
                let _ = pending.reply.send(Err(SearchError::Timeout { timeout_ms }));
            }
        }
    }

    /// The earliest deadline among pending one-shot searches, for the engine's timer.
    pub fn next_deadline(&self) -> Option<u64> {
        self.pending.values().map(|p| p.deadline_ms).min()
    }
}

/// Descending score, ties by key, so equal answers always look the same.
fn sort_hits(hits: &mut [SearchHit]) {
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.key.cmp(&b.key)));
}

/// The counter part of an `s<n>` id, for creation order.
fn id_number(id: &str) -> u64 {
    id.trim_start_matches('s').parse().unwrap_or(u64::MAX)
}

#[cfg(test)]
#[path = "search_tests.rs"]
mod tests;
