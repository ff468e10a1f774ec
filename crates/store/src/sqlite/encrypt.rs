//! What the embedded store seals, and the migration that sealed the rows
//! written before encryption at rest.
//!
//! Sealed: a subscriber's address, name and attributes (one `pii` blob); the
//! IP and user agent of consent records; suppression targets; import job
//! records (their errors quote addresses). Kept as keyed blind indexes: the
//! normalized address (`email_key`, unique per tenant), its `@domain`
//! (`domain_key`), and suppression targets (`email_hash`).

use rusqlite::{Transaction, params};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::keys::Crypto;
use crate::crypto::TenantKeys;
use crate::{Result, StoreError, normalize_email};

/// A subscriber's personal data, sealed as one value.
#[derive(Serialize, Deserialize)]
pub(crate) struct Pii {
    #[serde(rename = "e")]
    pub(crate) email: String,
    #[serde(rename = "n")]
    pub(crate) name: String,
    #[serde(rename = "a")]
    pub(crate) attributes: Map<String, Value>,
}

pub(crate) fn seal_pii(keys: &TenantKeys, email: &str, name: &str, attributes: &Map<String, Value>) -> Result<Vec<u8>> {
    #[derive(Serialize)]
    struct PiiRef<'a> {
        e: &'a str,
        n: &'a str,
        a: &'a Map<String, Value>,
    }
    let json = serde_json::to_vec(&PiiRef { e: email, n: name, a: attributes })
        .map_err(|e| StoreError::failed("encode personal data", e))?;
    Ok(keys.seal(&json))
}

pub(crate) fn open_pii(keys: &TenantKeys, sealed: &[u8]) -> Result<Pii> {
    serde_json::from_slice(&keys.open(sealed)?).map_err(|e| StoreError::failed("decode personal data", e))
}

/// Blind index of an address (or `@domain`), normalized first.
pub(crate) fn email_key(keys: &TenantKeys, email: &str) -> String {
    keys.blind_index(&normalize_email(email))
}

/// Blind index of the `@domain` of an address.
pub(crate) fn domain_key(keys: &TenantKeys, email: &str) -> String {
    let domain = email.rsplit_once('@').map_or("", |(_, domain)| domain);
    keys.blind_index(&normalize_email(&format!("@{domain}")))
}

/// Seals `text` (empty stays empty, meaning "nothing stored").
pub(crate) fn seal_text(keys: &TenantKeys, text: &str) -> Vec<u8> {
    if text.is_empty() { Vec::new() } else { keys.seal(text.as_bytes()) }
}

pub(crate) fn open_text(keys: &TenantKeys, sealed: &[u8]) -> Result<String> {
    if sealed.is_empty() {
        return Ok(String::new());
    }
    String::from_utf8(keys.open(sealed)?).map_err(|_| StoreError::Backend("a sealed text is not UTF-8".into()))
}

/// Seals the rows of a store created before encryption at rest, in the
/// migration's transaction: either every row is converted or none is.
pub(super) fn migrate(tx: &Transaction<'_>, crypto: &Crypto) -> Result<()> {
    tx.execute_batch(
        "CREATE TABLE tenant_keys (
            tenant TEXT NOT NULL, id TEXT NOT NULL, kind TEXT NOT NULL, wrapped BLOB NOT NULL,
            master_id TEXT NOT NULL, active INTEGER NOT NULL, create_time INTEGER NOT NULL,
            PRIMARY KEY (tenant, id)) WITHOUT ROWID;
         ALTER TABLE subscribers ADD COLUMN pii BLOB NOT NULL DEFAULT x'';
         ALTER TABLE consent_log ADD COLUMN pii BLOB NOT NULL DEFAULT x'';",
    )?;
    let subscribers: Vec<(String, String, String, String, String)> = tx
        .prepare("SELECT tenant, id, email, display_name, attributes FROM subscribers")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (tenant, id, email, name, attributes) in &subscribers {
        let keys = crypto.keys(tx, tenant, None)?;
        let attributes: Map<String, Value> = serde_json::from_str(attributes).unwrap_or_default();
        tx.execute(
            "UPDATE subscribers SET pii = ?3, email_norm = ?4, domain_hash = ?5 WHERE tenant = ?1 AND id = ?2",
            params![
                tenant,
                id,
                seal_pii(&keys, email, name, &attributes)?,
                email_key(&keys, email),
                domain_key(&keys, email)
            ],
        )?;
    }
    let consent: Vec<(String, String, i64, i64, String, String)> = tx
        .prepare("SELECT tenant, subscriber_id, time, seq, ip, user_agent FROM consent_log")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (tenant, subscriber, time, seq, ip, user_agent) in &consent {
        let keys = crypto.keys(tx, tenant, None)?;
        let sealed = keys.seal(&serde_json::to_vec(&(ip, user_agent)).expect("strings encode"));
        tx.execute(
            "UPDATE consent_log SET pii = ?5 WHERE tenant = ?1 AND subscriber_id = ?2 AND time = ?3 AND seq = ?4",
            params![tenant, subscriber, time, seq, sealed],
        )?;
    }
    let suppressions: Vec<(String, String, String, String, String, i64)> = tx
        .prepare("SELECT tenant, email_hash, list_id, target, reason, create_time FROM suppressions")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?)))?
        .collect::<rusqlite::Result<_>>()?;
    tx.execute("DELETE FROM suppressions", [])?;
    let mut unconvertible = 0;
    for (tenant, hash, list_id, target, reason, create_time) in &suppressions {
        let keys = crypto.keys(tx, tenant, None)?;
        // An erased address left only its plain SHA-256, which no blind index can be made from.
        let key = if target.is_empty() {
            unconvertible += 1;
            hash.clone()
        } else {
            email_key(&keys, target)
        };
        tx.execute(
            "INSERT OR REPLACE INTO suppressions (tenant, email_hash, list_id, target, reason, create_time) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![tenant, key, list_id, seal_text(&keys, target), reason, create_time],
        )?;
    }
    if unconvertible > 0 {
        tracing::warn!(
            count = unconvertible,
            "suppressions of erased addresses kept their old SHA-256 and no longer match; re-add them if the addresses are known"
        );
    }
    let jobs: Vec<(String, String, String)> = tx
        .prepare("SELECT tenant, request_id, job FROM import_jobs")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (tenant, request_id, job) in &jobs {
        let keys = crypto.keys(tx, tenant, None)?;
        tx.execute(
            "UPDATE import_jobs SET job = ?3 WHERE tenant = ?1 AND request_id = ?2",
            params![tenant, request_id, keys.seal(job.as_bytes())],
        )?;
    }
    tx.execute_batch(
        "DROP INDEX subscribers_by_email;
         ALTER TABLE subscribers DROP COLUMN email;
         ALTER TABLE subscribers DROP COLUMN display_name;
         ALTER TABLE subscribers DROP COLUMN attributes;
         ALTER TABLE subscribers DROP COLUMN email_hash;
         ALTER TABLE subscribers RENAME COLUMN email_norm TO email_key;
         ALTER TABLE subscribers RENAME COLUMN domain_hash TO domain_key;
         CREATE UNIQUE INDEX subscribers_by_email ON subscribers (tenant, email_key);
         ALTER TABLE consent_log DROP COLUMN ip;
         ALTER TABLE consent_log DROP COLUMN user_agent;",
    )?;
    Ok(())
}
