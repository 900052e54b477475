//! Tests for JWT verification and minting; the RSA pair below was generated with `openssl`
//! solely for these tests.

use super::*;
use serde_json::json;

const SECRET: &str = "test-secret-that-is-long-enough-32b";
const NOW: u64 = 1_700_000_000;

const TEST_RSA_PRIVATE_PEM: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQDbsvKDoGjHQhY0\n\
wHkyiKufsNw+UDUnpYmRtPqt6QzCKH6yPIjYNWYewnyEIjTs8xWz8zIu6DaoaiXM\n\
JVv1ORJkQlyXcvHJXVuwujy0rhej5MkCdn1tHzDOXNj0W0OO83V7nZnZ+GdFX5VZ\n\
ue0LVG53tvtkqq77osPkIyshgco2LusqSKXh/tflja9mgD4Dvuc9oKO1X0TVtPdk\n\
KKjtpN4tGXXd/TsIaPD6spsSrvPbJciqiVkhb3fJGTyvSIs7V+vsApQnjCPCl95p\n\
f7svWcnB2VX0G3Lz6DWJjabBmRVTSq/Lai8gdYGhWcgp2+AdOD9Ivv/0kdgUYqUx\n\
uXCcZqJfAgMBAAECggEAUeShS3lGtUeoGV/JjZGuT6dQYZXqSm4FGqAYdS0SyWjo\n\
2S2BYP5+o2ahnWtWySBPbbVwdlWu0hZHIpKmdYEhnuexte5tvD6lh/nT2RGv1DLa\n\
zqU2Wa+vtKydXnCKfUW4/CwiBkL208AuXrTUbE27o7o8eSi6cygX1vlZAXNs2cbw\n\
nn3/3gBwxBW9Bo6qAj+7hja8v6YPLapxRfCPduY9WWAi0MBQSPYWMob6qJhf1bqa\n\
JupiuTxBc+NEqMglbYs9ScqmDThf9NDnxxo5BGanY5/1uAS/Q+j1SzChLQhhdaZz\n\
U+Mpdhmo3tGW52odHEV9BVvAaqlFptclLifl4ef3QQKBgQDyol7OmHLgQ7V1moBZ\n\
snQWqoiVT8TpPLsVo+OD0u1tPL75bmbryFpB7hgZxSbNyMlw7O8bgvhLl+eBX6ud\n\
qHD5tAhxQ71Gn+Ppe1Kq6GhIEd1McsxxHh/VX6GbJTiyVXppM9FaMa2N9LBcWX0K\n\
VnvKZ2FCNPGVJpVYIjEjy1HgPwKBgQDnzSTeC+S9hMpkUagMTBOEgWxM1CwuA+lN\n\
3MvvwnkbforrbIE+5kmQyfaolXuRqX/xPJiZZq8lZmlMRXM30BLV3yeg9+HMUx52\n\
bx/ZDg3wc4PYi7sOh3fcVP4zxXByRSBhT5v2IOm6I0iAJNLF6BM+U5KPOfRoRrCe\n\
a09KwRy14QKBgA+t1GiPS2UYmwJFgKPLN1s7m+XiKLxVs1U7qPkcyUD02vZtXvM/\n\
mC2IgEAyEEbeAb5tYSoq9XaVE1212/YtK1fHfYAsO2/z5xtwX7AxooN9vAozpOhu\n\
ZOo56syGxDop8eYYdh/Y8/knZboiAkWHvyoeMhfAKhhUTPRMCVbhzaGrAoGAKjwZ\n\
nI+kNNfOHKs4KE1wPPNr7S+3gQbbaoFxcxUHBfhvjWeuwOwquUPjOmJKKocstaKp\n\
10F7ZiAbzXbWAHRcCjXnvY+Mx7LZWRD0R5Mk/Qu/GSSUh5gtQasGyh4OV/O6a6Ca\n\
tSTYET8+hYKwGLkpUHDfwlL38kv3AFZjEybOeWECgYBExbnsk/SqE6fWbUTJUsox\n\
ylpnbQdEKyRPqPjGUjoGCjP9AiVWMyKaB6zDCUdcVh7t5/fifgIvqZy11d/ksYC7\n\
M7QaehX79AuBOCX8GuEXfQrzD1l5Tqct5A9jL6pn0Q86AAM2rpuCMN38+jEPW81t\n\
r6S49PmBzyaSPNBF3f8igQ==\n\
-----END PRIVATE KEY-----";
const TEST_RSA_PUBLIC_PEM: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA27Lyg6Box0IWNMB5Moir\n\
n7DcPlA1J6WJkbT6rekMwih+sjyI2DVmHsJ8hCI07PMVs/MyLug2qGolzCVb9TkS\n\
ZEJcl3LxyV1bsLo8tK4Xo+TJAnZ9bR8wzlzY9FtDjvN1e52Z2fhnRV+VWbntC1Ru\n\
d7b7ZKqu+6LD5CMrIYHKNi7rKkil4f7X5Y2vZoA+A77nPaCjtV9E1bT3ZCio7aTe\n\
LRl13f07CGjw+rKbEq7z2yXIqolZIW93yRk8r0iLO1fr7AKUJ4wjwpfeaX+7L1nJ\n\
wdlV9Bty8+g1iY2mwZkVU0qvy2ovIHWBoVnIKdvgHTg/SL7/9JHYFGKlMblwnGai\n\
XwIDAQAB\n\
-----END PUBLIC KEY-----";

