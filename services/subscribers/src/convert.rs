//! Store records to API messages.

use broadside_proto::convert::{json_to_struct, millis_to_timestamp};
use broadside_proto::v1;
use broadside_store::{
    ConsentRecord, MailingList, OptIn, Subscriber, SubscriberStatus, SubscriptionStatus, Suppression, SuppressionReason,
};

pub fn list_to_proto(list: &MailingList) -> v1::MailingList {
    v1::MailingList {
        name: format!("lists/{}", list.id),
        display_name: list.display_name.clone(),
        description: list.description.clone(),
        create_time: millis_to_timestamp(list.create_time),
        opt_in: match list.opt_in {
            OptIn::Single => v1::OptIn::Single,
            OptIn::Double => v1::OptIn::Double,
        } as i32,
    }
}

pub(crate) fn status_to_proto(status: SubscriberStatus) -> v1::SubscriberStatus {
    match status {
        SubscriberStatus::Active => v1::SubscriberStatus::Active,
        SubscriberStatus::Unsubscribed => v1::SubscriberStatus::Unsubscribed,
        SubscriberStatus::Bounced => v1::SubscriberStatus::Bounced,
        SubscriberStatus::Complained => v1::SubscriberStatus::Complained,
        SubscriberStatus::Blocklisted => v1::SubscriberStatus::Blocklisted,
    }
}

pub(crate) fn status_from_proto(status: i32) -> Option<SubscriberStatus> {
    Some(match v1::SubscriberStatus::try_from(status).ok()? {
        v1::SubscriberStatus::Unspecified => return None,
        v1::SubscriberStatus::Active => SubscriberStatus::Active,
        v1::SubscriberStatus::Unsubscribed => SubscriberStatus::Unsubscribed,
        v1::SubscriberStatus::Bounced => SubscriberStatus::Bounced,
        v1::SubscriberStatus::Complained => SubscriberStatus::Complained,
        v1::SubscriberStatus::Blocklisted => SubscriberStatus::Blocklisted,
    })
}

fn subscription_status(status: SubscriptionStatus) -> v1::SubscriptionStatus {
    match status {
        SubscriptionStatus::Unconfirmed => v1::SubscriptionStatus::Unconfirmed,
        SubscriptionStatus::Confirmed => v1::SubscriptionStatus::Confirmed,
        SubscriptionStatus::Unsubscribed => v1::SubscriptionStatus::Unsubscribed,
    }
}

pub fn subscriber_to_proto(subscriber: &Subscriber) -> v1::Subscriber {
    v1::Subscriber {
        name: format!("subscribers/{}", subscriber.id),
        email: subscriber.email.clone(),
        display_name: subscriber.display_name.clone(),
        attributes: Some(json_to_struct(&subscriber.attributes)),
        status: status_to_proto(subscriber.status) as i32,
        lists: subscriber.lists.iter().map(|id| format!("lists/{id}")).collect(),
        create_time: millis_to_timestamp(subscriber.create_time),
        update_time: millis_to_timestamp(subscriber.update_time),
        subscriptions: subscriber
            .subscriptions
            .iter()
            .map(|s| v1::Subscription {
                list: format!("lists/{}", s.list_id),
                status: subscription_status(s.status) as i32,
                update_time: millis_to_timestamp(s.update_time),
            })
            .collect(),
    }
}

pub(crate) fn consent_to_proto(record: &ConsentRecord) -> v1::ConsentRecord {
    v1::ConsentRecord {
        time: millis_to_timestamp(record.time),
        action: record.action.as_str().into(),
        list: if record.list_id.is_empty() { String::new() } else { format!("lists/{}", record.list_id) },
        context: Some(v1::ConsentContext {
            source: record.context.source.clone(),
            ip: record.context.ip.clone(),
            user_agent: record.context.user_agent.clone(),
        }),
    }
}

pub(crate) fn reason_to_proto(reason: SuppressionReason) -> v1::SuppressionReason {
    match reason {
        SuppressionReason::HardBounce => v1::SuppressionReason::HardBounce,
        SuppressionReason::Complaint => v1::SuppressionReason::Complaint,
        SuppressionReason::Unsubscribe => v1::SuppressionReason::Unsubscribe,
        SuppressionReason::Manual => v1::SuppressionReason::Manual,
        SuppressionReason::Erased => v1::SuppressionReason::Erased,
    }
}

pub(crate) fn reason_from_proto(reason: i32) -> Option<SuppressionReason> {
    Some(match v1::SuppressionReason::try_from(reason).ok()? {
        v1::SuppressionReason::Unspecified => SuppressionReason::Manual,
        v1::SuppressionReason::HardBounce => SuppressionReason::HardBounce,
        v1::SuppressionReason::Complaint => SuppressionReason::Complaint,
        v1::SuppressionReason::Unsubscribe => SuppressionReason::Unsubscribe,
        v1::SuppressionReason::Manual => SuppressionReason::Manual,
        v1::SuppressionReason::Erased => SuppressionReason::Erased,
    })
}

pub(crate) fn suppression_to_proto(suppression: &Suppression) -> v1::Suppression {
    v1::Suppression {
        target: suppression.target.clone(),
        reason: reason_to_proto(suppression.reason) as i32,
        create_time: millis_to_timestamp(suppression.create_time),
        list: if suppression.list_id.is_empty() { String::new() } else { format!("lists/{}", suppression.list_id) },
        email_hash: suppression.email_hash.clone(),
        detail: suppression.detail.clone(),
    }
}
