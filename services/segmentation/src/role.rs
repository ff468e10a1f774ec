//! The segmentation role's one way in: its settings from the config, and
//! `start`, which returns SegmentService, the projection's worker and the
//! link campaign fan-out uses to ask who is in a segment.

use std::sync::Arc;

use broadside_config::Config;
use broadside_proto::ServiceError;
use broadside_role::{Deps, Links, Parts, SegmentMembers};

use crate::SegmentApi;
use crate::live::Live;

/// What the role needs besides the store and the bus.
#[derive(Debug, Clone)]
pub struct SegmentationSettings {
    pub topic_prefix: String,
    /// Behavior events older than this are dropped from the projection.
    pub behavior_retention_days: u32,
}

impl SegmentationSettings {
    pub fn from_config(config: &Config) -> Self {
        SegmentationSettings {
            topic_prefix: config.bus.topic_prefix.clone(),
            behavior_retention_days: config.behavior.retention_days,
        }
    }
}

/// Starts the role: the projection loads its snapshot and follows the bus
/// in a worker; SegmentService answers from it.
pub fn start(settings: SegmentationSettings, deps: &Deps) -> anyhow::Result<Parts> {
    let live = Live::default().with_behavior_retention(settings.behavior_retention_days);
    let run = live.clone().run(
        deps.store.clone(),
        deps.bus.clone(),
        settings.topic_prefix,
        deps.metrics.clone(),
        deps.stop.clone(),
    );
    let api = SegmentApi::new(deps.store.clone(), live);
    let links = Links { segments: Some(Arc::new(api.clone()) as Arc<dyn SegmentMembers>) };
    let mut parts = Parts::default().grpc(api.into_service()).worker("segmentation", run);
    parts.links = links;
    Ok(parts)
}

#[async_trait::async_trait]
impl SegmentMembers for SegmentApi {
    async fn members(&self, tenant: &str, segment_id: &str, list_id: &str) -> Result<Vec<String>, ServiceError> {
        SegmentApi::members(self, tenant, segment_id, Some(list_id)).await
    }
}
