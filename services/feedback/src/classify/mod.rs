//! Turns one inbound message into a [`Verdict`]: an ARF complaint
//! (RFC 5965), a DSN (RFC 3464), a bounce written for people by a known MTA
//! or provider, an auto-reply (RFC 3834), or unknown. A verdict lists every
//! recipient the report names, each with its status, [`Reason`] and
//! whether the address itself is bad (`hard`). Never panics: anything
//! unparseable is `unknown`.
//!
//! Who the report is about is only a hint here (the VERP address, the
//! signed token of the returned List-Unsubscribe header, the Message-ID);
//! [`crate::policy`] acts on signed hints only.

pub mod codes;
mod dsn;
pub mod fields;
pub mod reason;
pub mod text;

use mail_parser::{Message, MessageParser, MimeHeaders};
use serde::Serialize;

use fields::{Fields, parse_groups, typed_value};
pub use reason::Reason;

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Bounce,
    Complaint,
    AutoReply,
    #[default]
    Unknown,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bounce => "bounce",
            Self::Complaint => "complaint",
            Self::AutoReply => "auto_reply",
            Self::Unknown => "unknown",
        }
    }
}

/// One recipient a report is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Recipient {
    pub address: String,
    /// RFC 3463 status, e.g. `5.1.1` (inferred from the reason when the report gave none).
    pub status: String,
    pub reason: Reason,
    /// The address itself is bad: suppress at once.
    pub hard: bool,
    /// The failure will not go away by retrying this message (a 5xx).
    pub permanent: bool,
    /// DSN Action (`failed`, `delayed`, `delivered`, ...); empty in text bounces.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub action: String,
    pub diagnostic: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub remote_mta: String,
}

impl Recipient {
    /// Completes a recipient from what the report said: status from the
    /// diagnostic when missing or generic, reason, permanence, hardness.
    fn settle(mut self, delayed: bool) -> Recipient {
        self.address = self.address.trim().trim_matches(['<', '>', '"', '\'']).to_owned();
        self.diagnostic = self.diagnostic.chars().take(1000).collect();
        let quoted = codes::find_status(&self.diagnostic);
        let status = match codes::find_status(&self.status) {
            // A generic x.0.0 says less than the code the server quoted.
            Some(given) if given.ends_with(".0.0") => quoted.filter(|q| q[..1] == given[..1]).or(Some(given)),
            Some(given) => Some(given),
            None => quoted,
        };
        let reply = codes::find_reply(&self.diagnostic).map(|code| code.as_bytes()[0]);
        let action = self.action.to_ascii_lowercase();
        self.permanent = match status.as_deref().map(|s| s.as_bytes()[0]).or(reply) {
            Some(b'2') => false,
            Some(b'4') => false,
            Some(b'5') => true,
            _ => !(delayed || action == "delayed"),
        };
        self.reason = match action.as_str() {
            "delivered" | "relayed" | "expanded" => Reason::Delivered,
            _ => reason::of(status.as_deref().unwrap_or_default(), &self.diagnostic),
        };
        // Still queued, or given up after temporary failures only: expired.
        let gave_up = action == "failed" && status.as_deref().is_some_and(|s| s.starts_with('4'));
        if self.reason == Reason::Undefined && (delayed || action == "delayed" || gave_up) {
            self.reason = Reason::Expired;
        }
        self.status = match status {
            Some(status) if !status.ends_with(".0.0") || self.reason == Reason::Undefined => status,
            _ => self.reason.default_status(self.permanent),
        };
        self.hard = self.reason.is_hard(self.permanent);
        self
    }

    /// Takes a reason found elsewhere in the report, with the status it implies.
    fn refine(&mut self, reason: Reason) {
        if self.status.ends_with(".0.0") {
            self.status = reason.default_status(self.permanent);
        }
        self.reason = reason;
        self.hard = reason.is_hard(self.permanent);
    }

