//! Templates, campaigns, outcomes and the send ledger.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Transaction, params};

use super::{
    campaign_from_row, get_campaign_tx, get_template_tx, must_get_campaign, paged, remember, remembered,
    template_from_row,
};
use crate::*;

#[async_trait]
impl CampaignStore for SqliteStore {
    async fn create_template(&self, template: Template, request_id: Option<String>) -> Result<Template> {
        self.tx(move |tx| {
            if let Some(id) = remembered(tx, &template.tenant, &request_id, "template")? {
                return get_template_tx(tx, &template.tenant, &id)?.ok_or_else(|| StoreError::NotFound(format!("templates/{id}")));
            }
            tx.execute(
                "INSERT INTO templates (tenant, id, version, display_name, subject, html_body, text_body, create_time) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![template.tenant, template.id, template.version, template.display_name, template.subject, template.html_body, template.text_body, template.create_time],
            )?;
            remember(tx, &template.tenant, &request_id, "template", &template.id)?;
            Ok(template)
        })
        .await
    }

    async fn get_template(&self, tenant: &str, template_id: &str) -> Result<Option<Template>> {
        let (tenant, id) = (tenant.to_owned(), template_id.to_owned());
        self.tx(move |tx| get_template_tx(tx, &tenant, &id)).await
    }

    async fn list_templates(&self, tenant: &str, page: PageRequest) -> Result<Page<Template>> {
        let tenant = tenant.to_owned();
        self.tx(move |tx| {
            paged(
                tx,
                "SELECT * FROM templates WHERE tenant = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
                &tenant,
                None,
                &page,
                template_from_row,
                |t| &t.id,
            )
        })
        .await
    }

