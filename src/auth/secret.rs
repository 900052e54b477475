//! Which JWT secret a server may start with (SEC-01, TOPGUN-REFERENCE.md §2.2 and defect 30):
//! production fails closed on a missing, public-default or short HS256 secret; development
//! falls back to the public default but says so, so the server can warn at startup.

use super::{is_pem, normalize_secret};

/// The public development secret of TopGun's stock server; never acceptable in production.
pub const DEV_DEFAULT_SECRET: &str = "topgun-secret-dev";

/// Minimum HS256 secret length in production: 256 bits, the HMAC-SHA-256 output size
/// (RFC 7518 §3.2).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// The deployment mode deciding how strict secret checks are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// Local development: a missing secret falls back to [`DEV_DEFAULT_SECRET`].
    Development,
    /// Production: every weak or missing secret is a startup error.
    Production,
}

/// The secret the server will verify tokens with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretChoice {
    /// A secret or PEM public key supplied by the operator.
    Configured(String),
    /// The public [`DEV_DEFAULT_SECRET`], either by fallback or because it was configured;
    /// the server should warn that anyone can mint tokens for it.
    DevelopmentDefault,
}

impl SecretChoice {
    /// The secret to pass to [`super::JwtVerifier::new`].
    pub fn secret(&self) -> &str {
        match self {
            Self::Configured(secret) => secret,
            Self::DevelopmentDefault => DEV_DEFAULT_SECRET,
        }
    }

    /// Whether the public development default is in use.
    pub fn is_development_default(&self) -> bool {
        matches!(self, Self::DevelopmentDefault)
    }
}

/// Why the configured JWT secret cannot be used. Startup errors, not sent to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Production without a secret.
    #[error("JWT_SECRET is required in production")]
    MissingSecret,
    /// Production with the public development default.
    #[error(
        "JWT_SECRET must not be the public development default \"{DEV_DEFAULT_SECRET}\" in production"
    )]
    DefaultSecretInProduction,
    /// Production with an HS256 secret too short to resist brute force.
    #[error(
        "JWT_SECRET is {len} bytes; production HS256 secrets need at least {MIN_HS256_SECRET_BYTES} bytes"
    )]
    SecretTooShort {
        /// Length of the rejected secret in bytes.
        len: usize,
    },
    /// The secret looks like a PEM key but does not parse as an RSA public key.
    #[error("JWT_SECRET looks like a PEM key but is not a valid RSA public key: {0}")]
    InvalidPublicKey(String),
}

/// Decides which secret to use. A blank secret counts as missing, because an empty
/// `JWT_SECRET=` in a deployment file is a mistake, not a choice.
pub fn check_secret(env: Environment, secret: Option<&str>) -> Result<SecretChoice, ConfigError> {
    let secret = secret.filter(|s| !s.trim().is_empty());
    match (env, secret) {
        (Environment::Development, None) => Ok(SecretChoice::DevelopmentDefault),
        (Environment::Development, Some(DEV_DEFAULT_SECRET)) => {
            Ok(SecretChoice::DevelopmentDefault)
        }
        (Environment::Development, Some(s)) => Ok(SecretChoice::Configured(s.to_owned())),
        (Environment::Production, None) => Err(ConfigError::MissingSecret),
        (Environment::Production, Some(s)) => check_production_secret(s),
    }
}

fn check_production_secret(secret: &str) -> Result<SecretChoice, ConfigError> {
    if secret.trim() == DEV_DEFAULT_SECRET {
        return Err(ConfigError::DefaultSecretInProduction);
    }
    let normalized = normalize_secret(secret);
    if !is_pem(&normalized) && normalized.len() < MIN_HS256_SECRET_BYTES {
        return Err(ConfigError::SecretTooShort {
            len: normalized.len(),
        });
    }
    Ok(SecretChoice::Configured(secret.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRONG: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn development_without_secret_uses_and_reports_the_default() {
        let choice = check_secret(Environment::Development, None).unwrap();
        assert!(choice.is_development_default());
        assert_eq!(choice.secret(), "topgun-secret-dev");
    }

    #[test]
    fn development_blank_secret_counts_as_missing() {
        let choice = check_secret(Environment::Development, Some("  ")).unwrap();
        assert_eq!(choice, SecretChoice::DevelopmentDefault);
    }

    #[test]
    fn development_with_explicit_default_is_still_reported() {
        let choice = check_secret(Environment::Development, Some(DEV_DEFAULT_SECRET)).unwrap();
        assert!(choice.is_development_default());
    }

    #[test]
    fn development_accepts_short_configured_secret() {
        let choice = check_secret(Environment::Development, Some("short")).unwrap();
        assert_eq!(choice, SecretChoice::Configured("short".to_owned()));
        assert!(!choice.is_development_default());
        assert_eq!(choice.secret(), "short");
    }

    #[test]
    fn production_requires_a_secret() {
        for missing in [None, Some(""), Some(" \t")] {
            let err = check_secret(Environment::Production, missing).unwrap_err();
            assert_eq!(err, ConfigError::MissingSecret);
            assert!(err.to_string().contains("JWT_SECRET"));
        }
    }

    #[test]
    fn production_refuses_the_public_default() {
        let err = check_secret(Environment::Production, Some(DEV_DEFAULT_SECRET)).unwrap_err();
        assert_eq!(err, ConfigError::DefaultSecretInProduction);
        assert!(err.to_string().contains("JWT_SECRET"));
        assert!(err.to_string().contains("topgun-secret-dev"));
    }

    #[test]
    fn production_refuses_hs256_secret_below_32_bytes() {
        let err = check_secret(Environment::Production, Some(&STRONG[..31])).unwrap_err();
        assert_eq!(err, ConfigError::SecretTooShort { len: 31 });
        assert_eq!(
            err.to_string(),
            "JWT_SECRET is 31 bytes; production HS256 secrets need at least 32 bytes"
        );
    }

    #[test]
    fn production_accepts_hs256_secret_of_exactly_32_bytes() {
        let choice = check_secret(Environment::Production, Some(STRONG)).unwrap();
        assert_eq!(choice, SecretChoice::Configured(STRONG.to_owned()));
    }

    #[test]
    fn production_length_counts_bytes_not_chars() {
        // 16 two-byte characters are 32 bytes.
        let secret = "é".repeat(16);
        assert!(check_secret(Environment::Production, Some(&secret)).is_ok());
    }

    #[test]
    fn production_exempts_pem_keys_from_the_length_rule() {
        let pem = "-----BEGIN PUBLIC KEY-----\\nAB\\n-----END PUBLIC KEY-----";
        let choice = check_secret(Environment::Production, Some(pem)).unwrap();
        assert_eq!(choice.secret(), pem);
    }
}
