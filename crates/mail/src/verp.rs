//! VERP return paths: the envelope sender of every message is
//! `bnc+<tag>@<domain>` (the `+` lets a relay with `recipient_delimiter = +` deliver every tag to one `bnc` mailbox), where the tag carries the campaign and
//! subscriber ids with a truncated HMAC. An asynchronous bounce comes back to
//! that address, so it is matched to its recipient without trusting the DSN
//! body, and a forged bounce cannot unsubscribe anyone. The tag is base32
//! (lowercase letters and digits) because some relays fold the case of local
//! parts, and it fits the 64-character limit of RFC 5321.

use data_encoding::BASE32_NOPAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::MailError;

/// The local part before the tag.
pub const PREFIX: &str = "bnc+";
/// Bytes of HMAC kept: forging one bounce takes about 2^40 tries.
const MAC_BYTES: usize = 5;

/// Makes and checks VERP tags; keys as in the token signer (newest first).
#[derive(Clone)]
pub struct Verp {
    keys: Vec<Vec<u8>>,
}

fn uuid_bytes(id: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    (id.len() == 32).then_some(())?;
    hex::decode_to_slice(id, &mut out).ok()?;
    Some(out)
}

impl Verp {
    pub fn new(keys: Vec<Vec<u8>>) -> Self {
        Self { keys }
    }

    fn mac(key: &[u8], ids: &[u8]) -> [u8; MAC_BYTES] {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(b"verp");
        mac.update(ids);
        let full = mac.finalize().into_bytes();
        full[..MAC_BYTES].try_into().expect("length")
    }

    /// `bnc+<tag>@domain`, or `bnc@domain` when the ids are not
    /// Broadside ids (32 hex digits) and cannot be packed.
    pub fn return_path(&self, campaign_id: &str, subscriber_id: &str, domain: &str) -> String {
        let (Some(campaign), Some(subscriber)) = (uuid_bytes(campaign_id), uuid_bytes(subscriber_id)) else {
            return format!("bnc@{domain}");
        };
        let mut packed = Vec::with_capacity(32 + MAC_BYTES);
        packed.extend_from_slice(&campaign);
        packed.extend_from_slice(&subscriber);
        let mac = Self::mac(&self.keys[0], &packed);
        packed.extend_from_slice(&mac);
        format!("{PREFIX}{}@{domain}", BASE32_NOPAD.encode(&packed).to_ascii_lowercase())
    }

    /// The (campaign, subscriber) a bounce address names, if its tag is ours and intact.
    pub fn parse(&self, address: &str) -> Result<(String, String), MailError> {
        let local = address.trim_matches(['<', '>']).rsplit_once('@').map_or(address, |(local, _)| local);
        let tag = local
            .get(..PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(PREFIX))
            .map(|_| &local[PREFIX.len()..])
            .ok_or_else(|| MailError::Token(format!("{address:?} is not a VERP address")))?;
        let packed = BASE32_NOPAD
            .decode(tag.to_ascii_uppercase().as_bytes())
            .map_err(|_| MailError::Token("VERP tag is not base32".into()))?;
        if packed.len() != 32 + MAC_BYTES {
            return Err(MailError::Token("VERP tag has the wrong length".into()));
        }
        let (ids, mac) = packed.split_at(32);
        let valid = self.keys.iter().any(|key| {
            let expected = Self::mac(key, ids);
            subtle_eq(&expected, mac)
        });
        if !valid {
            return Err(MailError::Token("VERP tag signature does not match".into()));
        }
        Ok((hex::encode(&ids[..16]), hex::encode(&ids[16..])))
    }
}

/// Constant-time comparison of two short byte strings.
fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAMPAIGN: &str = "0193a1b2c3d4e5f60718293a4b5c6d7e";
    const SUBSCRIBER: &str = "0193a1b2c3d4e5f60718293a4b5c6d7f";

    #[test]
    fn round_trips_within_the_local_part_limit() {
        let verp = Verp::new(vec![b"k".to_vec()]);
        let address = verp.return_path(CAMPAIGN, SUBSCRIBER, "bounce.example.com");
        let local = address.split('@').next().unwrap();
        assert!(local.len() <= 64, "{local}");
        assert!(local.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '+'), "{local}");
        assert_eq!(verp.parse(&address).unwrap(), (CAMPAIGN.to_owned(), SUBSCRIBER.to_owned()));
        assert!(verp.parse(&address.to_ascii_uppercase()).is_ok(), "case-folded by a relay");
    }

    #[test]
    fn refuses_forged_or_foreign_tags() {
        let verp = Verp::new(vec![b"k".to_vec()]);
        let address = verp.return_path(CAMPAIGN, SUBSCRIBER, "example.com");
        assert!(Verp::new(vec![b"other".to_vec()]).parse(&address).is_err());
        let mut forged = address.into_bytes();
        forged[10] = if forged[10] == b'a' { b'b' } else { b'a' };
        assert!(verp.parse(&String::from_utf8(forged).unwrap()).is_err());
        assert!(verp.parse("someone@example.com").is_err());
        assert_eq!(verp.return_path("c1", "s1", "example.com"), "bnc@example.com");
        let rotated = Verp::new(vec![b"new".to_vec(), b"k".to_vec()]);
        let old = Verp::new(vec![b"k".to_vec()]).return_path(CAMPAIGN, SUBSCRIBER, "example.com");
        assert!(rotated.parse(&old).is_ok(), "old keys still match after rotation");
    }
}
