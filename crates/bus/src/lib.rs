//! The event bus behind a narrow trait shaped like Kafka: keyed records,
//! partitions, consumer groups, and offsets committed only after the effect.
//!
//! `embedded://` keeps a durable log in the embedded SQLite database, so a
//! restart loses and repeats nothing. `kafka://` is Apache Kafka. Both pass
//! one conformance suite (`suite.rs`).

mod consume;
mod embedded;
mod kafka;
/// The conformance suite every bus backend passes (`bus_suite!`).
#[cfg(any(test, feature = "testsuite"))]
pub mod suite;

use std::time::Duration;

use async_trait::async_trait;

pub use consume::{consume, consume_reporting_lag, report_lag};
pub use embedded::EmbeddedBus;
pub use kafka::{KafkaBus, KafkaSettings};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// A failure inside the backend, without a cause of its own.
    #[error("bus backend: {0}")]
    Backend(String),
    /// A failure of the log or the broker client while doing `what`; the
    /// cause is kept as the error's source.
    #[error("bus backend: {what}")]
    Failed {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl BusError {
    /// `what` failed because of `source`.
    pub fn failed(what: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        BusError::Failed { what: what.into(), source: source.into() }
    }
}

impl From<rusqlite::Error> for BusError {
    fn from(error: rusqlite::Error) -> Self {
        BusError::failed("sqlite", error)
    }
}

pub type Result<T, E = BusError> = std::result::Result<T, E>;

/// The consumer group of the senders on send-jobs (one group for every replica).
pub const SENDER_GROUP: &str = "sender";
/// The consumer group of the senders on send-retries.
pub const SENDER_RETRIES_GROUP: &str = "sender-retries";
/// The consumer group of dispatch on delivery-events (campaign counters).
pub const DISPATCH_OUTCOMES_GROUP: &str = "dispatch";

/// The topics of design.md; the configured prefix is prepended to each name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    SubscriberEvents,
    CampaignEvents,
    SendJobs,
    SendRetries,
    DeliveryEvents,
    FeedbackEvents,
    BehaviorEvents,
}

impl Topic {
    pub const ALL: [Topic; 7] = [
        Topic::SubscriberEvents,
        Topic::CampaignEvents,
        Topic::SendJobs,
        Topic::SendRetries,
        Topic::DeliveryEvents,
        Topic::FeedbackEvents,
        Topic::BehaviorEvents,
    ];

    pub fn suffix(self) -> &'static str {
        match self {
            Topic::SubscriberEvents => "subscriber-events",
            Topic::CampaignEvents => "campaign-events",
            Topic::SendJobs => "send-jobs",
            Topic::SendRetries => "send-retries",
            Topic::DeliveryEvents => "delivery-events",
            Topic::FeedbackEvents => "feedback-events",
            Topic::BehaviorEvents => "behavior-events",
        }
    }

    /// The full topic name with `prefix`, e.g. `broadside.send-jobs`.
    pub fn name(self, prefix: &str) -> String {
        format!("{prefix}{}", self.suffix())
    }
}

/// Header names every record carries.
pub mod headers {
    /// Protobuf message name of the payload, e.g. `broadside.v1.SendJob`.
    pub const TYPE: &str = "type";
    pub const TENANT: &str = "tenant";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
}

/// One record to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Partitioning key (a subscriber or campaign id); same key, same partition, same order.
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }
}

/// A record read from a topic, with its position.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    pub record: Record,
}

/// Publishes records and opens consumers.
#[async_trait]
pub trait Bus: Send + Sync {
    /// Appends `records` to `topic`. When this returns Ok, every record is
    /// durable; on Err none may be assumed written (retry the whole batch:
    /// consumers are idempotent). Returns where each record landed
    /// (partition, offset), in order: a reader that has applied past those
    /// offsets reflects the write (read-your-writes).
    async fn publish(&self, topic: &str, records: Vec<Record>) -> Result<Vec<(u32, i64)>>;
    /// Joins consumer group `group` on `topics`, starting at its committed offsets.
    async fn consumer(&self, group: &str, topics: &[String]) -> Result<Box<dyn Consumer>>;
    /// Partitions per topic.
    fn partitions(&self) -> u32;
    /// Records of `topics` that consumer group `group` has not committed yet,
    /// over every partition (a group with no commit owes the whole log). Lets
    /// one role see whether another has work queued, without joining its group.
    async fn group_lag(&self, group: &str, topics: &[String]) -> Result<i64>;
    /// Erasure of personal data: every retained record of `topic` in `key`'s
    /// partition whose payload contains `key` gets the payload
    /// `redact(record)` returns (empty blanks it; consumers skip blank
    /// records). Offsets stay. Returns how many records changed. Kafka cannot
    /// rewrite its log: there, records age out with the topics' retention,
    /// the documented bound.
    async fn redact(&self, topic: &str, key: &str, redact: Redactor) -> Result<u64>;
}

/// Seals record payloads at rest: the embedded log lives in the store's
/// file, which must hold no personal data in the clear.
pub trait PayloadCipher: Send + Sync {
    fn seal(&self, plain: &[u8]) -> Vec<u8>;
    fn open(&self, sealed: &[u8]) -> Result<Vec<u8>>;
}

/// Rewrites a record's payload for [`Bus::redact`].
pub type Redactor = std::sync::Arc<dyn Fn(&Record) -> Vec<u8> + Send + Sync>;

/// A member of a consumer group.
#[async_trait]
pub trait Consumer: Send {
    /// Up to `max` records, waiting at most `wait` for the first one.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivered>>;
    /// Commits past every record in `done`: call only after their effects are durable.
    async fn commit(&mut self, done: &[Delivered]) -> Result<()>;
    /// Forgets uncommitted progress: the next poll starts at the committed offsets.
    async fn rewind(&mut self) -> Result<()>;
    /// (partitions this member owns, partitions of its topics): the share of
    /// a group-wide limit this member enforces.
    fn assigned_share(&self) -> (u32, u32);
    /// Records not yet consumed per (topic, partition) this member owns: the
    /// end of the log minus this member's position (for the lag gauge).
    async fn lag(&mut self) -> Result<Vec<(String, u32, i64)>>;
}

/// The offset to commit per (topic, partition) after `done`: one past the
/// highest offset processed in each.
pub(crate) fn next_offsets(done: &[Delivered]) -> std::collections::HashMap<(String, u32), i64> {
    let mut next = std::collections::HashMap::new();
    for delivered in done {
        let entry = next.entry((delivered.topic.clone(), delivered.partition)).or_insert(0);
        *entry = (*entry).max(delivered.offset + 1);
    }
    next
}

/// Stable partition of `key` among `partitions` (FNV-1a).
pub fn partition_for(key: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u32
}

impl Record {
    /// An event record with the standard headers: payload type, tenant and,
    /// when tracing, the W3C traceparent.
    pub fn event(key: &str, tenant: &str, type_name: &str, payload: Vec<u8>, traceparent: Option<String>) -> Self {
        let mut headers =
            vec![(headers::TYPE.to_owned(), type_name.to_owned()), (headers::TENANT.to_owned(), tenant.to_owned())];
        if let Some(traceparent) = traceparent {
            headers.push((headers::TRACEPARENT.to_owned(), traceparent));
        }
        Self { key: key.to_owned(), payload, headers }
    }
}

impl From<BusError> for broadside_proto::ServiceError {
    fn from(error: BusError) -> Self {
        Self::Unavailable(broadside_proto::error_chain(&error))
    }
}

/// Shared handle to the configured bus backend.
pub type DynBus = std::sync::Arc<dyn Bus>;
