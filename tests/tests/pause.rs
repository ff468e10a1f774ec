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
