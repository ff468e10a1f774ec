//! Bounces written for people rather than machines: which MTA or provider
//! wrote it (the family table in `data/families.txt`), where its copy of
//! the returned message begins, and every failed recipient with the text
//! around it. All families are read the same way, because they all say
//! the same thing: an address on a line of its own (or after a label such
//! as `Recipient:`), then the server's reply.

use std::sync::LazyLock;

use super::codes::{addresses, diagnostic_lines, find_reply, find_status, is_daemon};

/// One family's markers (lowercase; `*` parts must follow one another).
struct Family {
    name: String,
    body: Vec<Vec<String>>,
    subject: Vec<String>,
    from: Vec<String>,
}

struct Families {
    list: Vec<Family>,
    /// Lines that begin the returned message (lowercase).
    cuts: Vec<String>,
    /// Phrases of a delay warning (lowercase).
    delays: Vec<String>,
}

static FAMILIES: LazyLock<Families> = LazyLock::new(|| {
    let mut families = Families { list: Vec::new(), cuts: Vec::new(), delays: Vec::new() };
    for line in include_str!("data/families.txt").lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            families.list.push(Family { name: name.into(), body: vec![], subject: vec![], from: vec![] });
            continue;
        }
        let (key, value) = line.split_once(':').expect("families.txt: `key: value`");
        let value = value.trim().to_lowercase();
        let family = families.list.last_mut().expect("families.txt: a marker before the first [family]");
        match key {
            "body" => family.body.push(value.split('*').map(|p| p.trim().to_owned()).collect()),
            "subject" => family.subject.push(value),
            "from" => family.from.push(value),
            "cut" => families.cuts.push(value),
            "delay" => families.delays.push(value),
            other => panic!("families.txt: unknown key {other:?}"),
        }
    }
    families
});

/// `parts` occur in `text` in this order.
fn contains_parts(text: &str, parts: &[String]) -> bool {
    let mut at = 0;
    parts.iter().all(|part| match text[at..].find(part.as_str()) {
        Some(found) => {
            at += found + part.len();
            true
        }
        None => false,
    })
}

/// The family that wrote this bounce, if one is recognised (`lower_*` are lowercase).
pub fn family(lower_text: &str, lower_subject: &str, lower_from: &str) -> Option<&'static str> {
    // The sender and subject name a provider more surely than wording many
    // MTAs share (Zoho and GMX write Exim's text), so they are tried first.
    let list = &FAMILIES.list;
    let domain = lower_from.rsplit_once('@').map_or("", |(_, d)| d);
    let within = |parent: &str| domain == parent || domain.strip_suffix(parent).is_some_and(|d| d.ends_with('.'));
    list.iter()
        .find(|f| f.from.iter().any(|m| within(m)) || f.subject.iter().any(|m| lower_subject.contains(m.as_str())))
        .or_else(|| list.iter().find(|f| f.body.iter().any(|parts| contains_parts(lower_text, parts))))
        .map(|f| f.name.as_str())
}

/// Whether the report is a delay warning (still queued, will retry).
pub fn is_delay(lower_text: &str) -> bool {
    FAMILIES.delays.iter().any(|d| lower_text.contains(d.as_str()))
}

/// The bounce's own text: everything before the returned message.
pub fn bounce_part(text: &str) -> &str {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let lower = line.trim().to_lowercase();
        let inline_headers = lower.starts_with("received: ") || lower.starts_with("return-path: ");
        if inline_headers || FAMILIES.cuts.iter().any(|cut| lower.starts_with(cut.as_str())) {
            return &text[..offset];
        }
        offset += line.len();
    }
    text
}

/// A failed recipient found in the text.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Found {
    pub address: String,
    /// The reply quoted for it (or the bounce's only reply).
    pub diagnostic: String,
    /// The address stood where bounces put failed recipients (its own line,
    /// after a label); else it was only mentioned in prose.
    pub strong: bool,
}

/// Header-like labels whose addresses are never the failed recipient.
const NOT_RECIPIENT: &[&str] = &[
    "from:",
    "sender:",
    "reply-to:",
    "return-path:",
    "message-id:",
    "in-reply-to:",
    "references:",
    "received:",
    "envelope-from",
    "mail from",
    "smtp.mailfrom",
    "x-",
    "list-",
    "dkim-",
    "reporting-mta",
    "original-mail-from",
    "sent by",
    "sender address",
    "original sender",
    "original-sender",
    "envelope sender",
    "sender-mta",
    "reporting-mta",
    "remote-mta",
];

/// Prefixes after which an address is the one that failed.
const BEFORE_RECIPIENT: &[&str] =
    &["delivered to", "deliver to", "delivery to", "message to", "mail to", "rcpt to", "sent to"];

