//! The feedback loop against real parts: Postfix generates the DSNs and
//! relays them over LMTP, campaigns go out through it, and the public HTTP
//! endpoints are driven with real requests.

use std::time::Duration;

use broadside_proto::v1::feedback_service_client::FeedbackServiceClient;
use broadside_proto::v1::*;
use broadside_tests::postfix::PostfixBounce;
use broadside_tests::smtp_sink::SmtpSink;
use broadside_tests::{Sandbox, http_request, read_messages, simple_template, test_config, wait_for};

const BOUNCE_DOMAIN: &str = "bounces.broadside.test";

async fn feedback_client(sandbox: &Sandbox) -> FeedbackServiceClient<broadside::client::Authed> {
    FeedbackServiceClient::new(broadside_tests::authed(sandbox.node.as_ref().unwrap(), &sandbox.api_key).await.unwrap())
}

async fn status_of(sandbox: &mut Sandbox, name: &str) -> i32 {
    sandbox.subscribers.get_subscriber(GetSubscriberRequest { name: name.into() }).await.unwrap().into_inner().status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_dsns_suppress_bounced_subscribers_and_the_next_campaign_skips_them() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start(&dir.path().join("sink"), &[]).unwrap();
    let mut config = test_config(&dir.path().join("data"));
    config.mail.bounce_domain = Some(BOUNCE_DOMAIN.into());
    // Postfix must be up before the sender's first message; the node's inbound port is known only after start.
    let inbound = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let inbound_port = inbound.local_addr().unwrap().port();
    drop(inbound);
    config.feedback.inbound_addr = format!("127.0.0.1:{inbound_port}").parse().unwrap();
    let postfix = PostfixBounce::start(&dir.path().join("postfix"), BOUNCE_DOMAIN, inbound_port, sink.port).unwrap();
    config.smtp.url = Some(format!("smtp://127.0.0.1:{}", postfix.port));
    config.smtp.starttls = "none".into();
    let mut sandbox = Sandbox::start(config).await.unwrap();

    let list = sandbox.create_list("Weekly").await.unwrap();
    let good = sandbox.add_subscriber(&list, "reader@example.com", "Reader", serde_json::json!({})).await.unwrap();
    let unknown =
        sandbox.add_subscriber(&list, "nosuchuser@local.test", "Nobody", serde_json::json!({})).await.unwrap();
    let refused = sandbox.add_subscriber(&list, "gone@refuse.test", "Gone", serde_json::json!({})).await.unwrap();

    let first = sandbox.create_campaign(&list, simple_template()).await.unwrap();
    sandbox.campaigns.start_campaign(StartCampaignRequest { name: first.clone() }).await.unwrap();
    let done = sandbox.wait_for_completion(&first, Duration::from_secs(60)).await.unwrap();
    assert_eq!(done.stats.as_ref().unwrap().delivered, 3, "Postfix accepts all three, then bounces two");

    for bounced in [&unknown.name, &refused.name] {
        let name = bounced.clone();
        let sandbox_ref = &mut sandbox;
        let waited = wait_for("the DSN to mark the subscriber bounced", Duration::from_secs(90), || {
            let name = name.clone();
            let mut subscribers = sandbox_ref.subscribers.clone();
            async move {
                let status = subscribers.get_subscriber(GetSubscriberRequest { name }).await?.into_inner().status;
                Ok((status == SubscriberStatus::Bounced as i32).then_some(()))
            }
        })
        .await;
        assert!(waited.is_ok(), "{waited:?}\npostfix log:\n{}", postfix.log());
    }
    assert_eq!(status_of(&mut sandbox, &good.name).await, SubscriberStatus::Active as i32);
    for email in ["nosuchuser@local.test", "gone@refuse.test"] {
        let check = CheckSuppressionRequest { email: email.into(), list: String::new() };
        let found = sandbox.subscribers.check_suppression(check).await.unwrap().into_inner();
        assert!(found.suppressed, "{email}");
        assert_eq!(found.suppressions[0].reason, SuppressionReason::HardBounce as i32);
    }

    let mut feedback = feedback_client(&sandbox).await;
    let request = ListFeedbackRecordsRequest { filter: "kind = \"bounce\"".into(), ..Default::default() };
    let records = feedback.list_feedback_records(request).await.unwrap().into_inner().records;
    assert_eq!(records.len(), 2, "{records:#?}");
    for record in &records {
        assert_eq!(
            (record.class.as_str(), record.status_code.as_str(), record.rule.as_str()),
            ("user_unknown", "5.1.1", "dsn")
        );
        assert_eq!(record.verdict, "suppressed");
        assert_eq!(record.campaign, first);
        assert!(record.reporting_mta.starts_with("relay.broadside.test"), "{record:?}");
    }
    let stats = sandbox
        .wait_for_campaign(&first, Duration::from_secs(20), |c| c.stats.as_ref().is_some_and(|s| s.bounced == 2))
        .await
        .unwrap();
    assert_eq!(stats.stats.unwrap().bounced, 2);

    let second = sandbox.create_campaign(&list, simple_template()).await.unwrap();
    sandbox.campaigns.start_campaign(StartCampaignRequest { name: second.clone() }).await.unwrap();
    let done = sandbox.wait_for_completion(&second, Duration::from_secs(60)).await.unwrap();
    let stats = done.stats.unwrap();
    assert_eq!((stats.recipients, stats.delivered), (1, 1), "only the good address is sent to again");
    let delivered = read_messages(&sink.dump_dir).unwrap();
    assert_eq!(delivered.iter().filter(|m| m.contains("reader@example.com")).count(), 2);
    assert!(!delivered.iter().any(|m| m.contains("To: Gone") || m.contains("nosuchuser@local.test")));
    sandbox.stop().await.unwrap();
}

