//! The series an SRE dashboards and alerts on, read from a node's
//! `/metrics` after a real campaign (capture mailbox, embedded bus).

use std::time::Duration;

use broadside_proto::v1::*;
use broadside_tests::{Sandbox, http_request, simple_template, test_config, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_name_outcomes_replies_claims_and_lag_after_a_campaign() {
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let list = sandbox.create_list("Metrics").await.unwrap();
    for n in 0..3 {
        sandbox
            .add_subscriber(&list, &format!("m{n}@gmail.com"), &format!("M{n}"), serde_json::json!({}))
            .await
            .unwrap();
    }
    let campaign = sandbox.create_campaign(&list, simple_template()).await.unwrap();
    sandbox.campaigns.start_campaign(StartCampaignRequest { name: campaign.clone() }).await.unwrap();
    let done = sandbox.wait_for_completion(&campaign, Duration::from_secs(60)).await.unwrap();
    assert_eq!(done.stats.unwrap().delivered, 3);
    let campaign_id = campaign.trim_start_matches("campaigns/").to_owned();
    let admin = sandbox.node.as_ref().unwrap().admin_addr;

    // The lag gauges are refreshed every 10 s by each consumer loop (senders, dispatch, feedback).
    let text =
        wait_for("the lag gauges (sender, dispatch, subscribers-feedback)", Duration::from_secs(30), || async move {
            let (status, text) = http_request(admin, "GET", "/metrics", "");
            assert_eq!(status, 200);
            let both = text.contains("broadside_consumer_lag{group=\"sender\"")
                && text.contains("broadside_consumer_lag{group=\"dispatch\",topic=\"broadside.delivery-events\"")
                && text.contains(
                    "broadside_consumer_lag{group=\"subscribers-feedback\",topic=\"broadside.feedback-events\"",
                );
            Ok(both.then_some(text))
        })
        .await
        .unwrap();
    let value = |prefix: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no series {prefix}\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let delivered = format!(
        "broadside_sends_total{{outcome=\"delivered\",tenant=\"default\",campaign=\"{campaign_id}\",destination=\"google\"}}"
    );
    assert_eq!(value(&delivered), 3.0, "by outcome, tenant, campaign and destination group");
    assert_eq!(value("broadside_smtp_replies_total{class=\"2xx\"}"), 3.0);
    assert_eq!(value("broadside_ledger_claims_total{result=\"acquired\"}"), 3.0);
    assert_eq!(value("broadside_send_seconds_count"), 3.0);
    assert!(text.contains("broadside_send_seconds_bucket{le="), "the latency histogram");
    // Everything published was consumed: no lag left on send-jobs.
    let lag: f64 = text
        .lines()
        .filter(|l| l.starts_with("broadside_consumer_lag{group=\"sender\",topic=\"broadside.send-jobs\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(lag, 0.0);
    assert!(value("broadside_bus_published_total{topic=\"broadside.send-jobs\"}") >= 3.0);
    sandbox.stop().await.unwrap();
}
