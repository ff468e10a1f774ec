//! Builds one RFC 5322 message with the headers bulk senders must carry:
//! deterministic Message-ID, List-Id, List-Unsubscribe (RFC 2369) with
//! List-Unsubscribe-Post (RFC 8058), and Feedback-ID. lettre does the
//! folding, encoded-words and transfer encodings.

use lettre::Message;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};

use crate::MailError;
use crate::address::{check_header_value, validate_address};
use crate::dkim::DkimKeys;
use crate::template::Rendered;
use crate::token::UnsubscribeClaims;

/// What goes into one message besides its rendered content.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// Tenant, campaign, subscriber and list: the same claims the message's
    /// unsubscribe and tracking tokens carry, so they exist once.
    pub claims: &'a UnsubscribeClaims<'a>,
    pub from_address: &'a str,
    pub from_name: &'a str,
    pub reply_to: &'a str,
    pub to_address: &'a str,
    pub to_name: &'a str,
    /// One-click https URL, answered by the feedback role (RFC 8058).
    pub unsubscribe_url: &'a str,
    /// `mailto:` alternative for clients without one-click support.
    pub unsubscribe_mailto: &'a str,
    /// Domain for Message-ID and List-Id.
    pub domain: &'a str,
    /// Envelope sender (MAIL FROM), which becomes Return-Path: a VERP address.
    pub return_path: &'a str,
}

/// A message ready for SMTP: envelope plus signed bytes.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub envelope: lettre::address::Envelope,
    pub bytes: Vec<u8>,
}

impl Outgoing {
    /// Formats `message` and prepends the DKIM signatures of its From domain.
    pub fn signed(message: &Message, from_address: &str, dkim: &DkimKeys) -> Result<Self, MailError> {
        let body = message.formatted();
        let from_domain = from_address.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default();
        let signatures = dkim.sign(&from_domain, &body)?;
        let mut bytes = Vec::with_capacity(signatures.len() + body.len());
        bytes.extend_from_slice(signatures.as_bytes());
        bytes.extend_from_slice(&body);
        Ok(Self { envelope: message.envelope().clone(), bytes })
    }
}

/// The Message-ID of one recipient of one campaign: the same on every retry,
/// so duplicates are detectable downstream.
pub fn message_id(campaign_id: &str, subscriber_id: &str, domain: &str) -> String {
    format!("<{campaign_id}.{subscriber_id}@{domain}>")
}

fn raw_header(name: &'static str, value: String) -> HeaderValue {
    HeaderValue::new(HeaderName::new_from_ascii_str(name), value)
}

fn mailbox(field: &str, name: &str, address: &str) -> Result<Mailbox, MailError> {
    check_header_value(field, name)?;
    let address = validate_address(field, address)?;
    Ok(Mailbox::new((!name.is_empty()).then(|| name.to_owned()), address))
}

