//! Stopping the whole process mid-campaign and starting it again on the same
//! data dir: every recipient ends up with exactly one message.

use std::time::Duration;

use broadside_proto::v1::*;
use broadside_tests::*;

const RECIPIENTS: usize = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_mid_campaign_then_restart_sends_each_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let list = bulk_load(dir.path(), RECIPIENTS).await.unwrap();
    let mut config = test_config(dir.path());
    config.sender.concurrency = 8;
    let mut sandbox = Sandbox::start(config).await.unwrap();
    let campaign = sandbox.create_campaign(&list, simple_template()).await.unwrap();
    sandbox.campaigns.start_campaign(StartCampaignRequest { name: campaign.clone() }).await.unwrap();
    let partial = sandbox
        .wait_for_campaign(&campaign, Duration::from_secs(60), |c| c.stats.as_ref().is_some_and(|s| s.delivered >= 200))
        .await
        .unwrap();
    sandbox.stop().await.unwrap();
    let at_stop = read_messages(&sandbox.outbox()).unwrap().len();
    assert!(at_stop < RECIPIENTS, "the stop must come mid-campaign (captured {at_stop})");
    eprintln!("stopped with {at_stop} of {RECIPIENTS} captured (campaign said {:?})", partial.stats);

    let mut sandbox = sandbox.restart().await.unwrap();
    let done = sandbox.wait_for_completion(&campaign, Duration::from_secs(120)).await.unwrap();
    let stats = done.stats.unwrap();
    assert_eq!((stats.recipients, stats.delivered, stats.failed), (RECIPIENTS as i64, RECIPIENTS as i64, 0));
    let capture = broadside::demo::count_capture(&sandbox.outbox()).unwrap();
    assert_eq!(capture.unique(), RECIPIENTS, "nobody lost");
    assert_eq!(capture.duplicates(), 0, "nobody got two");
    sandbox.stop().await.unwrap();
}
