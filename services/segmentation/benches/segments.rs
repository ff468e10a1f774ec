//! Parsing and evaluating a five-clause rule over 200,000 synthetic
//! subscribers, and a behavioral rule over 2M events of theirs (the
//! proportions of `bench/segment.sh`: ten events a subscriber over a year).

use broadside_segmentation::engine::{Projection, Row};
use broadside_segmentation::rule::{Activity, parse};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

const RULE: &str = "attributes.country = \"DE\" and attributes.age >= 30 and in_list(\"weekly\") \
                    and opened(within: 30d) and created_at > now() - 365d";

fn projection(n: u32) -> Projection {
    let now = broadside_store::now_millis();
    let mut projection = Projection::default();
    let countries = ["DE", "FR", "US", "GB", "AT"];
    for i in 0..n {
        let mut attributes = serde_json::Map::new();
        attributes.insert("country".into(), json!(countries[(i % 5) as usize]));
        attributes.insert("age".into(), json!(18 + i % 60));
        let id = format!("{:032x}", 0x0193_0000_0000_0000_0000_0000_0000_0000u128 + u128::from(i));
        let lists = if i % 3 == 0 { vec![("weekly".to_owned(), "confirmed".to_owned())] } else { vec![] };
        projection.upsert(&Row {
            id: id.clone(),
            email: format!("user{i}@example.com"),
            status: "active".into(),
            created_at: now - i64::from(i % 700) * 86_400_000,
            attributes,
            subscriptions: lists,
            ..Default::default()
        });
        if i % 4 == 0 {
            projection.engage(&id, Activity::Opened, "c1", now - i64::from(i % 60) * 86_400_000);
        }
    }
    projection
}

const BEHAVIOR_RULE: &str = "did(\"purchase\", within: 30d, count >= 2) and sum(\"purchase.amount\", within: 90d) > 100 \
                             and not opened(within: 60d)";

/// Ten events per subscriber spread over a year: purchases (amount, sku), logins, page views.
fn track_events(projection: &mut Projection, n: u32) {
    let now = broadside_store::now_millis();
    let names = ["purchase", "login", "page_view"];
    for i in 0..n {
        let id = format!("{:032x}", 0x0193_0000_0000_0000_0000_0000_0000_0000u128 + u128::from(i));
        for k in 0..10u32 {
            let spread = (i.wrapping_mul(2_654_435_761).wrapping_add(k * 40_503)) % (365 * 86_400);
            let mut properties = serde_json::Map::new();
            if k % 3 == 0 {
                properties.insert("amount".into(), json!(5 + (i + k) % 120));
                properties.insert("sku".into(), json!(format!("BK-{}", (i + k) % 50)));
            }
            projection.track(&id, names[(k % 3) as usize], now - i64::from(spread) * 1000, &properties);
        }
    }
}

fn benches(c: &mut Criterion) {
    c.bench_function("parse five-clause rule", |b| b.iter(|| parse(std::hint::black_box(RULE)).unwrap()));
    let projection = projection(200_000);
    let rule = parse(RULE).unwrap();
    let now = broadside_store::now_millis();
    c.bench_function("evaluate five-clause rule, 200k subscribers", |b| {
        b.iter(|| projection.evaluate(&rule, now).len())
    });
    let mut projection = projection;
    track_events(&mut projection, 200_000);
    let rule = parse(BEHAVIOR_RULE).unwrap();
    c.bench_function("evaluate behavioral rule, 200k subscribers, 2M events", |b| {
        b.iter(|| projection.evaluate(&rule, now).len())
    });
}

criterion_group!(segments, benches);
criterion_main!(segments);
