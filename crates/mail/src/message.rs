//! Builds one RFC 5322 message with the headers bulk senders must carry:
//! deterministic Message-ID, List-Id, List-Unsubscribe (RFC 2369) with
//! List-Unsubscribe-Post (RFC 8058), and Feedback-ID. lettre does the
//! folding, encoded-words and transfer encodings.

use lettre::Message;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};

use crate::MailError;
use crate::address::{check_header_value, validate_address};
use crate::template::Rendered;

/// What goes into one message besides its rendered content.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    pub tenant: &'a str,
    pub campaign_id: &'a str,
    pub subscriber_id: &'a str,
    pub list_id: &'a str,
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
    for (field, value) in [
        ("tenant", envelope.tenant),
        ("campaign_id", envelope.campaign_id),
        ("subscriber_id", envelope.subscriber_id),
        ("list_id", envelope.list_id),
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
        .message_id(Some(message_id(envelope.campaign_id, envelope.subscriber_id, envelope.domain)))
        .date_now()
        .raw_header(raw_header("List-Id", format!("<{}.{}>", envelope.list_id, envelope.domain)))
        .raw_header(raw_header(
            "List-Unsubscribe",
            format!("<{}>, <{}>", envelope.unsubscribe_url, envelope.unsubscribe_mailto),
        ))
        .raw_header(raw_header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click".into()))
        .raw_header(raw_header(
            "Feedback-ID",
            format!("{}:{}:{}:broadside", envelope.campaign_id, envelope.list_id, envelope.tenant),
        ));
    if !envelope.reply_to.is_empty() {
        builder = builder.reply_to(mailbox("reply_to", "", envelope.reply_to)?);
    }
    let text = content.text_body.clone().map(|body| SinglePart::builder().header(ContentType::TEXT_PLAIN).body(body));
    let html = content.html_body.clone().map(|body| SinglePart::builder().header(ContentType::TEXT_HTML).body(body));
    let built = match (text, html) {
        (Some(text), Some(html)) => builder.multipart(MultiPart::alternative().singlepart(text).singlepart(html)),
        (Some(part), None) | (None, Some(part)) => builder.singlepart(part),
        (None, None) => return Err(MailError::invalid("body", "the template rendered no body")),
    };
    built.map_err(|e| MailError::Build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope<'a>(to_name: &'a str) -> Envelope<'a> {
        Envelope {
            tenant: "default",
            campaign_id: "c1",
            subscriber_id: "s1",
            list_id: "l1",
            from_address: "news@example.com",
            from_name: "News",
            reply_to: "",
            to_address: "ada@example.org",
            to_name,
            unsubscribe_url: "https://u.example/u/tok",
            unsubscribe_mailto: "mailto:unsubscribe@example.com?subject=tok",
            domain: "example.com",
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
    fn injection_in_names_is_refused() {
        let error = build(&envelope("Ada\r\nBcc: evil@example.net"), &content()).unwrap_err();
        assert_eq!(error.field(), Some("email"));
    }
}