    fn failed(&self) -> bool {
        self.reason != Reason::Delivered && !self.action.eq_ignore_ascii_case("delayed")
    }
}

/// The classification of one message, as `broadside feedback classify` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Verdict {
    pub kind: Kind,
    /// The first failed recipient (all of them are in `recipients`).
    pub recipient: String,
    pub status: String,
    pub reason: Reason,
    pub hard: bool,
    pub permanent: bool,
    pub diagnostic: String,
    pub reporting_mta: String,
    /// The rule that read it: `arf`, `dsn`, a family from `data/families.txt`
    /// (`exim`, `gmail`, ...), `generic`, `auto_reply`, `none`.
    pub rule: String,
    /// ARF Feedback-Type (`abuse`, `fraud`, ...).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub feedback_type: String,
    /// Every recipient the report names.
    pub recipients: Vec<Recipient>,
    /// Attribution hints found in the message.
    pub hints: Hints,
}

impl Verdict {
    /// Fills the summary fields from the first failed recipient.
    fn summarize(&mut self) {
        let Some(first) = self.recipients.iter().find(|r| r.failed()).or(self.recipients.first()) else { return };
        self.recipient = first.address.clone();
        self.status = first.status.clone();
        self.reason = first.reason;
        self.hard = first.hard;
        self.permanent = first.permanent;
        self.diagnostic = first.diagnostic.clone();
    }
}

/// Where the report may say which of our messages it is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Hints {
    /// VERP return paths seen: the envelope recipients, the returned message's Return-Path.
    pub verp: Vec<String>,
    /// Tokens of `/u/TOKEN` links in the returned List-Unsubscribe header.
    pub tokens: Vec<String>,
    /// The returned message's Message-ID.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message_id: String,
    /// The returned message's From address (whose domain a block refused).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub from: String,
}

/// Classifies `raw`; `envelope_to` are the SMTP recipients it was sent to.
pub fn classify(raw: &[u8], envelope_to: &[String]) -> Verdict {
    let mut verdict = Verdict { rule: "none".into(), ..Default::default() };
    verdict.hints.verp.extend(envelope_to.iter().cloned());
    let Some(message) = MessageParser::default().parse(raw) else { return verdict };
    let report = Report::collect(&message);
    if let Some(original) = &report.original {
        original.hints(&mut verdict.hints);
    }
    if let Some(arf) = &report.feedback {
        complaint(&mut verdict, arf, &message, &report);
    } else if !dsn::read(&mut verdict, &report, &message) {
        text(&mut verdict, &message, &report);
    }
    verdict.summarize();
    verdict.diagnostic = verdict.diagnostic.chars().take(1000).collect();
    verdict
}

/// The verdict of a 5xx (or 4xx) reply our sender read at send time.
pub fn smtp_reply(code: i32, enhanced: &str, detail: &str, mx: &str) -> Verdict {
    let recipient = Recipient {
        status: enhanced.to_owned(),
        diagnostic: format!("{code} {detail}"),
        remote_mta: mx.to_owned(),
        ..Default::default()
    };
    let mut verdict = Verdict {
        kind: Kind::Bounce,
        reporting_mta: mx.to_owned(),
        rule: "smtp".into(),
        recipients: vec![recipient.settle(false)],
        ..Default::default()
    };
    verdict.summarize();
    verdict
}

/// The machine-readable parts of a report and the returned original.
#[derive(Default)]
struct Report {
    /// `message/delivery-status` groups: the per-message group, then one per recipient.
    delivery: Vec<Fields>,
    /// The `message/feedback-report` fields.
    feedback: Option<Fields>,
    /// Headers of the returned message (`message/rfc822` or `text/rfc822-headers`).
    original: Option<Fields>,
    /// Text parts, for rules that read prose.
    text: String,
}

