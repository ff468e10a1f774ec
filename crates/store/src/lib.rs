//! Broadside's state behind narrow traits, shaped for distributed backends:
//! access by partition key, keyset-paged scans, insert-if-absent for claims,
//! no joins exposed, no cross-partition transactions required.
//!
//! `sqlite://PATH` is the embedded backend; `scylla://HOSTS/KEYSPACE` the
//! distributed one ([`scylla`]). Both pass the same conformance suite.

pub mod crypto;
mod model;
pub mod schedule;
pub mod scylla;
mod sqlite;
pub mod statements;
#[doc(hidden)]
/// The conformance suite every store backend passes (`store_suite!`).
#[cfg(any(test, feature = "testsuite"))]
pub mod suite;
mod upsert;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use model::*;
pub use scylla::{CqlServer, Retention, ScyllaStore, ScyllaUri};
pub use sqlite::SqliteStore;
pub use statements::{StatementCounts, StatementKind};

/// A store failure. `NotFound` and `Conflict` are the caller's problem;
/// `Backend` is ours (disk, connection, corruption).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    /// A failure inside the backend, without a cause of its own.
    #[error("store backend: {0}")]
    Backend(String),
    /// A failure of the database or its driver while doing `what`; the
    /// cause is kept as the error's source, so logs show the whole chain.
    #[error("store backend: {what}")]
    Failed {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A bad store setting (`store.url` options): the operator's to fix.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

impl StoreError {
    /// `what` failed because of `source`.
    pub fn failed(what: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError::Failed { what: what.into(), source: source.into() }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        StoreError::failed("sqlite", error)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Lists, partitioned by tenant.
#[async_trait]
pub trait ListStore: Send + Sync {
    /// Inserts `list`; with a `request_id` seen before, returns the first result instead.
    async fn create_list(&self, list: MailingList, request_id: Option<String>) -> Result<MailingList>;
    async fn get_list(&self, tenant: &str, list_id: &str) -> Result<Option<MailingList>>;
    async fn list_lists(&self, tenant: &str, page: PageRequest) -> Result<Page<MailingList>>;
    /// Removes the list and its memberships. Returns false when it did not exist.
    async fn delete_list(&self, tenant: &str, list_id: &str) -> Result<bool>;
}

/// Subscribers by (tenant, id), unique by (tenant, normalized email);
/// memberships by (tenant, list) and (tenant, subscriber); the consent
/// ledger by (tenant, subscriber), clustered by time.
#[async_trait]
pub trait SubscriberStore: Send + Sync {
    /// Creates the subscriber, or updates the one with the same normalized
    /// email (per `options.mode`), and joins `subscriber.lists`: confirmed at
    /// once on single opt-in lists, unconfirmed on double opt-in ones. Every
    /// list must exist (`NotFound` otherwise, and nothing is written). Each
    /// new subscription is recorded in the consent ledger.
    async fn upsert_subscriber(
        &self,
        subscriber: Subscriber,
        options: UpsertOptions,
        request_id: Option<String>,
    ) -> Result<Upserted>;
    async fn get_subscriber(&self, tenant: &str, subscriber_id: &str) -> Result<Option<Subscriber>>;
    async fn find_subscriber(&self, tenant: &str, email: &str) -> Result<Option<Subscriber>>;
    async fn list_subscribers(&self, tenant: &str, page: PageRequest) -> Result<Page<Subscriber>>;
    /// Members of one list in member order (see `member_cursor`). `sendable_only` keeps only active
    /// subscribers with a confirmed membership and no suppression (tenant-wide,
    /// for this list, or for their domain).
    async fn list_members(
        &self,
        tenant: &str,
        list_id: &str,
        sendable_only: bool,
        page: PageRequest,
    ) -> Result<Page<Subscriber>>;
    /// Every membership of one list with its status, keyset-paged by
    /// subscriber id (projections load from it; no personal data is opened).
    async fn member_statuses(
        &self,
        tenant: &str,
        list_id: &str,
        page: PageRequest,
    ) -> Result<Page<(String, SubscriptionStatus)>>;
    /// The position of a subscriber in this backend's member order, as a
    /// page token: pages of `list_members`, `member_statuses` and
    /// `list_subscribers` follow it, and a page starting at a member's cursor
    /// starts right after that member. Cursors compare as strings in page
    /// order. The embedded store orders by id (the cursor is the id); the
    /// ScyllaDB store by (hash bucket, id).
    fn member_cursor(&self, subscriber_id: &str) -> String {
        subscriber_id.to_owned()
    }
    /// Whether one member may be mailed now: the same rule as
    /// `list_members(sendable_only)`, checked again just before sending so a
    /// suppression or unsubscribe during a long campaign takes effect at once.
    async fn is_sendable(&self, tenant: &str, subscriber_id: &str, list_id: &str) -> Result<bool>;
    /// Changes name, attributes (replaced) or status; `None` leaves a field alone.
    async fn update_subscriber(
        &self,
        tenant: &str,
        subscriber_id: &str,
        update: SubscriberUpdate,
    ) -> Result<Option<Subscriber>>;
    /// Sets one membership's status and records the consent action it implies.
    /// Returns `None` when the subscriber or membership does not exist.
    async fn set_subscription(
        &self,
        tenant: &str,
        subscriber_id: &str,
        list_id: &str,
        status: SubscriptionStatus,
        consent: ConsentContext,
    ) -> Result<Option<Subscriber>>;
    /// The consent ledger of one subscriber, oldest first.
    async fn consent_records(&self, tenant: &str, subscriber_id: &str) -> Result<Vec<ConsentRecord>>;
    /// Normalized emails among `emails` that already belong to a subscriber.
    async fn existing_emails(&self, tenant: &str, emails: Vec<String>) -> Result<HashSet<String>>;
    /// Upserts a batch of import rows into `job.list_id` in one transaction and,
    /// when `job.request_id` is set, records the job's progress with it, so a
    /// crash never leaves a batch half written and a re-run resumes after it.
    async fn import_batch(
        &self,
        tenant: &str,
        job: ImportJob,
        rows: Vec<ImportRow>,
        options: UpsertOptions,
    ) -> Result<(Vec<ImportedRow>, ImportJob)>;
    async fn import_job(&self, tenant: &str, request_id: &str) -> Result<Option<ImportJob>>;
    /// Everything held about one subscriber (GDPR art. 15/20).
    async fn export_subscriber(&self, tenant: &str, subscriber_id: &str) -> Result<Option<SubscriberExport>>;
    /// Deletes the subscriber's personal data everywhere in the store and
    /// leaves a tenant-wide `erased` suppression by hash. Returns the hash, or
    /// `None` when there was no such subscriber.
    async fn erase_subscriber(&self, tenant: &str, subscriber_id: &str) -> Result<Option<String>>;
}

/// Suppressions by (tenant, blind index of the target, list). Targets are
/// addresses or `@domain`s; the store keys them by the tenant's blind index
/// and seals the target itself.
#[async_trait]
pub trait SuppressionStore: Send + Sync {
    /// Adds or replaces a suppression (`email_hash` is computed, not read).
    async fn add_suppression(&self, suppression: Suppression) -> Result<Suppression>;
    /// Returns false when there was none.
    async fn remove_suppression(&self, tenant: &str, target: &str, list_id: &str) -> Result<bool>;
    /// Keyset-paged by (blind index, list).
    async fn list_suppressions(&self, tenant: &str, page: PageRequest) -> Result<Page<Suppression>>;
    /// Every suppression of one of `targets` (addresses or `@domain`s).
    async fn suppressions_for(&self, tenant: &str, targets: Vec<String>) -> Result<Vec<Suppression>>;
}

/// The append-only audit log, by (tenant, time-ordered id).
#[async_trait]
pub trait AuditLog: Send + Sync {
    async fn append_audit(&self, entry: AuditEntry) -> Result<()>;
    /// Oldest first, keyset-paged by id.
    async fn list_audit(&self, tenant: &str, page: PageRequest) -> Result<Page<AuditEntry>>;
}

/// Key management of the encryption at rest (see [`crypto`]).
#[async_trait]
pub trait KeyManagement: Send + Sync {
    /// Re-wraps every tenant key with the current master key (after adding a
    /// new master key file); returns how many keys were re-wrapped.
    async fn rewrap_keys(&self) -> Result<u64>;
    /// Makes a new data key the tenant's active one; returns its id.
    async fn rotate_data_key(&self, tenant: &str) -> Result<String>;
    /// Re-seals up to `limit` of the tenant's rows that are sealed with an
    /// older data key; returns how many (0 when done).
    async fn reencrypt(&self, tenant: &str, limit: usize) -> Result<u64>;
}

/// Tenants and their API keys.
#[async_trait]
pub trait AccessStore: Send + Sync {
    /// `Conflict` when the id is taken.
    async fn create_tenant(&self, tenant: Tenant) -> Result<Tenant>;
    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>>;
    async fn list_tenants(&self) -> Result<Vec<Tenant>>;
    async fn create_api_key(&self, key: ApiKey) -> Result<()>;
    async fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKey>>;
    async fn list_api_keys(&self, tenant: &str) -> Result<Vec<ApiKey>>;
    /// Allows (or not) the tenant's campaigns to use the transactional stream.
    /// Returns false when there is no such tenant.
    async fn set_allow_transactional(&self, tenant: &str, allowed: bool) -> Result<bool>;
    /// Returns false when the tenant has no such key (or it was already revoked).
    async fn revoke_api_key(&self, tenant: &str, key_id: &str) -> Result<bool>;
}

/// Templates and campaigns by (tenant, id); outcomes by (campaign, subscriber).
#[async_trait]
pub trait CampaignStore: Send + Sync {
    async fn create_template(&self, template: Template, request_id: Option<String>) -> Result<Template>;
    async fn get_template(&self, tenant: &str, template_id: &str) -> Result<Option<Template>>;
    async fn list_templates(&self, tenant: &str, page: PageRequest) -> Result<Page<Template>>;
    async fn create_campaign(&self, campaign: Campaign, request_id: Option<String>) -> Result<Campaign>;
    async fn get_campaign(&self, tenant: &str, campaign_id: &str) -> Result<Option<Campaign>>;
    async fn list_campaigns(&self, tenant: &str, page: PageRequest) -> Result<Page<Campaign>>;
    /// Compare-and-set of the campaign state: moves to `to` only from one of
    /// `from`. Returns the updated campaign, or `None` when it was in another
    /// state. A campaign moved to sending whose recipients all have outcomes
    /// completes at once (resumed after finishing while paused).
    async fn transition_campaign(
        &self,
        tenant: &str,
        campaign_id: &str,
        from: &[CampaignState],
        to: CampaignState,
    ) -> Result<Option<Campaign>>;
    /// Records fan-out progress: `added` recipients up to `cursor` (a
    /// subscriber id), and whether fan-out is finished. Atomic per campaign.
    async fn save_fanout(
        &self,
        tenant: &str,
        campaign_id: &str,
        cursor: &str,
        added: i64,
        done: bool,
    ) -> Result<Campaign>;
    /// Records a final outcome once per (campaign, subscriber) and bumps the
    /// counters; completes the campaign when every recipient has one.
    async fn record_outcome(
        &self,
        tenant: &str,
        campaign_id: &str,
        subscriber_id: &str,
        outcome: Outcome,
    ) -> Result<OutcomeRecorded>;
    /// Counts one 4xx deferral.
    async fn record_deferral(&self, tenant: &str, campaign_id: &str) -> Result<()>;
    /// Marks the campaign as having made progress now (after a reconciliation).
    async fn touch_progress(&self, tenant: &str, campaign_id: &str) -> Result<()>;
    /// Recounts the campaign's delivered and failed totals from its outcome
    /// records, repairs the counters where they fall short (a backend whose
    /// counter update can fail after its outcome record was written, such as
    /// ScyllaDB's non-idempotent counters during an outage), and completes
    /// the campaign when every recipient has an outcome. Returns whether this
    /// call completed it. Costs a read of every outcome: for reconciliation.
    async fn recount_outcomes(&self, tenant: &str, campaign_id: &str) -> Result<bool>;
    /// The ids among `subscriber_ids` that have no final outcome in the campaign yet.
    async fn without_outcome(&self, campaign_id: &str, subscriber_ids: &[String]) -> Result<Vec<String>>;
    /// Campaigns in `state` across tenants, for resuming work after a restart.
    async fn campaigns_in_state(&self, state: CampaignState, limit: usize) -> Result<Vec<Campaign>>;
    /// The tenant of a campaign, by its id alone (a bounce's VERP address
    /// names the campaign, not the tenant).
    async fn campaign_tenant(&self, campaign_id: &str) -> Result<Option<String>>;
}

/// The send ledger: one row per (campaign, subscriber), claimed before
/// sending so a redelivered job never sends twice.
#[async_trait]
pub trait SendLedger: Send + Sync {
    /// Insert-if-absent claim with a lease. A claim held by `owner` itself,
    /// or whose lease expired, is taken over.
    async fn claim(&self, campaign_id: &str, subscriber_id: &str, owner: &str, lease: Duration) -> Result<Claim>;
    /// Marks the claim finished (sent or failed) with the Message-ID.
    async fn finish(
        &self,
        campaign_id: &str,
        subscriber_id: &str,
        owner: &str,
        state: LedgerState,
        message_id: &str,
    ) -> Result<()>;
    /// Gives a claim back (the send was deferred and will be retried).
    async fn release(&self, campaign_id: &str, subscriber_id: &str, owner: &str) -> Result<()>;
}

/// Feedback records by (tenant, time-ordered id), kept `retention` long;
/// soft-bounce scores by (tenant, subscriber).
#[async_trait]
pub trait FeedbackStore: Send + Sync {
    /// Stores a record; the raw message is compressed and sealed with the tenant's key.
    async fn insert_feedback(&self, record: FeedbackRecord) -> Result<()>;
    /// Newest first, keyset-paged by id; `kind` filters when given. With
    /// `with_raw` the raw messages are opened too (reclassification).
    async fn list_feedback(
        &self,
        tenant: &str,
        kind: Option<String>,
        with_raw: bool,
        page: PageRequest,
    ) -> Result<Page<FeedbackRecord>>;
    /// Replaces the classification and verdict of a stored record.
    async fn update_feedback_verdict(&self, record: FeedbackRecord) -> Result<bool>;
    /// Adds `increment` to the subscriber's soft-bounce score after decaying
    /// the stored score by `half_life_ms` since it was last changed; returns the new score.
    async fn add_bounce_score(
        &self,
        tenant: &str,
        subscriber_id: &str,
        increment: f64,
        half_life_ms: i64,
    ) -> Result<f64>;
    /// Deletes records received before `before` (Unix ms); returns how many.
    async fn purge_feedback(&self, before: i64) -> Result<u64>;
    /// Counts `kind` once per (campaign, subscriber) in the campaign's stats.
    /// Returns false when it was counted already.
    async fn record_engagement(
        &self,
        tenant: &str,
        campaign_id: &str,
        subscriber_id: &str,
        kind: Engagement,
    ) -> Result<bool>;
}

/// Segment definitions by (tenant, id). The rule is stored as canonical text.
#[async_trait]
pub trait SegmentStore: Send + Sync {
    /// Inserts; with a `request_id` seen before, returns the first result.
    async fn create_segment(&self, segment: Segment, request_id: Option<String>) -> Result<Segment>;
    async fn get_segment(&self, tenant: &str, segment_id: &str) -> Result<Option<Segment>>;
    async fn list_segments(&self, tenant: &str, page: PageRequest) -> Result<Page<Segment>>;
    /// Returns false when it did not exist.
    async fn delete_segment(&self, tenant: &str, segment_id: &str) -> Result<bool>;
}

/// Behavioral events by (tenant, event id), a time series kept
/// `behavior.retention_days` (TTL + TWCS in ScyllaDB, a time index and an
/// hourly purge in SQLite). Properties are sealed with the tenant's key.
#[async_trait]
pub trait BehaviorStore: Send + Sync {
    /// Inserts the events whose ids are new, all in one transaction; says for
    /// each whether it still has to be published (a first copy wins).
    async fn track_events(&self, events: Vec<BehaviorEventRow>) -> Result<Vec<Tracked>>;
    /// Records that these events reached the bus.
    async fn mark_published(&self, tenant: &str, event_ids: Vec<String>) -> Result<()>;
    /// Deletes events that happened before `before` (Unix ms); returns how many.
    async fn purge_events(&self, before: i64) -> Result<u64>;
}

/// Everything a role may need from the store.
pub trait Store:
    ListStore
    + SubscriberStore
    + SuppressionStore
    + AccessStore
    + AuditLog
    + KeyManagement
    + CampaignStore
    + SendLedger
    + FeedbackStore
    + SegmentStore
    + BehaviorStore
{
}
impl<
    T: ListStore
        + SubscriberStore
        + SuppressionStore
        + AccessStore
        + AuditLog
        + KeyManagement
        + CampaignStore
        + SendLedger
        + FeedbackStore
        + SegmentStore
        + BehaviorStore,
> Store for T
{
}

/// Shared handle to the configured store backend.
pub type DynStore = Arc<dyn Store>;

/// The tenant `demo` and a first single-node `serve` create.
pub const DEFAULT_TENANT: &str = "default";

impl From<StoreError> for broadside_proto::ServiceError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(what) => Self::NotFound(what),
            StoreError::Conflict(what) => Self::FailedPrecondition(what),
            StoreError::Backend(what) => Self::Unavailable(format!("store: {what}")),
            failed @ StoreError::Failed { .. } => Self::Unavailable(broadside_proto::error_chain(&failed)),
            StoreError::Invalid { field, message } => Self::invalid(field, message),
        }
    }
}
