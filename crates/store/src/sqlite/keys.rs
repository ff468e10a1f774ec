//! Tenant keys in the embedded store: created on first use, wrapped by the
//! master key, cached unwrapped in memory, rotated and re-wrapped on request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rusqlite::{Transaction, params};

use crate::crypto::{MasterKeys, TenantKeys, random_key, random_key_id};
use crate::{Result, StoreError, now_millis};

/// Unwraps a tenant's stored keys: (id, kind, wrapped, master id, active)
/// rows, one `index` key and data keys of which one is active. Both backends
/// store keys this way.
pub(crate) fn assemble(
    master: &MasterKeys,
    tenant: &str,
    rows: Vec<(String, String, Vec<u8>, String, bool)>,
) -> Result<Option<TenantKeys>> {
    if rows.is_empty() {
        return Ok(None);
    }
    let (mut data, mut index, mut active) = (Vec::new(), None, None);
    for (id, kind, wrapped, master_id, is_active) in rows {
        let key = master.unwrap(&master_id, &wrapped, &context(tenant, &id, &kind))?;
        match kind.as_str() {
            "index" => index = Some(key),
            _ => {
                if is_active {
                    active = Some(id.clone());
                }
                data.push((id, key));
            }
        }
    }
    let index = index.ok_or_else(|| StoreError::Backend(format!("tenant {tenant}: the index key is missing")))?;
    let active = active.ok_or_else(|| StoreError::Backend(format!("tenant {tenant}: no active data key")))?;
    Ok(Some(TenantKeys::new(tenant, &active, data, index)))
}

/// The master keys and the unwrapped tenant keys seen so far.
pub(crate) struct Crypto {
    pub(crate) master: MasterKeys,
    cache: Mutex<HashMap<String, Arc<TenantKeys>>>,
}

/// The pseudo-tenant whose keys seal the embedded bus log. Tenant ids are
/// `[a-z0-9-]`, so it cannot collide with a real one.
pub(crate) const BUS_KEYS: &str = "_system:bus";

pub(crate) fn context(tenant: &str, id: &str, kind: &str) -> String {
    format!("broadside tenant key\0{tenant}\0{id}\0{kind}")
}

impl Crypto {
    pub(crate) fn new(master: MasterKeys) -> Self {
        Self { master, cache: Mutex::new(HashMap::new()) }
    }

    /// The tenant's keys, created on first use. `need` names a data key that
    /// must be loaded (a row sealed by a key another process just created).
    pub(crate) fn keys(&self, tx: &Transaction<'_>, tenant: &str, need: Option<&str>) -> Result<Arc<TenantKeys>> {
        if let Some(keys) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(tenant)
            && need.is_none_or(|id| keys.has(id))
        {
            return Ok(keys.clone());
        }
        let keys = Arc::new(match self.load(tx, tenant)? {
            Some(keys) => keys,
            None => self.create(tx, tenant)?,
        });
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(tenant.to_owned(), keys.clone());
        Ok(keys)
    }

