//! Feedback records by (tenant, day), newest first, with the retention as
//! TTL; raw messages (deflated, sealed) in their own partitions; an index by
//! subscriber for exports and erasure; soft-bounce scores; engagement
//! counted once per (campaign, recipient).

use async_trait::async_trait;

use super::{ScyllaStore, day_of};
use crate::crypto::TenantKeys;
use crate::sqlite::encrypt::{open_text, seal_text};
use crate::sqlite::feedback::{decayed, deflate, inflate};
use crate::*;

type RecordRow = (String, String, i64, String, String, String, String, String, Vec<u8>, String, String, String);

/// A record as read: an UPDATE that raced a purge can leave a row without
/// its time (ScyllaDB updates create rows); it reads as absent.
type NullableRow = (
    String,
    String,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// (id, time, subscriber id, sealed diagnostic) of a whole day's records.
pub(super) type DayRow = (String, Option<i64>, Option<String>, Option<Vec<u8>>);

fn complete(row: NullableRow) -> Option<RecordRow> {
    let (tenant, id, time, kind, subscriber, campaign, class, status, diagnostic, mta, rule, verdict) = row;
    Some((
        tenant,
        id,
        time?,
        kind.unwrap_or_default(),
        subscriber.unwrap_or_default(),
        campaign.unwrap_or_default(),
        class.unwrap_or_default(),
        status.unwrap_or_default(),
        diagnostic.unwrap_or_default(),
        mta.unwrap_or_default(),
        rule.unwrap_or_default(),
        verdict.unwrap_or_default(),
    ))
}

/// Above every id (UUIDv7 in hex): "no upper bound" for `id < ?`.
const TOP: &str = "~";

impl ScyllaStore {
    async fn open_record(&self, row: RecordRow) -> Result<FeedbackRecord> {
        let (
            tenant,
            id,
            time,
            kind,
            subscriber_id,
            campaign_id,
            class,
            status_code,
            diagnostic,
            reporting_mta,
            rule,
            verdict,
        ) = row;
        let keys = self.keys(&tenant, TenantKeys::key_id_of(&diagnostic)).await?;
        Ok(FeedbackRecord {
            diagnostic: open_text(&keys, &diagnostic)?,
            tenant,
            id,
            time,
            kind,
            subscriber_id,
            campaign_id,
            class,
            status_code,
            reporting_mta,
            rule,
            verdict,
            raw: Vec::new(),
        })
    }

    async fn raw_of(&self, tenant: &str, id: &str) -> Result<Vec<u8>> {
        let Some((sealed,)) = self.one::<(Vec<u8>,)>(&self.st().feedback_raw_get, (tenant, id)).await? else {
            return Ok(Vec::new());
        };
        if sealed.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.keys(tenant, TenantKeys::key_id_of(&sealed)).await?;
        inflate(&keys.open(&sealed)?)
    }

    /// A subscriber's records without their raw messages, oldest first (exports).
    pub(super) async fn feedback_of_subscriber(
        &self,
        tenant: &str,
        subscriber_id: &str,
    ) -> Result<Vec<FeedbackRecord>> {
        let index: Vec<(i32, String)> = self.scan(&self.st().feedback_index_of, (tenant, subscriber_id)).await?;
        let mut records = Vec::with_capacity(index.len());
        for (day, id) in index {
            // Expired by TTL or purged: the index entry outlived it.
            if let Some(row) =
                self.one::<NullableRow>(&self.st().feedback_get, (tenant, day, &id)).await?.and_then(complete)
            {
                records.push(self.open_record(row).await?);
            }
        }
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(records)
    }

    pub(super) async fn erase_feedback(&self, tenant: &str, subscriber_id: &str) -> Result<()> {
        let index: Vec<(i32, String)> = self.scan(&self.st().feedback_index_of, (tenant, subscriber_id)).await?;
        for (day, id) in index {
            self.exec(&self.st().feedback_delete, (tenant, day, &id)).await?;
            self.exec(&self.st().feedback_raw_delete, (tenant, &id)).await?;
        }
        self.exec(&self.st().feedback_index_drop, (tenant, subscriber_id)).await
    }

    /// Deletes one record everywhere (purge).
    async fn delete_record(&self, tenant: &str, day: i32, id: &str, subscriber_id: &str) -> Result<()> {
        self.exec(&self.st().feedback_raw_delete, (tenant, id)).await?;
        if !subscriber_id.is_empty() {
            self.exec(&self.st().feedback_index_delete, (tenant, subscriber_id, day, id)).await?;
        }
        self.exec(&self.st().feedback_delete, (tenant, day, id)).await
    }
}

#[async_trait]
impl FeedbackStore for ScyllaStore {
    async fn insert_feedback(&self, record: FeedbackRecord) -> Result<()> {
        let tenant = record.tenant.as_str();
        let keys = self.keys(tenant, None).await?;
        let (day, ttl) = (day_of(record.time), self.feedback_ttl());
        if !record.raw.is_empty() {
            self.exec(&self.st().feedback_raw_insert, (tenant, &record.id, keys.seal(&deflate(&record.raw)), ttl))
                .await?;
        }
        let r = &record;
        let values = (
            tenant,
            day,
            &r.id,
            r.time,
            &r.kind,
            &r.subscriber_id,
            &r.campaign_id,
            &r.class,
            &r.status_code,
            seal_text(&keys, &r.diagnostic),
            &r.reporting_mta,
            &r.rule,
            &r.verdict,
            ttl,
        );
        self.exec(&self.st().feedback_insert, values).await?;
        self.exec(&self.st().feedback_day_insert, (tenant, day, ttl)).await?;
        if !r.subscriber_id.is_empty() {
            self.exec(&self.st().feedback_index_insert, (tenant, &r.subscriber_id, day, &r.id, ttl)).await?;
        }
        Ok(())
    }

    /// Newest first within a day, days newest first; the token is `day/id`.
    async fn list_feedback(
        &self,
        tenant: &str,
        kind: Option<String>,
        with_raw: bool,
        page: PageRequest,
    ) -> Result<Page<FeedbackRecord>> {
        let token = page.token.clone().unwrap_or_default();
        let (from_day, after) = match token.split_once('/') {
            Some((day, id)) => (day.parse::<i32>().unwrap_or(i32::MAX), id.to_owned()),
            None => (i32::MAX, TOP.to_owned()),
        };
        let days: Vec<(i32,)> = self.scan(&self.st().feedback_days, (tenant, from_day)).await?;
        let mut rows: Vec<(i32, RecordRow)> = Vec::new();
        'days: for (day,) in days {
            let mut below = if day == from_day { after.clone() } else { TOP.to_owned() };
            loop {
                let want = if kind.is_some() { 1000 } else { (page.size + 1 - rows.len()) as i32 };
                let found: Vec<NullableRow> = self.rows(&self.st().feedback_page, (tenant, day, &below, want)).await?;
                let Some(last) = found.last() else { break };
                below = last.1.clone();
                let found = found.into_iter().filter_map(complete);
                rows.extend(
                    found.into_iter().filter(|row| kind.as_ref().is_none_or(|k| *k == row.3)).map(|r| (day, r)),
                );
                if rows.len() > page.size {
                    break 'days;
                }
            }
        }
        let more = rows.len() > page.size;
        rows.truncate(page.size);
        let next_token = if more { rows.last().map(|(day, row)| format!("{day}/{}", row.1)) } else { None };
        let mut items = Vec::with_capacity(rows.len());
        for (_, row) in rows {
            let mut record = self.open_record(row).await?;
            if with_raw {
                record.raw = self.raw_of(tenant, &record.id).await?;
            }
            items.push(record);
        }
        Ok(Page { items, next_token })
    }

    async fn update_feedback_verdict(&self, record: FeedbackRecord) -> Result<bool> {
        let (tenant, day) = (record.tenant.as_str(), day_of(record.time));
        if self
            .one::<NullableRow>(&self.st().feedback_get, (tenant, day, &record.id))
            .await?
            .and_then(complete)
            .is_none()
        {
            return Ok(false);
        }
        let keys = self.keys(tenant, None).await?;
        let r = &record;
        let values = (
            &r.kind,
            &r.class,
            &r.status_code,
            seal_text(&keys, &r.diagnostic),
            &r.reporting_mta,
            &r.rule,
            &r.verdict,
            tenant,
            day,
            &r.id,
        );
        self.exec(&self.st().feedback_update, values).await?;
        Ok(true)
    }

    async fn add_bounce_score(
        &self,
        tenant: &str,
        subscriber_id: &str,
        increment: f64,
        half_life_ms: i64,
    ) -> Result<f64> {
        let now = now_millis();
        let stored: Option<(f64, i64)> = self.one(&self.st().score_get, (tenant, subscriber_id)).await?;
        let score = decayed(stored, now, half_life_ms) + increment;
        self.exec(&self.st().score_set, (tenant, subscriber_id, score, now)).await?;
        Ok(score)
    }

    /// The TTL expires records on its own; this removes what was received
    /// before `before` now (a shortened retention, or records the TTL does
    /// not cover), whole days at a time where it can.
    async fn purge_feedback(&self, before: i64) -> Result<u64> {
        let last_day = day_of(before);
        let mut purged = 0;
        for tenant in self.key_tenants().await? {
            let days: Vec<(i32,)> = self.scan(&self.st().feedback_days, (tenant.as_str(), last_day)).await?;
            for (day,) in days {
                let rows: Vec<DayRow> = self.scan(&self.st().feedback_of_day, (tenant.as_str(), day)).await?;
                // A partial row (no time) is purged too.
                for (id, _, subscriber_id, _) in rows.iter().filter(|row| row.1.is_none_or(|time| time < before)) {
                    let subscriber_id = subscriber_id.as_deref().unwrap_or_default();
                    self.delete_record(&tenant, day, id, subscriber_id).await?;
                    purged += 1;
                }
                if day < last_day {
                    self.exec(&self.st().feedback_day_drop, (tenant.as_str(), day)).await?;
                    self.exec(&self.st().feedback_day_delete, (tenant.as_str(), day)).await?;
                }
            }
        }
        Ok(purged)
    }

    async fn record_engagement(
        &self,
        _tenant: &str,
        campaign_id: &str,
        subscriber_id: &str,
        kind: Engagement,
    ) -> Result<bool> {
        let seen: Option<(String,)> =
            self.one(&self.st().engagement_get, (campaign_id, subscriber_id, kind.as_str())).await?;
        if seen.is_some() {
            return Ok(false);
        }
        self.exec(&self.st().engagement_insert, (campaign_id, subscriber_id, kind.as_str())).await?;
        let counter = match kind {
            Engagement::Bounced => &self.st().stats_bounced,
            Engagement::Complained => &self.st().stats_complained,
            Engagement::Unsubscribed => &self.st().stats_unsubscribed,
            Engagement::Opened => &self.st().stats_opened,
            Engagement::Clicked => &self.st().stats_clicked,
        };
        self.exec(counter, (campaign_id,)).await?;
        Ok(true)
    }
}
