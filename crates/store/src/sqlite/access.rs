//! Tenants, API keys and suppressions.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::page_of;
use crate::*;

fn suppression_from_row(row: &Row<'_>) -> rusqlite::Result<Suppression> {
    let reason: String = row.get("reason")?;
    Ok(Suppression {
        tenant: row.get("tenant")?,
        email_hash: row.get("email_hash")?,
        list_id: row.get("list_id")?,
        target: row.get("target")?,
        reason: SuppressionReason::parse(&reason).unwrap_or(SuppressionReason::Manual),
        create_time: row.get("create_time")?,
    })
}

/// Every suppression of the tenant whose hash is in `hashes`.
pub(super) fn suppressions_tx(tx: &Transaction<'_>, tenant: &str, hashes: &[String]) -> Result<Vec<Suppression>> {
    let mut statement =
        tx.prepare_cached("SELECT * FROM suppressions WHERE tenant = ?1 AND email_hash = ?2 ORDER BY list_id")?;
    let mut found = Vec::new();
    for hash in hashes.iter().filter(|h| !h.is_empty()) {
        found.extend(
            statement.query_map(params![tenant, hash], suppression_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?,
        );
    }
    Ok(found)
}

fn tenant_from_row(row: &Row<'_>) -> rusqlite::Result<Tenant> {
    Ok(Tenant { id: row.get("id")?, display_name: row.get("display_name")?, create_time: row.get("create_time")? })
}

fn key_from_row(row: &Row<'_>) -> rusqlite::Result<ApiKey> {
    let scopes: String = row.get("scopes")?;
    Ok(ApiKey {
        id: row.get("id")?,
        tenant: row.get("tenant")?,
        secret_hash: row.get("secret_hash")?,
        scopes: scopes.split(',').filter_map(Scope::parse).collect(),
        description: row.get("description")?,
        create_time: row.get("create_time")?,
        revoke_time: row.get("revoke_time")?,
    })
}

#[async_trait]
impl SuppressionStore for SqliteStore {
    async fn add_suppression(&self, suppression: Suppression) -> Result<Suppression> {
        self.tx(move |tx| {
            tx.execute(
                "INSERT INTO suppressions (tenant, email_hash, list_id, target, reason, create_time) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (tenant, email_hash, list_id) DO UPDATE SET reason = ?5, \
                 target = CASE WHEN target = '' AND reason = 'erased' THEN '' ELSE ?4 END",
                params![
                    suppression.tenant,
                    suppression.email_hash,
                    suppression.list_id,
                    suppression.target,
                    suppression.reason.as_str(),
                    suppression.create_time
                ],
            )?;
            Ok(tx.query_row(
                "SELECT * FROM suppressions WHERE tenant = ?1 AND email_hash = ?2 AND list_id = ?3",
                params![suppression.tenant, suppression.email_hash, suppression.list_id],
                suppression_from_row,
            )?)
        })
        .await
    }

    async fn remove_suppression(&self, tenant: &str, email_hash: &str, list_id: &str) -> Result<bool> {
        let (tenant, hash, list_id) = (tenant.to_owned(), email_hash.to_owned(), list_id.to_owned());
        self.tx(move |tx| {
            Ok(tx.execute(
                "DELETE FROM suppressions WHERE tenant = ?1 AND email_hash = ?2 AND list_id = ?3",
                params![tenant, hash, list_id],
            )? > 0)
        })
        .await
    }

    async fn list_suppressions(&self, tenant: &str, page: PageRequest) -> Result<Page<Suppression>> {
        let tenant = tenant.to_owned();
        self.tx(move |tx| {
            // The token is `hash/list`: the last key of the previous page.
            let token = page.token.clone().unwrap_or_default();
            let (after_hash, after_list) = token.split_once('/').unwrap_or((&token, ""));
            let mut statement = tx.prepare_cached(
                "SELECT * FROM suppressions WHERE tenant = ?1 AND (email_hash, list_id) > (?2, ?3) \
                 ORDER BY email_hash, list_id LIMIT ?4",
            )?;
            let rows = statement
                .query_map(params![tenant, after_hash, after_list, (page.size + 1) as i64], suppression_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut page = page_of(rows, page.size, |s| &s.email_hash);
            if page.next_token.is_some() {
                page.next_token = page.items.last().map(|s| format!("{}/{}", s.email_hash, s.list_id));
            }
            Ok(page)
        })
        .await
    }

    async fn suppressions_for(&self, tenant: &str, hashes: Vec<String>) -> Result<Vec<Suppression>> {
        let tenant = tenant.to_owned();
        self.tx(move |tx| suppressions_tx(tx, &tenant, &hashes)).await
    }
}

#[async_trait]
impl AccessStore for SqliteStore {
    async fn create_tenant(&self, tenant: Tenant) -> Result<Tenant> {
        self.tx(move |tx| {
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO tenants (id, display_name, create_time) VALUES (?1, ?2, ?3)",
                params![tenant.id, tenant.display_name, tenant.create_time],
            )?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!("tenant {:?} already exists", tenant.id)));
            }
            Ok(tenant)
        })
        .await
    }

    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>> {
        let id = id.to_owned();
        self.tx(move |tx| {
            Ok(tx.query_row("SELECT * FROM tenants WHERE id = ?1", params![id], tenant_from_row).optional()?)
        })
        .await
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        self.tx(move |tx| {
            let mut statement = tx.prepare_cached("SELECT * FROM tenants ORDER BY id")?;
            Ok(statement.query_map([], tenant_from_row)?.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn create_api_key(&self, key: ApiKey) -> Result<()> {
        self.tx(move |tx| {
            if tx
                .query_row("SELECT 1 FROM tenants WHERE id = ?1", params![key.tenant], |_| Ok(()))
                .optional()?
                .is_none()
            {
                return Err(StoreError::NotFound(format!("tenant {:?}", key.tenant)));
            }
            let scopes: Vec<&str> = key.scopes.iter().map(|s| s.as_str()).collect();
            tx.execute(
                "INSERT INTO api_keys (id, tenant, secret_hash, scopes, description, create_time, revoke_time) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
                params![key.id, key.tenant, key.secret_hash, scopes.join(","), key.description, key.create_time],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKey>> {
        let id = key_id.to_owned();
        self.tx(move |tx| {
            Ok(tx.query_row("SELECT * FROM api_keys WHERE id = ?1", params![id], key_from_row).optional()?)
        })
        .await
    }

    async fn list_api_keys(&self, tenant: &str) -> Result<Vec<ApiKey>> {
        let tenant = tenant.to_owned();
        self.tx(move |tx| {
            let mut statement = tx.prepare_cached("SELECT * FROM api_keys WHERE tenant = ?1 ORDER BY id")?;
            Ok(statement.query_map(params![tenant], key_from_row)?.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn revoke_api_key(&self, tenant: &str, key_id: &str) -> Result<bool> {
        let (tenant, id) = (tenant.to_owned(), key_id.to_owned());
        self.tx(move |tx| {
            Ok(tx.execute(
                "UPDATE api_keys SET revoke_time = ?3 WHERE tenant = ?1 AND id = ?2 AND revoke_time = 0",
                params![tenant, id, now_millis()],
            )? > 0)
        })
        .await
    }
}
