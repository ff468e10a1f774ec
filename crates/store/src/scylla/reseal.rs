//! Key management on ScyllaDB: master-key re-wrapping, data-key rotation,
//! and re-encryption of the rows sealed with an older data key. Each
//! `reencrypt` call walks the tenant's indexes from the start and re-seals
//! the first `limit` stale values it meets (a walk reads the tenant's rows,
//! so prefer large limits on large tenants).

use async_trait::async_trait;

use super::{BUCKETS, ScyllaStore, day_of};
use crate::crypto::TenantKeys;
use crate::*;

/// Counts re-sealed values and says when the limit is reached.
struct Budget {
    done: u64,
    limit: u64,
}

impl Budget {
    fn full(&self) -> bool {
        self.done >= self.limit
    }
}

impl ScyllaStore {
    /// `sealed` opened and sealed again with the active key, or `None` when
    /// it is empty or already sealed with it.
    async fn resealed(&self, tenant: &str, active: &TenantKeys, sealed: &[u8]) -> Result<Option<Vec<u8>>> {
        match TenantKeys::key_id_of(sealed) {
            None => Ok(None),
            Some(id) if id == active.active_id => Ok(None),
            Some(id) => {
                let keys = self.keys(tenant, Some(id)).await?;
                Ok(Some(active.seal(&keys.open(sealed)?)))
            }
        }
    }

    async fn reseal_subscriber(&self, tenant: &str, keys: &TenantKeys, id: &str, budget: &mut Budget) -> Result<()> {
        if let Some((_, pii, ..)) = self.subscriber_row(tenant, id).await?
            && let Some(new) = self.resealed(tenant, keys, &pii).await?
        {
            self.exec(&self.st().subscriber_reseal, (new, tenant, id)).await?;
            budget.done += 1;
        }
        let consent: Vec<super::subscribers::ConsentRow> = self.scan(&self.st().consent_of, (tenant, id)).await?;
        for (time, seq, .., sealed) in consent {
            let sealed = sealed.unwrap_or_default();
            if budget.full() {
                return Ok(());
            }
            if let Some(new) = self.resealed(tenant, keys, &sealed).await? {
                self.exec(&self.st().consent_reseal, (new, tenant, id, time, seq)).await?;
                budget.done += 1;
            }
        }
        let months: Vec<(i32,)> = self.scan(&self.st().event_months_of, (tenant, id)).await?;
        for (month,) in months {
            let events: Vec<super::behavior::EventRow> =
                self.scan(&self.st().events_of_month, (tenant, id, month)).await?;
            for (time, event_id, _, sealed) in events {
                let sealed = sealed.unwrap_or_default();
                if budget.full() {
                    return Ok(());
                }
                if let Some(new) = self.resealed(tenant, keys, &sealed).await? {
                    self.exec(&self.st().event_reseal, (new, tenant, id, month, time, &event_id)).await?;
                    budget.done += 1;
                }
            }
        }
        Ok(())
    }

    async fn reseal_subscribers(&self, tenant: &str, keys: &TenantKeys, budget: &mut Budget) -> Result<()> {
        for bucket in 0..BUCKETS as i32 {
            let mut after = String::new();
            loop {
                let ids: Vec<(String,)> =
                    self.rows(&self.st().tenant_member_page, (tenant, bucket, &after, 1000)).await?;
                let Some((last,)) = ids.last().cloned() else { break };
                for (id,) in ids {
                    self.reseal_subscriber(tenant, keys, &id, budget).await?;
                    if budget.full() {
                        return Ok(());
                    }
                }
                after = last;
            }
        }
        Ok(())
    }

    async fn reseal_suppressions(&self, tenant: &str, keys: &TenantKeys, budget: &mut Budget) -> Result<()> {
        for bucket in 0..BUCKETS as i32 {
            let (mut hash, mut list) = (String::new(), String::new());
            loop {
                let rows: Vec<(String, String)> =
                    self.rows(&self.st().suppression_index_page, (tenant, bucket, &hash, &list, 1000)).await?;
                let Some(last) = rows.last().cloned() else { break };
                for (email_hash, list_id) in rows {
                    let row = self.suppression_row(tenant, &email_hash, &list_id).await?;
                    if let Some((_, _, sealed, ..)) = row
                        && let Some(new) = self.resealed(tenant, keys, &sealed).await?
                    {
                        self.exec(&self.st().suppression_reseal, (new, tenant, &email_hash, &list_id)).await?;
                        budget.done += 1;
                        if budget.full() {
                            return Ok(());
                        }
                    }
                }
                (hash, list) = last;
            }
        }
        Ok(())
    }

    async fn reseal_rest(&self, tenant: &str, keys: &TenantKeys, budget: &mut Budget) -> Result<()> {
        let jobs: Vec<(String, Vec<u8>)> = self.scan(&self.st().import_jobs_of, (tenant,)).await?;
        for (request_id, sealed) in jobs {
            if budget.full() {
                return Ok(());
            }
            if let Some(new) = self.resealed(tenant, keys, &sealed).await? {
                self.exec(&self.st().import_job_upsert, (tenant, &request_id, new, now_millis())).await?;
                budget.done += 1;
            }
        }
        let days: Vec<(i32,)> = self.scan(&self.st().feedback_days, (tenant, day_of(i64::MAX))).await?;
        for (day,) in days {
            let rows: Vec<super::feedback::DayRow> = self.scan(&self.st().feedback_of_day, (tenant, day)).await?;
            for (id, _, _, diagnostic) in rows {
                let diagnostic = diagnostic.unwrap_or_default();
                if budget.full() {
                    return Ok(());
                }
                if let Some(new) = self.resealed(tenant, keys, &diagnostic).await? {
                    self.exec(&self.st().feedback_reseal, (new, tenant, day, &id)).await?;
                    budget.done += 1;
                }
                let raw: Option<(Vec<u8>,)> = self.one(&self.st().feedback_raw_get, (tenant, &id)).await?;
                if let Some((sealed,)) = raw
                    && let Some(new) = self.resealed(tenant, keys, &sealed).await?
                {
                    self.exec(&self.st().feedback_raw_reseal, (new, tenant, &id)).await?;
                    budget.done += 1;
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl KeyManagement for ScyllaStore {
    async fn rewrap_keys(&self) -> Result<u64> {
        self.rewrap_all().await
    }

    async fn rotate_data_key(&self, tenant: &str) -> Result<String> {
        self.rotate_key(tenant).await
    }

    async fn reencrypt(&self, tenant: &str, limit: usize) -> Result<u64> {
        let keys = self.keys(tenant, None).await?;
        let mut budget = Budget { done: 0, limit: limit as u64 };
        self.reseal_subscribers(tenant, &keys, &mut budget).await?;
        if !budget.full() {
            self.reseal_suppressions(tenant, &keys, &mut budget).await?;
        }
        if !budget.full() {
            self.reseal_rest(tenant, &keys, &mut budget).await?;
        }
        Ok(budget.done)
    }
}
