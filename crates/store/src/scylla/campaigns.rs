//! Templates, campaigns, outcomes and the send ledger on ScyllaDB. A
//! campaign's definition is one JSON value (written once); its state moves
//! by compare-and-set (LWT) so a pause and a completion cannot both win; its
//! counters are a counter row; the ledger's claims are LWT.

use std::time::Duration;

use ::scylla::value::Counter;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::access::keyset;
use super::{ScyllaStore, bucket_of};
use crate::sqlite::page_of;
use crate::*;

/// Buckets of a campaign's outcome rows.
const OUTCOME_BUCKETS: u32 = 256;

/// How long a campaign stays in the by-state index once it can no longer
/// change (completed, cancelled): that partition would otherwise only grow.
fn state_index_ttl(state: CampaignState) -> i32 {
    match state {
        CampaignState::Completed | CampaignState::Cancelled => 30 * 86_400,
        _ => 0,
    }
}

/// The fields of a campaign fixed at creation.
#[derive(Serialize, Deserialize)]
struct Definition {
    display_name: String,
    template_id: String,
    template_version: i64,
    list_id: String,
    from_address: String,
    from_name: String,
    reply_to: String,
    max_messages_per_second: f64,
    stream: String,
    postal_address: String,
    segment_id: String,
    send_at: i64,
    send_window: String,
}

/// A campaign row as read. Every column but the key may be null: an UPDATE
/// of progress for a campaign id that does not exist (an event from another
/// deployment) creates a row holding only that column, which reads as absent.
type CampaignRow = (
    String,
    String,
    Option<Vec<u8>>,
    Option<i32>,
    Option<i64>,
    Option<String>,
    Option<bool>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);
type StatsRow = (
    Option<Counter>,
    Option<Counter>,
    Option<Counter>,
    Option<Counter>,
    Option<Counter>,
    Option<Counter>,
    Option<Counter>,
    Option<Counter>,
);
type TemplateRow = (String, String, i64, String, String, String, String, i64);

fn template_from(row: TemplateRow) -> Template {
    let (tenant, id, version, display_name, subject, html_body, text_body, create_time) = row;
    Template { tenant, id, version, display_name, subject, html_body, text_body, create_time }
}

fn count(value: Option<Counter>) -> i64 {
    value.map_or(0, |Counter(n)| n)
}

impl ScyllaStore {
    async fn campaign_from(&self, row: CampaignRow) -> Result<Option<Campaign>> {
        let (
            tenant,
            id,
            definition,
            state,
            recipients,
            fanout_cursor,
            fanout_done,
            create_time,
            start_time,
            complete_time,
            progress_time,
        ) = row;
        let (Some(definition), Some(state)) = (definition, state) else { return Ok(None) };
        let d: Definition = serde_json::from_slice(&definition)
            .map_err(|e| StoreError::Backend(format!("campaign {id}: stored definition: {e}")))?;
        let stats: Option<StatsRow> = self.one(&self.st().stats_get, (&id,)).await?;
        let (delivered, failed, deferred, bounced, complained, unsubscribed, opened, clicked) =
            stats.unwrap_or_default();
        Ok(Some(Campaign {
            tenant,
            id,
            display_name: d.display_name,
            template_id: d.template_id,
            template_version: d.template_version,
            list_id: d.list_id,
            from_address: d.from_address,
            from_name: d.from_name,
            reply_to: d.reply_to,
            max_messages_per_second: d.max_messages_per_second,
            stream: d.stream,
            postal_address: d.postal_address,
            segment_id: d.segment_id,
            send_at: d.send_at,
            send_window: d.send_window,
            state: CampaignState::from_i64(state as i64),
            stats: CampaignStats {
                recipients: recipients.unwrap_or_default(),
                delivered: count(delivered),
                failed: count(failed),
                deferred: count(deferred),
                bounced: count(bounced),
                complained: count(complained),
                unsubscribed: count(unsubscribed),
                opened: count(opened),
                clicked: count(clicked),
            },
            fanout_cursor: fanout_cursor.unwrap_or_default(),
            fanout_done: fanout_done.unwrap_or_default(),
            create_time: create_time.unwrap_or_default(),
            start_time: start_time.unwrap_or_default(),
            complete_time: complete_time.unwrap_or_default(),
            progress_time: progress_time.unwrap_or_default(),
        }))
    }

    async fn campaign(&self, tenant: &str, id: &str) -> Result<Option<Campaign>> {
        match self.one::<CampaignRow>(&self.st().campaign_get, (tenant, id)).await? {
            Some(row) => self.campaign_from(row).await,
            None => Ok(None),
        }
    }

    async fn must_campaign(&self, tenant: &str, id: &str) -> Result<Campaign> {
        self.campaign(tenant, id).await?.ok_or_else(|| StoreError::NotFound(format!("campaigns/{id}")))
    }

