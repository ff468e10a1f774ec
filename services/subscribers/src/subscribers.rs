//! Subscribers: create (upsert by address), read, update, unsubscribe, consent.

use broadside_auth::Caller;
use broadside_proto::v1::*;
use broadside_proto::{ServiceError, names};
use broadside_store::{
    PageRequest, StoreError, SubscriberStatus, SubscriberUpdate, SubscriptionStatus, UpsertMode, UpsertOptions, new_id,
};

use crate::Subscribers;
use crate::convert::{consent_to_proto, status_from_proto};
use crate::events::{Position, subscription_changed, upserted};
use crate::validate::{check_attributes, check_display_name, normalize_email};
use crate::{consent_of, non_empty, subscriber_to_proto, tenant};

impl Subscribers<'_> {
    pub async fn create_subscriber(
        &self,
        caller: &Caller,
        request: CreateSubscriberRequest,
    ) -> Result<(Subscriber, Position), ServiceError> {
        let subscriber = request.subscriber.unwrap_or_default();
        let email = normalize_email("subscriber.email", &subscriber.email)?;
        let display_name = subscriber.display_name.trim().to_owned();
        check_display_name("subscriber.display_name", &display_name)?;
        let mut lists = Vec::with_capacity(subscriber.lists.len());
        for (index, name) in subscriber.lists.iter().enumerate() {
            lists.push(names::parse(&format!("subscriber.lists[{index}]"), name, "lists")?.to_owned());
        }
        let attributes =
            subscriber.attributes.as_ref().map(broadside_proto::convert::struct_to_json).unwrap_or_default();
        check_attributes("subscriber.attributes", &attributes)?;
        let options =
            UpsertOptions { mode: UpsertMode::Upsert, resubscribe: true, consent: consent_of(request.consent, "api") };
        let upsert = broadside_store::Subscriber {
            tenant: caller.tenant.clone(),
            id: new_id(),
            email,
            display_name,
            attributes,
            status: SubscriberStatus::Active,
            lists,
            subscriptions: Vec::new(),
            create_time: 0,
            update_time: 0,
        };
        let result =
            self.store.upsert_subscriber(upsert, options, non_empty(request.request_id)).await.map_err(|error| {
                match error {
                    StoreError::NotFound(what) => ServiceError::NotFound(format!("subscriber.lists: {what}")),
                    other => other.into(),
                }
            })?;
        let stored = &result.subscriber;
        let position = self.publish(vec![(stored.tenant.clone(), stored.id.clone(), upserted(stored))]).await?;
        tracing::debug!(tenant = %caller.tenant, subscriber = %stored.id, created = result.created, "subscriber stored");
        for list_id in &result.pending_confirmation {
            self.confirmations().send_confirmation(stored, list_id).await?;
        }
        Ok((subscriber_to_proto(stored), position))
    }

    /// The subscriber named `subscribers/{id}`, or the one with `email`.
    pub(crate) async fn resolve(
        &self,
        caller: &Caller,
        name: &str,
        email: &str,
    ) -> Result<broadside_store::Subscriber, ServiceError> {
        if !name.is_empty() {
            let id = names::parse("name", name, "subscribers")?;
            return self
                .store
                .get_subscriber(tenant(caller), id)
                .await?
                .ok_or_else(|| ServiceError::NotFound(name.into()));
        }
        if email.trim().is_empty() {
            return Err(ServiceError::invalid("name", "give the subscriber's name or email"));
        }
        let email = normalize_email("email", email)?;
        self.store
            .find_subscriber(tenant(caller), &email)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("subscriber with email {email:?}")))
    }

    pub async fn get_subscriber(
        &self,
        caller: &Caller,
        request: GetSubscriberRequest,
    ) -> Result<Subscriber, ServiceError> {
        let id = names::parse("name", &request.name, "subscribers")?;
        let subscriber =
            self.store.get_subscriber(tenant(caller), id).await?.ok_or(ServiceError::NotFound(request.name))?;
        Ok(subscriber_to_proto(&subscriber))
    }

    pub async fn list_subscribers(
        &self,
        caller: &Caller,
        request: ListSubscribersRequest,
    ) -> Result<ListSubscribersResponse, ServiceError> {
        let page = PageRequest::new(request.page_size.into(), &request.page_token);
        let page = if request.parent.is_empty() {
            self.store.list_subscribers(tenant(caller), page).await?
        } else {
            let list_id = names::parse("parent", &request.parent, "lists")?;
            if self.store.get_list(tenant(caller), list_id).await?.is_none() {
                return Err(ServiceError::NotFound(request.parent));
            }
            self.store.list_members(tenant(caller), list_id, false, page).await?
        };
        Ok(ListSubscribersResponse {
            subscribers: page.items.iter().map(subscriber_to_proto).collect(),
            next_page_token: page.next_token.unwrap_or_default(),
        })
    }

    pub async fn update_subscriber(
        &self,
        caller: &Caller,
        request: UpdateSubscriberRequest,
    ) -> Result<(Subscriber, Position), ServiceError> {
        let subscriber = request.subscriber.unwrap_or_default();
        let id = names::parse("subscriber.name", &subscriber.name, "subscribers")?;
        if request.update_mask.is_empty() {
            return Err(ServiceError::invalid(
                "update_mask",
                "name the fields to update: display_name, attributes, status",
            ));
        }
        let mut update = SubscriberUpdate::default();
        for path in request.update_mask.iter().flat_map(|p| p.split(',')).map(str::trim) {
            match path {
                "display_name" => {
                    let name = subscriber.display_name.trim().to_owned();
                    check_display_name("subscriber.display_name", &name)?;
                    update.display_name = Some(name);
                }
                "attributes" => {
                    let attributes = subscriber
                        .attributes
                        .as_ref()
                        .map(broadside_proto::convert::struct_to_json)
                        .unwrap_or_default();
                    check_attributes("subscriber.attributes", &attributes)?;
                    update.attributes = Some(attributes);
                }
                "status" => {
                    update.status = Some(status_from_proto(subscriber.status).ok_or_else(|| {
                        ServiceError::invalid(
                            "subscriber.status",
                            "must be ACTIVE, UNSUBSCRIBED, BOUNCED, COMPLAINED or BLOCKLISTED",
                        )
                    })?);
                }
                other => {
                    return Err(ServiceError::invalid(
                        "update_mask",
                        format!("{other:?} cannot be updated (use display_name, attributes, status)"),
                    ));
                }
            }
        }
        let stored = self
            .store
            .update_subscriber(tenant(caller), id, update)
            .await?
            .ok_or(ServiceError::NotFound(subscriber.name))?;
        let position = self.publish(vec![(stored.tenant.clone(), stored.id.clone(), upserted(&stored))]).await?;
        Ok((subscriber_to_proto(&stored), position))
    }

    pub async fn unsubscribe(
        &self,
        caller: &Caller,
        request: UnsubscribeRequest,
    ) -> Result<(Subscriber, Position), ServiceError> {
        let current = self.subscribers().resolve(caller, &request.name, "").await?;
        let consent = consent_of(request.consent, "api");
        let lists: Vec<String> = if request.list.is_empty() {
            current.lists.clone()
        } else {
            let list_id = names::parse("list", &request.list, "lists")?.to_owned();
            if !current.subscriptions.iter().any(|s| s.list_id == list_id) {
                return Err(ServiceError::NotFound(format!("{} is not on {}", request.name, request.list)));
            }
            vec![list_id]
        };
        let mut changes = Vec::new();
        for list_id in &lists {
            self.store
                .set_subscription(
                    tenant(caller),
                    &current.id,
                    list_id,
                    SubscriptionStatus::Unsubscribed,
                    consent.clone(),
                )
                .await?;
            changes.push((
                current.tenant.clone(),
                current.id.clone(),
                subscription_changed(list_id, SubscriptionStatus::Unsubscribed, &consent.source),
            ));
        }
        let mut stored = self.store.get_subscriber(tenant(caller), &current.id).await?;
        if request.list.is_empty() {
            let update = SubscriberUpdate { status: Some(SubscriberStatus::Unsubscribed), ..Default::default() };
            stored = self.store.update_subscriber(tenant(caller), &current.id, update).await?;
        }
        let stored = stored.ok_or(ServiceError::NotFound(request.name))?;
        changes.push((stored.tenant.clone(), stored.id.clone(), upserted(&stored)));
        let position = self.publish(changes).await?;
        tracing::info!(tenant = %caller.tenant, subscriber = %stored.id, lists = lists.len(), "unsubscribed");
        Ok((subscriber_to_proto(&stored), position))
    }

    pub async fn list_consent_records(
        &self,
        caller: &Caller,
        request: ListConsentRecordsRequest,
    ) -> Result<ListConsentRecordsResponse, ServiceError> {
        let subscriber = self.subscribers().resolve(caller, &request.parent, "").await?;
        let records = self.store.consent_records(tenant(caller), &subscriber.id).await?;
        Ok(ListConsentRecordsResponse { records: records.iter().map(consent_to_proto).collect() })
    }
}
