//! Opaque, signed keyset cursors for paging query results.
//!
//! A cursor is `base64url(payload ‖ HMAC-SHA256(secret, payload))` without padding, where the
//! msgpack payload holds a format version, a fingerprint of the query's filter and sort, the
//! issue time, and the position of the last row returned (its sort values and key). The MAC
//! makes tampering detectable; the fingerprint stops a cursor from being replayed against a
//! different query; the issue time bounds its lifetime. Clients treat the string as opaque.

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::Query;
use super::error::QueryError;
use super::sort::Position;

/// Default maximum cursor age: 10 minutes, as in TopGun.
pub const DEFAULT_CURSOR_MAX_AGE_MS: u64 = 10 * 60 * 1000;

const FORMAT_VERSION: u8 = 1;
const MAC_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// What the server needs to issue and check cursors.
#[derive(Debug, Clone, Copy)]
pub struct CursorContext<'a> {
    /// Server secret the cursor MAC is keyed with.
    pub secret: &'a [u8],
    /// Current wall-clock time in milliseconds since the epoch.
    pub now_millis: u64,
    /// Cursors older than this are expired.
    pub max_age_ms: u64,
}

impl<'a> CursorContext<'a> {
    /// A context with the default maximum age.
    pub fn new(secret: &'a [u8], now_millis: u64) -> Self {
        Self {
            secret,
            now_millis,
            max_age_ms: DEFAULT_CURSOR_MAX_AGE_MS,
        }
    }
}

/// A fingerprint of a query's filter and sort (not its limit or cursor), so that a cursor
/// is only honoured by the query that issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryFingerprint([u8; 16]);

impl QueryFingerprint {
    /// Fingerprints the parts of `query` that determine which rows come in which order.
    pub fn of(query: &Query) -> Result<Self, QueryError> {
        let canonical = Query {
            // `where` is ignored when a predicate is present, so it must not matter here.
            where_: query.where_.clone().filter(|_| query.predicate.is_none()),
            predicate: query.predicate.clone(),
            sort: query
                .sort
                .as_ref()
                .map(|sort| super::SortSpec::Fields(sort.fields())),
            ..Query::default()
        };
        let bytes = serde_json::to_vec(&canonical)
            .map_err(|err| QueryError::Cursor(format!("cannot fingerprint query: {err}")))?;
        let digest = Sha256::digest(&bytes);
        let mut fingerprint = [0; 16];
        fingerprint.copy_from_slice(&digest[..16]);
        Ok(Self(fingerprint))
    }
}

/// A decoded cursor position, owning its values.
#[derive(Debug, Clone, PartialEq)]
pub struct CursorPosition {
    /// Key of the last row of the previous page.
    pub key: String,
    /// Its sort values, one per sort term (`null` for absent fields and `_key` terms).
    pub values: Vec<Value>,
}

impl CursorPosition {
    /// The position in sort-order form.
    pub fn as_position(&self) -> Position<'_> {
        Position::new(&self.key, self.values.iter().map(Some).collect())
    }
}

/// The result of checking a cursor.
#[derive(Debug, Clone, PartialEq)]
pub enum CursorCheck {
    /// Authentic, for this query, and fresh.
    Valid(CursorPosition),
    /// Authentic and for this query, but older than the maximum age.
    Expired,
    /// Malformed, tampered with, or issued for a different query.
    Invalid,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    version: u8,
    query: QueryFingerprint,
    issued_at: u64,
    key: String,
    values: Vec<Value>,
}

/// Issues a cursor pointing just after `position`.
pub fn encode(
    position: &Position<'_>,
    query: QueryFingerprint,
    context: &CursorContext<'_>,
) -> Result<String, QueryError> {
    let payload = Payload {
        version: FORMAT_VERSION,
        query,
        issued_at: context.now_millis,
        key: position.key().to_owned(),
        values: position
            .cells()
            .iter()
            .map(|cell| cell.cloned().unwrap_or(Value::Null))
            .collect(),
    };
    let mut bytes =
        rmp_serde::to_vec(&payload).map_err(|err| QueryError::Cursor(err.to_string()))?;
    let mac = keyed_mac(context.secret)
        .map_err(QueryError::Cursor)?
        .chain_update(&bytes)
        .finalize()
        .into_bytes();
    bytes.extend_from_slice(&mac);
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Checks a cursor issued for `query` with `terms` sort terms.
pub fn decode(
    token: &str,
    query: QueryFingerprint,
    terms: usize,
    context: &CursorContext<'_>,
) -> CursorCheck {
    let Some(payload) = authentic_payload(token, context.secret) else {
        return CursorCheck::Invalid;
    };
    if payload.version != FORMAT_VERSION || payload.query != query || payload.values.len() != terms
    {
        return CursorCheck::Invalid;
    }
    if context.now_millis.saturating_sub(payload.issued_at) > context.max_age_ms {
        return CursorCheck::Expired;
    }
    CursorCheck::Valid(CursorPosition {
        key: payload.key,
        values: payload.values,
    })
}

fn authentic_payload(token: &str, secret: &[u8]) -> Option<Payload> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let split = bytes.len().checked_sub(MAC_LEN)?;
    let (payload, mac) = bytes.split_at(split);
    keyed_mac(secret)
        .ok()?
        .chain_update(payload)
        .verify_slice(mac)
        .ok()?;
    rmp_serde::from_slice(payload).ok()
}

