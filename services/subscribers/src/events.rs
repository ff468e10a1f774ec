//! Publishing subscriber-events. The store write happens first; events run
//! again on a retried request, so consumers see every change at least once.

use std::collections::BTreeMap;

use broadside_bus::{Record, partition_for};
use broadside_proto::ServiceError;
use broadside_proto::convert::{json_to_struct, millis_to_timestamp};
use broadside_proto::v1::{
    SubscriberEvent, SubscriberEventBatch, SubscriberUpserted, SubscriptionChanged, subscriber_event::Change,
};
use broadside_store::{Subscriber, SubscriptionStatus, now_millis};
use prost::Message as _;

use crate::SubscriberApi;

tokio::task_local! {
    /// Where this request's subscriber-events landed (partition → highest offset),
    /// returned to gRPC callers as the `x-broadside-position` header.
    pub(crate) static WRITTEN: std::cell::RefCell<std::collections::BTreeMap<u32, i64>>;
}

/// Runs `request` and returns what it returned with the position of the events it published.
pub(crate) async fn with_position<T>(request: impl std::future::Future<Output = T>) -> (T, String) {
    WRITTEN
        .scope(Default::default(), async {
            let result = request.await;
            let position = WRITTEN
                .with(|written| written.borrow().iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>().join(","));
            (result, position)
        })
        .await
}

pub(crate) fn status_name(status: SubscriptionStatus) -> &'static str {
    match status {
        SubscriptionStatus::Unconfirmed => "unconfirmed",
        SubscriptionStatus::Confirmed => "confirmed",
        SubscriptionStatus::Unsubscribed => "unsubscribed",
    }
}

/// The full state of a subscriber after a change.
pub(crate) fn upserted(subscriber: &Subscriber) -> Change {
    Change::Upserted(SubscriberUpserted {
        email: subscriber.email.clone(),
        display_name: subscriber.display_name.clone(),
        attributes: Some(json_to_struct(&subscriber.attributes)),
        status: subscriber.status.as_str().into(),
        subscriptions: subscriber
            .subscriptions
            .iter()
            .map(|s| (s.list_id.clone(), status_name(s.status).to_owned()))
            .collect(),
        create_time: millis_to_timestamp(subscriber.create_time),
    })
}

pub(crate) fn subscription_changed(list_id: &str, status: SubscriptionStatus, source: &str) -> Change {
    Change::SubscriptionChanged(SubscriptionChanged {
        list_id: list_id.to_owned(),
        subscribed: status != SubscriptionStatus::Unsubscribed,
        source: source.to_owned(),
        status: status_name(status).into(),
    })
}

impl SubscriberApi {
    /// Publishes changes of subscribers as `(tenant, subscriber id, change)`.
    /// Several events for one partition travel as one `SubscriberEventBatch`
    /// record: an import publishes a handful of records per batch, not one
    /// per row.
    pub(crate) async fn publish(&self, changes: Vec<(String, String, Change)>) -> Result<(), ServiceError> {
        if changes.is_empty() {
            return Ok(());
        }
        let time = millis_to_timestamp(now_millis());
        let partitions = self.bus.partitions();
        let mut groups: BTreeMap<(String, u32), Vec<SubscriberEvent>> = BTreeMap::new();
        for (tenant, subscriber_id, change) in changes {
            let partition = partition_for(&subscriber_id, partitions);
            let event = SubscriberEvent { tenant: tenant.clone(), subscriber_id, time, change: Some(change) };
            groups.entry((tenant, partition)).or_default().push(event);
        }
        let records = groups
            .into_iter()
            .map(|((tenant, _), mut events)| {
                let key = events[0].subscriber_id.clone();
                if events.len() == 1 {
                    let event = events.pop().expect("one event");
                    Record::event(&key, &tenant, "broadside.v1.SubscriberEvent", event.encode_to_vec(), None)
                } else {
                    let batch = SubscriberEventBatch { events };
                    Record::event(&key, &tenant, "broadside.v1.SubscriberEventBatch", batch.encode_to_vec(), None)
                }
            })
            .collect();
        let landed = self.bus.publish(&self.events_topic, records).await?;
        let _ = WRITTEN.try_with(|written| {
            let mut written = written.borrow_mut();
            for (partition, offset) in landed {
                let highest = written.entry(partition).or_insert(offset);
                *highest = (*highest).max(offset);
            }
        });
        Ok(())
    }
}
