//! Subscribers, memberships, the consent ledger, imports, export and erasure.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Transaction, params};

use super::encrypt::{domain_key, email_key, open_pii, seal_pii};
use super::keys::Crypto;
use super::{
    SUBSCRIBER_COLUMNS, get_list_tx, get_subscriber_tx, open_page, paged, remember, remembered, subscriber_from_row,
};
use crate::crypto::TenantKeys;
use crate::upsert::{Applied, consent_action, fresh_status, imported, joins, merged};
use crate::*;

/// The members a campaign may mail: active, confirmed, and not suppressed
/// tenant-wide, for the list, or for their domain.
const SENDABLE: &str = "AND s.status = 1 AND m.status = 2 AND NOT EXISTS (SELECT 1 FROM suppressions x \
     WHERE x.tenant = m.tenant AND x.email_hash IN (s.email_key, s.domain_key) AND x.list_id IN ('', m.list_id))";

/// Opt-in mode of every list in `list_ids`; `NotFound` names the first missing one.
fn list_modes(tx: &Transaction<'_>, tenant: &str, list_ids: &[String]) -> Result<HashMap<String, OptIn>> {
    let mut modes = HashMap::new();
    for list_id in list_ids {
        let list = get_list_tx(tx, tenant, list_id)?.ok_or_else(|| StoreError::NotFound(format!("lists/{list_id}")))?;
        modes.insert(list_id.clone(), list.opt_in);
    }
    Ok(modes)
}

fn append_consent(
    tx: &Transaction<'_>,
    keys: &TenantKeys,
    subscriber_id: &str,
    action: ConsentAction,
    list_id: &str,
    consent: &ConsentContext,
    now: i64,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO consent_log (tenant, subscriber_id, time, seq, action, list_id, source, pii) \
         VALUES (?1, ?2, ?3, ?8, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        keys.tenant,
        subscriber_id,
        now,
        action.as_str(),
        list_id,
        consent.source,
        seal_consent_context(keys, consent),
        next_consent_seq()
    ])?;
    Ok(())
}

/// Orders consent records within one millisecond: increasing in this process,
/// and starting above any earlier process's values (microseconds at start).
pub(crate) fn next_consent_seq() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static SEQ: AtomicI64 = AtomicI64::new(0);
    let _ = SEQ.compare_exchange(0, now_millis() * 1000, Ordering::Relaxed, Ordering::Relaxed);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// The client's address and user agent, sealed; nothing when both are empty
/// (imports, the API without a client context), which is most records.
fn seal_consent_context(keys: &TenantKeys, consent: &ConsentContext) -> Vec<u8> {
    if consent.ip.is_empty() && consent.user_agent.is_empty() {
        return Vec::new();
    }
    keys.seal(&serde_json::to_vec(&(&consent.ip, &consent.user_agent)).expect("strings encode"))
}

/// A subscriber's blind indexes and sealed personal data. Computed before
/// the write transaction where it can be (imports), so that the one writer
/// thread only runs SQL.
struct SealedRow {
    key: String,
    domain: String,
    pii: Vec<u8>,
}

fn seal_row(keys: &TenantKeys, subscriber: &Subscriber) -> Result<SealedRow> {
    Ok(SealedRow {
        key: email_key(keys, &subscriber.email),
        domain: domain_key(keys, &subscriber.email),
        pii: seal_pii(keys, &subscriber.email, &subscriber.display_name, &subscriber.attributes)?,
    })
}

