//! Suppressions: addresses and domains that must not be mailed, tenant-wide
//! or per list. Kept by hash, so erasure can keep one without the address.

use broadside_auth::Caller;
use broadside_proto::v1::subscriber_event::Change;
use broadside_proto::v1::*;
use broadside_proto::{ServiceError, names};
use broadside_store::{
    PageRequest, SubscriberStatus, SubscriberUpdate, SuppressionReason, normalize_email as unique_key, now_millis,
};

use crate::Suppressions;
use crate::convert::{reason_from_proto, suppression_to_proto};
use crate::events::{Position, upserted};
use crate::tenant;
use crate::validate::normalize_email;

/// Normalizes a suppression target: an address, or `@domain` for a whole domain.
fn normalize_target(field: &str, target: &str) -> Result<String, ServiceError> {
    let target = target.trim();
    if let Some(domain) = target.strip_prefix('@') {
        let probe = normalize_email(field, &format!("postmaster@{domain}"))?;
        return Ok(format!("@{}", probe.rsplit_once('@').map_or("", |(_, d)| d)));
    }
    normalize_email(field, target)
}

fn list_id_of<'a>(field: &str, list: &'a str) -> Result<&'a str, ServiceError> {
    if list.is_empty() { Ok("") } else { names::parse(field, list, "lists") }
}

impl Suppressions<'_> {
    async fn publish_suppression(
        &self,
        caller: &Caller,
        hash: &str,
        reason: &str,
        added: bool,
    ) -> Result<Position, ServiceError> {
        let change = SuppressionChanged { email_hash: hash.to_owned(), reason: reason.to_owned() };
        let change = if added { Change::SuppressionAdded(change) } else { Change::SuppressionRemoved(change) };
        // Keyed by the hash: a suppression may name no subscriber (or an erased one).
        self.publish(vec![(caller.tenant.clone(), hash.to_owned(), change)]).await
    }

    pub async fn add_suppression(
        &self,
        caller: &Caller,
        request: AddSuppressionRequest,
    ) -> Result<(Suppression, Position), ServiceError> {
        let suppression = request.suppression.unwrap_or_default();
        let target = normalize_target("suppression.target", &suppression.target)?;
        let list_id = list_id_of("suppression.list", &suppression.list)?;
        if !list_id.is_empty() && self.store.get_list(tenant(caller), list_id).await?.is_none() {
            return Err(ServiceError::NotFound(suppression.list));
        }
        let reason = reason_from_proto(suppression.reason).ok_or_else(|| {
            ServiceError::invalid("suppression.reason", format!("unknown value {}", suppression.reason))
        })?;
        let stored = self
            .store
            .add_suppression(broadside_store::Suppression {
                tenant: caller.tenant.clone(),
                email_hash: String::new(),
                list_id: list_id.to_owned(),
                target,
                reason,
                detail: String::new(),
                create_time: now_millis(),
            })
            .await?;
        let position = self.publish_suppression(caller, &stored.email_hash, reason.as_str(), true).await?;
        let detail = serde_json::json!({ "list": list_id, "reason": reason.as_str() });
        let resource = format!("suppressions/{}", stored.email_hash);
        broadside_auth::audit(&self.store, caller, "suppression.add", &resource, detail).await?;
        Ok((suppression_to_proto(&stored), position))
    }

    pub async fn remove_suppression(
        &self,
        caller: &Caller,
        request: RemoveSuppressionRequest,
    ) -> Result<((), Position), ServiceError> {
        let target = normalize_target("target", &request.target)?;
        let list_id = list_id_of("list", &request.list)?;
        let existing = self.store.suppressions_for(tenant(caller), vec![target.clone()]).await?;
        let Some(hash) = existing.iter().find(|s| s.list_id == list_id).map(|s| s.email_hash.clone()) else {
            return Err(ServiceError::NotFound(format!("suppression of {target:?}")));
        };
        if !self.store.remove_suppression(tenant(caller), &target, list_id).await? {
            return Err(ServiceError::NotFound(format!("suppression of {target:?}")));
        }
        let mut position = self.publish_suppression(caller, &hash, "", false).await?;
        if list_id.is_empty() && existing.iter().any(|s| s.reason == SuppressionReason::HardBounce) {
            position = position.merge(self.unbounce(caller, &target).await?);
        }
        let resource = format!("suppressions/{hash}");
        let removed = existing.iter().find(|s| s.list_id == list_id);
        let detail = serde_json::json!({
            "list": list_id,
            "reason": removed.map(|s| s.reason.as_str()).unwrap_or_default(),
            "bounce_reason": removed.map(|s| s.detail.as_str()).unwrap_or_default(),
            "note": request.note,
        });
        broadside_auth::audit(&self.store, caller, "suppression.remove", &resource, detail).await?;
        Ok(((), position))
    }

    /// A subscriber marked bounced is active again once its bounce
    /// suppression is lifted: otherwise lifting would change nothing.
    async fn unbounce(&self, caller: &Caller, email: &str) -> Result<Position, ServiceError> {
        let Some(subscriber) = self.store.find_subscriber(tenant(caller), email).await? else {
            return Ok(Position::default());
        };
        if subscriber.status != SubscriberStatus::Bounced {
            return Ok(Position::default());
        }
        let update = SubscriberUpdate { status: Some(SubscriberStatus::Active), ..Default::default() };
        self.store.update_subscriber(tenant(caller), &subscriber.id, update).await?;
        let mut position = Position::default();
        if let Some(latest) = self.store.get_subscriber(tenant(caller), &subscriber.id).await? {
            position = self.publish(vec![(latest.tenant.clone(), latest.id.clone(), upserted(&latest))]).await?;
        }
        tracing::info!(tenant = %caller.tenant, subscriber = %subscriber.id, "bounce suppression lifted: subscriber active again");
        Ok(position)
    }

    pub async fn list_suppressions(
        &self,
        caller: &Caller,
        request: ListSuppressionsRequest,
    ) -> Result<ListSuppressionsResponse, ServiceError> {
        let page = PageRequest::new(request.page_size.into(), &request.page_token);
        let page = self.store.list_suppressions(tenant(caller), page).await?;
        let wanted = |s: &&broadside_store::Suppression| {
            request.reason.is_empty() || s.reason.as_str() == request.reason || s.detail == request.reason
        };
        Ok(ListSuppressionsResponse {
            suppressions: page.items.iter().filter(wanted).map(suppression_to_proto).collect(),
            next_page_token: page.next_token.unwrap_or_default(),
        })
    }

    pub async fn check_suppression(
        &self,
        caller: &Caller,
        request: CheckSuppressionRequest,
    ) -> Result<CheckSuppressionResponse, ServiceError> {
        let email = normalize_email("email", &request.email)?;
        let list_id = list_id_of("list", &request.list)?;
        let key = unique_key(&email);
        let domain = format!("@{}", key.rsplit_once('@').map_or("", |(_, d)| d));
        let found = self.store.suppressions_for(tenant(caller), vec![key, domain]).await?;
        let matching: Vec<Suppression> =
            found.iter().filter(|s| s.list_id.is_empty() || s.list_id == list_id).map(suppression_to_proto).collect();
        Ok(CheckSuppressionResponse { suppressed: !matching.is_empty(), suppressions: matching })
    }
}
