//! Tenant keys in ScyllaDB, stored as in the embedded store. The first keys
//! of a tenant are written by one conditional batch in the tenant's
//! partition, so two processes starting at once cannot give a tenant two
//! index keys (their blind indexes would disagree).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use scylla::statement::batch::{Batch, BatchType};

use super::ScyllaStore;
use crate::crypto::{MasterKeys, TenantKeys, random_key, random_key_id};
use crate::sqlite::keys::{assemble, context};
use crate::{Result, StoreError, now_millis};

pub(super) struct Keys {
    pub(super) master: MasterKeys,
    cache: Mutex<HashMap<String, Arc<TenantKeys>>>,
}

/// The id of a tenant's index key row: fixed, so the create-if-absent is per tenant.
const INDEX_ID: &str = "index";

type KeyRow = (String, String, Vec<u8>, String, bool);

impl Keys {
    pub(super) fn new(master: MasterKeys) -> Self {
        Self { master, cache: Mutex::new(HashMap::new()) }
    }

    pub(super) fn forget(&self, tenant: &str) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).remove(tenant);
    }

    fn cached(&self, tenant: &str, need: Option<&str>) -> Option<Arc<TenantKeys>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(tenant).filter(|keys| need.is_none_or(|id| keys.has(id))).cloned()
    }

    fn remember(&self, tenant: &str, keys: TenantKeys) -> Arc<TenantKeys> {
        let keys = Arc::new(keys);
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(tenant.to_owned(), keys.clone());
        keys
    }
}

impl ScyllaStore {
    /// The tenant's keys, created on first use; `need` names a data key that must be loaded.
    pub(super) async fn keys(&self, tenant: &str, need: Option<&str>) -> Result<Arc<TenantKeys>> {
        let keys = &self.inner.keys;
        if let Some(found) = keys.cached(tenant, need) {
            return Ok(found);
        }
        if let Some(loaded) = self.load_keys(tenant).await? {
            return Ok(keys.remember(tenant, loaded));
        }
        self.exec(&self.st().key_tenant_insert, (tenant,)).await?;
        let (data_id, data, index) = (random_key_id(), random_key(), random_key());
        let row = |id: &str, kind: &str, key: &[u8; 32], active: bool| {
            let (master_id, wrapped) = keys.master.wrap(key, &context(tenant, id, kind));
            (tenant.to_owned(), id.to_owned(), kind.to_owned(), wrapped, master_id, active, now_millis())
        };
        let mut batch = Batch::new(BatchType::Unlogged);
        batch.append_statement(self.st().key_insert_new.clone());
        batch.append_statement(self.st().key_insert.clone());
        batch.set_serial_consistency(Some(self.inner.uri.serial_consistency));
        batch.set_consistency(self.inner.uri.consistency);
        let values = (row(INDEX_ID, "index", &index, false), row(&data_id, "data", &data, true));
        if self.lwt_batch(&batch, values).await?.applied {
            tracing::info!(%tenant, data_key = %data_id, "created the tenant's encryption keys");
            let created = TenantKeys::new(tenant, &data_id, vec![(data_id.clone(), data)], index);
            return Ok(keys.remember(tenant, created));
        }
        // Another process created them first: use its keys.
        let loaded = self
            .load_keys(tenant)
            .await?
            .ok_or_else(|| StoreError::Backend(format!("tenant {tenant}: keys vanished while creating them")))?;
        Ok(keys.remember(tenant, loaded))
    }

    async fn load_keys(&self, tenant: &str) -> Result<Option<TenantKeys>> {
        let rows: Vec<KeyRow> = self.scan(&self.st().keys_of_tenant, (tenant,)).await?;
        assemble(&self.inner.keys.master, tenant, rows)
    }

    pub(super) async fn rotate_key(&self, tenant: &str) -> Result<String> {
        self.keys(tenant, None).await?;
        let rows: Vec<KeyRow> = self.scan(&self.st().keys_of_tenant, (tenant,)).await?;
        let id = random_key_id();
        let (master_id, wrapped) = self.inner.keys.master.wrap(&random_key(), &context(tenant, &id, "data"));
        // One partition: the new key and the retirements apply together.
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values: Vec<Vec<CqlArg>> = Vec::new();
        batch.append_statement(self.st().key_insert.clone());
        values.push(vec![
            CqlArg::Text(tenant.to_owned()),
            CqlArg::Text(id.clone()),
            CqlArg::Text("data".into()),
            CqlArg::Blob(wrapped),
            CqlArg::Text(master_id),
            CqlArg::Bool(true),
            CqlArg::BigInt(now_millis()),
        ]);
        for (old, kind, ..) in rows.into_iter().filter(|(_, kind, .., active)| kind == "data" && *active) {
            debug_assert_eq!(kind, "data");
            batch.append_statement(self.st().key_deactivate.clone());
            values.push(vec![CqlArg::Text(tenant.to_owned()), CqlArg::Text(old)]);
        }
        self.batch(&batch, values).await?;
        self.inner.keys.forget(tenant);
        Ok(id)
    }

    pub(super) async fn rewrap_all(&self) -> Result<u64> {
        let current = self.inner.keys.master.current().id.clone();
        let mut done = 0;
        for tenant in self.key_tenants().await? {
            let rows: Vec<KeyRow> = self.scan(&self.st().keys_of_tenant, (tenant.as_str(),)).await?;
            for (id, kind, wrapped, master_id, _) in rows.into_iter().filter(|row| row.3 != current) {
                let context = context(&tenant, &id, &kind);
                let key = self.inner.keys.master.unwrap(&master_id, &wrapped, &context)?;
                let (new_master, rewrapped) = self.inner.keys.master.wrap(&key, &context);
                self.exec(&self.st().key_rewrap, (rewrapped, new_master, tenant.as_str(), id.as_str())).await?;
                done += 1;
            }
        }
        Ok(done)
    }
}

/// A batch value of one of the column types used in mixed batches.
#[derive(Debug, Clone)]
pub(super) enum CqlArg {
    Text(String),
    Blob(Vec<u8>),
    Bool(bool),
    BigInt(i64),
}

impl scylla::serialize::value::SerializeValue for CqlArg {
    fn serialize<'b>(
        &self,
        typ: &scylla::frame::response::result::ColumnType<'_>,
        writer: scylla::serialize::writers::CellWriter<'b>,
    ) -> std::result::Result<scylla::serialize::writers::WrittenCellProof<'b>, scylla::serialize::SerializationError>
    {
        match self {
            CqlArg::Text(value) => value.serialize(typ, writer),
            CqlArg::Blob(value) => value.serialize(typ, writer),
            CqlArg::Bool(value) => value.serialize(typ, writer),
            CqlArg::BigInt(value) => value.serialize(typ, writer),
        }
    }
}
