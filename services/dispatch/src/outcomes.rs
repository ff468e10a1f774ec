//! Consumes delivery events and turns them into campaign counters. Each
//! recipient's final outcome is recorded once, so a redelivered event never
//! counts twice; offsets are committed only after the counters are stored.

use std::time::Duration;

use broadside_bus::Topic;
use broadside_proto::v1::{DeliveryEvent, DeliveryOutcome};
use broadside_store::Outcome;
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use crate::Dispatch;

const GROUP: &str = broadside_bus::DISPATCH_OUTCOMES_GROUP;
const BATCH: usize = 500;

pub(crate) async fn run(dispatch: Dispatch, shutdown: CancellationToken) -> anyhow::Result<()> {
    let topic = dispatch.topic(Topic::DeliveryEvents);
    let mut consumer = dispatch.bus.consumer(GROUP, std::slice::from_ref(&topic)).await?;
    let mut lag_reported: Option<std::time::Instant> = None;
    while !shutdown.is_cancelled() {
        broadside_bus::report_lag(consumer.as_mut(), &mut lag_reported, |lag| dispatch.metrics.set_lag(GROUP, lag))
            .await;
        let batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            batch = consumer.poll(BATCH, Duration::from_millis(500)) => batch,
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(%error, "polling delivery events failed, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        let mut failed = false;
        for delivered in &batch {
            let Ok(event) = DeliveryEvent::decode(delivered.record.payload.as_slice()) else {
                tracing::error!(
                    partition = delivered.partition,
                    offset = delivered.offset,
                    "skipping undecodable delivery event"
                );
                continue;
            };
            if let Err(error) = apply(&dispatch, &event).await {
                tracing::warn!(%error, campaign = %event.campaign_id, "recording delivery outcome failed, will retry the batch");
                failed = true;
                break;
            }
        }
        if failed {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Err(error) = consumer.rewind().await {
                tracing::warn!(%error, "rewinding delivery events failed, retrying later");
            }
            continue;
        }
        if let Err(error) = consumer.commit(&batch).await {
            // Outcomes are recorded once per recipient, so a redelivery is harmless.
            tracing::warn!(%error, "committing delivery-event offsets failed, continuing");
        }
        dispatch.metrics.count_consumed(&topic, batch.len() as u64);
    }
    Ok(())
}

async fn apply(dispatch: &Dispatch, event: &DeliveryEvent) -> Result<(), broadside_store::StoreError> {
    let store = &dispatch.store;
    let outcome = match DeliveryOutcome::try_from(event.outcome) {
        Ok(DeliveryOutcome::Delivered) => Outcome::Delivered,
        Ok(DeliveryOutcome::Failed) => Outcome::Failed,
        Ok(DeliveryOutcome::Deferred) => return store.record_deferral(&event.tenant, &event.campaign_id).await,
        _ => {
            tracing::warn!(outcome = event.outcome, "ignoring delivery event with unknown outcome");
            return Ok(());
        }
    };
    let recorded = store.record_outcome(&event.tenant, &event.campaign_id, &event.subscriber_id, outcome).await?;
    if recorded.completed_campaign
        && let Some(campaign) = store.get_campaign(&event.tenant, &event.campaign_id).await?
    {
        crate::campaigns::announce_completion(dispatch, &campaign).await;
    }
    Ok(())
}
