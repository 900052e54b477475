//! Full-text search: tokenizer, stop words and an incremental BM25 index (pure, no I/O).
//!
//! The server keeps one [`SearchIndex`] per map with search enabled and feeds it every write
//! (PROTOCOL.md §3.13); live search subscriptions re-score the changed document with
//! [`SearchIndex::score_document`] instead of re-running the whole query.

mod index;
mod stopwords;
mod tokenizer;

pub use index::{
    DEFAULT_B, DEFAULT_K1, SearchConfig, SearchConfigError, SearchHit, SearchIndex, SearchOptions,
    query_terms,
};
pub use stopwords::is_stop_word;
pub use tokenizer::{MAX_TOKEN_CHARS, MIN_TOKEN_CHARS, tokenize};
