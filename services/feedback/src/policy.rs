//! From a verdict to what happens: find whom a report is about (signed
//! attribution only, so a forged bounce cannot unsubscribe anyone), apply
//! the tenant's policy, store the record with the raw message, and publish
//! the feedback-event the subscribers role and dispatch act on.

use broadside_bus::Record;
use broadside_proto::convert::millis_to_timestamp;
use broadside_proto::v1::{self, feedback_event::Kind as EventKind};
use broadside_store::{FeedbackRecord, new_id, now_millis};
use prost::Message as _;

use crate::Feedback;
use crate::classify::{Class, Kind, Verdict, classify};

/// A failure to record feedback: the sender of the report should retry (4xx).
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error(transparent)]
    Store(#[from] broadside_store::StoreError),
    #[error(transparent)]
    Bus(#[from] broadside_bus::BusError),
}

impl From<FeedbackError> for broadside_proto::ServiceError {
    fn from(error: FeedbackError) -> Self {
        match error {
            FeedbackError::Store(error) => error.into(),
            FeedbackError::Bus(error) => error.into(),
        }
    }
}

/// Whom a report is about, proven by a signature of ours.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attribution {
    pub tenant: String,
    pub subscriber_id: String,
    pub campaign_id: String,
    /// Known from an unsubscribe token; empty from a VERP address.
    pub list_id: String,
    /// `verp` or `token`.
    pub by: &'static str,
}

/// The outcome of one inbound message.
#[derive(Debug, Clone)]
pub struct Handled {
    pub verdict: Verdict,
    pub attribution: Option<Attribution>,
    /// `suppressed`, `scored`, `unsubscribed`, `ignored`, `unattributed`.
    pub action: String,
    pub record_id: String,
}

impl Feedback {
    /// The first signed attribution among the verdict's hints.
    pub async fn attribute(&self, verdict: &Verdict) -> Result<Option<Attribution>, FeedbackError> {
        let verp = self.settings.signer.verp();
        for address in &verdict.hints.verp {
            let Ok((campaign_id, subscriber_id)) = verp.parse(address) else { continue };
            if let Some(tenant) = self.store.campaign_tenant(&campaign_id).await? {
                return Ok(Some(Attribution {
                    tenant,
                    subscriber_id,
                    campaign_id,
                    list_id: String::new(),
                    by: "verp",
                }));
            }
        }
        for token in &verdict.hints.tokens {
            let Ok(claims) = self.settings.signer.verify(token) else { continue };
            if claims.purpose.is_empty() {
                return Ok(Some(Attribution {
                    tenant: claims.tenant,
                    subscriber_id: claims.subscriber_id,
                    campaign_id: claims.campaign_id,
                    list_id: claims.list_id,
                    by: "token",
                }));
            }
        }
        Ok(None)
    }

    /// Classifies, attributes, applies the policy, publishes and stores one
    /// inbound message. `tenant_only`: refuse attributions to other tenants
    /// (IngestReport). Returns only once everything is durable.
    pub async fn handle_message(
        &self,
        raw: &[u8],
        envelope_to: &[String],
        tenant_only: Option<&str>,
    ) -> Result<Handled, FeedbackError> {
        if let Some(handled) = self.mailto_unsubscribe(raw, envelope_to).await? {
            return Ok(handled);
        }
        let verdict = classify(raw, envelope_to);
        let mut attribution = self.attribute(&verdict).await?;
        if let (Some(only), Some(found)) = (tenant_only, &attribution)
            && found.tenant != only
        {
            tracing::warn!(tenant = only, "ingested report names another tenant's message, not acted on");
            attribution = None;
        }
        let (action, event) = match &attribution {
            None => ("unattributed".to_owned(), None),
            Some(who) => self.decide(&verdict, who).await?,
        };
        if let (Some(event), Some(who)) = (event, &attribution) {
            self.publish(who, event).await?;
        }
        let tenant =
            attribution.as_ref().map(|a| a.tenant.clone()).or(tenant_only.map(str::to_owned)).unwrap_or_default();
        let record_id = self
            .store_verdict(&verdict, attribution.as_ref(), tenant, &action, with_envelope(raw, envelope_to))
            .await?;
        tracing::info!(
            kind = verdict.kind.as_str(),
            class = verdict.class.as_str(),
            status = %verdict.status,
            rule = %verdict.rule,
            action = %action,
            tenant = attribution.as_ref().map(|a| a.tenant.as_str()).unwrap_or(""),
            subscriber = attribution.as_ref().map(|a| a.subscriber_id.as_str()).unwrap_or(""),
            "feedback handled"
        );
        Ok(Handled { verdict, attribution, action, record_id })
    }