fn encode(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs_token(claims: Value) -> String {
    encode(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        &claims,
    )
}

fn rs_token(claims: Value) -> String {
    let key = EncodingKey::from_rsa_pem(TEST_RSA_PRIVATE_PEM.as_bytes()).unwrap();
    encode(Algorithm::RS256, &key, &claims)
}

fn hs_verifier() -> JwtVerifier {
    JwtVerifier::new(SECRET, JwtOptions::default()).unwrap()
}

fn rs_verifier() -> JwtVerifier {
    JwtVerifier::new(TEST_RSA_PUBLIC_PEM, JwtOptions::default()).unwrap()
}

fn verify_hs(claims: Value) -> Result<Principal, AuthError> {
    hs_verifier().verify(&hs_token(claims), NOW)
}

#[test]
fn hs256_token_yields_principal_with_all_claims() {
    let principal = verify_hs(json!({
        "sub": "alice",
        "roles": ["USER", "EDITOR"],
        "exp": NOW + 3600,
        "org": "acme"
    }))
    .unwrap();
    assert_eq!(principal.user_id, "alice");
    assert_eq!(principal.roles, vec!["USER", "EDITOR"]);
    assert_eq!(principal.claims["org"], json!("acme"));
    assert_eq!(principal.claims["sub"], json!("alice"));
    assert!(principal.has_role("EDITOR"));
    assert!(!principal.is_admin());
}

#[test]
fn rs256_selected_for_pem_public_key() {
    let token = rs_token(json!({"sub": "bob", "exp": NOW + 60}));
    let principal = rs_verifier().verify(&token, NOW).unwrap();
    assert_eq!(principal.user_id, "bob");
}

#[test]
fn pem_with_literal_backslash_n_sequences_is_unescaped() {
    let escaped = TEST_RSA_PUBLIC_PEM.replace('\n', "\\n");
    assert!(!escaped.contains('\n'));
    let verifier = JwtVerifier::new(&escaped, JwtOptions::default()).unwrap();
    let token = rs_token(json!({"sub": "bob"}));
    assert_eq!(verifier.verify(&token, NOW).unwrap().user_id, "bob");
}

#[test]
fn rs256_tampered_payload_is_invalid_signature() {
    let token = rs_token(json!({"sub": "bob", "roles": ["USER"]}));
    let forged = hs_token(json!({"sub": "bob", "roles": ["ADMIN"]}));
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[1] = forged.split('.').nth(1).unwrap();
    let err = rs_verifier().verify(&parts.join("."), NOW).unwrap_err();
    assert_eq!(err, AuthError::InvalidSignature);
    assert_eq!(err.to_string(), "invalid signature");
}

#[test]
fn hs256_signed_with_other_secret_is_invalid_signature() {
    let token = encode(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
        &json!({"sub": "eve"}),
    );
    assert_eq!(
        hs_verifier().verify(&token, NOW).unwrap_err(),
        AuthError::InvalidSignature
    );
}

#[test]
fn hs256_token_signed_with_the_public_key_is_rejected_by_rs256_verifier() {
    // Classic algorithm confusion: the attacker knows the public key and uses it as an
    // HMAC secret.
    let token = encode(
        Algorithm::HS256,
        &EncodingKey::from_secret(TEST_RSA_PUBLIC_PEM.as_bytes()),
        &json!({"sub": "eve", "roles": ["ADMIN"]}),
    );
    let err = rs_verifier().verify(&token, NOW).unwrap_err();
    assert_eq!(err, AuthError::InvalidAlgorithm);
    assert_eq!(err.to_string(), "invalid algorithm");
}

#[test]
fn rs256_token_is_rejected_by_hs256_verifier() {
    let token = rs_token(json!({"sub": "bob"}));
    assert_eq!(
        hs_verifier().verify(&token, NOW).unwrap_err(),
        AuthError::InvalidAlgorithm
    );
}

#[test]
fn hs512_token_is_rejected_by_hs256_verifier() {
    let token = encode(
        Algorithm::HS512,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        &json!({"sub": "bob"}),
    );
    assert_eq!(
        hs_verifier().verify(&token, NOW).unwrap_err(),
        AuthError::InvalidAlgorithm
    );
}

#[test]
fn unsigned_alg_none_token_is_refused() {
    let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
    let payload = hs_token(json!({"sub": "eve"}));
    let payload = payload.split('.').nth(1).unwrap();
    let token = format!("{header}.{payload}.");
    assert_eq!(
        hs_verifier().verify(&token, NOW).unwrap_err(),
        AuthError::Malformed
    );
}

#[test]
fn malformed_tokens_are_reported_as_malformed() {
    for token in ["", "abc", "a.b.c", "a.b", "!!!.###.$$$"] {
        let err = hs_verifier().verify(token, NOW).unwrap_err();
        assert_eq!(err, AuthError::Malformed, "token {token:?}");
        assert_eq!(err.to_string(), "jwt malformed");
    }
}

#[test]
fn expired_token_is_refused() {
    let err = verify_hs(json!({"sub": "a", "exp": NOW - 3600})).unwrap_err();
    assert_eq!(err, AuthError::Expired);
    assert_eq!(err.to_string(), "jwt expired");
}

#[test]
fn exp_leeway_boundary_follows_node_jsonwebtoken() {
    // Expired exactly when now >= exp + leeway.
    assert_eq!(
        verify_hs(json!({"sub": "a", "exp": NOW - 60})).unwrap_err(),
        AuthError::Expired
    );
    assert!(verify_hs(json!({"sub": "a", "exp": NOW - 59})).is_ok());
}

#[test]
fn fractional_exp_is_compared_exactly() {
    let now = NOW as f64;
    assert_eq!(
        verify_hs(json!({"sub": "a", "exp": now - 60.5})).unwrap_err(),
        AuthError::Expired
    );
    assert!(verify_hs(json!({"sub": "a", "exp": now - 59.5})).is_ok());
}

#[test]
fn zero_leeway_expires_at_exp() {
    let verifier = JwtVerifier::new(SECRET, JwtOptions { leeway_secs: 0 }).unwrap();
    let at_exp = hs_token(json!({"sub": "a", "exp": NOW}));
    let before_exp = hs_token(json!({"sub": "a", "exp": NOW + 1}));
    assert_eq!(
        verifier.verify(&at_exp, NOW).unwrap_err(),
        AuthError::Expired
    );
    assert!(verifier.verify(&before_exp, NOW).is_ok());
}

#[test]
fn nbf_in_the_future_beyond_leeway_is_refused() {
    let err = verify_hs(json!({"sub": "a", "nbf": NOW + 61})).unwrap_err();
    assert_eq!(err, AuthError::NotYetValid);
    assert_eq!(err.to_string(), "jwt not active");
    assert!(verify_hs(json!({"sub": "a", "nbf": NOW + 60})).is_ok());
}

#[test]
fn verification_uses_the_supplied_time_not_the_system_clock() {
    let token = hs_token(json!({"sub": "a", "nbf": 100, "exp": 200}));
    let verifier = JwtVerifier::new(SECRET, JwtOptions { leeway_secs: 0 }).unwrap();
    assert_eq!(
        verifier.verify(&token, 99).unwrap_err(),
        AuthError::NotYetValid
    );
    assert!(verifier.verify(&token, 150).is_ok());
    assert_eq!(
        verifier.verify(&token, 200).unwrap_err(),
        AuthError::Expired
    );
}

#[test]
fn exp_and_nbf_are_optional() {
    assert!(verify_hs(json!({"sub": "a"})).is_ok());
}

#[test]
fn huge_exp_does_not_overflow() {
    assert!(verify_hs(json!({"sub": "a", "exp": 1e300})).is_ok());
    assert!(verify_hs(json!({"sub": "a", "exp": u64::MAX})).is_ok());
}

#[test]
fn non_numeric_time_claims_are_invalid() {
    assert_eq!(
        verify_hs(json!({"sub": "a", "exp": "tomorrow"})).unwrap_err(),
        AuthError::InvalidClaim("exp")
    );
    let err = verify_hs(json!({"sub": "a", "nbf": null})).unwrap_err();
    assert_eq!(err, AuthError::InvalidClaim("nbf"));
    assert_eq!(err.to_string(), "invalid nbf claim");
}

#[test]
fn audience_is_not_checked() {
    assert!(verify_hs(json!({"sub": "a", "aud": "somewhere-else"})).is_ok());
}

#[test]
fn missing_sub_and_user_id_is_refused() {
    let err = verify_hs(json!({"roles": ["USER"]})).unwrap_err();
    assert_eq!(err, AuthError::MissingSubject);
    assert_eq!(err.to_string(), "missing sub claim");
    assert_eq!(
        verify_hs(json!({"sub": ""})).unwrap_err(),
        AuthError::MissingSubject
    );
}

#[test]
fn non_string_subject_is_invalid() {
    assert_eq!(
        verify_hs(json!({"sub": 42})).unwrap_err(),
        AuthError::InvalidClaim("sub")
    );
    assert_eq!(
        verify_hs(json!({"sub": "a", "userId": 7})).unwrap_err(),
        AuthError::InvalidClaim("userId")
    );
}

#[test]
fn user_id_claim_takes_precedence_over_sub() {
    let principal = verify_hs(json!({"sub": "auth0|123", "userId": "alice"})).unwrap();
    assert_eq!(principal.user_id, "alice");
    let principal = verify_hs(json!({"userId": "carol"})).unwrap();
    assert_eq!(principal.user_id, "carol");
}

#[test]
fn roles_default_to_user() {
    let principal = verify_hs(json!({"sub": "a"})).unwrap();
    assert_eq!(principal.roles, vec![DEFAULT_ROLE.to_owned()]);
    assert_eq!(principal.roles, vec!["USER"]);
}

#[test]
fn explicit_empty_roles_stay_empty() {
    let principal = verify_hs(json!({"sub": "a", "roles": []})).unwrap();
    assert!(principal.roles.is_empty());
}

#[test]
fn malformed_roles_are_invalid() {
    for roles in [json!("ADMIN"), json!(["USER", 1]), json!(null)] {
        assert_eq!(
            verify_hs(json!({"sub": "a", "roles": roles})).unwrap_err(),
            AuthError::InvalidClaim("roles")
        );
    }
}

#[test]
fn admin_role_is_recognised() {
    let principal = verify_hs(json!({"sub": "root", "roles": ["ADMIN"]})).unwrap();
    assert!(principal.is_admin());
}

#[test]
fn minted_token_round_trips_through_the_verifier() {
    let token = mint_token(SECRET, "dave", &["USER", "EDITOR"], 3600, NOW).unwrap();
    let principal = hs_verifier().verify(&token, NOW).unwrap();
    assert_eq!(principal.user_id, "dave");
    assert_eq!(principal.roles, vec!["USER", "EDITOR"]);
    assert_eq!(principal.claims["iat"], json!(NOW));
    assert_eq!(principal.claims["exp"], json!(NOW + 3600));
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, Algorithm::HS256);
}