/// Upserts one subscriber and its memberships inside `tx`. New addresses
/// (the common case of an import) cost one insert: the existing row is read
/// only when the insert hits the unique email index.
fn apply_upsert(
    tx: &Transaction<'_>,
    keys: &TenantKeys,
    subscriber: &Subscriber,
    sealed: SealedRow,
    options: &UpsertOptions,
    modes: &HashMap<String, OptIn>,
    now: i64,
) -> Result<Applied> {
    let tenant = &subscriber.tenant;
    let SealedRow { key, domain, pii } = sealed;
    let inserted =
        tx.prepare_cached(
            "INSERT INTO subscribers (tenant, id, pii, email_key, domain_key, status, create_time, update_time) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (tenant, email_key) DO NOTHING",
        )?
        .execute(params![
            tenant,
            subscriber.id,
            pii,
            key,
            domain,
            subscriber.status as i64,
            // A migration may carry the original signup time; never one in the future.
            if subscriber.create_time > 0 && subscriber.create_time <= now { subscriber.create_time } else { now },
            now
        ])? > 0;
    let mut state = None;
    let (id, created, changed) = if inserted {
        (subscriber.id.clone(), true, true)
    } else {
        let (id, sealed, status): (String, Vec<u8>, i64) = tx
            .prepare_cached("SELECT id, pii, status FROM subscribers WHERE tenant = ?1 AND email_key = ?2")?
            .query_row(params![tenant, key], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        let old = open_pii(keys, &sealed)?;
        let attributes = old.attributes;
        let status = SubscriberStatus::from_i64(status);
        if options.mode == UpsertMode::SkipExisting {
            state = Some((old.name, attributes, status));
            (id, false, false)
        } else {
            let (name, attributes) = merged(old.name, attributes, subscriber);
            tx.prepare_cached("UPDATE subscribers SET pii = ?3, update_time = ?4 WHERE tenant = ?1 AND id = ?2")?
                .execute(params![tenant, id, seal_pii(keys, &subscriber.email, &name, &attributes)?, now])?;
            state = Some((name, attributes, status));
            (id, false, true)
        }
    };
    let mut statuses = Vec::with_capacity(subscriber.lists.len());
    let mut pending_confirmation = Vec::new();
    for list_id in &subscriber.lists {
        let fresh = fresh_status(modes, list_id);
        let current: Option<i64> = if created {
            None
        } else {
            tx.prepare_cached(
                "SELECT status FROM memberships WHERE tenant = ?1 AND list_id = ?2 AND subscriber_id = ?3",
            )?
            .query_row(params![tenant, list_id, id], |row| row.get(0))
            .optional()?
        };
        let current = current.map(SubscriptionStatus::from_i64);
        let join = joins(current, options, list_id, &mut pending_confirmation);
        if !join {
            statuses.push(current.unwrap_or(fresh));
            continue;
        }
        tx.prepare_cached(
            "INSERT INTO memberships (tenant, list_id, subscriber_id, create_time, status, update_time) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?4) \
             ON CONFLICT (tenant, list_id, subscriber_id) DO UPDATE SET status = ?5, update_time = ?4",
        )?
        .execute(params![tenant, list_id, id, now, fresh as i64])?;
        append_consent(tx, keys, &id, ConsentAction::Subscribe, list_id, &options.consent, now)?;
        if fresh == SubscriptionStatus::Unconfirmed {
            pending_confirmation.push(list_id.clone());
        }
        statuses.push(fresh);
    }
    Ok(Applied { id, created, changed, statuses, pending_confirmation, state })
}

fn consent_tx(tx: &Transaction<'_>, crypto: &Crypto, tenant: &str, subscriber_id: &str) -> Result<Vec<ConsentRecord>> {
    let mut statement = tx.prepare_cached(
        "SELECT subscriber_id, time, action, list_id, source, pii FROM consent_log \
         WHERE tenant = ?1 AND subscriber_id = ?2 ORDER BY time, seq",
    )?;
    let rows = statement
        .query_map(params![tenant, subscriber_id], |row| {
            Ok((
                ConsentRecord {
                    subscriber_id: row.get(0)?,
                    time: row.get(1)?,
                    action: ConsentAction::parse(&row.get::<_, String>(2)?),
                    list_id: row.get(3)?,
                    context: ConsentContext { source: row.get(4)?, ip: String::new(), user_agent: String::new() },
                },
                row.get::<_, Vec<u8>>(5)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut records = Vec::with_capacity(rows.len());
    for (mut record, sealed) in rows {
        if sealed.is_empty() {
            records.push(record); // no client context was recorded
            continue;
        }
        let keys = crypto.keys(tx, tenant, TenantKeys::key_id_of(&sealed))?;
        let (ip, user_agent): (String, String) =
            serde_json::from_slice(&keys.open(&sealed)?).map_err(|e| StoreError::failed("consent record", e))?;
        (record.context.ip, record.context.user_agent) = (ip, user_agent);
        records.push(record);
    }
    Ok(records)
}

fn hashes_of(tx: &Transaction<'_>, tenant: &str, subscriber_id: &str) -> Result<Option<(String, String)>> {
    Ok(tx
        .query_row(
            "SELECT email_key, domain_key FROM subscribers WHERE tenant = ?1 AND id = ?2",
            params![tenant, subscriber_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?)
}

#[async_trait]
impl SubscriberStore for SqliteStore {
    async fn upsert_subscriber(
        &self,
        subscriber: Subscriber,
        options: UpsertOptions,
        request_id: Option<String>,
    ) -> Result<Upserted> {
        let crypto = self.crypto.clone();
        self.tx(move |tx| {
            let tenant = subscriber.tenant.clone();
            if let Some(id) = remembered(tx, &tenant, &request_id, "subscriber")? {
                let existing = get_subscriber_tx(tx, &crypto, &tenant, &id)?
                    .ok_or_else(|| StoreError::NotFound(format!("subscribers/{id}")))?;
                return Ok(Upserted {
                    subscriber: existing,
                    created: false,
                    changed: false,
                    pending_confirmation: vec![],
                });
            }
            let modes = list_modes(tx, &tenant, &subscriber.lists)?;
            let keys = crypto.keys(tx, &tenant, None)?;
            let sealed = seal_row(&keys, &subscriber)?;
            let applied = apply_upsert(tx, &keys, &subscriber, sealed, &options, &modes, now_millis())?;
            remember(tx, &tenant, &request_id, "subscriber", &applied.id)?;
            let stored = get_subscriber_tx(tx, &crypto, &tenant, &applied.id)?
                .ok_or_else(|| StoreError::Backend("subscriber vanished".into()))?;
            Ok(Upserted {
                subscriber: stored,
                created: applied.created,
                changed: applied.changed,
                pending_confirmation: applied.pending_confirmation,
            })
        })
        .await
    }

    async fn get_subscriber(&self, tenant: &str, subscriber_id: &str) -> Result<Option<Subscriber>> {
        let (tenant, id, crypto) = (tenant.to_owned(), subscriber_id.to_owned(), self.crypto.clone());
        self.tx(move |tx| get_subscriber_tx(tx, &crypto, &tenant, &id)).await
    }

    async fn find_subscriber(&self, tenant: &str, email: &str) -> Result<Option<Subscriber>> {
        let (tenant, email, crypto) = (tenant.to_owned(), email.to_owned(), self.crypto.clone());
        self.tx(move |tx| {
            let key = email_key(&*crypto.keys(tx, &tenant, None)?, &email);
            let id: Option<String> = tx
                .query_row(
                    "SELECT id FROM subscribers WHERE tenant = ?1 AND email_key = ?2",
                    params![tenant, key],
                    |row| row.get(0),
                )
                .optional()?;
            match id {
                Some(id) => get_subscriber_tx(tx, &crypto, &tenant, &id),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list_subscribers(&self, tenant: &str, page: PageRequest) -> Result<Page<Subscriber>> {
        let (tenant, crypto) = (tenant.to_owned(), self.crypto.clone());
        let sql = format!(
            "SELECT {SUBSCRIBER_COLUMNS} FROM subscribers s WHERE s.tenant = ?1 AND s.id > ?2 ORDER BY s.id LIMIT ?3"
        );
        self.tx(move |tx| {
            let page = paged(tx, &sql, &tenant, None, &page, subscriber_from_row, |s| &s.subscriber.id)?;
            open_page(tx, &crypto, page)
        })
        .await
    }

    async fn member_statuses(
        &self,
        tenant: &str,
        list_id: &str,
        page: PageRequest,
    ) -> Result<Page<(String, SubscriptionStatus)>> {
        let (tenant, list_id) = (tenant.to_owned(), list_id.to_owned());
        self.tx(move |tx| {
            let token = page.token.clone().unwrap_or_default();
            let rows: Vec<(String, SubscriptionStatus)> = tx
                .prepare_cached(
                    "SELECT subscriber_id, status FROM memberships WHERE tenant = ?1 AND list_id = ?2 AND subscriber_id > ?3 \
                     ORDER BY subscriber_id LIMIT ?4",
                )?
                .query_map(params![tenant, list_id, token, (page.size + 1) as i64], |row| {
                    Ok((row.get(0)?, SubscriptionStatus::from_i64(row.get(1)?)))
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(super::page_of(rows, page.size, |row| &row.0))
        })
        .await
    }

    async fn list_members(
        &self,
        tenant: &str,
        list_id: &str,
        sendable_only: bool,
        page: PageRequest,
    ) -> Result<Page<Subscriber>> {
        let (tenant, list_id, crypto) = (tenant.to_owned(), list_id.to_owned(), self.crypto.clone());
        let filter = if sendable_only { SENDABLE } else { "" };
        let sql = format!(
            "SELECT {SUBSCRIBER_COLUMNS} FROM memberships m JOIN subscribers s ON s.tenant = m.tenant AND s.id = m.subscriber_id \
             WHERE m.tenant = ?1 AND m.list_id = ?2 AND m.subscriber_id > ?3 {filter} ORDER BY m.subscriber_id LIMIT ?4"
        );
        self.tx(move |tx| {
            let page = paged(tx, &sql, &tenant, Some(&list_id), &page, subscriber_from_row, |s| &s.subscriber.id)?;
            open_page(tx, &crypto, page)
        })
        .await
    }

    async fn is_sendable(&self, tenant: &str, subscriber_id: &str, list_id: &str) -> Result<bool> {
        let (tenant, id, list_id) = (tenant.to_owned(), subscriber_id.to_owned(), list_id.to_owned());
        self.tx(move |tx| {
            let sql = format!(
                "SELECT 1 FROM memberships m JOIN subscribers s ON s.tenant = m.tenant AND s.id = m.subscriber_id \
                 WHERE m.tenant = ?1 AND m.subscriber_id = ?2 AND m.list_id = ?3 {SENDABLE}"
            );
            Ok(tx.prepare_cached(&sql)?.exists(params![tenant, id, list_id])?)
        })
        .await
    }

    async fn update_subscriber(
        &self,
        tenant: &str,
        subscriber_id: &str,
        update: SubscriberUpdate,
    ) -> Result<Option<Subscriber>> {
        let (tenant, id, crypto) = (tenant.to_owned(), subscriber_id.to_owned(), self.crypto.clone());
        self.tx(move |tx| {
            let Some(current) = get_subscriber_tx(tx, &crypto, &tenant, &id)? else { return Ok(None) };
            let name = update.display_name.unwrap_or(current.display_name);
            let attributes = update.attributes.unwrap_or(current.attributes);
            let status = update.status.unwrap_or(current.status);
            let keys = crypto.keys(tx, &tenant, None)?;
            tx.execute(
                "UPDATE subscribers SET pii = ?3, status = ?4, update_time = ?5 WHERE tenant = ?1 AND id = ?2",
                params![tenant, id, seal_pii(&keys, &current.email, &name, &attributes)?, status as i64, now_millis()],
            )?;
            get_subscriber_tx(tx, &crypto, &tenant, &id)
        })
        .await
    }

    async fn set_subscription(
        &self,
        tenant: &str,
        subscriber_id: &str,
        list_id: &str,
        status: SubscriptionStatus,
        consent: ConsentContext,
    ) -> Result<Option<Subscriber>> {
        let (tenant, id, list_id) = (tenant.to_owned(), subscriber_id.to_owned(), list_id.to_owned());
        let crypto = self.crypto.clone();
        self.tx(move |tx| {
            let now = now_millis();
            let changed = tx.execute(
                "UPDATE memberships SET status = ?4, update_time = ?5 \
                 WHERE tenant = ?1 AND list_id = ?2 AND subscriber_id = ?3 AND status != ?4",
                params![tenant, list_id, id, status as i64, now],
            )?;
            let exists: bool = tx
                .prepare_cached("SELECT 1 FROM memberships WHERE tenant = ?1 AND list_id = ?2 AND subscriber_id = ?3")?
                .exists(params![tenant, list_id, id])?;
            if !exists {
                return Ok(None);
            }
            if changed > 0 {
                let action = consent_action(status);
                let keys = crypto.keys(tx, &tenant, None)?;
                append_consent(tx, &keys, &id, action, &list_id, &consent, now)?;
            }
            get_subscriber_tx(tx, &crypto, &tenant, &id)
        })
        .await
    }

    async fn consent_records(&self, tenant: &str, subscriber_id: &str) -> Result<Vec<ConsentRecord>> {
        let (tenant, id, crypto) = (tenant.to_owned(), subscriber_id.to_owned(), self.crypto.clone());
        self.tx(move |tx| consent_tx(tx, &crypto, &tenant, &id)).await
    }

    async fn existing_emails(&self, tenant: &str, emails: Vec<String>) -> Result<HashSet<String>> {
        let (tenant, crypto) = (tenant.to_owned(), self.crypto.clone());
        self.tx(move |tx| {
            let keys = crypto.keys(tx, &tenant, None)?;
            let mut statement = tx.prepare_cached("SELECT 1 FROM subscribers WHERE tenant = ?1 AND email_key = ?2")?;
            let mut found = HashSet::new();
            for email in emails {
                if statement.exists(params![tenant, email_key(&keys, &email)])? {
                    found.insert(normalize_email(&email));
                }
            }
            Ok(found)
        })
        .await
    }

    async fn import_batch(
        &self,
        tenant: &str,
        job: ImportJob,
        rows: Vec<ImportRow>,
        options: UpsertOptions,
    ) -> Result<(Vec<ImportedRow>, ImportJob)> {
        let (tenant, crypto) = (tenant.to_owned(), self.crypto.clone());
        let keys = match crypto.cached(&tenant) {
            Some(keys) => keys,
            None => {
                let (tenant, crypto) = (tenant.clone(), crypto.clone());
                self.tx(move |tx| crypto.keys(tx, &tenant, None)).await?
            }
        };
        // Blind indexes and sealing (a third of the work a row) run here, on a
        // blocking thread, while the writer thread commits the previous batch.
        let rows = {
            let keys = keys.clone();
            tokio::task::spawn_blocking(move || {
                rows.into_iter().map(|row| Ok((seal_row(&keys, &row.subscriber)?, row))).collect::<Result<Vec<_>>>()
            })
            .await
            .map_err(|e| StoreError::failed("sealing an import batch", e))??
        };
        let done = self
            .tx(move |tx| {
                let mut job = job;
                let modes = list_modes(tx, &tenant, std::slice::from_ref(&job.list_id))?;
                let now = now_millis();
                let mut results = Vec::with_capacity(rows.len());
                for (sealed, row) in rows {
                    let applied = apply_upsert(tx, &keys, &row.subscriber, sealed, &options, &modes, now)?;
                    results.push(imported(&mut job, row, applied));
                }
                if !job.request_id.is_empty() {
                    // Sealed: its errors quote addresses.
                    let encoded = serde_json::to_vec(&job).map_err(|e| StoreError::failed("encode import job", e))?;
                    tx.prepare_cached(
                        "INSERT INTO import_jobs (tenant, request_id, job, update_time) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (tenant, request_id) DO UPDATE SET job = ?3, update_time = ?4",
                    )?
                    .execute(params![tenant, job.request_id, keys.seal(&encoded), now])?;
                }
                Ok((results, job))
            })
            .await?;
        if done.1.done {
            self.sync_wal().await?;
        }
        Ok(done)
    }

    async fn import_job(&self, tenant: &str, request_id: &str) -> Result<Option<ImportJob>> {
        let (tenant, request_id, crypto) = (tenant.to_owned(), request_id.to_owned(), self.crypto.clone());
        self.tx(move |tx| {
            let sealed: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT job FROM import_jobs WHERE tenant = ?1 AND request_id = ?2",
                    params![tenant, request_id],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(sealed) = sealed else { return Ok(None) };
            let keys = crypto.keys(tx, &tenant, TenantKeys::key_id_of(&sealed))?;
            serde_json::from_slice(&keys.open(&sealed)?).map(Some).map_err(|e| StoreError::failed("import job", e))
        })
        .await
    }

    async fn export_subscriber(&self, tenant: &str, subscriber_id: &str) -> Result<Option<SubscriberExport>> {
        let (tenant, id, crypto) = (tenant.to_owned(), subscriber_id.to_owned(), self.crypto.clone());
        self.tx(move |tx| {
            let Some(subscriber) = get_subscriber_tx(tx, &crypto, &tenant, &id)? else { return Ok(None) };
            let (hash, domain) = hashes_of(tx, &tenant, &id)?.unwrap_or_default();
            let suppressions = super::access::suppressions_tx(tx, &crypto, &tenant, &[hash, domain])?;
            let mut statement = tx.prepare_cached(
                "SELECT campaign_id, state, message_id, update_time FROM send_ledger WHERE subscriber_id = ?1 ORDER BY campaign_id",
            )?;
            let deliveries = statement
                .query_map(params![id], |row| {
                    Ok(Delivery {
                        campaign_id: row.get(0)?,
                        state: row.get(1)?,
                        message_id: row.get(2)?,
                        update_time: row.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let consent = consent_tx(tx, &crypto, &tenant, &id)?;
            let feedback = super::feedback::of_subscriber_tx(tx, &crypto, &tenant, &id)?;
            let events = super::behavior::of_subscriber_tx(tx, &crypto, &tenant, &id)?;
            Ok(Some(SubscriberExport { consent, subscriber, suppressions, deliveries, feedback, events }))
        })
        .await
    }

    async fn erase_subscriber(&self, tenant: &str, subscriber_id: &str) -> Result<Option<String>> {
        let (tenant, id) = (tenant.to_owned(), subscriber_id.to_owned());
        self.tx(move |tx| {
            let Some((hash, _)) = hashes_of(tx, &tenant, &id)? else { return Ok(None) };
            tx.execute("DELETE FROM memberships WHERE tenant = ?1 AND subscriber_id = ?2", params![tenant, id])?;
            tx.execute("DELETE FROM consent_log WHERE tenant = ?1 AND subscriber_id = ?2", params![tenant, id])?;
            tx.execute("DELETE FROM feedback_records WHERE tenant = ?1 AND subscriber_id = ?2", params![tenant, id])?;
            tx.execute("DELETE FROM bounce_scores WHERE tenant = ?1 AND subscriber_id = ?2", params![tenant, id])?;
            tx.execute("DELETE FROM behavior_events WHERE tenant = ?1 AND subscriber_id = ?2", params![tenant, id])?;
            tx.execute("DELETE FROM subscribers WHERE tenant = ?1 AND id = ?2", params![tenant, id])?;
            // Suppressions by this address keep working, but no longer say whose they are.
            tx.execute(
                "UPDATE suppressions SET target = x'' WHERE tenant = ?1 AND email_hash = ?2",
                params![tenant, hash],
            )?;
            tx.execute(
                "INSERT INTO suppressions (tenant, email_hash, list_id, target, reason, create_time) \
                 VALUES (?1, ?2, '', x'', 'erased', ?3) \
                 ON CONFLICT (tenant, email_hash, list_id) DO UPDATE SET reason = 'erased'",
                params![tenant, hash, now_millis()],
            )?;
            Ok(Some(hash))
        })
        .await
    }
}
