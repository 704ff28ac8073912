//! Meter passwords (cloud passwords or Eagle-200 install codes) encrypted at rest with
//! AES-256-GCM: a fresh random 96-bit nonce per encryption, the record's cloud id as associated
//! data (a ciphertext copied into another record does not decrypt), and the id of the key that
//! sealed it stored with it, so keys can rotate: the current key seals, older keys
//! (`EAGLE_OLD_KEYS`) still open, and `eagle-pinger rekey` re-seals every record under the
//! current key.
//!
//! Stored form: `v1.<key id>.<base64(nonce ‖ ciphertext ‖ tag)>`, where the key id is the first
//! 8 hex digits of SHA-256 of the key (so it names a key without revealing it).

use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

const VERSION: &str = "v1";
const NONCE_LEN: usize = 12;

/// Why a key or a ciphertext was refused. Never carries key or password material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("{0} is not 32 bytes in base64 (make one with: openssl rand -base64 32)")]
    BadKey(&'static str),
    #[error("stored password is not in the v1.<key id>.<data> form")]
    Malformed,
    #[error(
        "stored password was sealed with key {0}, which is neither EAGLE_SECRET_KEY nor in EAGLE_OLD_KEYS"
    )]
    UnknownKey(String),
    #[error("stored password does not decrypt (wrong key, or the record was tampered with)")]
    Decrypt,
}

struct Key {
    id: String,
    cipher: Aes256Gcm,
}

impl Key {
    fn parse(text: &str, setting: &'static str) -> Result<Self, CryptoError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| CryptoError::BadKey(setting))?;
        if bytes.len() != 32 {
            return Err(CryptoError::BadKey(setting));
        }
        let id = hex::encode(&Sha256::digest(&bytes)[..4]);
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| CryptoError::BadKey(setting))?;
        Ok(Self { id, cipher })
    }
}

/// The current key and the older ones that may still open stored passwords.
pub struct Keyring {
    current: Key,
    old: Vec<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Keyring(current {}, {} old)",
            self.current.id,
            self.old.len()
        )
    }
}

impl Keyring {
    /// `current` and `old` are base64 keys of 32 bytes; `old` may be empty.
    pub fn new(current: &SecretString, old: &[SecretString]) -> Result<Self, CryptoError> {
        Ok(Self {
            current: Key::parse(current.expose_secret(), "EAGLE_SECRET_KEY")?,
            old: old
                .iter()
                .map(|k| Key::parse(k.expose_secret(), "EAGLE_OLD_KEYS"))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The id of the key new passwords are sealed with.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Seals `password` for the record of `cloud_id`.
    pub fn encrypt(&self, cloud_id: &str, password: &SecretString) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random source is available");
        let sealed = self
            .current
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: password.expose_secret().as_bytes(),
                    aad: cloud_id.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of a short password cannot fail");
        let mut data = nonce.to_vec();
        data.extend_from_slice(&sealed);
        format!("{VERSION}.{}.{}", self.current.id, STANDARD.encode(data))
    }

    /// Opens a stored password of the record of `cloud_id`.
    pub fn decrypt(&self, cloud_id: &str, stored: &str) -> Result<SecretString, CryptoError> {
        let (key_id, data) = split(stored)?;
        let key = std::iter::once(&self.current)
            .chain(&self.old)
            .find(|k| k.id == key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_string()))?;
        if data.len() < NONCE_LEN {
            return Err(CryptoError::Malformed);
        }
        let (nonce, sealed) = data.split_at(NONCE_LEN);
        let plain = key
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: cloud_id.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Decrypt)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| CryptoError::Decrypt)
    }

    /// True when `stored` was sealed with an older key (a `rekey` candidate).
    pub fn is_stale(&self, stored: &str) -> bool {
        split(stored).is_ok_and(|(id, _)| id != self.current.id)
    }
}

/// The key id of a stored password, when it has the v1 form.
pub fn key_id(stored: &str) -> Option<&str> {
    let mut parts = stored.splitn(3, '.');
    (parts.next() == Some(VERSION)).then_some(())?;
    parts.next()
}

fn split(stored: &str) -> Result<(&str, Vec<u8>), CryptoError> {
    let mut parts = stored.splitn(3, '.');
    let (Some(VERSION), Some(id), Some(data)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(CryptoError::Malformed);
    };
    let data = STANDARD.decode(data).map_err(|_| CryptoError::Malformed)?;
    Ok((id, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
    const KEY_B: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn secret(text: &str) -> SecretString {
        SecretString::from(text)
    }

    #[test]
    fn round_trips_without_plaintext_and_with_fresh_nonces() {
        let ring = Keyring::new(&secret(KEY_A), &[]).unwrap();
        let password = secret("hunter2-install-code");
        let one = ring.encrypt("0012ab", &password);
        let two = ring.encrypt("0012ab", &password);
        assert_ne!(one, two, "a fresh nonce each time");
        assert!(!one.contains("hunter2"));
        assert!(one.starts_with(&format!("v1.{}.", ring.current_id())));
        let back = ring.decrypt("0012ab", &one).unwrap();
        assert_eq!(back.expose_secret(), "hunter2-install-code");
        // bound to its record
        assert_eq!(
            ring.decrypt("0012ac", &one).unwrap_err(),
            CryptoError::Decrypt
        );
    }

    #[test]
    fn old_keys_still_open_after_rotation() {
        let old = Keyring::new(&secret(KEY_A), &[]).unwrap();
        let sealed = old.encrypt("00ce69", &secret("my123password"));
        let rotated = Keyring::new(&secret(KEY_B), &[secret(KEY_A)]).unwrap();
        assert!(rotated.is_stale(&sealed));
        assert_eq!(
            rotated.decrypt("00ce69", &sealed).unwrap().expose_secret(),
            "my123password"
        );
        let resealed = rotated.encrypt("00ce69", &secret("my123password"));
        assert!(!rotated.is_stale(&resealed));
        // without the old key it is refused by name, not garbled
        let forgotten = Keyring::new(&secret(KEY_B), &[]).unwrap();
        assert!(matches!(
            forgotten.decrypt("00ce69", &sealed),
            Err(CryptoError::UnknownKey(id)) if id == old.current_id()
        ));
    }

    #[test]
    fn refuses_bad_keys_and_tampering() {
        assert_eq!(
            Keyring::new(&secret("c2hvcnQ="), &[]).unwrap_err(),
            CryptoError::BadKey("EAGLE_SECRET_KEY")
        );
        assert_eq!(
            Keyring::new(&secret(KEY_A), &[secret("not base64!")]).unwrap_err(),
            CryptoError::BadKey("EAGLE_OLD_KEYS")
        );
        let ring = Keyring::new(&secret(KEY_A), &[]).unwrap();
        let sealed = ring.encrypt("0012ab", &secret("pw"));
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(ring.decrypt("0012ab", &tampered).is_err());
        assert_eq!(
            ring.decrypt("0012ab", "plaintext").unwrap_err(),
            CryptoError::Malformed
        );
        assert_eq!(key_id("v1.abcd1234.xyz"), Some("abcd1234"));
    }
}
