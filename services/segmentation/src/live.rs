//! Keeps every tenant's projection current: a snapshot from the store at
//! start, then subscriber-events, feedback-events and behavior-events from
//! the start of the retained log (a fresh consumer group per start; nothing
//! is committed). Behavioral events older than the retention are dropped.
//! Subscriber events carry the whole state, so replaying ones older than
//! the snapshot only passes through older states on the way to the latest.
//! The applied offsets per partition are the position an answer reflects.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use broadside_bus::{Delivered, DynBus, Topic};
use broadside_proto::convert::{struct_to_json, timestamp_to_millis};
use broadside_proto::v1::{
    BehaviorEvent, BehaviorEventBatch, FeedbackEvent, SubscriberEvent, SubscriberEventBatch, feedback_event::Kind,
    subscriber_event::Change,
};
use broadside_store::{DynStore, PageRequest, SubscriptionStatus};
use prost::Message as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::engine::{Projection, Row};
use crate::rule::Activity;

/// Per partition: the next offset to apply. Partitions of subscriber-events
/// are keyed as they are; those of behavior-events from [`BEHAVIOR`] up.
pub type Position = BTreeMap<u32, i64>;

/// Where behavior-events partitions start in a [`Position`] (written `b3:17`).
pub const BEHAVIOR: u32 = 1 << 20;
/// Where feedback-events partitions start (written `f3:17`).
pub const FEEDBACK: u32 = 2 << 20;

/// `3:17,5:2,b0:40` (partition:offset of the last record applied or written;
/// `b` marks behavior-events partitions, `f` feedback-events ones).
pub fn format_position(position: &Position) -> String {
    let part = |p: u32| match p {
        p if p >= FEEDBACK => format!("f{}", p - FEEDBACK),
        p if p >= BEHAVIOR => format!("b{}", p - BEHAVIOR),
        p => p.to_string(),
    };
    position.iter().map(|(p, next)| format!("{}:{}", part(*p), next - 1)).collect::<Vec<_>>().join(",")
}

/// Parses a written position (`partition:offset,...`); errors name the bad part.
pub fn parse_position(text: &str) -> Result<Vec<(u32, i64)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (p, o) = part.split_once(':').ok_or_else(|| format!("{part:?} is not partition:offset"))?;
            let (base, p) = match (p.strip_prefix('b'), p.strip_prefix('f')) {
                (Some(p), _) => (BEHAVIOR, p),
                (_, Some(p)) => (FEEDBACK, p),
                _ => (0, p),
            };
            let partition: u32 =
                p.parse().ok().filter(|p| *p < BEHAVIOR).ok_or_else(|| format!("{p:?} is not a partition"))?;
            Ok((base + partition, o.parse().map_err(|_| format!("{o:?} is not an offset"))?))
        })
        .collect()
}

/// Every tenant's projection, shared by the API and the consumer.
#[derive(Clone)]
pub struct Live {
    tenants: Arc<RwLock<HashMap<String, Arc<RwLock<Projection>>>>>,
    applied: Arc<RwLock<Position>>,
    advanced: Arc<Notify>,
    ready: Arc<AtomicBool>,
    loaded: Arc<AtomicU64>,
    /// Behavioral events older than this (ms) are dropped.
    behavior_retention_ms: i64,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            tenants: Default::default(),
            applied: Default::default(),
            advanced: Arc::new(Notify::new()),
            ready: Arc::new(AtomicBool::new(false)),
            loaded: Arc::new(AtomicU64::new(0)),
            behavior_retention_ms: 400 * 86_400_000,
        }
    }
}

/// Which topic a delivered record came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Subscribers,
    Feedback,
    Behavior,
}

impl Live {
    /// Keeps behavioral events `days` long (`behavior.retention_days`).
    pub fn with_behavior_retention(mut self, days: u32) -> Self {
        self.behavior_retention_ms = i64::from(days) * 86_400_000;
        self
    }

