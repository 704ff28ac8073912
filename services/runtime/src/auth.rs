//! Bearer tokens: JWT signed with HS256 and a shared secret (a Kubernetes Secret in production,
//! generated under `var/` by `make up`). Claims: `sub` (learner or client id), `role`
//! (`student`, `instructor`, `service`), optional `exp`/`nbf` (seconds since the epoch).
//! Only HS256 is accepted; `alg: none` and every other algorithm are refused.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: i64 = 30;

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
}

/// Why a token was refused. The message is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token (send Authorization: Bearer <jwt>)")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("unsupported token algorithm {0:?}: only HS256 is accepted")]
    Algorithm(String),
    #[error("token signature does not verify")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token claims are invalid: {0}")]
    Claims(String),
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// Checks HS256 tokens against one secret.
#[derive(Clone)]
pub struct Verifier {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(HS256)")
    }
}

impl Verifier {
    pub fn new(secret: &[u8]) -> Self {
        Self {
            mac: Hmac::new_from_slice(secret).expect("HMAC takes a key of any length"),
        }
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
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed("expected three dot-separated parts"));
        };
        let header: Header = decode_json(header)?;
        if header.alg != "HS256" {
            return Err(AuthError::Algorithm(header.alg));
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| AuthError::Malformed("signature is not base64url"))?;
        let mut mac = self.mac.clone();
        mac.update(
            &token.as_bytes()[..token.len() - token.rsplit('.').next().map_or(0, str::len) - 1],
        );
        mac.verify_slice(&signature)
            .map_err(|_| AuthError::Signature)?;
        let claims: Claims = decode_json(payload)?;
        if claims.sub.trim().is_empty() {
            return Err(AuthError::Claims("sub is empty".into()));
        }
        if claims.exp.is_some_and(|exp| now > exp + LEEWAY_SECS) {
            return Err(AuthError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| now + LEEWAY_SECS < nbf) {
            return Err(AuthError::NotYetValid);
        }
        Ok(claims)
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed("part is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|e| AuthError::Claims(e.to_string()))
}

/// Signs claims into a compact HS256 JWT (tokens for `make up`, tools and tests).
pub fn sign(secret: &[u8], claims: &Claims) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let signing_input = format!("{header}.{payload}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// Seconds since the epoch, now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a-test-secret-of-reasonable-length";

    fn claims(role: Role) -> Claims {
        Claims {
            sub: "learner-7".into(),
            role,
            exp: Some(2_000),
            nbf: None,
            iat: Some(1_000),
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
        assert_eq!(
            verifier.verify(&format!("{none_header}.{payload}."), 1_500),
            Err(AuthError::Algorithm("none".into()))
        );
        // tampered payload
        let forged = URL_SAFE_NO_PAD.encode(br#"{"sub":"admin","role":"service"}"#);
        let parts: Vec<_> = token.split('.').collect();
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert_eq!(verifier.verify(&tampered, 1_500), Err(AuthError::Signature));
    }

    #[test]
    fn refuses_unknown_roles() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#);
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"x","role":"root"}"#);
        let input = format!("{header}.{payload}");
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
        mac.update(input.as_bytes());
        let token = format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        assert!(matches!(
            Verifier::new(SECRET).verify(&token, 0),
            Err(AuthError::Claims(_))
        ));
    }
}
