//! The incremental BM25 index over one map's documents.
//!
//! Scoring model: every configured field is its own BM25 index (its own document count,
//! document frequencies and average length), and a document's score is the sum of its field
//! scores, each multiplied by that field's boost (default 1). This keeps scores identical
//! whether or not a boost is given — TopGun 2026-01 scores unboosted queries on a combined
//! field and boosted ones per field, so adding `boost: {}` changes its ranking.
//!
//! Per field f, query term t, document d:
//! `idf = ln(1 + (N_f − df_f(t) + 0.5) / (df_f(t) + 0.5))` and
//! `score = idf · tf·(k1 + 1) / (tf + k1·(1 − b + b·len_f(d) / avglen_f))`,
//! where `N_f` counts documents with at least one term in f.
//!
//! All statistics are integers kept up to date on every write, so an index built by any
//! sequence of upserts and removals scores exactly like one built from the final documents.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use serde_json::Value;

use super::tokenizer::tokenize;

/// TopGun's default BM25 term-frequency saturation.
pub const DEFAULT_K1: f64 = 1.2;
/// TopGun's default BM25 length normalization.
pub const DEFAULT_B: f64 = 0.75;

/// Which fields to index and the BM25 parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchConfig {
    /// Top-level document fields to index; strings and arrays of strings are indexed.
    pub fields: Vec<String>,
    /// Term-frequency saturation (finite, ≥ 0).
    pub k1: f64,
    /// Length normalization (within 0..=1).
    pub b: f64,
}

impl SearchConfig {
    /// A config over `fields` with TopGun's default BM25 parameters.
    pub fn for_fields<I, S>(fields: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            fields: fields.into_iter().map(Into::into).collect(),
            k1: DEFAULT_K1,
            b: DEFAULT_B,
        }
    }

    fn validate(&self) -> Result<(), SearchConfigError> {
        if self.fields.is_empty() {
            return Err(SearchConfigError::NoFields);
        }
        let mut seen = HashSet::new();
        if let Some(duplicate) = self
            .fields
            .iter()
            .find(|field| !seen.insert(field.as_str()))
        {
            return Err(SearchConfigError::DuplicateField(duplicate.clone()));
        }
        if !(self.k1.is_finite() && self.k1 >= 0.0) {
            return Err(SearchConfigError::InvalidK1(self.k1));
        }
        if !(0.0..=1.0).contains(&self.b) {
            return Err(SearchConfigError::InvalidB(self.b));
        }
        Ok(())
    }
}

/// Why a [`SearchConfig`] was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SearchConfigError {
    /// An index over no fields could never match anything.
    #[error("full-text search needs at least one field to index")]
    NoFields,
    /// A repeated field would count its terms twice.
    #[error("full-text search field {0:?} is listed more than once")]
    DuplicateField(String),
    /// k1 outside its domain makes scores NaN or negative.
    #[error("BM25 k1 must be a finite number >= 0, got {0}")]
    InvalidK1(f64),
    /// b outside its domain makes length normalization meaningless.
    #[error("BM25 b must be a number within [0, 1], got {0}")]
    InvalidB(f64),
}

/// Per-request search options (the `options` of `SEARCH` / `SEARCH_SUB`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchOptions {
    /// Maximum number of hits; `None` or `Some(0)` means unlimited (as on the wire).
    pub limit: Option<usize>,
    /// Hits scoring below this are dropped.
    pub min_score: Option<f64>,
    /// Per-field score multipliers; missing fields get 1. A boost of 0 ignores the field;
    /// negative or non-finite boosts are treated as missing.
    pub boost: BTreeMap<String, f64>,
}

/// One matching document.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    /// The document's map key.
    pub key: String,
    /// Its BM25 score (always > 0).
    pub score: f64,
    /// The query terms (stemmed, in query order) found in a contributing field.
    pub matched_terms: Vec<String>,
}

/// Tokenizes a query into the distinct terms to score, in first-occurrence order.
///
/// Repeated query words count once, so "rust rust" ranks like "rust".
pub fn query_terms(query: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    tokenize(query)
        .into_iter()
        .filter(|term| seen.insert(term.clone()))
        .collect()
}

