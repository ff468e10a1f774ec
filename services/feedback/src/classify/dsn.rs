//! RFC 3464 delivery status notifications: one verdict recipient per
//! per-recipient field group. Where a group leaves something out (no
//! Diagnostic-Code, no recipient), the human-readable part fills it in.

use mail_parser::Message;

use super::fields::typed_value;
use super::{Kind, Recipient, Report, Verdict, text};

/// Reads the report's `message/delivery-status`; false when it has none
/// (or names no recipient), so the text rules take over.
pub(super) fn read(verdict: &mut Verdict, report: &Report, message: &Message<'_>) -> bool {
    let Some(per_message) = report.delivery.first() else { return false };
    let groups: Vec<_> =
        report.delivery.iter().filter(|g| g.get("action").is_some() || g.get("status").is_some()).collect();
    let address_of = |g: &super::Fields| {
        g.get("final-recipient")
            .or_else(|| g.get("original-recipient"))
            .or_else(|| g.get("x-actual-recipient"))
            .map(typed_value)
            .unwrap_or_default()
            .to_owned()
    };
    if !groups.iter().any(|g| address_of(g).contains('@')) {
        return false;
    }
    verdict.kind = Kind::Bounce;
    verdict.rule = "dsn".into();
    verdict.reporting_mta = per_message.get("reporting-mta").map(typed_value).unwrap_or_default().to_owned();
    let body = text::bounce_part(&report.text);
    let skip = report.not_recipients(message, verdict);
    let skip = |address: &str| skip.iter().any(|s| s.eq_ignore_ascii_case(address));
    let in_text = text::recipients(body, &skip);
    let delayed = text::is_delay(&report.text.to_lowercase());
    for group in groups {
        let address = address_of(group);
        let mut diagnostic = group.get("diagnostic-code").map(typed_value).unwrap_or_default().to_owned();
        if diagnostic.is_empty() {
            // Some MTAs (Exchange, Gmail) put the reply only in the text part.
            diagnostic = in_text
                .iter()
                .find(|f| f.address.eq_ignore_ascii_case(&address))
                .or(if in_text.len() == 1 { in_text.first() } else { None })
                .map(|f| f.diagnostic.clone())
                .or_else(|| text::first_reply(body))
                .unwrap_or_default();
        }
        let recipient = Recipient {
            address,
            status: group.get("status").unwrap_or_default().to_owned(),
            action: group.get("action").unwrap_or_default().trim().to_ascii_lowercase(),
            diagnostic,
            remote_mta: group.get("remote-mta").map(typed_value).unwrap_or_default().to_owned(),
            ..Default::default()
        };
        verdict.recipients.push(recipient.settle(delayed));
    }
    true
}
