//! Applies feedback-events to the state this role owns: a suppressing
//! bounce suppresses the address and marks the subscriber bounced; a
//! complaint unsubscribes every list, suppresses and marks them complained;
//! an unsubscribe leaves one list (or all), recorded in the consent ledger.
//! Idempotent: an event applied twice changes nothing the second time.

use broadside_bus::{Delivered, Topic};
use broadside_proto::v1::subscriber_event::Change;
use broadside_proto::v1::{FeedbackEvent, SuppressionChanged, feedback_event::Kind};
use broadside_store::{
    ConsentContext, StoreError, Subscriber, SubscriberStatus, SubscriberUpdate, SubscriptionStatus, Suppression,
    SuppressionReason, now_millis,
};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use crate::FeedbackApplier;
use crate::events::{subscription_changed, upserted};

/// The consumer group that applies feedback-events.
pub const FEEDBACK_GROUP: &str = "subscribers-feedback";

impl FeedbackApplier<'_> {
    /// Consumes feedback-events until `shutdown`, handing the group's lag
    /// per partition to `on_lag` every 10 s (the `consumer_lag` gauge).
    pub fn run_feedback(
        self,
        shutdown: CancellationToken,
        on_lag: impl Fn(&[(String, u32, i64)]) + Send + Sync + 'static,
    ) -> impl std::future::Future<Output = Result<(), broadside_bus::BusError>> + Send + 'static {
        let api = self.0.clone();
        async move {
            let topic = Topic::FeedbackEvents.name(&api.settings.topic_prefix);
            let bus = api.bus.clone();
            broadside_bus::consume_reporting_lag(bus, FEEDBACK_GROUP, &topic, shutdown, on_lag, |delivered| {
                let api = api.clone();
                async move { api.feedback().apply_feedback(&delivered).await }
            })
            .await?;
            Ok(())
        }
    }

    async fn apply_feedback(&self, delivered: &Delivered) -> Result<(), String> {
        let Ok(event) = FeedbackEvent::decode(delivered.record.payload.as_slice()) else {
            tracing::error!(offset = delivered.offset, "skipping undecodable feedback event");
            return Ok(());
        };
        self.apply_feedback_event(event).await.map_err(|error| error.to_string())
    }

    async fn apply_feedback_event(&self, event: FeedbackEvent) -> Result<(), crate::ServiceError> {
        // Opens, clicks and non-suppressing bounces change nothing here: no store read for them.
        let Some(kind) = event.kind.filter(|kind| match kind {
            Kind::Bounce(bounce) => bounce.suppress,
            Kind::Complaint(_) | Kind::Unsubscribe(_) => true,
            Kind::Open(_) | Kind::Click(_) => false,
        }) else {
            return Ok(());
        };
        let store = &self.store;
        let Some(subscriber) = store.get_subscriber(&event.tenant, &event.subscriber_id).await? else {
            return Ok(()); // erased, or never ours
        };
        let mut changes = Vec::new();
        match kind {
            Kind::Bounce(bounce) if bounce.suppress => {
                self.suppress(&subscriber, SuppressionReason::HardBounce, &bounce.class, &mut changes).await?;
                self.set_status(&subscriber, SubscriberStatus::Bounced).await?;
                tracing::info!(tenant = %event.tenant, subscriber = %event.subscriber_id, status = %bounce.status_code, reason = %bounce.class, "bounced subscriber suppressed");
            }
            Kind::Complaint(complaint) => {
                let consent = ConsentContext {
                    source: "complaint".into(),
                    ip: String::new(),
                    user_agent: complaint.reporter.clone(),
                };
                self.leave(&subscriber, "", consent, &mut changes).await?;
                self.suppress(&subscriber, SuppressionReason::Complaint, "", &mut changes).await?;
                self.set_status(&subscriber, SubscriberStatus::Complained).await?;
                tracing::info!(tenant = %event.tenant, subscriber = %event.subscriber_id, feedback_type = %complaint.feedback_type, "complaint: unsubscribed from every list and suppressed");
            }
            Kind::Unsubscribe(unsubscribe) => {
                let consent = ConsentContext {
                    source: unsubscribe.source.clone(),
                    ip: unsubscribe.ip,
                    user_agent: unsubscribe.user_agent,
                };
                self.leave(&subscriber, &unsubscribe.list_id, consent, &mut changes).await?;
                tracing::info!(tenant = %event.tenant, subscriber = %event.subscriber_id, list = %unsubscribe.list_id, source = %unsubscribe.source, "unsubscribed");
            }
            _ => return Ok(()),
        }
        if let Some(latest) = store.get_subscriber(&event.tenant, &event.subscriber_id).await? {
            changes.push((latest.tenant.clone(), latest.id.clone(), upserted(&latest)));
        }
        self.publish(changes).await.map(drop)
    }

    /// Unsubscribes `list_id` (every list when empty) where still subscribed.
    async fn leave(
        &self,
        subscriber: &Subscriber,
        list_id: &str,
        consent: ConsentContext,
        changes: &mut Vec<(String, String, Change)>,
    ) -> Result<(), StoreError> {
        let leaving = subscriber
            .subscriptions
            .iter()
            .filter(|s| s.status != SubscriptionStatus::Unsubscribed && (list_id.is_empty() || s.list_id == list_id));
        for subscription in leaving {
            let stored = self
                .store
                .set_subscription(
                    &subscriber.tenant,
                    &subscriber.id,
                    &subscription.list_id,
                    SubscriptionStatus::Unsubscribed,
                    consent.clone(),
                )
                .await?;
            if stored.is_some() {
                let change =
                    subscription_changed(&subscription.list_id, SubscriptionStatus::Unsubscribed, &consent.source);
                changes.push((subscriber.tenant.clone(), subscriber.id.clone(), change));
            }
        }
        Ok(())
    }

    async fn suppress(
        &self,
        subscriber: &Subscriber,
        reason: SuppressionReason,
        detail: &str,
        changes: &mut Vec<(String, String, Change)>,
    ) -> Result<(), StoreError> {
        let existing = self.store.suppressions_for(&subscriber.tenant, vec![subscriber.email.clone()]).await?;
        if existing.iter().any(|s| s.list_id.is_empty() && s.reason == reason) {
            return Ok(());
        }
        let stored = self
            .store
            .add_suppression(Suppression {
                tenant: subscriber.tenant.clone(),
                email_hash: String::new(),
                list_id: String::new(),
                target: subscriber.email.clone(),
                reason,
                detail: detail.to_owned(),
                create_time: now_millis(),
            })
            .await?;
        let change = SuppressionChanged { email_hash: stored.email_hash.clone(), reason: reason.as_str().into() };
        changes.push((subscriber.tenant.clone(), stored.email_hash, Change::SuppressionAdded(change)));
        Ok(())
    }

    async fn set_status(&self, subscriber: &Subscriber, status: SubscriberStatus) -> Result<(), StoreError> {
        if subscriber.status != status {
            let update = SubscriberUpdate { status: Some(status), ..Default::default() };
            self.store.update_subscriber(&subscriber.tenant, &subscriber.id, update).await?;
        }
        Ok(())
    }
}
