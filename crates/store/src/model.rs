//! Plain records the store keeps. Times are Unix milliseconds.

use serde::Serialize;
use serde_json::{Map, Value};

/// Keyset paging: `token` is the last id of the previous page.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub size: usize,
    pub token: Option<String>,
}

impl PageRequest {
    pub const DEFAULT_SIZE: usize = 100;
    pub const MAX_SIZE: usize = 1000;

    /// A page request with the size clamped to 1..=MAX_SIZE (0 means default).
    pub fn new(size: i64, token: &str) -> Self {
        let size = match size {
            s if s <= 0 => Self::DEFAULT_SIZE,
            s => (s as usize).min(Self::MAX_SIZE),
        };
        Self { size, token: (!token.is_empty()).then(|| token.to_owned()) }
    }
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// `None` on the last page.
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MailingList {
    pub tenant: String,
    pub id: String,
    pub display_name: String,
    pub description: String,
    pub opt_in: OptIn,
    pub create_time: i64,
}

/// Whether joining a list needs a confirmed click (double opt-in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OptIn {
    Single = 1,
    Double = 2,
}

impl OptIn {
    pub fn from_i64(value: i64) -> Self {
        if value == 2 { Self::Double } else { Self::Single }
    }
}

/// Tenant-wide state of a subscriber. Only `Active` subscribers get campaigns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriberStatus {
    Active = 1,
    Unsubscribed = 2,
    Bounced = 3,
    Complained = 4,
    Blocklisted = 5,
}

impl SubscriberStatus {
    pub fn from_i64(value: i64) -> Self {
        match value {
            2 => Self::Unsubscribed,
            3 => Self::Bounced,
            4 => Self::Complained,
            5 => Self::Blocklisted,
            _ => Self::Active,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Unsubscribed => "unsubscribed",
            Self::Bounced => "bounced",
            Self::Complained => "complained",
            Self::Blocklisted => "blocklisted",
        }
    }
}

/// State of one list membership. Campaigns go to `Confirmed` members only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    Unconfirmed = 1,
    Confirmed = 2,
    Unsubscribed = 3,
}

impl SubscriptionStatus {
    pub fn from_i64(value: i64) -> Self {
        match value {
            1 => Self::Unconfirmed,
            3 => Self::Unsubscribed,
            _ => Self::Confirmed,
        }
    }
}

/// One list membership of a subscriber.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Subscription {
    pub list_id: String,
    pub status: SubscriptionStatus,
    pub update_time: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Subscriber {
    pub tenant: String,
    pub id: String,
    pub email: String,
    pub display_name: String,
    pub attributes: Map<String, Value>,
    pub status: SubscriberStatus,
    /// On upsert: list ids to join. On read: lists not unsubscribed from.
    pub lists: Vec<String>,
    /// On read: every membership with its status.
    pub subscriptions: Vec<Subscription>,
    pub create_time: i64,
    pub update_time: i64,
}

impl Subscriber {
    /// Sets the memberships and the lists derived from them (every list not unsubscribed).
    pub fn set_subscriptions(&mut self, subscriptions: Vec<Subscription>) {
        self.lists = subscriptions
            .iter()
            .filter(|s| s.status != SubscriptionStatus::Unsubscribed)
            .map(|s| s.list_id.clone())
            .collect();
        self.subscriptions = subscriptions;
    }
}

/// The key subscribers are unique by: the address, trimmed and lowercased.
/// (Stored addresses keep the local part's case; see `broadside_mail::address::normalize`.)
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Who consented how: recorded with every subscribe, confirm and unsubscribe.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ConsentContext {
    /// `api`, `import`, `confirm_link`, `one_click`, ...
    pub source: String,
    pub ip: String,
    pub user_agent: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentAction {
    Subscribe,
    Confirm,
    Unsubscribe,
}

impl ConsentAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subscribe => "subscribe",
            Self::Confirm => "confirm",
            Self::Unsubscribe => "unsubscribe",
        }
    }

    pub fn parse(text: &str) -> Self {
        match text {
            "confirm" => Self::Confirm,
            "unsubscribe" => Self::Unsubscribe,
            _ => Self::Subscribe,
        }
    }
}

