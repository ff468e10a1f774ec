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
    // A 5xx at send time goes through the bounce policy too. smtp-sink answers
    // `500 5.3.0 Error: command failed`: a mail-system failure (system_error),
    // not a bad address, so it is scored as a soft bounce and nobody is suppressed yet.
    let bounced = sandbox
        .wait_for_campaign(&campaign, Duration::from_secs(20), |c| c.stats.as_ref().is_some_and(|s| s.bounced == 5))
        .await
        .unwrap();
    assert_eq!(bounced.stats.unwrap().bounced, 5);
    let node = sandbox.node.as_ref().unwrap();
    let channel = broadside_tests::authed(node, &sandbox.api_key).await.unwrap();
    let mut feedback = broadside_proto::v1::feedback_service_client::FeedbackServiceClient::new(channel);
    let records =
        feedback.list_feedback_records(ListFeedbackRecordsRequest::default()).await.unwrap().into_inner().records;
    assert_eq!(records.len(), 5, "{records:#?}");
    assert!(
        records.iter().all(|r| (r.class.as_str(), r.status_code.as_str(), r.rule.as_str(), r.verdict.as_str())
            == ("system_error", "5.3.0", "smtp", "scored")),
        "{records:#?}"
    );
    let check = CheckSuppressionRequest { email: "user3@example.com".into(), list: String::new() };
    assert!(!sandbox.subscribers.check_suppression(check).await.unwrap().into_inner().suppressed);
    sandbox.stop().await.unwrap();
}

/// Keys from `broadside dkim keygen`, messages signed by a sender and
/// captured at a real SMTP receiver, verified by dkimpy: both signatures
/// (RSA-SHA256 and Ed25519-SHA256) of every message, over the headers bulk
/// senders must sign. A message altered after signing must fail, so the
/// verifier is known to be checking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_at_a_real_receiver_carry_dkim_signatures_that_dkimpy_verifies() {
    use broadside_tests::dkimverify;

    let dir = tempfile::tempdir().unwrap();
    let dkim_dir = dir.path().join("dkim");
    let keygen = std::process::Command::new(broadside_binary())
        .args(["dkim", "keygen", "--domain", "sender.example", "--selector", "s2026", "--dir"])
        .arg(&dkim_dir)
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{}", String::from_utf8_lossy(&keygen.stderr));
    let records = dkimverify::parse_txt_records(&String::from_utf8_lossy(&keygen.stdout));
    assert!(records["s2026._domainkey.sender.example"].starts_with("v=DKIM1; k=rsa; p="), "{records:?}");
    assert!(records["s2026-ed25519._domainkey.sender.example"].starts_with("v=DKIM1; k=ed25519; p="));

    let sink = SmtpSink::start(&dir.path().join("sink"), &[]).unwrap();
    let mut config = test_config(dir.path());
    config.smtp.url = Some(sink.url());
    config.smtp.starttls = "none".into();
    config.mail.dkim_dir = Some(dkim_dir);
    let mut sandbox = Sandbox::start(config).await.unwrap();
    let list = sandbox.create_list("dkim").await.unwrap();
    let people = [
        ("zoe@example.org", "Zoë Ünicode-Ñame", serde_json::json!({"city": "Zürich"})),
        ("pat@example.net", "O'Brien, Pat \"PJ\"", serde_json::json!({"city": "a line\nwith a break"})),
        ("long@example.com", &"Very Long Name ".repeat(12), serde_json::json!({"city": "x".repeat(2000)})),
    ];
    for (email, name, attributes) in &people {
        sandbox.add_subscriber(&list, email, name, attributes.clone()).await.unwrap();
    }
    let template = Template {
        subject: "Grüße, {{ subscriber.display_name }}: {{ subscriber.attributes.city[:40] }}".into(),
        ..simple_template()
    };
    let campaign = sandbox.create_campaign(&list, template).await.unwrap();
    sandbox.campaigns.start_campaign(StartCampaignRequest { name: campaign.clone() }).await.unwrap();
    let done = sandbox.wait_for_completion(&campaign, Duration::from_secs(60)).await.unwrap();
    assert_eq!(done.stats.unwrap().delivered, 3);
    let mut dumps = Vec::new();
    for _ in 0..50 {
        dumps = read_messages(&sink.dump_dir).unwrap();
        if dumps.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dumps.len(), 3);
    for message in &dumps {
        let crlf = message.replace("\r\n", "\n").replace('\n', "\r\n");
        let signatures: Vec<&str> = crlf.split("\r\n").filter(|l| l.starts_with("DKIM-Signature:")).collect();
        assert_eq!(signatures.len(), 2, "one RSA and one Ed25519 signature:\n{crlf}");
        let unfolded = crlf.replace("\r\n\t", " ").replace("\r\n ", " ");
        for required in
            ["from", "to", "subject", "date", "message-id", "list-unsubscribe", "list-unsubscribe-post", "feedback-id"]
        {
            let h = unfolded
                .split("\r\n")
                .filter(|l| l.starts_with("DKIM-Signature:"))
                .map(|l| l.split("h=").nth(1).unwrap_or_default().split(';').next().unwrap_or_default().to_lowercase())
                .collect::<Vec<_>>();
            assert!(
                h.iter().all(|h| h.split(':').map(str::trim).any(|name| name == required)),
                "{required} not signed: {h:?}"
            );
        }
        for index in 0..2 {
            if let Err(words) = dkimverify::verify(crlf.as_bytes(), &records, index).unwrap() {
                panic!("signature {index} did not verify: {words}\n{crlf}");
            }
        }
        let tampered = crlf.replacen("Subject:", "Subject: [edited]", 1);
        assert!(dkimverify::verify(tampered.as_bytes(), &records, 0).unwrap().is_err(), "tampering must be caught");
        // The envelope sender is a VERP address that names this recipient.
        let mail_from = unfolded.split("\r\n").find(|l| l.contains("MAIL FROM") || l.starts_with("X-Mail-Args:"));
        assert!(mail_from.is_some_and(|l| l.contains("bnc+")), "no VERP return path in:\n{crlf}");
    }
    sandbox.stop().await.unwrap();
}

