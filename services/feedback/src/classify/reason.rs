//! Why a message was not delivered: one reason from a fixed set, modelled
//! on the bounce specialists' (Sisimai's) so verdicts compare across tools.
//! The reason comes from the reply text (the phrase table in
//! `data/reasons.txt`), else from the RFC 3463 status; `hard` means the
//! address itself is bad and is what suppresses at once.

use std::sync::LazyLock;

use aho_corasick::AhoCorasick;
use serde::Serialize;

macro_rules! reasons {
    ($($variant:ident => $name:literal,)*) => {
        /// The reason for one recipient's verdict.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default, PartialOrd, Ord)]
        #[serde(rename_all = "snake_case")]
        pub enum Reason {
            $($variant,)*
            #[default]
            Undefined,
        }

        impl Reason {
            /// Every reason, in the order of the documentation.
            pub const ALL: &[Reason] = &[$(Reason::$variant,)* Reason::Undefined];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)*
                    Reason::Undefined => "undefined",
                }
            }
        }
    };
}

reasons! {
    UserUnknown => "user_unknown",
    HostUnknown => "host_unknown",
    HasMoved => "has_moved",
    NotAccepted => "not_accepted",
    MailboxFull => "mailbox_full",
    ExceedLimit => "exceed_limit",
    MessageTooBig => "message_too_big",
    Suspended => "suspended",
    Blocked => "blocked",
    Rejected => "rejected",
    SpamDetected => "spam_detected",
    PolicyViolation => "policy_violation",
    SecurityError => "security_error",
    VirusDetected => "virus_detected",
    Expired => "expired",
    NetworkError => "network_error",
    TooManyConnections => "too_many_connections",
    SystemError => "system_error",
    SystemFull => "system_full",
    MailerError => "mailer_error",
    SyntaxError => "syntax_error",
    AutoReply => "auto_reply",
    Complaint => "complaint",
    Delivered => "delivered",
}

impl Reason {
    pub fn parse(text: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|reason| reason.as_str() == text)
    }

    /// The address itself is bad (it does not exist, its domain does not,
    /// it moved, or it accepts no mail): suppress at once. Every other
    /// failure is about this message, the sender or the moment.
    pub fn is_hard(self, permanent: bool) -> bool {
        match self {
            Reason::UserUnknown | Reason::HostUnknown | Reason::HasMoved => true,
            Reason::NotAccepted => permanent,
            _ => false,
        }
    }

    /// A refusal because of the sender (IP, domain, content, authentication),
    /// counted per sending domain and destination so a blocklisting shows.
    pub fn is_sender_problem(self) -> bool {
        matches!(
            self,
            Reason::Blocked
                | Reason::Rejected
                | Reason::SpamDetected
                | Reason::PolicyViolation
                | Reason::SecurityError
                | Reason::VirusDetected
        )
    }

    /// The status a report that gave none most likely meant (RFC 3463).
    pub fn default_status(self, permanent: bool) -> String {
        let code = match self {
            Reason::UserUnknown => "1.1",
            Reason::HostUnknown => "1.2",
            Reason::HasMoved => "1.6",
            Reason::NotAccepted => "1.10",
            Reason::Suspended => "2.1",
            Reason::MailboxFull => "2.2",
            Reason::ExceedLimit => "2.3",
            Reason::MessageTooBig => "3.4",
            Reason::SystemFull => "3.1",
            Reason::SystemError | Reason::MailerError => "3.0",
            Reason::NetworkError => "4.0",
            Reason::Expired => "4.7",
            Reason::TooManyConnections => "4.5",
            Reason::SyntaxError => "5.2",
            Reason::SecurityError => "7.0",
            Reason::Blocked | Reason::SpamDetected | Reason::PolicyViolation | Reason::VirusDetected => "7.1",
            Reason::Rejected => "7.1",
            Reason::Delivered => return "2.0.0".into(),
            _ => "0.0",
        };
        format!("{}.{code}", if permanent { 5 } else { 4 })
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The phrase table, compiled once: one automaton over every phrase's first
/// part; a hit names its section (priority) and the parts that must follow.
struct Table {
    automaton: AhoCorasick,
    /// Per pattern: (its section's rank, the reason, the parts after `*`).
    patterns: Vec<(usize, Reason, Vec<String>)>,
}

static TABLE: LazyLock<Table> = LazyLock::new(|| {
    let mut firsts = Vec::new();
    let mut patterns = Vec::new();
    // (rank, reason) of the current section: earlier sections win.
    let mut section = None;
    let mut sections = 0;
    for line in include_str!("data/reasons.txt").lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let reason = Reason::parse(name).unwrap_or_else(|| panic!("reasons.txt: unknown section [{name}]"));
            section = Some((sections, reason));
            sections += 1;
            continue;
        }
        let (rank, reason) = section.expect("reasons.txt: a phrase before the first [section]");
        let mut parts = line.split('*').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned);
        firsts.push(parts.next().expect("reasons.txt: an empty phrase"));
        patterns.push((rank, reason, parts.collect()));
    }
    let automaton = AhoCorasick::new(&firsts).expect("reasons.txt: valid phrases");
    Table { automaton, patterns }
});

