//! Classes from RFC 3463 codes refined by wording, and named rules for the
//! bounces that are not standard DSNs (each MTA writes its own).

use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

/// What a report means for the address it is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// The address does not exist (or never will accept mail): suppress.
    Hard,
    /// Temporary: score, suppress only when it keeps happening.
    Soft,
    /// Refused by policy (spam, reputation, block list): a sender problem, not the address's.
    Block,
    /// Over quota: a soft bounce that often turns into an abandoned mailbox.
    MailboxFull,
    /// Vacation messages and other automatic answers: ignored.
    AutoReply,
    /// A spam complaint (ARF).
    Complaint,
    /// Delivered, relayed or delayed reports: nothing failed.
    Notice,
    #[default]
    Unknown,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hard => "hard",
            Self::Soft => "soft",
            Self::Block => "block",
            Self::MailboxFull => "mailbox_full",
            Self::AutoReply => "auto_reply",
            Self::Complaint => "complaint",
            Self::Notice => "notice",
            Self::Unknown => "unknown",
        }
    }
}

fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).expect("a valid built-in pattern")
}

/// An RFC 3463 enhanced status code.
pub static STATUS: LazyLock<Regex> = LazyLock::new(|| regex(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b"));
/// A basic SMTP reply code at the start of a reply (`550 ` or `550-`).
static REPLY: LazyLock<Regex> = LazyLock::new(|| regex(r"(?m)(?:^|[\s:(])([245]\d\d)[\s:-]"));
static ADDRESS: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+")
});
static FULL: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"(?i)mailbox (is )?full|over ?quota|quota exceeded|exceeded (the )?storage|insufficient (system )?storage|mailbox size limit",
    )
});
static BLOCKED: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"(?i)\bspam\b|blocked|block ?list|blacklist|reputation|\bpolicy\b|rejected for policy|dmarc|spf|not authorized|access denied|\brbl\b|spamhaus",
    )
});
static UNKNOWN_USER: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"(?i)user unknown|unknown user|no such (user|mailbox|recipient)|does not exist|doesn't exist|recipient not found|address not found|no mailbox|invalid (recipient|mailbox|address)|not our customer|mailbox unavailable|account (has been )?disabled|unrouteable address|recipientnotfound|address couldn't be found|doesn't have a .* account",
    )
});

/// The first RFC 3463 code in `text`.
pub fn find_status(text: &str) -> Option<String> {
    STATUS.captures(text).map(|c| format!("{}.{}.{}", &c[1], &c[2], &c[3]))
}

/// A status from a basic reply code when there is no enhanced one (`550` → `5.0.0`).
pub fn status_from_reply(text: &str) -> Option<String> {
    REPLY.captures(text).map(|c| format!("{}.0.0", &c[1][..1]))
}

/// Every address in `text`, in order.
pub fn addresses(text: &str) -> impl Iterator<Item = &str> {
    ADDRESS.find_iter(text).map(|m| m.as_str())
}

/// The class of a failure with `status` (RFC 3463), refined by its wording.
pub fn class_of(status: &str, diagnostic: &str) -> Class {
    let mut parts = status.split('.');
    let (Some(class), subject, detail) = (parts.next(), parts.next().unwrap_or("0"), parts.next().unwrap_or("0"))
    else {
        return Class::Unknown;
    };
    if FULL.is_match(diagnostic) || (subject == "2" && detail == "2") {
        return Class::MailboxFull;
    }
    match class {
        "2" => return Class::Notice,
        "4" => return if BLOCKED.is_match(diagnostic) && subject == "7" { Class::Block } else { Class::Soft },
        "5" => {}
        _ => return Class::Unknown,
    }
    if UNKNOWN_USER.is_match(diagnostic) {
        return Class::Hard;
    }
    match (subject, detail) {
        // 5.1.x: bad mailbox or domain (5.1.0 other address status, 5.1.1, 5.1.2, 5.1.10 ...).
        ("1", _) => Class::Hard,
        // 5.2.1: mailbox disabled; other mailbox states are temporary in practice.
        ("2", "1") => Class::Hard,
        ("7", _) | ("6", _) => Class::Block,
        ("4", "4") => Class::Hard,
        ("0", _) if BLOCKED.is_match(diagnostic) => Class::Block,
        ("0", _) => Class::Hard,
        _ if BLOCKED.is_match(diagnostic) => Class::Block,
        _ => Class::Soft,
    }
}