/// One document's terms in one field.
#[derive(Debug, Default)]
struct FieldTerms {
    frequencies: HashMap<String, u32>,
    length: u64,
}

impl FieldTerms {
    fn from_tokens(tokens: Vec<String>) -> Self {
        let length = tokens.len() as u64;
        let mut frequencies: HashMap<String, u32> = HashMap::new();
        for token in tokens {
            *frequencies.entry(token).or_default() += 1;
        }
        Self {
            frequencies,
            length,
        }
    }

    fn is_empty(&self) -> bool {
        self.length == 0
    }
}

/// Corpus statistics of one field.
#[derive(Debug, Default)]
struct FieldStats {
    /// term → keys of the documents containing it; its size is the term's document frequency.
    postings: HashMap<String, HashSet<String>>,
    /// Documents with at least one term in this field.
    document_count: u64,
    /// Sum of those documents' lengths in this field.
    total_length: u64,
}

impl FieldStats {
    fn add(&mut self, key: &str, terms: &FieldTerms) {
        if terms.is_empty() {
            return;
        }
        self.document_count += 1;
        self.total_length += terms.length;
        for term in terms.frequencies.keys() {
            self.postings
                .entry(term.clone())
                .or_default()
                .insert(key.to_owned());
        }
    }

    fn remove(&mut self, key: &str, terms: &FieldTerms) {
        if terms.is_empty() {
            return;
        }
        self.document_count -= 1;
        self.total_length -= terms.length;
        for term in terms.frequencies.keys() {
            if let Some(keys) = self.postings.get_mut(term) {
                keys.remove(key);
                // Dropping empty postings keeps memory proportional to live content.
                if keys.is_empty() {
                    self.postings.remove(term);
                }
            }
        }
    }

    fn document_frequency(&self, term: &str) -> u64 {
        self.postings.get(term).map_or(0, |keys| keys.len() as u64)
    }

    /// BM25 contribution of `term` occurring `frequency` times in a document of `length` terms.
    fn term_score(&self, term: &str, frequency: u32, length: u64, config: &SearchConfig) -> f64 {
        let documents = self.document_count as f64;
        let document_frequency = self.document_frequency(term) as f64;
        let idf = (1.0 + (documents - document_frequency + 0.5) / (document_frequency + 0.5)).ln();
        let average_length = self.total_length as f64 / documents;
        let tf = f64::from(frequency);
        let normalization = 1.0 - config.b + config.b * (length as f64 / average_length);
        idf * (tf * (config.k1 + 1.0)) / (tf + config.k1 * normalization)
    }
}

/// A BM25 index over the configured fields of one map's documents.
///
/// A document is indexed while at least one configured field yields a term; upserting a
/// document without any removes it.
#[derive(Debug)]
pub struct SearchIndex {
    config: SearchConfig,
    /// Parallel to `config.fields`.
    fields: Vec<FieldStats>,
    /// key → that document's terms, parallel to `config.fields`; needed to undo its statistics.
    documents: HashMap<String, Vec<FieldTerms>>,
}

impl SearchIndex {
    /// An empty index, or an error if `config` is unusable.
    pub fn new(config: SearchConfig) -> Result<Self, SearchConfigError> {
        config.validate()?;
        let fields = config
            .fields
            .iter()
            .map(|_| FieldStats::default())
            .collect();
        Ok(Self {
            config,
            fields,
            documents: HashMap::new(),
        })
    }

    /// The configuration this index was built with.
    pub fn config(&self) -> &SearchConfig {
        &self.config
    }

    /// Number of indexed documents.
    pub fn len(&self) -> usize {
        self.documents.len()
    }

    /// Whether no document is indexed.
    pub fn is_empty(&self) -> bool {
        self.documents.is_empty()
    }

    /// Whether `key` is indexed (it has at least one term in a configured field).
    pub fn contains(&self, key: &str) -> bool {
        self.documents.contains_key(key)
    }

