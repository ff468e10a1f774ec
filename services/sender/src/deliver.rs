//! One job, end to end: claim, render, build, send, record, report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use broadside_bus::{Delivered, Record, headers};
use broadside_mail::message::{self, Envelope, Outgoing};
use broadside_mail::template::TemplateSource;
use broadside_mail::token::UnsubscribeClaims;
use broadside_mail::transport::{EnhancedStatus, SendError};
use broadside_proto::convert::{millis_to_timestamp, struct_to_json, timestamp_to_millis};
use broadside_proto::v1::{DeliveryEvent, DeliveryOutcome, SendJob};
use broadside_store::schedule::SendWindow;
use broadside_store::{CampaignState, Claim, LedgerState, StoreError, Template, now_millis};
use prost::Message as _;
use tracing::Instrument;

use crate::{CampaignView, Effects, Sender, retry};

/// What the checks before a send decide about a job. One place
/// ([`Delivery::decided`]) counts each decision and writes its retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// Back on the retry topic, unchanged, not before `until` (ms since the
    /// epoch); `reason` is the `broadside_sends_total` outcome ("" when a
    /// retry is simply not due yet: counted when it is tried).
    Postpone { until: i64, reason: &'static str },
    /// Neither sent nor retried; `reason` is the outcome counted.
    Drop { reason: &'static str },
    /// Every check passed: claim and send.
    Deliver,
}

/// The result of trying one job, before it is recorded.
struct Attempt {
    outcome: DeliveryOutcome,
    code: i32,
    /// The RFC 3463 status the relay gave, as the transport read it.
    enhanced: Option<EnhancedStatus>,
    detail: String,
    destination: String,
    /// The relay may have the message although we got no reply.
    ambiguous: bool,
}

impl Attempt {
    fn failed(detail: impl Into<String>) -> Self {
        Self {
            outcome: DeliveryOutcome::Failed,
            code: 0,
            enhanced: None,
            detail: detail.into(),
            destination: String::new(),
            ambiguous: false,
        }
    }
}

/// One job's way through a replica: the view of a [`Sender`] whose methods
/// are the per-job steps (the consumer loop is `Sender`'s, in lib.rs).
pub(crate) struct Delivery<'a>(pub(crate) &'a Sender);

impl std::ops::Deref for Delivery<'_> {
    type Target = Sender;
    fn deref(&self) -> &Sender {
        self.0
    }
}

