//! Merkle trees for delta sync and the item hashes they hold (PROTOCOL.md §4.5, §3.4, §3.5).
//!
//! One tree covers every key of a map (LWW tombstones included). It is a 16-ary prefix trie of
//! depth 3 over the lowercase, zero-padded hex of `fnv1a_utf16(key)`; leaves hold
//! `key → item hash`. Both client generations' node hashes are maintained incrementally, so a
//! server can answer either: [`Combine::Sum`] (2026-01) and [`Combine::Fmix`] (2026-08).
//!
//! Below the leaves, the same key hashes continue the trie down to all 8 hex digits (the
//! *extended trie*); [`DeepRequest`] names nodes there for the deep-sync extension, which only
//! our walkers use (README "Deep Merkle sync"): a leaf that changed is narrowed down to the
//! few keys that differ instead of being sent whole.
//!
//! The item hashes ([`lww_item_hash`], [`or_entry_hash`]) reproduce the TypeScript strings
//! exactly, including JavaScript number formatting and a `JSON.stringify` replacer quirk.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;
use smol_str::SmolStr;

use crate::hash::{Fnv1aUtf16, fmix32, fnv1a_utf16};
use crate::hlc::Timestamp;
use crate::record::OrMapRecord;

/// Depth of the trie: leaves sit at this level and their paths have this many hex chars.
pub const DEPTH: usize = 3;

/// Hex digits of a whole key hash: the depth of the extended trie's deepest nodes.
pub const MAX_PREFIX: usize = 8;

/// The bucket key a server adds, with hash 0, to its root `SYNC_RESP_BUCKETS` to say it
/// answers [`DeepRequest`] paths. Every walker ignores it: TypeScript clients only request
/// buckets whose hash differs from their own (absent = 0), ours only hex-digit buckets.
pub const DEEP_SYNC_MARKER: &str = "+";

/// Node prefixes one [`DeepRequest`] may name.
pub const MAX_DEEP_PREFIXES: usize = 64;

const HEX_DIGITS: [char; 16] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b', 'c', 'd', 'e', 'f',
];

/// How node hashes are combined from their children (or a leaf's items).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Combine {
    /// 2026-01 clients: wrapping u32 sum at leaves and interior nodes.
    Sum,
    /// 2026-08 clients: wrapping sum of `fmix32` of each item (leaf) or child hash (interior).
    Fmix,
}

/// Both schemes' hash of one node, kept side by side so each update touches a node once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct NodeHash {
    sum: u32,
    fmix: u32,
}

impl NodeHash {
    fn get(self, combine: Combine) -> u32 {
        match combine {
            Combine::Sum => self.sum,
            Combine::Fmix => self.fmix,
        }
    }

    /// Swaps one item of a leaf; an absent item counts as 0, which is neutral in both schemes
    /// because `fmix32(0) == 0`.
    fn replace_item(&mut self, old: u32, new: u32) {
        self.sum = self.sum.wrapping_sub(old).wrapping_add(new);
        self.fmix = self
            .fmix
            .wrapping_sub(fmix32(old))
            .wrapping_add(fmix32(new));
    }

    /// Accounts for a child whose hash changed from `before` to `after`.
    fn replace_child(&mut self, before: NodeHash, after: NodeHash) {
        self.sum = self.sum.wrapping_sub(before.sum).wrapping_add(after.sum);
        self.fmix = self
            .fmix
            .wrapping_sub(fmix32(before.fmix))
            .wrapping_add(fmix32(after.fmix));
    }
}

/// A key in a leaf: its item hash, and its key hash so nodes below the leaf (the extended
/// trie) can be formed without rehashing the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    key_hash: u32,
    item: u32,
}

/// A trie node. Interior nodes only use `children`, leaves (depth [`DEPTH`]) only `entries`.
#[derive(Debug, Clone, Default)]
struct Node {
    hash: NodeHash,
    children: Children,
    entries: Leaf,
}

/// A leaf's keys in key order, each beside its entry. Finding a key scans the entries'
/// inline key hashes and reads a key's text only on a hash match; a search tree of `String`s
/// followed a pointer at every step, and that was a write's largest Merkle cost. Keys of up to
/// 23 bytes are held inline, so an update reads one buffer: the key's text lies next to its
/// hash. A leaf holds about `len / 4096` keys.
#[derive(Debug, Clone, Default)]
struct Leaf {
    items: Vec<(Entry, SmolStr)>,
}

impl Leaf {
    fn position(&self, key: &str, key_hash: u32) -> Option<usize> {
        self.items
            .iter()
            .position(|(entry, held)| entry.key_hash == key_hash && held.as_str() == key)
    }

    /// Sets `key`'s entry; returns the one it replaced.
    fn insert(&mut self, key: &str, entry: Entry) -> Option<Entry> {
        if let Some(index) = self.position(key, entry.key_hash) {
            return self
                .items
                .get_mut(index)
                .map(|(slot, _)| std::mem::replace(slot, entry));
        }
        let at = self.items.partition_point(|(_, held)| held.as_str() < key);
        self.items.insert(at, (entry, SmolStr::from(key)));
        None
    }

    /// Removes `key` (whose hash is `key_hash`); returns its entry.
    fn remove(&mut self, key: &str, key_hash: u32) -> Option<Entry> {
        let index = self.position(key, key_hash)?;
        Some(self.items.remove(index).0)
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn keys(&self) -> impl Iterator<Item = &str> {
        self.items.iter().map(|(_, key)| key.as_str())
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.items.iter().map(|(entry, key)| (key.as_str(), entry))
    }

    fn values(&self) -> impl Iterator<Item = &Entry> {
        self.items.iter().map(|(entry, _)| entry)
    }
}

/// An interior node's children, indexed by hex digit: a direct index on the write path
/// instead of a search. Leaves never allocate the array.
#[derive(Debug, Clone, Default)]
struct Children(Option<Box<[Option<Node>; 16]>>);

impl Children {
    fn get(&self, digit: char) -> Option<&Node> {
        self.0.as_ref()?[digit_index(digit)?].as_ref()
    }

    fn get_mut(&mut self, digit: char) -> Option<&mut Node> {
        self.0.as_mut()?[digit_index(digit)?].as_mut()
    }