#[test]
fn minted_token_expires_after_ttl_plus_leeway() {
    let token = mint_token(SECRET, "dave", &[] as &[&str], 10, NOW).unwrap();
    assert!(hs_verifier().verify(&token, NOW + 69).is_ok());
    assert_eq!(
        hs_verifier().verify(&token, NOW + 70).unwrap_err(),
        AuthError::Expired
    );
}

#[test]
fn minting_unescapes_the_secret_like_the_verifier() {
    let secret = "line-one\\nline-two-padding-padding";
    let token = mint_token(secret, "x", &["USER"], 60, NOW).unwrap();
    let verifier = JwtVerifier::new(secret, JwtOptions::default()).unwrap();
    assert_eq!(verifier.verify(&token, NOW).unwrap().user_id, "x");
}

#[test]
fn minting_with_a_pem_key_is_refused() {
    let err = mint_token(TEST_RSA_PUBLIC_PEM, "x", &["USER"], 60, NOW).unwrap_err();
    assert_eq!(err, AuthError::PemSecretCannotMint);
}

#[test]
fn invalid_pem_is_a_config_error() {
    let err = JwtVerifier::new(
        "-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----",
        JwtOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::InvalidPublicKey(_)));
    assert!(
        err.to_string()
            .starts_with("JWT_SECRET looks like a PEM key")
    );
}

#[test]
fn debug_output_does_not_leak_the_secret() {
    let rendered = format!("{:?}", hs_verifier());
    assert!(!rendered.contains(SECRET));
    assert!(rendered.contains("HS256"));
}

#[test]
fn default_leeway_is_sixty_seconds() {
    assert_eq!(JwtOptions::default().leeway_secs, 60);
}
