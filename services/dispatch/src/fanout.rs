//! Fans a sending campaign out into send jobs, one page of recipients at a
//! time. The cursor and recipient count are saved after each page is
//! published, so a crash republishes at most one page; the send ledger makes
//! those repeats harmless.

use std::time::Duration;
use tracing::Instrument as _;

use broadside_bus::{Record, Topic};
use broadside_proto::convert::millis_to_timestamp;
use broadside_proto::v1::SendJob;
use broadside_store::{Campaign, CampaignState, PageRequest, Subscriber, now_millis};
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
                let now = now_millis();
                for campaign in campaigns {
                    if !campaign.fanout_done && !due(&campaign, now) {
                        continue; // scheduled, or outside its send window: fan out when the time comes
                    }
                    if !campaign.fanout_done {
                        // Continues the StartCampaign trace when that call came to this process.
                        let started =
                            dispatch.start_traces.lock().unwrap_or_else(|p| p.into_inner()).remove(&campaign.id);
                        let span = tracing::info_span!("campaign fan-out", campaign = %campaign.id);
                        broadside_telemetry::follow_traceparent(&span, started.as_deref());
                        if let Err(error) = fan_out(&dispatch, campaign, &shutdown).instrument(span).await {
                            tracing::warn!(%error, "fan-out interrupted, will resume from the saved cursor");
                        }
                        continue;
                    }
                    let idle_ms = now - campaign.progress_time.max(campaign.start_time);
                    let unfinished = campaign.stats.delivered + campaign.stats.failed < campaign.stats.recipients;
                    if unfinished
                        && idle_ms > dispatch.reconcile_after.as_millis() as i64
                        && let Err(error) = reconcile(&dispatch, &campaign).await
                    {
                        tracing::warn!(%error, "reconciliation failed, will retry");
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

/// Whether a campaign's fan-out may run now: its `send_at` has passed and
/// its send window (if any) is open.
fn due(campaign: &Campaign, now: i64) -> bool {
    campaign.send_at <= now
        && (campaign.send_window.is_empty()
            || broadside_store::schedule::SendWindow::parse(&campaign.send_window).is_ok_and(|w| w.contains(now)))
}

/// Records the senders and dispatch's outcome consumer have not committed yet.
async fn queued_records(dispatch: &Dispatch) -> anyhow::Result<i64> {
    let owed = [
        (broadside_bus::SENDER_GROUP, Topic::SendJobs),
        (broadside_bus::SENDER_RETRIES_GROUP, Topic::SendRetries),
        (broadside_bus::DISPATCH_OUTCOMES_GROUP, Topic::DeliveryEvents),
    ];
    let mut queued = 0;
    for (group, topic) in owed {
        queued += dispatch.bus.group_lag(group, &[dispatch.topic(topic)]).await?;
    }
    Ok(queued)
}

/// One recipient's send job.
fn send_job(campaign: &Campaign, subscriber: &Subscriber, expires_at: i64, traceparent: Option<String>) -> Record {
    let job = SendJob {
        tenant: campaign.tenant.clone(),
        campaign_id: campaign.id.clone(),
        subscriber_id: subscriber.id.clone(),
        email: subscriber.email.clone(),
        display_name: subscriber.display_name.clone(),
        attributes: None,
        attributes_json: serde_json::to_vec(&subscriber.attributes).expect("a JSON map serializes"),
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
        postal_address: campaign.postal_address.clone(),
    };
    Record::event(&subscriber.id, &campaign.tenant, "broadside.v1.SendJob", job.encode_to_vec(), traceparent)
}

/// Safety net for the delivery guarantee: a fanned-out campaign that has made
/// no progress for `reconcile_after` gets a fresh send job for every
/// recipient that still has no outcome. The send ledger makes the repeats
/// harmless (a finished recipient is reported again, never sent again), so
/// whatever lost a job or its delivery event, the campaign still completes.
///
/// Queued work is not lost work: while the senders still owe records of
/// send-jobs or send-retries, or dispatch owes delivery-events (after a
/// store or broker outage, say), the campaign is waiting, not stranded, and
/// re-dispatching would only double the backlog. It is checked again after
/// another `reconcile_after`.
#[tracing::instrument(skip_all, fields(campaign = %campaign.id), err)]
async fn reconcile(dispatch: &Dispatch, campaign: &Campaign) -> anyhow::Result<()> {
    let queued = queued_records(dispatch).await?;
    if queued > 0 {
        dispatch.store.touch_progress(&campaign.tenant, &campaign.id).await?;
        tracing::info!(
            queued,
            idle_secs = dispatch.reconcile_after.as_secs(),
            "campaign made no progress while send work is still queued in the bus: waiting for it, not re-dispatching"
        );
        return Ok(());
    }
    let topic = dispatch.topic(Topic::SendJobs);
    let expires_at = campaign.start_time.max(now_millis()) + dispatch.max_age_ms;
    let mut token = None;
    let mut resent = 0_usize;
    let segment = segment_members(dispatch, campaign).await?;
    loop {
        let page = dispatch
            .store
            .list_members(&campaign.tenant, &campaign.list_id, true, PageRequest { size: PAGE_SIZE, token })
            .await?;
        // Only recipients fanned out before (members up to the fan-out cursor).
        let store = &dispatch.store;
        let fanned: Vec<&Subscriber> = page
            .items
            .iter()
            .filter(|s| {
                store.member_cursor(&s.id) <= campaign.fanout_cursor
                    && segment.as_ref().is_none_or(|m| m.contains(&s.id))
            })
            .collect();
        let ids: Vec<String> = fanned.iter().map(|s| s.id.clone()).collect();
        let missing = dispatch.store.without_outcome(&campaign.id, &ids).await?;
        let records: Vec<Record> = fanned
            .iter()
            .filter(|s| missing.contains(&s.id))
            .map(|s| send_job(campaign, s, expires_at, None))
            .collect();
        resent += records.len();
        dispatch.bus.publish(&topic, records).await?;
        let past_cursor = page.items.last().is_some_and(|s| store.member_cursor(&s.id) >= campaign.fanout_cursor);
        match page.next_token {
            Some(next) if !past_cursor => token = Some(next),
            _ => break,
        }
    }
    dispatch.store.touch_progress(&campaign.tenant, &campaign.id).await?;
    let idle_secs = dispatch.reconcile_after.as_secs();
    if resent > 0 {
        tracing::warn!(
            resent,
            idle_secs,
            "campaign made no progress: re-dispatched the recipients that have no outcome yet"
        );
    } else if dispatch.store.recount_outcomes(&campaign.tenant, &campaign.id).await? {
        tracing::info!(idle_secs, "campaign made no progress: every recipient had an outcome, completed it on recount");
    } else {
        tracing::info!(idle_secs, "campaign made no progress; every fanned-out recipient is in flight");
    }
    Ok(())
}

/// The members of the campaign's segment in its list, evaluated now; `None`
/// when the campaign targets the whole list.
async fn segment_members(
    dispatch: &Dispatch,
    campaign: &Campaign,
) -> anyhow::Result<Option<std::collections::HashSet<String>>> {
    if campaign.segment_id.is_empty() {
        return Ok(None);
    }
    let segments = dispatch.segments.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "campaign targets segment {} but segmentation does not run in this process",
            campaign.segment_id
        )
    })?;
    let members = segments.members(&campaign.tenant, &campaign.segment_id, &campaign.list_id).await?;
    tracing::info!(segment = %campaign.segment_id, members = members.len(), "segment evaluated for fan-out");
    Ok(Some(members.into_iter().collect()))
}

#[tracing::instrument(skip_all, fields(campaign = %campaign.id), err)]
async fn fan_out(dispatch: &Dispatch, mut campaign: Campaign, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let topic = dispatch.topic(Topic::SendJobs);
    let expires_at = campaign.start_time.max(now_millis()) + dispatch.max_age_ms;
    let segment = segment_members(dispatch, &campaign).await?;
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
            .filter(|subscriber| segment.as_ref().is_none_or(|m| m.contains(&subscriber.id)))
            .map(|subscriber| send_job(&campaign, subscriber, expires_at, traceparent.clone()))
            .collect();
        let added = records.len() as i64;
        dispatch.bus.publish(&topic, records).await?;
        dispatch.metrics.count_published(&topic, added as u64);
        dispatch.metrics.fanned_out.inc_by(added as u64);
        let cursor = match page.items.last() {
            Some(last) => dispatch.store.member_cursor(&last.id),
            None => campaign.fanout_cursor.clone(),
        };
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
