//! Standard Webhooks request signing (<https://www.standardwebhooks.com>).
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}` over the
//! exact bytes sent; the signature header is `v1,<base64 HMAC-SHA256>`, one
//! entry per secret, space-separated, so a receiver rotating its secret
//! accepts either. Secrets use the spec's `whsec_<base64>` form; like the
//! reference libraries, an unprefixed value is also read as base64 (never as
//! raw bytes, which would silently produce a different key).
//!
//! This module only computes headers; it does no I/O and reads no clock.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Shortest key accepted, in bytes (the spec recommends 24 to 64).
pub const MIN_KEY_BYTES: usize = 24;
/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 64;
/// Most secrets signed with at once (current + next during rotation).
pub const MAX_SECRETS: usize = 2;

/// A bad signing secret. Never contains the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// The secret is not valid base64.
    #[error("signing secret is not base64 (expected whsec_<base64>, e.g. whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw)")]
    NotBase64,
    /// The decoded key is too short or too long.
    #[error("signing secret decodes to {0} bytes; Standard Webhooks keys are {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes")]
    BadLength(usize),
    /// Zero or more than [`MAX_SECRETS`] secrets.
    #[error("need 1 or {MAX_SECRETS} signing secrets (two only while rotating), got {0}")]
    BadCount(usize),
}

/// One HMAC key. `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(<{} bytes>)", self.0.len())
    }
}

impl SigningKey {
    /// Parses `whsec_<base64>` (or bare base64).
    ///
    /// # Errors
    /// [`SigningError::NotBase64`] or [`SigningError::BadLength`].
    pub fn from_whsec(secret: &str) -> Result<Self, SigningError> {
        let encoded = secret.trim();
        let encoded = encoded.strip_prefix("whsec_").unwrap_or(encoded);
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| SigningError::NotBase64)?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(SigningError::BadLength(key.len()));
        }
        Ok(SigningKey(key))
    }

    /// `base64(HMAC-SHA256(key, id.timestamp.body))`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC accepts keys of any length; new_from_slice cannot fail.
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        STANDARD.encode(mac.finalize().into_bytes())
    }
}

/// Signs requests with one key, or two during rotation.
#[derive(Debug, Clone)]
pub struct Signer {
    keys: Vec<SigningKey>,
}

impl Signer {
    /// # Errors
    /// [`SigningError::BadCount`] unless 1 or 2 keys.
    pub fn new(keys: Vec<SigningKey>) -> Result<Self, SigningError> {
        if keys.is_empty() || keys.len() > MAX_SECRETS {
            return Err(SigningError::BadCount(keys.len()));
        }
        Ok(Signer { keys })
    }

    /// The `webhook-signature` header value: `v1,<sig>` per key, space-separated.
    pub fn signature_header(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let parts: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("v1,{}", k.sign(id, timestamp, body)))
            .collect();
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example from the Standard Webhooks reference test suite
    // (standard-webhooks/libraries, python/tests).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn matches_reference_vector() {
        let signer = Signer::new(vec![SigningKey::from_whsec(SECRET).unwrap()]).unwrap();
        assert_eq!(signer.signature_header(ID, TS, BODY), EXPECTED);
        // Unprefixed base64 means the same key.
        let bare = SigningKey::from_whsec(SECRET.trim_start_matches("whsec_")).unwrap();
        assert_eq!(format!("v1,{}", bare.sign(ID, TS, BODY)), EXPECTED);
    }

    #[test]
    fn rotation_sends_both() {
        let other = format!("whsec_{}", STANDARD.encode([7u8; 32]));
        let signer = Signer::new(vec![
            SigningKey::from_whsec(SECRET).unwrap(),
            SigningKey::from_whsec(&other).unwrap(),
        ])
        .unwrap();
        let header = signer.signature_header(ID, TS, BODY);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], EXPECTED);
        assert!(parts[1].starts_with("v1,") && parts[1] != EXPECTED);
    }

    #[test]
    fn bad_secrets_are_explained() {
        assert_eq!(
            SigningKey::from_whsec("whsec_not base64!").unwrap_err(),
            SigningError::NotBase64
        );
        let short = format!("whsec_{}", STANDARD.encode([1u8; 8]));
        assert_eq!(
            SigningKey::from_whsec(&short).unwrap_err(),
            SigningError::BadLength(8)
        );
        assert_eq!(Signer::new(vec![]).unwrap_err(), SigningError::BadCount(0));
        let k = SigningKey::from_whsec(SECRET).unwrap();
        assert_eq!(
            Signer::new(vec![k.clone(), k.clone(), k]).unwrap_err(),
            SigningError::BadCount(3)
        );
        assert!(!format!("{:?}", SigningKey::from_whsec(SECRET).unwrap()).contains("MfKQ"));
    }
}
