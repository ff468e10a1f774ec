//! Plain records the store keeps. Times are Unix milliseconds.

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

#[derive(Debug, Clone, PartialEq)]
pub struct MailingList {
    pub tenant: String,
    pub id: String,
    pub display_name: String,
    pub description: String,
    pub create_time: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriberStatus {
    Active = 1,
    Unsubscribed = 2,
    Suppressed = 3,
}

impl SubscriberStatus {
    pub fn from_i64(value: i64) -> Self {
        match value {
            2 => Self::Unsubscribed,
            3 => Self::Suppressed,
            _ => Self::Active,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subscriber {
    pub tenant: String,
    pub id: String,
    pub email: String,
    pub display_name: String,
    pub attributes: Map<String, Value>,
    pub status: SubscriberStatus,
    /// List ids this subscriber belongs to (on upsert: lists to join).
    pub lists: Vec<String>,
    pub create_time: i64,
    pub update_time: i64,
}

/// The key subscribers are unique by: the address, trimmed and lowercased.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
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
    pub state: CampaignState,
    pub stats: CampaignStats,
    /// Last subscriber id fanned out; empty before fan-out starts.
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