impl Report {
    fn collect(message: &Message<'_>) -> Report {
        let mut report = Report::default();
        for part in message.parts.iter() {
            let Some(content_type) = part.content_type() else {
                if let Some(text) = part.text_contents()
                    && part.is_text()
                {
                    report.push_text(text);
                }
                continue;
            };
            let full = format!(
                "{}/{}",
                content_type.ctype().to_ascii_lowercase(),
                content_type.subtype().unwrap_or_default().to_ascii_lowercase()
            );
            match full.as_str() {
                "message/delivery-status" | "message/global-delivery-status" => {
                    let text = String::from_utf8_lossy(part.contents());
                    report.delivery = parse_groups(&text);
                }
                "message/feedback-report" => {
                    let text = String::from_utf8_lossy(part.contents());
                    report.feedback =
                        Some(Fields(parse_groups(&text).into_iter().flat_map(|g| g.0).collect::<Vec<_>>()));
                }
                "message/rfc822" | "message/global" | "text/rfc822-headers" | "message/rfc822-headers"
                    if report.original.is_none() =>
                {
                    let text = String::from_utf8_lossy(part.contents());
                    let head =
                        text.split("\n\n").next().unwrap_or_default().split("\r\n\r\n").next().unwrap_or_default();
                    report.original = parse_groups(head).into_iter().next();
                }
                "message/rfc822" | "message/global" | "text/rfc822-headers" | "message/rfc822-headers" => {}
                "text/html" if !report.text.is_empty() => {}
                "text/html" => {
                    if let Some(html) = part.text_contents() {
                        report.push_text(&mail_parser::decoders::html::html_to_text(html));
                    }
                }
                _ if part.is_text() => {
                    if let Some(text) = part.text_contents() {
                        report.push_text(text);
                    }
                }
                _ => {}
            }
        }
        report
    }

    fn push_text(&mut self, text: &str) {
        if self.text.len() < 256 * 1024 {
            self.text.push_str(&text[..floor_boundary(text, 256 * 1024 - self.text.len())]);
            self.text.push('\n');
        }
    }

    /// Addresses that are never the failed recipient: the report's sender,
    /// the returned message's sender, our envelope (VERP) addresses.
    fn not_recipients(&self, message: &Message<'_>, verdict: &Verdict) -> Vec<String> {
        let mut skip: Vec<String> = verdict.hints.verp.clone();
        skip.extend(message.from().into_iter().flat_map(|f| f.iter()).filter_map(|a| a.address()).map(str::to_owned));
        if let Some(original) = &self.original {
            for name in ["from", "sender", "return-path", "reply-to"] {
                for value in original.all(name) {
                    skip.extend(codes::addresses(value).map(|(_, a)| a.to_owned()));
                }
            }
        }
        skip
    }
}

fn floor_boundary(text: &str, max: usize) -> usize {
    let mut cut = max.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    cut
}

impl Fields {
    /// Attribution hints in the returned message's headers.
    fn hints(&self, hints: &mut Hints) {
        for path in self.all("return-path") {
            hints.verp.push(path.trim().trim_matches(['<', '>']).to_owned());
        }
        for value in self.all("list-unsubscribe") {
            hints.tokens.extend(unsubscribe_tokens(value));
        }
        if let Some(id) = self.get("message-id") {
            hints.message_id = id.trim().trim_matches(['<', '>']).to_owned();
        }
        if let Some((_, from)) = self.get("from").and_then(|f| codes::addresses(f).next()) {
            hints.from = from.to_owned();
        }
    }
}

/// Tokens of the `…/u/TOKEN` URLs in a List-Unsubscribe value.
pub fn unsubscribe_tokens(value: &str) -> Vec<String> {
    value
        .split(['<', '>', ',', ' '])
        .filter_map(|item| item.rsplit_once("/u/").map(|(_, token)| token))
        .map(|token| token.trim().to_owned())
        .filter(|token| !token.is_empty() && token.len() < 2048)
        .collect()
}

