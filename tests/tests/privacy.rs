//! Consent, suppression, export and erasure through the API, checked
//! against the raw database file.

use std::time::Duration;

use broadside_proto::v1::*;
use broadside_tests::{Sandbox, read_messages, simple_template, test_config};

/// Every value of every table in the SQLite file that contains `needle`
/// (case-insensitive), as `table: value`. Sealed values are looked into too
/// (with the store's keys), so erasure is proven, not hidden by encryption;
/// `plaintext_only` looks only at the bytes in the file.
fn rows_containing(dir: &std::path::Path, needle: &str) -> Vec<String> {
    scan(dir, needle, false)
}

fn scan(dir: &std::path::Path, needle: &str, plaintext_only: bool) -> Vec<String> {
    let store = broadside_store::SqliteStore::open(
        &dir.join("broadside.db"),
        broadside::backends::master_keys(&test_config(dir)).unwrap(),
    )
    .unwrap();
    let conn = rusqlite::Connection::open(dir.join("broadside.db")).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(tables.len() >= 10, "expected every store and bus table, found {tables:?}");
    let needle = needle.to_lowercase();
    let mut found = Vec::new();
    for table in tables {
        let mut statement = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let columns = statement.column_count();
        let mut rows = statement.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for index in 0..columns {
                let text = match row.get_ref(index).unwrap() {
                    rusqlite::types::ValueRef::Text(bytes) | rusqlite::types::ValueRef::Blob(bytes) => {
                        let revealed = if plaintext_only { None } else { store.reveal(bytes) };
                        String::from_utf8_lossy(&revealed.unwrap_or_else(|| bytes.to_vec())).to_lowercase()
                    }
                    _ => continue,
                };
                if text.contains(&needle) {
                    found.push(format!("{table}: {}", text.chars().take(120).collect::<String>()));
                }
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_holds_everything_and_erase_leaves_only_a_hash() {
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let list = sandbox.create_list("Readers").await.unwrap();
    let email = "Erin.Erasure@Example.ORG";
    let consent =
        ConsentContext { source: "web_form".into(), ip: "203.0.113.9".into(), user_agent: "Firefox/140".into() };
    let subscriber = Subscriber {
        email: email.into(),
        display_name: "Erin Zylberstein".into(),
        lists: vec![list.clone()],
        attributes: Some(broadside_proto::convert::json_to_struct(
            serde_json::json!({"city": "Quuxville", "plan": "gold"}).as_object().unwrap(),
        )),
        ..Default::default()
    };
    let request =
        CreateSubscriberRequest { subscriber: Some(subscriber), consent: Some(consent), ..Default::default() };
    let stored = sandbox.subscribers.create_subscriber(request).await.unwrap().into_inner();
    assert_eq!(stored.email, "Erin.Erasure@example.org", "the domain is normalized, the local part kept");
    sandbox.add_subscriber(&list, "other@example.org", "Other", serde_json::json!({})).await.unwrap();
    // A manual list suppression and a delivered campaign leave traces in more tables.
    let suppression = Suppression { target: email.into(), list: list.clone(), ..Default::default() };
    sandbox.subscribers.add_suppression(AddSuppressionRequest { suppression: Some(suppression) }).await.unwrap();
    sandbox
        .subscribers
        .remove_suppression(RemoveSuppressionRequest { target: email.into(), list: list.clone(), note: String::new() })
        .await
        .unwrap();
    // An import puts the address into batched bus records shared with others.
    let mut csv = String::from("email,name,city\n");
    for i in 0..40 {
        csv.push_str(&format!("batchmate-{i}@example.org,Mate {i},Town{i}\n"));
    }
    csv.push_str("Erin.Erasure@example.org,Erin Zylberstein,Quuxville\n");
    let import = vec![ImportSubscribersRequest { parent: list.clone(), chunk: csv.into_bytes(), ..Default::default() }];
    let imported = sandbox.subscribers.import_subscribers(tokio_stream::iter(import)).await.unwrap().into_inner();
    assert_eq!((imported.imported, imported.updated), (40, 1));
    let campaign = sandbox.create_campaign(&list, simple_template()).await.unwrap();
    sandbox.campaigns.start_campaign(StartCampaignRequest { name: campaign.clone() }).await.unwrap();
    sandbox.wait_for_completion(&campaign, Duration::from_secs(30)).await.unwrap();

    let export = sandbox
        .subscribers
        .export_subscriber(ExportSubscriberRequest { email: "erin.erasure@example.org".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let json: serde_json::Value = serde_json::from_str(&export.json).unwrap();
    let store = &json["store"];
    assert_eq!(store["subscriber"]["email"], "Erin.Erasure@example.org");
    assert_eq!(store["subscriber"]["attributes"]["city"], "Quuxville");
    assert_eq!(store["subscriber"]["subscriptions"][0]["status"], "confirmed");
    assert_eq!(store["consent"][0]["action"], "subscribe");
    assert_eq!(store["consent"][0]["ip"], "203.0.113.9");
    assert_eq!(store["consent"][0]["user_agent"], "Firefox/140");
    assert_eq!(store["deliveries"][0]["state"], "sent");

    let db = dir.path();
    for needle in ["erin.erasure", "zylberstein", "quuxville", "203.0.113.9", "example.org"] {
        assert!(!rows_containing(db, needle).is_empty(), "{needle} should be stored (sealed) before erasure");
        assert!(scan(db, needle, true).is_empty(), "{needle} is in the file in the clear");
    }
    let erased = sandbox
        .subscribers
        .erase_subscriber(EraseSubscriberRequest { name: stored.name.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    for needle in ["erin.erasure", "zylberstein", "quuxville", "203.0.113.9", "firefox/140"] {
        let left = rows_containing(db, needle);
        assert!(left.is_empty(), "{needle} is still stored after erasure: {left:#?}");
    }
    assert!(!rows_containing(db, "other@example.org").is_empty(), "other subscribers are untouched");
    let mates_on_the_bus = rows_containing(db, "batchmate-").iter().filter(|row| row.starts_with("bus_log")).count();
    assert!(mates_on_the_bus > 0, "batched events of other subscribers stay on the bus");
    let check = CheckSuppressionRequest { email: email.into(), ..Default::default() };
    let check = sandbox.subscribers.check_suppression(check).await.unwrap().into_inner();
    assert!(check.suppressed);
    assert_eq!(check.suppressions[0].reason, SuppressionReason::Erased as i32);
    assert_eq!(
        (check.suppressions[0].target.as_str(), check.suppressions[0].email_hash.as_str()),
        ("", erased.email_hash.as_str())
    );
    let gone = sandbox.subscribers.get_subscriber(GetSubscriberRequest { name: stored.name.clone() }).await;
    assert_eq!(gone.unwrap_err().code(), tonic::Code::NotFound);

    // Signing up again stores the address anew, but it is never mailed.
    sandbox.add_subscriber(&list, email, "Erin", serde_json::json!({})).await.unwrap();
    let before = read_messages(&sandbox.outbox()).unwrap().len();
    let again = sandbox.create_campaign(&list, simple_template()).await.unwrap();
    sandbox.campaigns.start_campaign(StartCampaignRequest { name: again.clone() }).await.unwrap();
    let done = sandbox.wait_for_completion(&again, Duration::from_secs(30)).await.unwrap();
    assert_eq!(done.stats.unwrap().recipients, 41, "everyone but the erased address");
    let messages = read_messages(&sandbox.outbox()).unwrap();
    assert_eq!(messages.len() - before, 41);
    let to_erin = messages.iter().filter(|m| m.to_lowercase().contains("erin.erasure@example.org")).count();
    assert_eq!(to_erin, 1, "only the first campaign (before erasure) mailed the erased address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_skip_suppressed_unsubscribed_and_inactive_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let list = sandbox.create_list("Everyone").await.unwrap();
    let other_list = sandbox.create_list("Other").await.unwrap();
    let mut names = std::collections::HashMap::new();
    for who in ["keep", "tenant-wide", "list-only", "other-list", "domain", "unsubscribed", "bounced"] {
        let email = if who == "domain" { "x@blocked.example".to_string() } else { format!("{who}@example.com") };
        let stored = sandbox.add_subscriber(&list, &email, who, serde_json::json!({})).await.unwrap();
        names.insert(who, stored.name);
    }
    let suppress = |target: &str, list: &str| AddSuppressionRequest {
        suppression: Some(Suppression {
            target: target.into(),
            list: list.into(),
            reason: SuppressionReason::Manual as i32,
            ..Default::default()
        }),
    };
    let subs = &mut sandbox.subscribers;
    subs.add_suppression(suppress("tenant-wide@example.com", "")).await.unwrap();
    subs.add_suppression(suppress("LIST-ONLY@example.com", &list)).await.unwrap();
    subs.add_suppression(suppress("other-list@example.com", &other_list)).await.unwrap();
    subs.add_suppression(suppress("@Blocked.Example", "")).await.unwrap();
    subs.unsubscribe(UnsubscribeRequest {
        name: names["unsubscribed"].clone(),
        list: list.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let bounced =
        Subscriber { name: names["bounced"].clone(), status: SubscriberStatus::Bounced as i32, ..Default::default() };
    subs.update_subscriber(UpdateSubscriberRequest { subscriber: Some(bounced), update_mask: vec!["status".into()] })
        .await
        .unwrap();
    let bad = subs.add_suppression(suppress("not an address", "")).await.unwrap_err();
    assert!(bad.message().starts_with("suppression.target"), "{bad:?}");

    let campaign = sandbox.create_campaign(&list, simple_template()).await.unwrap();
    sandbox.campaigns.start_campaign(StartCampaignRequest { name: campaign.clone() }).await.unwrap();
    let done = sandbox.wait_for_completion(&campaign, Duration::from_secs(30)).await.unwrap();
    let recipients: Vec<String> = read_messages(&sandbox.outbox())
        .unwrap()
        .iter()
        .filter_map(|m| m.lines().find(|l| l.starts_with("To: ")).map(|l| l.to_owned()))
        .collect();
    assert_eq!(done.stats.unwrap().recipients, 2, "keep and other-list: {recipients:?}");
    assert_eq!(recipients.len(), 2);
    assert!(recipients.iter().any(|to| to.contains("keep@example.com")));
    assert!(recipients.iter().any(|to| to.contains("other-list@example.com")));

    let records = sandbox
        .subscribers
        .list_consent_records(ListConsentRecordsRequest { parent: names["unsubscribed"].clone() })
        .await
        .unwrap()
        .into_inner()
        .records;
    let actions: Vec<&str> = records.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, vec!["subscribe", "unsubscribe"]);
}

/// One HTTP/1.1 request to the public server; returns (status, body).
fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: TestBrowser/1.0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_opt_in_mails_a_link_and_only_a_post_confirms() {
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let list = MailingList { display_name: "Weekly <News>".into(), opt_in: OptIn::Double as i32, ..Default::default() };
    let list = sandbox.subscribers.create_list(CreateListRequest { list: Some(list), ..Default::default() }).await;
    let list = list.unwrap().into_inner().name;
    let stored = sandbox.add_subscriber(&list, "dora@example.com", "Dora", serde_json::json!({})).await.unwrap();
    assert_eq!(stored.subscriptions[0].status, SubscriptionStatus::Unconfirmed as i32);

    let messages = read_messages(&sandbox.outbox()).unwrap();
    assert_eq!(messages.len(), 1, "one confirmation message");
    assert!(
        messages[0].contains("To: \"Dora\" <dora@example.com>") || messages[0].contains("To: Dora <dora@example.com>")
    );
    let http_addr = sandbox.node.as_ref().unwrap().http_addr.unwrap();
    // Undo quoted-printable soft line breaks before looking for the link.
    let text = messages[0].replace("=\r\n", "").replace("=\n", "");
    let path = text
        .split_whitespace()
        .find_map(|word| word.find("/confirm/").map(|at| word[at..].trim_end_matches(['"', '>', '<']).to_owned()))
        .expect("a confirmation link");
    let path = path.split('"').next().unwrap().to_owned();

    // Nobody confirmed yet: a campaign has no recipients.
    let campaign = sandbox.create_campaign(&list, simple_template()).await.unwrap();
    let refused = sandbox.campaigns.start_campaign(StartCampaignRequest { name: campaign.clone() }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");

    // GET (a link scanner, a preview) shows the page and changes nothing.
    let (status, page) = tokio::task::spawn_blocking({
        let path = path.clone();
        move || http(http_addr, "GET", &path)
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("<form method=\"post\""), "{page}");
    let get = GetSubscriberRequest { name: stored.name.clone() };
    let after_get = sandbox.subscribers.get_subscriber(get.clone()).await.unwrap().into_inner();
    assert_eq!(after_get.subscriptions[0].status, SubscriptionStatus::Unconfirmed as i32);

    let (status, _) = tokio::task::spawn_blocking(move || http(http_addr, "POST", &path)).await.unwrap();
    assert_eq!(status, 200);
    let confirmed = sandbox.subscribers.get_subscriber(get).await.unwrap().into_inner();
    assert_eq!(confirmed.subscriptions[0].status, SubscriptionStatus::Confirmed as i32);
    let records = sandbox
        .subscribers
        .list_consent_records(ListConsentRecordsRequest { parent: stored.name.clone() })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(records.len(), 2);
    let confirm = &records[1];
    let context = confirm.context.as_ref().unwrap();
    assert_eq!((confirm.action.as_str(), context.source.as_str()), ("confirm", "confirm_link"));
    assert_eq!((context.ip.as_str(), context.user_agent.as_str()), ("127.0.0.1", "TestBrowser/1.0"));

    // A tampered link is refused with a page, not a crash.
    let (status, _) =
        tokio::task::spawn_blocking(move || http(http_addr, "POST", "/confirm/k1.e30.AAAA")).await.unwrap();
    assert_eq!(status, 400);
    sandbox.campaigns.start_campaign(StartCampaignRequest { name: campaign.clone() }).await.unwrap();
    let done = sandbox.wait_for_completion(&campaign, Duration::from_secs(30)).await.unwrap();
    assert_eq!(done.stats.unwrap().delivered, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suppression_during_a_campaign_stops_mail_not_yet_sent() {
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let list = sandbox.create_list("Slow").await.unwrap();
    let mut emails = Vec::new();
    for i in 0..20 {
        let email = format!("slow{i:02}@example.com");
        sandbox.add_subscriber(&list, &email, "S", serde_json::json!({})).await.unwrap();
        emails.push(email);
    }
    // 4 messages per second: the campaign takes about 5 seconds.
    let campaign = sandbox.create_paced_campaign(&list, simple_template(), 4.0).await.unwrap();
    sandbox.campaigns.start_campaign(StartCampaignRequest { name: campaign.clone() }).await.unwrap();
    // Once sending has begun, suppress someone who has not had a message yet.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let sent = loop {
        let sent = read_messages(&sandbox.outbox()).unwrap();
        if !sent.is_empty() {
            break sent;
        }
        assert!(std::time::Instant::now() < deadline, "nothing was sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let target = emails.iter().rev().find(|e| !sent.iter().any(|m| m.contains(e.as_str()))).unwrap().clone();
    let suppression =
        Suppression { target: target.clone(), reason: SuppressionReason::Complaint as i32, ..Default::default() };
    sandbox.subscribers.add_suppression(AddSuppressionRequest { suppression: Some(suppression) }).await.unwrap();
    let done = sandbox.wait_for_completion(&campaign, Duration::from_secs(60)).await.unwrap();
    let stats = done.stats.unwrap();
    assert_eq!((stats.recipients, stats.delivered, stats.failed), (20, 19, 1), "fanned out before, skipped at send");
    let messages = read_messages(&sandbox.outbox()).unwrap();
    assert_eq!(messages.len(), 19);
    assert!(!messages.iter().any(|m| m.contains(&target)), "{target} was suppressed before its turn");
}
