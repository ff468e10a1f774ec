//! Delivery through a real SMTP relay: Postfix's smtp-sink.

use std::time::Duration;

use broadside_proto::v1::*;
use broadside_tests::smtp_sink::SmtpSink;
use broadside_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_is_delivered_over_smtp_with_pooled_connections() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&dir.path().join("sink"), &[]).unwrap();
    let list = bulk_load(dir.path(), 200).await.unwrap();
    let mut config = test_config(dir.path());
    config.smtp.url = Some(sink.url());
    config.smtp.starttls = "none".into();
    config.smtp.pool_size = 4;
    let mut sandbox = Sandbox::start(config).await.unwrap();
    let campaign = sandbox.create_campaign(&list, simple_template()).await.unwrap();
    sandbox.campaigns.start_campaign(StartCampaignRequest { name: campaign.clone() }).await.unwrap();
    let done = sandbox.wait_for_completion(&campaign, Duration::from_secs(60)).await.unwrap();
    assert_eq!(done.stats.unwrap().delivered, 200);
    // smtp-sink writes its dump after replying; give the last files a moment.
    for _ in 0..50 {
        if read_messages(&sink.dump_dir).unwrap().len() >= 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dumps = read_messages(&sink.dump_dir).unwrap();
    assert_eq!(dumps.len(), 200, "one SMTP transaction per recipient");
    let ids: std::collections::HashSet<_> =
        dumps.iter().filter_map(|m| broadside::demo::header_value(&m.replace('\n', "\r\n"), "message-id")).collect();
    assert_eq!(ids.len(), 200, "each with its own Message-ID");
    assert!(dumps.iter().all(|m| m.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click")));
    sandbox.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_rejection_fails_the_recipient_and_completes_the_campaign() {
    let dir = tempfile::tempdir().unwrap();
    // -f RCPT: every recipient is refused with a 5xx.
    let sink = SmtpSink::start(&dir.path().join("sink"), &["-f", "RCPT"]).unwrap();
    let list = bulk_load(dir.path(), 5).await.unwrap();
    let mut config = test_config(dir.path());
    config.smtp.url = Some(sink.url());
    config.smtp.starttls = "none".into();
    let mut sandbox = Sandbox::start(config).await.unwrap();
    let campaign = sandbox.create_campaign(&list, simple_template()).await.unwrap();
    sandbox.campaigns.start_campaign(StartCampaignRequest { name: campaign.clone() }).await.unwrap();
    let done = sandbox.wait_for_completion(&campaign, Duration::from_secs(60)).await.unwrap();
    let stats = done.stats.unwrap();
    assert_eq!((stats.delivered, stats.failed), (0, 5));
    sandbox.stop().await.unwrap();
}
