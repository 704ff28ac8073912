//! Bearer tokens: JWT signed with HS256 and a shared secret (a Kubernetes Secret in production,
//! generated under `var/` by `make up`), checked with `jsonwebtoken`. Claims: `sub` (learner or
//! client id), `role` (`student`, `instructor`, `service`), `exp` (required: every token
//! expires), optional `nbf`/`iat` (seconds since the epoch). Only HS256 is accepted; `alg: none`
//! and every other algorithm are refused. A student token may not live longer than
//! `STUDENT_TOKEN_MAX_TTL` (default 30 days): one that expires later is refused, so a leaked
//! student token is good for a bounded time. 30 s of clock skew is tolerated on `exp` and `nbf`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::units::parse_duration;

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;

/// What a token holder may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Writes their own events, reads their own analytics.
    Student,
    /// Reads their cohort.
    Instructor,
    /// A trusted system (LMS server, agent): writes events for any learner.
    Service,
}

/// The claims Learntrail reads from a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// The token's courses (`None`: every course): an instructor's analytics reads are limited
    /// to them, and a student's events may name no other ([`Claims::may_name_course`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub courses: Option<Vec<String>>,
}

impl Claims {
    /// Whether an event of this token's own learner may name `course` (empty: none). A student
    /// token with a `courses` claim names only those: an event naming another course would put
    /// the student into that course's cohort, and its comparisons. Other tokens, and student
    /// tokens without the claim, name any.
    pub fn may_name_course(&self, course: &str) -> bool {
        course.is_empty() || self.role != Role::Student || self.has_course(course)
    }

    /// Whether `course` is among the token's courses (every course without the claim).
    pub fn has_course(&self, course: &str) -> bool {
        self.courses
            .as_ref()
            .is_none_or(|mine| mine.iter().any(|c| c == course))
    }

    /// The refusal for a course that [`Claims::may_name_course`] refuses.
    pub fn course_refusal(&self, course: &str) -> String {
        match self.courses.as_deref().unwrap_or_default() {
            [] => format!("this student token names no courses; an event may not name {course:?}"),
            mine => format!(
                "this student token names its courses ({}); an event may not name {course:?}",
                mine.join(", ")
            ),
        }
    }
}

/// Why a token was refused. The message is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token (send Authorization: Bearer <jwt>)")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("unsupported token algorithm: only HS256 is accepted")]
    Algorithm,
    #[error("token signature does not verify")]
    Signature,
    #[error("token has no {0} claim: every token must carry it (exp: when it expires)")]
    MissingClaim(String),
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error(
        "student token lives too long: it expires {ttl_days} days from now, the most allowed is {max_days} (STUDENT_TOKEN_MAX_TTL)"
    )]
    TooLong { ttl_days: i64, max_days: i64 },
    #[error("token claims are invalid: {0}")]
    Claims(String),
}

/// Token settings shared by every edge that takes bearer tokens.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// HS256 secret that signs bearer tokens (required; at least 32 bytes in production)
    #[arg(long, env = "JWT_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub jwt_secret: SecretString,
    /// Longest lifetime a student token may have (from now to its exp); longer ones are refused
    #[arg(long, env = "STUDENT_TOKEN_MAX_TTL", default_value = "30d", value_parser = parse_duration)]
    pub student_token_max_ttl: Duration,
}

impl AuthArgs {
    /// Settings with `secret` and the default cap (tests, tools).
    pub fn with_secret(secret: &str) -> Self {
        Self {
            jwt_secret: SecretString::from(secret),
            student_token_max_ttl: Duration::from_secs(30 * 86_400),
        }
    }

    /// The verifier these settings describe; warns about a short secret.
    pub fn verifier(&self) -> Verifier {
        let secret = self.jwt_secret.expose_secret();
        if secret.len() < 32 {
            tracing::warn!(
                "JWT_SECRET is shorter than 32 bytes; use a long random secret in production"
            );
        }
        Verifier::new(secret.as_bytes()).with_student_max_ttl(self.student_token_max_ttl)
    }
}

