//! The subscribers role: tenants' lists, subscribers, memberships, consent,
//! suppressions, imports, export and erasure over gRPC, plus API keys.
//! Every change is published on `subscriber-events` for the roles that
//! project subscriber state (segmentation).
//!
//! Each API method takes the authenticated [`Caller`]; `grpc.rs` adapts
//! tonic requests and checks the scope each RPC needs.

mod behavior;
mod confirm;
mod convert;
mod events;
mod feedback;
mod grpc;
mod import;
mod keys;
mod lists;
mod privacy;
mod role;
mod subscribers;
mod suppressions;
mod validate;

use std::sync::Arc;

use broadside_auth::{Authenticator, Caller};
use broadside_bus::{DynBus, Topic};
use broadside_mail::token::TokenSigner;
use broadside_mail::transport::Transport;
use broadside_proto::ServiceError;
use broadside_store::DynStore;

pub use behavior::{BehaviorApi, behavior_record};
pub use confirm::http_routes;
pub use convert::{list_to_proto, subscriber_to_proto};
pub use events::Position;
pub use feedback::FEEDBACK_GROUP;
pub use import::{MAX_LINE_BYTES, MAX_ROW_BYTES};
pub use keys::{ApiKeyApi, AuditApi, parse_scopes};
pub use role::start;

/// Response header of every SubscriberService call that published
/// subscriber-events: `partition:offset,...`. Pass it to PreviewSegment's
/// `min_position` to read your own write.
pub const POSITION_HEADER: &str = "x-broadside-position";

/// What the role needs besides the store and the bus: how to mail and link
/// double opt-in confirmations.
#[derive(Clone)]
pub struct SubscriberSettings {
    pub topic_prefix: String,
    /// Base URL of the public HTTP server (`/confirm` lives there).
    pub public_url: String,
    pub confirm_from: String,
    pub domain: String,
    /// Days behavior events are kept (`behavior.retention_days`).
    pub behavior_retention_days: u32,
    pub signer: TokenSigner,
    pub transport: Transport,
    /// Confirmations are signed like campaigns.
    pub dkim: std::sync::Arc<broadside_mail::dkim::DkimKeys>,
}

/// The subscriber API, independent of gRPC so it can be called directly.
#[derive(Clone)]
pub struct SubscriberApi {
    store: DynStore,
    bus: DynBus,
    events_topic: String,
    auth: Authenticator,
    settings: Arc<SubscriberSettings>,
}

impl SubscriberApi {
    pub(crate) fn new(store: DynStore, bus: DynBus, settings: SubscriberSettings) -> Self {
        Self {
            events_topic: Topic::SubscriberEvents.name(&settings.topic_prefix),
            auth: Authenticator::new(store.clone()),
            store,
            bus,
            settings: Arc::new(settings),
        }
    }

    /// The tonic service for this API.
    pub fn into_service(self) -> broadside_proto::v1::subscriber_service_server::SubscriberServiceServer<Self> {
        broadside_proto::v1::subscriber_service_server::SubscriberServiceServer::new(self)
            .max_decoding_message_size(16 * 1024 * 1024)
    }
}

impl SubscriberApi {
    /// Publishes changes of subscribers as `(tenant, subscriber id, change)`
    /// on subscriber-events and says where they landed.
    pub(crate) async fn publish(
        &self,
        changes: Vec<(String, String, broadside_proto::v1::subscriber_event::Change)>,
    ) -> Result<Position, ServiceError> {
        events::publish(self.bus.as_ref(), &self.events_topic, changes).await
    }
}

/// The RPC groups of SubscriberService: views of [`SubscriberApi`] whose
/// methods live in one file each, so a method is found from its type.
macro_rules! groups {
    ($($(#[$doc:meta])* $name:ident => $accessor:ident),+ $(,)?) => {
        $(
            $(#[$doc])*
            #[derive(Clone, Copy)]
            pub struct $name<'a>(&'a SubscriberApi);

            impl std::ops::Deref for $name<'_> {
                type Target = SubscriberApi;
                fn deref(&self) -> &SubscriberApi {
                    self.0
                }
            }
        )+
        impl SubscriberApi {
            $(pub fn $accessor(&self) -> $name<'_> {
                $name(self)
            })+
        }
    };
}

groups! {
    /// Lists (`lists.rs`).
    Lists => lists,
    /// Subscribers, memberships and consent (`subscribers.rs`).
    Subscribers => subscribers,
    /// Suppressions (`suppressions.rs`).
    Suppressions => suppressions,
    /// Export and erasure (`privacy.rs`).
    Privacy => privacy,
    /// Double opt-in confirmations (`confirm.rs`).
    Confirmations => confirmations,
    /// CSV imports (`import/`).
    Imports => imports,
    /// Applying feedback-events (`feedback.rs`).
    FeedbackApplier => feedback,
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

fn mail_error(error: broadside_mail::MailError) -> ServiceError {
    error.into_service_error("")
}

/// A consent context from the API, defaulting the source.
fn consent_of(
    context: Option<broadside_proto::v1::ConsentContext>,
    default_source: &str,
) -> broadside_store::ConsentContext {
    let context = context.unwrap_or_default();
    let clip = |text: String, max: usize| text.chars().take(max).collect::<String>();
    broadside_store::ConsentContext {
        source: if context.source.is_empty() { default_source.to_owned() } else { clip(context.source, 64) },
        ip: clip(context.ip, 64),
        user_agent: clip(context.user_agent, 512),
    }
}

/// Tenant of the caller; kept as a function so every store call visibly scopes by it.
fn tenant(caller: &Caller) -> &str {
    &caller.tenant
}
