//! The subscribers role's one way in: its settings from the config, and
//! `start`, which returns its gRPC services (subscribers, behavior, API
//! keys, audit), the `/confirm` page and its workers.

use broadside_config::Config;
use broadside_mail::MailKit;
use broadside_role::{Deps, Parts};

use crate::{ApiKeyApi, AuditApi, BehaviorApi, FEEDBACK_GROUP, SubscriberApi, SubscriberSettings};

impl SubscriberSettings {
    /// The settings `config` gives, with the mail parts the node opened once.
    pub fn from_config(config: &Config, mail: &MailKit) -> Self {
        SubscriberSettings {
            topic_prefix: config.bus.topic_prefix.clone(),
            public_url: config.mail.public_url.clone(),
            confirm_from: config.mail.confirm_from.clone().unwrap_or_else(|| format!("lists@{}", config.mail.domain)),
            domain: config.mail.domain.clone(),
            behavior_retention_days: config.behavior.retention_days,
            signer: mail.signer.clone(),
            transport: mail.transport.clone(),
            dkim: mail.dkim.clone(),
        }
    }
}

/// Starts the role: the APIs, the feedback-events consumer (bounces,
/// complaints and unsubscribes change subscribers) and behavior retention.
pub fn start(settings: SubscriberSettings, deps: &Deps) -> anyhow::Result<Parts> {
    let retention_days = settings.behavior_retention_days;
    let prefix = settings.topic_prefix.clone();
    let api = SubscriberApi::new(deps.store.clone(), deps.bus.clone(), settings);
    let metrics = deps.metrics.clone();
    let on_lag = move |lag: &[(String, u32, i64)]| metrics.set_lag(FEEDBACK_GROUP, lag);
    let feedback = api.feedback().run_feedback(deps.stop.clone(), on_lag);
    let behavior = BehaviorApi::new(deps.store.clone(), deps.bus.clone(), &prefix, retention_days);
    let purge = behavior.clone().purge(deps.stop.clone());
    Ok(Parts::default()
        .http(crate::http_routes(api.clone()))
        .grpc(api.into_service())
        .grpc(behavior.into_service())
        .grpc(ApiKeyApi::new(deps.store.clone()).into_service())
        .grpc(AuditApi::new(deps.store.clone()).into_service())
        .worker("subscribers", async move { Ok(feedback.await?) })
        .worker("behavior-retention", async move { Ok(purge.await?) }))
}
