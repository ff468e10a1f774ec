//! Store records to API messages.

use broadside_proto::convert::{json_to_struct, millis_to_timestamp};
use broadside_proto::v1;
use broadside_store::{MailingList, Subscriber, SubscriberStatus};

pub fn list_to_proto(list: &MailingList) -> v1::MailingList {
    v1::MailingList {
        name: format!("lists/{}", list.id),
        display_name: list.display_name.clone(),
        description: list.description.clone(),
        create_time: millis_to_timestamp(list.create_time),
    }
}

pub fn subscriber_to_proto(subscriber: &Subscriber) -> v1::Subscriber {
    let status = match subscriber.status {
        SubscriberStatus::Active => v1::SubscriberStatus::Active,
        SubscriberStatus::Unsubscribed => v1::SubscriberStatus::Unsubscribed,
        SubscriberStatus::Suppressed => v1::SubscriberStatus::Suppressed,
    };
    v1::Subscriber {
        name: format!("subscribers/{}", subscriber.id),
        email: subscriber.email.clone(),
        display_name: subscriber.display_name.clone(),
        attributes: Some(json_to_struct(&subscriber.attributes)),
        status: status as i32,
        lists: subscriber.lists.iter().map(|id| format!("lists/{id}")).collect(),
        create_time: millis_to_timestamp(subscriber.create_time),
        update_time: millis_to_timestamp(subscriber.update_time),
    }
}
