//! The sender role: a stateless replica that consumes send jobs, claims each
//! (campaign, subscriber) in the send ledger, renders and builds the message,
//! hands it to the relay, records the result, emits a delivery event, and only
//! then commits the bus offset. A job redelivered after a crash finds its
//! ledger entry and is not sent again.

mod deliver;
mod domains;
mod retry;
mod throttle;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broadside_bus::{Consumer, Delivered, DynBus, Record, Topic};
use broadside_mail::template::TemplateEngine;
use broadside_mail::token::TokenSigner;
use broadside_mail::transport::Transport;
use broadside_store::{CampaignState, DynStore, Template};
use broadside_telemetry::{Metrics, Readiness};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

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
    /// Base URL for one-click unsubscribe links.
    pub public_url: String,
    /// Domain for Message-ID, List-Id and the mailto unsubscribe address.
    pub domain: String,
}

/// Everything a sender replica shares between its in-flight jobs.
#[derive(Clone)]
pub struct Sender {
    settings: Arc<SenderSettings>,
    store: DynStore,
    bus: DynBus,
    transport: Transport,
    signer: TokenSigner,
    metrics: Metrics,
    engine: Arc<TemplateEngine>,
    templates: Arc<Mutex<TemplateCache>>,
    throttle: Arc<throttle::Throttle>,
    domains: Arc<domains::DomainBackoff>,
    in_flight: InFlightSet,
    /// Campaign states seen recently, so a pause or cancel is noticed within
    /// a second without a store read per message.
    campaign_states: Arc<Mutex<HashMap<String, (CampaignState, std::time::Instant)>>>,
}

/// What handling one job produced: events to publish before committing.
#[derive(Default)]
struct Effects {
    delivery_events: Vec<Record>,
    retries: Vec<Record>,
}

impl Sender {
    pub fn new(
        settings: SenderSettings,
        store: DynStore,
        bus: DynBus,
        transport: Transport,
        signer: TokenSigner,
        metrics: Metrics,
    ) -> Self {
        Self {
            settings: Arc::new(settings),
            store,
            bus,
            transport,
            signer,
            metrics,
            engine: Arc::new(TemplateEngine::new()),
            templates: Arc::default(),
            throttle: Arc::default(),
            domains: Arc::default(),
            in_flight: Arc::default(),
            campaign_states: Arc::default(),
        }
    }

    fn topic(&self, topic: Topic) -> String {
        topic.name(&self.settings.topic_prefix)
    }