    /// The tenant's keys if this process has loaded them already.
    pub(crate) fn cached(&self, tenant: &str) -> Option<Arc<TenantKeys>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(tenant).cloned()
    }

    /// Forgets cached keys (after a rotation).
    pub(crate) fn forget(&self, tenant: &str) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).remove(tenant);
    }

    fn load(&self, tx: &Transaction<'_>, tenant: &str) -> Result<Option<TenantKeys>> {
        let rows: Vec<(String, String, Vec<u8>, String, bool)> = tx
            .prepare_cached("SELECT id, kind, wrapped, master_id, active FROM tenant_keys WHERE tenant = ?1")?
            .query_map(params![tenant], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)))?
            .collect::<rusqlite::Result<_>>()?;
        assemble(&self.master, tenant, rows)
    }

    fn insert_key(
        &self,
        tx: &Transaction<'_>,
        tenant: &str,
        id: &str,
        kind: &str,
        key: &[u8; 32],
        active: bool,
    ) -> Result<()> {
        let (master_id, wrapped) = self.master.wrap(key, &context(tenant, id, kind));
        tx.prepare_cached(
            "INSERT INTO tenant_keys (tenant, id, kind, wrapped, master_id, active, create_time) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![tenant, id, kind, wrapped, master_id, active, now_millis()])?;
        Ok(())
    }

    fn create(&self, tx: &Transaction<'_>, tenant: &str) -> Result<TenantKeys> {
        let (data_id, index_id) = (random_key_id(), random_key_id());
        let (data, index) = (random_key(), random_key());
        self.insert_key(tx, tenant, &data_id, "data", &data, true)?;
        self.insert_key(tx, tenant, &index_id, "index", &index, false)?;
        tracing::info!(%tenant, data_key = %data_id, "created the tenant's encryption keys");
        Ok(TenantKeys::new(tenant, &data_id, vec![(data_id.clone(), data)], index))
    }

    /// Makes a new data key the tenant's active one; older keys still open
    /// what they sealed until rows are re-encrypted.
    pub(crate) fn rotate_data_key(&self, tx: &Transaction<'_>, tenant: &str) -> Result<String> {
        self.keys(tx, tenant, None)?;
        let id = random_key_id();
        tx.execute("UPDATE tenant_keys SET active = 0 WHERE tenant = ?1 AND kind = 'data'", params![tenant])?;
        self.insert_key(tx, tenant, &id, "data", &random_key(), true)?;
        self.forget(tenant);
        Ok(id)
    }

    /// Re-wraps every key not wrapped by the current master key.
    pub(crate) fn rewrap_all(&self, tx: &Transaction<'_>) -> Result<u64> {
        let current = self.master.current().id.clone();
        let rows: Vec<(String, String, String, Vec<u8>, String)> = tx
            .prepare("SELECT tenant, id, kind, wrapped, master_id FROM tenant_keys WHERE master_id != ?1")?
            .query_map(params![current], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (tenant, id, kind, wrapped, master_id) in &rows {
            let context = context(tenant, id, kind);
            let key = self.master.unwrap(master_id, wrapped, &context)?;
            let (new_master, rewrapped) = self.master.wrap(&key, &context);
            tx.execute(
                "UPDATE tenant_keys SET wrapped = ?3, master_id = ?4 WHERE tenant = ?1 AND id = ?2",
                params![tenant, id, rewrapped, new_master],
            )?;
        }
        Ok(rows.len() as u64)
    }
}

impl TenantKeys {
    /// Whether data key `id` is loaded.
    pub(crate) fn has(&self, id: &str) -> bool {
        self.data_ids().any(|loaded| loaded == id)
    }
}

/// Tables with sealed columns: (table, sealed column, key columns).
const SEALED: &[(&str, &str, &[&str])] = &[
    ("subscribers", "pii", &["id"]),
    ("consent_log", "pii", &["subscriber_id", "time", "seq"]),
    ("suppressions", "target", &["email_hash", "list_id"]),
    ("import_jobs", "job", &["request_id"]),
    ("feedback_records", "diagnostic", &["id"]),
    ("feedback_records", "raw", &["id"]),
    ("behavior_events", "properties", &["event_id"]),
];

#[async_trait::async_trait]
impl crate::KeyManagement for super::SqliteStore {
    async fn rewrap_keys(&self) -> Result<u64> {
        let crypto = self.crypto.clone();
        self.tx(move |tx| crypto.rewrap_all(tx)).await
    }

    async fn rotate_data_key(&self, tenant: &str) -> Result<String> {
        let (tenant, crypto) = (tenant.to_owned(), self.crypto.clone());
        self.tx(move |tx| crypto.rotate_data_key(tx, &tenant)).await
    }

    async fn reencrypt(&self, tenant: &str, limit: usize) -> Result<u64> {
        let (tenant, crypto) = (tenant.to_owned(), self.crypto.clone());
        self.tx(move |tx| {
            let keys = crypto.keys(tx, &tenant, None)?;
            let mut done = 0u64;
            for (table, column, key_columns) in SEALED {
                if done as usize >= limit {
                    break;
                }
                let keys_sql = key_columns.join(", ");
                let rows: Vec<(Vec<rusqlite::types::Value>, Vec<u8>)> = tx
                    .prepare(&format!(
                        "SELECT {keys_sql}, {column} FROM {table} WHERE tenant = ?1 AND length({column}) > 0 \
                         AND CAST(substr({column}, 2, 16) AS TEXT) != ?2 LIMIT ?3"
                    ))?
                    .query_map(params![tenant, keys.active_id, (limit - done as usize) as i64], |row| {
                        let key = (0..key_columns.len()).map(|i| row.get(i)).collect::<rusqlite::Result<Vec<_>>>()?;
                        Ok((key, row.get(key_columns.len())?))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                let wheres: Vec<String> =
                    key_columns.iter().enumerate().map(|(i, c)| format!("{c} = ?{}", i + 3)).collect();
                let update = format!("UPDATE {table} SET {column} = ?2 WHERE tenant = ?1 AND {}", wheres.join(" AND "));
                for (key, sealed) in rows {
                    let keys = crypto.keys(tx, &tenant, TenantKeys::key_id_of(&sealed))?;
                    let resealed = keys.seal(&keys.open(&sealed)?);
                    let mut values: Vec<rusqlite::types::Value> = vec![tenant.clone().into(), resealed.into()];
                    values.extend(key);
                    tx.execute(&update, rusqlite::params_from_iter(values))?;
                    done += 1;
                }
            }
            Ok(done)
        })
        .await
    }
}
