//! Envelope encryption of personal data at rest.
//!
//! - A **master key** (32 bytes, from a file) wraps every other key; it never
//!   touches a row. Several can be configured: the first wraps, the others
//!   only unwrap, so the master rotates by re-wrapping (few rows) instead of
//!   re-encrypting (every row).
//! - Each tenant has **data keys** (AES-256-GCM). The active one seals new
//!   rows; older ones still open the rows they sealed until `reencrypt`
//!   moves those rows to the active key.
//! - Each tenant has one **index key** (HMAC-SHA256) for blind indexes: the
//!   keyed hash of a normalized address, so uniqueness and suppression
//!   lookups work without the address. It never rotates (that would break
//!   every index); it is re-wrapped with the master like the data keys.
//!
//! Sealed values read `v1 | key id (16 bytes) | nonce (12) | ciphertext+tag`,
//! with the tenant as associated data so a row cannot be moved between tenants.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::StoreError;

const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 16;
const NONCE_LEN: usize = 12;

/// A master key and its id (the id is stored next to what it wraps).
#[derive(Clone)]
pub struct MasterKey {
    pub id: String,
    key: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({}, [redacted])", self.id)
    }
}

impl MasterKey {
    pub fn new(id: &str, key: [u8; 32]) -> Self {
        Self { id: id.to_owned(), key }
    }

    /// Reads a key file: 64 hex characters (whitespace ignored). The id is
    /// the file name without extension unless given.
    pub fn from_file(path: &Path, id: Option<&str>) -> Result<Self, StoreError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| StoreError::Backend(format!("master key {}: {e}", path.display())))?;
        let bytes = hex::decode(text.trim()).map_err(|_| {
            StoreError::Backend(format!("master key {}: expected 64 hex characters (32 bytes)", path.display()))
        })?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            StoreError::Backend(format!("master key {}: expected 32 bytes, found another length", path.display()))
        })?;
        let id = id
            .map(str::to_owned)
            .unwrap_or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
        Ok(Self { id, key })
    }

    /// Writes a new random key file readable by the owner only, unless one
    /// exists. Processes starting together all end up with the same key: the
    /// file appears complete (written aside, then linked) or not at all.
    pub fn generate_file(path: &Path) -> Result<(), StoreError> {
        let error = |e: std::io::Error| StoreError::failed(format!("master key {}", path.display()), e);
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let aside = path.with_extension(format!("{}.tmp", random_key_id()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&aside).map_err(error)?;
        std::io::Write::write_all(&mut file, format!("{}\n", hex::encode(key)).as_bytes()).map_err(error)?;
        file.sync_all().map_err(error)?;
        let linked = std::fs::hard_link(&aside, path);
        let _ = std::fs::remove_file(&aside);
        match linked {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(error(e)),
        }
    }
}

/// The master keys in use: the first wraps new keys, all of them unwrap.
#[derive(Clone, Debug)]
pub struct MasterKeys {
    keys: Vec<MasterKey>,
}

impl MasterKeys {
    pub fn new(current: MasterKey, older: Vec<MasterKey>) -> Self {
        let mut keys = vec![current];
        keys.extend(older);
        Self { keys }
    }

    pub fn current(&self) -> &MasterKey {
        &self.keys[0]
    }

    fn find(&self, id: &str) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Wraps a key under the current master key; `context` binds it to its use.
    pub fn wrap(&self, key: &[u8; 32], context: &str) -> (String, Vec<u8>) {
        let master = self.current();
        (master.id.clone(), seal_raw(&master.key, key, context.as_bytes()))
    }

    /// Unwraps a key wrapped by the master key `master_id`.
    pub fn unwrap(&self, master_id: &str, wrapped: &[u8], context: &str) -> Result<[u8; 32], StoreError> {
        let master = self.find(master_id).ok_or_else(|| {
            StoreError::Backend(format!(
                "a key is wrapped by master key {master_id:?}, which is not configured (security.master_key_files)"
            ))
        })?;
        let plain = open_raw(&master.key, wrapped, context.as_bytes()).ok_or_else(|| {
            StoreError::Backend(format!("master key {master_id:?} cannot unwrap a key: wrong key file?"))
        })?;
        plain.try_into().map_err(|_| StoreError::Backend("an unwrapped key is not 32 bytes".into()))
    }
}

/// A fresh random 32-byte key.
pub fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    key
}

/// A fresh random key id (hex, [`KEY_ID_LEN`] characters).
pub fn random_key_id() -> String {
    let mut id = [0u8; KEY_ID_LEN / 2];
    rand::rng().fill_bytes(&mut id);
    hex::encode(id)
}

fn seal_raw(key: &[u8; 32], plain: &[u8], aad: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.into());
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let sealed = cipher.encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad }).expect("AES-GCM encrypts");
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

fn open_raw(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    Aes256Gcm::new(key.into()).decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad }).ok()
}

