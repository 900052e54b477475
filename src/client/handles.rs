//! The app-facing handles a `TopGunClient` hands out: typed LWW and OR maps, live queries,
//! topics, locks, counters and live searches. Each is a thin typed view over the engine;
//! handles that hold a server subscription give it back when dropped.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, watch};

use crate::protocol::{ClientOp, OpType, SearchHit, WriteConcern};
use crate::record::{LwwRecord, OrMapRecord};
use crate::replica::{MapKind, Replica};
use crate::user_value::UserValue;

use super::ClientError;
use super::engine::{Command, Engine};
use super::locks::LockGrant;
use super::maps::{MapChange, lww_mutation, or_mutations};
use super::queries::QueryEvent;
use super::search::SearchSnapshot;

/// How a single write is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// `Memory`: the local durable commit; `Applied`/`Persisted`: also the server's ack.
    pub concern: WriteConcern,
    /// Expiry of the record, in milliseconds from its timestamp.
    pub ttl_ms: Option<u64>,
}

/// A last-writer-wins map of `T` values.
pub struct LwwMap<T> {
    pub(crate) engine: Arc<Engine>,
    pub(crate) name: String,
    pub(crate) _values: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> LwwMap<T> {
    /// The map's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value under `key`, from local state (never waits for the network).
    pub async fn get(&self, key: &str) -> Result<Option<T>, ClientError> {
        let now = self.engine.now_ms();
        let mut core = self.engine.core.lock().await;
        let open = core.maps.load(&self.name, MapKind::Lww).await?;
        match open.values(key, now).into_iter().next() {
            Some(value) => Ok(Some(serde_json::from_value(value)?)),
            None => Ok(None),
        }
    }

    /// Every live entry, in key order.
    pub async fn entries(&self) -> Result<Vec<(String, T)>, ClientError> {
        self.entries_where(|_, _| true).await
    }

    /// The live entries, in key order, whose key and stored JSON value `keep` accepts. Only
    /// those are copied out, so a lookup by a field costs a pass over the map, not a copy of
    /// all of it.
    pub async fn entries_where(
        &self,
        keep: impl Fn(&str, &Value) -> bool,
    ) -> Result<Vec<(String, T)>, ClientError> {
        let now = self.engine.now_ms();
        let mut core = self.engine.core.lock().await;
        let open = core.maps.load(&self.name, MapKind::Lww).await?;
        open.entries_where(now, keep)
            .into_iter()
            .map(|(k, v)| Ok((k, serde_json::from_value(v)?)))
            .collect()
    }

    /// Sets `key` at the client's default write concern; resolves once that level is reached.
    pub async fn set(&self, key: &str, value: &T) -> Result<u64, ClientError> {
        self.set_with(key, value, self.default_options()).await
    }

    /// Sets `key` with explicit options.
    pub async fn set_with(
        &self,
        key: &str,
        value: &T,
        options: WriteOptions,
    ) -> Result<u64, ClientError> {
        let value = serde_json::to_value(value)?;
        self.write(key, Some(value), options).await
    }

    /// Removes `key` (writes a tombstone).
    pub async fn remove(&self, key: &str) -> Result<u64, ClientError> {
        self.write(key, None, self.default_options()).await
    }

    /// Every later change to this map, local or remote.
    pub async fn subscribe(&self) -> Result<MapSubscription<T>, ClientError> {
        map_subscription(&self.engine, &self.name, MapKind::Lww).await
    }

    fn default_options(&self) -> WriteOptions {
        WriteOptions {
            concern: self.engine.options.write_concern,
            ttl_ms: None,
        }
    }

    async fn write(
        &self,
        key: &str,
        value: Option<Value>,
        options: WriteOptions,
    ) -> Result<u64, ClientError> {
        let timestamp = self.engine.core.lock().await.hlc.now();
        let op_type = if value.is_some() {
            OpType::Put
        } else {
            OpType::Remove
        };
        let record = LwwRecord {
            value: value.map(UserValue::from),
            timestamp,
            ttl_ms: options.ttl_ms,
        };
        let op = ClientOp {
            id: None,
            map_name: self.name.clone(),
            key: key.into(),
            op_type: Some(op_type),
            record: Some(record.clone()),
            or_record: None,
            or_tag: None,
            write_concern: None,
            timeout: None,
        };
        let local = vec![lww_mutation(&self.name, key, &record)?];
        let key = key.to_owned();
        self.engine
            .record(
                &self.name,
                MapKind::Lww,
                vec![op],
                local,
                move |replica| match replica {
                    Replica::Lww(r) => applied_key(r.merge(&key, record).is_applied(), key),
                    Replica::Or(_) => Vec::new(),
                },
                options.concern,
            )
            .await
    }
}

/// An observed-remove map: each key holds a set of `T` values.
pub struct OrMap<T> {
    pub(crate) engine: Arc<Engine>,
    pub(crate) name: String,
    pub(crate) _values: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> OrMap<T> {
    /// The map's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The values under `key`.
    pub async fn values(&self, key: &str) -> Result<Vec<T>, ClientError> {
        let now = self.engine.now_ms();
        let mut core = self.engine.core.lock().await;
        let open = core.maps.load(&self.name, MapKind::Or).await?;
        open.values(key, now)
            .into_iter()
            .map(|v| Ok(serde_json::from_value(v)?))
            .collect()
    }

    /// Every key with its values.
    pub async fn entries(&self) -> Result<Vec<(String, Vec<T>)>, ClientError> {
        let now = self.engine.now_ms();
        let mut core = self.engine.core.lock().await;
        let open = core.maps.load(&self.name, MapKind::Or).await?;
        open.entries(now)
            .into_iter()
            .map(|(k, v)| Ok((k, serde_json::from_value(v)?)))
            .collect()
    }

    /// Adds `value` under `key` with a fresh unique tag.
    pub async fn add(&self, key: &str, value: &T) -> Result<u64, ClientError> {
        let value = serde_json::to_value(value)?;
        let timestamp = self.engine.core.lock().await.hlc.now();
        let record = OrMapRecord {
            value,
            tag: timestamp.to_string(),
            timestamp,
            ttl_ms: None,
        };
        let op = ClientOp {
            id: None,
            map_name: self.name.clone(),
            key: key.into(),
            op_type: Some(OpType::OrAdd),
            record: None,
            or_record: Some(Box::new(record.clone())),
            or_tag: None,
            write_concern: None,
            timeout: None,
        };
        let local = or_mutations(&self.name, key, vec![record.clone()], Vec::new());
        let key = key.to_owned();
        self.engine
            .record(
                &self.name,
                MapKind::Or,
                vec![op],
                local,
                move |replica| match replica {
                    Replica::Or(r) => applied_key(r.apply(&key, record), key),
                    Replica::Lww(_) => Vec::new(),
                },
                self.engine.options.write_concern,
            )
            .await
    }

    /// Removes every observed occurrence of `value` under `key` (one `OR_REMOVE` per tag).
    /// Returns how many tags were removed.
    pub async fn remove(&self, key: &str, value: &T) -> Result<usize, ClientError> {
        let value = serde_json::to_value(value)?;
        let tags: Vec<String> = {
            let mut core = self.engine.core.lock().await;
            let open = core.maps.load(&self.name, MapKind::Or).await?;
            match &open.replica {
                Replica::Or(r) => r
                    .map()
                    .records(key)
                    .filter(|record| record.value == value)
                    .map(|record| record.tag.clone())
                    .collect(),
                Replica::Lww(_) => Vec::new(),
            }
        };
        if tags.is_empty() {
            return Ok(0);
        }
        let ops = tags
            .iter()
            .map(|tag| ClientOp {
                id: None,
                map_name: self.name.clone(),
                key: key.into(),
                op_type: Some(OpType::OrRemove),
                record: None,
                or_record: None,
                or_tag: Some(tag.clone()),
                write_concern: None,
                timeout: None,
            })
            .collect();
        let local = or_mutations(&self.name, key, Vec::new(), tags.clone());
        let count = tags.len();
        let key = key.to_owned();
        self.engine
            .record(
                &self.name,
                MapKind::Or,
                ops,
                local,
                move |replica| match replica {
                    Replica::Or(r) => {
                        let removed = tags.iter().filter_map(|t| r.apply_tombstone(t)).count();
                        if removed > 0 { vec![key] } else { Vec::new() }
                    }
                    Replica::Lww(_) => Vec::new(),
                },
                self.engine.options.write_concern,
            )
            .await?;
        Ok(count)
    }

    /// Every later change to this map, local or remote.
    pub async fn subscribe(&self) -> Result<MapSubscription<Vec<T>>, ClientError> {
        map_subscription(&self.engine, &self.name, MapKind::Or).await
    }
}

fn applied_key(applied: bool, key: String) -> Vec<String> {
    if applied { vec![key] } else { Vec::new() }
}

/// Subscribes to `map`'s changes. The server sends a map's changes to every connection with
/// a live query on it, so the subscription holds one (a one-row window keeps its initial
/// answer small); dropping the subscription drops the query.
async fn map_subscription<T>(
    engine: &Arc<Engine>,
    map: &str,
    kind: MapKind,
) -> Result<MapSubscription<T>, ClientError> {
    let changes = engine
        .core
        .lock()
        .await
        .maps
        .load(map, kind)
        .await?
        .subscribe();
    let window = crate::query::Query {
        limit: Some(1),
        ..crate::query::Query::default()
    };
    let server_feed = engine.register_query(map, window).await?;
    Ok(MapSubscription {
        changes,
        kind,
        _server_feed: server_feed,
        _values: PhantomData,
    })
}

/// Changes to a map, typed. For an OR map `T` is the `Vec` of a key's values.
pub struct MapSubscription<T> {
    changes: broadcast::Receiver<MapChange>,
    kind: MapKind,
    _server_feed: QueryHandle,
    _values: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> MapSubscription<T> {
    /// The next change: the key and its value now (`None` when removed). `None` when the
    /// client is gone. A subscriber that fell far behind skips ahead rather than stall.
    pub async fn next(&mut self) -> Option<Result<(String, Option<T>), ClientError>> {
        loop {
            match self.changes.recv().await {
                Ok(change) => return Some(decode_change(change, self.kind)),
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::warn!(skipped, "map subscriber fell behind; skipped changes");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

fn decode_change<T: DeserializeOwned>(
    change: MapChange,
    kind: MapKind,
) -> Result<(String, Option<T>), ClientError> {
    // An LWW change carries at most one value; an OR change is the array of the key's values.
    let value = match (kind, change.values.is_empty()) {
        (_, true) => None,
        (MapKind::Lww, false) => change.values.into_iter().next(),
        (MapKind::Or, false) => Some(Value::Array(change.values)),
    };
    let typed = value.map(serde_json::from_value).transpose()?;
    Ok((change.key, typed))
}

/// A live query: the current result set and each change.
pub struct QueryHandle {
    pub(crate) id: String,
    pub(crate) events: broadcast::Receiver<QueryEvent>,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
}

impl QueryHandle {
    /// The query's id on the wire.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next result change (the first is the local result). `None` once the client is
    /// gone. A handle that fell behind skips to the newest event (every event carries the
    /// whole current snapshot, so nothing is lost but intermediate steps).
    pub async fn next(&mut self) -> Option<QueryEvent> {
        loop {
            match self.events.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::debug!(skipped, query = %self.id, "query handle skipped events");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Drop for QueryHandle {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Unsubscribe(self.id.clone()));
    }
}

/// A live full-text search: its current hits.
pub struct SearchHandle {
    pub(crate) id: String,
    pub(crate) results: watch::Receiver<Arc<SearchSnapshot>>,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
}

impl SearchHandle {
    /// The current hits (empty until the server's first answer; see `snapshot`).
    pub fn hits(&self) -> Vec<SearchHit> {
        self.results.borrow().hits.clone()
    }

    /// The current snapshot: hits, whether they came from the server, the last error.
    pub fn snapshot(&self) -> Arc<SearchSnapshot> {
        self.results.borrow().clone()
    }

    /// Waits for the results to change; `false` once the client is gone.
    pub async fn changed(&mut self) -> bool {
        self.results.changed().await.is_ok()
    }
}

impl Drop for SearchHandle {
    fn drop(&mut self) {
        let _ = self
            .commands
            .send(Command::SearchUnsubscribe(self.id.clone()));
    }
}

/// A held lock. Dropping it releases the lock; [`LockGuard::release`] does so and waits.
pub struct LockGuard {
    pub(crate) grant: Option<LockGrant>,
    pub(crate) engine: Arc<Engine>,
}

impl LockGuard {
    /// The fencing token: pass it to whatever the lock protects; a larger token always means
    /// a later holder.
    pub fn fencing_token(&self) -> u64 {
        self.grant.as_ref().map_or(0, |g| g.fencing_token)
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        self.grant.as_ref().map_or("", |g| g.name.as_str())
    }

    /// Releases the lock now.
    pub async fn release(mut self) {
        if let Some(grant) = self.grant.take() {
            let mut core = self.engine.core.lock().await;
            let now = self.engine.now_ms();
            if let Some(message) = core.locks.release(&grant, now) {
                self.engine.send(&core, message);
            }
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(grant) = self.grant.take() {
            let _ = self.engine.commands.send(Command::ReleaseLock(grant));
        }
    }
}

/// A PN-counter shared by every client.
pub struct Counter {
    pub(crate) engine: Arc<Engine>,
    pub(crate) name: String,
    pub(crate) value: watch::Receiver<f64>,
}

impl Counter {
    /// The current value.
    pub fn get(&self) -> f64 {
        *self.value.borrow()
    }

    /// Adds `delta` (negative to decrement); returns the new local value.
    pub async fn add(&self, delta: f64) -> Result<f64, ClientError> {
        let mut core = self.engine.core.lock().await;
        let online = Engine::is_online(&core);
        let (value, mutation, message) = core.counters.add(&self.name, delta, online)?;
        if let Some(message) = message {
            self.engine.send(&core, message);
        }
        drop(core);
        self.engine.store.commit(vec![mutation].into()).await?;
        Ok(value)
    }

    /// Adds one.
    pub async fn increment(&self) -> Result<f64, ClientError> {
        self.add(1.0).await
    }

    /// Subtracts one.
    pub async fn decrement(&self) -> Result<f64, ClientError> {
        self.add(-1.0).await
    }

    /// Waits for the value to change; `false` once the client is gone.
    pub async fn changed(&mut self) -> bool {
        self.value.changed().await.is_ok()
    }
}

/// A pub/sub topic.
pub struct Topic {
    pub(crate) engine: Arc<Engine>,
    pub(crate) name: String,
}

impl Topic {
    /// Publishes `data`: sent now when online, else queued (bounded; see `TopicQueueConfig`).
    pub async fn publish<T: Serialize>(&self, data: &T) -> Result<(), ClientError> {
        let data = serde_json::to_value(data)?;
        let now = self.engine.now_ms();
        let mut core = self.engine.core.lock().await;
        let online = Engine::is_online(&core);
        let (message, mut events) = core.topics.publish(&self.name, data.clone(), online, now)?;
        if let Some(message) = message {
            if !self.engine.send(&core, message) {
                // The connection died before the engine noticed: queue it like any offline
                // publish rather than lose it.
                let (_, queued) = core.topics.publish(&self.name, data, false, now)?;
                events.extend(queued);
            }
        }
        for event in events {
            let _ = self
                .engine
                .events
                .send(super::events::ClientEvent::Topic(event));
        }
        Ok(())
    }

    /// Messages published to this topic from now on.
    pub async fn subscribe(&self) -> Result<TopicSubscription, ClientError> {
        let mut core = self.engine.core.lock().await;
        let online = Engine::is_online(&core);
        let (receiver, message) = core.topics.subscribe(&self.name, online)?;
        if let Some(message) = message {
            self.engine.send(&core, message);
        }
        Ok(TopicSubscription {
            topic: self.name.clone(),
            receiver,
            commands: self.engine.commands.clone(),
        })
    }
}

/// Messages of one topic.
pub struct TopicSubscription {
    topic: String,
    receiver: broadcast::Receiver<super::topics::TopicDelivery>,
    commands: mpsc::UnboundedSender<Command>,
}

impl TopicSubscription {
    /// The next message; `None` once the client is gone.
    pub async fn next(&mut self) -> Option<super::topics::TopicDelivery> {
        loop {
            match self.receiver.recv().await {
                Ok(message) => return Some(message),
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::warn!(skipped, topic = %self.topic, "topic subscriber fell behind");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Drop for TopicSubscription {
    fn drop(&mut self) {
        let _ = self
            .commands
            .send(Command::TopicUnsubscribe(self.topic.clone()));
    }
}