/// The reason its wording gives `text` (any case), if a phrase matches.
pub fn from_text(text: &str) -> Option<Reason> {
    let text = normalize(text);
    let table = &*TABLE;
    let mut best: Option<(usize, Reason)> = None;
    for hit in table.automaton.find_overlapping_iter(&text) {
        let (rank, reason, rest) = &table.patterns[hit.pattern().as_usize()];
        if best.is_some_and(|(b, _)| b <= *rank) {
            continue;
        }
        let mut at = hit.end();
        let followed = rest.iter().all(|part| match text[at..].find(part.as_str()) {
            Some(found) => {
                at += found + part.len();
                true
            }
            None => false,
        });
        if followed {
            best = Some((*rank, *reason));
        }
    }
    best.map(|(_, reason)| reason)
}

/// Lowercase with runs of white space as one space.
fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// The reason an RFC 3463 status names on its own (`5.1.1` → user_unknown).
pub fn from_status(status: &str) -> Option<Reason> {
    let mut parts = status.split('.');
    let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
    if class == "2" {
        return Some(Reason::Delivered);
    }
    Some(match (subject, detail) {
        ("1", "1" | "3" | "10") => Reason::UserUnknown,
        ("1", "2") => Reason::HostUnknown,
        ("1", "6") => Reason::HasMoved,
        ("1", "7" | "8") => Reason::Rejected,
        ("2", "1") => Reason::Suspended,
        ("2", "2") => Reason::MailboxFull,
        ("2", "3") => Reason::ExceedLimit,
        ("2", "4") => Reason::SystemError,
        ("3", "1") => Reason::SystemFull,
        ("3", "2") => Reason::NotAccepted,
        ("3", "4") => Reason::MessageTooBig,
        ("3", _) => Reason::SystemError,
        ("4", "4") => Reason::HostUnknown,
        ("4", "7") => Reason::Expired,
        ("4", "5") => Reason::TooManyConnections,
        ("4", _) => Reason::NetworkError,
        ("5", "3") => Reason::ExceedLimit,
        ("5", _) => Reason::SyntaxError,
        ("6", _) => Reason::PolicyViolation,
        ("7", "1") => Reason::Blocked,
        ("7", "26" | "27" | "25" | "0" | "5" | "7" | "8" | "9" | "11" | "15" | "23" | "24") => Reason::SecurityError,
        ("7", _) => Reason::PolicyViolation,
        _ => return None,
    })
}

/// The reason of a failure: its wording first (it is more specific than
/// most codes), then its status; `undefined` when neither says.
pub fn of(status: &str, diagnostic: &str) -> Reason {
    // 5.1.1 with wording about a block is a block; a generic code (x.0.0)
    // says nothing, so wording alone decides.
    from_text(diagnostic).or_else(|| from_status(status)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_is_a_reason_and_phrases_are_lowercase() {
        assert!(!TABLE.patterns.is_empty());
        for line in include_str!("data/reasons.txt").lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(line, line.to_lowercase(), "reasons.txt: {line:?} must be lowercase");
        }
    }

    #[test]
    fn wording_before_codes() {
        assert_eq!(
            of("5.1.1", "550 5.1.1 <a@x>: Recipient address rejected: User unknown in local recipient table"),
            Reason::UserUnknown
        );
        assert_eq!(
            of("5.7.1", "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"),
            Reason::Blocked
        );
        assert_eq!(of("5.2.2", "552 5.2.2 Mailbox full"), Reason::MailboxFull);
        assert_eq!(
            of("4.2.2", "452 4.2.2 The email account that you tried to reach is over quota"),
            Reason::MailboxFull
        );
        assert_eq!(of("5.0.0", "550 Host unknown"), Reason::HostUnknown);
        assert_eq!(of("5.7.26", "550-5.7.26 This mail is unauthenticated"), Reason::SecurityError);
        assert_eq!(of("5.1.1", "550 5.1.1 The email account that you tried to reach is disabled"), Reason::Suspended);
        assert_eq!(
            of("5.1.10", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"),
            Reason::UserUnknown
        );
        assert_eq!(of("5.3.4", ""), Reason::MessageTooBig);
        assert_eq!(of("", "User john (john@x) * not listed in Domino Directory"), Reason::UserUnknown);
        assert_eq!(of("", "mailbox 'x' does not exist"), Reason::UserUnknown);
        assert_eq!(of("", "all fine here"), Reason::Undefined);
    }

    #[test]
    fn hard_is_about_the_address() {
        assert!(Reason::UserUnknown.is_hard(false));
        assert!(Reason::NotAccepted.is_hard(true) && !Reason::NotAccepted.is_hard(false));
        assert!(!Reason::Blocked.is_hard(true) && !Reason::MailboxFull.is_hard(true));
        assert_eq!(Reason::UserUnknown.default_status(true), "5.1.1");
        assert_eq!(Reason::MailboxFull.default_status(false), "4.2.2");
    }
}