fn keyed_mac(secret: &[u8]) -> Result<HmacSha256, String> {
    HmacSha256::new_from_slice(secret).map_err(|err| format!("bad cursor secret: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"cursor-test-secret";

    fn fingerprint(query: Value) -> QueryFingerprint {
        QueryFingerprint::of(&serde_json::from_value(query).unwrap()).unwrap()
    }

    fn sorted_by_prio() -> Value {
        json!({"sort": {"prio": "asc", "_key": "asc"}})
    }

    fn issue(now: u64) -> String {
        let prio = json!(3);
        let position = Position::new("k7", vec![Some(&prio), None]);
        encode(
            &position,
            fingerprint(sorted_by_prio()),
            &CursorContext::new(SECRET, now),
        )
        .unwrap()
    }

    #[test]
    fn round_trips_position() {
        let token = issue(1_000);
        let check = decode(
            &token,
            fingerprint(sorted_by_prio()),
            2,
            &CursorContext::new(SECRET, 2_000),
        );
        assert_eq!(
            check,
            CursorCheck::Valid(CursorPosition {
                key: "k7".into(),
                values: vec![json!(3), json!(null)],
            })
        );
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }

    #[test]
    fn fingerprint_ignores_sort_form_limit_and_overridden_where() {
        assert_eq!(
            fingerprint(json!({"sort": {"a": "asc"}, "limit": 5})),
            fingerprint(json!({"sort": [{"field": "a", "direction": "asc"}], "limit": 9}))
        );
        let predicate = json!({"op": "eq", "attribute": "a", "value": 1});
        assert_eq!(
            fingerprint(json!({"predicate": predicate, "where": {"b": 1}})),
            fingerprint(json!({"predicate": predicate}))
        );
        assert_ne!(
            fingerprint(json!({"sort": {"a": "asc"}})),
            fingerprint(json!({"sort": {"a": "desc"}}))
        );
    }

    #[test]
    fn expires_after_max_age() {
        let token = issue(1_000);
        let query = fingerprint(sorted_by_prio());
        let fresh = CursorContext::new(SECRET, 1_000 + DEFAULT_CURSOR_MAX_AGE_MS);
        assert!(matches!(
            decode(&token, query, 2, &fresh),
            CursorCheck::Valid(_)
        ));
        let stale = CursorContext::new(SECRET, 1_001 + DEFAULT_CURSOR_MAX_AGE_MS);
        assert_eq!(decode(&token, query, 2, &stale), CursorCheck::Expired);
    }

    #[test]
    fn tampering_wrong_secret_or_query_is_invalid() {
        let token = issue(1_000);
        let query = fingerprint(sorted_by_prio());
        let context = CursorContext::new(SECRET, 1_000);
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for i in 0..bytes.len() {
            bytes[i] ^= 0x01;
            let tampered = URL_SAFE_NO_PAD.encode(&bytes);
            assert_eq!(
                decode(&tampered, query, 2, &context),
                CursorCheck::Invalid,
                "byte {i}"
            );
            bytes[i] ^= 0x01;
        }
        let other_secret = CursorContext::new(b"other", 1_000);
        assert_eq!(
            decode(&token, query, 2, &other_secret),
            CursorCheck::Invalid
        );
        let other_query = fingerprint(json!({"sort": {"prio": "desc", "_key": "asc"}}));
        assert_eq!(
            decode(&token, other_query, 2, &context),
            CursorCheck::Invalid
        );
        assert_eq!(decode("", query, 2, &context), CursorCheck::Invalid);
        assert_eq!(
            decode("not base64!", query, 2, &context),
            CursorCheck::Invalid
        );
    }
}
