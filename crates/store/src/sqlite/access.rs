//! Tenants, API keys and suppressions.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::encrypt::{email_key, open_text, seal_text};
use super::keys::Crypto;
use super::page_of;
use crate::crypto::TenantKeys;
use crate::*;

/// A suppression row with its target still sealed.
fn suppression_from_row(row: &Row<'_>) -> rusqlite::Result<(Suppression, Vec<u8>)> {
    let reason: String = row.get("reason")?;
    let (reason, detail) = Suppression::parse_stored_reason(&reason);
    let suppression = Suppression {
        tenant: row.get("tenant")?,
        email_hash: row.get("email_hash")?,
        list_id: row.get("list_id")?,
        target: String::new(),
        reason,
        detail,
        create_time: row.get("create_time")?,
    };
    Ok((suppression, row.get("target")?))
}

fn open_suppression(
    tx: &Transaction<'_>,
    crypto: &Crypto,
    (mut suppression, sealed): (Suppression, Vec<u8>),
) -> Result<Suppression> {
    let keys = crypto.keys(tx, &suppression.tenant, TenantKeys::key_id_of(&sealed))?;
    suppression.target = open_text(&keys, &sealed)?;
    Ok(suppression)
}

/// Every suppression of the tenant whose blind index is in `keys`.
pub(super) fn suppressions_tx(
    tx: &Transaction<'_>,
    crypto: &Crypto,
    tenant: &str,
    keys: &[String],
) -> Result<Vec<Suppression>> {
    let mut statement =
        tx.prepare_cached("SELECT * FROM suppressions WHERE tenant = ?1 AND email_hash = ?2 ORDER BY list_id")?;
    let mut found = Vec::new();
    for key in keys.iter().filter(|h| !h.is_empty()) {
        for row in
            statement.query_map(params![tenant, key], suppression_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?
        {
            found.push(open_suppression(tx, crypto, row)?);
        }
    }
    Ok(found)
}

fn tenant_from_row(row: &Row<'_>) -> rusqlite::Result<Tenant> {
    Ok(Tenant {
        id: row.get("id")?,
        display_name: row.get("display_name")?,
        create_time: row.get("create_time")?,
        allow_transactional: row.get("allow_transactional")?,
    })
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
        let crypto = self.crypto.clone();
        self.tx(move |tx| {
            let keys = crypto.keys(tx, &suppression.tenant, None)?;
            let key = email_key(&keys, &suppression.target);
            tx.execute(
                "INSERT INTO suppressions (tenant, email_hash, list_id, target, reason, create_time) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (tenant, email_hash, list_id) DO UPDATE SET reason = ?5, \
                 target = CASE WHEN reason = 'erased' THEN target ELSE ?4 END",
                params![
                    suppression.tenant,
                    key,
                    suppression.list_id,
                    seal_text(&keys, &suppression.target),
                    suppression.stored_reason(),
                    suppression.create_time
                ],
            )?;
            let row = tx.query_row(
                "SELECT * FROM suppressions WHERE tenant = ?1 AND email_hash = ?2 AND list_id = ?3",
                params![suppression.tenant, key, suppression.list_id],
                suppression_from_row,
            )?;
            open_suppression(tx, &crypto, row)
        })
        .await
    }

    async fn remove_suppression(&self, tenant: &str, target: &str, list_id: &str) -> Result<bool> {
        let (tenant, target, list_id, crypto) =
            (tenant.to_owned(), target.to_owned(), list_id.to_owned(), self.crypto.clone());
        self.tx(move |tx| {
            let key = email_key(&*crypto.keys(tx, &tenant, None)?, &target);
            Ok(tx.execute(
                "DELETE FROM suppressions WHERE tenant = ?1 AND email_hash = ?2 AND list_id = ?3",
                params![tenant, key, list_id],
            )? > 0)
        })
        .await
    }

    async fn list_suppressions(&self, tenant: &str, page: PageRequest) -> Result<Page<Suppression>> {
        let (tenant, crypto) = (tenant.to_owned(), self.crypto.clone());
        self.tx(move |tx| {
            // The token is `key/list`: the last key of the previous page.
            let token = page.token.clone().unwrap_or_default();
            let (after_key, after_list) = token.split_once('/').unwrap_or((&token, ""));
            let mut statement = tx.prepare_cached(
                "SELECT * FROM suppressions WHERE tenant = ?1 AND (email_hash, list_id) > (?2, ?3) \
                 ORDER BY email_hash, list_id LIMIT ?4",
            )?;
            let rows = statement
                .query_map(params![tenant, after_key, after_list, (page.size + 1) as i64], suppression_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let rows = rows.into_iter().map(|row| open_suppression(tx, &crypto, row)).collect::<Result<Vec<_>>>()?;
            let mut page = page_of(rows, page.size, |s| &s.email_hash);
            if page.next_token.is_some() {
                page.next_token = page.items.last().map(|s| format!("{}/{}", s.email_hash, s.list_id));
            }
            Ok(page)
        })
        .await
    }

    async fn suppressions_for(&self, tenant: &str, targets: Vec<String>) -> Result<Vec<Suppression>> {
        let (tenant, crypto) = (tenant.to_owned(), self.crypto.clone());
        self.tx(move |tx| {
            let keys = crypto.keys(tx, &tenant, None)?;
            let blind: Vec<String> = targets.iter().map(|target| email_key(&keys, target)).collect();
            suppressions_tx(tx, &crypto, &tenant, &blind)
        })
        .await
    }
}

#[async_trait]
impl AccessStore for SqliteStore {
    async fn create_tenant(&self, tenant: Tenant) -> Result<Tenant> {
        self.tx(move |tx| {
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO tenants (id, display_name, create_time, allow_transactional) VALUES (?1, ?2, ?3, ?4)",
                params![tenant.id, tenant.display_name, tenant.create_time, tenant.allow_transactional],
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

    async fn set_allow_transactional(&self, tenant: &str, allowed: bool) -> Result<bool> {
        let tenant = tenant.to_owned();
        self.tx(move |tx| {
            Ok(tx.execute("UPDATE tenants SET allow_transactional = ?2 WHERE id = ?1", params![tenant, allowed])? > 0)
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

#[async_trait]
impl AuditLog for SqliteStore {
    async fn append_audit(&self, entry: AuditEntry) -> Result<()> {
        self.tx(move |tx| {
            tx.execute(
                "INSERT INTO audit_log (tenant, id, time, actor, action, resource, detail, source) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    entry.tenant,
                    entry.id,
                    entry.time,
                    entry.actor,
                    entry.action,
                    entry.resource,
                    entry.detail,
                    entry.source
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_audit(&self, tenant: &str, page: PageRequest) -> Result<Page<AuditEntry>> {
        let tenant = tenant.to_owned();
        self.tx(move |tx| {
            super::paged(
                tx,
                "SELECT * FROM audit_log WHERE tenant = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
                &tenant,
                None,
                &page,
                |row| {
                    Ok(AuditEntry {
                        tenant: row.get("tenant")?,
                        id: row.get("id")?,
                        time: row.get("time")?,
                        actor: row.get("actor")?,
                        action: row.get("action")?,
                        resource: row.get("resource")?,
                        detail: row.get("detail")?,
                        source: row.get("source")?,
                    })
                },
                |entry| &entry.id,
            )
        })
        .await
    }
}