/// Builds the message. Every header-bound value is checked for CR/LF first.
pub fn build(envelope: &Envelope<'_>, content: &Rendered) -> Result<Message, MailError> {
    let claims = envelope.claims;
    for (field, value) in [
        ("tenant", &*claims.tenant),
        ("campaign_id", &*claims.campaign_id),
        ("subscriber_id", &*claims.subscriber_id),
        ("list_id", &*claims.list_id),
        ("unsubscribe_url", envelope.unsubscribe_url),
        ("unsubscribe_mailto", envelope.unsubscribe_mailto),
        ("subject", &content.subject),
    ] {
        check_header_value(field, value)?;
    }
    let mut builder = Message::builder()
        .from(mailbox("from_address", envelope.from_name, envelope.from_address)?)
        .to(mailbox("email", envelope.to_name, envelope.to_address)?)
        .subject(content.subject.clone())
        .message_id(Some(message_id(&claims.campaign_id, &claims.subscriber_id, envelope.domain)))
        .date_now()
        .raw_header(raw_header("List-Id", format!("<{}.{}>", claims.list_id, envelope.domain)))
        .raw_header(raw_header(
            "List-Unsubscribe",
            format!("<{}>, <{}>", envelope.unsubscribe_url, envelope.unsubscribe_mailto),
        ))
        .raw_header(raw_header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click".into()))
        .raw_header(raw_header(
            "Feedback-ID",
            format!("{}:{}:{}:broadside", claims.campaign_id, claims.list_id, claims.tenant),
        ));
    let recipient = validate_address("email", envelope.to_address)?;
    let sender = validate_address("return_path", envelope.return_path)?;
    let smtp_envelope =
        lettre::address::Envelope::new(Some(sender), vec![recipient]).map_err(|e| MailError::failed("envelope", e))?;
    builder = builder.envelope(smtp_envelope);
    if !envelope.reply_to.is_empty() {
        builder = builder.reply_to(mailbox("reply_to", "", envelope.reply_to)?);
    }
    let text = content
        .text_body
        .as_deref()
        .map(normalize_body)
        .map(|body| SinglePart::builder().header(ContentType::TEXT_PLAIN).body(body));
    let html = content
        .html_body
        .as_deref()
        .map(normalize_body)
        .map(|body| SinglePart::builder().header(ContentType::TEXT_HTML).body(body));
    let built = match (text, html) {
        (Some(text), Some(html)) => builder.multipart(MultiPart::alternative().singlepart(text).singlepart(html)),
        (Some(part), None) | (None, Some(part)) => builder.singlepart(part),
        (None, None) => return Err(MailError::invalid("body", "the template rendered no body")),
    };
    built.map_err(|e| MailError::failed("MIME message", e))
}

/// Bodies travel with CRLF line ends only and without NUL (RFC 5322 §2.3):
/// a bare CR or LF from a template or an attribute becomes a line break, so
/// no byte sequence of the input reaches the wire unframed.
fn normalize_body(body: &str) -> String {
    let mut out = String::with_capacity(body.len() + body.len() / 32);
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\0' => {}
            '\r' => {
                chars.next_if_eq(&'\n');
                out.push_str("\r\n");
            }
            '\n' => out.push_str("\r\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) static CLAIMS: UnsubscribeClaims<'static> = UnsubscribeClaims::new("default", "s1", "l1", "c1");

    fn envelope<'a>(to_name: &'a str) -> Envelope<'a> {
        Envelope {
            claims: &CLAIMS,
            from_address: "news@example.com",
            from_name: "News",
            reply_to: "",
            to_address: "ada@example.org",
            to_name,
            unsubscribe_url: "https://u.example/u/tok",
            unsubscribe_mailto: "mailto:unsubscribe@example.com?subject=tok",
            domain: "example.com",
            return_path: "bounces+abc@example.com",
        }
    }

    fn content() -> Rendered {
        Rendered { subject: "Héllo Ada".into(), html_body: Some("<p>Hi</p>".into()), text_body: Some("Hi".into()) }
    }

    #[test]
    fn carries_bulk_sender_headers() {
        let raw = String::from_utf8(build(&envelope("Ada"), &content()).unwrap().formatted()).unwrap();
        let raw = raw.replace("\r\n ", " "); // unfold (RFC 5322 §2.2.3)
        for expected in [
            "Message-ID: <c1.s1@example.com>",
            "List-Id: <l1.example.com>",
            "List-Unsubscribe: <https://u.example/u/tok>, <mailto:unsubscribe@example.com?subject=tok>",
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
            "Feedback-ID: c1:l1:default:broadside",
            "Subject: =?utf-8?",
            "multipart/alternative",
            "Date: ",
        ] {
            assert!(raw.contains(expected), "missing {expected:?} in\n{raw}");
        }
    }

    #[test]
    fn envelope_sender_is_the_return_path() {
        let message = build(&envelope("Ada"), &content()).unwrap();
        assert_eq!(message.envelope().from().unwrap().to_string(), "bounces+abc@example.com");
        assert_eq!(message.envelope().to()[0].to_string(), "ada@example.org");
    }

    #[test]
    fn injection_in_names_is_refused() {
        let error = build(&envelope("Ada\r\nBcc: evil@example.net"), &content()).unwrap_err();
        assert_eq!(error.field(), Some("email"));
    }
}

/// No input may add a header or end SMTP DATA early: names, subjects and
/// bodies full of CR, LF, NUL and lone dots either are refused with a named
/// field or come out as a message with exactly the expected headers, lines
/// that end in CRLF and fit 998 octets, and a body that, after the SMTP
/// transparency every client applies (RFC 5321 §4.5.2), holds no
/// end-of-data marker.
#[cfg(test)]
mod injection {
    use proptest::prelude::*;

