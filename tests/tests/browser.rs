//! The unsubscribe landing page in a real browser (Debian's headless
//! Chromium through chromedriver): open it from a real message's link,
//! leave one list in the preference center, and check the stored state.

use std::time::Duration;

use broadside_proto::v1::*;
use broadside_tests::webdriver::Browser;
use broadside_tests::{Sandbox, read_messages, simple_template, test_config, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preference_center_unsubscribes_from_one_list_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let weekly = sandbox.create_list("Weekly news").await.unwrap();
    let offers = sandbox.create_list("Product offers").await.unwrap();
    let grace = sandbox.add_subscriber(&weekly, "grace@example.com", "Grace", serde_json::json!({})).await.unwrap();
    let join = Subscriber { email: "grace@example.com".into(), lists: vec![offers.clone()], ..Default::default() };
    sandbox
        .subscribers
        .create_subscriber(CreateSubscriberRequest { subscriber: Some(join), ..Default::default() })
        .await
        .unwrap();
    let campaign = sandbox.create_campaign(&weekly, simple_template()).await.unwrap();
    sandbox.campaigns.start_campaign(StartCampaignRequest { name: campaign.clone() }).await.unwrap();
    sandbox.wait_for_completion(&campaign, Duration::from_secs(30)).await.unwrap();
    let message =
        read_messages(&sandbox.outbox()).unwrap().into_iter().find(|m| m.contains("List-Unsubscribe")).unwrap();
    let unfolded = message.replace("\r\n ", " ");
    let header = unfolded.lines().find(|l| l.starts_with("List-Unsubscribe:")).unwrap();
    let token = broadside_feedback::classify::unsubscribe_tokens(header).pop().unwrap();
    let http = sandbox.node.as_ref().unwrap().http_addr.unwrap();
    let weekly_id = weekly.trim_start_matches("lists/").to_owned();
    let offers_id = offers.trim_start_matches("lists/").to_owned();

    let shots = std::env::var_os("BROADSIDE_TEST_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().to_owned());
    let (landing, saved, page_text) = tokio::task::spawn_blocking(move || {
        let browser = Browser::start().unwrap();
        browser.goto(&format!("http://{http}/u/{token}")).unwrap();
        browser.wait_for("#save", Duration::from_secs(20)).unwrap();
        assert_eq!(browser.title().unwrap(), "Manage your subscription");
        assert!(browser.is_selected(&format!("#list-{weekly_id}")).unwrap(), "subscribed lists start checked");
        assert!(browser.is_selected(&format!("#list-{offers_id}")).unwrap());
        let landing = browser.screenshot().unwrap();
        // Leave Weekly news, keep Product offers.
        browser.click(&format!("#list-{weekly_id}")).unwrap();
        browser.click("#save").unwrap();
        browser.wait_for("#done", Duration::from_secs(20)).unwrap();
        let text = browser.text("#done").unwrap();
        let list_text = browser.text("main").unwrap();
        (landing, browser.screenshot().unwrap(), format!("{text}\n{list_text}"))
    })
    .await
    .unwrap();
    assert!(page_text.contains("no longer receive") && page_text.contains("Weekly news"), "{page_text}");
    assert!(!page_text.contains("Product offers"), "{page_text}");
    for (name, png) in [("landing.png", &landing), ("saved.png", &saved)] {
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000, "{name} is a real screenshot");
        std::fs::create_dir_all(&shots).unwrap();
        std::fs::write(shots.join(name), png).unwrap();
    }
    assert_ne!(landing, saved, "the page changed after saving");

    let get = GetSubscriberRequest { name: grace.name.clone() };
    let subscribers = sandbox.subscribers.clone();
    let after = wait_for("the preference change to apply", Duration::from_secs(20), || {
        let (get, mut subscribers, weekly) = (get.clone(), subscribers.clone(), weekly.clone());
        async move {
            let now = subscribers.get_subscriber(get).await?.into_inner();
            let left = now
                .subscriptions
                .iter()
                .any(|s| s.list == weekly && s.status == SubscriptionStatus::Unsubscribed as i32);
            Ok(left.then_some(now))
        }
    })
    .await
    .unwrap();
    let offers_status = after.subscriptions.iter().find(|s| s.list == offers).unwrap().status;
    assert_eq!(offers_status, SubscriptionStatus::Confirmed as i32, "the other list is kept");
    assert_eq!(after.status, SubscriberStatus::Active as i32);
    let mut subscribers = sandbox.subscribers.clone();
    let records = subscribers
        .list_consent_records(ListConsentRecordsRequest { parent: grace.name.clone() })
        .await
        .unwrap()
        .into_inner()
        .records;
    let unsubscribe = records.iter().find(|r| r.action == "unsubscribe").unwrap();
    let context = unsubscribe.context.as_ref().unwrap();
    assert_eq!(context.source, "preference_center");
    assert!(context.user_agent.contains("Chrome"), "{context:?}");
    sandbox.stop().await.unwrap();
}