/// A secret from a flag or the environment: refused when empty.
pub fn parse_secret(text: &str) -> Result<SecretString, String> {
    if text.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(SecretString::from(text))
}

/// Checks HS256 tokens against one secret. Tokens whose signature verified are remembered (up to
/// [`VERIFIED_CACHE`] of them, by their full text, signature included), so a client's every
/// request does not redo the HMAC and the JSON decoding; the time checks (`exp`, `nbf`, the
/// student cap) run on every call.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    student_max_ttl: i64,
    verified: Arc<Mutex<HashMap<Box<str>, Claims>>>,
}

/// How many verified tokens a [`Verifier`] remembers; past it the memory starts over.
pub const VERIFIED_CACHE: usize = 10_000;

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(HS256)")
    }
}

impl Verifier {
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        // exp is checked against the caller's `now` below, so tests and tools can pass a clock
        validation.validate_exp = false;
        Self {
            key: DecodingKey::from_secret(secret),
            validation,
            student_max_ttl: 30 * 86_400,
            verified: Arc::default(),
        }
    }

    /// Caps how far in the future a student token may expire.
    pub fn with_student_max_ttl(mut self, max: Duration) -> Self {
        self.student_max_ttl = max.as_secs() as i64;
        self
    }

    /// Verifies an `Authorization` header value (`Bearer <jwt>`).
    pub fn verify_header(&self, header: Option<&str>, now: i64) -> Result<Claims, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let (scheme, token) = header.trim().split_once(' ').ok_or(AuthError::Missing)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Missing);
        }
        self.verify(token.trim(), now)
    }

    /// Verifies a compact JWT at time `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, AuthError> {
        let remembered = self.remembered().get(token).cloned();
        let claims = match remembered {
            Some(claims) => claims,
            None => {
                let claims = self.decode(token)?;
                let mut verified = self.remembered();
                if verified.len() >= VERIFIED_CACHE {
                    verified.clear();
                }
                verified.insert(token.into(), claims.clone());
                claims
            }
        };
        let exp = claims
            .exp
            .ok_or_else(|| AuthError::MissingClaim("exp".into()))?;
        let leeway = LEEWAY_SECS as i64;
        if now > exp + leeway {
            return Err(AuthError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| now + leeway < nbf) {
            return Err(AuthError::NotYetValid);
        }
        if claims.role == Role::Student && exp - now > self.student_max_ttl + leeway {
            return Err(AuthError::TooLong {
                ttl_days: (exp - now) / 86_400,
                max_days: self.student_max_ttl / 86_400,
            });
        }
        Ok(claims)
    }
}

impl Verifier {
    /// Checks the signature and decodes the claims.
    fn decode(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| refused(e.into_kind()))?
            .claims;
        if claims.sub.trim().is_empty() {
            return Err(AuthError::Claims("sub is empty".into()));
        }
        Ok(claims)
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Claims>> {
        // a panic while holding the lock cannot leave the map inconsistent: take it as it is
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn refused(kind: ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::Signature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AuthError::Algorithm,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim),
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::Json(err) => AuthError::Claims(err.to_string()),
        ErrorKind::InvalidToken => {
            AuthError::Malformed("expected three dot-separated parts".into())
        }
        ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
            AuthError::Malformed("a part is not base64url JSON".into())
        }
        other => AuthError::Malformed(format!("{other:?}")),
    }
}

/// Signs claims into a compact HS256 JWT (tokens for `make up`, tools and tests).
pub fn sign(secret: &[u8], claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 signing of plain claims cannot fail")
}

