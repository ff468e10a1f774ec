//! The audit log records every administrative action with who, when, what
//! and from where, readable over gRPC and exportable from the CLI.

use std::process::Command;
use std::time::Duration;

use broadside_proto::v1::api_key_service_client::ApiKeyServiceClient;
use broadside_proto::v1::audit_service_client::AuditServiceClient;
use broadside_proto::v1::*;
use broadside_tests::{Sandbox, authed, broadside_binary, simple_template, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_administrative_action_is_in_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let channel = authed(sandbox.node.as_ref().unwrap(), &sandbox.api_key).await.unwrap();
    let mut keys = ApiKeyServiceClient::new(channel.clone());
    let admin_id = sandbox.api_key.split('_').nth(1).unwrap().to_owned();

    let key = ApiKey { scopes: vec!["read".into()], description: "dashboards".into(), ..Default::default() };
    let created = keys.create_api_key(CreateApiKeyRequest { key: Some(key) }).await.unwrap().into_inner();
    let key_name = created.key.unwrap().name;
    keys.revoke_api_key(RevokeApiKeyRequest { name: key_name.clone() }).await.unwrap();

    let list = sandbox.create_list("Audited").await.unwrap();
    let csv = b"email,name\nann@example.com,Ann\nbob@example.com,Bob\n".to_vec();
    let import = vec![ImportSubscribersRequest { parent: list.clone(), chunk: csv, ..Default::default() }];
    sandbox.subscribers.import_subscribers(tokio_stream::iter(import)).await.unwrap();
    let suppression = Suppression { target: "spam@example.com".into(), ..Default::default() };
    sandbox.subscribers.add_suppression(AddSuppressionRequest { suppression: Some(suppression) }).await.unwrap();
    let remove =
        RemoveSuppressionRequest { target: "spam@example.com".into(), list: String::new(), note: String::new() };
    sandbox.subscribers.remove_suppression(remove).await.unwrap();
    let export = ExportSubscriberRequest { email: "ann@example.com".into(), ..Default::default() };
    sandbox.subscribers.export_subscriber(export).await.unwrap();
    let erase = EraseSubscriberRequest { email: "ann@example.com".into(), ..Default::default() };
    sandbox.subscribers.erase_subscriber(erase).await.unwrap();
    let campaign = sandbox.create_campaign(&list, simple_template()).await.unwrap();
    sandbox.campaigns.start_campaign(StartCampaignRequest { name: campaign.clone() }).await.unwrap();
    sandbox.wait_for_completion(&campaign, Duration::from_secs(30)).await.unwrap();
    let other = sandbox.create_list("Doomed").await.unwrap();
    sandbox.subscribers.delete_list(DeleteListRequest { name: other.clone() }).await.unwrap();
    // A slow campaign to pause, resume and cancel while it sends.
    let slow_list = sandbox.create_list("Slow").await.unwrap();
    for i in 0..5 {
        sandbox.add_subscriber(&slow_list, &format!("s{i}@example.com"), "S", serde_json::json!({})).await.unwrap();
    }
    // Five recipients at one per second take seconds: time to pause and cancel.
    let slow = sandbox.create_paced_campaign(&slow_list, simple_template(), 1.0).await.unwrap();
    sandbox.campaigns.start_campaign(StartCampaignRequest { name: slow.clone() }).await.unwrap();
    sandbox.campaigns.pause_campaign(PauseCampaignRequest { name: slow.clone() }).await.unwrap();
    sandbox.campaigns.resume_campaign(ResumeCampaignRequest { name: slow.clone() }).await.unwrap();
    sandbox.campaigns.cancel_campaign(CancelCampaignRequest { name: slow.clone() }).await.unwrap();

    let events = AuditServiceClient::new(channel)
        .list_audit_events(ListAuditEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events;
    let actions: Vec<(&str, &str)> = events.iter().map(|e| (e.action.as_str(), e.resource.as_str())).collect();
    let expected = [
        ("api_key.create", key_name.as_str()),
        ("api_key.revoke", key_name.as_str()),
        ("subscribers.import", list.as_str()),
        ("suppression.add", ""),
        ("suppression.remove", ""),
        ("subscriber.export", ""),
        ("subscriber.erase", ""),
        ("campaign.start", campaign.as_str()),
        ("list.delete", other.as_str()),
        ("campaign.start", slow.as_str()),
        ("campaign.pause", slow.as_str()),
        ("campaign.resume", slow.as_str()),
        ("campaign.cancel", slow.as_str()),
    ];
    assert_eq!(actions.len(), expected.len(), "{actions:#?}");
    for ((action, resource), (want_action, want_resource)) in actions.iter().zip(expected) {
        assert_eq!(*action, want_action);
        assert!(want_resource.is_empty() || *resource == want_resource, "{action}: {resource}");
    }
    for event in &events {
        assert_eq!(event.actor, format!("apiKeys/{admin_id}"), "who");
        assert_eq!(event.source, "127.0.0.1", "from where");
        assert!(event.time.is_some(), "when");
        assert!(!event.detail.contains("example.com"), "no personal data in details: {}", event.detail);
    }
    let import = &events[2];
    assert!(import.detail.contains("\"imported\":2"), "{}", import.detail);

    // Operator commands are audited too, and the log exports as JSON lines.
    let run = |args: &[&str]| {
        let output =
            Command::new(broadside_binary()).args(args).env("BROADSIDE__DATA_DIR", dir.path()).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    run(&["tenants", "create", "acme"]);
    let exported = run(&["audit", "export", "--tenant", "acme"]);
    let lines: Vec<serde_json::Value> = exported.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["action"], "tenant.create");
    assert_eq!(lines[0]["actor"], "cli");
    assert_eq!(lines[1]["action"], "api_key.create");
    let default_log = run(&["audit", "export"]);
    assert_eq!(default_log.lines().count(), expected.len());
}
