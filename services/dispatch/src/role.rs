//! The dispatch role's one way in: its settings from the config, and
//! `start`, which returns TemplateService, CampaignService and the fan-out,
//! outcome and engagement workers.

use std::time::Duration;

use broadside_config::Config;
use broadside_role::{Deps, Parts};

use crate::Dispatch;

/// What the role needs besides the store and the bus.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    pub topic_prefix: String,
    /// A send job expires this long after its campaign started (`sender.max_age_secs`).
    pub max_age_secs: u64,
    /// A sending campaign idle this long is reconciled.
    pub reconcile_after: Duration,
}

impl DispatchSettings {
    pub fn from_config(config: &Config) -> Self {
        DispatchSettings {
            topic_prefix: config.bus.topic_prefix.clone(),
            max_age_secs: config.sender.max_age_secs,
            reconcile_after: Duration::from_secs(config.dispatch.reconcile_after_secs),
        }
    }
}

/// Starts the role. Campaigns can target segments when the segmentation
/// role runs in this process (`deps.links.segments`).
pub fn start(settings: DispatchSettings, deps: &Deps) -> anyhow::Result<Parts> {
    let mut dispatch = Dispatch::new(
        deps.store.clone(),
        deps.bus.clone(),
        &settings.topic_prefix,
        deps.metrics.clone(),
        settings.max_age_secs,
        settings.reconcile_after,
    );
    if let Some(segments) = &deps.links.segments {
        dispatch = dispatch.with_segments(segments.clone());
    }
    Ok(Parts::default()
        .grpc(dispatch.template_api().into_service())
        .grpc(dispatch.campaign_api().into_service())
        .worker("dispatch", dispatch.run(deps.stop.clone())))
}
