//! The sender role: a stateless replica that consumes send jobs, claims each
//! (campaign, subscriber) in the send ledger, renders and builds the message,
//! hands it to the relay, records the result, emits a delivery event, and only
//! then commits the bus offset. A job redelivered after a crash finds its
//! ledger entry and is not sent again.

mod deliver;
mod domains;
mod groups;
mod retry;
mod role;
mod throttle;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use broadside_bus::{Consumer, Delivered, DynBus, Record, Topic};
use broadside_mail::dkim::DkimKeys;
use broadside_mail::template::TemplateEngine;
use broadside_mail::token::TokenSigner;
use broadside_mail::transport::Transport;
use broadside_mail::verp::Verp;
use broadside_store::schedule::SendWindow;
use broadside_store::{CampaignState, DynStore, Template};
use broadside_telemetry::{Metrics, Readiness};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

pub use role::{replica_id, start};

/// Template versions by (tenant, id); versions are immutable, so entries never go stale.
type TemplateCache = HashMap<(String, String), Arc<Template>>;

/// (campaign, subscriber) pairs this process is sending right now.
type InFlightSet = Arc<Mutex<std::collections::HashSet<(String, String)>>>;

/// Settings of one sender replica.
#[derive(Clone, Debug)]
pub struct SenderSettings {
    /// Identity in the send ledger; stable across restarts of the same replica.
    pub id: String,
    pub concurrency: usize,
    pub drain_timeout: Duration,
    pub lease: Duration,
    /// First retry delay after a 4xx; doubles per attempt up to an hour.
    pub retry_base: Duration,
    pub topic_prefix: String,
    /// Base URL for one-click unsubscribe links and tracking.
    pub public_url: String,
    /// Rewrite HTML links through the click redirect and add the open pixel.
    pub tracking: bool,
    /// Domain for Message-ID, List-Id and the mailto unsubscribe address.
    pub domain: String,
    /// Domain of VERP return paths.
    pub bounce_domain: String,
    /// Mailbox providers and this replica's limits towards each.
    pub destinations: Vec<broadside_config::DestinationGroup>,
    /// Limits towards a domain outside `destinations` (0: none).
    pub destination_concurrency: usize,
    pub destination_per_second: f64,
}

/// Everything a sender replica shares between its in-flight jobs.
#[derive(Clone)]
pub struct Sender {
    settings: Arc<SenderSettings>,
    store: DynStore,
    bus: DynBus,
    transport: Transport,
    signer: TokenSigner,
    verp: Verp,
    dkim: Arc<DkimKeys>,
    metrics: Metrics,
    engine: Arc<TemplateEngine>,
    templates: Arc<Mutex<TemplateCache>>,
    throttle: Arc<throttle::Throttle>,
    domains: Arc<domains::DomainBackoff>,
    groups: Arc<groups::Groups>,
    in_flight: InFlightSet,
    /// SMTP slots shared by every batch in flight (`concurrency` of them).
    slots: Arc<tokio::sync::Semaphore>,
    /// Campaign states seen recently, so a pause or cancel is noticed within
    /// a second without a store read per message.
    campaign_states: Arc<Mutex<HashMap<String, (CampaignView, std::time::Instant)>>>,
}

/// What a sender needs to know about a campaign, refreshed every second.
#[derive(Clone)]
struct CampaignView {
    state: CampaignState,
    window: Option<Arc<SendWindow>>,
}

/// Batches in flight at once per consumer.
const PIPELINE_DEPTH: usize = 4;

/// How long a failed rewind is retried before the consumer loop gives up.
const REWIND_GIVE_UP: Duration = Duration::from_secs(300);

/// A polled batch and the task working on it.
struct Running {
    batch: Vec<Delivered>,
    handle: tokio::task::JoinHandle<anyhow::Result<Effects>>,
}

/// What handling one job produced: events to publish before committing.
#[derive(Default)]
struct Effects {
    delivery_events: Vec<Record>,
    retries: Vec<Record>,
}

impl Sender {
    pub(crate) fn new(
        settings: SenderSettings,
        store: DynStore,
        bus: DynBus,
        transport: Transport,
        signer: TokenSigner,
        metrics: Metrics,
    ) -> Self {
        let groups = Arc::new(groups::Groups::new(
            &settings.destinations,
            settings.destination_concurrency,
            settings.destination_per_second,
        ));
        let slots = Arc::new(tokio::sync::Semaphore::new(settings.concurrency.max(1)));
        Self {
            settings: Arc::new(settings),
            store,
            bus,
            transport,
            verp: signer.verp(),
            signer,
            dkim: Arc::default(),
            metrics,
            engine: Arc::new(TemplateEngine::new()),
            templates: Arc::default(),
            throttle: Arc::default(),
            domains: Arc::default(),
            groups,
            in_flight: Arc::default(),
            slots,
            campaign_states: Arc::default(),
        }
    }