    async fn create_campaign(&self, campaign: Campaign, request_id: Option<String>) -> Result<Campaign> {
        self.tx(move |tx| {
            if let Some(id) = remembered(tx, &campaign.tenant, &request_id, "campaign")? {
                return must_get_campaign(tx, &campaign.tenant, &id);
            }
            tx.execute(
                "INSERT INTO campaigns (tenant, id, display_name, template_id, template_version, list_id, from_address, from_name, reply_to, state, create_time, max_messages_per_second, stream, postal_address, send_at, send_window, segment_id) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                params![campaign.tenant, campaign.id, campaign.display_name, campaign.template_id, campaign.template_version, campaign.list_id,
                    campaign.from_address, campaign.from_name, campaign.reply_to, campaign.state as i64, campaign.create_time,
                    campaign.max_messages_per_second, campaign.stream, campaign.postal_address, campaign.send_at, campaign.send_window, campaign.segment_id],
            )?;
            remember(tx, &campaign.tenant, &request_id, "campaign", &campaign.id)?;
            must_get_campaign(tx, &campaign.tenant, &campaign.id)
        })
        .await
    }

    async fn get_campaign(&self, tenant: &str, campaign_id: &str) -> Result<Option<Campaign>> {
        let (tenant, id) = (tenant.to_owned(), campaign_id.to_owned());
        self.tx(move |tx| get_campaign_tx(tx, &tenant, &id)).await
    }

    async fn list_campaigns(&self, tenant: &str, page: PageRequest) -> Result<Page<Campaign>> {
        let tenant = tenant.to_owned();
        self.tx(move |tx| {
            paged(
                tx,
                "SELECT * FROM campaigns WHERE tenant = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
                &tenant,
                None,
                &page,
                campaign_from_row,
                |c| &c.id,
            )
        })
        .await
    }

    async fn transition_campaign(
        &self,
        tenant: &str,
        campaign_id: &str,
        from: &[CampaignState],
        to: CampaignState,
    ) -> Result<Option<Campaign>> {
        let (tenant, id, from) = (tenant.to_owned(), campaign_id.to_owned(), from.to_vec());
        self.tx(move |tx| {
            let campaign = must_get_campaign(tx, &tenant, &id)?;
            if !from.contains(&campaign.state) {
                return Ok(None);
            }
            let now = now_millis();
            tx.execute(
                "UPDATE campaigns SET state = ?3, \
                 start_time = CASE WHEN ?3 = 2 AND start_time = 0 THEN ?4 ELSE start_time END, \
                 complete_time = CASE WHEN ?3 IN (4, 5) THEN ?4 ELSE complete_time END \
                 WHERE tenant = ?1 AND id = ?2",
                params![tenant, id, to as i64, now],
            )?;
            // Resumed after every recipient got an outcome while paused: done now.
            complete_if_finished(tx, &tenant, &id)?;
            get_campaign_tx(tx, &tenant, &id)
        })
        .await
    }

    async fn save_fanout(
        &self,
        tenant: &str,
        campaign_id: &str,
        cursor: &str,
        added: i64,
        done: bool,
    ) -> Result<Campaign> {
        let (tenant, id, cursor) = (tenant.to_owned(), campaign_id.to_owned(), cursor.to_owned());
        self.tx(move |tx| {
            tx.execute(
                "UPDATE campaigns SET fanout_cursor = ?3, recipients = recipients + ?4, fanout_done = ?5 WHERE tenant = ?1 AND id = ?2",
                params![tenant, id, cursor, added, done as i64],
            )?;
            complete_if_finished(tx, &tenant, &id)?;
            must_get_campaign(tx, &tenant, &id)
        })
        .await
    }

    async fn record_outcome(
        &self,
        tenant: &str,
        campaign_id: &str,
        subscriber_id: &str,
        outcome: Outcome,
    ) -> Result<OutcomeRecorded> {
        let (tenant, id, subscriber) = (tenant.to_owned(), campaign_id.to_owned(), subscriber_id.to_owned());
        self.tx(move |tx| {
            let (name, column) = match outcome {
                Outcome::Delivered => ("delivered", "delivered"),
                Outcome::Failed => ("failed", "failed"),
            };
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO campaign_outcomes (campaign_id, subscriber_id, outcome) VALUES (?1, ?2, ?3)",
                params![id, subscriber, name],
            )? > 0;
            let mut completed_campaign = false;
            if inserted {
                tx.execute(
                    &format!(
                        "UPDATE campaigns SET {column} = {column} + 1, progress_time = ?3 WHERE tenant = ?1 AND id = ?2"
                    ),
                    params![tenant, id, now_millis()],
                )?;
                completed_campaign = complete_if_finished(tx, &tenant, &id)?;
            }
            Ok(OutcomeRecorded { recorded: inserted, completed_campaign })
        })
        .await
    }

    async fn record_deferral(&self, tenant: &str, campaign_id: &str) -> Result<()> {
        let (tenant, id) = (tenant.to_owned(), campaign_id.to_owned());
        self.tx(move |tx| {
            tx.execute(
                "UPDATE campaigns SET deferred = deferred + 1, progress_time = ?3 WHERE tenant = ?1 AND id = ?2",
                params![tenant, id, now_millis()],
            )?;
            Ok(())
        })
        .await
    }

    async fn recount_outcomes(&self, tenant: &str, campaign_id: &str) -> Result<bool> {
        // Outcome rows and counters change in one transaction here, so they
        // always agree: only the completion check is left to do.
        let (tenant, id) = (tenant.to_owned(), campaign_id.to_owned());
        self.tx(move |tx| complete_if_finished(tx, &tenant, &id)).await
    }

    async fn touch_progress(&self, tenant: &str, campaign_id: &str) -> Result<()> {
        let (tenant, id) = (tenant.to_owned(), campaign_id.to_owned());
        self.tx(move |tx| {
            tx.execute(
                "UPDATE campaigns SET progress_time = ?3 WHERE tenant = ?1 AND id = ?2",
                params![tenant, id, now_millis()],
            )?;
            Ok(())
        })
        .await
    }

    async fn without_outcome(&self, campaign_id: &str, subscriber_ids: &[String]) -> Result<Vec<String>> {
        let (campaign, ids) = (campaign_id.to_owned(), subscriber_ids.to_vec());
        self.tx(move |tx| {
            let mut statement =
                tx.prepare_cached("SELECT 1 FROM campaign_outcomes WHERE campaign_id = ?1 AND subscriber_id = ?2")?;
            let mut missing = Vec::new();
            for id in ids {
                if !statement.exists(params![campaign, id])? {
                    missing.push(id);
                }
            }
            Ok(missing)
        })
        .await
    }

    async fn campaigns_in_state(&self, state: CampaignState, limit: usize) -> Result<Vec<Campaign>> {
        self.tx(move |tx| {
            let mut statement = tx.prepare_cached("SELECT * FROM campaigns WHERE state = ?1 ORDER BY id LIMIT ?2")?;
            let rows = statement.query_map(params![state as i64, limit as i64], campaign_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn campaign_tenant(&self, campaign_id: &str) -> Result<Option<String>> {
        let id = campaign_id.to_owned();
        self.tx(move |tx| {
            Ok(tx
                .query_row("SELECT tenant FROM campaigns WHERE id = ?1 LIMIT 1", params![id], |row| row.get(0))
                .optional()?)
        })
        .await
    }
}

/// Moves a sending campaign to COMPLETED once fan-out is done and every
/// recipient has a final outcome.
fn complete_if_finished(tx: &Transaction<'_>, tenant: &str, id: &str) -> Result<bool> {
    let changed = tx.execute(
        "UPDATE campaigns SET state = 4, complete_time = ?3 WHERE tenant = ?1 AND id = ?2 \
         AND state = 2 AND fanout_done = 1 AND delivered + failed >= recipients",
        params![tenant, id, now_millis()],
    )?;
    Ok(changed > 0)
}

#[async_trait]
impl SendLedger for SqliteStore {
    async fn claim(&self, campaign_id: &str, subscriber_id: &str, owner: &str, lease: Duration) -> Result<Claim> {
        let (campaign, subscriber, owner) = (campaign_id.to_owned(), subscriber_id.to_owned(), owner.to_owned());
        self.tx(move |tx| {
            let now = now_millis();
            let lease_until = now + lease.as_millis() as i64;
            let current: Option<(String, String, i64, String)> = tx
                .query_row(
                    "SELECT state, owner, lease_until, message_id FROM send_ledger WHERE campaign_id = ?1 AND subscriber_id = ?2",
                    params![campaign, subscriber],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                )
                .optional()?;
            let takeover = match current {
                None => false,
                Some((state, _, _, message_id)) if state != "claimed" => {
                    let state = if state == "sent" { LedgerState::Sent } else { LedgerState::Failed };
                    return Ok(Claim::Finished { state, message_id });
                }
                Some((_, holder, until, _)) if holder != owner && until > now => {
                    return Ok(Claim::Held { owner: holder, lease_until: until });
                }
                Some(_) => true,
            };
            tx.execute(
                "INSERT INTO send_ledger (campaign_id, subscriber_id, state, owner, lease_until, message_id, update_time) \
                 VALUES (?1, ?2, 'claimed', ?3, ?4, '', ?5) \
                 ON CONFLICT (campaign_id, subscriber_id) DO UPDATE SET owner = ?3, lease_until = ?4, update_time = ?5",
                params![campaign, subscriber, owner, lease_until, now],
            )?;
            Ok(Claim::Acquired { takeover })
        })
        .await
    }

    async fn finish(
        &self,
        campaign_id: &str,
        subscriber_id: &str,
        owner: &str,
        state: LedgerState,
        message_id: &str,
    ) -> Result<()> {
        let (campaign, subscriber, owner, message_id) =
            (campaign_id.to_owned(), subscriber_id.to_owned(), owner.to_owned(), message_id.to_owned());
        self.tx(move |tx| {
            let updated = tx.execute(
                "UPDATE send_ledger SET state = ?3, message_id = ?4, update_time = ?5 \
                 WHERE campaign_id = ?1 AND subscriber_id = ?2 AND owner = ?6 AND state = 'claimed'",
                params![campaign, subscriber, state.as_str(), message_id, now_millis(), owner],
            )?;
            if updated == 0 {
                return Err(StoreError::Conflict(format!(
                    "claim on {campaign}/{subscriber} is no longer held by {owner}"
                )));
            }
            Ok(())
        })
        .await
    }

    async fn release(&self, campaign_id: &str, subscriber_id: &str, owner: &str) -> Result<()> {
        let (campaign, subscriber, owner) = (campaign_id.to_owned(), subscriber_id.to_owned(), owner.to_owned());
        self.tx(move |tx| {
            tx.execute(
                "DELETE FROM send_ledger WHERE campaign_id = ?1 AND subscriber_id = ?2 AND owner = ?3 AND state = 'claimed'",
                params![campaign, subscriber, owner],
            )?;
            Ok(())
        })
        .await
    }
}
