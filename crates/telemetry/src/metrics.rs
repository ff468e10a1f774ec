//! Prometheus metrics shared by the roles of one process.

use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
    pub tenant: String,
    pub campaign: String,
    /// The destination group (`gmail`, `microsoft`, ... or `other`).
    pub destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LagLabels {
    pub group: String,
    pub topic: String,
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    /// `2xx`, `4xx`, `5xx`, or `none` (no reply: connection or TLS failure).
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClaimLabels {
    /// `acquired`, `takeover`, `held` (another sender's lease), `finished` (sent before).
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatementLabels {
    /// `lwt`, `write`, `read` or `batch`.
    pub kind: String,
}

/// Reads the store's running statement totals, by kind label.
type StatementSource = Box<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>;

/// Every metric Broadside exports. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Send attempts by outcome: delivered, deferred, failed, skipped_duplicate.
    pub sends: Family<OutcomeLabels, Counter>,
    /// SMTP replies to the final dot (or the first refusal) by class.
    pub smtp_replies: Family<ClassLabels, Counter>,
    /// Send-ledger claims by result.
    pub ledger_claims: Family<ClaimLabels, Counter>,
    /// Records not yet consumed, per consumer group and partition this process owns.
    pub consumer_lag: Family<LagLabels, Gauge>,
    /// Seconds from claim to the relay's reply.
    pub send_seconds: Histogram,
    /// Sends whose result is unknown (crash or lost reply after DATA): counted, never hidden.
    pub sends_ambiguous: Counter,
    /// SMTP transactions in flight in this process.
    pub sends_in_flight: Gauge,
    /// Records published, by topic.
    pub published: Family<TopicLabels, Counter>,
    /// Records consumed and committed, by topic.
    pub consumed: Family<TopicLabels, Counter>,
    /// Recipients fanned out into send jobs.
    pub fanned_out: Counter,
    /// Subscribers in the segmentation projections of this process.
    pub segment_subscribers: Gauge,
    /// Estimated heap bytes of those projections.
    pub segment_projection_bytes: Gauge,
    /// Behavioral events held by those projections, and their estimated heap bytes (part of the above).
    pub segment_behavior_events: Gauge,
    pub segment_behavior_bytes: Gauge,
    /// Inbound feedback by kind and reason (bounce/user_unknown, complaint/complaint, unsubscribe/one_click, ...).
    pub feedback: Family<FeedbackLabels, Counter>,
    /// Bounces that refuse the sender rather than the address (blocked,
    /// spam_detected, policy_violation, ...), by sending domain and
    /// destination group: a blocklisting shows here, not as a shrinking list.
    pub sender_refusals: Family<RefusalLabels, Counter>,
    /// Statements sent to the store, by kind (CQL stores; synced from the store's totals at each scrape).
    pub store_statements: Family<StatementLabels, Counter>,
    statement_source: Arc<OnceLock<StatementSource>>,
    statement_sync: Arc<Mutex<()>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeedbackLabels {
    pub kind: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub reason: String,
    pub sending_domain: String,
    pub destination: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("broadside");
        let sends = Family::<OutcomeLabels, Counter>::default();
        registry.register("sends", "Send attempts by outcome, tenant, campaign and destination group", sends.clone());
        let smtp_replies = Family::<ClassLabels, Counter>::default();
        registry.register("smtp_replies", "SMTP replies by class", smtp_replies.clone());
        let ledger_claims = Family::<ClaimLabels, Counter>::default();
        registry.register("ledger_claims", "Send-ledger claims by result", ledger_claims.clone());
        let consumer_lag = Family::<LagLabels, Gauge>::default();
        registry.register(
            "consumer_lag",
            "Records not yet consumed per group and partition owned here",
            consumer_lag.clone(),
        );
        let send_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register("send_seconds", "Seconds from claim to the relay's reply", send_seconds.clone());
        let sends_ambiguous = Counter::default();
        registry.register(
            "sends_ambiguous",
            "Sends whose outcome is unknown (RFC 1047 window or crash)",
            sends_ambiguous.clone(),
        );
        let sends_in_flight = Gauge::default();
        registry.register("sends_in_flight", "SMTP transactions in flight", sends_in_flight.clone());
        let published = Family::<TopicLabels, Counter>::default();
        registry.register("bus_published", "Records published by topic", published.clone());
        let consumed = Family::<TopicLabels, Counter>::default();
        registry.register("bus_consumed", "Records consumed and committed by topic", consumed.clone());
        let fanned_out = Counter::default();
        registry.register("campaign_recipients_fanned_out", "Recipients fanned out into send jobs", fanned_out.clone());
        let segment_subscribers = Gauge::default();
        registry.register(
            "segmentation_subscribers",
            "Subscribers in the segmentation projections",
            segment_subscribers.clone(),
        );
        let segment_projection_bytes = Gauge::default();
        registry.register(
            "segmentation_projection_bytes",
            "Estimated heap bytes of the segmentation projections",
            segment_projection_bytes.clone(),
        );
        let segment_behavior_events = Gauge::default();
        registry.register(
            "segmentation_behavior_events",
            "Behavioral events in the segmentation projections",
            segment_behavior_events.clone(),
        );
        let segment_behavior_bytes = Gauge::default();
        registry.register(
            "segmentation_behavior_bytes",
            "Estimated heap bytes of the behavioral events in the projections",
            segment_behavior_bytes.clone(),
        );
        let feedback = Family::<FeedbackLabels, Counter>::default();
        registry.register("feedback", "Inbound feedback by kind and reason", feedback.clone());
        let sender_refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "feedback_sender_refusals",
            "Bounces refusing the sender (block lists, spam, policy), by sending domain and destination group",
            sender_refusals.clone(),
        );
        let store_statements = Family::<StatementLabels, Counter>::default();
        registry.register(
            "store_statements",
            "Statements sent to the store by kind (lwt, write, read, batch)",
            store_statements.clone(),
        );
        Self {
            sender_refusals,
            store_statements,
            statement_source: Arc::default(),
            statement_sync: Arc::default(),
            segment_subscribers,
            segment_projection_bytes,
            segment_behavior_events,
            segment_behavior_bytes,
            feedback,
            registry: Arc::new(registry),
            sends,
            smtp_replies,
            ledger_claims,
            consumer_lag,
            send_seconds,
            sends_ambiguous,
            sends_in_flight,
            published,
            consumed,
            fanned_out,
        }
    }

    pub fn count_send(&self, outcome: &str, tenant: &str, campaign: &str, destination: &str) {
        let labels = OutcomeLabels {
            outcome: outcome.to_owned(),
            tenant: tenant.to_owned(),
            campaign: campaign.to_owned(),
            destination: destination.to_owned(),
        };
        self.sends.get_or_create(&labels).inc();
    }

    /// Counts a reply code (0: no reply).
    pub fn count_smtp_reply(&self, code: i32) {
        let class = match code {
            200..=299 => "2xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "none",
        };
        self.smtp_replies.get_or_create(&ClassLabels { class: class.into() }).inc();
    }

    /// Sets the lag gauges of `group` (partitions no longer owned keep their last value until reassigned).
    pub fn set_lag(&self, group: &str, lag: &[(String, u32, i64)]) {
        for (topic, partition, behind) in lag {
            let labels = LagLabels { group: group.to_owned(), topic: topic.clone(), partition: partition.to_string() };
            self.consumer_lag.get_or_create(&labels).set(*behind);
        }
    }

    pub fn count_claim(&self, result: &str) {
        self.ledger_claims.get_or_create(&ClaimLabels { result: result.to_owned() }).inc();
    }

    pub fn count_published(&self, topic: &str, n: u64) {
        self.published.get_or_create(&TopicLabels { topic: topic.to_owned() }).inc_by(n);
    }

    pub fn count_consumed(&self, topic: &str, n: u64) {
        self.consumed.get_or_create(&TopicLabels { topic: topic.to_owned() }).inc_by(n);
    }

    pub fn count_feedback(&self, kind: &str, reason: &str) {
        self.feedback.get_or_create(&FeedbackLabels { kind: kind.to_owned(), reason: reason.to_owned() }).inc();
    }

    /// Counts a bounce that refused the sender (see `sender_refusals`).
    pub fn count_sender_refusal(&self, reason: &str, sending_domain: &str, destination: &str) {
        let labels = RefusalLabels {
            reason: reason.to_owned(),
            sending_domain: sending_domain.to_owned(),
            destination: destination.to_owned(),
        };
        self.sender_refusals.get_or_create(&labels).inc();
    }

    /// Exports the store's statement totals (set once, by the process that opened the store).
    pub fn observe_store_statements(&self, source: impl Fn() -> Vec<(&'static str, u64)> + Send + Sync + 'static) {
        if self.statement_source.set(Box::new(source)).is_err() {
            tracing::warn!("store statement totals are already observed");
        }
    }

    /// Brings `store_statements` up to the store's totals (which only grow).
    fn sync_store_statements(&self) {
        let Some(source) = self.statement_source.get() else { return };
        let _one_at_a_time = self.statement_sync.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (kind, total) in source() {
            let counter = self.store_statements.get_or_create(&StatementLabels { kind: kind.to_owned() });
            let exported = counter.get();
            if total > exported {
                counter.inc_by(total - exported);
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        self.sync_store_statements();
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%error, "encoding metrics failed");
        }
        out
    }
}
