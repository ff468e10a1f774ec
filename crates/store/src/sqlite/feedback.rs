//! Feedback records (raw messages deflated, then sealed with the tenant's
//! key), soft-bounce scores, and per-campaign engagement counts.

use std::io::{Read, Write};

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::encrypt::{open_text, seal_text};
use super::keys::Crypto;
use super::{SqliteStore, page_of};
use crate::crypto::TenantKeys;
use crate::*;

/// Largest raw message kept after decompression (a deflate bomb stops here).
const MAX_RAW: u64 = 64 * 1024 * 1024;

pub(crate) fn deflate(raw: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(raw).and_then(|_| encoder.finish()).unwrap_or_default()
}

pub(crate) fn inflate(compressed: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(compressed)
        .take(MAX_RAW)
        .read_to_end(&mut out)
        .map_err(|e| StoreError::failed("inflate a stored feedback message", e))?;
    Ok(out)
}

/// A stored (score, update time) decayed to `now` by its half-life (0 when none).
pub(crate) fn decayed(stored: Option<(f64, i64)>, now: i64, half_life_ms: i64) -> f64 {
    stored.map_or(0.0, |(score, at)| {
        let elapsed = (now - at).max(0) as f64;
        score * 0.5f64.powf(elapsed / half_life_ms.max(1) as f64)
    })
}

