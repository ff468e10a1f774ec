//! The sender role's one way in: its settings from the config, and `start`,
//! which returns the replica's worker (it serves no gRPC: replicas scale
//! behind the bus, not behind a load balancer).

use std::time::Duration;

use broadside_config::Config;
use broadside_mail::MailKit;
use broadside_role::{Deps, Parts};

use crate::{Sender, SenderSettings};

impl SenderSettings {
    pub fn from_config(config: &Config) -> Self {
        SenderSettings {
            id: replica_id(config),
            concurrency: config.sender.concurrency,
            drain_timeout: Duration::from_secs(config.sender.drain_timeout_secs),
            lease: Duration::from_secs(config.sender.lease_secs),
            retry_base: Duration::from_secs_f64(config.sender.retry_base_secs),
            topic_prefix: config.bus.topic_prefix.clone(),
            public_url: config.mail.public_url.clone(),
            tracking: config.feedback.tracking,
            domain: config.mail.domain.clone(),
            bounce_domain: config.bounce_domain().to_owned(),
            destinations: config.sender.destinations.clone(),
            destination_concurrency: config.sender.destination_concurrency,
            destination_per_second: config.sender.destination_per_second,
        }
    }
}

/// This replica's ledger identity: `sender.id`, else the host name (a
/// StatefulSet pod's name is stable across restarts).
pub fn replica_id(config: &Config) -> String {
    config.sender.id.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "sender".into())
    })
}

/// Starts a sender replica: it consumes send jobs and retries until the
/// node stops, then drains (within `drain_timeout`) and commits.
pub fn start(settings: SenderSettings, mail: MailKit, deps: &Deps) -> anyhow::Result<Parts> {
    let sender =
        Sender::new(settings, deps.store.clone(), deps.bus.clone(), mail.transport, mail.signer, deps.metrics.clone())
            .with_dkim(mail.dkim);
    Ok(Parts::default().worker("sender", sender.run(deps.readiness.clone(), deps.stop.clone())))
}