    /// Indexes `value` under `key`, replacing any previous version of it.
    pub fn upsert(&mut self, key: &str, value: &Value) {
        let terms: Vec<FieldTerms> = self
            .config
            .fields
            .iter()
            .map(|field| FieldTerms::from_tokens(field_tokens(value.get(field))))
            .collect();
        self.remove(key);
        if terms.iter().all(FieldTerms::is_empty) {
            return;
        }
        for (stats, field_terms) in self.fields.iter_mut().zip(&terms) {
            stats.add(key, field_terms);
        }
        self.documents.insert(key.to_owned(), terms);
    }

    /// Drops `key` from the index; returns whether it was indexed.
    pub fn remove(&mut self, key: &str) -> bool {
        let Some(terms) = self.documents.remove(key) else {
            return false;
        };
        for (stats, field_terms) in self.fields.iter_mut().zip(&terms) {
            stats.remove(key, field_terms);
        }
        true
    }

    /// Ranks the documents matching `query`: score descending, key ascending on ties.
    pub fn search(&self, query: &str, options: &SearchOptions) -> Vec<SearchHit> {
        self.search_terms(&query_terms(query), options)
    }

    /// Like [`search`](Self::search) for terms already produced by [`query_terms`].
    pub fn search_terms(&self, terms: &[String], options: &SearchOptions) -> Vec<SearchHit> {
        let hits = self
            .candidates(terms, &options.boost)
            .into_iter()
            .filter_map(|key| self.score_document(terms, key, options));
        rank(hits, options.limit)
    }

    /// Scores one document against terms from [`query_terms`], exactly as a search would.
    ///
    /// `None` when the document is not indexed, matches no term in a contributing field, or
    /// scores below `options.min_score`; `options.limit` does not apply to a single document.
    pub fn score_document(
        &self,
        terms: &[String],
        key: &str,
        options: &SearchOptions,
    ) -> Option<SearchHit> {
        let (key, document) = self.documents.get_key_value(key)?;
        let mut score = 0.0;
        let mut matched = vec![false; terms.len()];
        for ((field, stats), field_terms) in
            self.config.fields.iter().zip(&self.fields).zip(document)
        {
            let boost = field_boost(field, &options.boost);
            if boost == 0.0 {
                continue;
            }
            for (term, was_matched) in terms.iter().zip(matched.iter_mut()) {
                if let Some(&frequency) = field_terms.frequencies.get(term) {
                    score +=
                        boost * stats.term_score(term, frequency, field_terms.length, &self.config);
                    *was_matched = true;
                }
            }
        }
        let below_minimum = options.min_score.is_some_and(|minimum| score < minimum);
        if below_minimum || !matched.contains(&true) {
            return None;
        }
        let matched_terms = terms
            .iter()
            .zip(matched)
            .filter(|(_, was_matched)| *was_matched)
            .map(|(term, _)| term.clone())
            .collect();
        Some(SearchHit {
            key: key.clone(),
            score,
            matched_terms,
        })
    }

    /// Keys containing at least one term in a field that contributes to the score.
    fn candidates<'a>(
        &'a self,
        terms: &[String],
        boost: &BTreeMap<String, f64>,
    ) -> HashSet<&'a str> {
        let mut keys = HashSet::new();
        for (field, stats) in self.config.fields.iter().zip(&self.fields) {
            if field_boost(field, boost) == 0.0 {
                continue;
            }
            for term in terms {
                if let Some(postings) = stats.postings.get(term) {
                    keys.extend(postings.iter().map(String::as_str));
                }
            }
        }
        keys
    }
}

/// Terms of one top-level field: a string, or the strings of an array; anything else has none.
fn field_tokens(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(text)) => tokenize(text),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .flat_map(tokenize)
            .collect(),
        _ => Vec::new(),
    }
}

/// The multiplier for `field`; unusable client-supplied boosts fall back to neutral.
fn field_boost(field: &str, boost: &BTreeMap<String, f64>) -> f64 {
    match boost.get(field) {
        Some(&value) if value.is_finite() && value >= 0.0 => value,
        _ => 1.0,
    }
}

/// A hit ordered by rank: greater means better (higher score, then smaller key).
struct Ranked(SearchHit);

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .score
            .total_cmp(&other.0.score)
            .then_with(|| other.0.key.cmp(&self.0.key))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked {}