    /// The child at `digit`, created (empty) if missing; `None` only for a non-hex digit.
    fn get_or_insert(&mut self, digit: char) -> Option<&mut Node> {
        let index = digit_index(digit)?;
        let slots = self
            .0
            .get_or_insert_with(|| Box::new(std::array::from_fn(|_| None)));
        Some(slots[index].get_or_insert_with(Node::default))
    }

    /// The existing children in digit order.
    fn iter(&self) -> impl Iterator<Item = (char, &Node)> {
        self.0.iter().flat_map(|slots| {
            HEX_DIGITS
                .iter()
                .zip(slots.iter())
                .filter_map(|(&digit, slot)| slot.as_ref().map(|node| (digit, node)))
        })
    }

    fn values(&self) -> impl Iterator<Item = &Node> {
        self.iter().map(|(_, node)| node)
    }
}

/// The slot of a lowercase hex digit; anything else names no child.
fn digit_index(digit: char) -> Option<usize> {
    match digit {
        '0'..='9' => Some(digit as usize - '0' as usize),
        'a'..='f' => Some(digit as usize - 'a' as usize + 10),
        _ => None,
    }
}

impl Node {
    /// Sets (`Some`) or removes (`None`) `key`, whose hash is `key_hash`, in the leaf at the
    /// end of `route`, fixing every hash on the way back up. Returns the previous item hash.
    /// Removal never creates nodes.
    fn set(&mut self, route: &[char], key: &str, key_hash: u32, new: Option<Entry>) -> Option<u32> {
        let Some((&digit, rest)) = route.split_first() else {
            let old = match new {
                Some(entry) => self.entries.insert(key, entry),
                None => self.entries.remove(key, key_hash),
            }
            .map(|entry| entry.item);
            self.hash
                .replace_item(old.unwrap_or(0), new.map_or(0, |entry| entry.item));
            return old;
        };
        let child = if new.is_some() {
            self.children.get_or_insert(digit)?
        } else {
            self.children.get_mut(digit)?
        };
        let before = child.hash;
        let old = child.set(rest, key, key_hash, new);
        self.hash.replace_child(before, child.hash);
        old
    }
}

impl Node {
    fn collect_keys<'a>(&'a self, keys: &mut Vec<&'a str>) {
        keys.extend(self.entries.keys());
        for child in self.children.values() {
            child.collect_keys(keys);
        }
    }

    fn count_keys(&self) -> usize {
        self.entries.len() + self.children.values().map(Node::count_keys).sum::<usize>()
    }
}

/// The Merkle tree of one map. Emptied nodes are kept (hash 0) and still reported by
/// [`MerkleTree::buckets`], as the clients do.
#[derive(Debug, Clone, Default)]
pub struct MerkleTree {
    root: Node,
    len: usize,
}

impl MerkleTree {
    /// An empty tree (root hash 0 in both schemes).
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces the item hash of `key`.
    pub fn update(&mut self, key: &str, item_hash: u32) {
        let key_hash = fnv1a_utf16(key);
        let entry = Entry {
            key_hash,
            item: item_hash,
        };
        if self
            .root
            .set(&route(key_hash), key, key_hash, Some(entry))
            .is_none()
        {
            self.len += 1;
        }
    }

    /// Removes `key`; a no-op for an absent key. For an OR map, call this when a key's live
    /// record set becomes empty instead of hashing the empty set.
    pub fn remove(&mut self, key: &str) {
        let key_hash = fnv1a_utf16(key);
        if self
            .root
            .set(&route(key_hash), key, key_hash, None)
            .is_some()
        {
            self.len -= 1;
        }
    }

    /// The root hash under `combine`.
    pub fn root(&self, combine: Combine) -> u32 {
        self.root.hash.get(combine)
    }