    /// Consumes `send-jobs` and `send-retries` until `shutdown`, then drains:
    /// turns not-ready, stops fetching, finishes in-flight sends within
    /// `drain_timeout`, commits, and returns.
    pub async fn run(self, readiness: Readiness, shutdown: CancellationToken) -> anyhow::Result<()> {
        let jobs = self.bus.consumer("sender", &[self.topic(Topic::SendJobs)]).await?;
        let retries = self.bus.consumer("sender-retries", &[self.topic(Topic::SendRetries)]).await?;
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

    async fn consume(
        self,
        mut consumer: Box<dyn Consumer>,
        retries: bool,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let batch_size = if retries { self.settings.concurrency } else { self.settings.concurrency * 4 };
        while !shutdown.is_cancelled() {
            let polled = tokio::select! {
                _ = shutdown.cancelled() => break,
                polled = consumer.poll(batch_size, Duration::from_millis(500)) => polled,
            };
            let batch = match polled {
                Ok(batch) if batch.is_empty() => {
                    self.record_share(consumer.as_ref(), retries);
                    continue;
                }
                Ok(batch) => {
                    self.record_share(consumer.as_ref(), retries);
                    batch
                }
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
            self.process_batch(consumer.as_mut(), batch, &shutdown).await?;
        }
        Ok(())
    }

    /// The send-jobs partitions this replica owns set its share of campaign limits.
    fn record_share(&self, consumer: &dyn Consumer, retries: bool) {
        if !retries {
            let (owned, total) = consumer.assigned_share();
            self.throttle.set_share(owned, total);
        }
    }

    /// Handles a batch with bounded concurrency, publishes its effects, then
    /// commits. On shutdown the batch gets `drain_timeout` to finish; if it
    /// does not, nothing is committed and the jobs are redelivered later.
    async fn process_batch(
        &self,
        consumer: &mut dyn Consumer,
        batch: Vec<Delivered>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let jobs: Vec<_> = batch
            .iter()
            .cloned()
            .map(|delivered| {
                let sender = self.clone();
                async move { sender.handle(&delivered).await }
            })
            .collect();
        let work = futures::stream::iter(jobs).buffer_unordered(self.settings.concurrency).collect::<Vec<_>>();
        let drain_timeout = self.settings.drain_timeout;
        tokio::pin!(work);
        let results = tokio::select! {
            results = &mut work => results,
            _ = shutdown.cancelled() => {
                tracing::info!(in_flight = batch.len(), timeout_secs = drain_timeout.as_secs(), "draining in-flight sends");
                match tokio::time::timeout(drain_timeout, &mut work).await {
                    Ok(results) => results,
                    Err(_) => {
                        tracing::warn!(pending = batch.len(), "drain timeout: leaving the batch uncommitted, it will be redelivered");
                        return Ok(());
                    }
                }
            }
        };
        let mut effects = Effects::default();
        for result in results {
            match result {
                Ok(job_effects) => {
                    effects.delivery_events.extend(job_effects.delivery_events);
                    effects.retries.extend(job_effects.retries);
                }
                Err(error) => {
                    // A store or bus outage: retry the whole batch; the ledger keeps it idempotent.
                    tracing::warn!(error = format!("{error:#}"), "send batch failed, it will be retried");
                    return self.retry_later(consumer).await;
                }
            }
        }
        if let Err(error) = self.publish_effects(effects).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "publishing delivery events failed, the batch will be retried"
            );
            return self.retry_later(consumer).await;
        }
        if let Err(error) = consumer.commit(&batch).await {
            // The work is done and recorded; a later commit covers these offsets,
            // and a redelivery is answered from the send ledger.
            tracing::warn!(%error, "committing offsets failed, continuing");
        }
        if let Some(first) = batch.first() {
            self.metrics.count_consumed(&first.topic, batch.len() as u64);
        }
        Ok(())
    }

    /// Rewinds to the committed offsets after a pause, so the batch is redone.
    async fn retry_later(&self, consumer: &mut dyn Consumer) -> anyhow::Result<()> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Err(error) = consumer.rewind().await {
            tracing::warn!(%error, "rewinding to committed offsets failed, retrying later");
        }
        Ok(())
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

    /// The campaign's state, at most a second old; `None` if it is gone.
    async fn campaign_state(&self, tenant: &str, id: &str) -> anyhow::Result<Option<CampaignState>> {
        const FRESH: Duration = Duration::from_secs(1);
        if let Some((state, seen)) = self.campaign_states.lock().unwrap_or_else(|p| p.into_inner()).get(id)
            && seen.elapsed() < FRESH
        {
            return Ok(Some(*state));
        }
        let Some(campaign) = self.store.get_campaign(tenant, id).await? else { return Ok(None) };
        let mut states = self.campaign_states.lock().unwrap_or_else(|p| p.into_inner());
        states.retain(|_, (_, seen)| seen.elapsed() < FRESH * 60);
        states.insert(id.to_owned(), (campaign.state, std::time::Instant::now()));
        Ok(Some(campaign.state))
    }

    /// The template version a job names, cached: versions are immutable.
    async fn template(&self, tenant: &str, id: &str) -> anyhow::Result<Option<Arc<Template>>> {
        let key = (tenant.to_owned(), id.to_owned());
        if let Some(template) = self.templates.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(Some(template.clone()));
        }
        let Some(template) = self.store.get_template(tenant, id).await? else { return Ok(None) };
        let template = Arc::new(template);
        self.templates.lock().unwrap_or_else(|p| p.into_inner()).insert(key, template.clone());
        Ok(Some(template))
    }
}