    /// Compare-and-set of the state; keeps the by-state index in step (the
    /// new entry first: a crash leaves a stale entry, which readers skip).
    async fn set_state(&self, campaign: &Campaign, to: CampaignState, start: i64, complete: i64) -> Result<bool> {
        let (tenant, id) = (campaign.tenant.as_str(), campaign.id.as_str());
        let values = (to as i32, start, complete, tenant, id, campaign.state as i32);
        if !self.lwt(&self.st().campaign_set_state, values).await?.applied {
            return Ok(false);
        }
        self.exec(&self.st().state_index_insert, (to as i32, tenant, id, state_index_ttl(to))).await?;
        if campaign.state != to {
            self.exec(&self.st().state_index_delete, (campaign.state as i32, tenant, id)).await?;
        }
        Ok(true)
    }

    /// Moves a sending campaign to COMPLETED once fan-out is done and every
    /// recipient has an outcome. Exactly one caller sees `true`.
    async fn complete_if_finished(&self, tenant: &str, id: &str) -> Result<bool> {
        // An outcome for a campaign this store does not know completes nothing.
        let Some(campaign) = self.campaign(tenant, id).await? else { return Ok(false) };
        let finished = campaign.state == CampaignState::Sending
            && campaign.fanout_done
            && campaign.stats.delivered + campaign.stats.failed >= campaign.stats.recipients;
        if !finished {
            return Ok(false);
        }
        self.set_state(&campaign, CampaignState::Completed, campaign.start_time, now_millis()).await
    }
}

impl ScyllaStore {
    /// Writes an outcome row without counting it: what an outage between the
    /// two writes of `record_outcome` leaves behind (tests only).
    #[cfg(test)]
    pub(crate) async fn outcome_row_without_counter(&self, campaign_id: &str, subscriber_id: &str) -> Result<()> {
        let bucket = bucket_of(subscriber_id, OUTCOME_BUCKETS);
        self.exec(&self.st().outcome_insert, (campaign_id, bucket, subscriber_id, "delivered")).await
    }
}

