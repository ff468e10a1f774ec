//! Codes and addresses in report text: RFC 3463 enhanced status codes,
//! RFC 5321 reply codes, and mail addresses.

use std::sync::LazyLock;

use regex::Regex;

fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).expect("a valid built-in pattern")
}

/// An RFC 3463 enhanced status code.
pub static STATUS: LazyLock<Regex> = LazyLock::new(|| regex(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b"));
/// A basic SMTP reply code at the start of a reply (`550 ` or `550-`).
static REPLY: LazyLock<Regex> = LazyLock::new(|| regex(r"(?m)(?:^|[ \t:(\[])([245][0-5]\d)(?:[ \t:-]|$)"));
static ADDRESS: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+")
});
/// A line that quotes the remote server: a reply code, or an RFC 3463 code, with text.
static DIAGNOSTIC_LINE: LazyLock<Regex> =
    LazyLock::new(|| regex(r"(?m)^.*(?:(?:^|[ \t:(\[])[245][0-5]\d(?:[ \t:-]|$)|[(#]?\b[245]\.\d{1,3}\.\d{1,3}\b).*$"));

/// The first RFC 3463 code in `text`.
pub fn find_status(text: &str) -> Option<String> {
    STATUS.captures(text).map(|c| format!("{}.{}.{}", &c[1], &c[2], &c[3]))
}

/// The first basic reply code in `text` (`550`).
pub fn find_reply(text: &str) -> Option<&str> {
    REPLY.captures(text).and_then(|c| c.get(1)).map(|m| m.as_str())
}

/// A status from a basic reply code when there is no enhanced one (`550` → `5.0.0`).
pub fn status_from_reply(text: &str) -> Option<String> {
    find_reply(text).map(|code| format!("{}.0.0", &code[..1]))
}

/// Every address in `text` with its byte offset, in order.
pub fn addresses(text: &str) -> impl Iterator<Item = (usize, &str)> {
    ADDRESS.find_iter(text).map(|m| (m.start(), m.as_str().trim_end_matches(['.', '-'])))
}

/// The lines of `text` that quote a server's reply.
pub fn diagnostic_lines(text: &str) -> impl Iterator<Item = &str> {
    DIAGNOSTIC_LINE.find_iter(text).map(|m| m.as_str().trim()).filter(|line| !line.is_empty())
}

/// Addresses of mail systems, never the recipient of a bounce.
pub fn is_daemon(address: &str) -> bool {
    let local = address.split('@').next().unwrap_or_default().to_ascii_lowercase();
    ["mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon", "maildaemon", "noreply", "no-reply", "abuse"]
        .contains(&local.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_found_in_text() {
        assert_eq!(find_status("Remote Server returned '550 5.1.10 RESOLVER.ADR'").as_deref(), Some("5.1.10"));
        assert_eq!(status_from_reply("host said: 550 mailbox unavailable").as_deref(), Some("5.0.0"));
        assert_eq!(find_reply("Sorry (#5.1.1)"), None);
        assert_eq!(find_status("version 10.5.1.1a"), None);
        assert_eq!(
            diagnostic_lines("hello\n  <<< 550 5.1.1 no such user\nbye").collect::<Vec<_>>(),
            ["<<< 550 5.1.1 no such user"]
        );
        let found: Vec<_> = addresses("to <a.b@example.com>. and c@d.example.").map(|(_, a)| a).collect();
        assert_eq!(found, ["a.b@example.com", "c@d.example"]);
    }
}