/// The unsubscribe token of the List-Unsubscribe header of a captured message.
fn unsubscribe_token(message: &str) -> String {
    let unfolded = message.replace("\r\n ", " ").replace("\r\n\t", " ");
    let header = unfolded.lines().find(|l| l.starts_with("List-Unsubscribe:")).expect("a List-Unsubscribe header");
    broadside_feedback::classify::unsubscribe_tokens(header).pop().expect("a /u/ link")
}

/// Sends one campaign to `list` and returns the captured messages.
async fn send_to(sandbox: &mut Sandbox, list: &str) -> Vec<String> {
    let before = read_messages(&sandbox.outbox()).unwrap();
    let campaign = sandbox.create_campaign(list, simple_template()).await.unwrap();
    sandbox.campaigns.start_campaign(StartCampaignRequest { name: campaign.clone() }).await.unwrap();
    sandbox.wait_for_completion(&campaign, Duration::from_secs(30)).await.unwrap();
    read_messages(&sandbox.outbox()).unwrap().into_iter().filter(|m| !before.contains(m)).collect()
}

fn subscription(subscriber: &Subscriber, list: &str) -> i32 {
    subscriber.subscriptions.iter().find(|s| s.list == list).map(|s| s.status).unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_click_unsubscribes_once_and_get_never_changes_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let weekly = sandbox.create_list("Weekly").await.unwrap();
    let offers = sandbox.create_list("Offers").await.unwrap();
    let ada = sandbox.add_subscriber(&weekly, "ada@example.com", "Ada", serde_json::json!({})).await.unwrap();
    let update = Subscriber { email: "ada@example.com".into(), lists: vec![offers.clone()], ..Default::default() };
    sandbox
        .subscribers
        .create_subscriber(CreateSubscriberRequest { subscriber: Some(update), ..Default::default() })
        .await
        .unwrap();
    let messages = send_to(&mut sandbox, &weekly).await;
    let token = unsubscribe_token(&messages[0]);
    let http = sandbox.node.as_ref().unwrap().http_addr.unwrap();
    let get = GetSubscriberRequest { name: ada.name.clone() };

    // GET (a scanner prefetching links, a preview) shows the page and changes nothing.
    let (status, page) = tokio::task::spawn_blocking({
        let token = token.clone();
        move || http_request(http, "GET", &format!("/u/{token}"), "")
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Unsubscribe from Weekly") && page.contains("a•••@example.com"), "{page}");
    assert!(page.contains("Cache-Control: no-store") || page.to_ascii_lowercase().contains("cache-control: no-store"));
    for path in [format!("/u/{token}"), format!("/o/{token}"), format!("/c/{token}")] {
        tokio::task::spawn_blocking(move || http_request(http, "GET", &path, "")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_get = sandbox.subscribers.get_subscriber(get.clone()).await.unwrap().into_inner();
    assert_eq!(subscription(&after_get, &weekly), SubscriptionStatus::Confirmed as i32, "GET changed nothing");
    assert_eq!(subscription(&after_get, &offers), SubscriptionStatus::Confirmed as i32);

    // Tampered tokens: 4xx, nothing changes.
    let mut tampered = token.clone().into_bytes();
    let at = tampered.len() - 5;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let forged_payload = {
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = "eyJ0IjoiZGVmYXVsdCIsInMiOiJ4IiwibCI6InkiLCJjIjoieiJ9";
        parts.join(".")
    };
    for bad in [tampered.clone(), forged_payload, "k1.e30.AAAA".into(), "nonsense".into()] {
        let (status, _) = tokio::task::spawn_blocking({
            let bad = bad.clone();
            move || http_request(http, "POST", &format!("/u/{bad}"), "List-Unsubscribe=One-Click")
        })
        .await
        .unwrap();
        assert_eq!(status, 400, "{bad}");
        let (status, _) =
            tokio::task::spawn_blocking(move || http_request(http, "GET", &format!("/c/{bad}"), "")).await.unwrap();
        assert_eq!(status, 400);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_tamper = sandbox.subscribers.get_subscriber(get.clone()).await.unwrap().into_inner();
    assert_eq!(
        subscription(&after_tamper, &weekly),
        SubscriptionStatus::Confirmed as i32,
        "a tampered token changed nothing"
    );

    // RFC 8058 one-click POST, twice: one unsubscribe, one consent record.
    for _ in 0..2 {
        let path = format!("/u/{token}");
        let (status, page) =
            tokio::task::spawn_blocking(move || http_request(http, "POST", &path, "List-Unsubscribe=One-Click"))
                .await
                .unwrap();
        assert_eq!(status, 200, "{page}");
        assert!(!page.to_ascii_lowercase().contains("set-cookie"), "no cookies");
    }
    let mut subscribers = sandbox.subscribers.clone();
    let unsubscribed = wait_for("the one-click unsubscribe to apply", Duration::from_secs(20), || {
        let (get, mut subscribers) = (get.clone(), subscribers.clone());
        let weekly = weekly.clone();
        async move {
            let now = subscribers.get_subscriber(get).await?.into_inner();
            Ok((subscription(&now, &weekly) == SubscriptionStatus::Unsubscribed as i32).then_some(now))
        }
    })
    .await
    .unwrap();
    assert_eq!(subscription(&unsubscribed, &offers), SubscriptionStatus::Confirmed as i32, "only the message's list");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let records = subscribers
        .list_consent_records(ListConsentRecordsRequest { parent: ada.name.clone() })
        .await
        .unwrap()
        .into_inner()
        .records;
    let unsubscribes: Vec<_> = records.iter().filter(|r| r.action == "unsubscribe").collect();
    assert_eq!(unsubscribes.len(), 1, "idempotent: {records:#?}");
    let context = unsubscribes[0].context.as_ref().unwrap();
    assert_eq!(
        (context.source.as_str(), context.ip.as_str(), context.user_agent.as_str()),
        ("one_click", "127.0.0.1", "TestBrowser/1.0")
    );

    // The next campaign to Weekly has nobody left to send to.
    let campaign = sandbox.create_campaign(&weekly, simple_template()).await.unwrap();
    let refused = sandbox.campaigns.start_campaign(StartCampaignRequest { name: campaign }).await.unwrap_err();
    assert!(refused.message().contains("no active subscribers"), "{refused:?}");
    sandbox.stop().await.unwrap();
}

/// Builds an ARF report (RFC 5965) about a captured message.
fn arf_about(message: &str, token_override: Option<&str>) -> Vec<u8> {
    let headers = message.split("\r\n\r\n").next().unwrap().to_owned();
    let headers = match token_override {
        Some(token) => {
            let real = unsubscribe_token(message);
            headers.replace(&real, token).replace("Return-Path: <bnc+", "Return-Path: <nobody+")
        }
        None => headers,
    };
    format!(
        "From: feedback@arf.mail.example\r\nTo: fbl@broadside.localhost\r\nSubject: Abuse report\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"arf\"\r\n\r\n\
         --arf\r\nContent-Type: text/plain\r\n\r\nA user marked this message as spam.\r\n\
         --arf\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: ExampleFBL/1.0\r\nVersion: 1\r\nReported-Domain: broadside.localhost\r\n\r\n\
         --arf\r\nContent-Type: text/rfc822-headers\r\n\r\n{headers}\r\n\r\n--arf--\r\n"
    )
    .into_bytes()
}

/// Speaks SMTP (or LMTP) to the inbound listener; returns every reply line.
async fn smtp(addr: std::net::SocketAddr, lines: &[&str]) -> Vec<String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut replies = Vec::new();
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    replies.push(line.trim_end().to_owned());
    for command in lines {
        write.write_all(command.as_bytes()).await.unwrap();
        write.write_all(b"\r\n").await.unwrap();
        if command.starts_with('.') && command.len() > 1 || command.contains("\r\n") && !command.ends_with("\r\n.") {
            continue; // message lines get no reply
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).await.unwrap() == 0 {
                return replies;
            }
            replies.push(line.trim_end().to_owned());
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complaints_by_mail_and_api_unsubscribe_everywhere_and_forgeries_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let weekly = sandbox.create_list("Weekly").await.unwrap();
    let offers = sandbox.create_list("Offers").await.unwrap();
    let bob = sandbox.add_subscriber(&weekly, "bob@example.com", "Bob", serde_json::json!({})).await.unwrap();
    let eve = sandbox.add_subscriber(&weekly, "eve@example.com", "Eve", serde_json::json!({})).await.unwrap();
    let join = Subscriber { email: "bob@example.com".into(), lists: vec![offers.clone()], ..Default::default() };
    sandbox
        .subscribers
        .create_subscriber(CreateSubscriberRequest { subscriber: Some(join), ..Default::default() })
        .await
        .unwrap();
    let messages = send_to(&mut sandbox, &weekly).await;
    let to_bob = messages.iter().find(|m| m.contains("bob@example.com")).unwrap();
    let to_eve = messages.iter().find(|m| m.contains("eve@example.com")).unwrap();
    let inbound = sandbox.node.as_ref().unwrap().inbound_addr.unwrap();

    // The listener refuses foreign recipients and oversized messages, speaks LMTP too.
    let replies = smtp(
        inbound,
        &[
            "EHLO mx.example",
            "MAIL FROM:<> SIZE=999999999",
            "MAIL FROM:<>",
            "RCPT TO:<someone@elsewhere.example>",
            "QUIT",
        ],
    )
    .await;
    assert!(replies[0].starts_with("220 "), "{replies:?}");
    assert!(replies.iter().any(|r| r.starts_with("552 5.3.4")), "{replies:?}");
    assert!(replies.iter().any(|r| r.starts_with("550 5.1.1")), "{replies:?}");

    // An ARF report about Bob's message arrives at the feedback-loop mailbox (SMTP).
    let report = String::from_utf8(arf_about(to_bob, None)).unwrap();
    let data = report.replace("\r\n.", "\r\n..");
    let replies = smtp(
        inbound,
        &[
            "EHLO mx.example",
            "MAIL FROM:<>",
            "RCPT TO:<fbl@broadside.localhost>",
            "DATA",
            &format!("{data}\r\n."),
            "QUIT",
        ],
    )
    .await;
    assert!(replies.iter().any(|r| r.starts_with("250 2.0.0 Handled as complaint (unsubscribed)")), "{replies:?}");

    // A forged report about Eve (her headers, but no valid token or VERP tag), by IngestReport.
    let mut feedback = feedback_client(&sandbox).await;
    let forged = arf_about(to_eve, Some("k1.eyJ0IjoiZGVmYXVsdCJ9.AAAA"));
    let record = feedback.ingest_report(IngestReportRequest { raw_message: forged }).await.unwrap().into_inner();
    assert_eq!((record.kind.as_str(), record.verdict.as_str()), ("complaint", "unattributed"));
    let empty = feedback.ingest_report(IngestReportRequest { raw_message: Vec::new() }).await.unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    assert!(empty.message().contains("raw_message"), "{empty:?}");

    let get = GetSubscriberRequest { name: bob.name.clone() };
    let mut subscribers = sandbox.subscribers.clone();
    let complained = wait_for("the complaint to apply", Duration::from_secs(20), || {
        let (get, mut subscribers) = (get.clone(), subscribers.clone());
        async move {
            let now = subscribers.get_subscriber(get).await?.into_inner();
            Ok((now.status == SubscriberStatus::Complained as i32).then_some(now))
        }
    })
    .await
    .unwrap();
    assert!(
        complained.subscriptions.iter().all(|s| s.status == SubscriptionStatus::Unsubscribed as i32),
        "{complained:?}"
    );
    let check = CheckSuppressionRequest { email: "bob@example.com".into(), list: String::new() };
    let suppressed = subscribers.check_suppression(check).await.unwrap().into_inner();
    assert_eq!(suppressed.suppressions[0].reason, SuppressionReason::Complaint as i32);
    assert_eq!(
        status_of(&mut sandbox, &eve.name).await,
        SubscriberStatus::Active as i32,
        "the forgery changed nothing"
    );

    // An auto-reply by LMTP is stored and ignored.
    let auto = "From: Eve <eve@example.com>\r\nTo: bnc@bounces.example\r\nSubject: Out of office\r\nAuto-Submitted: auto-replied\r\n\r\nBack Monday.";
    let replies = smtp(
        inbound,
        &[
            "LHLO mx.example",
            "MAIL FROM:<eve@example.com>",
            "RCPT TO:<fbl@broadside.localhost>",
            "RCPT TO:<bnc@broadside.localhost>",
            "DATA",
            &format!("{auto}\r\n."),
            "QUIT",
        ],
    )
    .await;
    let handled: Vec<_> =
        replies.iter().filter(|r| r.starts_with("250 2.0.0 Handled as auto_reply (unattributed)")).collect();
    assert_eq!(handled.len(), 2, "LMTP answers per recipient: {replies:?}");
    let all = feedback.list_feedback_records(ListFeedbackRecordsRequest::default()).await.unwrap().into_inner().records;
    assert!(
        all.iter().any(|r| r.kind == "complaint" && r.verdict == "unsubscribed" && r.subscriber == bob.name),
        "{all:#?}"
    );

    // Soft bounces (mailbox full) to Eve's VERP address: scored twice, suppressed at the third (threshold 3).
    let verp = to_eve.lines().next().unwrap().trim_start_matches("Return-Path: <").trim_end_matches('>').to_owned();
    let dsn = |n: usize| {
        format!(
            "From: MAILER-DAEMON@mx.example\r\nTo: {verp}\r\nSubject: Delivery Status Notification\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nTry {n}\r\n\
             --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\nFinal-Recipient: rfc822; eve@example.com\r\n\
             Action: failed\r\nStatus: 4.2.2\r\nDiagnostic-Code: smtp; 452 4.2.2 Mailbox full\r\n\r\n--b--"
        )
    };
    for (n, expected) in [(1, "scored"), (2, "scored"), (3, "suppressed")] {
        let rcpt = format!("RCPT TO:<{verp}>");
        let data = format!("{}\r\n.", dsn(n));
        let replies = smtp(inbound, &["EHLO mx.example", "MAIL FROM:<>", &rcpt, "DATA", &data, "QUIT"]).await;
        assert!(
            replies.iter().any(|r| r == &format!("250 2.0.0 Handled as bounce ({expected})")),
            "bounce {n}: {replies:?}"
        );
    }
    let get = GetSubscriberRequest { name: eve.name.clone() };
    wait_for("the third soft bounce to mark Eve bounced", Duration::from_secs(20), || {
        let (get, mut subscribers) = (get.clone(), subscribers.clone());
        async move {
            let status = subscribers.get_subscriber(get).await?.into_inner().status;
            Ok((status == SubscriberStatus::Bounced as i32).then_some(()))
        }
    })
    .await
    .unwrap();

    // Eve's suppression keeps its bounce reason, and `suppressions lift`
    // undoes it (audited) and makes her active again; address reasons are never lifted.
    let by_reason =
        |reason: &str| ListSuppressionsRequest { page_size: 100, reason: reason.into(), ..Default::default() };
    let full =
        sandbox.subscribers.list_suppressions(by_reason("mailbox_full")).await.unwrap().into_inner().suppressions;
    assert_eq!(full.len(), 1, "{full:#?}");
    assert_eq!(
        (full[0].target.as_str(), full[0].reason, full[0].detail.as_str()),
        ("eve@example.com", SuppressionReason::HardBounce as i32, "mailbox_full")
    );
    let blocked = sandbox.subscribers.list_suppressions(by_reason("blocked")).await.unwrap().into_inner();
    assert!(blocked.suppressions.is_empty(), "{blocked:#?}");
    let args = broadside::client::ClientArgs {
        server: sandbox.node.as_ref().unwrap().grpc_url(),
        api_key: Some(sandbox.api_key.clone()),
        config: None,
        tls: Default::default(),
    };
    use broadside::suppressions::{SuppressionsCommand, run as suppressions};
    let refused =
        suppressions(&args, SuppressionsCommand::Lift { reason: "user_unknown".into(), dry_run: false }).await;
    assert!(refused.unwrap_err().to_string().contains("the address itself is bad"));
    suppressions(&args, SuppressionsCommand::Lift { reason: "mailbox_full".into(), dry_run: false }).await.unwrap();
    let check = CheckSuppressionRequest { email: "eve@example.com".into(), list: String::new() };
    assert!(!sandbox.subscribers.check_suppression(check).await.unwrap().into_inner().suppressed);
    let status = subscribers.get_subscriber(get).await.unwrap().into_inner().status;
    assert_eq!(status, SubscriberStatus::Active as i32, "lifting the bounce suppression reactivates her");
    sandbox.stop().await.unwrap();
}

/// Undoes quoted-printable soft breaks and `=3D` so links can be read from a captured message.
fn unqp(message: &str) -> String {
    message.replace("=\r\n", "").replace("=\n", "").replace("=3D", "=")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_counts_opens_and_clicks_once_and_respects_the_opt_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let list = sandbox.create_list("Weekly").await.unwrap();
    sandbox.add_subscriber(&list, "tracked@example.com", "Tracked", serde_json::json!({})).await.unwrap();
    sandbox
        .add_subscriber(&list, "private@example.com", "Private", serde_json::json!({"tracking": false}))
        .await
        .unwrap();
    let mut template = simple_template();
    template.html_body.push_str("<p><a href=\"https://shop.example/offer?x=1&y=2\">See the offer</a></p>");
    let before = read_messages(&sandbox.outbox()).unwrap().len();
    let campaign = sandbox.create_campaign(&list, template).await.unwrap();
    sandbox.campaigns.start_campaign(StartCampaignRequest { name: campaign.clone() }).await.unwrap();
    sandbox.wait_for_completion(&campaign, Duration::from_secs(30)).await.unwrap();
    let messages: Vec<String> = read_messages(&sandbox.outbox()).unwrap().iter().map(|m| unqp(m)).collect();
    assert_eq!(messages.len(), before + 2);
    let private = messages.iter().find(|m| m.contains("private@example.com")).unwrap();
    assert!(
        private.contains("href=\"https://shop.example/offer?x=1&y=2\"") && !private.contains("/o/"),
        "opted out: {private}"
    );
    let tracked = messages.iter().find(|m| m.contains("tracked@example.com")).unwrap();
    let link = |marker: &str| {
        let at = tracked.find(marker).unwrap_or_else(|| panic!("{marker} in {tracked}"));
        tracked[at..].split('"').next().unwrap().to_owned()
    };
    let (open, click) = (link("/o/"), link("/c/"));
    assert!(!tracked.contains("href=\"https://shop.example"), "the link is rewritten");
    let http = sandbox.node.as_ref().unwrap().http_addr.unwrap();
    for _ in 0..2 {
        let (open, click) = (open.clone(), click.clone());
        let (status, pixel) = tokio::task::spawn_blocking(move || http_request(http, "GET", &open, "")).await.unwrap();
        assert_eq!(status, 200);
        assert!(pixel.contains("image/gif") && pixel.contains("GIF89a"), "{pixel}");
        let (status, redirect) =
            tokio::task::spawn_blocking(move || http_request(http, "GET", &click, "")).await.unwrap();
        assert_eq!(status, 303, "{redirect}");
        assert!(redirect.to_ascii_lowercase().contains("location: https://shop.example/offer?x=1&y=2"), "{redirect}");
    }
    // A click token whose URL was swapped is refused.
    let mut parts: Vec<String> = click.trim_start_matches("/c/").split('.').map(str::to_owned).collect();
    parts[1] = parts[1].chars().rev().collect();
    let forged = format!("/c/{}", parts.join("."));
    let (status, _) = tokio::task::spawn_blocking(move || http_request(http, "GET", &forged, "")).await.unwrap();
    assert_eq!(status, 400);
    let done = sandbox
        .wait_for_campaign(&campaign, Duration::from_secs(20), |c| {
            c.stats.as_ref().is_some_and(|s| s.opened == 1 && s.clicked == 1)
        })
        .await
        .unwrap();
    let stats = done.stats.unwrap();
    assert_eq!(
        (stats.opened, stats.clicked, stats.unsubscribed, stats.bounced),
        (1, 1, 0, 0),
        "each counted once per recipient"
    );
    sandbox.stop().await.unwrap();
}
