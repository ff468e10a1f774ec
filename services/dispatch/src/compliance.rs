//! The rules a campaign must meet before it may be created (and that
//! `CheckCampaign` reports): what the mailbox providers' bulk-sender rules and
//! CAN-SPAM require of marketing mail.

use broadside_mail::template::{TemplateEngine, TemplateSource};
use broadside_proto::ServiceError;
use broadside_proto::v1::ComplianceCheck;
use broadside_store::Template;

/// The link the sample rendering uses, to find out whether a part shows it.
const SAMPLE_UNSUBSCRIBE: &str = "https://example.com/u/sample";

/// What the rules look at.
pub(crate) struct Draft<'a> {
    pub transactional: bool,
    pub tenant_allows_transactional: bool,
    pub postal_address: &'a str,
    pub template: &'a Template,
}

fn check(rule: &str, result: &str, message: impl Into<String>) -> ComplianceCheck {
    ComplianceCheck { rule: rule.into(), result: result.into(), message: message.into() }
}

/// Runs every rule; a failed check's message says what to fix.
pub(crate) fn checks(draft: &Draft<'_>) -> Vec<ComplianceCheck> {
    let mut checks = Vec::new();
    let exempt = draft.transactional && draft.tenant_allows_transactional;
    if draft.transactional && !draft.tenant_allows_transactional {
        checks.push(check(
            "stream",
            "failed",
            "this tenant may not send on the transactional stream (an operator allows it with `broadside tenants allow-transactional TENANT`)",
        ));
    }
    let sample = crate::templates::sample_context_with(draft.postal_address);
    let rendered = TemplateEngine::validate(
        &TemplateSource {
            subject: &draft.template.subject,
            html_body: &draft.template.html_body,
            text_body: &draft.template.text_body,
        },
        &sample,
    );
    let parts: Vec<(&str, String)> = match rendered {
        Ok(rendered) => {
            [("text", rendered.text_body.unwrap_or_default()), ("HTML", rendered.html_body.unwrap_or_default())]
                .into_iter()
                .filter(|(_, body)| !body.is_empty())
                .collect()
        }
        Err(_) => Vec::new(),
    };
    // The HTML part is auto-escaped, so look for the escaped form there too.
    let missing = |needle: &str| -> Vec<&str> {
        let escaped = broadside_mail::escape_html(needle);
        parts
            .iter()
            .filter(|(_, body)| !body.contains(needle) && !body.contains(&escaped))
            .map(|(name, _)| *name)
            .collect()
    };
    if exempt {
        checks.push(check("unsubscribe_link", "skipped", "transactional stream"));
        checks.push(check("postal_address", "skipped", "transactional stream"));
    } else {
        let without_link = missing(SAMPLE_UNSUBSCRIBE);
        checks.push(if without_link.is_empty() {
            check("unsubscribe_link", "passed", "every part shows {{ unsubscribe_url }}")
        } else {
            check(
                "unsubscribe_link",
                "failed",
                format!(
                    "the {} part has no unsubscribe link: add {{{{ unsubscribe_url }}}} (CAN-SPAM; Gmail and Yahoo bulk-sender rules)",
                    without_link.join(" and ")
                ),
            )
        });
        let address = draft.postal_address.trim();
        checks.push(if address.is_empty() {
            check(
                "postal_address",
                "failed",
                "campaign.postal_address is empty: marketing mail must show the sender's postal address (CAN-SPAM)",
            )
        } else {
            let without_address = missing(address);
            if without_address.is_empty() {
                check("postal_address", "passed", "every part shows {{ postal_address }}")
            } else {
                check(
                    "postal_address",
                    "failed",
                    format!(
                        "the {} part does not show the postal address: add {{{{ postal_address }}}} (CAN-SPAM)",
                        without_address.join(" and ")
                    ),
                )
            }
        });
    }
    checks.push(check(
        "dmarc_alignment",
        "skipped",
        "DKIM signing is not configured yet (it arrives with the sending engine); the From domain will have to match the signing domain",
    ));
    checks.push(check(
        "list_unsubscribe_headers",
        "passed",
        "every message carries List-Unsubscribe (https and mailto) and List-Unsubscribe-Post: List-Unsubscribe=One-Click (RFC 8058)",
    ));
    checks.push(check("feedback_id", "passed", "every message carries Feedback-ID: campaign:list:tenant:broadside"));
    checks
}

/// The first failed rule as an error naming the field to fix.
pub(crate) fn enforce(checks: &[ComplianceCheck]) -> Result<(), ServiceError> {
    let Some(failed) = checks.iter().find(|c| c.result == "failed") else { return Ok(()) };
    let field = match failed.rule.as_str() {
        "postal_address" if failed.message.starts_with("campaign.postal_address") => "campaign.postal_address",
        "stream" => "campaign.stream",
        _ => "campaign.template",
    };
    let message = failed.message.strip_prefix("campaign.postal_address ").unwrap_or(&failed.message);
    Err(ServiceError::invalid(field, message.to_owned()))
}
