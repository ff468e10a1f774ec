//! Fans a sending campaign out into send jobs, one page of recipients at a
//! time. The cursor and recipient count are saved after each page is
//! published, so a crash republishes at most one page; the send ledger makes
//! those repeats harmless.

use std::time::Duration;

use broadside_bus::{Record, Topic};
use broadside_proto::convert::{json_to_struct, millis_to_timestamp};
use broadside_proto::v1::SendJob;
use broadside_store::{Campaign, CampaignState, PageRequest, now_millis};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use crate::Dispatch;

const PAGE_SIZE: usize = 500;
/// How often to look for work even without a wake-up (other processes may start campaigns).
const IDLE_RECHECK: Duration = Duration::from_secs(1);

pub(crate) async fn run(dispatch: Dispatch, shutdown: CancellationToken) -> anyhow::Result<()> {
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        match dispatch.store.campaigns_in_state(CampaignState::Sending, 100).await {
            Ok(campaigns) => {
                for campaign in campaigns.into_iter().filter(|c| !c.fanout_done) {
                    if let Err(error) = fan_out(&dispatch, campaign, &shutdown).await {
                        tracing::warn!(%error, "fan-out interrupted, will resume from the saved cursor");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot list sending campaigns, retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = dispatch.fanout_wake.notified() => {}
            _ = tokio::time::sleep(IDLE_RECHECK) => {}
        }
    }
}

#[tracing::instrument(skip_all, fields(campaign = %campaign.id), err)]
async fn fan_out(dispatch: &Dispatch, mut campaign: Campaign, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let topic = dispatch.topic(Topic::SendJobs);
    let expires_at = campaign.start_time.max(now_millis()) + dispatch.max_age_ms;
    while !campaign.fanout_done && !shutdown.is_cancelled() {
        let token = (!campaign.fanout_cursor.is_empty()).then(|| campaign.fanout_cursor.clone());
        let page = dispatch
            .store
            .list_members(&campaign.tenant, &campaign.list_id, true, PageRequest { size: PAGE_SIZE, token })
            .await?;
        let traceparent = broadside_telemetry::current_traceparent();
        let records: Vec<Record> = page
            .items
            .iter()
            .map(|subscriber| {
                let job = SendJob {
                    tenant: campaign.tenant.clone(),
                    campaign_id: campaign.id.clone(),
                    subscriber_id: subscriber.id.clone(),
                    email: subscriber.email.clone(),
                    display_name: subscriber.display_name.clone(),
                    attributes: Some(json_to_struct(&subscriber.attributes)),
                    template_id: campaign.template_id.clone(),
                    template_version: campaign.template_version,
                    from_address: campaign.from_address.clone(),
                    from_name: campaign.from_name.clone(),
                    reply_to: campaign.reply_to.clone(),
                    list_id: campaign.list_id.clone(),
                    attempt: 1,
                    not_before: None,
                    expires_at: millis_to_timestamp(expires_at),
                    max_messages_per_second: campaign.max_messages_per_second,
                };
                Record::event(
                    &subscriber.id,
                    &campaign.tenant,
                    "broadside.v1.SendJob",
                    job.encode_to_vec(),
                    traceparent.clone(),
                )
            })
            .collect();
        let added = records.len() as i64;
        dispatch.bus.publish(&topic, records).await?;
        dispatch.metrics.count_published(&topic, added as u64);
        dispatch.metrics.fanned_out.inc_by(added as u64);
        let cursor = page.items.last().map(|s| s.id.clone()).unwrap_or_else(|| campaign.fanout_cursor.clone());
        let done = page.next_token.is_none();
        campaign = dispatch.store.save_fanout(&campaign.tenant, &campaign.id, &cursor, added, done).await?;
        tracing::debug!(added, total = campaign.stats.recipients, done, "fanned out a page");
    }
    if campaign.fanout_done {
        tracing::info!(recipients = campaign.stats.recipients, "fan-out finished");
        if campaign.state == CampaignState::Completed {
            crate::campaigns::announce_completion(dispatch, &campaign).await;
        }
    }
    Ok(())
}
