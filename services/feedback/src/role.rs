//! The feedback role's one way in: its settings from the config, and
//! `start`, which binds the inbound SMTP/LMTP listener and returns
//! FeedbackService, the public link routes (`/u`, `/o`, `/c`) and the worker.

use anyhow::Context as _;
use broadside_config::Config;
use broadside_mail::token::TokenSigner;
use broadside_role::{Deps, Parts};

use crate::{Feedback, FeedbackSettings};

impl FeedbackSettings {
    /// The settings `config` gives, with the link signer the node opened once.
    pub fn from_config(config: &Config, signer: TokenSigner) -> Self {
        FeedbackSettings {
            topic_prefix: config.bus.topic_prefix.clone(),
            signer,
            bounce_domain: config.bounce_domain().to_owned(),
            domain: config.mail.domain.clone(),
            hostname: config.bounce_domain().to_owned(),
            config: config.feedback.clone(),
            destinations: config.sender.destinations.clone(),
        }
    }
}

/// Starts the role: binds `feedback.inbound_addr` (reported as `inbound`)
/// and runs the inbound listener, the delivery-events consumer and the
/// retention purge until the node stops.
pub async fn start(settings: FeedbackSettings, deps: &Deps) -> anyhow::Result<Parts> {
    let addr = settings.config.inbound_addr;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("feedback.inbound_addr {addr}: cannot listen"))?;
    let inbound = listener.local_addr()?;
    let feedback = Feedback::new(deps.store.clone(), deps.bus.clone(), settings, deps.metrics.clone());
    let mut parts = Parts::default()
        .grpc(feedback.api().into_service())
        .http(feedback.http_routes())
        .worker("feedback", feedback.run(listener, deps.stop.clone()));
    parts.listening.push(("inbound", inbound));
    Ok(parts)
}
