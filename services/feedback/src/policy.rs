//! From a verdict to what happens: find whom a report is about (signed
//! attribution only, so a forged bounce cannot unsubscribe anyone), apply
//! the tenant's policy, store the record with the raw message, and publish
//! the feedback-event the subscribers role and dispatch act on.

use broadside_bus::Record;
use broadside_mail::token::UnsubscribeClaims;
use broadside_proto::convert::millis_to_timestamp;
use broadside_proto::v1::{self, feedback_event::Kind as EventKind};
use broadside_store::{FeedbackRecord, new_id, now_millis};
use prost::Message as _;

use crate::Feedback;
use broadside_config::BounceAction;

use crate::classify::{Kind, Reason, Recipient, Verdict, classify};

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

impl From<UnsubscribeClaims<'_>> for Attribution {
    /// The recipient a signed token names.
    fn from(claims: UnsubscribeClaims<'_>) -> Self {
        Self {
            tenant: claims.tenant.into_owned(),
            subscriber_id: claims.subscriber_id.into_owned(),
            campaign_id: claims.campaign_id.into_owned(),
            list_id: claims.list_id.into_owned(),
            by: "token",
        }
    }
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
                return Ok(Some(claims.into()));
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
            reason = verdict.reason.as_str(),
            hard = verdict.hard,
            recipients = verdict.recipients.len(),
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
            class: verdict.reason.as_str().into(),
            status_code: verdict.status.clone(),
            diagnostic: verdict.diagnostic.clone(),
            reporting_mta: verdict.reporting_mta.clone(),
            rule: verdict.rule.clone(),
            verdict: action.into(),
            raw,
        };
        let id = record.id.clone();
        self.store.insert_feedback(record).await?;
        self.metrics.count_feedback(verdict.kind.as_str(), verdict.reason.as_str());
        Ok(id)
    }

    /// The tenant's policy for a verdict: the action taken and the event to
    /// publish. It acts on the recipient the attribution proves is ours.
    pub(crate) async fn decide(
        &self,
        verdict: &Verdict,
        who: &Attribution,
    ) -> Result<(String, Option<EventKind>), FeedbackError> {
        if verdict.kind == Kind::Complaint && verdict.reason == Reason::Complaint {
            let complaint =
                v1::Complaint { feedback_type: verdict.feedback_type.clone(), reporter: verdict.reporting_mta.clone() };
            return Ok(("unsubscribed".into(), Some(EventKind::Complaint(complaint))));
        }
        if verdict.kind != Kind::Bounce {
            return Ok(("ignored".into(), None));
        }
        let recipient = self.recipient_of(verdict, who).await?;
        if recipient.reason == Reason::Delivered || recipient.action.eq_ignore_ascii_case("delayed") {
            return Ok(("ignored".into(), None)); // still being retried, or delivered after all
        }
        if recipient.reason.is_sender_problem() {
            let sending_domain = self.sending_domain(verdict, who).await?;
            let destination = self.destination_of(&recipient.address);
            self.metrics.count_sender_refusal(recipient.reason.as_str(), &sending_domain, &destination);
        }
        let bounce = |suppress: bool, score: f64| {
            EventKind::Bounce(v1::Bounce {
                class: recipient.reason.as_str().into(),
                status_code: recipient.status.clone(),
                diagnostic: recipient.diagnostic.clone(),
                suppress,
                score,
                source: "dsn".into(),
            })
        };
        let policy = self.settings.config.policy_of(&who.tenant);
        let action =
            policy.reasons.get(recipient.reason.as_str()).copied().unwrap_or_else(|| default_action(&recipient));
        Ok(match action {
            BounceAction::Suppress => ("suppressed".into(), Some(bounce(true, 0.0))),
            BounceAction::Score => {
                let (suppress, score) = self.score_soft_bounce(who).await?;
                (if suppress { "suppressed" } else { "scored" }.into(), Some(bounce(suppress, score)))
            }
            // About the sender or this one message, not the address: counted, never suppressed.
            BounceAction::Ignore => ("ignored".into(), Some(bounce(false, 0.0))),
        })
    }

    /// The verdict's recipient that is the attributed subscriber: the one
    /// with the subscriber's address, else (a forward, an alias) the first
    /// that failed. Other recipients a report names are kept in the stored
    /// message but not acted on: only this one is proven ours by the VERP
    /// signature, and each of our messages has one recipient.
    async fn recipient_of(&self, verdict: &Verdict, who: &Attribution) -> Result<Recipient, FeedbackError> {
        let summary = || Recipient {
            address: verdict.recipient.clone(),
            status: verdict.status.clone(),
            reason: verdict.reason,
            hard: verdict.hard,
            permanent: verdict.permanent,
            diagnostic: verdict.diagnostic.clone(),
            ..Default::default()
        };
        if verdict.recipients.len() < 2 {
            return Ok(verdict.recipients.first().cloned().unwrap_or_else(summary));
        }
        let email = self.store.get_subscriber(&who.tenant, &who.subscriber_id).await?.map(|s| s.email);
        let own = email.and_then(|email| verdict.recipients.iter().find(|r| r.address.eq_ignore_ascii_case(&email)));
        Ok(own.cloned().unwrap_or_else(summary))
    }

    /// The domain our refused message was sent from: the returned message's
    /// From, else the campaign's; `unknown` when neither is at hand.
    async fn sending_domain(&self, verdict: &Verdict, who: &Attribution) -> Result<String, FeedbackError> {
        let from = match verdict.hints.from.is_empty() {
            false => verdict.hints.from.clone(),
            true if !who.campaign_id.is_empty() => self
                .store
                .get_campaign(&who.tenant, &who.campaign_id)
                .await?
                .map(|c| c.from_address)
                .unwrap_or_default(),
            true => String::new(),
        };
        Ok(from.rsplit_once('@').map_or("unknown".into(), |(_, domain)| domain.to_ascii_lowercase()))
    }

    /// The destination group (mailbox provider) of an address, `other` outside the table.
    fn destination_of(&self, address: &str) -> String {
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d).to_ascii_lowercase();
        self.settings
            .destinations
            .iter()
            .find(|group| group.domains.iter().any(|d| d.eq_ignore_ascii_case(&domain)))
            .map_or("other".into(), |group| group.name.clone())
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
                let who = Attribution::from(claims);
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
            && verdict.reason.as_str() == record.class
            && verdict.status == record.status_code
            && verdict.rule == record.rule;
        if unchanged {
            return Ok(None);
        }
        let mut updated = FeedbackRecord {
            kind: verdict.kind.as_str().into(),
            class: verdict.reason.as_str().into(),
            status_code: verdict.status.clone(),
            diagnostic: verdict.diagnostic.clone(),
            reporting_mta: verdict.reporting_mta.clone(),
            rule: verdict.rule.clone(),
            raw: Vec::new(),
            ..record.clone()
        };
        if apply {
            let acted = matches!(record.verdict.as_str(), "suppressed" | "unsubscribed");
            if record.verdict == "suppressed" && !record.subscriber_id.is_empty() {
                self.relabel_suppression(&record.tenant, &record.subscriber_id, verdict.reason).await?;
            }
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

    /// Gives the bounce suppression a verdict made the bounce reason today's
    /// rules see, so `suppressions lift --reason` finds suppressions made
    /// under older rules too (a block once read as a bad address).
    async fn relabel_suppression(
        &self,
        tenant: &str,
        subscriber_id: &str,
        reason: Reason,
    ) -> Result<(), FeedbackError> {
        let Some(subscriber) = self.store.get_subscriber(tenant, subscriber_id).await? else { return Ok(()) };
        let existing = self.store.suppressions_for(tenant, vec![subscriber.email.clone()]).await?;
        let bounce = existing.into_iter().find(|s| {
            s.list_id.is_empty()
                && s.reason == broadside_store::SuppressionReason::HardBounce
                && s.detail != reason.as_str()
        });
        if let Some(mut suppression) = bounce {
            tracing::info!(tenant, subscriber = subscriber_id, from = %suppression.detail, to = %reason, "bounce suppression relabelled");
            suppression.target = subscriber.email;
            suppression.detail = reason.as_str().to_owned();
            self.store.add_suppression(suppression).await?;
        }
        Ok(())
    }
}

/// What a bounce with this recipient's reason does when the tenant's
/// policy does not say: a bad address is suppressed, a refusal of the
/// sender or of this one message is only counted, the rest (full, expired,
/// the receiving system's trouble, unknown) adds to the soft-bounce score.
pub fn default_action(recipient: &Recipient) -> BounceAction {
    match recipient.reason {
        _ if recipient.hard => BounceAction::Suppress,
        reason if reason.is_sender_problem() => BounceAction::Ignore,
        Reason::MessageTooBig | Reason::ExceedLimit | Reason::TooManyConnections | Reason::SyntaxError => {
            BounceAction::Ignore
        }
        Reason::AutoReply | Reason::Delivered | Reason::Complaint => BounceAction::Ignore,
        _ => BounceAction::Score,
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
