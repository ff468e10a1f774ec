//! The rules of an upsert that both backends share, so the consent rules
//! exist once: how a re-sent sign-up treats each membership, how an
//! existing subscriber's data merges, which consent action a status change
//! records, and how an import row is reported.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::*;

/// What one upsert did, before the stored subscriber is read back.
pub(crate) struct Applied {
    pub(crate) id: String,
    pub(crate) created: bool,
    pub(crate) changed: bool,
    /// Status of the membership in each list joined.
    pub(crate) statuses: Vec<SubscriptionStatus>,
    pub(crate) pending_confirmation: Vec<String>,
    /// Stored (name, attributes, status) after the upsert, when it differs
    /// from the input (an existing subscriber); `None` means "as given".
    pub(crate) state: Option<(String, Map<String, Value>, SubscriberStatus)>,
}

/// The status a new membership of `list_id` starts in.
pub(crate) fn fresh_status(modes: &HashMap<String, OptIn>, list_id: &str) -> SubscriptionStatus {
    if modes.get(list_id) == Some(&OptIn::Double) {
        SubscriptionStatus::Unconfirmed
    } else {
        SubscriptionStatus::Confirmed
    }
}

/// Whether an upsert (re)joins a list the subscriber has the `current`
/// membership of. A repeated sign-up re-sends a pending confirmation
/// (pushed to `pending`), it does not confirm; only an explicit
/// re-subscription brings back someone who unsubscribed.
pub(crate) fn joins(
    current: Option<SubscriptionStatus>,
    options: &UpsertOptions,
    list_id: &str,
    pending: &mut Vec<String>,
) -> bool {
    match current {
        None => true,
        Some(SubscriptionStatus::Unsubscribed) => options.resubscribe,
        Some(SubscriptionStatus::Unconfirmed) => {
            if options.resubscribe {
                pending.push(list_id.to_owned());
            }
            false
        }
        Some(SubscriptionStatus::Confirmed) => false,
    }
}

/// An existing subscriber's (name, attributes) after an upsert with
/// `subscriber`'s data: attributes merge, an empty name keeps the old one.
pub(crate) fn merged(
    old_name: String,
    mut attributes: Map<String, Value>,
    subscriber: &Subscriber,
) -> (String, Map<String, Value>) {
    attributes.extend(subscriber.attributes.iter().map(|(k, v)| (k.clone(), v.clone())));
    let name = if subscriber.display_name.is_empty() { old_name } else { subscriber.display_name.clone() };
    (name, attributes)
}

/// The consent action a membership change to `status` records.
pub(crate) fn consent_action(status: SubscriptionStatus) -> ConsentAction {
    match status {
        SubscriptionStatus::Confirmed => ConsentAction::Confirm,
        SubscriptionStatus::Unsubscribed => ConsentAction::Unsubscribe,
        SubscriptionStatus::Unconfirmed => ConsentAction::Subscribe,
    }
}

/// Counts one import row in `job` and reports it.
pub(crate) fn imported(job: &mut ImportJob, row: ImportRow, applied: Applied) -> ImportedRow {
    match (applied.created, applied.changed) {
        (true, _) => job.imported += 1,
        (false, true) => job.updated += 1,
        (false, false) => job.skipped += 1,
    }
    let subscriber = row.subscriber;
    let (display_name, attributes, subscriber_status) =
        applied.state.unwrap_or((subscriber.display_name, subscriber.attributes, subscriber.status));
    ImportedRow {
        line: row.line,
        subscriber_id: applied.id,
        created: applied.created,
        changed: applied.changed,
        status: applied.statuses.first().copied().unwrap_or(SubscriptionStatus::Confirmed),
        email: subscriber.email,
        display_name,
        attributes,
        subscriber_status,
    }
}
