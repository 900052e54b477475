//! JWT authentication: turns the token of an `AUTH` frame into a [`Principal`]
//! (PROTOCOL.md §2.2–2.4, TOPGUN-REFERENCE.md §2.2), mints tokens for `topgun token`, and
//! decides which JWT secret a server may start with ([`secret`], SEC-01).
//!
//! Verification follows the 2026-01 server: HS256, or RS256 when the secret is a PEM public
//! key; `exp`/`nbf` checked only when present; `roles` defaults to `["USER"]`; `userId`
//! defaults to `sub`. Time is always passed in by the caller so that verification is
//! deterministic under a simulated clock.

pub mod secret;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::fmt;

pub use secret::{ConfigError, DEV_DEFAULT_SECRET, Environment, SecretChoice, check_secret};

/// The role that bypasses every permission check.
pub const ADMIN_ROLE: &str = "ADMIN";

/// The role given to principals whose token carries no `roles` claim (2026-01 behaviour).
pub const DEFAULT_ROLE: &str = "USER";

/// Why a token was refused. Messages are short, reveal nothing about the secret, and are
/// meant to be sent verbatim in `AUTH_FAIL.error`; where the 2026-01 server (node
/// `jsonwebtoken`) had a message for the same case, the text is the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not three base64url parts, or the header/payload is not a JSON object.
    #[error("jwt malformed")]
    Malformed,
    /// The signature does not match the token's content and the configured key.
    #[error("invalid signature")]
    InvalidSignature,
    /// The header names an algorithm other than the one the secret selects.
    #[error("invalid algorithm")]
    InvalidAlgorithm,
    /// `exp` (plus leeway) is not after the current time.
    #[error("jwt expired")]
    Expired,
    /// `nbf` is later than the current time plus leeway.
    #[error("jwt not active")]
    NotYetValid,
    /// A registered or TopGun claim has the wrong JSON type.
    #[error("invalid {0} claim")]
    InvalidClaim(&'static str),
    /// Neither `userId` nor `sub` names the user.
    #[error("missing sub claim")]
    MissingSubject,
    /// Minting was asked for with a PEM public key, which cannot sign.
    #[error("cannot mint HS256 tokens with a PEM public key")]
    PemSecretCannotMint,
    /// The JWT library could not sign the claims.
    #[error("token signing failed")]
    Signing,
    /// Any other rejection by the JWT library.
    #[error("invalid token")]
    Rejected,
}

/// Verification options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwtOptions {
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

impl Default for JwtOptions {
    fn default() -> Self {
        Self { leeway_secs: 60 }
    }
}

/// The authenticated identity of a connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// `userId` claim, else `sub`; substituted into `{userId}` in policy patterns.
    pub user_id: String,
    /// `roles` claim, `["USER"]` when absent.
    pub roles: Vec<String>,
    /// The token's whole claim set as decoded (for interceptors and `$auth` lookups).
    pub claims: Map<String, Value>,
}

impl Principal {
    /// A principal that did not come from a token (no-auth mode, tests, internal callers).
    pub fn new(user_id: impl Into<String>, roles: Vec<String>) -> Self {
        Self {
            user_id: user_id.into(),
            roles,
            claims: Map::new(),
        }
    }

    /// Normalises a verified claim set the way the 2026-01 server does.
    pub fn from_claims(claims: Map<String, Value>) -> Result<Self, AuthError> {
        let user_id = user_id_from(&claims)?;
        let roles = roles_from(&claims)?;
        Ok(Self {
            user_id,
            roles,
            claims,
        })
    }

    /// Whether the principal holds `role` (exact, case-sensitive).
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether the principal is a superuser.
    pub fn is_admin(&self) -> bool {
        self.has_role(ADMIN_ROLE)
    }
}

/// `userId` wins over `sub` so that identity providers whose `sub` is opaque can still name
/// the user that `{userId}` patterns refer to. Empty ids are refused because they would turn
/// `user-{userId}*` into a pattern matching every user's maps.
fn user_id_from(claims: &Map<String, Value>) -> Result<String, AuthError> {
    let (name, value) = match (claims.get("userId"), claims.get("sub")) {
        (Some(v), _) => ("userId", v),
        (None, Some(v)) => ("sub", v),
        (None, None) => return Err(AuthError::MissingSubject),
    };
    match value {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::String(_) => Err(AuthError::MissingSubject),
        _ => Err(AuthError::InvalidClaim(name)),
    }
}