/// Three relays, one of them down: every message goes through the two that
/// answer (failover on connection refused), by weight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_share_by_weight_and_fail_over_when_one_is_down() {
    use broadside_config::RelayEntry;

    let dir = tempfile::tempdir().unwrap();
    let heavy = SmtpSink::start(&dir.path().join("heavy"), &[]).unwrap();
    let light = SmtpSink::start(&dir.path().join("light"), &[]).unwrap();
    let closed = broadside_tests::smtp_sink::free_port().unwrap(); // nothing listens there
    let list = bulk_load(dir.path(), 60).await.unwrap();
    let mut config = test_config(dir.path());
    config.smtp.relays = vec![
        RelayEntry { url: format!("smtp://127.0.0.1:{closed}"), weight: 1 },
        RelayEntry { url: heavy.url(), weight: 3 },
        RelayEntry { url: light.url(), weight: 1 },
    ];
    config.smtp.starttls = "none".into();
    let mut sandbox = Sandbox::start(config).await.unwrap();
    let campaign = sandbox.create_campaign(&list, simple_template()).await.unwrap();
    sandbox.campaigns.start_campaign(StartCampaignRequest { name: campaign.clone() }).await.unwrap();
    let done = sandbox.wait_for_completion(&campaign, Duration::from_secs(60)).await.unwrap();
    let stats = done.stats.unwrap();
    assert_eq!((stats.delivered, stats.failed), (60, 0), "the dead relay costs nothing: {stats:?}");
    let mut counts = (0, 0);
    for _ in 0..50 {
        counts = (read_messages(&heavy.dump_dir).unwrap().len(), read_messages(&light.dump_dir).unwrap().len());
        if counts.0 + counts.1 >= 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counts.0 + counts.1, 60);
    assert!(counts.0 > counts.1 * 2, "weight 3 takes most of the mail: {counts:?}");
    assert!(counts.1 >= 6, "weight 1 still takes its share: {counts:?}");
    sandbox.stop().await.unwrap();
}
