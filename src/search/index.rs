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
            .filter_map(|(term, was_matched)| was_matched.then(|| term.clone()))
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