/// An ARF report: the complaining recipient from Original-Rcpt-To (or
/// Removal-Recipient), else the returned message's To.
fn complaint(verdict: &mut Verdict, arf: &Fields, message: &Message<'_>, report: &Report) {
    verdict.kind = Kind::Complaint;
    verdict.rule = "arf".into();
    verdict.feedback_type = arf.get("feedback-type").unwrap_or("abuse").trim().to_ascii_lowercase();
    let reason = if verdict.feedback_type == "not-spam" { Reason::Delivered } else { Reason::Complaint };
    let original = report.original.as_ref();
    let address = arf
        .all("original-rcpt-to")
        .chain(arf.all("removal-recipient"))
        .map(typed_value)
        .find(|a| a.contains('@'))
        .map(str::to_owned)
        .or_else(|| {
            let to = original.and_then(|o| o.get("to").or_else(|| o.get("x-hmxmroriginalrecipient")))?;
            codes::addresses(to).map(|(_, a)| a.to_owned()).next()
        })
        .unwrap_or_default();
    verdict.reporting_mta = arf
        .get("reported-domain")
        .or_else(|| arf.get("reporting-mta").map(typed_value))
        .map(str::to_owned)
        .or_else(|| message.from().and_then(|f| f.first()).and_then(|a| a.address()).map(str::to_owned))
        .unwrap_or_default();
    verdict.recipients.push(Recipient {
        address,
        reason,
        diagnostic: arf.get("user-agent").unwrap_or_default().to_owned(),
        ..Default::default()
    });
    if let Some(from) = arf.get("original-mail-from") {
        verdict.hints.verp.push(typed_value(from).to_owned());
    }
}

/// Bounce-like subjects of non-DSN bounces.
const BOUNCE_SUBJECTS: &[&str] = &[
    "undeliver",
    "undelivered",
    "delivery status notification",
    "delivery notification",
    "delivery failure",
    "delivery problem",
    "failure notice",
    "failed delivery",
    "returned mail",
    "mail delivery failed",
    "delivery has failed",
    "could not be delivered",
    "couldn't be delivered",
    "not delivered",
    "non remis",
    "unzustellbar",
    "nicht zustellbar",
    "mail system error",
    "warning: could not send",
    "delayed mail",
    "delivery delayed",
    "message delayed",
    "rejected",
    "error sending",
    "nondeliverable",
    "non-deliverable",
    "no se puede entregar",
];

const AUTO_REPLY_SUBJECTS: &[&str] = &[
    "out of office",
    "out of the office",
    "automatic reply",
    "auto reply",
    "autoreply",
    "auto-reply",
    "auto response",
    "autoresponse",
    "vacation",
    "abwesenheit",
    "absence",
    "away from",
    "réponse automatique",
    "respuesta automática",
];

