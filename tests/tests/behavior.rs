//! Behavioral events through the real API: 100k events streamed with
//! TrackEvents, behavioral segments checked against a naive evaluation of
//! the same events, per-event errors, idempotent retries, export and erasure
//! (store rows and bus records).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use broadside_proto::convert::{json_to_struct, millis_to_timestamp};
use broadside_proto::v1::behavior_service_client::BehaviorServiceClient;
use broadside_proto::v1::segment_service_client::SegmentServiceClient;
use broadside_proto::v1::*;
use broadside_tests::{Sandbox, authed, bulk_load, test_config};

const SUBSCRIBERS: usize = 1000;
const EVENTS: usize = 100_000;
const DAY_S: i64 = 86_400;

/// A deterministic generator (the same data on every run).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// One generated event, as the test remembers it.
struct Generated {
    subscriber: usize,
    name: &'static str,
    time_s: i64,
    amount: i64,
    sku: String,
}

/// `seconds` ago, kept an hour away from the rules' window edges (5, 30 and
/// 90 days) so the few seconds between this test's clock and the server's do not matter.
fn away_from_edges(ago: i64) -> i64 {
    for edge in [5 * DAY_S, 30 * DAY_S, 90 * DAY_S] {
        if (ago - edge).abs() < 3600 {
            return edge + 3600 + (ago - edge).abs();
        }
    }
    ago
}

async fn all_members(
    client: &mut SegmentServiceClient<broadside::client::Authed>,
    rule: &str,
    position: &str,
) -> BTreeSet<String> {
    let mut members = BTreeSet::new();
    let mut token = String::new();
    loop {
        let request = PreviewSegmentRequest {
            rule: rule.into(),
            page_size: 1000,
            page_token: token.clone(),
            min_position: position.into(),
            ..Default::default()
        };
        let page = client.preview_segment(request).await.unwrap().into_inner();
        members.extend(page.subscribers);
        if page.next_page_token.is_empty() {
            assert_eq!(members.len() as i64, page.total, "pages add up to the total");
            return members;
        }
        token = page.next_page_token;
    }
}

