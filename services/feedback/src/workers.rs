//! Background work of the feedback role: 5xx replies from `delivery-events`
//! go through the bounce policy, and old records are purged.

use std::time::Duration;

use broadside_bus::Topic;
use broadside_proto::v1::{DeliveryEvent, DeliveryOutcome};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::Feedback;
use crate::classify::{Reason, smtp_reply};
use crate::policy::Attribution;

const GROUP: &str = "feedback";

/// A permanent SMTP failure at send time is a bounce too (a synchronous one).
pub(crate) async fn consume_deliveries(feedback: Feedback, shutdown: CancellationToken) -> anyhow::Result<()> {
    let topic = Topic::DeliveryEvents.name(&feedback.settings.topic_prefix);
    let bus = feedback.bus.clone();
    let metrics = feedback.metrics.clone();
    let on_lag = move |lag: &[(String, u32, i64)]| metrics.set_lag(GROUP, lag);
    broadside_bus::consume_reporting_lag(bus, GROUP, &topic, shutdown, on_lag, |delivered| {
        let feedback = feedback.clone();
        async move {
            let Ok(event) = DeliveryEvent::decode(delivered.record.payload.as_slice()) else {
                tracing::error!(offset = delivered.offset, "skipping undecodable delivery event");
                return Ok(());
            };
            // The bounce continues the trace of the send that failed.
            let span = tracing::info_span!("synchronous bounce", subscriber = %event.subscriber_id);
            broadside_telemetry::follow_traceparent(
                &span,
                delivered.record.header(broadside_bus::headers::TRACEPARENT),
            );
            on_delivery(&feedback, &event).instrument(span).await.map_err(|e| e.to_string())
        }
    })
    .await?;
    Ok(())
}

async fn on_delivery(feedback: &Feedback, event: &DeliveryEvent) -> Result<(), crate::policy::FeedbackError> {
    if event.outcome != DeliveryOutcome::Failed as i32 || event.smtp_code < 500 {
        return Ok(());
    }
    let verdict = smtp_reply(event.smtp_code, &event.enhanced_code, &event.detail, &event.mx);
    let who = Attribution {
        tenant: event.tenant.clone(),
        subscriber_id: event.subscriber_id.clone(),
        campaign_id: event.campaign_id.clone(),
        list_id: String::new(),
        by: "delivery",
    };
    let (action, kind) = feedback.decide(&verdict, &who).await?;
    if let Some(mut kind) = kind {
        if let broadside_proto::v1::feedback_event::Kind::Bounce(bounce) = &mut kind {
            bounce.source = "smtp".into();
        }
        feedback.publish(&who, kind).await?;
    }
    if verdict.reason != Reason::Delivered {
        feedback.store_verdict(&verdict, Some(&who), who.tenant.clone(), &action, Vec::new()).await?;
    }
    Ok(())
}

/// Deletes records past `feedback.retention_days`, hourly.
pub(crate) async fn purge(feedback: Feedback, shutdown: CancellationToken) -> anyhow::Result<()> {
    let retention_ms = i64::from(feedback.settings.config.retention_days) * 86_400_000;
    loop {
        let before = broadside_store::now_millis() - retention_ms;
        match feedback.store.purge_feedback(before).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "feedback records past retention deleted"),
            Err(error) => tracing::warn!(%error, "purging old feedback records failed, will retry"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}