    /// Signs every message with these keys (by From domain).
    pub(crate) fn with_dkim(mut self, keys: Arc<DkimKeys>) -> Self {
        self.dkim = keys;
        self
    }

    fn topic(&self, topic: Topic) -> String {
        topic.name(&self.settings.topic_prefix)
    }

    /// Consumes `send-jobs` and `send-retries` until `shutdown`, then drains:
    /// turns not-ready, stops fetching, finishes in-flight sends within
    /// `drain_timeout`, commits, and returns.
    pub(crate) async fn run(self, readiness: Readiness, shutdown: CancellationToken) -> anyhow::Result<()> {
        let jobs = self.bus.consumer(broadside_bus::SENDER_GROUP, &[self.topic(Topic::SendJobs)]).await?;
        let retries = self.bus.consumer(broadside_bus::SENDER_RETRIES_GROUP, &[self.topic(Topic::SendRetries)]).await?;
        tracing::info!(sender = %self.settings.id, relay = %self.transport.destination(), concurrency = self.settings.concurrency, "sender started");
        readiness.set(true);
        let main = tokio::spawn(self.clone().consume(jobs, false, shutdown.clone()));
        let retry = tokio::spawn(self.clone().consume(retries, true, shutdown.clone()));
        let (main, retry) = tokio::join!(main, retry);
        readiness.set(false);
        main??;
        retry??;
        tracing::info!(sender = %self.settings.id, "sender stopped");
        Ok(())
    }

    /// Polls batches and runs several at once (up to [`PIPELINE_DEPTH`]),
    /// sharing `concurrency` SMTP slots; batches are settled (effects
    /// published, offsets committed) strictly in poll order. A slow recipient
    /// thus delays only the commit of its batch, never the sending of the
    /// next ones, and no offset is committed past unfinished work.
    async fn consume(
        self,
        mut consumer: Box<dyn Consumer>,
        retries: bool,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let batch_size = if retries { self.settings.concurrency } else { self.settings.concurrency * 2 };
        let mut running: VecDeque<Running> = VecDeque::new();
        let group = if retries { broadside_bus::SENDER_RETRIES_GROUP } else { broadside_bus::SENDER_GROUP };
        let mut lag_reported = None;
        while !shutdown.is_cancelled() {
            broadside_bus::report_lag(consumer.as_mut(), &mut lag_reported, |lag| self.metrics.set_lag(group, lag))
                .await;
            // Settle what finished at the front; on failure rewind and start over.
            while running.front().is_some_and(|r| r.handle.is_finished()) {
                let front = running.pop_front().expect("front exists");
                let result = front.handle.await;
                if !self.settle(consumer.as_mut(), front.batch, result).await {
                    self.abandon(consumer.as_mut(), &mut running, &shutdown).await?;
                }
            }
            if running.len() >= PIPELINE_DEPTH {
                let front = running.pop_front().expect("pipeline is full");
                let result = front.handle.await;
                if !self.settle(consumer.as_mut(), front.batch, result).await {
                    self.abandon(consumer.as_mut(), &mut running, &shutdown).await?;
                }
                continue;
            }
            // Short polls while batches run, so finished ones are settled promptly.
            let wait = if running.is_empty() { Duration::from_millis(500) } else { Duration::from_millis(20) };
            let polled = tokio::select! {
                _ = shutdown.cancelled() => break,
                polled = consumer.poll(batch_size, wait) => polled,
            };
            self.record_share(consumer.as_ref(), retries);
            let batch = match polled {
                Ok(batch) if batch.is_empty() => continue,
                Ok(batch) => batch,
                Err(error) => {
                    tracing::warn!(%error, "polling send jobs failed, retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if retries && !retry::wait_until_due(&batch, &shutdown).await {
                // Stopping before these retries were due: leave them uncommitted for the next run.
                break;
            }
            let handle = tokio::spawn(self.clone().run_batch(batch.clone()));
            running.push_back(Running { batch, handle });
        }
        self.drain(consumer.as_mut(), running).await;
        Ok(())
    }

    /// On shutdown: the running batches get `drain_timeout` in all to finish
    /// and are settled in order; what does not finish stays uncommitted and is
    /// redelivered (the send ledger answers for what was already sent).
    async fn drain(&self, consumer: &mut dyn Consumer, mut running: VecDeque<Running>) {
        if running.is_empty() {
            return;
        }
        let in_flight: usize = running.iter().map(|r| r.batch.len()).sum();
        let deadline = tokio::time::Instant::now() + self.settings.drain_timeout;
        tracing::info!(in_flight, timeout_secs = self.settings.drain_timeout.as_secs(), "draining in-flight sends");
        while let Some(mut front) = running.pop_front() {
            let Ok(result) = tokio::time::timeout_at(deadline, &mut front.handle).await else {
                let pending: usize = front.batch.len() + running.iter().map(|r| r.batch.len()).sum::<usize>();
                tracing::warn!(
                    pending,
                    "drain timeout: leaving unfinished batches uncommitted, they will be redelivered"
                );
                front.handle.abort();
                for rest in running {
                    rest.handle.abort();
                }
                return;
            };
            if !self.settle(consumer, front.batch, result).await {
                for rest in running {
                    rest.handle.abort();
                }
                return;
            }
        }
    }

    /// The send-jobs partitions this replica owns set its share of campaign limits.
    fn record_share(&self, consumer: &dyn Consumer, retries: bool) {
        if !retries {
            let (owned, total) = consumer.assigned_share();
            self.throttle.set_share(owned, total);
        }
    }

    /// Handles every job of a batch, each holding one of the replica's
    /// `concurrency` slots while it works.
    async fn run_batch(self, batch: Vec<Delivered>) -> anyhow::Result<Effects> {
        let jobs = batch.into_iter().map(|delivered| {
            let sender = self.clone();
            async move {
                let _slot = sender.slots.acquire().await.expect("slots are never closed");
                deliver::Delivery(&sender).handle(&delivered).await
            }
        });
        let results: Vec<_> = futures::stream::iter(jobs).buffer_unordered(self.settings.concurrency).collect().await;
        let mut effects = Effects::default();
        for result in results {
            let job_effects = result?;
            effects.delivery_events.extend(job_effects.delivery_events);
            effects.retries.extend(job_effects.retries);
        }
        Ok(effects)
    }

    /// Publishes a finished batch's effects, then commits its offsets.
    /// False when the batch must be redone (store or bus outage).
    async fn settle(
        &self,
        consumer: &mut dyn Consumer,
        batch: Vec<Delivered>,
        result: Result<anyhow::Result<Effects>, tokio::task::JoinError>,
    ) -> bool {
        let effects = match result {
            Ok(Ok(effects)) => effects,
            Ok(Err(error)) => {
                // A store or bus outage: redo from the committed offsets; the ledger keeps it idempotent.
                tracing::warn!(error = format!("{error:#}"), "send batch failed, it will be retried");
                return false;
            }
            Err(error) => {
                tracing::error!(%error, "send batch task failed, it will be retried");
                return false;
            }
        };
        if let Err(error) = self.publish_effects(effects).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "publishing delivery events failed, the batch will be retried"
            );
            return false;
        }
        if let Err(error) = consumer.commit(&batch).await {
            // The work is done and recorded; a later commit covers these offsets,
            // and a redelivery is answered from the send ledger.
            tracing::warn!(%error, "committing offsets failed, continuing");
        }
        if let Some(first) = batch.first() {
            self.metrics.count_consumed(&first.topic, batch.len() as u64);
        }
        true
    }