    /// Stores a verdict with the action taken (and the raw message, if any) and counts it.
    pub(crate) async fn store_verdict(
        &self,
        verdict: &Verdict,
        who: Option<&Attribution>,
        tenant: String,
        action: &str,
        raw: Vec<u8>,
    ) -> Result<String, FeedbackError> {
        let record = FeedbackRecord {
            tenant,
            id: new_id(),
            time: now_millis(),
            kind: verdict.kind.as_str().into(),
            subscriber_id: who.map(|a| a.subscriber_id.clone()).unwrap_or_default(),
            campaign_id: who.map(|a| a.campaign_id.clone()).unwrap_or_default(),
            class: verdict.class.as_str().into(),
            status_code: verdict.status.clone(),
            diagnostic: verdict.diagnostic.clone(),
            reporting_mta: verdict.reporting_mta.clone(),
            rule: verdict.rule.clone(),
            verdict: action.into(),
            raw,
        };
        let id = record.id.clone();
        self.store.insert_feedback(record).await?;
        self.metrics.count_feedback(verdict.kind.as_str(), verdict.class.as_str());
        Ok(id)
    }

    /// The tenant's policy for a verdict: the action taken and the event to publish.
    pub(crate) async fn decide(
        &self,
        verdict: &Verdict,
        who: &Attribution,
    ) -> Result<(String, Option<EventKind>), FeedbackError> {
        let bounce = |suppress: bool, score: f64| {
            EventKind::Bounce(v1::Bounce {
                class: verdict.class.as_str().into(),
                status_code: verdict.status.clone(),
                diagnostic: verdict.diagnostic.clone(),
                suppress,
                score,
                source: "dsn".into(),
            })
        };
        Ok(match (verdict.kind, verdict.class) {
            (Kind::Complaint, Class::Complaint) => (
                "unsubscribed".into(),
                Some(EventKind::Complaint(v1::Complaint {
                    feedback_type: verdict.feedback_type.clone(),
                    reporter: verdict.reporting_mta.clone(),
                })),
            ),
            (Kind::Bounce, Class::Hard) => ("suppressed".into(), Some(bounce(true, 0.0))),
            (Kind::Bounce, Class::Soft | Class::MailboxFull) => {
                let (suppress, score) = self.score_soft_bounce(who).await?;
                (if suppress { "suppressed" } else { "scored" }.into(), Some(bounce(suppress, score)))
            }
            // A block is about the sender's reputation, not the address: counted, never suppressed.
            (Kind::Bounce, Class::Block) => ("ignored".into(), Some(bounce(false, 0.0))),
            _ => ("ignored".into(), None),
        })
    }

    /// Adds one soft bounce to the decayed score; true when it reaches the threshold.
    pub(crate) async fn score_soft_bounce(&self, who: &Attribution) -> Result<(bool, f64), FeedbackError> {
        let policy = self.settings.config.policy_of(&who.tenant);
        let half_life_ms = (policy.soft_bounce_half_life_days * 86_400_000.0) as i64;
        let score = self.store.add_bounce_score(&who.tenant, &who.subscriber_id, 1.0, half_life_ms).await?;
        // Reports minutes apart decay a little; they still count as whole bounces.
        Ok((score + 0.01 >= policy.soft_bounce_threshold, score))
    }

    /// Publishes one feedback-event, keyed by subscriber.
    pub(crate) async fn publish(&self, who: &Attribution, kind: EventKind) -> Result<(), FeedbackError> {
        let event = v1::FeedbackEvent {
            tenant: who.tenant.clone(),
            subscriber_id: who.subscriber_id.clone(),
            campaign_id: who.campaign_id.clone(),
            time: millis_to_timestamp(now_millis()),
            kind: Some(kind),
        };
        let record = Record::event(
            &who.subscriber_id,
            &who.tenant,
            "broadside.v1.FeedbackEvent",
            event.encode_to_vec(),
            broadside_telemetry::current_traceparent(),
        );
        self.bus.publish(&self.events_topic, vec![record]).await?;
        self.metrics.count_published(&self.events_topic, 1);
        Ok(())
    }

