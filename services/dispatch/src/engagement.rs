//! Counts feedback-events into campaign stats: bounced, complained,
//! unsubscribed, opened and clicked, each once per recipient.

use broadside_bus::Topic;
use broadside_proto::v1::{FeedbackEvent, feedback_event::Kind};
use broadside_store::Engagement;
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use crate::Dispatch;

const GROUP: &str = "dispatch-feedback";

pub(crate) async fn run(dispatch: Dispatch, shutdown: CancellationToken) -> anyhow::Result<()> {
    let topic = dispatch.topic(Topic::FeedbackEvents);
    let bus = dispatch.bus.clone();
    let metrics = dispatch.metrics.clone();
    let on_lag = move |lag: &[(String, u32, i64)]| metrics.set_lag(GROUP, lag);
    broadside_bus::consume_reporting_lag(bus, GROUP, &topic, shutdown, on_lag, |delivered| {
        let store = dispatch.store.clone();
        async move {
            let Ok(event) = FeedbackEvent::decode(delivered.record.payload.as_slice()) else {
                tracing::error!(offset = delivered.offset, "skipping undecodable feedback event");
                return Ok(());
            };
            let kind = match event.kind {
                Some(Kind::Bounce(_)) => Engagement::Bounced,
                Some(Kind::Complaint(_)) => Engagement::Complained,
                Some(Kind::Unsubscribe(_)) => Engagement::Unsubscribed,
                Some(Kind::Open(_)) => Engagement::Opened,
                Some(Kind::Click(_)) => Engagement::Clicked,
                None => return Ok(()),
            };
            if event.campaign_id.is_empty() {
                return Ok(());
            }
            store
                .record_engagement(&event.tenant, &event.campaign_id, &event.subscriber_id, kind)
                .await
                .map(|_| ())
                .map_err(|error| error.to_string())
        }
    })
    .await?;
    Ok(())
}