/// One entry of the append-only consent ledger.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsentRecord {
    pub subscriber_id: String,
    pub time: i64,
    pub action: ConsentAction,
    pub list_id: String,
    #[serde(flatten)]
    pub context: ConsentContext,
}

/// How an upsert treats an existing subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpsertMode {
    /// Update name and merge attributes.
    #[default]
    Upsert,
    /// Leave the existing subscriber's data as it is (memberships are still added).
    SkipExisting,
}

/// Options of [`crate::SubscriberStore::upsert_subscriber`].
#[derive(Debug, Clone, Default)]
pub struct UpsertOptions {
    pub mode: UpsertMode,
    /// Re-subscribe lists the subscriber had unsubscribed from (an explicit
    /// request by the person); imports never do.
    pub resubscribe: bool,
    pub consent: ConsentContext,
}

/// Result of an upsert.
#[derive(Debug, Clone)]
pub struct Upserted {
    pub subscriber: Subscriber,
    pub created: bool,
    /// False when `SkipExisting` left an existing subscriber untouched.
    pub changed: bool,
    /// Lists joined in this call that wait for a double opt-in confirmation.
    pub pending_confirmation: Vec<String>,
}

/// One parsed row of an import, with its 1-based line in the file.
#[derive(Debug, Clone)]
pub struct ImportRow {
    pub line: u64,
    pub subscriber: Subscriber,
}

/// The result of one imported row.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedRow {
    pub line: u64,
    pub subscriber_id: String,
    pub created: bool,
    pub changed: bool,
    /// Membership status in the import's list.
    pub status: SubscriptionStatus,
    /// The subscriber's stored state after the row, for state-carrying events.
    pub email: String,
    pub display_name: String,
    pub attributes: Map<String, Value>,
    pub subscriber_status: SubscriberStatus,
}

/// Fields [`crate::SubscriberStore::update_subscriber`] may change.
#[derive(Debug, Clone, Default)]
pub struct SubscriberUpdate {
    pub display_name: Option<String>,
    pub attributes: Option<Map<String, Value>>,
    pub status: Option<SubscriberStatus>,
}

/// Progress of an import under one request id, so a re-run resumes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct ImportJob {
    pub request_id: String,
    pub list_id: String,
    /// Every line up to here is committed.
    pub lines_done: u64,
    pub imported: i64,
    pub updated: i64,
    pub skipped: i64,
    pub rejected: i64,
    /// The first rejections (capped), `line N: reason`.
    pub errors: Vec<String>,
    pub done: bool,
}

/// Why an address must not be mailed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SuppressionReason {
    HardBounce,
    Complaint,
    Unsubscribe,
    Manual,
    Erased,
}

impl SuppressionReason {
    pub const ALL: [Self; 5] = [Self::HardBounce, Self::Complaint, Self::Unsubscribe, Self::Manual, Self::Erased];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::HardBounce => "hard_bounce",
            Self::Complaint => "complaint",
            Self::Unsubscribe => "unsubscribe",
            Self::Manual => "manual",
            Self::Erased => "erased",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == text)
    }
}

/// A suppression: an address (or `@domain`) that must not be mailed,
/// tenant-wide (`list_id` empty) or for one list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Suppression {
    pub tenant: String,
    /// The tenant's blind index of the normalized target (computed by the store).
    pub email_hash: String,
    /// Empty for tenant-wide.
    pub list_id: String,
    /// The address or `@domain`; empty once the address was erased.
    pub target: String,
    pub reason: SuppressionReason,
    /// For `hard_bounce`, the bounce reason behind it (`user_unknown`,
    /// `blocked`, ...); empty otherwise and for suppressions made before
    /// bounces had reasons.
    pub detail: String,
    pub create_time: i64,
}

impl Suppression {
    /// The stored form of reason and detail: `hard_bounce:blocked` (one
    /// column in every store, so no schema change was needed).
    pub fn stored_reason(&self) -> String {
        match self.detail.is_empty() {
            true => self.reason.as_str().to_owned(),
            false => format!("{}:{}", self.reason.as_str(), self.detail),
        }
    }