impl Delivery<'_> {
    pub(crate) async fn handle(&self, delivered: &Delivered) -> anyhow::Result<Effects> {
        let job = match SendJob::decode(delivered.record.payload.as_slice()) {
            Ok(job) => job,
            Err(error) => {
                tracing::error!(%error, topic = %delivered.topic, partition = delivered.partition, offset = delivered.offset, "skipping undecodable send job");
                return Ok(Effects::default());
            }
        };
        // OpenTelemetry messaging conventions: this span processes one record of send-jobs.
        let span = tracing::info_span!(
            "send",
            otel.name = %format!("process {}", delivered.topic),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.destination.name = %delivered.topic,
            messaging.destination.partition.id = delivered.partition,
            messaging.kafka.offset = delivered.offset,
            campaign = %job.campaign_id,
            subscriber = %job.subscriber_id,
            attempt = job.attempt,
        );
        broadside_telemetry::follow_traceparent(&span, delivered.record.header(headers::TRACEPARENT));
        self.handle_job(job).instrument(span).await
    }

    async fn handle_job(&self, job: SendJob) -> anyhow::Result<Effects> {
        let settings = &self.settings;
        let message_id = message::message_id(&job.campaign_id, &job.subscriber_id, &settings.domain);
        let group = self.groups.group_of(&crate::domains::domain_of(&job.email)).to_owned();
        let decision = self.due_and_destination_open(&job, &group);
        if decision != Decision::Deliver {
            return Ok(self.decided(&job, &group, decision));
        }
        // The ledger lets an owner take over its own claims (a restarted
        // replica). Within one process that would allow two concurrent sends of
        // a redelivered job, so a recipient already in flight here waits.
        let Some(_in_flight) = InFlight::enter(&self.in_flight, &job) else {
            let decision = Decision::Postpone { until: now_millis() + 5_000, reason: "postponed_in_flight" };
            return Ok(self.decided(&job, &group, decision));
        };
        // Pace before claiming, so a throttled job never holds a lease while it waits.
        self.throttle.acquire(&job.campaign_id, job.max_messages_per_second).await;
        let decision = self.campaign_allows(&job).await?;
        if decision != Decision::Deliver {
            return Ok(self.decided(&job, &group, decision));
        }
        match self.store.claim(&job.campaign_id, &job.subscriber_id, &settings.id, settings.lease).await? {
            Claim::Finished { state, message_id } => {
                self.metrics.count_claim("finished");
                // Sent before (a redelivered job): report again, never send again.
                self.metrics.count_send("skipped_duplicate", &job.tenant, &job.campaign_id, &group);
                let outcome =
                    if state == LedgerState::Sent { DeliveryOutcome::Delivered } else { DeliveryOutcome::Failed };
                let attempt = Attempt { outcome, ..Attempt::failed("already recorded in the send ledger") };
                let event = self.event(&job, &attempt, &message_id, 0, false);
                return Ok(Effects { delivery_events: vec![event], retries: Vec::new() });
            }
            Claim::Held { owner, lease_until } => {
                self.metrics.count_claim("held");
                tracing::info!(%owner, lease_until, "recipient claimed by another sender, retrying after its lease");
                let decision = Decision::Postpone { until: lease_until + 1000, reason: "postponed_claim_held" };
                return Ok(self.decided(&job, &group, decision));
            }
            Claim::Acquired { takeover: true } => {
                self.metrics.count_claim("takeover");
                // The previous claimant stopped between claiming and recording: it may have sent.
                self.metrics.sends_ambiguous.inc();
                tracing::warn!("taking over an unfinished claim; a duplicate is possible (counted in sends_ambiguous)");
            }
            Claim::Acquired { takeover: false } => self.metrics.count_claim("acquired"),
        }

        let started = Instant::now();
        let attempt = if job.expires_at.as_ref().is_some_and(|t| timestamp_to_millis(t) < now_millis()) {
            Attempt::failed("expired before it could be delivered")
        } else {
            self.metrics.sends_in_flight.inc();
            let attempt = self.attempt(&job, &group).await;
            self.metrics.sends_in_flight.dec();
            match attempt? {
                Some(attempt) => attempt,
                None => {
                    // The provider's slots on this replica are taken: give the claim
                    // back and try again shortly, without holding a slot meanwhile.
                    self.store.release(&job.campaign_id, &job.subscriber_id, &settings.id).await?;
                    let decision =
                        Decision::Postpone { until: now_millis() + 1_000, reason: "postponed_destination_busy" };
                    return Ok(self.decided(&job, &group, decision));
                }
            }
        };
        self.record(&job, &group, &message_id, attempt, started).await
    }

    /// A retry that is not due yet, or a destination that deferred us, waits.
    fn due_and_destination_open(&self, job: &SendJob, group: &str) -> Decision {
        let not_before = job.not_before.as_ref().map(timestamp_to_millis).unwrap_or_default();
        if not_before > now_millis() + 1_000 {
            return Decision::Postpone { until: not_before, reason: "" };
        }
        if let crate::domains::Gate::WaitUntil(until) = self.domains.gate(group) {
            let wait_ms = until.saturating_duration_since(tokio::time::Instant::now()).as_millis() as i64;
            return Decision::Postpone { until: now_millis() + wait_ms, reason: "postponed_destination_paused" };
        }
        Decision::Deliver
    }

    /// Checked after pacing (where a throttled job waits): outside its send
    /// window or paused, a campaign's jobs wait; cancelled (or deleted), they are dropped.
    async fn campaign_allows(&self, job: &SendJob) -> anyhow::Result<Decision> {
        let view = self.campaign_state(&job.tenant, &job.campaign_id).await?;
        if let Some(window) = view.as_ref().and_then(|v| v.window.as_ref()) {
            let now = now_millis();
            let open = window.next_open(now);
            if open > now {
                return Ok(Decision::Postpone { until: open, reason: "postponed_outside_window" });
            }
        }
        Ok(match view.map(|v| v.state) {
            Some(CampaignState::Paused) => {
                Decision::Postpone { until: now_millis() + 5_000, reason: "postponed_campaign_paused" }
            }
            Some(CampaignState::Cancelled) | None => Decision::Drop { reason: "skipped_campaign_cancelled" },
            _ => Decision::Deliver,
        })
    }

    /// The one place a postponed or dropped job is counted and, when
    /// postponed, put back on the retry topic unchanged.
    fn decided(&self, job: &SendJob, group: &str, decision: Decision) -> Effects {
        let mut effects = Effects::default();
        match decision {
            Decision::Postpone { until, reason } => {
                if !reason.is_empty() {
                    self.metrics.count_send(reason, &job.tenant, &job.campaign_id, group);
                }
                effects.retries.push(self.retry_record(job, job.attempt, until));
            }
            Decision::Drop { reason } => self.metrics.count_send(reason, &job.tenant, &job.campaign_id, group),
            Decision::Deliver => {}
        }
        effects
    }

    /// Records an attempt: the destination's backoff, the ledger (or a
    /// retry with backoff), the metrics and the delivery event.
    async fn record(
        &self,
        job: &SendJob,
        group: &str,
        message_id: &str,
        attempt: Attempt,
        started: Instant,
    ) -> anyhow::Result<Effects> {
        let settings = &self.settings;
        let mut effects = Effects::default();
        let latency_ms = started.elapsed().as_millis() as i64;
        self.metrics.send_seconds.observe(started.elapsed().as_secs_f64());
        if !attempt.destination.is_empty() {
            // An SMTP transaction happened (expired jobs never reach the relay).
            self.metrics.count_smtp_reply(attempt.code);
        }
        match attempt.outcome {
            DeliveryOutcome::Deferred if attempt.code != 0 => {
                self.domains.deferred(group, settings.retry_base);
            }
            DeliveryOutcome::Delivered | DeliveryOutcome::Failed if attempt.code != 0 => self.domains.answered(group),
            _ => {}
        }
        let ledger_state = match attempt.outcome {
            DeliveryOutcome::Delivered => Some(LedgerState::Sent),
            DeliveryOutcome::Failed => Some(LedgerState::Failed),
            _ => None,
        };
        match ledger_state {
            Some(state) => {
                match self.store.finish(&job.campaign_id, &job.subscriber_id, &settings.id, state, message_id).await {
                    Ok(()) => {}
                    Err(StoreError::Conflict(detail)) => {
                        self.metrics.sends_ambiguous.inc();
                        tracing::warn!(%detail, "our claim was taken over while sending; a duplicate is possible");
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            None => {
                self.store.release(&job.campaign_id, &job.subscriber_id, &settings.id).await?;
                let not_before = now_millis() + retry::backoff(settings.retry_base, job.attempt).as_millis() as i64;
                effects.retries.push(self.retry_record(job, job.attempt + 1, not_before));
            }
        }
        let outcome_name = match attempt.outcome {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Deferred => "deferred",
            _ => "failed",
        };
        self.metrics.count_send(outcome_name, &job.tenant, &job.campaign_id, group);
        if attempt.outcome != DeliveryOutcome::Delivered {
            tracing::info!(outcome = outcome_name, code = attempt.code, detail = %attempt.detail, "not delivered");
        }
        if attempt.ambiguous {
            self.metrics.sends_ambiguous.inc();
            tracing::warn!(detail = %attempt.detail, "no reply from the relay: the message may have been delivered and will be retried (counted in sends_ambiguous)");
        }
        effects.delivery_events.push(self.event(job, &attempt, message_id, latency_ms, attempt.ambiguous));
        Ok(effects)
    }

    /// Renders, builds and sends. Bad data is a permanent failure of this
    /// recipient; a store outage is an error (the batch is retried).
    /// `None`: the destination group stayed saturated (see [`crate::groups`]).
    async fn attempt(&self, job: &SendJob, group: &str) -> anyhow::Result<Option<Attempt>> {
        if !self.store.is_sendable(&job.tenant, &job.subscriber_id, &job.list_id).await? {
            return Ok(Some(Attempt::failed(
                "not sent: the recipient unsubscribed, was suppressed, deactivated or erased after the campaign started",
            )));
        }
        let Some(template) = self.template(&job.tenant, &job.template_id).await? else {
            return Ok(Some(Attempt::failed(format!("template {} no longer exists", job.template_id))));
        };
        // Who this message is to: the unsubscribe token, the base of the
        // tracking tokens, and the envelope's identity, borrowed from the job.
        let claims = UnsubscribeClaims::new(&job.tenant, &job.subscriber_id, &job.list_id, &job.campaign_id);
        let token = self.signer.sign(&claims);
        let settings = &self.settings;
        let unsubscribe_url = format!("{}/u/{token}", settings.public_url.trim_end_matches('/'));
        let unsubscribe_mailto = format!("mailto:unsubscribe@{}?subject=unsubscribe%3A{token}", settings.domain);
        let attributes = match attributes(job) {
            Ok(attributes) => attributes,
            Err(error) => return Ok(Some(Attempt::failed(format!("attributes: {error}")))),
        };
        let context = minijinja::context! {
            subscriber => minijinja::context! {
                id => &job.subscriber_id,
                email => &job.email,
                display_name => &job.display_name,
                attributes => &attributes,
            },
            unsubscribe_url => &unsubscribe_url,
            postal_address => &job.postal_address,
            campaign => minijinja::context! { id => &job.campaign_id },
        };
        let source = TemplateSource {
            subject: &template.subject,
            html_body: &template.html_body,
            text_body: &template.text_body,
        };
        let key = format!("{}/{}@{}", template.tenant, template.id, template.version);
        let mut rendered = match self.engine.render(&key, &source, &context) {
            Ok(rendered) => rendered,
            Err(error) => return Ok(Some(Attempt::failed(format!("render: {error}")))),
        };
        // Opens and clicks, unless tracking is off here or the subscriber opted out (`tracking: false`).
        let opted_out = attributes
            .get_attr("tracking")
            .is_ok_and(|v| v.kind() == minijinja::value::ValueKind::Bool && !v.is_true());
        if settings.tracking
            && !opted_out
            && let Some(html) = &rendered.html_body
        {
            match broadside_mail::tracking::add_tracking(html, &settings.public_url, &self.signer, &claims) {
                Ok(tracked) => rendered.html_body = Some(tracked),
                Err(error) => return Ok(Some(Attempt::failed(format!("build: {error}")))),
            }
        }
        let return_path = self.verp.return_path(&job.campaign_id, &job.subscriber_id, &settings.bounce_domain);
        let envelope = Envelope {
            claims: &claims,
            from_address: &job.from_address,
            from_name: &job.from_name,
            reply_to: &job.reply_to,
            to_address: &job.email,
            to_name: &job.display_name,
            unsubscribe_url: &unsubscribe_url,
            unsubscribe_mailto: &unsubscribe_mailto,
            domain: &settings.domain,
            return_path: &return_path,
        };
        let message = match message::build(&envelope, &rendered)
            .and_then(|message| Outgoing::signed(&message, &job.from_address, &self.dkim))
        {
            Ok(message) => message,
            Err(error) => return Ok(Some(Attempt::failed(format!("build: {error}")))),
        };
        // This replica's limits towards the recipient's provider, held for the SMTP transaction only.
        let Some(_entered) = self.groups.enter(group).await else { return Ok(None) };
        Ok(Some(match self.transport.send(&message).await {
            Ok(accepted) => Attempt {
                outcome: DeliveryOutcome::Delivered,
                code: i32::from(accepted.code),
                enhanced: accepted.enhanced,
                detail: accepted.detail,
                destination: accepted.destination,
                ambiguous: false,
            },
            Err(SendError::Transient { code, enhanced, detail, ambiguous }) => Attempt {
                outcome: DeliveryOutcome::Deferred,
                code: code.map(i32::from).unwrap_or(0),
                enhanced,
                detail,
                destination: self.transport.destination().to_owned(),
                ambiguous,
            },
            Err(SendError::Permanent { code, enhanced, detail }) => Attempt {
                outcome: DeliveryOutcome::Failed,
                code: i32::from(code),
                enhanced,
                detail,
                destination: self.transport.destination().to_owned(),
                ambiguous: false,
            },
        }))
    }

    fn event(&self, job: &SendJob, attempt: &Attempt, message_id: &str, latency_ms: i64, ambiguous: bool) -> Record {
        let event = DeliveryEvent {
            tenant: job.tenant.clone(),
            campaign_id: job.campaign_id.clone(),
            subscriber_id: job.subscriber_id.clone(),
            outcome: attempt.outcome as i32,
            smtp_code: attempt.code,
            enhanced_code: attempt.enhanced.map(|status| status.to_string()).unwrap_or_default(),
            detail: attempt.detail.clone(),
            mx: attempt.destination.clone(),
            latency_ms,
            message_id: message_id.to_owned(),
            attempt: job.attempt,
            time: millis_to_timestamp(now_millis()),
            ambiguous,
        };
        Record::event(
            &job.subscriber_id,
            &job.tenant,
            "broadside.v1.DeliveryEvent",
            event.encode_to_vec(),
            broadside_telemetry::current_traceparent(),
        )
    }

    fn retry_record(&self, job: &SendJob, attempt: i32, not_before: i64) -> Record {
        let retry = SendJob { attempt, not_before: millis_to_timestamp(not_before), ..job.clone() };
        Record::event(
            &job.subscriber_id,
            &job.tenant,
            "broadside.v1.SendJob",
            retry.encode_to_vec(),
            broadside_telemetry::current_traceparent(),
        )
    }

    /// The campaign's state and send window, at most a second old; `None` if it is gone.
    async fn campaign_state(&self, tenant: &str, id: &str) -> anyhow::Result<Option<CampaignView>> {
        const FRESH: Duration = Duration::from_secs(1);
        if let Some((view, seen)) = self.campaign_states.lock().unwrap_or_else(|p| p.into_inner()).get(id)
            && seen.elapsed() < FRESH
        {
            return Ok(Some(view.clone()));
        }
        let Some(campaign) = self.store.get_campaign(tenant, id).await? else { return Ok(None) };
        let window = match campaign.send_window.as_str() {
            "" => None,
            text => match SendWindow::parse(text) {
                Ok(window) => Some(Arc::new(window)),
                Err(error) => {
                    tracing::warn!(campaign = id, %error, "ignoring an invalid send window");
                    None
                }
            },
        };
        let view = CampaignView { state: campaign.state, window };
        let mut states = self.campaign_states.lock().unwrap_or_else(|p| p.into_inner());
        states.retain(|_, (_, seen)| seen.elapsed() < FRESH * 60);
        states.insert(id.to_owned(), (view.clone(), std::time::Instant::now()));
        Ok(Some(view))
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

/// The job's attributes as template values, parsed once from the JSON that
/// dispatch wrote (or, for a job queued by an older dispatch, converted from
/// its protobuf Struct).
fn attributes(job: &SendJob) -> Result<minijinja::Value, serde_json::Error> {
    if job.attributes_json.is_empty() {
        let map = job.attributes.as_ref().map(struct_to_json).unwrap_or_default();
        return Ok(minijinja::Value::from_serialize(map));
    }
    serde_json::from_slice(&job.attributes_json)
}

/// Marks a recipient as being sent by this process until dropped.
struct InFlight {
    set: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<(String, String)>>>,
    key: (String, String),
}

impl InFlight {
    fn enter(set: &crate::InFlightSet, job: &SendJob) -> Option<InFlight> {
        let key = (job.campaign_id.clone(), job.subscriber_id.clone());
        let inserted = set.lock().unwrap_or_else(|p| p.into_inner()).insert(key.clone());
        inserted.then(|| InFlight { set: set.clone(), key })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_read_the_same_from_json_and_from_an_older_jobs_struct() {
        let map = serde_json::json!({"first_name": "Ada", "age": 36, "tags": ["a", "b"], "tracking": false});
        let map = map.as_object().unwrap().clone();
        let new = SendJob { attributes_json: serde_json::to_vec(&map).unwrap(), ..Default::default() };
        let old = SendJob { attributes: Some(broadside_proto::convert::json_to_struct(&map)), ..Default::default() };
        let (new, old) = (attributes(&new).unwrap(), attributes(&old).unwrap());
        assert_eq!(new.get_attr("first_name").unwrap().as_str(), Some("Ada"));
        assert_eq!(new.get_attr("tags").unwrap().len(), Some(2));
        assert_eq!(new.get_attr("tracking").unwrap().kind(), minijinja::value::ValueKind::Bool);
        for key in ["first_name", "tags", "tracking"] {
            assert_eq!(new.get_attr(key).unwrap(), old.get_attr(key).unwrap(), "{key}");
        }
        // Struct numbers are doubles: equal in value to the JSON integer.
        assert_eq!(f64::try_from(old.get_attr("age").unwrap()).unwrap(), 36.0);
        assert_eq!(i64::try_from(new.get_attr("age").unwrap()).unwrap(), 36);
        let empty = attributes(&SendJob::default()).unwrap();
        assert!(empty.get_attr("first_name").unwrap().is_undefined());
        let broken = SendJob { attributes_json: b"{\"a\":".to_vec(), ..Default::default() };
        assert!(attributes(&broken).is_err());
    }
}