/// Best hits first; with a limit, keeps only the top `limit` in a heap of that size.
fn rank(hits: impl Iterator<Item = SearchHit>, limit: Option<usize>) -> Vec<SearchHit> {
    let ranked = match limit.filter(|&limit| limit > 0) {
        None => {
            let mut all: Vec<Ranked> = hits.map(Ranked).collect();
            all.sort_unstable_by(|a, b| b.cmp(a));
            all
        }
        Some(limit) => {
            // Min-heap on rank: the root is the worst hit kept so far.
            let mut best = BinaryHeap::with_capacity(limit + 1);
            for hit in hits {
                best.push(Reverse(Ranked(hit)));
                if best.len() > limit {
                    best.pop();
                }
            }
            best.into_sorted_vec()
                .into_iter()
                .map(|Reverse(hit)| hit)
                .collect()
        }
    };
    ranked.into_iter().map(|Ranked(hit)| hit).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const TOLERANCE: f64 = 1e-12;

    fn index(fields: &[&str]) -> SearchIndex {
        SearchIndex::new(SearchConfig::for_fields(fields.iter().copied())).unwrap()
    }

    fn body_corpus() -> SearchIndex {
        let mut index = index(&["body"]);
        index.upsert("d1", &json!({"body": "cat dog"}));
        index.upsert("d2", &json!({"body": "cats cat fish"}));
        index.upsert("d3", &json!({"body": "bird"}));
        index
    }

    fn boost(field: &str, value: f64) -> SearchOptions {
        SearchOptions {
            boost: BTreeMap::from([(field.to_owned(), value)]),
            ..SearchOptions::default()
        }
    }

    fn keys(hits: &[SearchHit]) -> Vec<&str> {
        hits.iter().map(|hit| hit.key.as_str()).collect()
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() < TOLERANCE,
            "expected {expected}, got {actual}"
        );
    }

    #[test]
    fn single_term_scores_match_hand_computed_bm25() {
        // N = 3, avgdl = 6/3 = 2, df(cat) = 2: idf = ln(1 + 1.5/2.5) = ln 1.6.
        // d2: tf 2, len 3 → ln1.6 · 4.4 / (2 + 1.2·(0.25 + 0.75·1.5)) = ln1.6 · 4.4/3.65.
        // d1: tf 1, len 2 → ln1.6 · 2.2 / 2.2.
        let hits = body_corpus().search("cat", &SearchOptions::default());
        assert_eq!(keys(&hits), ["d2", "d1"]);
        assert_close(hits[0].score, 0.566_579_717_446_914_3);
        assert_close(hits[1].score, 0.470_003_629_245_735_63);
        assert_close(hits[1].score, 1.6_f64.ln());
    }

    #[test]
    fn multi_term_scores_sum_and_report_matched_terms() {
        // fish: df 1 → idf = ln(1 + 2.5/1.5); d2: tf 1, len 3 → idf · 2.2 / 3.25.
        let hits = body_corpus().search("fishing cats", &SearchOptions::default());
        assert_eq!(keys(&hits), ["d2", "d1"]);
        assert_close(
            hits[0].score,
            0.814_273_342_122_942_7 + 0.566_579_717_446_914_3,
        );
        assert_eq!(hits[0].matched_terms, ["fish", "cat"]);
        assert_eq!(hits[1].matched_terms, ["cat"]);
    }

    #[test]
    fn repeated_query_words_count_once() {
        let index = body_corpus();
        let once = index.search("cat", &SearchOptions::default());
        let twice = index.search("cat cats CAT", &SearchOptions::default());
        assert_eq!(once, twice);
        assert_eq!(query_terms("cat cats dog cat"), ["cat", "dog"]);
    }

    #[test]
    fn stop_word_and_unknown_queries_match_nothing() {
        let index = body_corpus();
        assert!(
            index
                .search("the and of", &SearchOptions::default())
                .is_empty()
        );
        assert!(index.search("zebra", &SearchOptions::default()).is_empty());
        assert!(index.search("", &SearchOptions::default()).is_empty());
    }

    #[test]
    fn fields_are_scored_separately_and_boosts_multiply_them() {
        let mut index = index(&["title", "body"]);
        index.upsert("a", &json!({"title": "rust", "body": "fast memory safe"}));
        index.upsert("b", &json!({"title": "go", "body": "rust rust"}));
        // title: N 2, avgdl 1, df 1 → a scores ln 2.
        // body: N 2, avgdl 2.5, df 1 → b: ln2 · 4.4 / (2 + 1.2·(0.25 + 0.75·0.8)) = ln2 · 4.4/3.02.
        let plain = index.search("rust", &SearchOptions::default());
        assert_eq!(keys(&plain), ["b", "a"]);
        assert_close(plain[0].score, 1.009_883_309_425_085_9);
        assert_close(plain[1].score, 2_f64.ln());

        let boosted = index.search("rust", &boost("title", 3.0));
        assert_eq!(keys(&boosted), ["a", "b"]);
        assert_close(boosted[0].score, 3.0 * 2_f64.ln());
        assert_close(boosted[1].score, plain[0].score);
    }

    #[test]
    fn empty_boost_map_and_neutral_boost_leave_scores_unchanged() {
        let index = body_corpus();
        let plain = index.search("cat fish", &SearchOptions::default());
        assert_eq!(index.search("cat fish", &boost("body", 1.0)), plain);
        assert_eq!(index.search("cat fish", &boost("unknown", 7.0)), plain);
    }

    #[test]
    fn zero_boost_excludes_the_field_and_its_matches() {
        let mut index = index(&["title", "body"]);
        index.upsert("a", &json!({"title": "rust"}));
        index.upsert("b", &json!({"title": "go", "body": "rust"}));
        let hits = index.search("rust", &boost("title", 0.0));
        assert_eq!(keys(&hits), ["b"]);
    }

    #[test]
    fn unusable_boosts_fall_back_to_neutral() {
        let index = body_corpus();
        let plain = index.search("cat", &SearchOptions::default());
        assert_eq!(index.search("cat", &boost("body", -2.0)), plain);
        assert_eq!(index.search("cat", &boost("body", f64::NAN)), plain);
        assert_eq!(index.search("cat", &boost("body", f64::INFINITY)), plain);
    }

    #[test]
    fn ranking_breaks_score_ties_by_ascending_key() {
        let mut index = index(&["body"]);
        for key in ["m", "c", "x", "a"] {
            index.upsert(key, &json!({"body": "same words"}));
        }
        let hits = index.search("words", &SearchOptions::default());
        assert_eq!(keys(&hits), ["a", "c", "m", "x"]);
        assert!(hits.windows(2).all(|pair| pair[0].score == pair[1].score));
    }

    #[test]
    fn shorter_documents_rank_higher_for_equal_term_frequency() {
        let mut index = index(&["body"]);
        index.upsert(
            "long",
            &json!({"body": "rust compiler borrow checker lifetimes traits"}),
        );
        index.upsert("short", &json!({"body": "rust"}));
        index.upsert("other", &json!({"body": "python"}));
        let hits = index.search("rust", &SearchOptions::default());
        assert_eq!(keys(&hits), ["short", "long"]);
        assert!(hits[0].score > hits[1].score);
    }

    #[test]
    fn limit_keeps_the_best_hits_in_rank_order() {
        let mut index = index(&["body"]);
        for (key, body) in [
            ("k1", "apple"),
            ("k2", "apple apple"),
            ("k3", "apple apple apple"),
            ("k4", "apple pear"),
            ("k5", "pear"),
        ] {
            index.upsert(key, &json!({ "body": body }));
        }
        let all = index.search("apple", &SearchOptions::default());
        assert_eq!(all.len(), 4);
        for limit in 1..=5 {
            let options = SearchOptions {
                limit: Some(limit),
                ..SearchOptions::default()
            };
            let top = index.search("apple", &options);
            assert_eq!(top, all[..limit.min(all.len())], "limit {limit}");
        }
    }

    #[test]
    fn zero_limit_means_unlimited() {
        let index = body_corpus();
        let options = SearchOptions {
            limit: Some(0),
            ..SearchOptions::default()
        };
        assert_eq!(index.search("cat", &options).len(), 2);
    }

    #[test]
    fn min_score_drops_weaker_hits_inclusively() {
        let index = body_corpus();
        let all = index.search("cat", &SearchOptions::default());
        let options = SearchOptions {
            min_score: Some(all[0].score),
            ..SearchOptions::default()
        };
        assert_eq!(keys(&index.search("cat", &options)), ["d2"]);
        let above_all = SearchOptions {
            min_score: Some(all[0].score + 0.01),
            ..SearchOptions::default()
        };
        assert!(index.search("cat", &above_all).is_empty());
    }

    #[test]
    fn indexes_string_arrays_and_ignores_numbers_and_unconfigured_fields() {
        let mut index = index(&["tags", "price", "title"]);
        index.upsert(
            "p",
            &json!({"tags": ["garden", 5, "tools"], "price": 42, "body": "hammer", "title": {"nested": "saw"}}),
        );
        assert_eq!(
            index.search("tools garden", &SearchOptions::default())[0].matched_terms,
            ["tool", "garden"]
        );
        assert!(index.search("42", &SearchOptions::default()).is_empty());
        assert!(index.search("hammer", &SearchOptions::default()).is_empty());
        assert!(index.search("saw", &SearchOptions::default()).is_empty());
    }

    #[test]
    fn documents_without_terms_are_not_indexed() {
        let mut index = index(&["body"]);
        index.upsert("empty", &json!({"body": "the and of"}));
        index.upsert("scalar", &json!("cat"));
        index.upsert("null", &Value::Null);
        assert!(index.is_empty());
        index.upsert("d", &json!({"body": "cat"}));
        assert_eq!(index.len(), 1);
        // Replacing the only indexed text with nothing indexable removes the document.
        index.upsert("d", &json!({"body": 7}));
        assert!(!index.contains("d"));
        assert!(index.is_empty());
    }

    #[test]
    fn upsert_replaces_and_remove_forgets() {
        let mut index = body_corpus();
        assert_eq!(index.len(), 3);
        index.upsert("d3", &json!({"body": "cat"}));
        assert_eq!(index.len(), 3);
        assert_eq!(index.search("cat", &SearchOptions::default()).len(), 3);
        assert!(index.search("bird", &SearchOptions::default()).is_empty());
        assert!(index.remove("d2"));
        assert!(!index.remove("d2"));
        assert!(!index.contains("d2"));
        assert_eq!(
            keys(&index.search("cat", &SearchOptions::default())),
            ["d3", "d1"]
        );
    }

    #[test]
    fn removing_every_document_frees_all_postings() {
        let mut index = body_corpus();
        for key in ["d1", "d2", "d3"] {
            index.remove(key);
        }
        assert!(index.is_empty());
        assert!(index.fields.iter().all(|field| field.postings.is_empty()
            && field.document_count == 0
            && field.total_length == 0));
    }

    #[test]
    fn score_document_matches_search_and_applies_options() {
        let index = body_corpus();
        let terms = query_terms("cat fish");
        for hit in index.search("cat fish", &SearchOptions::default()) {
            assert_eq!(
                index.score_document(&terms, &hit.key, &SearchOptions::default()),
                Some(hit)
            );
        }
        assert_eq!(
            index.score_document(&terms, "d3", &SearchOptions::default()),
            None
        );
        assert_eq!(
            index.score_document(&terms, "missing", &SearchOptions::default()),
            None
        );
        let strict = SearchOptions {
            min_score: Some(1.0),
            ..SearchOptions::default()
        };
        assert!(index.score_document(&terms, "d2", &strict).is_some());
        assert_eq!(index.score_document(&terms, "d1", &strict), None);
    }

    #[test]
    fn rejects_unusable_configs() {
        let base = SearchConfig::for_fields(["body"]);
        let cases = [
            (
                SearchConfig::for_fields(Vec::<String>::new()),
                SearchConfigError::NoFields,
            ),
            (
                SearchConfig::for_fields(["a", "b", "a"]),
                SearchConfigError::DuplicateField("a".to_owned()),
            ),
            (
                SearchConfig {
                    k1: -0.5,
                    ..base.clone()
                },
                SearchConfigError::InvalidK1(-0.5),
            ),
            (
                SearchConfig {
                    b: 1.5,
                    ..base.clone()
                },
                SearchConfigError::InvalidB(1.5),
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(SearchIndex::new(config).unwrap_err(), expected);
        }
        assert!(matches!(
            SearchIndex::new(SearchConfig {
                k1: f64::NAN,
                ..base.clone()
            }),
            Err(SearchConfigError::InvalidK1(_))
        ));
        assert!(matches!(
            SearchIndex::new(SearchConfig {
                b: f64::NAN,
                ..base
            }),
            Err(SearchConfigError::InvalidB(_))
        ));
    }

    const VOCABULARY: [&str; 7] = [
        "apple", "banana", "cherry", "grape", "lemon", "mango", "peach",
    ];
    const KEYS: [&str; 5] = ["k0", "k1", "k2", "k3", "k4"];

    #[derive(Debug, Clone)]
    enum Op {
        Upsert(usize, Value),
        Remove(usize),
    }

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(VOCABULARY.to_vec()), 0..6)
            .prop_map(|words| words.join(" "))
    }

    fn document() -> impl Strategy<Value = Value> {
        (text(), text(), prop::collection::vec(text(), 0..3))
            .prop_map(|(title, body, tags)| json!({"title": title, "body": body, "tags": tags}))
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..KEYS.len(), document()).prop_map(|(key, doc)| Op::Upsert(key, doc)),
            1 => (0..KEYS.len()).prop_map(Op::Remove),
        ]
    }

    fn queries() -> Vec<String> {
        let mut queries: Vec<String> = VOCABULARY.iter().map(|word| (*word).to_owned()).collect();
        queries.push("apple banana cherry".to_owned());
        queries.push("peach mango lemon grape".to_owned());
        queries
    }

    fn option_sets() -> Vec<SearchOptions> {
        vec![
            SearchOptions::default(),
            SearchOptions {
                limit: Some(2),
                ..boost("title", 2.5)
            },
            SearchOptions {
                min_score: Some(0.5),
                ..boost("tags", 0.0)
            },
        ]
    }

    proptest! {
        #[test]
        fn incremental_updates_score_like_a_fresh_build(ops in prop::collection::vec(op(), 0..40)) {
            let fields = ["title", "body", "tags"];
            let mut incremental = index(&fields);
            let mut latest: BTreeMap<&str, Value> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Upsert(key, doc) => {
                        incremental.upsert(KEYS[key], &doc);
                        latest.insert(KEYS[key], doc);
                    }
                    Op::Remove(key) => {
                        incremental.remove(KEYS[key]);
                        latest.remove(KEYS[key]);
                    }
                }
            }
            let mut fresh = index(&fields);
            for (key, doc) in &latest {
                fresh.upsert(key, doc);
            }
            prop_assert_eq!(incremental.len(), fresh.len());
            for query in queries() {
                for options in option_sets() {
                    let hits = incremental.search(&query, &options);
                    prop_assert_eq!(&hits, &fresh.search(&query, &options));
                    let terms = query_terms(&query);
                    for hit in &hits {
                        let rescored = incremental.score_document(&terms, &hit.key, &options);
                        prop_assert_eq!(rescored.as_ref(), Some(hit));
                    }
                }
            }
        }

        #[test]
        fn hits_are_sorted_and_limited(docs in prop::collection::vec(document(), 0..12), limit in 0usize..6) {
            let mut index = index(&["title", "body", "tags"]);
            for (position, doc) in docs.iter().enumerate() {
                index.upsert(&format!("key{position:02}"), doc);
            }
            let unlimited = index.search("apple banana", &SearchOptions::default());
            let ordered = unlimited.windows(2).all(|pair| {
                pair[0].score > pair[1].score
                    || (pair[0].score == pair[1].score && pair[0].key < pair[1].key)
            });
            prop_assert!(ordered);
            prop_assert!(unlimited.iter().all(|hit| hit.score > 0.0 && !hit.matched_terms.is_empty()));
            let options = SearchOptions { limit: Some(limit), ..SearchOptions::default() };
            let expected_len = if limit == 0 { unlimited.len() } else { limit.min(unlimited.len()) };
            prop_assert_eq!(index.search("apple banana", &options), unlimited[..expected_len].to_vec());
        }
    }
}