/// Seconds since the epoch, now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

    use super::*;

    const SECRET: &[u8] = b"a-test-secret-of-reasonable-length";

    fn claims(role: Role) -> Claims {
        Claims {
            sub: "learner-7".into(),
            role,
            exp: Some(2_000),
            nbf: None,
            iat: Some(1_000),
            courses: None,
        }
    }

    #[test]
    fn signed_tokens_verify() {
        let token = sign(SECRET, &claims(Role::Student));
        let verifier = Verifier::new(SECRET);
        assert_eq!(verifier.verify(&token, 1_500), Ok(claims(Role::Student)));
        let header = format!("Bearer {token}");
        assert_eq!(
            verifier.verify_header(Some(&header), 1_500).unwrap().role,
            Role::Student
        );
    }

    #[test]
    fn refuses_bad_tokens() {
        let verifier = Verifier::new(SECRET);
        let token = sign(SECRET, &claims(Role::Service));
        assert_eq!(verifier.verify(&token, 9_999), Err(AuthError::Expired));
        // within the 30 s leeway
        assert!(verifier.verify(&token, 2_020).is_ok());
        assert_eq!(
            Verifier::new(b"other").verify(&token, 1_500),
            Err(AuthError::Signature)
        );
        assert_eq!(verifier.verify_header(None, 1_500), Err(AuthError::Missing));
        assert_eq!(
            verifier.verify_header(Some("Basic abc"), 1_500),
            Err(AuthError::Missing)
        );
        assert!(matches!(
            verifier.verify("a.b", 1_500),
            Err(AuthError::Malformed(_))
        ));
        // alg "none" with the signature stripped
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let payload = token.split('.').nth(1).unwrap();
        assert!(
            verifier
                .verify(&format!("{none_header}.{payload}."), 1_500)
                .is_err()
        );
        // HS512 with the same secret
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims(Role::Service),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(verifier.verify(&hs512, 1_500), Err(AuthError::Algorithm));
        // tampered payload
        let forged = URL_SAFE_NO_PAD.encode(br#"{"sub":"admin","role":"service","exp":2000}"#);
        let parts: Vec<_> = token.split('.').collect();
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert_eq!(verifier.verify(&tampered, 1_500), Err(AuthError::Signature));
    }

    #[test]
    fn a_remembered_token_still_expires_and_others_still_verify() {
        let verifier = Verifier::new(SECRET);
        let token = sign(SECRET, &claims(Role::Service));
        assert!(verifier.verify(&token, 1_500).is_ok());
        assert!(verifier.verify(&token, 1_500).is_ok(), "from memory");
        assert_eq!(verifier.verify(&token, 9_999), Err(AuthError::Expired));
        // same claims, another secret: a different token text, checked afresh
        let forged = sign(b"other-secret", &claims(Role::Service));
        assert_eq!(verifier.verify(&forged, 1_500), Err(AuthError::Signature));
    }

    #[test]
    fn every_token_must_expire() {
        let forever = Claims {
            exp: None,
            ..claims(Role::Service)
        };
        let err = Verifier::new(SECRET)
            .verify(&sign(SECRET, &forever), 1_500)
            .unwrap_err();
        assert_eq!(err, AuthError::MissingClaim("exp".into()));
        assert!(err.to_string().contains("no exp claim"), "{err}");
    }

    #[test]
    fn student_tokens_are_capped() {
        let verifier = Verifier::new(SECRET).with_student_max_ttl(Duration::from_secs(86_400));
        let now = 1_000_000;
        let long = Claims {
            exp: Some(now + 2 * 86_400),
            ..claims(Role::Student)
        };
        assert!(matches!(
            verifier.verify(&sign(SECRET, &long), now),
            Err(AuthError::TooLong { .. })
        ));
        let short = Claims {
            exp: Some(now + 3_600),
            ..claims(Role::Student)
        };
        assert!(verifier.verify(&sign(SECRET, &short), now).is_ok());
        // services are not capped: an LMS server's token may be long-lived
        let service = Claims {
            exp: Some(now + 365 * 86_400),
            ..claims(Role::Service)
        };
        assert!(verifier.verify(&sign(SECRET, &service), now).is_ok());
    }

    #[test]
    fn refuses_unknown_roles() {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "x", "role": "root", "exp": 2_000}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(matches!(
            Verifier::new(SECRET).verify(&token, 0),
            Err(AuthError::Claims(_))
        ));
    }
}
