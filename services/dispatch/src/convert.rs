//! Store records to API messages.

use broadside_proto::convert::millis_to_timestamp;
use broadside_proto::v1;
use broadside_store::{Campaign, CampaignState, Template};

pub fn campaign_to_proto(campaign: &Campaign) -> v1::Campaign {
    let state = match campaign.state {
        CampaignState::Draft => v1::CampaignState::Draft,
        CampaignState::Sending => v1::CampaignState::Sending,
        CampaignState::Paused => v1::CampaignState::Paused,
        CampaignState::Completed => v1::CampaignState::Completed,
        CampaignState::Cancelled => v1::CampaignState::Cancelled,
    };
    v1::Campaign {
        name: format!("campaigns/{}", campaign.id),
        display_name: campaign.display_name.clone(),
        template: format!("templates/{}", campaign.template_id),
        list: format!("lists/{}", campaign.list_id),
        from_address: campaign.from_address.clone(),
        from_name: campaign.from_name.clone(),
        reply_to: campaign.reply_to.clone(),
        state: state as i32,
        stats: Some(v1::CampaignStats {
            recipients: campaign.stats.recipients,
            delivered: campaign.stats.delivered,
            failed: campaign.stats.failed,
            deferred: campaign.stats.deferred,
            bounced: campaign.stats.bounced,
            complained: campaign.stats.complained,
            unsubscribed: campaign.stats.unsubscribed,
            opened: campaign.stats.opened,
            clicked: campaign.stats.clicked,
        }),
        create_time: millis_to_timestamp(campaign.create_time),
        start_time: millis_to_timestamp(campaign.start_time),
        complete_time: millis_to_timestamp(campaign.complete_time),
        max_messages_per_second: campaign.max_messages_per_second,
        stream: if campaign.stream == "transactional" {
            v1::CampaignStream::Transactional
        } else {
            v1::CampaignStream::Marketing
        } as i32,
        postal_address: campaign.postal_address.clone(),
        send_at: (campaign.send_at > 0).then(|| millis_to_timestamp(campaign.send_at)).flatten(),
        send_window: campaign.send_window.clone(),
        segment: if campaign.segment_id.is_empty() {
            String::new()
        } else {
            format!("segments/{}", campaign.segment_id)
        },
    }
}

pub(crate) fn template_to_proto(template: &Template) -> v1::Template {
    v1::Template {
        name: format!("templates/{}", template.id),
        display_name: template.display_name.clone(),
        subject: template.subject.clone(),
        html_body: template.html_body.clone(),
        text_body: template.text_body.clone(),
        version: template.version,
        create_time: millis_to_timestamp(template.create_time),
    }
}
