//! The dispatch role: templates and campaigns over gRPC, the fan-out of a
//! started campaign into one send job per recipient, and the campaign
//! counters fed by delivery events.

mod campaigns;
mod compliance;
mod convert;
mod engagement;
mod fanout;
mod outcomes;
mod role;
mod templates;

use std::sync::Arc;

use broadside_bus::{DynBus, Topic};
use broadside_store::DynStore;
use broadside_telemetry::Metrics;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use broadside_role::SegmentMembers;
pub use campaigns::CampaignApi;
pub use convert::campaign_to_proto;
pub use role::{DispatchSettings, start};
pub use templates::{TemplateApi, sample_context};

/// What the dispatch role shares between its API and its workers.
#[derive(Clone)]
pub struct Dispatch {
    store: DynStore,
    bus: DynBus,
    topic_prefix: String,
    metrics: Metrics,
    /// Expiry of a send job, from the start of its campaign.
    max_age_ms: i64,
    /// A sending campaign idle this long is reconciled (see `fanout::reconcile`).
    reconcile_after: std::time::Duration,
    /// Wakes the fan-out worker when a campaign starts.
    fanout_wake: Arc<Notify>,
    /// The trace context of each StartCampaign call (campaign id → traceparent),
    /// so the fan-out, and every send job it publishes, continues that trace.
    start_traces: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
    /// Segment membership for campaigns that target a segment.
    segments: Option<Arc<dyn SegmentMembers>>,
}

impl Dispatch {
    pub(crate) fn new(
        store: DynStore,
        bus: DynBus,
        topic_prefix: &str,
        metrics: Metrics,
        max_age_secs: u64,
        reconcile_after: std::time::Duration,
    ) -> Self {
        Self {
            store,
            bus,
            topic_prefix: topic_prefix.to_owned(),
            metrics,
            max_age_ms: (max_age_secs * 1000) as i64,
            reconcile_after,
            fanout_wake: Arc::new(Notify::new()),
            start_traces: Default::default(),
            segments: None,
        }
    }

    fn topic(&self, topic: Topic) -> String {
        topic.name(&self.topic_prefix)
    }

    pub fn template_api(&self) -> TemplateApi {
        TemplateApi::new(self.clone())
    }

    pub fn campaign_api(&self) -> CampaignApi {
        CampaignApi::new(self.clone())
    }

    /// Lets campaigns target segments.
    pub(crate) fn with_segments(mut self, segments: Arc<dyn SegmentMembers>) -> Self {
        self.segments = Some(segments);
        self
    }

    /// Runs the fan-out worker and the delivery-event consumer until `shutdown`.
    /// Both resume where they stopped: fan-out from its stored cursor,
    /// the consumer from its committed offsets.
    pub(crate) async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let fanout = tokio::spawn(fanout::run(self.clone(), shutdown.clone()));
        let outcomes = tokio::spawn(outcomes::run(self.clone(), shutdown.clone()));
        let engagement = tokio::spawn(engagement::run(self.clone(), shutdown.clone()));
        let (fanout, outcomes, engagement) = tokio::join!(fanout, outcomes, engagement);
        fanout??;
        outcomes??;
        engagement??;
        Ok(())
    }
}