    /// Reason and detail from their stored form (an unknown reason reads as `manual`).
    pub fn parse_stored_reason(stored: &str) -> (SuppressionReason, String) {
        let (reason, detail) = stored.split_once(':').unwrap_or((stored, ""));
        (SuppressionReason::parse(reason).unwrap_or(SuppressionReason::Manual), detail.to_owned())
    }
}

/// A send-ledger row, for exports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    pub campaign_id: String,
    pub state: String,
    pub message_id: String,
    pub update_time: i64,
}

/// Everything the store holds about one subscriber.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriberExport {
    pub subscriber: Subscriber,
    pub consent: Vec<ConsentRecord>,
    pub suppressions: Vec<Suppression>,
    pub deliveries: Vec<Delivery>,
    /// Bounces, complaints and unsubscribes received about them (without the raw messages).
    pub feedback: Vec<FeedbackRecord>,
    /// Behavioral events tracked for them (oldest first).
    pub events: Vec<BehaviorEventRow>,
}

/// One tracked behavioral event (purchase, login, ...), kept until its
/// time falls out of the retention.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct BehaviorEventRow {
    pub tenant: String,
    /// The client's id (unique per tenant).
    pub event_id: String,
    pub subscriber_id: String,
    pub name: String,
    /// Unix ms.
    pub time: i64,
    /// Flat typed properties.
    pub properties: Map<String, Value>,
}

/// What storing a tracked event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracked {
    /// New: store it and publish it.
    New,
    /// Stored earlier but its publish was not confirmed: publish it again.
    Unpublished,
    /// Stored and published before: nothing to do.
    Duplicate,
}

/// A tenant: every resource belongs to exactly one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tenant {
    pub id: String,
    pub display_name: String,
    pub create_time: i64,
    /// Whether campaigns may use the transactional stream (exempt from the
    /// unsubscribe-link and postal-address rules).
    pub allow_transactional: bool,
}

/// What an API key may do. `Admin` implies every other scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Scope {
    #[serde(rename = "admin")]
    Admin,
    #[serde(rename = "subscribers:write")]
    SubscribersWrite,
    #[serde(rename = "campaigns:write")]
    CampaignsWrite,
    #[serde(rename = "read")]
    Read,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Admin, Scope::SubscribersWrite, Scope::CampaignsWrite, Scope::Read];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::SubscribersWrite => "subscribers:write",
            Self::CampaignsWrite => "campaigns:write",
            Self::Read => "read",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == text.trim())
    }
}

/// A stored API key: only the SHA-256 of its secret is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: String,
    pub tenant: String,
    pub secret_hash: Vec<u8>,
    pub scopes: Vec<Scope>,
    pub description: String,
    pub create_time: i64,
    /// 0 while the key is valid.
    pub revoke_time: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub tenant: String,
    pub id: String,
    pub version: i64,
    pub display_name: String,
    pub subject: String,
    pub html_body: String,
    pub text_body: String,
    pub create_time: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CampaignState {
    Draft = 1,
    Sending = 2,
    Paused = 3,
    Completed = 4,
    Cancelled = 5,
}

