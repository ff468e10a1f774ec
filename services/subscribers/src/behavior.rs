//! Behavioral events (BehaviorService.TrackEvents): validated one by one,
//! stored idempotently by event id, then published on `behavior-events`
//! for the segmentation projection. A bad event is reported with its index
//! and skipped; the good ones around it are kept. Store or bus failures end
//! the stream with UNAVAILABLE: what was stored before stays, and a retry
//! of the whole stream is safe (seen ids are duplicates; ids stored but not
//! yet published are published by the retry).

use std::collections::HashMap;
use std::time::Duration;

use broadside_auth::{Authenticator, Caller};
use broadside_bus::{DynBus, Record, Topic, partition_for};
use broadside_proto::ServiceError;
use broadside_proto::convert::{json_to_struct, millis_to_timestamp, struct_to_json, timestamp_to_millis};
use broadside_proto::v1::behavior_service_server::{BehaviorService, BehaviorServiceServer};
use broadside_proto::v1::{
    BehaviorEvent, BehaviorEventBatch, EventError, TrackEventsRequest, TrackEventsResponse, TrackedEvent,
};
use broadside_store::{BehaviorEventRow, DynStore, Scope, Tracked, now_millis};
use futures::{Stream, StreamExt};
use prost::Message as _;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Rejections listed in the response (all are counted).
const MAX_ERRORS: usize = 1000;
/// Events stored (one transaction) and published together.
const FLUSH_EVENTS: usize = 2000;
const MAX_PROPERTIES: usize = 32;
const MAX_TEXT_BYTES: usize = 1024;
const DAY_MS: i64 = 86_400_000;

/// The behavior API, hosted by the subscribers role (it resolves addresses).
#[derive(Clone)]
pub struct BehaviorApi {
    store: DynStore,
    bus: DynBus,
    auth: Authenticator,
    topic: String,
    retention_days: u32,
}