/// Every failed recipient in `text` (the bounce part), each once, in order;
/// `skip` rejects addresses that are ours or the reporter's.
pub fn recipients(text: &str, skip: &dyn Fn(&str) -> bool) -> Vec<Found> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found: Vec<Found> = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let lower = line.trim_start().to_lowercase();
        if NOT_RECIPIENT.iter().any(|label| lower.starts_with(label)) {
            continue;
        }
        let Some((at, address)) = addresses(line).find(|(_, a)| !skip(a) && !is_daemon(a)) else { continue };
        let strong = is_strong(&line[..at]);
        let block = block_of(&lines, index, at + address.len(), address);
        match found.iter_mut().find(|f| f.address.eq_ignore_ascii_case(address)) {
            Some(known) => {
                known.strong |= strong;
                // A later mention that quotes the server beats prose.
                if !has_code(&known.diagnostic) && has_code(&block) {
                    known.diagnostic = block;
                }
            }
            None => found.push(Found { address: address.to_owned(), diagnostic: block, strong }),
        }
    }
    if found.iter().any(|f| f.strong) {
        found.retain(|f| f.strong);
    } else {
        found.truncate(1);
    }
    // Replies not next to their address (Gmail, MailMarshal) belong to the only recipient.
    if !found.iter().any(|f| has_code(&f.diagnostic))
        && let Some(reply) = first_reply(text)
    {
        for f in &mut found {
            f.diagnostic = if f.diagnostic.is_empty() { reply.clone() } else { format!("{reply} ({})", f.diagnostic) };
        }
    }
    found
}

/// Where bounces put a failed address: alone, after a reply code, a label, or "delivered to".
fn is_strong(before: &str) -> bool {
    let before = before.trim().trim_end_matches(['<', '"', '(', '\'', '[', ' ']).trim();
    if before.is_empty() || before.chars().all(|c| c.is_ascii_digit() || c == '.' || c == ' ' || c == '-' || c == '#') {
        return true;
    }
    let lower = before.to_lowercase();
    (lower.ends_with(':') && lower.len() <= 40 && !lower.contains("://"))
        || BEFORE_RECIPIENT.iter().any(|p| lower.ends_with(p))
        || lower.ends_with("rcpt to:")
}

/// The text about one address: the rest of its line and the lines after it,
/// up to a blank line or another address.
fn block_of(lines: &[&str], index: usize, after: usize, address: &str) -> String {
    let mut block = vec![lines[index].get(after..).unwrap_or_default().trim_start_matches(['>', ':', ' ', '.']).trim()];
    for line in lines.iter().skip(index + 1).take(8) {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            if block.iter().any(|b| !b.is_empty()) {
                break;
            }
            continue;
        }
        let other = addresses(trimmed).find(|(_, a)| !a.eq_ignore_ascii_case(address) && !is_daemon(a));
        if let Some((at, _)) = other
            && is_strong(&trimmed[..at])
        {
            break;
        }
        block.push(trimmed);
    }
    let text = block.into_iter().filter(|b| !b.is_empty()).collect::<Vec<_>>().join(" ");
    text.chars().take(1000).collect()
}

fn has_code(text: &str) -> bool {
    find_status(text).is_some() || find_reply(text).is_some()
}

/// The first line quoting a server's reply.
pub fn first_reply(text: &str) -> Option<String> {
    diagnostic_lines(text).next().map(|line| line.chars().take(1000).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> bool {
        false
    }

    #[test]
    fn tables_load() {
        assert!(FAMILIES.list.len() > 20 && !FAMILIES.cuts.is_empty() && !FAMILIES.delays.is_empty());
    }

    #[test]
    fn addresses_on_their_own_lines_with_their_replies() {
        let text = "The following address(es) failed:\n\n  a@example.org\n    host mx [1.2.3.4]\n    SMTP error from remote mail server after RCPT TO:<a@example.org>:\n    550 5.1.1 no such user\n  b@example.org\n    552 5.2.2 mailbox full\n";
        let found = recipients(text, &none);
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found[0].diagnostic.contains("5.1.1"), "{found:#?}");
        assert!(found[1].diagnostic.contains("5.2.2"), "{found:#?}");
    }

    #[test]
    fn prose_mentions_count_only_when_nothing_stands_alone() {
        let text = "Your message wasn't delivered to x@gmail.com because the address couldn't be found.\nContact help@provider.example for help.\n\nThe response from the remote server was:\n550 5.1.1 The email account that you tried to reach does not exist.";
        let found = recipients(text, &none);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].address, "x@gmail.com");
        assert!(found[0].diagnostic.starts_with("550 5.1.1"), "{found:#?}");
    }

    #[test]
    fn the_returned_message_is_cut_off() {
        let text = "<a@x.example>:\nno mailbox\n\n--- Below this line is a copy of the message.\n\nTo: b@y.example\n";
        assert!(!bounce_part(text).contains("b@y.example"));
        assert!(bounce_part("Oops\nReceived: from x\nTo: b@y.example").ends_with("Oops\n"));
    }
}