fn roles_from(claims: &Map<String, Value>) -> Result<Vec<String>, AuthError> {
    let Some(value) = claims.get("roles") else {
        return Ok(vec![DEFAULT_ROLE.to_owned()]);
    };
    let Value::Array(items) = value else {
        return Err(AuthError::InvalidClaim("roles"));
    };
    items
        .iter()
        .map(|item| match item {
            Value::String(role) => Ok(role.clone()),
            _ => Err(AuthError::InvalidClaim("roles")),
        })
        .collect()
}

/// Environment variables cannot hold newlines comfortably, so PEM keys arrive with literal
/// `\n` sequences (2026-01 `auth-handler.ts`).
pub(crate) fn normalize_secret(secret: &str) -> String {
    secret.replace("\\n", "\n")
}

/// A PEM public key selects RS256 (e.g. a Clerk instance key); anything else is an HS256 secret.
pub(crate) fn is_pem(secret: &str) -> bool {
    secret.contains("-----BEGIN")
}

/// Verifies TopGun JWTs against one configured secret or public key.
#[derive(Clone)]
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    leeway_secs: u64,
}

impl fmt::Debug for JwtVerifier {
    // The key material must never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.validation.algorithms)
            .field("leeway_secs", &self.leeway_secs)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// A verifier for `secret`: RS256 when it is a PEM public key, HS256 otherwise.
    pub fn new(secret: &str, opts: JwtOptions) -> Result<Self, ConfigError> {
        let secret = normalize_secret(secret);
        let (key, algorithm) = if is_pem(&secret) {
            let key = DecodingKey::from_rsa_pem(secret.as_bytes())
                .map_err(|e| ConfigError::InvalidPublicKey(e.to_string()))?;
            (key, Algorithm::RS256)
        } else {
            (
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            )
        };
        Ok(Self {
            key,
            validation: signature_only_validation(algorithm),
            leeway_secs: opts.leeway_secs,
        })
    }

    /// Checks the signature, then `exp`/`nbf` against `now_secs` (Unix seconds from the
    /// injected clock), and builds the principal.
    pub fn verify(&self, token: &str, now_secs: u64) -> Result<Principal, AuthError> {
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| map_jwt_error(e.kind()))?;
        self.check_time(&data.claims, now_secs)?;
        Principal::from_claims(data.claims)
    }

    /// Same rules as node `jsonwebtoken` (2026-01): expired when `now >= exp + leeway`,
    /// not yet valid when `nbf > now + leeway`; both claims are optional.
    fn check_time(&self, claims: &Map<String, Value>, now_secs: u64) -> Result<(), AuthError> {
        // f64 keeps fractional `exp` values (legal in JWT NumericDate) exact enough and
        // cannot overflow on hostile values the way integer addition could.
        let now = now_secs as f64;
        let leeway = self.leeway_secs as f64;
        if let Some(exp) = numeric_date(claims, "exp")?
            && now >= exp + leeway
        {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = numeric_date(claims, "nbf")?
            && nbf > now + leeway
        {
            return Err(AuthError::NotYetValid);
        }
        Ok(())
    }
}

/// The library only checks the signature and algorithm: its own `exp`/`nbf` checks read the
/// system clock, and 2026-01 performs no audience check.
fn signature_only_validation(algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.required_spec_claims = HashSet::new();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation
}

fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(AuthError::InvalidClaim(name)),
        Some(_) => Err(AuthError::InvalidClaim(name)),
    }
}

fn map_jwt_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::InvalidSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            AuthError::InvalidAlgorithm
        }
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => AuthError::Malformed,
        _ => AuthError::Rejected,
    }
}

/// Mints an HS256 token `{sub, roles, iat, exp}` valid for `ttl_secs` from `now_secs`.
pub fn mint_token<S: AsRef<str>>(
    secret: &str,
    sub: &str,
    roles: &[S],
    ttl_secs: u64,
    now_secs: u64,
) -> Result<String, AuthError> {
    let secret = normalize_secret(secret);
    if is_pem(&secret) {
        return Err(AuthError::PemSecretCannotMint);
    }
    let mut claims = Map::new();
    claims.insert("sub".to_owned(), Value::from(sub));
    claims.insert(
        "roles".to_owned(),
        Value::from_iter(roles.iter().map(|r| r.as_ref())),
    );
    claims.insert("iat".to_owned(), Value::from(now_secs));
    claims.insert(
        "exp".to_owned(),
        Value::from(now_secs.saturating_add(ttl_secs)),
    );
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|_| AuthError::Signing)
}

#[cfg(test)]
mod tests;