/// One tenant's unwrapped keys.
#[derive(Clone)]
pub struct TenantKeys {
    pub tenant: String,
    pub active_id: String,
    data: Vec<(String, Aes256Gcm)>,
    index: Hmac<Sha256>,
}

impl TenantKeys {
    pub fn new(tenant: &str, active_id: &str, data: Vec<(String, [u8; 32])>, index_key: [u8; 32]) -> Self {
        Self {
            tenant: tenant.to_owned(),
            active_id: active_id.to_owned(),
            data: data.into_iter().map(|(id, key)| (id, Aes256Gcm::new((&key).into()))).collect(),
            index: <Hmac<Sha256> as Mac>::new_from_slice(&index_key).expect("HMAC takes any key length"),
        }
    }

    /// Ids of the loaded data keys.
    pub fn data_ids(&self) -> impl Iterator<Item = &str> {
        self.data.iter().map(|(id, _)| id.as_str())
    }

    /// Seals `plain` with the active data key.
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let (id, cipher) =
            self.data.iter().find(|(id, _)| *id == self.active_id).expect("the active data key is loaded");
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad: self.tenant.as_bytes() })
            .expect("AES-GCM encrypts");
        let mut out = Vec::with_capacity(1 + KEY_ID_LEN + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The id of the data key that sealed `sealed`.
    pub fn key_id_of(sealed: &[u8]) -> Option<&str> {
        sealed.get(1..1 + KEY_ID_LEN).and_then(|id| std::str::from_utf8(id).ok())
    }

    /// Opens a value sealed by any of this tenant's data keys.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        if sealed.first() != Some(&VERSION) || sealed.len() < 1 + KEY_ID_LEN + NONCE_LEN {
            return Err(StoreError::Backend("a sealed value is malformed".into()));
        }
        let id = Self::key_id_of(sealed).unwrap_or_default();
        let (_, cipher) = self
            .data
            .iter()
            .find(|(key_id, _)| key_id == id)
            .ok_or_else(|| StoreError::Backend(format!("tenant {}: data key {id} is missing", self.tenant)))?;
        let (nonce, body) = sealed[1 + KEY_ID_LEN..].split_at(NONCE_LEN);
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad: self.tenant.as_bytes() })
            .map_err(|_| StoreError::Backend(format!("tenant {}: a sealed value does not authenticate", self.tenant)))
    }

    /// Keyed blind index of a normalized lookup key: HMAC-SHA256 truncated
    /// to 128 bits, hex. Short keys keep the unique index small (it takes
    /// random inserts); 128 bits make a collision among 10^12 addresses a
    /// one-in-10^14 event.
    pub fn blind_index(&self, normalized: &str) -> String {
        let mut mac = self.index.clone();
        mac.update(normalized.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(active: &str) -> TenantKeys {
        TenantKeys::new("t", active, vec![("a".repeat(16), [1; 32]), ("b".repeat(16), [2; 32])], [3; 32])
    }

    #[test]
    fn seals_open_under_any_loaded_key_and_only_for_their_tenant() {
        let old = keys(&"a".repeat(16));
        let new = keys(&"b".repeat(16));
        let sealed = old.seal(b"ada@example.com");
        assert!(!sealed.windows(3).any(|w| w == b"ada"), "no plaintext in the sealed value");
        assert_eq!(new.open(&sealed).unwrap(), b"ada@example.com");
        assert_eq!(TenantKeys::key_id_of(&sealed), Some("a".repeat(16).as_str()));
        let other = TenantKeys::new("u", &"a".repeat(16), vec![("a".repeat(16), [1; 32])], [3; 32]);
        assert!(other.open(&sealed).is_err(), "another tenant's context does not authenticate");
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(old.open(&tampered).is_err());
    }

    #[test]
    fn blind_indexes_are_keyed_and_stable() {
        let a = keys(&"a".repeat(16));
        assert_eq!(a.blind_index("ada@example.com"), keys(&"b".repeat(16)).blind_index("ada@example.com"));
        let other = TenantKeys::new("t", &"a".repeat(16), vec![("a".repeat(16), [1; 32])], [9; 32]);
        assert_ne!(a.blind_index("ada@example.com"), other.blind_index("ada@example.com"));
    }

    #[test]
    fn master_rotation_unwraps_old_and_wraps_with_new() {
        let old = MasterKeys::new(MasterKey::new("m1", [5; 32]), vec![]);
        let (id, wrapped) = old.wrap(&[7; 32], "tenant t data");
        let rotated = MasterKeys::new(MasterKey::new("m2", [6; 32]), vec![MasterKey::new("m1", [5; 32])]);
        assert_eq!(rotated.unwrap(&id, &wrapped, "tenant t data").unwrap(), [7; 32]);
        assert!(rotated.unwrap(&id, &wrapped, "tenant u data").is_err(), "the context is bound");
        assert_eq!(rotated.wrap(&[7; 32], "x").0, "m2");
        assert!(
            MasterKeys::new(MasterKey::new("m2", [6; 32]), vec![]).unwrap("m1", &wrapped, "tenant t data").is_err()
        );
    }
}
