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

/// Where a write's events landed: partition → highest offset. Write paths
/// return it beside their result, and the gRPC layer sends it as the
/// `x-broadside-position` header, so a caller can wait for a projection to
/// have read its own writes (`min_position`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Position(BTreeMap<u32, i64>);

impl Position {
    /// Adds `(partition, offset)` pairs, keeping the highest offset per partition.
    pub fn add(&mut self, landed: impl IntoIterator<Item = (u32, i64)>) {
        for (partition, offset) in landed {
            let highest = self.0.entry(partition).or_insert(offset);
            *highest = (*highest).max(offset);
        }
    }

    /// `self` extended by `other`.
    pub fn merge(mut self, other: Position) -> Position {
        self.add(other.0);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The header's text: `partition:offset` pairs joined by commas.
    pub fn header(&self) -> String {
        self.0.iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>().join(",")
    }
}

/// `value` as a gRPC response carrying `position` as its header (when any event was written).
pub(crate) fn reply<T>(value: T, position: &Position) -> tonic::Response<T> {
    let mut response = tonic::Response::new(value);
    if !position.is_empty()
        && let Ok(header) = position.header().parse()
    {
        response.metadata_mut().insert(crate::POSITION_HEADER, header);
    }
    response
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

/// Publishes changes of subscribers as `(tenant, subscriber id, change)`.
/// Several events for one partition travel as one `SubscriberEventBatch`
/// record: an import publishes a handful of records per batch, not one
/// per row.
pub(crate) async fn publish(
    bus: &dyn broadside_bus::Bus,
    topic: &str,
    changes: Vec<(String, String, Change)>,
) -> Result<Position, ServiceError> {
    if changes.is_empty() {
        return Ok(Position::default());
    }
    let time = millis_to_timestamp(now_millis());
    let partitions = bus.partitions();
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
    let landed = bus.publish(topic, records).await?;
    let mut position = Position::default();
    position.add(landed);
    Ok(position)
}