/// Why one event was refused: the field and what is wrong with it.
type Refusal = (&'static str, String);

impl BehaviorApi {
    pub(crate) fn new(store: DynStore, bus: DynBus, topic_prefix: &str, retention_days: u32) -> Self {
        Self {
            auth: Authenticator::new(store.clone()),
            store,
            bus,
            topic: Topic::BehaviorEvents.name(topic_prefix),
            retention_days,
        }
    }

    pub fn into_service(self) -> BehaviorServiceServer<Self> {
        BehaviorServiceServer::new(self).max_decoding_message_size(16 * 1024 * 1024)
    }

    /// Tracks every event of `stream` (batches of events). Also returns where
    /// the published events landed (`b{partition}:{offset},...`), for
    /// PreviewSegment's `min_position`.
    pub async fn track_events<S>(
        &self,
        caller: &Caller,
        mut stream: S,
    ) -> Result<(TrackEventsResponse, String), ServiceError>
    where
        S: Stream<Item = Result<TrackEventsRequest, Status>> + Unpin,
    {
        let mut written: std::collections::BTreeMap<u32, i64> = Default::default();
        let mut response = TrackEventsResponse::default();
        let mut resolved: HashMap<String, Option<String>> = HashMap::new();
        let mut pending: Vec<BehaviorEventRow> = Vec::new();
        let mut index = 0i64;
        while let Some(message) = stream.next().await {
            let message = message.map_err(|status| {
                ServiceError::Unavailable(format!("the client stream broke: {}", status.message()))
            })?;
            for event in message.events {
                let event_id = event.event_id.clone();
                match self.validate(caller, event, &mut resolved).await? {
                    Ok(row) => pending.push(row),
                    Err((field, message)) => {
                        response.rejected += 1;
                        if response.errors.len() < MAX_ERRORS {
                            response.errors.push(EventError { index, event_id, field: field.into(), message });
                        }
                    }
                }
                index += 1;
            }
            if pending.len() >= FLUSH_EVENTS {
                self.flush(&caller.tenant, std::mem::take(&mut pending), &mut response, &mut written).await?;
            }
        }
        self.flush(&caller.tenant, pending, &mut response, &mut written).await?;
        tracing::info!(
            tenant = %caller.tenant, accepted = response.accepted, duplicates = response.duplicates,
            rejected = response.rejected, "behavioral events tracked"
        );
        let position = written.iter().map(|(p, o)| format!("b{p}:{o}")).collect::<Vec<_>>().join(",");
        Ok((response, position))
    }

    /// Checks one event; the outer error is a store failure, the inner a refusal.
    async fn validate(
        &self,
        caller: &Caller,
        event: TrackedEvent,
        resolved: &mut HashMap<String, Option<String>>,
    ) -> Result<Result<BehaviorEventRow, Refusal>, ServiceError> {
        if let Err(refusal) = check_event(&event, self.retention_days, now_millis()) {
            return Ok(Err(refusal));
        }
        let subscriber = event.subscriber.strip_prefix("subscribers/").unwrap_or(&event.subscriber).to_owned();
        let (field, key) = if subscriber.is_empty() {
            ("email", event.email.trim().to_lowercase())
        } else {
            ("subscriber", subscriber)
        };
        let id = match resolved.get(&key) {
            Some(found) => found.clone(),
            None => {
                let found = if field == "email" {
                    self.store.find_subscriber(&caller.tenant, &key).await?
                } else {
                    self.store.get_subscriber(&caller.tenant, &key).await?
                };
                let id = found.map(|s| s.id);
                resolved.insert(key.clone(), id.clone());
                id
            }
        };
        let Some(subscriber_id) = id else {
            return Ok(Err((field, format!("no subscriber {key:?} in this tenant"))));
        };
        Ok(Ok(BehaviorEventRow {
            tenant: caller.tenant.clone(),
            event_id: event.event_id,
            subscriber_id,
            name: event.name,
            time: event.time.as_ref().map(timestamp_to_millis).unwrap_or_default(),
            properties: event.properties.as_ref().map(struct_to_json).unwrap_or_default(),
        }))
    }

    /// Stores `events`, publishes those not yet on the bus, and records that they are.
    async fn flush(
        &self,
        tenant: &str,
        events: Vec<BehaviorEventRow>,
        response: &mut TrackEventsResponse,
        written: &mut std::collections::BTreeMap<u32, i64>,
    ) -> Result<(), ServiceError> {
        // The same id twice in one flush: the first copy wins, like across flushes.
        let mut seen = std::collections::HashSet::new();
        let (events, repeated): (Vec<_>, Vec<_>) = events.into_iter().partition(|e| seen.insert(e.event_id.clone()));
        response.duplicates += repeated.len() as i64;
        if events.is_empty() {
            return Ok(());
        }
        let outcomes = self.store.track_events(events.clone()).await?;
        let mut by_partition: std::collections::BTreeMap<u32, Vec<BehaviorEvent>> = Default::default();
        let mut ids = Vec::new();
        let partitions = self.bus.partitions();
        for (event, outcome) in events.into_iter().zip(outcomes) {
            match outcome {
                Tracked::Duplicate => response.duplicates += 1,
                Tracked::New | Tracked::Unpublished => {
                    response.accepted += 1;
                    ids.push(event.event_id.clone());
                    by_partition
                        .entry(partition_for(&event.subscriber_id, partitions))
                        .or_default()
                        .push(payload(event));
                }
            }
        }
        let records: Vec<Record> = by_partition.into_values().map(|events| behavior_record(tenant, events)).collect();
        if !records.is_empty() {
            let landed = self.bus.publish(&self.topic, records).await.map_err(|error| {
                ServiceError::Unavailable(format!("publishing behavioral events failed ({error}); retry the stream"))
            })?;
            for (partition, offset) in landed {
                let highest = written.entry(partition).or_insert(offset);
                *highest = (*highest).max(offset);
            }
            self.store.mark_published(tenant, ids).await?;
        }
        Ok(())
    }

    /// Deletes events past `behavior.retention_days`, hourly.
    pub async fn purge(self, shutdown: CancellationToken) -> Result<(), ServiceError> {
        loop {
            let before = now_millis() - i64::from(self.retention_days) * DAY_MS;
            match self.store.purge_events(before).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "behavioral events past retention deleted"),
                Err(error) => tracing::warn!(%error, "purging behavioral events failed; retrying in an hour"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            }
        }
    }
}

fn payload(event: BehaviorEventRow) -> BehaviorEvent {
    BehaviorEvent {
        tenant: event.tenant,
        subscriber_id: event.subscriber_id,
        event_id: event.event_id,
        name: event.name,
        time: millis_to_timestamp(event.time),
        properties: Some(json_to_struct(&event.properties)),
    }
}

/// One record for the events of one partition, keyed by the first
/// subscriber, so it lands on that partition and per-subscriber order holds.
pub fn behavior_record(tenant: &str, mut events: Vec<BehaviorEvent>) -> Record {
    let key = events[0].subscriber_id.clone();
    if events.len() == 1 {
        let event = events.pop().expect("one event");
        return Record::event(&key, tenant, "broadside.v1.BehaviorEvent", event.encode_to_vec(), None);
    }
    let batch = BehaviorEventBatch { events };
    Record::event(&key, tenant, "broadside.v1.BehaviorEventBatch", batch.encode_to_vec(), None)
}