#[async_trait]
impl CampaignStore for ScyllaStore {
    async fn create_template(&self, template: Template, request_id: Option<String>) -> Result<Template> {
        if let Some(id) = self.remembered(&template.tenant, &request_id, "template").await? {
            return self
                .get_template(&template.tenant, &id)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("templates/{id}")));
        }
        let t = &template;
        let values =
            (&t.tenant, &t.id, t.version, &t.display_name, &t.subject, &t.html_body, &t.text_body, t.create_time);
        self.exec(&self.st().template_insert, values).await?;
        self.remember(&template.tenant, &request_id, "template", &template.id).await?;
        Ok(template)
    }

    async fn get_template(&self, tenant: &str, template_id: &str) -> Result<Option<Template>> {
        Ok(self.one::<TemplateRow>(&self.st().template_get, (tenant, template_id)).await?.map(template_from))
    }

    async fn list_templates(&self, tenant: &str, page: PageRequest) -> Result<Page<Template>> {
        let (token, limit) = keyset(&page);
        let rows: Vec<TemplateRow> = self.rows(&self.st().template_page, (tenant, token, limit)).await?;
        Ok(page_of(rows.into_iter().map(template_from).collect(), page.size, |t| &t.id))
    }

    async fn create_campaign(&self, campaign: Campaign, request_id: Option<String>) -> Result<Campaign> {
        let tenant = campaign.tenant.as_str();
        if let Some(id) = self.remembered(tenant, &request_id, "campaign").await? {
            return self.must_campaign(tenant, &id).await;
        }
        let c = &campaign;
        let definition = serde_json::to_vec(&Definition {
            display_name: c.display_name.clone(),
            template_id: c.template_id.clone(),
            template_version: c.template_version,
            list_id: c.list_id.clone(),
            from_address: c.from_address.clone(),
            from_name: c.from_name.clone(),
            reply_to: c.reply_to.clone(),
            max_messages_per_second: c.max_messages_per_second,
            stream: c.stream.clone(),
            postal_address: c.postal_address.clone(),
            segment_id: c.segment_id.clone(),
            send_at: c.send_at,
            send_window: c.send_window.clone(),
        })
        .map_err(|e| StoreError::failed("encode campaign", e))?;
        self.exec(&self.st().campaign_tenant_insert, (&c.id, tenant)).await?;
        self.exec(&self.st().campaign_insert, (tenant, &c.id, definition, c.state as i32, c.create_time)).await?;
        self.exec(&self.st().state_index_insert, (c.state as i32, tenant, &c.id, state_index_ttl(c.state))).await?;
        self.remember(tenant, &request_id, "campaign", &c.id).await?;
        self.must_campaign(tenant, &c.id).await
    }

    async fn get_campaign(&self, tenant: &str, campaign_id: &str) -> Result<Option<Campaign>> {
        self.campaign(tenant, campaign_id).await
    }

    async fn list_campaigns(&self, tenant: &str, page: PageRequest) -> Result<Page<Campaign>> {
        let (token, limit) = keyset(&page);
        let rows: Vec<CampaignRow> = self.rows(&self.st().campaign_page, (tenant, token, limit)).await?;
        let campaigns = self.each(rows, |row| self.campaign_from(row)).await?;
        Ok(page_of(campaigns.into_iter().flatten().collect(), page.size, |c| &c.id))
    }

    async fn transition_campaign(
        &self,
        tenant: &str,
        campaign_id: &str,
        from: &[CampaignState],
        to: CampaignState,
    ) -> Result<Option<Campaign>> {
        // Retried when another writer changed the state between our read and our CAS.
        for _ in 0..5 {
            let campaign = self.must_campaign(tenant, campaign_id).await?;
            if !from.contains(&campaign.state) {
                return Ok(None);
            }
            let now = now_millis();
            let start =
                if to == CampaignState::Sending && campaign.start_time == 0 { now } else { campaign.start_time };
            let complete = if matches!(to, CampaignState::Completed | CampaignState::Cancelled) {
                now
            } else {
                campaign.complete_time
            };
            if self.set_state(&campaign, to, start, complete).await? {
                // Resumed after every recipient got an outcome while paused: done now.
                self.complete_if_finished(tenant, campaign_id).await?;
                return self.campaign(tenant, campaign_id).await;
            }
        }
        Err(StoreError::Conflict(format!("campaigns/{campaign_id}: its state keeps changing; try again")))
    }

    async fn save_fanout(
        &self,
        tenant: &str,
        campaign_id: &str,
        cursor: &str,
        added: i64,
        done: bool,
    ) -> Result<Campaign> {
        let campaign = self.must_campaign(tenant, campaign_id).await?;
        let recipients = campaign.stats.recipients + added;
        self.exec(&self.st().campaign_set_fanout, (cursor, recipients, done, tenant, campaign_id)).await?;
        self.complete_if_finished(tenant, campaign_id).await?;
        self.must_campaign(tenant, campaign_id).await
    }

    async fn record_outcome(
        &self,
        tenant: &str,
        campaign_id: &str,
        subscriber_id: &str,
        outcome: Outcome,
    ) -> Result<OutcomeRecorded> {
        let bucket = bucket_of(subscriber_id, OUTCOME_BUCKETS);
        let seen: Option<(String,)> = self.one(&self.st().outcome_get, (campaign_id, bucket, subscriber_id)).await?;
        if seen.is_some() {
            return Ok(OutcomeRecorded { recorded: false, completed_campaign: false });
        }
        let (name, counter) = match outcome {
            Outcome::Delivered => ("delivered", &self.st().stats_delivered),
            Outcome::Failed => ("failed", &self.st().stats_failed),
        };
        self.exec(&self.st().outcome_insert, (campaign_id, bucket, subscriber_id, name)).await?;
        self.exec(counter, (campaign_id,)).await?;
        self.exec(&self.st().campaign_set_progress, (now_millis(), tenant, campaign_id)).await?;
        let completed_campaign = self.complete_if_finished(tenant, campaign_id).await?;
        Ok(OutcomeRecorded { recorded: true, completed_campaign })
    }

    async fn record_deferral(&self, tenant: &str, campaign_id: &str) -> Result<()> {
        self.exec(&self.st().stats_deferred, (campaign_id,)).await?;
        self.touch_progress(tenant, campaign_id).await
    }

    async fn recount_outcomes(&self, tenant: &str, campaign_id: &str) -> Result<bool> {
        let Some(campaign) = self.campaign(tenant, campaign_id).await? else { return Ok(false) };
        let buckets: Vec<i32> = (0..OUTCOME_BUCKETS as i32).collect();
        let counts = self
            .each(buckets, |bucket| async move {
                let rows: Vec<(Option<String>,)> = self.scan(&self.st().outcome_bucket, (campaign_id, bucket)).await?;
                let delivered = rows.iter().filter(|(o,)| o.as_deref() == Some("delivered")).count() as i64;
                Ok((delivered, rows.len() as i64 - delivered))
            })
            .await?;
        let (delivered, failed) = counts.iter().fold((0, 0), |(d, f), (bd, bf)| (d + bd, f + bf));
        // Counters only grow and an extra increment cannot be taken back, so
        // only a shortfall is repaired (never lowered: a racing outcome may
        // have counted itself between the scan and here).
        let missing_delivered = delivered - campaign.stats.delivered;
        let missing_failed = failed - campaign.stats.failed;
        if missing_delivered > 0 {
            self.exec(&self.st().stats_add_delivered, (::scylla::value::Counter(missing_delivered), campaign_id))
                .await?;
        }
        if missing_failed > 0 {
            self.exec(&self.st().stats_add_failed, (::scylla::value::Counter(missing_failed), campaign_id)).await?;
        }
        if missing_delivered > 0 || missing_failed > 0 {
            tracing::warn!(
                campaign = campaign_id,
                missing_delivered,
                missing_failed,
                "campaign counters fell short of the outcome records (a counter update failed): repaired"
            );
        }
        self.complete_if_finished(tenant, campaign_id).await
    }

    async fn touch_progress(&self, tenant: &str, campaign_id: &str) -> Result<()> {
        self.exec(&self.st().campaign_set_progress, (now_millis(), tenant, campaign_id)).await
    }

    async fn without_outcome(&self, campaign_id: &str, subscriber_ids: &[String]) -> Result<Vec<String>> {
        let found = self
            .each(subscriber_ids.to_vec(), |id| async move {
                let bucket = bucket_of(&id, OUTCOME_BUCKETS);
                let row: Option<(String,)> = self.one(&self.st().outcome_get, (campaign_id, bucket, &id)).await?;
                Ok(row.is_none().then_some(id))
            })
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    async fn campaigns_in_state(&self, state: CampaignState, limit: usize) -> Result<Vec<Campaign>> {
        // Read a little more than asked: stale entries (a crash between the
        // two index writes) are dropped here.
        let want = (limit.saturating_mul(2)).clamp(1, 10_000) as i32;
        let rows: Vec<(String, String)> = self.rows(&self.st().state_index_page, (state as i32, want)).await?;
        let campaigns = self.each(rows, |(tenant, id)| async move { self.campaign(&tenant, &id).await }).await?;
        let mut found: Vec<Campaign> = campaigns.into_iter().flatten().filter(|c| c.state == state).collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found.truncate(limit);
        Ok(found)
    }

    async fn campaign_tenant(&self, campaign_id: &str) -> Result<Option<String>> {
        Ok(self.one::<(String,)>(&self.st().campaign_tenant_get, (campaign_id,)).await?.map(|(t,)| t))
    }
}

