//! A store for tests: an in-memory store whose map loads and commits can be made to fail
//! (and loads to lag), so callers' error paths can be exercised deterministically.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use super::{
    BoxFuture, CounterSnapshot, JournalRow, MapKind, MapSnapshot, MemoryStore, Store, StoreError,
    WriteBatch,
};

/// A [`MemoryStore`] with switchable faults.
#[derive(Debug, Default)]
pub(crate) struct FaultyStore {
    inner: MemoryStore,
    /// The next this-many map loads fail.
    pub(crate) failing_loads: AtomicUsize,
    /// While set, every commit fails.
    pub(crate) failing_commits: AtomicBool,
    /// Map loads started so far.
    pub(crate) loads: AtomicUsize,
    /// Each map load first sleeps this long (so concurrent loads overlap).
    pub(crate) load_delay: Duration,
}

impl FaultyStore {
    /// A store whose map loads each take `load_delay`.
    pub(crate) fn with_load_delay(load_delay: Duration) -> Self {
        Self {
            load_delay,
            ..Self::default()
        }
    }
}

impl Store for FaultyStore {
    fn load_map(&self, map: &str) -> BoxFuture<'_, Result<Option<MapSnapshot>, StoreError>> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let fail = self
            .failing_loads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let map = map.to_owned();
        Box::pin(async move {
            tokio::time::sleep(self.load_delay).await;
            if fail {
                Err(StoreError::Closed)
            } else {
                self.inner.load_map(&map).await
            }
        })
    }
    fn list_maps(&self) -> BoxFuture<'_, Result<Vec<(String, MapKind)>, StoreError>> {
        self.inner.list_maps()
    }
    fn load_counters(
        &self,
    ) -> BoxFuture<'_, Result<BTreeMap<String, CounterSnapshot>, StoreError>> {
        self.inner.load_counters()
    }
    fn load_fencing_tokens(&self) -> BoxFuture<'_, Result<BTreeMap<String, u64>, StoreError>> {
        self.inner.load_fencing_tokens()
    }
    fn read_journal(
        &self,
        from_sequence: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<JournalRow>, StoreError>> {
        self.inner.read_journal(from_sequence, limit)
    }
    fn last_journal_sequence(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.inner.last_journal_sequence()
    }
    fn get_meta(&self, key: &str) -> BoxFuture<'_, Result<Option<Vec<u8>>, StoreError>> {
        self.inner.get_meta(key)
    }
    fn commit(&self, batch: WriteBatch) -> BoxFuture<'_, Result<(), StoreError>> {
        if self.failing_commits.load(Ordering::SeqCst) {
            Box::pin(std::future::ready(Err(StoreError::WriterStopped)))
        } else {
            self.inner.commit(batch)
        }
    }
    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.close()
    }
}
