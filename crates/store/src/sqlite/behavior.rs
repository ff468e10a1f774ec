//! Behavioral events: one row per (tenant, event id), properties sealed with
//! the tenant's key, a time index for the retention purge, and a
//! `published` flag so a retry republishes what a crash left unpublished.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Transaction, params};
use serde_json::{Map, Value};

use super::SqliteStore;
use super::keys::Crypto;
use crate::crypto::TenantKeys;
use crate::*;

pub(crate) fn seal_properties(keys: &TenantKeys, properties: &Map<String, Value>) -> Result<Vec<u8>> {
    if properties.is_empty() {
        return Ok(Vec::new());
    }
    let json = serde_json::to_vec(properties).map_err(|e| StoreError::failed("encode event properties", e))?;
    Ok(keys.seal(&json))
}

fn open_properties(tx: &Transaction<'_>, crypto: &Crypto, tenant: &str, sealed: &[u8]) -> Result<Map<String, Value>> {
    if sealed.is_empty() {
        return Ok(Map::new());
    }
    let keys = crypto.keys(tx, tenant, TenantKeys::key_id_of(sealed))?;
    serde_json::from_slice(&keys.open(sealed)?).map_err(|e| StoreError::failed("decode event properties", e))
}

/// A subscriber's events, oldest first (exports).
pub(super) fn of_subscriber_tx(
    tx: &Transaction<'_>,
    crypto: &Crypto,
    tenant: &str,
    subscriber_id: &str,
) -> Result<Vec<BehaviorEventRow>> {
    let rows: Vec<(String, String, i64, Vec<u8>)> = tx
        .prepare_cached(
            "SELECT event_id, name, time, properties FROM behavior_events \
             WHERE tenant = ?1 AND subscriber_id = ?2 ORDER BY time, event_id",
        )?
        .query_map(params![tenant, subscriber_id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    rows.into_iter()
        .map(|(event_id, name, time, sealed)| {
            Ok(BehaviorEventRow {
                tenant: tenant.to_owned(),
                event_id,
                subscriber_id: subscriber_id.to_owned(),
                name,
                time,
                properties: open_properties(tx, crypto, tenant, &sealed)?,
            })
        })
        .collect()
}

#[async_trait]
impl BehaviorStore for SqliteStore {
    async fn track_events(&self, events: Vec<BehaviorEventRow>) -> Result<Vec<Tracked>> {
        let crypto = self.crypto.clone();
        self.tx(move |tx| {
            let mut outcomes = Vec::with_capacity(events.len());
            let mut keys: Option<(String, std::sync::Arc<TenantKeys>)> = None;
            for event in events {
                let published: Option<bool> = tx
                    .prepare_cached("SELECT published FROM behavior_events WHERE tenant = ?1 AND event_id = ?2")?
                    .query_row(params![event.tenant, event.event_id], |row| row.get(0))
                    .optional()?;
                match published {
                    Some(true) => outcomes.push(Tracked::Duplicate),
                    Some(false) => outcomes.push(Tracked::Unpublished),
                    None => {
                        if keys.as_ref().is_none_or(|(tenant, _)| *tenant != event.tenant) {
                            keys = Some((event.tenant.clone(), crypto.keys(tx, &event.tenant, None)?));
                        }
                        let sealed = seal_properties(&keys.as_ref().expect("set above").1, &event.properties)?;
                        tx.prepare_cached(
                            "INSERT INTO behavior_events (tenant, event_id, subscriber_id, name, time, properties, published) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
                        )?
                        .execute(params![event.tenant, event.event_id, event.subscriber_id, event.name, event.time, sealed])?;
                        outcomes.push(Tracked::New);
                    }
                }
            }
            Ok(outcomes)
        })
        .await
    }

    async fn mark_published(&self, tenant: &str, event_ids: Vec<String>) -> Result<()> {
        let tenant = tenant.to_owned();
        self.tx(move |tx| {
            let mut update =
                tx.prepare_cached("UPDATE behavior_events SET published = 1 WHERE tenant = ?1 AND event_id = ?2")?;
            for id in event_ids {
                update.execute(params![tenant, id])?;
            }
            Ok(())
        })
        .await
    }

    async fn purge_events(&self, before: i64) -> Result<u64> {
        self.tx(move |tx| Ok(tx.execute("DELETE FROM behavior_events WHERE time < ?1", params![before])? as u64)).await
    }
}
