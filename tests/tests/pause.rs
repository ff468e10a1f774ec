//! Pausing stops sending within a second and resuming finishes the campaign
//! with everyone reached once; cancelling stops it for good.

use std::time::{Duration, Instant};

use broadside_proto::v1::*;
use broadside_tests::{Sandbox, read_messages, simple_template, test_config};
use tonic::Code;

async fn slow_campaign(sandbox: &mut Sandbox, list: &str) -> String {
    let name = sandbox.create_paced_campaign(list, simple_template(), 4.0).await.unwrap();
    sandbox.campaigns.start_campaign(StartCampaignRequest { name: name.clone() }).await.unwrap();
    name
}

fn sent(sandbox: &Sandbox, campaign: &str) -> usize {
    let id = campaign.trim_start_matches("campaigns/");
    read_messages(&sandbox.outbox()).unwrap().iter().filter(|m| m.contains(&format!("<{id}."))).count()
}

async fn wait_for_first(sandbox: &Sandbox, campaign: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while sent(sandbox, campaign) == 0 {
        assert!(Instant::now() < deadline, "nothing was sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_sending_resume_finishes_and_cancel_stops() {
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let list = sandbox.create_list("Slow").await.unwrap();
    for i in 0..20 {
        sandbox.add_subscriber(&list, &format!("p{i:02}@example.com"), "P", serde_json::json!({})).await.unwrap();
    }

    let campaign = slow_campaign(&mut sandbox, &list).await;
    wait_for_first(&sandbox, &campaign).await;
    let paused = sandbox.campaigns.pause_campaign(PauseCampaignRequest { name: campaign.clone() }).await.unwrap();
    assert_eq!(paused.into_inner().state, CampaignState::Paused as i32);
    tokio::time::sleep(Duration::from_millis(1500)).await; // senders notice within a second
    let during = sent(&sandbox, &campaign);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sent(&sandbox, &campaign), during, "nothing is sent while paused");
    assert!(during < 20, "the pause came before the end ({during} sent)");
    let again = sandbox.campaigns.pause_campaign(PauseCampaignRequest { name: campaign.clone() }).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    sandbox.campaigns.resume_campaign(ResumeCampaignRequest { name: campaign.clone() }).await.unwrap();
    let done = sandbox.wait_for_completion(&campaign, Duration::from_secs(60)).await.unwrap();
    assert_eq!(done.stats.unwrap().delivered, 20);
    assert_eq!(sent(&sandbox, &campaign), 20, "everyone once, no duplicates");

    let cancelled = slow_campaign(&mut sandbox, &list).await;
    wait_for_first(&sandbox, &cancelled).await;
    let state = sandbox.campaigns.cancel_campaign(CancelCampaignRequest { name: cancelled.clone() }).await.unwrap();
    assert_eq!(state.into_inner().state, CampaignState::Cancelled as i32);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let at_cancel = sent(&sandbox, &cancelled);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sent(&sandbox, &cancelled), at_cancel, "nothing is sent after a cancel");
    assert!(at_cancel < 20);
    assert_eq!(sandbox.get_campaign(&cancelled).await.unwrap().state, CampaignState::Cancelled as i32);
    let resume = sandbox.campaigns.resume_campaign(ResumeCampaignRequest { name: cancelled }).await.unwrap_err();
    assert_eq!(resume.code(), Code::FailedPrecondition);
}

/// A campaign created with these schedule fields; returns its name.
async fn scheduled(
    sandbox: &mut Sandbox,
    list: &str,
    send_at_secs: i64,
    window: &str,
) -> Result<String, tonic::Status> {
    let template = sandbox
        .templates
        .create_template(CreateTemplateRequest { template: Some(simple_template()), request_id: String::new() })
        .await?
        .into_inner();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let campaign = Campaign {
        display_name: "scheduled".into(),
        template: template.name,
        list: list.into(),
        from_address: "news@sender.example".into(),
        postal_address: broadside_tests::POSTAL_ADDRESS.into(),
        send_at: (send_at_secs > 0).then(|| prost_types::Timestamp { seconds: now + send_at_secs, nanos: 0 }),
        send_window: window.into(),
        ..Default::default()
    };
    let created = sandbox
        .campaigns
        .create_campaign(CreateCampaignRequest { campaign: Some(campaign), request_id: String::new() })
        .await?
        .into_inner();
    sandbox.campaigns.start_campaign(StartCampaignRequest { name: created.name.clone() }).await?;
    Ok(created.name)
}

/// A scheduled campaign sends nothing before its time and everything after;
/// one whose send window is closed sends nothing; a malformed window is
/// refused, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_campaigns_and_send_windows_hold_mail_until_their_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let list = sandbox.create_list("scheduled").await.unwrap();
    for i in 0..5 {
        sandbox.add_subscriber(&list, &format!("s{i}@example.org"), "S", serde_json::json!({})).await.unwrap();
    }
    let later = scheduled(&mut sandbox, &list, 3, "").await.unwrap();
    // A window that closed an hour ago and opens in two hours (UTC).
    let hour = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 3600) % 24;
    let closed = format!("{:02}:00-{:02}:00 UTC", (hour + 2) % 24, (hour + 23) % 24);
    let windowed = scheduled(&mut sandbox, &list, 0, &closed).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sent(&sandbox, &later), 0, "nothing before send_at");
    let done = sandbox.wait_for_completion(&later, Duration::from_secs(30)).await.unwrap();
    assert_eq!(done.stats.unwrap().delivered, 5);
    assert_eq!(sent(&sandbox, &later), 5);
    assert_eq!(sent(&sandbox, &windowed), 0, "the closed window holds its campaign's mail");
    let held = sandbox.get_campaign(&windowed).await.unwrap();
    assert_eq!(held.stats.unwrap().delivered, 0);
    assert_eq!(held.send_window, closed);

    let error = scheduled(&mut sandbox, &list, 0, "9-17 Paris").await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("campaign.send_window"), "{}", error.message());
    sandbox.stop().await.unwrap();
}
