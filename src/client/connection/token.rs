//! Where the connection's credentials come from: nothing, a fixed token, or a provider that
//! is asked on every connect, again shortly before the token expires, and again after an
//! `AUTH_FAIL` — plus the refresh-time decision, read from the JWT's `exp` claim.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::future::BoxFuture;

/// A source of fresh tokens (for example a call to the application's auth backend).
pub trait TokenProvider: Send + Sync + 'static {
    /// A current token, or why none could be had.
    fn token(&self) -> BoxFuture<'_, Result<String, String>>;
}

/// How the connection authenticates.
#[derive(Clone, Default)]
pub enum TokenSource {
    /// No credentials: the manager reports `AuthRequired` and waits for `set_token`.
    #[default]
    None,
    /// A fixed token, used until it is rejected.
    Static(String),
    /// A provider asked for each connection and before each expiry.
    Provider(Arc<dyn TokenProvider>),
}

impl fmt::Debug for TokenSource {
    // Tokens are credentials: never in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::None => f.write_str("None"),
            TokenSource::Static(_) => f.write_str("Static(<redacted>)"),
            TokenSource::Provider(_) => f.write_str("Provider(..)"),
        }
    }
}

/// How long before `exp` a provider token is refreshed, at most.
pub const REFRESH_MARGIN_MS: u64 = 60_000;
/// The soonest a refresh may follow the token it replaces, so a provider handing out
/// already-expired tokens cannot make the manager spin.
pub const MIN_REFRESH_DELAY_MS: u64 = 1_000;

/// The `exp` claim (seconds since the epoch) of a JWT, read without verifying it — the
/// server verifies; the client only needs to know when to ask for a new one.
pub fn jwt_expiry_secs(token: &str) -> Option<u64> {
    let mut parts = token.split('.');
    let (_header, payload) = (parts.next()?, parts.next()?);
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?;
    exp.as_u64().or_else(|| {
        exp.as_f64()
            .filter(|e| e.is_finite() && *e >= 0.0)
            .map(|e| e as u64)
    })
}

/// When (wall-clock ms) to ask the provider again for `token`, obtained at `obtained_at_ms`:
/// [`REFRESH_MARGIN_MS`] before expiry, or halfway through a shorter lifetime, but never
/// sooner than [`MIN_REFRESH_DELAY_MS`] after obtaining it. `None` when the token carries no
/// readable `exp` (it does not expire as far as the client can tell).
pub fn refresh_at_ms(token: &str, obtained_at_ms: u64) -> Option<u64> {
    let expires_at_ms = jwt_expiry_secs(token)?.saturating_mul(1_000);
    let lifetime = expires_at_ms.saturating_sub(obtained_at_ms);
    let margin = REFRESH_MARGIN_MS.min(lifetime / 2);
    let earliest = obtained_at_ms.saturating_add(MIN_REFRESH_DELAY_MS);
    Some(expires_at_ms.saturating_sub(margin).max(earliest))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: u64 = 1_790_000_000_000;

    fn token(ttl_secs: u64) -> String {
        crate::auth::mint_token(
            "token-test-secret-0123456789abcdef",
            "alice",
            &["USER"],
            ttl_secs,
            NOW_MS / 1_000,
        )
        .unwrap()
    }

    #[test]
    fn reads_exp_from_a_real_jwt() {
        assert_eq!(jwt_expiry_secs(&token(3_600)), Some(NOW_MS / 1_000 + 3_600));
    }

    #[test]
    fn garbage_and_exp_less_tokens_have_no_expiry() {
        assert_eq!(jwt_expiry_secs("not-a-jwt"), None);
        assert_eq!(jwt_expiry_secs("a.!!!.c"), None);
        let no_exp = URL_SAFE_NO_PAD.encode(br#"{"sub":"bob"}"#);
        assert_eq!(jwt_expiry_secs(&format!("h.{no_exp}.s")), None);
        assert_eq!(refresh_at_ms("opaque-token", NOW_MS), None);
        let float_exp = URL_SAFE_NO_PAD.encode(br#"{"exp":1790000100.0}"#);
        assert_eq!(
            jwt_expiry_secs(&format!("h.{float_exp}.s")),
            Some(1_790_000_100)
        );
    }

    #[test]
    fn a_long_lived_token_is_refreshed_a_minute_before_expiry() {
        let at = refresh_at_ms(&token(3_600), NOW_MS).unwrap();
        assert_eq!(at, NOW_MS + 3_600_000 - 60_000);
    }

    #[test]
    fn a_short_lived_token_is_refreshed_halfway() {
        let at = refresh_at_ms(&token(10), NOW_MS).unwrap();
        assert_eq!(at, NOW_MS + 5_000);
    }

    #[test]
    fn an_expired_token_is_refreshed_after_the_minimum_delay_not_at_once() {
        let issued_long_ago = token(10);
        let later = NOW_MS + 3_600_000;
        assert_eq!(refresh_at_ms(&issued_long_ago, later), Some(later + 1_000));
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let shown = format!("{:?}", TokenSource::Static("secret-token".to_owned()));
        assert!(!shown.contains("secret-token"));
    }
}
