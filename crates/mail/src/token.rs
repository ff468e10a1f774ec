//! HMAC-signed tokens for unsubscribe and tracking links. The key id travels
//! in the token so keys can rotate without breaking links already sent.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::MailError;

/// What an unsubscribe token proves: this subscriber got this campaign from this list.
///
/// The fields borrow where they can: a sender builds the claims of a job
/// from the job's own strings, and every tracked link's claims from those,
/// without copying; [`TokenSigner::verify`] returns owned ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsubscribeClaims<'a> {
    #[serde(rename = "t")]
    pub tenant: Cow<'a, str>,
    #[serde(rename = "s")]
    pub subscriber_id: Cow<'a, str>,
    #[serde(rename = "l")]
    pub list_id: Cow<'a, str>,
    #[serde(rename = "c")]
    pub campaign_id: Cow<'a, str>,
    /// What the token is for: empty for unsubscribe, `confirm` for double
    /// opt-in links, so one kind can never be used as the other.
    #[serde(rename = "p", default, skip_serializing_if = "is_empty")]
    pub purpose: Cow<'a, str>,
    /// Click tokens: the only URL the redirect may go to.
    #[serde(rename = "u", default, skip_serializing_if = "is_empty")]
    pub url: Cow<'a, str>,
}

fn is_empty(text: &str) -> bool {
    text.is_empty()
}

impl<'a> UnsubscribeClaims<'a> {
    /// Unsubscribe claims (no purpose, no URL) for one recipient of one campaign.
    pub const fn new(tenant: &'a str, subscriber_id: &'a str, list_id: &'a str, campaign_id: &'a str) -> Self {
        Self {
            tenant: Cow::Borrowed(tenant),
            subscriber_id: Cow::Borrowed(subscriber_id),
            list_id: Cow::Borrowed(list_id),
            campaign_id: Cow::Borrowed(campaign_id),
            purpose: Cow::Borrowed(""),
            url: Cow::Borrowed(""),
        }
    }
}

/// The purpose of double opt-in confirmation tokens.
pub const PURPOSE_CONFIRM: &str = "confirm";
/// The purpose of open-pixel tokens.
pub const PURPOSE_OPEN: &str = "open";
/// The purpose of click-redirect tokens (they carry the target URL).
pub const PURPOSE_CLICK: &str = "click";

/// Signs and verifies tokens of the form `KEYID.PAYLOAD.SIGNATURE` (base64url).
#[derive(Clone)]
pub struct TokenSigner {
    key_id: String,
    keys: Vec<(String, Vec<u8>)>,
}

impl TokenSigner {
    /// Signs with `key` under `key_id`; older keys can be added with [`Self::with_old_key`].
    pub fn new(key_id: &str, key: &[u8]) -> Self {
        Self { key_id: key_id.to_owned(), keys: vec![(key_id.to_owned(), key.to_vec())] }
    }

    /// Still accepts tokens signed with a retired key.
    pub fn with_old_key(mut self, key_id: &str, key: &[u8]) -> Self {
        self.keys.push((key_id.to_owned(), key.to_vec()));
        self
    }

    /// VERP return paths signed with the same keys (newest first).
    pub fn verp(&self) -> crate::verp::Verp {
        crate::verp::Verp::new(self.keys.iter().map(|(_, key)| key.clone()).collect())
    }

    fn mac(key: &[u8], signed: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(signed.as_bytes());
        mac
    }

    pub fn sign(&self, claims: &UnsubscribeClaims<'_>) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let signed = format!("{}.{payload}", self.key_id);
        let signature = Self::mac(&self.keys[0].1, &signed).finalize().into_bytes();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// Checks the signature in constant time and returns the claims.
    pub fn verify(&self, token: &str) -> Result<UnsubscribeClaims<'static>, MailError> {
        let mut parts = token.splitn(3, '.');
        let (Some(key_id), Some(payload), Some(signature)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(MailError::Token("malformed".into()));
        };
        let key = self
            .keys
            .iter()
            .find(|(id, _)| id == key_id)
            .ok_or_else(|| MailError::Token(format!("unknown key id {key_id:?}")))?;
        let signature =
            URL_SAFE_NO_PAD.decode(signature).map_err(|_| MailError::Token("bad signature encoding".into()))?;
        Self::mac(&key.1, &format!("{key_id}.{payload}"))
            .verify_slice(&signature)
            .map_err(|_| MailError::Token("bad signature".into()))?;
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| MailError::Token("bad payload encoding".into()))?;
        serde_json::from_slice(&json).map_err(|e| MailError::Token(format!("bad payload: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> UnsubscribeClaims<'static> {
        UnsubscribeClaims::new("t", "s", "l", "c")
    }

    #[test]
    fn round_trips_and_rejects_tampering() {
        let signer = TokenSigner::new("k1", b"secret");
        let token = signer.sign(&claims());
        assert_eq!(signer.verify(&token).unwrap(), claims());
        let mut tampered = token.clone().into_bytes();
        let middle = tampered.len() / 2;
        tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
        assert!(signer.verify(&String::from_utf8(tampered).unwrap()).is_err());
        assert!(TokenSigner::new("k1", b"other").verify(&token).is_err());
        assert!(signer.verify("nonsense").is_err());
    }

    #[test]
    fn old_keys_still_verify_after_rotation() {
        let old = TokenSigner::new("k1", b"old");
        let token = old.sign(&claims());
        let rotated = TokenSigner::new("k2", b"new").with_old_key("k1", b"old");
        assert_eq!(rotated.verify(&token).unwrap(), claims());
        assert!(rotated.sign(&claims()).starts_with("k2."));
    }
}