/// A bounce written for people (or an auto-reply, or nothing we know).
fn text(verdict: &mut Verdict, message: &Message<'_>, report: &Report) {
    let subject = message.subject().unwrap_or_default().to_lowercase();
    let from = message.from().and_then(|f| f.first()).and_then(|a| a.address()).unwrap_or_default().to_owned();
    let lower_text = report.text.to_lowercase();
    let family = text::family(&lower_text, &subject, &from.to_lowercase());
    let daemon = codes::is_daemon(&from);
    let looks_like_bounce = family.is_some() || daemon || BOUNCE_SUBJECTS.iter().any(|s| subject.contains(s));
    let header = |name: &str| message.header_raw(name).map(|v| v.trim().to_ascii_lowercase());
    let auto_submitted = header("auto-submitted").is_some_and(|v| v.starts_with("auto-replied"))
        || header("x-autoreply").is_some()
        || header("x-autorespond").is_some()
        || header("x-autoreply-from").is_some()
        || header("x-mail-autoreply").is_some()
        || header("precedence").is_some_and(|v| v == "auto_reply");
    let auto_reply = auto_submitted || (!daemon && AUTO_REPLY_SUBJECTS.iter().any(|s| subject.contains(s)));
    if auto_reply && !(daemon && family.is_some()) {
        verdict.kind = Kind::AutoReply;
        verdict.rule = "auto_reply".into();
        verdict.recipients.push(Recipient { address: from, reason: Reason::AutoReply, ..Default::default() });
        return;
    }
    if !looks_like_bounce {
        return;
    }
    let body = text::bounce_part(&report.text);
    let skip = report.not_recipients(message, verdict);
    let skip = |address: &str| skip.iter().any(|s| s.eq_ignore_ascii_case(address));
    let mut found = text::recipients(body, &skip);
    // Exim and Google Groups name the failed addresses in a header.
    let failed_header: Vec<String> = message
        .header_values("X-Failed-Recipients")
        .filter_map(|v| v.as_text())
        .flat_map(|v| codes::addresses(v).map(|(_, a)| a.to_owned()).collect::<Vec<_>>())
        .collect();
    if !failed_header.is_empty() {
        let reply = text::first_reply(body).unwrap_or_default();
        found = failed_header
            .iter()
            .map(|address| {
                found.iter().find(|f| f.address.eq_ignore_ascii_case(address)).cloned().unwrap_or(text::Found {
                    address: address.clone(),
                    diagnostic: reply.clone(),
                    strong: true,
                })
            })
            .collect();
    }
    if found.is_empty() {
        // Last resort: the returned message's only To address.
        let to = report.original.as_ref().and_then(|o| o.get("to")).unwrap_or_default();
        let mut listed = codes::addresses(to).map(|(_, a)| a.to_owned());
        if let (Some(only), None) = (listed.next(), listed.next())
            && !skip(&only)
        {
            found.push(text::Found {
                address: only,
                diagnostic: text::first_reply(body).unwrap_or_default(),
                strong: false,
            });
        }
    }
    if found.is_empty() && family.is_none() && codes::find_status(body).is_none() && codes::find_reply(body).is_none() {
        return; // a mailer-daemon's note that names no failure
    }
    verdict.kind = Kind::Bounce;
    verdict.rule = family.unwrap_or("generic").into();
    verdict.reporting_mta = from;
    let delayed = text::is_delay(&lower_text);
    let whole = if found.is_empty() { text::first_reply(body).unwrap_or_default() } else { String::new() };
    if found.is_empty() {
        let diagnostic = if whole.is_empty() { body.trim().chars().take(300).collect() } else { whole };
        verdict.recipients.push(Recipient { diagnostic, ..Default::default() }.settle(delayed));
    }
    // A delay warning's recipients are still being retried: `delayed`, as a DSN would say.
    let action = if delayed { "delayed".to_owned() } else { String::new() };
    for f in found {
        let diagnostic = if f.diagnostic.is_empty() { body.trim().chars().take(300).collect() } else { f.diagnostic };
        let recipient = Recipient { address: f.address, diagnostic, action: action.clone(), ..Default::default() };
        verdict.recipients.push(recipient.settle(delayed));
    }
    // Where the text about an address gives no reason, the whole report
    // (its subject and prose) may: "...not listed in Domino Directory".
    for recipient in verdict.recipients.iter_mut().filter(|r| r.reason == Reason::Undefined) {
        if let Some(found) = reason::from_text(&format!("{subject}\n{body}")) {
            recipient.refine(found);
        }
    }
    // A note from a postmaster that no MTA wrote, with no code and no
    // failure wording, is not a bounce: acting on it could suppress anyone it names.
    let says_nothing = codes::find_status(body).is_none() && codes::find_reply(body).is_none();
    if family.is_none() && says_nothing && verdict.recipients.iter().all(|r| r.reason == Reason::Undefined) {
        *verdict = Verdict { rule: "none".into(), hints: std::mem::take(&mut verdict.hints), ..Default::default() };
    }
}

#[cfg(test)]
mod tests;