/// A letter, then letters, digits, `_` or `-`; at most 64.
fn is_name(text: &str) -> bool {
    text.len() <= 64
        && text.starts_with(|c: char| c.is_ascii_alphabetic())
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Everything about an event that needs no store.
fn check_event(event: &TrackedEvent, retention_days: u32, now: i64) -> Result<(), Refusal> {
    if event.event_id.is_empty() || event.event_id.len() > 128 || !event.event_id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(("event_id", "must be 1-128 printable ASCII characters (the idempotency key)".into()));
    }
    match (event.subscriber.is_empty(), event.email.trim().is_empty()) {
        (true, true) => return Err(("subscriber", "give the subscriber (subscribers/{id}) or the email".into())),
        (false, false) => return Err(("subscriber", "give the subscriber or the email, not both".into())),
        _ => {}
    }
    if !is_name(&event.name) {
        return Err((
            "name",
            format!("{:?} is not an event name: a letter, then letters, digits, _ or - (at most 64)", event.name),
        ));
    }
    let Some(time) = event.time.as_ref() else { return Err(("time", "is required".into())) };
    if time.nanos < 0 || time.nanos >= 1_000_000_000 {
        return Err(("time", "has nanos out of range".into()));
    }
    let time = timestamp_to_millis(time);
    if time > now + DAY_MS {
        return Err(("time", "is more than a day in the future".into()));
    }
    if time < now - i64::from(retention_days) * DAY_MS {
        return Err(("time", format!("is older than the retention of {retention_days} days")));
    }
    let properties: Map<String, Value> = event.properties.as_ref().map(struct_to_json).unwrap_or_default();
    if properties.len() > MAX_PROPERTIES {
        return Err(("properties", format!("has {} properties; at most {MAX_PROPERTIES}", properties.len())));
    }
    for (key, value) in &properties {
        let field = "properties";
        if !is_name(key) || key.contains('-') {
            return Err((field, format!("{key:?} is not a property name: a letter, then letters, digits or _")));
        }
        match value {
            Value::Number(n) if n.as_f64().is_some_and(f64::is_finite) => {}
            Value::String(text) if text.len() <= MAX_TEXT_BYTES => {}
            Value::String(_) => return Err((field, format!("{key}: longer than {MAX_TEXT_BYTES} bytes"))),
            Value::Bool(_) => {}
            _ => return Err((field, format!("{key}: must be a number, a string or a boolean"))),
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl BehaviorService for BehaviorApi {
    async fn track_events(
        &self,
        request: Request<tonic::Streaming<TrackEventsRequest>>,
    ) -> Result<Response<TrackEventsResponse>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::SubscribersWrite).await?;
        let (result, position) = BehaviorApi::track_events(self, &caller, request.into_inner()).await?;
        let mut response = Response::new(result);
        if let Ok(value) = position.parse()
            && !position.is_empty()
        {
            response.metadata_mut().insert(crate::POSITION_HEADER, value);
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(time: i64) -> TrackedEvent {
        TrackedEvent {
            event_id: "e1".into(),
            email: "a@example.com".into(),
            name: "purchase".into(),
            time: millis_to_timestamp(time),
            properties: Some(json_to_struct(
                serde_json::json!({"amount": 12.5, "sku": "BK-1", "gift": false}).as_object().unwrap(),
            )),
            ..Default::default()
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        let now = 1_800_000_000_000;
        assert_eq!(check_event(&event(now), 400, now), Ok(()));
        let field = |e: TrackedEvent| check_event(&e, 400, now).unwrap_err().0;
        assert_eq!(field(TrackedEvent { event_id: String::new(), ..event(now) }), "event_id");
        assert_eq!(field(TrackedEvent { event_id: "a b".into(), ..event(now) }), "event_id");
        assert_eq!(field(TrackedEvent { email: String::new(), ..event(now) }), "subscriber");
        assert_eq!(field(TrackedEvent { subscriber: "subscribers/x".into(), ..event(now) }), "subscriber");
        assert_eq!(field(TrackedEvent { name: "purchase.amount".into(), ..event(now) }), "name");
        assert_eq!(field(TrackedEvent { time: None, ..event(now) }), "time");
        assert_eq!(field(event(now + 2 * DAY_MS)), "time");
        assert_eq!(field(event(now - 401 * DAY_MS)), "time");
        let nested = json_to_struct(serde_json::json!({"cart": {"n": 1}}).as_object().unwrap());
        let refusal = check_event(&TrackedEvent { properties: Some(nested), ..event(now) }, 400, now).unwrap_err();
        assert_eq!(refusal.0, "properties");
        assert!(refusal.1.contains("cart"), "{refusal:?}");
    }
}