    use super::*;

    /// Text made of the dangerous pieces and ordinary ones.
    fn hostile() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("\r".to_owned()),
            Just("\n".to_owned()),
            Just("\r\n".to_owned()),
            Just("\0".to_owned()),
            Just(".".to_owned()),
            Just("\r\n.\r\n".to_owned()),
            Just("\n.\n".to_owned()),
            Just("Bcc: victim@example.net".to_owned()),
            Just(": ".to_owned()),
            Just("=?utf-8?q?x?=".to_owned()),
            Just("é".to_owned()),
            "[ -~]{0,12}",
            "\\PC{0,4}",
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
    }

    fn header_names(raw: &str) -> Vec<String> {
        let head = raw.split("\r\n\r\n").next().unwrap_or_default();
        let mut names: Vec<String> = head
            .split("\r\n")
            .filter(|line| !line.starts_with([' ', '\t']))
            .filter_map(|line| line.split_once(':').map(|(name, _)| name.to_ascii_lowercase()))
            .collect();
        names.sort();
        names
    }

    /// RFC 5321 §4.5.2: a line starting with '.' gets another one.
    fn dot_stuff(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 16);
        let mut line_start = true;
        for &byte in data {
            if line_start && byte == b'.' {
                out.push(b'.');
            }
            out.push(byte);
            line_start = byte == b'\n';
        }
        out
    }

    fn expected_headers() -> Vec<String> {
        let clean = Rendered { subject: "s".into(), html_body: Some("<p>h</p>".into()), text_body: Some("t".into()) };
        header_names(&String::from_utf8(build(&tests_envelope("Ada", "News"), &clean).unwrap().formatted()).unwrap())
    }

    fn tests_envelope<'a>(to_name: &'a str, from_name: &'a str) -> Envelope<'a> {
        Envelope {
            claims: &super::tests::CLAIMS,
            from_address: "news@example.com",
            from_name,
            reply_to: "",
            to_address: "ada@example.org",
            to_name,
            unsubscribe_url: "https://u.example/u/tok",
            unsubscribe_mailto: "mailto:unsubscribe@example.com?subject=tok",
            domain: "example.com",
            return_path: "bounces+abc@example.com",
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn no_input_adds_a_header_or_ends_data(
            to_name in hostile(), from_name in hostile(), subject in hostile(),
            html in hostile(), text in hostile(),
        ) {
            let content = Rendered {
                subject: subject.clone(),
                html_body: Some(format!("<p>{html}</p>")),
                text_body: Some(text.clone()),
            };
            let message = match build(&tests_envelope(&to_name, &from_name), &content) {
                Ok(message) => message,
                Err(error) => {
                    // Refused: it must say which field and why.
                    prop_assert!(error.field().is_some(), "refusal without a field: {error}");
                    let hostile_fields = [("email", &to_name), ("from_address", &from_name), ("subject", &subject)];
                    prop_assert!(
                        hostile_fields.iter().any(|(f, v)| error.field() == Some(f) && v.contains(['\r', '\n', '\0'])),
                        "refused a harmless value: {error}"
                    );
                    return Ok(());
                }
            };
            let raw = message.formatted();
            prop_assert!(!raw.contains(&0), "NUL in the message");
            let text_raw = String::from_utf8(raw.clone()).expect("the message is ASCII");
            prop_assert!(text_raw.is_ascii());
            for line in text_raw.split_inclusive('\n') {
                prop_assert!(line.ends_with("\r\n"), "line without CRLF: {line:?}");
                prop_assert!(!line[..line.len() - 2].contains(['\r', '\n']), "bare CR or LF: {line:?}");
                prop_assert!(line.len() <= 1000, "line longer than 998 octets");
            }
            prop_assert_eq!(header_names(&text_raw), expected_headers());
            let mut data = dot_stuff(&raw);
            data.extend_from_slice(b"\r\n.\r\n");
            let end = data.windows(5).position(|w| w == b"\r\n.\r\n").unwrap();
            prop_assert_eq!(end, data.len() - 5, "DATA would end early");
        }
    }
}