    /// Hashes of the children of the node at `path`, keyed by their hex character.
    /// Empty for a leaf, a path that does not exist, or a malformed path.
    pub fn buckets(&self, path: &str, combine: Combine) -> BTreeMap<char, u32> {
        self.node_at(path)
            .map(|node| {
                node.children
                    .iter()
                    .map(|(digit, child)| (digit, child.hash.get(combine)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The child paths under `path` that a bucket walk descends into: those whose hash in
    /// `server` (the peer's buckets at `path`, keyed by hex digit) is not zero and differs
    /// from this tree's. A zero hash means only this tree holds data there: nothing to fetch.
    /// Keys longer than one character (a deep request's child paths) are not children here.
    pub fn differing_children(
        &self,
        path: &str,
        server: &BTreeMap<String, u32>,
        combine: Combine,
    ) -> Vec<String> {
        let mine = self.buckets(path, combine);
        server
            .iter()
            .filter_map(|(digit, hash)| {
                let mut chars = digit.chars();
                let (Some(d), None) = (chars.next(), chars.next()) else {
                    return None;
                };
                let local = mine.get(&d).copied().unwrap_or(0);
                (*hash != 0 && *hash != local).then(|| format!("{path}{d}"))
            })
            .collect()
    }

    /// The keys (sorted) of the leaf at `path`, or `None` when `path` is not a leaf holding
    /// at least one key.
    pub fn leaf_keys(&self, path: &str) -> Option<impl Iterator<Item = &str>> {
        self.node_at(path)
            .filter(|node| !node.entries.is_empty())
            .map(|node| node.entries.keys())
    }

    /// Every key in the subtree at `path` (leaf by leaf, each leaf's keys sorted); empty when
    /// `path` does not exist. A sync walker pushes these when the other side holds nothing
    /// under `path`.
    pub fn keys_under(&self, path: &str) -> Vec<&str> {
        let mut keys = Vec::new();
        if let Some(node) = self.node_at(path) {
            node.collect_keys(&mut keys);
        }
        keys
    }

    /// Hashes of the non-empty children of the extended-trie node `prefix` (0 to
    /// [`MAX_PREFIX`] lowercase hex digits), keyed by the child's whole path. Down to the leaves
    /// a node's hash is its [`MerkleTree::buckets`] hash; below them it is the leaf hash of
    /// the items under it, so a leaf's children are its items split by the next hex digit.
    /// Empty for a malformed, missing or full-depth prefix.
    pub fn prefix_buckets(&self, prefix: &str, combine: Combine) -> BTreeMap<String, u32> {
        let Some(parsed) = Prefix::parse(prefix) else {
            return BTreeMap::new();
        };
        let child_path = |digit: char| {
            let mut path = String::with_capacity(prefix.len() + 1);
            path.push_str(prefix);
            path.push(digit);
            path
        };
        if parsed.len < DEPTH {
            return self
                .buckets(prefix, combine)
                .into_iter()
                .filter(|&(_, hash)| hash != 0)
                .map(|(digit, hash)| (child_path(digit), hash))
                .collect();
        }
        let mut children = [NodeHash::default(); 16];
        for entry in self.entries_under(parsed) {
            if let Some(digit) = parsed.next_digit(entry.key_hash) {
                children[digit].replace_item(0, entry.item);
            }
        }
        children
            .iter()
            .zip(HEX_DIGITS)
            .map(|(hash, digit)| (digit, hash.get(combine)))
            .filter(|&(_, hash)| hash != 0)
            .map(|(digit, hash)| (child_path(digit), hash))
            .collect()
    }

    /// Every key under the extended-trie node `prefix` (see [`MerkleTree::prefix_buckets`]);
    /// empty for a malformed or missing prefix.
    pub fn prefix_keys(&self, prefix: &str) -> Vec<&str> {
        let Some(parsed) = Prefix::parse(prefix) else {
            return Vec::new();
        };
        if parsed.len <= DEPTH {
            return self.keys_under(prefix);
        }
        self.leaf_at(parsed)
            .map(|leaf| {
                leaf.entries
                    .iter()
                    .filter(|(_, entry)| parsed.contains(entry.key_hash))
                    .map(|(key, _)| key)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many keys are under the extended-trie node `prefix`: a walker fetches a small node
    /// whole and asks for the children of a large one.
    pub fn prefix_len(&self, prefix: &str) -> usize {
        let Some(parsed) = Prefix::parse(prefix) else {
            return 0;
        };
        if parsed.len <= DEPTH {
            return self.node_at(prefix).map_or(0, Node::count_keys);
        }
        self.entries_under(parsed).count()
    }

    /// Number of keys in the tree.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the tree holds no key.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The node at `path`. Malformed paths (uppercase, non-hex, longer than [`DEPTH`]) need no
    /// separate check: children are only ever keyed by lowercase hex digits and leaves have
    /// none, so such paths simply find nothing.
    fn node_at(&self, path: &str) -> Option<&Node> {
        path.chars()
            .try_fold(&self.root, |node, digit| node.children.get(digit))
    }

    /// The leaf holding the keys of a prefix at least [`DEPTH`] digits long.
    fn leaf_at(&self, prefix: Prefix) -> Option<&Node> {
        let route = route(prefix.bits << (4 * (MAX_PREFIX - prefix.len)));
        self.node_at(&route.iter().collect::<String>())
    }

    /// The entries of the keys under a prefix at least [`DEPTH`] digits long.
    fn entries_under(&self, prefix: Prefix) -> impl Iterator<Item = &Entry> {
        self.leaf_at(prefix)
            .into_iter()
            .flat_map(|leaf| leaf.entries.values())
            .filter(move |entry| prefix.contains(entry.key_hash))
    }
}

/// Local key count up to which a deep-sync walker fetches a differing node below the leaves
/// whole instead of expanding it: about the point where its records cost less than the 16
/// child hashes and the extra round an expansion needs.
pub const FETCH_MAX_KEYS: usize = 2;

/// How a deep-sync walker descends into a node whose hash differs from the server's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descent {
    /// A standard request: a leaf we hold nothing in is fetched whole, as without the
    /// extension (nothing to narrow down, and a leaf is the cheapest way to get all of it).
    Standard,
    /// Batched into a [`DeepRequest::Expand`].
    Expand,
    /// Batched into a [`DeepRequest::Fetch`].
    Fetch,
}

impl MerkleTree {
    /// How a deep-sync walker descends into the differing node `path` of this (local) tree.
    pub fn descent(&self, path: &str) -> Descent {
        let depth = path.len();
        if depth < DEPTH {
            Descent::Expand
        } else if depth == DEPTH {
            if self.prefix_len(path) == 0 {
                Descent::Standard
            } else {
                Descent::Expand
            }
        } else if depth >= MAX_PREFIX || self.prefix_len(path) <= FETCH_MAX_KEYS {
            Descent::Fetch
        } else {
            Descent::Expand
        }
    }
}

/// A node of the extended trie: the first `len` hex digits (`bits`) of the key hashes under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Prefix {
    bits: u32,
    len: usize,
}

impl Prefix {
    /// Parses up to [`MAX_PREFIX`] lowercase hex digits.
    fn parse(path: &str) -> Option<Self> {
        if path.len() > MAX_PREFIX {
            return None;
        }
        let bits = path.chars().try_fold(0u32, |bits, c| {
            let digit = HEX_DIGITS.iter().position(|&d| d == c)?;
            Some((bits << 4) | u32::try_from(digit).ok()?)
        })?;
        Some(Self {
            bits,
            len: path.len(),
        })
    }

    fn contains(self, key_hash: u32) -> bool {
        self.len == 0 || key_hash >> (4 * (MAX_PREFIX - self.len)) == self.bits
    }

    /// The hex digit after this prefix in `key_hash` (`None` at full depth).
    fn next_digit(self, key_hash: u32) -> Option<usize> {
        let shift = 4 * MAX_PREFIX.checked_sub(self.len + 1)?;
        usize::try_from((key_hash >> shift) & 0xf).ok()
    }
}

/// A request of the deep-sync extension, sent as the `path` of a `MERKLE_REQ_BUCKET`: `+`
/// or `=` and then 1 to [`MAX_DEEP_PREFIXES`] comma-separated extended-trie prefixes of up to
/// [`MAX_PREFIX`] hex digits (e.g. `"+f55,0a3"`; at least 1 digit to expand, more than
/// [`DEPTH`] to fetch). No standard path starts that way, so a
/// server that knows the form answers it and no TypeScript client ever sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeepRequest {
    /// `+…`: answered with one `SYNC_RESP_BUCKETS` (same path) holding every named node's
    /// [`MerkleTree::prefix_buckets`], keyed by whole child paths.
    Expand(Vec<String>),
    /// `=…`: answered with one `SYNC_RESP_LEAF` (same path) holding the records of every key
    /// under the named nodes.
    Fetch(Vec<String>),
}

impl DeepRequest {
    /// Reads a deep request path; `None` for standard paths and malformed ones.
    pub fn parse(path: &str) -> Option<Self> {
        let mut chars = path.chars();
        let kind = chars.next()?;
        let prefixes: Vec<String> = chars.as_str().split(',').map(str::to_owned).collect();
        // A fetch names nodes below the leaves only, so one answer stays a few leaves' worth.
        let shortest = match kind {
            '+' => 1,
            '=' => DEPTH + 1,
            _ => return None,
        };
        let well_formed = (1..=MAX_DEEP_PREFIXES).contains(&prefixes.len())
            && prefixes
                .iter()
                .all(|p| p.len() >= shortest && Prefix::parse(p).is_some());
        if !well_formed {
            return None;
        }
        Some(if kind == '+' {
            Self::Expand(prefixes)
        } else {
            Self::Fetch(prefixes)
        })
    }

    /// The named prefixes.
    pub fn prefixes(&self) -> &[String] {
        match self {
            Self::Expand(prefixes) | Self::Fetch(prefixes) => prefixes,
        }
    }

    /// The wire path of this request.
    pub fn path(&self) -> String {
        let kind = match self {
            Self::Expand(_) => '+',
            Self::Fetch(_) => '=',
        };
        format!("{kind}{}", self.prefixes().join(","))
    }
}

/// The leaf path of `key`: the first [`DEPTH`] hex chars of its hash (e.g. `"f55"`).
pub fn leaf_path(key: &str) -> String {
    route(fnv1a_utf16(key)).iter().collect()
}

fn route(hash: u32) -> [char; DEPTH] {
    std::array::from_fn(|level| {
        let shift = 28 - 4 * level;
        HEX_DIGITS[((hash >> shift) & 0xf) as usize]
    })
}

/// The item hash of an LWW record: `fnv1a_utf16("<key>:<millis>:<counter>:<nodeId>")`.
/// The value does not take part, so tombstones hash like any other write.
pub fn lww_item_hash(key: &str, timestamp: &Timestamp) -> u32 {
    // Piece by piece rather than through `write!`: the formatting machinery was most of
    // the cost of merging a write.
    let mut hasher = Fnv1aUtf16::default();
    hasher.write(key);
    hasher.write(":");
    hasher.write_decimal(timestamp.millis);
    hasher.write(":");
    hasher.write_decimal(u64::from(timestamp.counter));
    hasher.write(":");
    hasher.write(&timestamp.node_id);
    hasher.finish()
}

/// The entry hash of an OR-map key over its live (non-tombstoned) records; expired but
/// untombstoned records count. Callers remove the key from the tree instead of hashing an
/// empty set.
pub fn or_entry_hash<'a>(key: &str, records: impl IntoIterator<Item = &'a OrMapRecord>) -> u32 {
    let mut records: Vec<&OrMapRecord> = records.into_iter().collect();
    records.sort_by(|a, b| cmp_utf16(&a.tag, &b.tag));
    let mut text = format!("key:{key}");
    for record in records {
        let ts = &record.timestamp;
        // Writing into a String cannot fail.
        let _ = write!(
            text,
            "|{}:{}:{}:{}:{}",
            record.tag,
            js_value_string(&record.value),
            ts.millis,
            ts.counter,
            ts.node_id
        );
        if let Some(ttl) = record.ttl_ms {
            let _ = write!(text, ":ttl={ttl}");
        }
    }
    fnv1a_utf16(&text)
}

/// JavaScript's default string order (UTF-16 code units), which differs from Rust's byte
/// order for characters above U+FFFF.
fn cmp_utf16(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

/// The client's `valueStr`: `String(value)` for scalars (strings unquoted), and
/// `JSON.stringify(value, Object.keys(value).sort())` for objects and arrays.
fn js_value_string(value: &Value) -> String {
    let mut whitelist: Vec<String> = match value {
        Value::Object(map) => map.keys().cloned().collect(),
        Value::Array(items) => (0..items.len()).map(|i| i.to_string()).collect(),
        Value::Null => return "null".to_owned(),
        Value::Bool(b) => return b.to_string(),
        Value::Number(n) => return js_number(n),
        Value::String(s) => return s.clone(),
    };
    whitelist.sort_by(|a, b| cmp_utf16(a, b));
    let mut out = String::new();
    stringify_filtered(value, &whitelist, &mut out);
    out
}

/// `JSON.stringify` with an array replacer: every object, at any depth, emits only the
/// whitelisted properties it has, in whitelist order; arrays are emitted whole.
fn stringify_filtered(value: &Value, whitelist: &[String], out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&js_number(n)),
        Value::String(s) => quote_json(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                stringify_filtered(item, whitelist, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            let present = whitelist
                .iter()
                .filter_map(|name| map.get(name).map(|v| (name, v)));
            for (i, (name, item)) in present.enumerate() {
                if i > 0 {
                    out.push(',');
                }
                quote_json(name, out);
                out.push(':');
                stringify_filtered(item, whitelist, out);
            }
            out.push('}');
        }
    }
}

/// `JSON.stringify` string quoting: only `"`, `\` and C0 controls are escaped, with the short
/// forms where JSON has them and lowercase `\u00xx` otherwise.
fn quote_json(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// JavaScript `Number#toString` of a JSON number. JavaScript holds every number as an f64,
/// so integers beyond 2^53 are formatted after the same rounding the client applies.
fn js_number(n: &serde_json::Number) -> String {
    n.as_f64().map_or_else(|| n.to_string(), js_f64)
}

/// ECMAScript Number::toString(10): shortest round-trip digits, plain notation for decimal
/// exponents in [-7, 21), exponent notation (`1e+21`, `1.5e-7`) outside it.
fn js_f64(x: f64) -> String {
    if x.is_nan() {
        return "NaN".to_owned();
    }
    if x == 0.0 {
        return "0".to_owned();
    }
    if x < 0.0 {
        return format!("-{}", js_f64(-x));
    }
    if x.is_infinite() {
        return "Infinity".to_owned();
    }
    let Some((digits, point)) = shortest_digits(x) else {
        return x.to_string();
    };
    format_js_digits(&digits, point)
}

/// Shortest round-trip decimal digits of a positive finite `x` and the position `n` of the
/// decimal point, so that `x = 0.d1d2… × 10^n` (ECMAScript's `n`).
fn shortest_digits(x: f64) -> Option<(String, i32)> {
    // `{:e}` prints the shortest round-trip digits as `d.ddde±x`.
    let formatted = format!("{x:e}");
    let (mantissa, exponent) = formatted.split_once('e')?;
    let exponent: i32 = exponent.parse().ok()?;
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    Some((digits, exponent + 1))
}

fn format_js_digits(digits: &str, n: i32) -> String {
    let k = i32::try_from(digits.len()).unwrap_or(i32::MAX);
    let zeros = |count: i32| "0".repeat(usize::try_from(count).unwrap_or(0));
    if k <= n && n <= 21 {
        return format!("{digits}{}", zeros(n - k));
    }
    if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(usize::try_from(n).unwrap_or(0));
        return format!("{int}.{frac}");
    }
    if -6 < n && n <= 0 {
        return format!("0.{}{digits}", zeros(-n));
    }
    let exponent = n - 1;
    let sign = if exponent < 0 { '-' } else { '+' };
    let (first, rest) = digits.split_at(1.min(digits.len()));
    let dot = if rest.is_empty() { "" } else { "." };
    format!("{first}{dot}{rest}e{sign}{}", exponent.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn a_walk_descends_where_the_peer_holds_different_data() {
        let mut tree = MerkleTree::default();
        // Enough keys to fill several of the root's children, not all sixteen.
        for item in 1..12 {
            tree.update(&format!("key-{item}"), item);
        }
        let mine = tree.buckets("", Combine::Fmix);
        let mut digits = mine.iter();
        let (&same, &same_hash) = digits.next().expect("a child");
        let (&changed, _) = digits.next().expect("a second child");
        let (&only_mine, _) = digits.next().expect("a third child");
        let absent = ('0'..='9')
            .chain('a'..='f')
            .find(|d| !mine.contains_key(d))
            .expect("a digit the tree does not use");
        let server: BTreeMap<String, u32> = [
            (same.to_string(), same_hash),
            (changed.to_string(), same_hash ^ 1),
            (only_mine.to_string(), 0),
            (absent.to_string(), 42),
            (format!("{same}{same}"), 7),
        ]
        .into_iter()
        .collect();
        let mut wanted = tree.differing_children("", &server, Combine::Fmix);
        wanted.sort();
        let mut expected = vec![changed.to_string(), absent.to_string()];
        expected.sort();
        assert_eq!(wanted, expected);
    }

    #[test]
    fn a_leaf_keeps_key_order_and_tells_keys_with_equal_hashes_apart() {
        let mut leaf = Leaf::default();
        let entry = |key_hash, item| Entry { key_hash, item };
        // "b" and "c" share a hash: only their text tells them apart.
        assert_eq!(leaf.insert("c", entry(7, 1)), None);
        assert_eq!(leaf.insert("a", entry(3, 2)), None);
        assert_eq!(leaf.insert("b", entry(7, 3)), None);
        assert_eq!(leaf.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(leaf.insert("c", entry(7, 4)), Some(entry(7, 1)));
        assert_eq!(leaf.remove("b", 7), Some(entry(7, 3)));
        assert_eq!(leaf.remove("b", 7), None);
        assert_eq!(leaf.remove("a", 7), None, "a key is found by its own hash");
        let held: Vec<_> = leaf.iter().map(|(k, e)| (k, e.item)).collect();
        assert_eq!(held, [("a", 2), ("c", 4)]);
        assert_eq!(leaf.len(), 2);
    }

    fn one_key_tree() -> MerkleTree {
        let mut tree = MerkleTree::new();
        let ts = Timestamp::new(1_700_000_000_000, 0, "node-1");
        tree.update("user-1", lww_item_hash("user-1", &ts));
        tree
    }

    fn two_key_tree() -> MerkleTree {
        let mut tree = one_key_tree();
        let ts = Timestamp::new(1_700_000_000_001, 3, "node-2");
        tree.update("user-2", lww_item_hash("user-2", &ts));
        tree
    }

    fn or_record(tag: &str, value: Value, ttl_ms: Option<u64>) -> OrMapRecord {
        OrMapRecord {
            value,
            timestamp: Timestamp::new(1_700_000_000_000, 0, "n1"),
            tag: tag.to_owned(),
            ttl_ms,
        }
    }

    #[test]
    fn one_key_vectors_in_both_schemes() {
        let tree = one_key_tree();
        assert_eq!(leaf_path("user-1"), "f55");
        assert_eq!(
            lww_item_hash("user-1", &Timestamp::new(1_700_000_000_000, 0, "node-1")),
            4_066_377_064
        );
        assert_eq!(tree.root(Combine::Sum), 4_066_377_064);
        assert_eq!(
            tree.buckets("", Combine::Sum),
            BTreeMap::from([('f', 4_066_377_064)])
        );
        assert_eq!(tree.root(Combine::Fmix), 752_903_945);
        assert_eq!(
            tree.buckets("f5", Combine::Fmix),
            BTreeMap::from([('5', 4_119_326_984)])
        );
        assert_eq!(tree.len(), 1);
    }

    #[test]
    fn two_key_vectors_in_both_schemes() {
        let tree = two_key_tree();
        assert_eq!(tree.root(Combine::Sum), 4_241_917_172);
        assert_eq!(tree.root(Combine::Fmix), 2_573_017_089);
        assert_eq!(tree.len(), 2);
    }

    #[test]
    fn keys_under_lists_a_whole_subtree() {
        let mut tree = two_key_tree();
        let mut all = tree.keys_under("");
        all.sort_unstable();
        assert_eq!(all, ["user-1", "user-2"]);
        assert_eq!(leaf_path("user-2"), "f85");
        assert_eq!(tree.keys_under("f"), ["user-1", "user-2"]);
        assert_eq!(tree.keys_under("f5"), ["user-1"]);
        assert_eq!(tree.keys_under("f85"), ["user-2"]);
        assert!(tree.keys_under("0").is_empty(), "no such path");
        assert!(tree.keys_under("f5x").is_empty(), "malformed path");
        tree.remove("user-1");
        assert_eq!(
            tree.keys_under("f"),
            ["user-2"],
            "an emptied leaf lists nothing"
        );
    }

    #[test]
    fn leaf_keys_only_for_populated_leaves() {
        let mut tree = two_key_tree();
        let keys: Vec<&str> = tree.leaf_keys("f55").into_iter().flatten().collect();
        assert_eq!(keys, ["user-1"]);
        assert!(tree.leaf_keys("f5").is_none(), "interior node");
        assert!(tree.leaf_keys("").is_none(), "root");
        assert!(tree.leaf_keys("000").is_none(), "missing leaf");
        tree.remove("user-1");
        assert!(tree.leaf_keys("f55").is_none(), "emptied leaf");
    }

    #[test]
    fn emptied_children_are_kept_with_hash_zero() {
        let mut tree = one_key_tree();
        tree.remove("user-1");
        assert_eq!(tree.root(Combine::Sum), 0);
        assert_eq!(tree.root(Combine::Fmix), 0);
        assert_eq!(tree.buckets("", Combine::Sum), BTreeMap::from([('f', 0)]));
        assert_eq!(
            tree.buckets("f5", Combine::Fmix),
            BTreeMap::from([('5', 0)])
        );
        assert!(tree.is_empty());
    }

    #[test]
    fn removing_an_absent_key_creates_nothing() {
        let mut tree = MerkleTree::new();
        tree.remove("user-1");
        assert!(tree.buckets("", Combine::Sum).is_empty());
        assert_eq!(tree.len(), 0);
    }

    #[test]
    fn malformed_or_missing_paths_give_nothing() {
        let tree = one_key_tree();
        for path in ["F", "g", "f55x", "ff55", "f5 ", "0", "f55"] {
            assert!(tree.buckets(path, Combine::Sum).is_empty(), "{path:?}");
        }
        for path in ["F55", "f55/", "0f55"] {
            assert!(tree.leaf_keys(path).is_none(), "{path:?}");
        }
    }

    #[test]
    fn empty_tree_is_zero() {
        let tree = MerkleTree::new();
        assert_eq!(tree.root(Combine::Sum), 0);
        assert_eq!(tree.root(Combine::Fmix), 0);
        assert!(tree.buckets("", Combine::Fmix).is_empty());
    }

    #[test]
    fn or_entry_protocol_vector() {
        let record = or_record("1700000000000:0:n1", json!("v"), None);
        assert_eq!(
            fnv1a_utf16("key:k|1700000000000:0:n1:v:1700000000000:0:n1"),
            250_738_279
        );
        assert_eq!(or_entry_hash("k", [&record]), 250_738_279);
    }

    #[test]
    fn or_entry_sorts_tags_and_appends_ttl() {
        let a = or_record("a", json!(1), Some(500));
        let b = or_record("b", json!(null), None);
        let expected = "key:k|a:1:1700000000000:0:n1:ttl=500|b:null:1700000000000:0:n1";
        assert_eq!(or_entry_hash("k", [&b, &a]), fnv1a_utf16(expected));
        assert_eq!(or_entry_hash("k", [&a, &b]), fnv1a_utf16(expected));
    }

    #[test]
    fn or_entry_tags_sort_in_utf16_order() {
        // U+1F600 starts with surrogate 0xD83D, which sorts before U+FF61 in UTF-16 though
        // its UTF-8 bytes sort after.
        let emoji = or_record("\u{1F600}", json!(true), None);
        let halfwidth = or_record("\u{FF61}", json!(false), None);
        let expected = "key:k|\u{1F600}:true:1700000000000:0:n1|\u{FF61}:false:1700000000000:0:n1";
        assert_eq!(
            or_entry_hash("k", [&halfwidth, &emoji]),
            fnv1a_utf16(expected)
        );
    }

    #[test]
    fn value_string_of_scalars() {
        assert_eq!(js_value_string(&json!(null)), "null");
        assert_eq!(js_value_string(&json!(true)), "true");
        assert_eq!(js_value_string(&json!("a \"b\"")), "a \"b\"");
        assert_eq!(js_value_string(&json!(42)), "42");
        assert_eq!(js_value_string(&json!(-7)), "-7");
    }

    #[test]
    fn value_string_whitelists_top_level_keys_at_every_depth() {
        assert_eq!(
            js_value_string(&json!({"a": {"z": 1, "a": 2}})),
            r#"{"a":{"a":2}}"#
        );
        assert_eq!(
            js_value_string(&json!({"b": 1, "a": 2, "B": 3})),
            r#"{"B":3,"a":2,"b":1}"#
        );
        assert_eq!(
            js_value_string(&json!({"b": [{"a": 1, "b": 2, "c": 3}, 4], "a": null})),
            r#"{"a":null,"b":[{"a":1,"b":2},4]}"#
        );
        assert_eq!(js_value_string(&json!({})), "{}");
    }

    #[test]
    fn value_string_of_arrays_whitelists_index_names() {
        assert_eq!(
            js_value_string(&json!([{"0": 1, "x": 2}, 3, "s", [true, {"1": null}]])),
            r#"[{"0":1},3,"s",[true,{"1":null}]]"#
        );
        assert_eq!(js_value_string(&json!([{"a": 1}])), "[{}]");
        assert_eq!(js_value_string(&json!([])), "[]");
    }

    #[test]
    fn value_string_emits_properties_in_sorted_index_name_order() {
        // Index names sort as strings: "0","1","10","2",… so "10" precedes "2".
        let items: Vec<Value> = (0..11).map(|i| json!(i)).collect();
        let mut value = Value::Array(items);
        if let Value::Array(items) = &mut value {
            items[0] = json!({"2": "two", "10": "ten", "x": 0});
        }
        assert_eq!(
            js_value_string(&value),
            r#"[{"10":"ten","2":"two"},1,2,3,4,5,6,7,8,9,10]"#
        );
    }

    #[test]
    fn value_string_escapes_like_json_stringify() {
        assert_eq!(
            js_value_string(&json!({"k\"": "q\"\\\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}\u{2028}é"})),
            "{\"k\\\"\":\"q\\\"\\\\\\n\\r\\t\\b\\f\\u0001\\u001f\u{7f}\u{2028}é\"}"
        );
    }

    #[test]
    fn numbers_format_like_javascript() {
        let cases: [(f64, &str); 20] = [
            (0.1, "0.1"),
            (1.5, "1.5"),
            (-1.5, "-1.5"),
            (-0.0, "0"),
            (100.0, "100"),
            (1e21, "1e+21"),
            (1.5e21, "1.5e+21"),
            (1e20, "100000000000000000000"),
            (123_456_789_012_345_680_000.0, "123456789012345680000"),
            (1e-7, "1e-7"),
            (1.234e-7, "1.234e-7"),
            (1e-6, "0.000001"),
            (0.000_001_234, "0.000001234"),
            (0.1 + 0.2, "0.30000000000000004"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (1_152_921_504_606_846_976.0, "1152921504606847000"),
            (123.456, "123.456"),
            (-2.5e-10, "-2.5e-10"),
            (9_007_199_254_740_993.0, "9007199254740992"),
        ];
        for (x, expected) in cases {
            assert_eq!(js_f64(x), expected, "{x:e}");
        }
        assert_eq!(js_value_string(&json!(u64::MAX)), "18446744073709552000");
        assert_eq!(js_value_string(&json!(i64::MIN)), "-9223372036854776000");
        assert_eq!(js_value_string(&json!([0.5, 1e21, 2])), "[0.5,1e+21,2]");
    }

    fn hex8(key: &str) -> String {
        format!("{:08x}", fnv1a_utf16(key))
    }

    /// 200 keys, all in the leaf of `"anchor"`, with arbitrary item hashes.
    fn busy_leaf() -> (MerkleTree, Vec<(String, u32)>) {
        let path = leaf_path("anchor");
        let items: Vec<(String, u32)> = (0u32..)
            .map(|i| (format!("k{i}"), i.wrapping_mul(2_654_435_761)))
            .filter(|(k, _)| leaf_path(k) == path)
            .take(200)
            .collect();
        (build(&items), items)
    }

    #[test]
    fn a_leaf_splits_into_its_items_by_the_next_hex_digit() {
        let (tree, items) = busy_leaf();
        let leaf = leaf_path("anchor");
        for combine in BOTH {
            let children = tree.prefix_buckets(&leaf, combine);
            let mut expected: BTreeMap<String, u32> = BTreeMap::new();
            for (key, item) in &items {
                let lifted = match combine {
                    Combine::Sum => *item,
                    Combine::Fmix => fmix32(*item),
                };
                let slot = expected.entry(hex8(key)[..4].to_owned()).or_default();
                *slot = slot.wrapping_add(lifted);
            }
            assert_eq!(children, expected);
            // The children add up to the leaf's own hash, as the leaf's items do.
            let total = children.values().fold(0u32, |a, h| a.wrapping_add(*h));
            let parent = &leaf[..2];
            assert_eq!(
                tree.prefix_buckets(parent, combine).get(&leaf).copied(),
                Some(total)
            );
        }
    }

    #[test]
    fn prefix_keys_and_len_follow_the_key_hash() {
        let (tree, items) = busy_leaf();
        let probe = &items[7].0;
        for depth in 0..=MAX_PREFIX {
            let prefix = &hex8(probe)[..depth];
            let mut expected: Vec<&str> = items
                .iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| hex8(k).starts_with(prefix))
                .collect();
            expected.sort_unstable();
            let mut keys = tree.prefix_keys(prefix);
            keys.sort_unstable();
            assert_eq!(keys, expected, "{prefix:?}");
            assert_eq!(tree.prefix_len(prefix), expected.len(), "{prefix:?}");
        }
        let full = hex8(probe);
        assert!(
            tree.prefix_buckets(&full, Combine::Fmix).is_empty(),
            "full depth"
        );
        for bad in ["F", "g", "123456789", "0x"] {
            assert!(tree.prefix_keys(bad).is_empty(), "{bad:?}");
            assert!(tree.prefix_buckets(bad, Combine::Sum).is_empty(), "{bad:?}");
            assert_eq!(tree.prefix_len(bad), 0, "{bad:?}");
        }
    }

    #[test]
    fn above_the_leaves_prefix_buckets_are_the_standard_ones() {
        let tree = two_key_tree();
        let f = tree.buckets("", Combine::Fmix)[&'f'];
        assert_eq!(
            tree.prefix_buckets("", Combine::Fmix),
            BTreeMap::from([("f".to_owned(), f)])
        );
        assert_eq!(
            tree.prefix_buckets("f5", Combine::Fmix),
            BTreeMap::from([("f55".to_owned(), 4_119_326_984)])
        );
        assert_eq!(
            tree.prefix_buckets("f55", Combine::Fmix),
            BTreeMap::from([("f553".to_owned(), 4_119_326_984)]),
            "user-1 hashes to f5537974"
        );
    }

    #[test]
    fn deep_requests_parse_and_print() {
        let expand = DeepRequest::Expand(vec!["f".into(), "f55".into(), "0123abcd".into()]);
        assert_eq!(expand.path(), "+f,f55,0123abcd");
        assert_eq!(DeepRequest::parse(&expand.path()), Some(expand));
        let fetch = DeepRequest::Fetch(vec!["f55a".into()]);
        assert_eq!(DeepRequest::parse("=f55a"), Some(fetch));
        let too_many = format!("+{}", vec!["a"; MAX_DEEP_PREFIXES + 1].join(","));
        let most = format!("+{}", vec!["a"; MAX_DEEP_PREFIXES].join(","));
        assert!(DeepRequest::parse(&most).is_some());
        for bad in [
            "",
            "f55",
            "+",
            "=",
            "=f55",
            "+f55,",
            "+,f",
            "+123456789",
            "+F",
            "*f55",
            &too_many,
        ] {
            assert_eq!(DeepRequest::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_deep_path_grammar_matches_the_wire_schema() {
        let pattern = regex::Regex::new(crate::protocol::common::MERKLE_PATH_PATTERN).unwrap();
        let too_many = format!("={}", vec!["abcd"; MAX_DEEP_PREFIXES + 1].join(","));
        for path in [
            "",
            "f",
            "f55",
            "f55a",
            "+f",
            "+f55,0a3c",
            "=f55a",
            "=f55",
            "+1234567890",
            "-a",
            &too_many,
        ] {
            let standard = path.len() <= DEPTH && Prefix::parse(path).is_some();
            assert_eq!(
                pattern.is_match(path),
                standard || DeepRequest::parse(path).is_some(),
                "{path:?}"
            );
        }
    }

    #[test]
    fn descent_expands_busy_nodes_and_fetches_small_ones() {
        let (tree, items) = busy_leaf();
        let leaf = leaf_path("anchor");
        assert_eq!(tree.descent(&leaf[..2]), Descent::Expand);
        assert_eq!(tree.descent(&leaf), Descent::Expand);
        assert_eq!(
            tree.descent("000"),
            Descent::Standard,
            "a leaf we hold nothing in"
        );
        let probe = hex8(&items[0].0);
        assert_eq!(tree.descent(&probe), Descent::Fetch, "full depth");
        let busy = &probe[..4];
        assert!(tree.prefix_len(busy) > FETCH_MAX_KEYS);
        assert_eq!(tree.descent(busy), Descent::Expand);
        let quiet = (0..16)
            .map(|d| format!("{}{}", &probe[..5], HEX_DIGITS[d]))
            .find(|p| tree.prefix_len(p) <= FETCH_MAX_KEYS)
            .unwrap();
        assert_eq!(tree.descent(&quiet), Descent::Fetch);
    }

    /// From-scratch reference: groups items by trie path and combines level by level.
    fn rebuild_root(contents: &BTreeMap<String, u32>, combine: Combine) -> u32 {
        let mut level: BTreeMap<String, u32> = BTreeMap::new();
        for (key, &item) in contents {
            let lifted = match combine {
                Combine::Sum => item,
                Combine::Fmix => fmix32(item),
            };
            let slot = level.entry(leaf_path(key)).or_default();
            *slot = slot.wrapping_add(lifted);
        }
        for depth in (0..DEPTH).rev() {
            let mut parents: BTreeMap<String, u32> = BTreeMap::new();
            for (path, hash) in level {
                let lifted = match combine {
                    Combine::Sum => hash,
                    Combine::Fmix => fmix32(hash),
                };
                let slot = parents.entry(path[..depth].to_owned()).or_default();
                *slot = slot.wrapping_add(lifted);
            }
            level = parents;
        }
        level.get("").copied().unwrap_or(0)
    }

    fn build(items: &[(String, u32)]) -> MerkleTree {
        let mut tree = MerkleTree::new();
        for (key, hash) in items {
            tree.update(key, *hash);
        }
        tree
    }

    /// Keys short enough to be held inline and keys longer than that (24+ bytes).
    const KEY: &str = "[a-z0-9]{1,6}|[a-z0-9]{24,40}";

    fn contents() -> impl Strategy<Value = BTreeMap<String, u32>> {
        prop::collection::btree_map(KEY, any::<u32>(), 0..200)
    }

    const BOTH: [Combine; 2] = [Combine::Sum, Combine::Fmix];

    proptest! {
        #[test]
        fn lww_item_hash_is_the_hash_of_the_clients_string(
            key in ".*",
            millis: u64,
            counter: u32,
            node in ".*",
        ) {
            let ts = Timestamp::new(millis, counter, &node);
            prop_assert_eq!(
                lww_item_hash(&key, &ts),
                fnv1a_utf16(&format!("{key}:{millis}:{counter}:{node}"))
            );
        }

        #[test]
        fn insertion_order_does_not_matter(
            (items, shuffled) in contents()
                .prop_map(|m| m.into_iter().collect::<Vec<_>>())
                .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle()))
        ) {
            let a = build(&items);
            let b = build(&shuffled);
            for combine in BOTH {
                prop_assert_eq!(a.root(combine), b.root(combine));
            }
        }

        #[test]
        fn update_then_revert_restores_root(
            contents in contents(),
            key in KEY,
            hash in any::<u32>(),
        ) {
            let items: Vec<_> = contents.clone().into_iter().collect();
            let mut tree = build(&items);
            let before = BOTH.map(|c| tree.root(c));
            tree.update(&key, hash);
            match contents.get(&key) {
                Some(&old) => tree.update(&key, old),
                None => tree.remove(&key),
            }
            prop_assert_eq!(BOTH.map(|c| tree.root(c)), before);
            prop_assert_eq!(tree.len(), contents.len());
        }

        #[test]
        fn incremental_equals_rebuild(
            ops in prop::collection::vec(("[a-f]{1,3}", prop::option::of(any::<u32>())), 0..300)
        ) {
            let mut tree = MerkleTree::new();
            let mut model = BTreeMap::new();
            for (key, op) in ops {
                match op {
                    Some(hash) => {
                        tree.update(&key, hash);
                        model.insert(key, hash);
                    }
                    None => {
                        tree.remove(&key);
                        model.remove(&key);
                    }
                }
            }
            for combine in BOTH {
                prop_assert_eq!(tree.root(combine), rebuild_root(&model, combine));
            }
            prop_assert_eq!(tree.len(), model.len());
            let mut leaf_keys: Vec<String> = Vec::new();
            for path in model.keys().map(|k| leaf_path(k)).collect::<std::collections::BTreeSet<_>>() {
                leaf_keys.extend(tree.leaf_keys(&path).into_iter().flatten().map(str::to_owned));
            }
            leaf_keys.sort();
            prop_assert_eq!(leaf_keys, model.keys().cloned().collect::<Vec<_>>());
        }

        #[test]
        fn any_content_change_changes_both_roots(
            contents in contents(),
            key in KEY,
            hash in 1..=u32::MAX,
        ) {
            let items: Vec<_> = contents.clone().into_iter().collect();
            let mut tree = build(&items);
            let before = BOTH.map(|c| tree.root(c));
            let new_hash = match contents.get(&key) {
                Some(&old) => old.wrapping_add(hash),
                None => hash,
            };
            prop_assume!(new_hash != 0);
            tree.update(&key, new_hash);
            for (i, combine) in BOTH.into_iter().enumerate() {
                prop_assert_ne!(tree.root(combine), before[i]);
            }
        }
    }
}
