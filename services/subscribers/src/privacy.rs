//! Export (GDPR art. 15/20) and erasure (art. 17).

use broadside_auth::Caller;
use broadside_proto::ServiceError;
use broadside_proto::v1::subscriber_event::Change;
use broadside_proto::v1::*;

use crate::{SubscriberApi, tenant};

impl SubscriberApi {
    pub async fn export_subscriber(
        &self,
        caller: &Caller,
        request: ExportSubscriberRequest,
    ) -> Result<ExportSubscriberResponse, ServiceError> {
        let subscriber = self.resolve(caller, &request.name, &request.email).await?;
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
        tracing::info!(tenant = %caller.tenant, key = %caller.key_id, subscriber = %subscriber.id, "subscriber exported");
        Ok(ExportSubscriberResponse { json })
    }

    /// Deletes the personal data from the store and from the embedded bus
    /// log, keeps a suppression by hash, and announces the erasure so every
    /// projection drops the subscriber too.
    pub async fn erase_subscriber(
        &self,
        caller: &Caller,
        request: EraseSubscriberRequest,
    ) -> Result<EraseSubscriberResponse, ServiceError> {
        let subscriber = self.resolve(caller, &request.name, &request.email).await?;
        let hash = self
            .store
            .erase_subscriber(tenant(caller), &subscriber.id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("subscribers/{}", subscriber.id)))?;
        let purged = self.bus.erase_key(&subscriber.id).await?;
        self.publish(vec![(caller.tenant.clone(), subscriber.id.clone(), Change::Erased(SubscriberErased {}))]).await?;
        tracing::info!(tenant = %caller.tenant, key = %caller.key_id, subscriber = %subscriber.id, bus_records_purged = purged, "subscriber erased");
        Ok(EraseSubscriberResponse { email_hash: hash })
    }
}