/// A bounce that is not a DSN, as found by one named rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextBounce {
    pub rule: &'static str,
    pub recipient: String,
    pub status: String,
    pub diagnostic: String,
}

/// How each MTA's plain-text bounce begins; the first that matches names the rule.
const SIGNATURES: &[(&str, &str)] = &[
    ("qmail", "This is the qmail-send program"),
    ("exim", "This message was created automatically by mail delivery software"),
    ("sendmail", "----- Transcript of session follows -----"),
    ("sendmail", "The following addresses had permanent fatal errors"),
    ("exchange", "Delivery has failed to these recipients or groups"),
    ("exchange", "Remote Server returned '"),
    ("exchange", "couldn't be delivered"),
    ("gmail", "Delivery to the following recipient failed"),
    ("gmail", "The response from the remote server was"),
    ("gmail", "Address not found"),
    ("yahoo", "Sorry, we were unable to deliver your message to the following address"),
    ("postfix_text", "This is the mail system at host"),
];

/// A line that quotes the remote server: a reply code, or the RFC 3463 code, with text.
static DIAGNOSTIC_LINE: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?m)^.*(?:\b[245]\d\d[\s:-]|[(#]?\b[245]\.\d{1,3}\.\d{1,3}\b).*$"));

/// Finds a named MTA's bounce in `text` (the message's text parts), or a
/// generic one when `looks_like_bounce` (a mailer-daemon sender or a
/// bounce-like subject) and the text names a failure code.
pub fn text_bounce(text: &str, looks_like_bounce: bool, skip: &[String]) -> Option<TextBounce> {
    let rule = SIGNATURES.iter().find(|(_, signature)| text.contains(signature)).map(|(rule, _)| *rule);
    let rule = match rule {
        Some(rule) => rule,
        None if looks_like_bounce && (STATUS.is_match(text) || REPLY.is_match(text)) => "generic",
        None => return None,
    };
    let diagnostic = DIAGNOSTIC_LINE
        .find_iter(text)
        .map(|m| m.as_str().trim())
        .find(|line| !line.is_empty())
        .unwrap_or_default()
        .chars()
        .take(1000)
        .collect::<String>();
    let status = find_status(&diagnostic)
        .or_else(|| find_status(text))
        .or_else(|| status_from_reply(&diagnostic))
        .unwrap_or_else(|| if UNKNOWN_USER.is_match(text) { "5.1.1".into() } else { "5.0.0".into() });
    let recipient = addresses(text)
        .find(|address| !skip.iter().any(|s| s.eq_ignore_ascii_case(address)) && !is_daemon(address))
        .unwrap_or_default()
        .to_owned();
    Some(TextBounce { rule, recipient, status, diagnostic })
}

/// Addresses of mail systems, never the recipient of a bounce.
pub fn is_daemon(address: &str) -> bool {
    let local = address.split('@').next().unwrap_or_default().to_ascii_lowercase();
    ["mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon"].contains(&local.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_then_wording() {
        assert_eq!(class_of("5.1.1", "550 5.1.1 <a@x>: Recipient address rejected"), Class::Hard);
        assert_eq!(class_of("5.2.2", "552 5.2.2 mailbox full"), Class::MailboxFull);
        assert_eq!(class_of("4.2.2", "452 4.2.2 over quota"), Class::MailboxFull);
        assert_eq!(class_of("5.7.1", "550 5.7.1 Message rejected as spam"), Class::Block);
        assert_eq!(class_of("4.4.1", "connection timed out"), Class::Soft);
        assert_eq!(class_of("5.0.0", "550 Mailbox quota exceeded"), Class::MailboxFull);
        assert_eq!(class_of("5.0.0", "554 blocked using zen.spamhaus.org"), Class::Block);
        assert_eq!(class_of("5.0.0", "550 No such user here"), Class::Hard);
        assert_eq!(class_of("5.3.4", "552 message too big"), Class::Soft);
        assert_eq!(class_of("2.0.0", "delivered"), Class::Notice);
        assert_eq!(class_of("x", ""), Class::Unknown);
    }

    #[test]
    fn codes_are_found_in_text() {
        assert_eq!(find_status("Remote Server returned '550 5.1.10 RESOLVER.ADR'").as_deref(), Some("5.1.10"));
        assert_eq!(status_from_reply("host said: 550 mailbox unavailable").as_deref(), Some("5.0.0"));
        assert_eq!(find_status("version 10.5.1.1a"), None);
    }
}
