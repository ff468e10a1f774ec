//! Behavioral events on ScyllaDB: by (tenant, subscriber, month) for exports
//! and erasure, by (tenant, day, bucket) for the purge by event time, and by
//! (tenant, event id) for de-duplication and the published flag. Every row
//! carries the retention as TTL; the id row is written last, so an id that
//! is found always has its event.

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::{ScyllaStore, bucket_of, day_of, month_of};
use crate::crypto::TenantKeys;
use crate::sqlite::behavior::seal_properties;
use crate::*;

/// (time, event id, name, sealed properties) as read; name and properties
/// are missing only in a partial row.
pub(super) type EventRow = (i64, String, Option<String>, Option<Vec<u8>>);

/// Buckets of one day of events in the purge index.
const DAY_BUCKETS: u32 = 64;

impl ScyllaStore {
    async fn open_properties(&self, tenant: &str, sealed: &[u8]) -> Result<Map<String, Value>> {
        if sealed.is_empty() {
            return Ok(Map::new());
        }
        let keys = self.keys(tenant, TenantKeys::key_id_of(sealed)).await?;
        serde_json::from_slice(&keys.open(sealed)?).map_err(|e| StoreError::failed("decode event properties", e))
    }

    /// (month, time, event id, name, sealed properties) of a subscriber's events, oldest first.
    async fn event_rows(&self, tenant: &str, subscriber_id: &str) -> Result<Vec<(i32, i64, String, String, Vec<u8>)>> {
        let months: Vec<(i32,)> = self.scan(&self.st().event_months_of, (tenant, subscriber_id)).await?;
        let mut rows = Vec::new();
        for (month,) in months {
            let found: Vec<EventRow> = self.scan(&self.st().events_of_month, (tenant, subscriber_id, month)).await?;
            // A row without a name is what a re-seal that raced an erasure leaves: skip it.
            rows.extend(
                found
                    .into_iter()
                    .filter_map(|(time, id, name, sealed)| Some((month, time, id, name?, sealed.unwrap_or_default()))),
            );
        }
        Ok(rows)
    }

    pub(super) async fn events_of_subscriber(
        &self,
        tenant: &str,
        subscriber_id: &str,
    ) -> Result<Vec<BehaviorEventRow>> {
        let mut events = Vec::new();
        for (_, time, event_id, name, sealed) in self.event_rows(tenant, subscriber_id).await? {
            events.push(BehaviorEventRow {
                tenant: tenant.to_owned(),
                event_id,
                subscriber_id: subscriber_id.to_owned(),
                name,
                time,
                properties: self.open_properties(tenant, &sealed).await?,
            });
        }
        Ok(events)
    }

    pub(super) async fn erase_events(&self, tenant: &str, subscriber_id: &str) -> Result<()> {
        let bucket = bucket_of(subscriber_id, DAY_BUCKETS);
        let rows = self.event_rows(tenant, subscriber_id).await?;
        let mut months: Vec<i32> = rows.iter().map(|row| row.0).collect();
        months.dedup();
        for (_, time, event_id, ..) in &rows {
            self.exec(&self.st().event_id_delete, (tenant, event_id)).await?;
            let day = day_of(*time);
            self.exec(&self.st().event_day_row_delete, (tenant, day, bucket, *time, subscriber_id, event_id)).await?;
        }
        for month in months {
            self.exec(&self.st().events_month_drop, (tenant, subscriber_id, month)).await?;
        }
        self.exec(&self.st().event_months_drop, (tenant, subscriber_id)).await
    }

    async fn track_one(&self, event: BehaviorEventRow) -> Result<Tracked> {
        let tenant = event.tenant.as_str();
        let published: Option<(Option<bool>,)> = self.one(&self.st().event_id_get, (tenant, &event.event_id)).await?;
        match published {
            Some((Some(true),)) => return Ok(Tracked::Duplicate),
            Some(_) => return Ok(Tracked::Unpublished),
            None => {}
        }
        let keys = self.keys(tenant, None).await?;
        let sealed = seal_properties(&keys, &event.properties)?;
        let (sub, id, time, ttl) =
            (event.subscriber_id.as_str(), event.event_id.as_str(), event.time, self.behavior_ttl());
        let (month, day, bucket) = (month_of(time), day_of(time), bucket_of(sub, DAY_BUCKETS));
        self.exec(&self.st().event_insert, (tenant, sub, month, time, id, &event.name, sealed, ttl)).await?;
        self.exec(&self.st().event_month_insert, (tenant, sub, month, ttl)).await?;
        self.exec(&self.st().event_day_insert, (tenant, day, bucket, time, sub, id, ttl)).await?;
        self.exec(&self.st().event_days_insert, (tenant, day, ttl)).await?;
        self.exec(&self.st().event_id_insert, (tenant, id, sub, ttl)).await?;
        Ok(Tracked::New)
    }
}

#[async_trait]
impl BehaviorStore for ScyllaStore {
    /// Distinct ids run concurrently; a repeated id within the batch is
    /// looked up after its first copy was stored. Two concurrent streams
    /// carrying the same new id may both see it as new (no LWT here): both
    /// then publish it, and the projection counts it twice.
    async fn track_events(&self, events: Vec<BehaviorEventRow>) -> Result<Vec<Tracked>> {
        let total = events.len();
        let mut outcomes = vec![Tracked::Duplicate; total];
        for wave in super::waves(events, |e| format!("{}\0{}", e.tenant, e.event_id)) {
            let done = self
                .each(wave, |(position, event)| async move { Ok((position, self.track_one(event).await?)) })
                .await?;
            for (position, tracked) in done {
                outcomes[position] = tracked;
            }
        }
        Ok(outcomes)
    }

    async fn mark_published(&self, tenant: &str, event_ids: Vec<String>) -> Result<()> {
        let ttl = self.behavior_ttl();
        self.each(event_ids, |id| async move { self.exec(&self.st().event_id_published, (ttl, tenant, id)).await })
            .await?;
        Ok(())
    }

    /// The TTL expires events kept `behavior.retention_days` after they were
    /// stored; this removes those that *happened* before `before`.
    async fn purge_events(&self, before: i64) -> Result<u64> {
        let last_day = day_of(before);
        let mut purged = 0;
        for tenant in self.key_tenants().await? {
            let tenant = tenant.as_str();
            let days: Vec<(i32,)> = self.scan(&self.st().event_days, (tenant, last_day)).await?;
            for (day,) in days {
                for bucket in 0..DAY_BUCKETS as i32 {
                    let rows: Vec<(i64, String, String)> =
                        self.scan(&self.st().event_day_rows, (tenant, day, bucket, before)).await?;
                    for (time, sub, id) in &rows {
                        self.exec(&self.st().event_delete, (tenant, sub, month_of(*time), *time, id)).await?;
                        self.exec(&self.st().event_id_delete, (tenant, id)).await?;
                        self.exec(&self.st().event_day_row_delete, (tenant, day, bucket, *time, sub, id)).await?;
                    }
                    purged += rows.len() as u64;
                    if day < last_day {
                        self.exec(&self.st().event_day_drop, (tenant, day, bucket)).await?;
                    }
                }
                if day < last_day {
                    self.exec(&self.st().event_days_delete, (tenant, day)).await?;
                }
            }
        }
        Ok(purged)
    }
}