#[async_trait]
impl SendLedger for ScyllaStore {
    async fn claim(&self, campaign_id: &str, subscriber_id: &str, owner: &str, lease: Duration) -> Result<Claim> {
        let now = now_millis();
        let lease_until = now + lease.as_millis() as i64;
        // A failed INSERT ... IF NOT EXISTS returns the whole current row; a
        // failed take-over means someone else moved first, so look again.
        for _ in 0..5 {
            let seen = self.lwt(&self.st().ledger_claim, (campaign_id, subscriber_id, owner, lease_until, now)).await?;
            if seen.applied {
                self.exec(&self.st().delivery_upsert, (subscriber_id, campaign_id, "claimed", "", now)).await?;
                return Ok(Claim::Acquired { takeover: false });
            }
            let (state, holder, until) = (seen.text("state"), seen.text("owner"), seen.bigint("lease_until"));
            if state != "claimed" {
                let state = if state == "sent" { LedgerState::Sent } else { LedgerState::Failed };
                return Ok(Claim::Finished { state, message_id: seen.text("message_id") });
            }
            if holder != owner && until > now {
                return Ok(Claim::Held { owner: holder, lease_until: until });
            }
            let values = (owner, lease_until, now, campaign_id, subscriber_id, holder.as_str(), until);
            if self.lwt(&self.st().ledger_takeover, values).await?.applied {
                return Ok(Claim::Acquired { takeover: true });
            }
        }
        Err(StoreError::Conflict(format!("claim on {campaign_id}/{subscriber_id} keeps changing hands; retry later")))
    }

    async fn finish(
        &self,
        campaign_id: &str,
        subscriber_id: &str,
        owner: &str,
        state: LedgerState,
        message_id: &str,
    ) -> Result<()> {
        let now = now_millis();
        let values = (state.as_str(), message_id, now, campaign_id, subscriber_id, owner);
        if !self.lwt(&self.st().ledger_finish, values).await?.applied {
            return Err(StoreError::Conflict(format!(
                "claim on {campaign_id}/{subscriber_id} is no longer held by {owner}"
            )));
        }
        self.exec(&self.st().delivery_upsert, (subscriber_id, campaign_id, state.as_str(), message_id, now)).await
    }

    async fn release(&self, campaign_id: &str, subscriber_id: &str, owner: &str) -> Result<()> {
        if self.lwt(&self.st().ledger_release, (campaign_id, subscriber_id, owner)).await?.applied {
            self.exec(&self.st().delivery_delete, (subscriber_id, campaign_id)).await?;
        }
        Ok(())
    }
}