impl CampaignState {
    pub fn from_i64(value: i64) -> Self {
        match value {
            2 => Self::Sending,
            3 => Self::Paused,
            4 => Self::Completed,
            5 => Self::Cancelled,
            _ => Self::Draft,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CampaignStats {
    pub recipients: i64,
    pub delivered: i64,
    pub failed: i64,
    pub deferred: i64,
    pub bounced: i64,
    pub complained: i64,
    pub unsubscribed: i64,
    pub opened: i64,
    pub clicked: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Campaign {
    pub tenant: String,
    pub id: String,
    pub display_name: String,
    pub template_id: String,
    pub template_version: i64,
    pub list_id: String,
    pub from_address: String,
    pub from_name: String,
    pub reply_to: String,
    /// Messages per second across all senders; 0 for no limit.
    pub max_messages_per_second: f64,
    /// `marketing` or `transactional`.
    pub stream: String,
    /// The sender's postal address (CAN-SPAM).
    pub postal_address: String,
    /// A segment id: only the list's members that match it; empty for all.
    pub segment_id: String,
    /// Fan-out waits until then (Unix ms); 0 sends as soon as started.
    pub send_at: i64,
    /// `HH:MM-HH:MM ZONE` outside which senders hold the campaign's mail
    /// (see [`crate::schedule::SendWindow`]); empty for any time.
    pub send_window: String,
    pub state: CampaignState,
    pub stats: CampaignStats,
    /// Member cursor (`SubscriberStore::member_cursor`) of the last recipient
    /// fanned out; empty before fan-out starts.
    pub fanout_cursor: String,
    pub fanout_done: bool,
    pub create_time: i64,
    pub start_time: i64,
    pub complete_time: i64,
    /// Last time a recipient got an outcome or a deferral (or a reconciliation ran).
    pub progress_time: i64,
}

/// Final outcome of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Failed,
}

/// Result of [`crate::CampaignStore::record_outcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutcomeRecorded {
    /// False when this recipient already had an outcome (a redelivered event).
    pub recorded: bool,
    /// True when this outcome was the last one and completed the campaign.
    pub completed_campaign: bool,
}

/// State of a send-ledger row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerState {
    Claimed,
    Sent,
    Failed,
}

impl LedgerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Claimed => "claimed",
            Self::Sent => "sent",
            Self::Failed => "failed",
        }
    }
}

/// Result of [`crate::SendLedger::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller owns the claim and should send. `takeover` is true when an
    /// earlier claim was taken over: a send may already have happened.
    Acquired { takeover: bool },
    /// Already finished; do not send again. Carries the recorded state and Message-ID.
    Finished { state: LedgerState, message_id: String },
    /// Another owner holds a live lease until `lease_until`.
    Held { owner: String, lease_until: i64 },
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

/// A new time-ordered id (UUIDv7, simple form), so keyset paging follows creation order.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// One administrative action: who, when, what, from where.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    pub tenant: String,
    /// Time-ordered (UUIDv7).
    pub id: String,
    pub time: i64,
    /// `apiKeys/ID` for API calls, `cli` for operator commands.
    pub actor: String,
    /// `api_key.create`, `subscriber.erase`, `campaign.start`, ...
    pub action: String,
    /// The resource acted on (a name, never an address).
    pub resource: String,
    /// Details as JSON (counts, reasons; no personal data).
    pub detail: String,
    /// The caller's address, or `cli`.
    pub source: String,
}

/// One inbound feedback message (bounce, complaint, auto-reply) or one
/// feedback action (unsubscribe), with the verdict given to it. Unattributed
/// messages (no signed link to one of our messages) have an empty tenant.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct FeedbackRecord {
    pub tenant: String,
    /// Time-ordered (UUIDv7).
    pub id: String,
    pub time: i64,
    /// `bounce`, `complaint`, `auto_reply`, `unsubscribe`, `unknown`.
    pub kind: String,
    pub subscriber_id: String,
    pub campaign_id: String,
    /// `hard`, `soft`, `block`, `mailbox_full`, `auto_reply`, `complaint`, `notice`, `unknown`.
    pub class: String,
    /// RFC 3463 status, e.g. `5.1.1`.
    pub status_code: String,
    pub diagnostic: String,
    pub reporting_mta: String,
    /// The classification rule that matched.
    pub rule: String,
    /// What was done: `suppressed`, `scored`, `unsubscribed`, `ignored`, `unattributed`.
    pub verdict: String,
    /// The whole message as received (the store compresses and seals it); empty for actions.
    #[serde(skip)]
    pub raw: Vec<u8>,
}

/// A kind of feedback counted once per (campaign, recipient) in campaign stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engagement {
    Bounced,
    Complained,
    Unsubscribed,
    Opened,
    Clicked,
}

impl Engagement {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bounced => "bounced",
            Self::Complained => "complained",
            Self::Unsubscribed => "unsubscribed",
            Self::Opened => "opened",
            Self::Clicked => "clicked",
        }
    }
}

/// A named segment rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Segment {
    pub tenant: String,
    pub id: String,
    pub display_name: String,
    /// Canonical rule text.
    pub rule: String,
    pub create_time: i64,
}