    /// After a failed batch: lets the later ones finish (their sends are in
    /// the ledger), drops their results, and rewinds to the committed offsets.
    /// Fails only when the rewind cannot be done (see [`Self::rewind_or_fail`]).
    async fn abandon(
        &self,
        consumer: &mut dyn Consumer,
        running: &mut VecDeque<Running>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        for rest in running.drain(..) {
            let _ = rest.handle.await;
        }
        self.rewind_or_fail(consumer, shutdown).await
    }

    /// Rewinds to the committed offsets, so the dropped batches are redone.
    /// Nothing more is consumed until that works: polling on from the fetch
    /// position would skip the dropped records, and the next commit would
    /// step over them, stranding their recipients (until the dispatch
    /// reconciler re-sent them). A broker outage can make the rewind fail
    /// for a while, so it is retried with backoff; after [`REWIND_GIVE_UP`]
    /// the worker fails, and the restarted process's consumer starts at the
    /// committed offsets. On shutdown it stops trying: nothing is committed
    /// after this, so the next owner starts at the committed offsets too.
    async fn rewind_or_fail(&self, consumer: &mut dyn Consumer, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let give_up = tokio::time::Instant::now() + REWIND_GIVE_UP;
        let mut delay = Duration::from_secs(1);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
            let Err(error) = consumer.rewind().await else { return Ok(()) };
            if tokio::time::Instant::now() >= give_up {
                return Err(anyhow::anyhow!(error)).context(format!(
                    "rewinding to the committed offsets failed for {}s; stopping so a fresh consumer starts from them",
                    REWIND_GIVE_UP.as_secs()
                ));
            }
            tracing::warn!(%error, retry_in_secs = delay.as_secs(), "rewinding to committed offsets failed, consuming nothing until it works");
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    async fn publish_effects(&self, effects: Effects) -> anyhow::Result<()> {
        let retries_topic = self.topic(Topic::SendRetries);
        let events_topic = self.topic(Topic::DeliveryEvents);
        let (retries, events) = (effects.retries.len() as u64, effects.delivery_events.len() as u64);
        // Retries first: once the delivery event says "deferred", the retry must exist.
        self.bus.publish(&retries_topic, effects.retries).await?;
        self.bus.publish(&events_topic, effects.delivery_events).await?;
        self.metrics.count_published(&retries_topic, retries);
        self.metrics.count_published(&events_topic, events);
        Ok(())
    }
}
