//! The feedback role: what comes back from mailbox providers and people.
//!
//! - [`inbound`]: an SMTP + LMTP listener for the VERP bounce domain, the
//!   feedback-loop mailboxes and the unsubscribe mailto address;
//! - [`classify`]: DSN (RFC 3464), ARF (RFC 5965), named rules for
//!   non-standard bounces, auto-replies;
//! - [`policy`]: attribution by signed tokens only, the per-tenant bounce
//!   policy, the stored record and the `feedback-events` it publishes;
//! - [`http`]: one-click unsubscribe (RFC 8058), the landing page and
//!   preference center, the open pixel and the click redirect;
//! - `delivery-events` with a 5xx reply go through the same policy.
//!
//! The subscribers role applies feedback-events to subscriptions and
//! suppressions; dispatch counts them into campaign stats.

pub mod classify;
mod grpc;
pub mod http;
pub mod inbound;
pub mod policy;
mod role;
mod workers;

use std::sync::Arc;
use std::time::Duration;

use broadside_bus::{DynBus, Topic};
use broadside_config::FeedbackConfig;
use broadside_mail::token::TokenSigner;
use broadside_store::DynStore;
use broadside_telemetry::Metrics;
use tokio_util::sync::CancellationToken;

pub use grpc::FeedbackApi;
pub use role::start;

/// What the role needs besides the store and the bus.
#[derive(Clone)]
pub struct FeedbackSettings {
    pub topic_prefix: String,
    pub signer: TokenSigner,
    /// Domain of VERP return paths (`mail.bounce_domain`).
    pub bounce_domain: String,
    /// `mail.domain`: `unsubscribe@` it is the List-Unsubscribe mailto address.
    pub domain: String,
    /// Name in the SMTP greeting.
    pub hostname: String,
    pub config: FeedbackConfig,
    /// Mailbox providers (`sender.destinations`), naming the destination
    /// of refusals in metrics.
    pub destinations: Vec<broadside_config::DestinationGroup>,
}

impl FeedbackSettings {
    /// Feedback-loop mailboxes (ARF), with the default when none are configured.
    pub fn complaint_addresses(&self) -> Vec<String> {
        if self.config.complaint_addresses.is_empty() {
            vec![format!("fbl@{}", self.domain)]
        } else {
            self.config.complaint_addresses.iter().map(|a| a.to_ascii_lowercase()).collect()
        }
    }

    pub fn command_timeout(&self) -> Duration {
        Duration::from_secs(self.config.command_timeout_secs.max(1))
    }
}

/// The role's shared state. Cheap to clone.
#[derive(Clone)]
pub struct Feedback {
    pub(crate) store: DynStore,
    pub(crate) bus: DynBus,
    pub(crate) settings: Arc<FeedbackSettings>,
    pub(crate) metrics: Metrics,
    pub(crate) events_topic: String,
}

impl Feedback {
    /// The role's state without its listeners and workers, for offline
    /// tools (`broadside feedback reclassify`); a node uses [`start`].
    pub fn new(store: DynStore, bus: DynBus, settings: FeedbackSettings, metrics: Metrics) -> Self {
        Self {
            events_topic: Topic::FeedbackEvents.name(&settings.topic_prefix),
            store,
            bus,
            settings: Arc::new(settings),
            metrics,
        }
    }

    /// The gRPC API.
    pub fn api(&self) -> FeedbackApi {
        FeedbackApi::new(self.clone())
    }

    /// The public HTTP routes (`/u`, `/o`, `/c`).
    pub fn http_routes(&self) -> axum::Router {
        http::routes(self.clone())
    }

    /// Runs the inbound listener on `listener`, the delivery-events consumer
    /// and the retention purge until `shutdown`.
    pub(crate) async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let inbound = tokio::spawn(inbound::serve(listener, self.clone(), shutdown.clone()));
        let deliveries = tokio::spawn(workers::consume_deliveries(self.clone(), shutdown.clone()));
        let purge = tokio::spawn(workers::purge(self.clone(), shutdown.clone()));
        let (inbound, deliveries, purge) = tokio::join!(inbound, deliveries, purge);
        inbound??;
        deliveries??;
        purge??;
        Ok(())
    }
}