    /// Mail to `unsubscribe@{mail.domain}` whose subject carries the token
    /// of our List-Unsubscribe mailto link.
    async fn mailto_unsubscribe(&self, raw: &[u8], envelope_to: &[String]) -> Result<Option<Handled>, FeedbackError> {
        let mailbox = format!("unsubscribe@{}", self.settings.domain);
        if !envelope_to.iter().any(|rcpt| rcpt.eq_ignore_ascii_case(&mailbox)) {
            return Ok(None);
        }
        let subject = mail_parser::MessageParser::default()
            .parse_headers(raw)
            .and_then(|m| m.subject().map(str::to_owned))
            .unwrap_or_default();
        let token = subject.trim().rsplit_once(':').map_or("", |(_, token)| token.trim());
        let claims = self.settings.signer.verify(token).ok().filter(|c| c.purpose.is_empty());
        let mut verdict = Verdict { kind: Kind::Unknown, rule: "mailto".into(), ..Default::default() };
        let (action, attribution) = match claims {
            Some(claims) => {
                let who = Attribution {
                    tenant: claims.tenant,
                    subscriber_id: claims.subscriber_id,
                    campaign_id: claims.campaign_id,
                    list_id: claims.list_id,
                    by: "token",
                };
                let unsubscribe =
                    v1::Unsubscribe { list_id: who.list_id.clone(), source: "mailto".into(), ..Default::default() };
                self.publish(&who, EventKind::Unsubscribe(unsubscribe)).await?;
                ("unsubscribed".to_owned(), Some(who))
            }
            None => ("unattributed".to_owned(), None),
        };
        verdict.diagnostic = "mailto unsubscribe".into();
        let record_id = self.record_action(attribution.as_ref(), "unsubscribe", "mailto", &action).await?;
        Ok(Some(Handled { verdict, attribution, action, record_id }))
    }

    /// Stores a record of an action without a message (an unsubscribe).
    pub(crate) async fn record_action(
        &self,
        who: Option<&Attribution>,
        kind: &str,
        rule: &str,
        action: &str,
    ) -> Result<String, FeedbackError> {
        let record = FeedbackRecord {
            tenant: who.map(|w| w.tenant.clone()).unwrap_or_default(),
            id: new_id(),
            time: now_millis(),
            kind: kind.into(),
            subscriber_id: who.map(|w| w.subscriber_id.clone()).unwrap_or_default(),
            campaign_id: who.map(|w| w.campaign_id.clone()).unwrap_or_default(),
            class: kind.into(),
            rule: rule.into(),
            verdict: action.into(),
            ..Default::default()
        };
        let id = record.id.clone();
        self.store.insert_feedback(record).await?;
        self.metrics.count_feedback(kind, rule);
        Ok(id)
    }
}

impl Feedback {
    /// Runs today's rules over a stored record (with its raw message).
    /// Returns the updated record when its classification changed; with
    /// `apply`, stores it and, where the new verdict calls for an action the
    /// old one did not take, takes it.
    pub async fn reclassify(
        &self,
        record: &FeedbackRecord,
        apply: bool,
    ) -> Result<Option<FeedbackRecord>, FeedbackError> {
        if record.raw.is_empty() {
            return Ok(None); // an action (unsubscribe) or a 5xx reply: nothing to re-read
        }
        let verdict = classify(&record.raw, &stored_envelope(&record.raw));
        let unchanged = verdict.kind.as_str() == record.kind
            && verdict.class.as_str() == record.class
            && verdict.status == record.status_code
            && verdict.rule == record.rule;
        if unchanged {
            return Ok(None);
        }
        let mut updated = FeedbackRecord {
            kind: verdict.kind.as_str().into(),
            class: verdict.class.as_str().into(),
            status_code: verdict.status.clone(),
            diagnostic: verdict.diagnostic.clone(),
            reporting_mta: verdict.reporting_mta.clone(),
            rule: verdict.rule.clone(),
            raw: Vec::new(),
            ..record.clone()
        };
        if apply {
            let acted = matches!(record.verdict.as_str(), "suppressed" | "unsubscribed");
            if !acted && let Some(who) = self.attribute(&verdict).await? {
                let (action, event) = self.decide(&verdict, &who).await?;
                if let Some(event) = event {
                    self.publish(&who, event).await?;
                }
                updated.verdict = action;
            }
            self.store.update_feedback_verdict(updated.clone()).await?;
        }
        Ok(Some(updated))
    }
}

/// The stored copy keeps the envelope recipients (they carry the VERP tag)
/// as a header, so reclassification sees what the listener saw.
fn with_envelope(raw: &[u8], envelope_to: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 64);
    for rcpt in envelope_to {
        out.extend_from_slice(format!("X-Broadside-Envelope-To: {rcpt}\r\n").as_bytes());
    }
    out.extend_from_slice(raw);
    out
}

/// The envelope recipients a stored copy kept (see [`with_envelope`]).
pub fn stored_envelope(raw: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for line in raw.split(|b| *b == b'\n') {
        let Some(rest) = line.strip_prefix(b"X-Broadside-Envelope-To: ") else { break };
        found.push(String::from_utf8_lossy(rest).trim().to_owned());
    }
    found
}
