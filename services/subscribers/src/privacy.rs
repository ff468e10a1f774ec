//! Export (GDPR art. 15/20) and erasure (art. 17).

use broadside_auth::Caller;
use broadside_proto::ServiceError;
use broadside_proto::v1::subscriber_event::Change;
use broadside_proto::v1::*;

use std::sync::Arc;

use broadside_bus::{Record, Redactor, Topic, headers};
use prost::Message as _;

use crate::Privacy;
use crate::events::Position;
use crate::tenant;

const BATCH_TYPE: &str = "broadside.v1.SubscriberEventBatch";
const BEHAVIOR_BATCH_TYPE: &str = "broadside.v1.BehaviorEventBatch";

impl Privacy<'_> {
    /// Removes the subscriber's records from every topic of the embedded
    /// bus: single records are blanked, batches lose only its events.
    async fn redact_bus(&self, subscriber_id: &str) -> Result<u64, ServiceError> {
        let mut changed = 0;
        for topic in Topic::ALL {
            let name = topic.name(&self.settings.topic_prefix);
            let id = subscriber_id.to_owned();
            let redactor: Redactor = Arc::new(move |record: &Record| {
                let kind = record.headers.iter().find(|(k, _)| k == headers::TYPE).map(|(_, v)| v.as_str());
                let payload = record.payload.as_slice();
                match kind {
                    Some(BATCH_TYPE) => match SubscriberEventBatch::decode(payload) {
                        Ok(mut batch) => {
                            batch.events.retain(|event| event.subscriber_id != id);
                            if batch.events.is_empty() { Vec::new() } else { batch.encode_to_vec() }
                        }
                        Err(_) => Vec::new(),
                    },
                    Some(BEHAVIOR_BATCH_TYPE) => match BehaviorEventBatch::decode(payload) {
                        Ok(mut batch) => {
                            batch.events.retain(|event| event.subscriber_id != id);
                            if batch.events.is_empty() { Vec::new() } else { batch.encode_to_vec() }
                        }
                        Err(_) => Vec::new(),
                    },
                    _ => Vec::new(),
                }
            });
            changed += self.bus.redact(&name, subscriber_id, redactor).await?;
        }
        Ok(changed)
    }

    pub async fn export_subscriber(
        &self,
        caller: &Caller,
        request: ExportSubscriberRequest,
    ) -> Result<ExportSubscriberResponse, ServiceError> {
        let subscriber = self.subscribers().resolve(caller, &request.name, &request.email).await?;
        let export = self
            .store
            .export_subscriber(tenant(caller), &subscriber.id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("subscribers/{}", subscriber.id)))?;
        let json = serde_json::to_string_pretty(&serde_json::json!({
            "exported_at": broadside_store::now_millis(),
            "tenant": caller.tenant,
            "store": export,
        }))
        .map_err(|error| ServiceError::Internal(format!("export: {error}")))?;
        let resource = format!("subscribers/{}", subscriber.id);
        broadside_auth::audit(&self.store, caller, "subscriber.export", &resource, serde_json::json!({})).await?;
        Ok(ExportSubscriberResponse { json })
    }

    /// Deletes the personal data from the store and from the embedded bus
    /// log, keeps a suppression by hash, and announces the erasure so every
    /// projection drops the subscriber too.
    pub async fn erase_subscriber(
        &self,
        caller: &Caller,
        request: EraseSubscriberRequest,
    ) -> Result<(EraseSubscriberResponse, Position), ServiceError> {
        let subscriber = self.subscribers().resolve(caller, &request.name, &request.email).await?;
        let hash = self
            .store
            .erase_subscriber(tenant(caller), &subscriber.id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("subscribers/{}", subscriber.id)))?;
        let purged = self.redact_bus(&subscriber.id).await?;
        let position = self
            .publish(vec![(caller.tenant.clone(), subscriber.id.clone(), Change::Erased(SubscriberErased {}))])
            .await?;
        let resource = format!("subscribers/{}", subscriber.id);
        let detail = serde_json::json!({ "bus_records_redacted": purged });
        broadside_auth::audit(&self.store, caller, "subscriber.erase", &resource, detail).await?;
        Ok((EraseSubscriberResponse { email_hash: hash }, position))
    }
}