/// A row with its sealed columns still sealed.
struct SealedRecord {
    record: FeedbackRecord,
    diagnostic: Vec<u8>,
    raw: Vec<u8>,
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<SealedRecord> {
    Ok(SealedRecord {
        record: FeedbackRecord {
            tenant: row.get("tenant")?,
            id: row.get("id")?,
            time: row.get("time")?,
            kind: row.get("kind")?,
            subscriber_id: row.get("subscriber_id")?,
            campaign_id: row.get("campaign_id")?,
            class: row.get("class")?,
            status_code: row.get("status_code")?,
            diagnostic: String::new(),
            reporting_mta: row.get("reporting_mta")?,
            rule: row.get("rule")?,
            verdict: row.get("verdict")?,
            raw: Vec::new(),
        },
        diagnostic: row.get("diagnostic")?,
        raw: row.get("raw")?,
    })
}

impl SealedRecord {
    fn open(self, tx: &Transaction<'_>, crypto: &Crypto, with_raw: bool) -> Result<FeedbackRecord> {
        let mut record = self.record;
        let key_id = TenantKeys::key_id_of(&self.diagnostic).or_else(|| TenantKeys::key_id_of(&self.raw));
        let keys = crypto.keys(tx, &record.tenant, key_id)?;
        record.diagnostic = open_text(&keys, &self.diagnostic)?;
        if with_raw && !self.raw.is_empty() {
            record.raw = inflate(&keys.open(&self.raw)?)?;
        }
        Ok(record)
    }
}

/// A subscriber's records without their raw messages (exports).
pub(super) fn of_subscriber_tx(
    tx: &Transaction<'_>,
    crypto: &Crypto,
    tenant: &str,
    subscriber_id: &str,
) -> Result<Vec<FeedbackRecord>> {
    let rows: Vec<SealedRecord> = tx
        .prepare_cached("SELECT * FROM feedback_records WHERE tenant = ?1 AND subscriber_id = ?2 ORDER BY id")?
        .query_map(params![tenant, subscriber_id], from_row)?
        .collect::<rusqlite::Result<_>>()?;
    rows.into_iter().map(|row| row.open(tx, crypto, false)).collect()
}

#[async_trait]
impl FeedbackStore for SqliteStore {
    async fn insert_feedback(&self, record: FeedbackRecord) -> Result<()> {
        let crypto = self.crypto.clone();
        self.tx(move |tx| {
            let keys = crypto.keys(tx, &record.tenant, None)?;
            let raw = if record.raw.is_empty() { Vec::new() } else { keys.seal(&deflate(&record.raw)) };
            tx.execute(
                "INSERT OR REPLACE INTO feedback_records (tenant, id, time, kind, subscriber_id, campaign_id, class, \
                 status_code, diagnostic, reporting_mta, rule, verdict, raw) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    record.tenant,
                    record.id,
                    record.time,
                    record.kind,
                    record.subscriber_id,
                    record.campaign_id,
                    record.class,
                    record.status_code,
                    seal_text(&keys, &record.diagnostic),
                    record.reporting_mta,
                    record.rule,
                    record.verdict,
                    raw
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_feedback(
        &self,
        tenant: &str,
        kind: Option<String>,
        with_raw: bool,
        page: PageRequest,
    ) -> Result<Page<FeedbackRecord>> {
        let (tenant, crypto) = (tenant.to_owned(), self.crypto.clone());
        self.tx(move |tx| {
            let token = page.token.clone().unwrap_or_default();
            let limit = (page.size + 1) as i64;
            let rows: Vec<SealedRecord> = tx
                .prepare_cached(
                    "SELECT * FROM feedback_records WHERE tenant = ?1 AND (?2 = '' OR id < ?2) AND (?3 IS NULL OR kind = ?3) \
                     ORDER BY id DESC LIMIT ?4",
                )?
                .query_map(params![tenant, token, kind, limit], from_row)?
                .collect::<rusqlite::Result<_>>()?;
            let page = page_of(rows, page.size, |row| &row.record.id);
            let items = page.items.into_iter().map(|row| row.open(tx, &crypto, with_raw)).collect::<Result<_>>()?;
            Ok(Page { items, next_token: page.next_token })
        })
        .await
    }

    async fn update_feedback_verdict(&self, record: FeedbackRecord) -> Result<bool> {
        let crypto = self.crypto.clone();
        self.tx(move |tx| {
            let keys = crypto.keys(tx, &record.tenant, None)?;
            Ok(tx.execute(
                "UPDATE feedback_records SET kind = ?3, class = ?4, status_code = ?5, diagnostic = ?6, \
                 reporting_mta = ?7, rule = ?8, verdict = ?9 WHERE tenant = ?1 AND id = ?2",
                params![
                    record.tenant,
                    record.id,
                    record.kind,
                    record.class,
                    record.status_code,
                    seal_text(&keys, &record.diagnostic),
                    record.reporting_mta,
                    record.rule,
                    record.verdict
                ],
            )? > 0)
        })
        .await
    }

    async fn add_bounce_score(
        &self,
        tenant: &str,
        subscriber_id: &str,
        increment: f64,
        half_life_ms: i64,
    ) -> Result<f64> {
        let (tenant, subscriber) = (tenant.to_owned(), subscriber_id.to_owned());
        self.tx(move |tx| {
            let now = now_millis();
            let stored: Option<(f64, i64)> = tx
                .query_row(
                    "SELECT score, update_time FROM bounce_scores WHERE tenant = ?1 AND subscriber_id = ?2",
                    params![tenant, subscriber],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            let score = decayed(stored, now, half_life_ms) + increment;
            tx.execute(
                "INSERT OR REPLACE INTO bounce_scores (tenant, subscriber_id, score, update_time) VALUES (?1, ?2, ?3, ?4)",
                params![tenant, subscriber, score, now],
            )?;
            Ok(score)
        })
        .await
    }

    async fn purge_feedback(&self, before: i64) -> Result<u64> {
        self.tx(move |tx| Ok(tx.execute("DELETE FROM feedback_records WHERE time < ?1", params![before])? as u64)).await
    }

    async fn record_engagement(
        &self,
        tenant: &str,
        campaign_id: &str,
        subscriber_id: &str,
        kind: Engagement,
    ) -> Result<bool> {
        let (tenant, campaign, subscriber) = (tenant.to_owned(), campaign_id.to_owned(), subscriber_id.to_owned());
        self.tx(move |tx| {
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO campaign_engagement (campaign_id, subscriber_id, kind) VALUES (?1, ?2, ?3)",
                params![campaign, subscriber, kind.as_str()],
            )? > 0;
            if inserted {
                let column = kind.as_str();
                tx.execute(
                    &format!("UPDATE campaigns SET {column} = {column} + 1 WHERE tenant = ?1 AND id = ?2"),
                    params![tenant, campaign],
                )?;
            }
            Ok(inserted)
        })
        .await
    }
}
