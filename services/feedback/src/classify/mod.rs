//! Turns one inbound message into a [`Verdict`]: an ARF complaint
//! (RFC 5965), a DSN (RFC 3464), a plain-text bounce from a named MTA, an
//! auto-reply, or unknown. Never panics: anything unparseable is `unknown`.
//!
//! Who the report is about is only a hint here (the VERP address, the
//! signed token of the returned List-Unsubscribe header, the Message-ID);
//! [`crate::policy`] acts on signed hints only.

pub mod fields;
pub mod rules;

use mail_parser::{Message, MessageParser, MimeHeaders};
use serde::Serialize;

use fields::{Fields, parse_groups, typed_value};
pub use rules::Class;

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

/// The classification of one message, as `broadside feedback classify` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Verdict {
    pub kind: Kind,
    pub class: Class,
    /// The failed recipient (DSN Final-Recipient, ARF Original-Rcpt-To, or found in the text).
    pub recipient: String,
    /// RFC 3463 status, e.g. `5.1.1`.
    pub status: String,
    pub diagnostic: String,
    pub reporting_mta: String,
    /// The rule that matched: `arf`, `dsn`, `qmail`, `exim`, `sendmail`,
    /// `exchange`, `gmail`, `yahoo`, `postfix_text`, `generic`, `auto_reply`, `none`.
    pub rule: String,
    /// ARF Feedback-Type (`abuse`, `fraud`, ...).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub feedback_type: String,
    /// Attribution hints found in the message.
    pub hints: Hints,
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
        complaint(&mut verdict, arf, &message);
    } else if !report.delivery.is_empty() {
        dsn(&mut verdict, &report.delivery);
    } else {
        text(&mut verdict, &message, &report);
    }
    verdict.diagnostic = verdict.diagnostic.chars().take(1000).collect();
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

fn complaint(verdict: &mut Verdict, arf: &Fields, message: &Message<'_>) {
    verdict.kind = Kind::Complaint;
    verdict.rule = "arf".into();
    verdict.feedback_type = arf.get("feedback-type").unwrap_or("abuse").to_ascii_lowercase();
    verdict.class = if verdict.feedback_type == "not-spam" { Class::Notice } else { Class::Complaint };
    verdict.recipient = arf.get("original-rcpt-to").map(typed_value).unwrap_or_default().to_owned();
    verdict.reporting_mta = arf
        .get("reported-domain")
        .or_else(|| arf.get("reporting-mta").map(typed_value))
        .map(str::to_owned)
        .or_else(|| message.from().and_then(|f| f.first()).and_then(|a| a.address()).map(str::to_owned))
        .unwrap_or_default();
    verdict.diagnostic = arf.get("user-agent").unwrap_or_default().to_owned();
    if let Some(from) = arf.get("original-mail-from") {
        verdict.hints.verp.push(typed_value(from).to_owned());
    }
}

fn dsn(verdict: &mut Verdict, groups: &[Fields]) {
    verdict.kind = Kind::Bounce;
    verdict.rule = "dsn".into();
    verdict.reporting_mta = groups[0].get("reporting-mta").map(typed_value).unwrap_or_default().to_owned();
    let recipients: Vec<&Fields> =
        groups.iter().filter(|g| g.get("action").is_some() || g.get("status").is_some()).collect();
    // The first failed recipient; else the first delayed one; else the first.
    let pick = |action: &str| {
        recipients.iter().find(|g| g.get("action").is_some_and(|a| a.trim().eq_ignore_ascii_case(action))).copied()
    };
    let Some(group) = pick("failed").or_else(|| pick("delayed")).or_else(|| recipients.first().copied()) else {
        verdict.class = Class::Unknown;
        return;
    };
    verdict.recipient = group
        .get("final-recipient")
        .or_else(|| group.get("original-recipient"))
        .map(typed_value)
        .unwrap_or_default()
        .to_owned();
    verdict.diagnostic = group.get("diagnostic-code").map(typed_value).unwrap_or_default().to_owned();
    let status = group.get("status").and_then(rules::find_status);
    verdict.status = status
        .or_else(|| rules::find_status(&verdict.diagnostic))
        .or_else(|| rules::status_from_reply(&verdict.diagnostic))
        .unwrap_or_default();
    if let Some(mta) = group.get("remote-mta") {
        verdict.reporting_mta = format!("{} (remote {})", verdict.reporting_mta, typed_value(mta));
    }
    let action = group.get("action").unwrap_or_default().trim().to_ascii_lowercase();
    verdict.class = match action.as_str() {
        "delivered" | "relayed" | "expanded" | "delayed" => Class::Notice,
        _ => rules::class_of(&verdict.status, &verdict.diagnostic),
    };
}

/// Bounce-like subjects of non-DSN bounces.
const BOUNCE_SUBJECTS: &[&str] = &[
    "undeliver",
    "delivery status notification",
    "delivery failure",
    "failure notice",
    "returned mail",
    "mail delivery failed",
    "delivery has failed",
    "could not be delivered",
    "non remis",
    "unzustellbar",
];

const AUTO_REPLY_SUBJECTS: &[&str] = &[
    "out of office",
    "automatic reply",
    "auto reply",
    "autoreply",
    "auto-reply",
    "vacation",
    "abwesenheit",
    "absence",
];

fn text(verdict: &mut Verdict, message: &Message<'_>, report: &Report) {
    let subject = message.subject().unwrap_or_default().to_ascii_lowercase();
    let from = message.from().and_then(|f| f.first()).and_then(|a| a.address()).unwrap_or_default().to_owned();
    let looks_like_bounce = rules::is_daemon(&from) || BOUNCE_SUBJECTS.iter().any(|s| subject.contains(s));
    let header = |name: &str| message.header_raw(name).map(|v| v.trim().to_ascii_lowercase());
    let auto_submitted = header("auto-submitted").is_some_and(|v| v.starts_with("auto-replied"))
        || header("x-autoreply").is_some()
        || header("x-autorespond").is_some()
        || header("precedence").is_some_and(|v| v == "auto_reply");
    let auto_reply = !looks_like_bounce && (auto_submitted || AUTO_REPLY_SUBJECTS.iter().any(|s| subject.contains(s)));
    if !auto_reply {
        let mut skip = vec![from.clone()];
        skip.extend(verdict.hints.verp.iter().cloned());
        if let Some(bounce) = rules::text_bounce(&report.text, looks_like_bounce, &skip) {
            verdict.kind = Kind::Bounce;
            verdict.rule = bounce.rule.into();
            verdict.class = rules::class_of(&bounce.status, &bounce.diagnostic);
            (verdict.recipient, verdict.status, verdict.diagnostic) =
                (bounce.recipient, bounce.status, bounce.diagnostic);
            verdict.reporting_mta = from;
            return;
        }
    }
    if auto_reply || auto_submitted {
        verdict.kind = Kind::AutoReply;
        verdict.class = Class::AutoReply;
        verdict.rule = "auto_reply".into();
        verdict.recipient = from;
    }
}

#[cfg(test)]
mod tests;