    /// The projection of `tenant` (created empty on first use).
    pub fn tenant(&self, tenant: &str) -> Arc<RwLock<Projection>> {
        if let Some(found) = self.tenants.read().unwrap_or_else(|p| p.into_inner()).get(tenant) {
            return found.clone();
        }
        self.tenants.write().unwrap_or_else(|p| p.into_inner()).entry(tenant.to_owned()).or_default().clone()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Subscribers loaded by the snapshot so far.
    pub fn loaded(&self) -> u64 {
        self.loaded.load(Ordering::Relaxed)
    }

    pub fn position(&self) -> Position {
        self.applied.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn covers(&self, written: &[(u32, i64)]) -> bool {
        let applied = self.applied.read().unwrap_or_else(|p| p.into_inner());
        written.iter().all(|(p, o)| applied.get(p).is_some_and(|next| next > o))
    }

    /// Waits until every write in `written` is applied; false on timeout.
    pub async fn wait_for(&self, written: &[(u32, i64)], timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let advanced = self.advanced.notified();
            if self.covers(written) {
                return true;
            }
            if tokio::time::timeout_at(deadline, advanced).await.is_err() {
                return self.covers(written);
            }
        }
    }

    /// Loads the snapshot, then follows the bus until `shutdown`.
    pub async fn run(
        self,
        store: DynStore,
        bus: DynBus,
        prefix: String,
        metrics: broadside_telemetry::Metrics,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        self.snapshot(&store).await?;
        self.report(&metrics);
        tracing::info!(
            subscribers = self.loaded(),
            seconds = started.elapsed().as_secs_f64(),
            "segmentation snapshot loaded"
        );
        let (mut reported, mut changed) = (std::time::Instant::now(), false);
        let subscriber_topic = Topic::SubscriberEvents.name(&prefix);
        let behavior_topic = Topic::BehaviorEvents.name(&prefix);
        let topics = [subscriber_topic.clone(), Topic::FeedbackEvents.name(&prefix), behavior_topic.clone()];
        let group = format!("segmentation-{}", broadside_store::new_id());
        let mut consumer = bus.consumer(&group, &topics).await?;
        self.ready.store(true, Ordering::Release);
        while !shutdown.is_cancelled() {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => break,
                batch = consumer.poll(2000, Duration::from_millis(200)) => batch,
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::warn!(%error, "segmentation: polling failed, retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for delivered in &batch {
                let source = if delivered.topic == subscriber_topic {
                    Source::Subscribers
                } else if delivered.topic == behavior_topic {
                    Source::Behavior
                } else {
                    Source::Feedback
                };
                self.apply(delivered, source);
            }
            if !batch.is_empty() {
                self.advanced.notify_waiters();
                changed = true;
            }
            // Every 10 s while busy, and as soon as it has caught up.
            if changed && (reported.elapsed() > Duration::from_secs(10) || batch.is_empty()) {
                self.report(&metrics);
                reported = std::time::Instant::now();
                changed = false;
            }
        }
        Ok(())
    }

    /// Sets the size gauges (and trims spare capacity, so the estimate is what is held).
    fn report(&self, metrics: &broadside_telemetry::Metrics) {
        let (mut subscribers, mut bytes, mut events, mut event_bytes) = (0, 0, 0, 0);
        let expired_before = broadside_store::now_millis() - self.behavior_retention_ms;
        for projection in self.tenants.read().unwrap_or_else(|p| p.into_inner()).values() {
            let mut projection = projection.write().unwrap_or_else(|p| p.into_inner());
            projection.expire_behavior(expired_before);
            projection.shrink();
            subscribers += projection.len();
            bytes += projection.heap_bytes() as u64;
            events += projection.behavior_events() as i64;
            event_bytes += projection.behavior_bytes() as i64;
        }
        metrics.segment_subscribers.set(subscribers as i64);
        metrics.segment_projection_bytes.set(bytes as i64);
        metrics.segment_behavior_events.set(events);
        metrics.segment_behavior_bytes.set(event_bytes);
    }

    async fn snapshot(&self, store: &DynStore) -> anyhow::Result<()> {
        for tenant in store.list_tenants().await? {
            let projection = self.tenant(&tenant.id);
            let mut token = String::new();
            loop {
                let page =
                    store.list_subscribers(&tenant.id, PageRequest { size: 1000, token: Some(token.clone()) }).await?;
                {
                    let mut projection = projection.write().unwrap_or_else(|p| p.into_inner());
                    for subscriber in &page.items {
                        projection.upsert(&Row {
                            id: subscriber.id.clone(),
                            email: subscriber.email.clone(),
                            display_name: subscriber.display_name.clone(),
                            status: subscriber.status.as_str().into(),
                            created_at: subscriber.create_time,
                            attributes: subscriber.attributes.clone(),
                            subscriptions: Vec::new(),
                        });
                    }
                }
                self.loaded.fetch_add(page.items.len() as u64, Ordering::Relaxed);
                match page.next_token {
                    Some(next) => token = next,
                    None => break,
                }
            }
            let mut lists = String::new();
            loop {
                let page = store.list_lists(&tenant.id, PageRequest { size: 1000, token: Some(lists.clone()) }).await?;
                for list in &page.items {
                    let mut members = String::new();
                    loop {
                        let batch = store
                            .member_statuses(
                                &tenant.id,
                                &list.id,
                                PageRequest { size: 1000, token: Some(members.clone()) },
                            )
                            .await?;
                        let mut projection = projection.write().unwrap_or_else(|p| p.into_inner());
                        for (subscriber, status) in &batch.items {
                            let status = match status {
                                SubscriptionStatus::Confirmed => "confirmed",
                                SubscriptionStatus::Unconfirmed => "unconfirmed",
                                SubscriptionStatus::Unsubscribed => "unsubscribed",
                            };
                            projection.subscription(subscriber, &list.id, status);
                        }
                        drop(projection);
                        match batch.next_token {
                            Some(next) => members = next,
                            None => break,
                        }
                    }
                }
                match page.next_token {
                    Some(next) => lists = next,
                    None => break,
                }
            }
        }
        Ok(())
    }

    fn apply(&self, delivered: &Delivered, source: Source) {
        let payload = delivered.record.payload.as_slice();
        let subscriber_events = source == Source::Subscribers;
        if !payload.is_empty() && source == Source::Behavior {
            let events = match delivered.record.header(broadside_bus::headers::TYPE) {
                Some("broadside.v1.BehaviorEventBatch") => BehaviorEventBatch::decode(payload).map(|b| b.events),
                _ => BehaviorEvent::decode(payload).map(|e| vec![e]),
            };
            match events {
                Ok(events) => events.into_iter().for_each(|event| self.behavior_event(event)),
                Err(error) => {
                    tracing::error!(%error, offset = delivered.offset, "segmentation: undecodable behavioral event skipped")
                }
            }
        } else if !payload.is_empty() {
            if subscriber_events {
                let events = match delivered.record.header(broadside_bus::headers::TYPE) {
                    Some("broadside.v1.SubscriberEventBatch") => {
                        SubscriberEventBatch::decode(payload).map(|b| b.events)
                    }
                    _ => SubscriberEvent::decode(payload).map(|e| vec![e]),
                };
                match events {
                    Ok(events) => events.into_iter().for_each(|event| self.subscriber_event(event)),
                    Err(error) => {
                        tracing::error!(%error, offset = delivered.offset, "segmentation: undecodable subscriber event skipped")
                    }
                }
            } else {
                match FeedbackEvent::decode(payload) {
                    Ok(event) => self.feedback_event(event),
                    Err(error) => {
                        tracing::error!(%error, offset = delivered.offset, "segmentation: undecodable feedback event skipped")
                    }
                }
            }
        }
        let key = match source {
            Source::Subscribers => Some(delivered.partition),
            Source::Behavior => Some(BEHAVIOR + delivered.partition),
            Source::Feedback => Some(FEEDBACK + delivered.partition),
        };
        if let Some(key) = key {
            let mut applied = self.applied.write().unwrap_or_else(|p| p.into_inner());
            let next = applied.entry(key).or_insert(0);
            *next = (*next).max(delivered.offset + 1);
        }
    }

    fn subscriber_event(&self, event: SubscriberEvent) {
        let projection = self.tenant(&event.tenant);
        let mut projection = projection.write().unwrap_or_else(|p| p.into_inner());
        let time = event.time.as_ref().map(timestamp_to_millis).unwrap_or_default();
        match event.change {
            Some(Change::Upserted(state)) => {
                let created = state.create_time.as_ref().map(timestamp_to_millis).filter(|t| *t > 0);
                let created = created.or_else(|| projection.created_at(&event.subscriber_id)).unwrap_or(time);
                projection.upsert(&Row {
                    id: event.subscriber_id,
                    email: state.email,
                    display_name: state.display_name,
                    status: state.status,
                    created_at: created,
                    attributes: state.attributes.as_ref().map(struct_to_json).unwrap_or_default(),
                    subscriptions: state.subscriptions.into_iter().collect(),
                });
            }
            Some(Change::SubscriptionChanged(changed)) => {
                projection.subscription(&event.subscriber_id, &changed.list_id, &changed.status);
            }
            Some(Change::Erased(_)) => projection.erase(&event.subscriber_id),
            _ => {}
        }
    }

    fn behavior_event(&self, event: BehaviorEvent) {
        let time = event.time.as_ref().map(timestamp_to_millis).unwrap_or_default();
        if time < broadside_store::now_millis() - self.behavior_retention_ms {
            return;
        }
        let properties = event.properties.as_ref().map(struct_to_json).unwrap_or_default();
        let projection = self.tenant(&event.tenant);
        let mut projection = projection.write().unwrap_or_else(|p| p.into_inner());
        projection.track(&event.subscriber_id, &event.name, time, &properties);
    }

    fn feedback_event(&self, event: FeedbackEvent) {
        let activity = match event.kind {
            Some(Kind::Bounce(_)) => Activity::Bounced,
            Some(Kind::Complaint(_)) => Activity::Complained,
            Some(Kind::Unsubscribe(_)) => Activity::Unsubscribed,
            Some(Kind::Open(_)) => Activity::Opened,
            Some(Kind::Click(_)) => Activity::Clicked,
            None => return,
        };
        let time = event.time.as_ref().map(timestamp_to_millis).unwrap_or_else(broadside_store::now_millis);
        let projection = self.tenant(&event.tenant);
        let mut projection = projection.write().unwrap_or_else(|p| p.into_inner());
        projection.engage(&event.subscriber_id, activity, &event.campaign_id, time);
    }
}