/// How many events of `subscriber_id` the embedded bus log holds (read with a fresh consumer group).
async fn events_on_bus(dir: &std::path::Path, subscriber_id: &str) -> usize {
    use prost::Message as _;
    let backends = broadside::backends::open(&test_config(dir)).await.unwrap();
    let group = format!("check-{}", broadside_store::new_id());
    let mut consumer = backends.bus.consumer(&group, &["broadside.behavior-events".to_owned()]).await.unwrap();
    let mut found = 0;
    loop {
        let batch = consumer.poll(10_000, Duration::from_millis(500)).await.unwrap();
        if batch.is_empty() {
            return found;
        }
        for delivered in batch {
            let payload = delivered.record.payload.as_slice();
            let events = match delivered.record.header("type") {
                _ if payload.is_empty() => vec![],
                Some("broadside.v1.BehaviorEventBatch") => BehaviorEventBatch::decode(payload).unwrap().events,
                _ => vec![BehaviorEvent::decode(payload).unwrap()],
            };
            found += events.iter().filter(|e| e.subscriber_id == subscriber_id).count();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_events_segment_like_a_naive_evaluation_and_erasure_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    bulk_load(dir.path(), SUBSCRIBERS).await.unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let node = sandbox.node.as_ref().unwrap();
    let channel = authed(node, &sandbox.api_key).await.unwrap();
    let mut behavior = BehaviorServiceClient::new(channel.clone());
    let mut segments = SegmentServiceClient::new(channel);

    // Subscriber ids by email number.
    let mut ids = vec![String::new(); SUBSCRIBERS];
    let mut token = String::new();
    loop {
        let request = ListSubscribersRequest { page_size: 1000, page_token: token.clone(), ..Default::default() };
        let page = sandbox.subscribers.list_subscribers(request).await.unwrap().into_inner();
        for s in page.subscribers {
            let n: usize = s.email.trim_start_matches("user").trim_end_matches("@example.com").parse().unwrap();
            ids[n] = s.name;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert!(ids.iter().all(|id| id.starts_with("subscribers/")));

    let now_s = broadside_store::now_millis() / 1000;
    let mut random = Lcg(7);
    let names = ["purchase", "purchase", "login", "page_view"];
    let generated: Vec<Generated> = (0..EVENTS)
        .map(|_| {
            let name = names[random.below(4) as usize];
            let sku = if random.below(3) == 0 {
                format!("BK-{}", random.below(50))
            } else {
                format!("TOY-{}", random.below(50))
            };
            Generated {
                subscriber: random.below(SUBSCRIBERS as u64) as usize,
                name,
                time_s: now_s - away_from_edges(random.below(120 * DAY_S as u64) as i64),
                amount: 1 + random.below(60) as i64,
                sku,
            }
        })
        .collect();
    let tracked = |i: usize, g: &Generated| {
        let properties = if g.name == "purchase" {
            serde_json::json!({"amount": g.amount, "sku": g.sku, "currency": "EUR"})
        } else {
            serde_json::json!({"device": "web"})
        };
        TrackedEvent {
            event_id: format!("ev-{i}"),
            // Half by address, half by resource name.
            email: if i.is_multiple_of(2) { format!("user{}@example.com", g.subscriber) } else { String::new() },
            subscriber: if i % 2 == 1 { ids[g.subscriber].clone() } else { String::new() },
            name: g.name.into(),
            time: millis_to_timestamp(g.time_s * 1000),
            properties: Some(json_to_struct(properties.as_object().unwrap())),
        }
    };
    let mut events: Vec<TrackedEvent> = generated.iter().enumerate().map(|(i, g)| tracked(i, g)).collect();
    // Three bad events (each names its field), then a retry of the first 1000.
    let good = tracked(0, &generated[0]);
    events.push(TrackedEvent { event_id: "bad-1".into(), name: "bad name".into(), ..good.clone() });
    events.push(TrackedEvent { event_id: "bad-2".into(), email: "nobody@example.com".into(), ..good.clone() });
    events.push(TrackedEvent {
        event_id: "bad-3".into(),
        time: millis_to_timestamp((now_s + 3 * DAY_S) * 1000),
        ..good.clone()
    });
    events.extend(generated.iter().take(1000).enumerate().map(|(i, g)| tracked(i, g)));
    let batches: Vec<TrackEventsRequest> =
        events.chunks(1000).map(|chunk| TrackEventsRequest { events: chunk.to_vec() }).collect();
    let reply = behavior.track_events(tokio_stream::iter(batches)).await.unwrap();
    let position = reply.metadata().get("x-broadside-position").unwrap().to_str().unwrap().to_owned();
    let response = reply.into_inner();
    assert_eq!(
        (response.accepted, response.duplicates, response.rejected),
        (EVENTS as i64, 1000, 3),
        "{:?}",
        response.errors
    );
    let errors: Vec<(i64, &str)> = response.errors.iter().map(|e| (e.index, e.field.as_str())).collect();
    assert_eq!(errors, [(EVENTS as i64, "name"), (EVENTS as i64 + 1, "email"), (EVENTS as i64 + 2, "time")]);
    assert!(position.starts_with('b'), "{position}");

    // The naive evaluation: per subscriber, straight from the generated list.
    let since = |days: i64| now_s - days * DAY_S;
    let mut purchases_30d: HashMap<usize, usize> = HashMap::new();
    let mut spent_90d: HashMap<usize, i64> = HashMap::new();
    let mut books: HashMap<usize, usize> = HashMap::new();
    let mut last_login: HashMap<usize, i64> = HashMap::new();
    for g in &generated {
        match g.name {
            "purchase" => {
                if g.time_s >= since(30) {
                    *purchases_30d.entry(g.subscriber).or_default() += 1;
                }
                if g.time_s >= since(90) {
                    *spent_90d.entry(g.subscriber).or_default() += g.amount;
                }
                if g.sku.starts_with("BK-") {
                    *books.entry(g.subscriber).or_default() += 1;
                }
            }
            "login" => {
                let last = last_login.entry(g.subscriber).or_default();
                *last = (*last).max(g.time_s);
            }
            _ => {}
        }
    }
    let expect = |test: &dyn Fn(usize) -> bool| -> BTreeSet<String> {
        (0..SUBSCRIBERS).filter(|n| test(*n)).map(|n| ids[n].clone()).collect()
    };
    let rule = r#"did("purchase", within: 30d, count >= 15) and sum("purchase.amount", within: 90d) > 1200"#;
    let want = expect(&|n| {
        purchases_30d.get(&n).copied().unwrap_or(0) >= 15 && spent_90d.get(&n).copied().unwrap_or(0) > 1200
    });
    let got = all_members(&mut segments, rule, &position).await;
    assert!(!want.is_empty() && want.len() < SUBSCRIBERS, "the rule must split the base: {} match", want.len());
    assert_eq!(got, want, "{rule}");

    let rule = r#"did("purchase", where: sku starts_with "bk-" and currency = "EUR", count >= 20) or last("login") < now() - 5d"#;
    let want =
        expect(&|n| books.get(&n).copied().unwrap_or(0) >= 20 || last_login.get(&n).is_some_and(|t| *t < since(5)));
    let got = all_members(&mut segments, rule, &position).await;
    assert!(!want.is_empty() && want.len() < SUBSCRIBERS, "the rule must split the base: {} match", want.len());
    assert_eq!(got, want, "{rule}");

    // Export includes the subscriber's events; erasure removes them from the store and the bus log.
    let victim = generated[0].subscriber;
    let expected_events = generated.iter().filter(|g| g.subscriber == victim).count();
    let export = sandbox
        .subscribers
        .export_subscriber(ExportSubscriberRequest { name: ids[victim].clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let export: serde_json::Value = serde_json::from_str(&export.json).unwrap();
    let exported = export["store"]["events"].as_array().unwrap();
    assert_eq!(exported.len(), expected_events);
    assert!(exported.iter().any(|e| e["properties"]["sku"].is_string() || e["properties"]["device"] == "web"));
    let id = ids[victim].trim_start_matches("subscribers/").to_owned();
    let count = |sql: &str| -> i64 {
        let conn = rusqlite::Connection::open(dir.path().join("broadside.db")).unwrap();
        conn.query_row(sql, [&id], |row| row.get(0)).unwrap()
    };
    let in_store = "SELECT count(*) FROM behavior_events WHERE subscriber_id = ?1";
    assert_eq!(count(in_store) as usize, expected_events);
    assert_eq!(events_on_bus(dir.path(), &id).await, expected_events);
    sandbox
        .subscribers
        .erase_subscriber(EraseSubscriberRequest { name: ids[victim].clone(), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(count(in_store), 0, "erasure deletes the events");
    assert_eq!(events_on_bus(dir.path(), &id).await, 0, "erasure removes them from the bus log too");
    let after = broadside_tests::wait_for("the erasure to reach the projection", Duration::from_secs(20), || {
        let mut segments = segments.clone();
        let name = ids[victim].clone();
        async move {
            let members =
                all_members(&mut segments, r#"did("purchase") or did("login") or did("page_view")"#, "").await;
            Ok((!members.contains(&name)).then_some(members))
        }
    })
    .await
    .unwrap();
    assert!(!after.is_empty());
    sandbox.stop().await.unwrap();
}
