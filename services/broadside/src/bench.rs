//! Hidden helpers for `bench/segment.sh`: seed a store with synthetic
//! subscribers, memberships, engagement events and behavioral events (and
//! the same data as CSV for PostgreSQL), and time PreviewSegment over gRPC
//! from one connection. Behavioral events go to the bus only: the
//! projection is built from the bus, and the benchmark measures queries.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use broadside_bus::{Record, Topic};
use broadside_config::Config;
use broadside_proto::convert::millis_to_timestamp;
use broadside_proto::v1::segment_service_client::SegmentServiceClient;
use broadside_proto::v1::{self, PreviewSegmentRequest, feedback_event::Kind};
use broadside_store::{
    ImportJob, ImportRow, MailingList, OptIn, Subscriber, SubscriberStatus, UpsertOptions, now_millis,
};
use clap::Subcommand;
use prost::Message as _;

use crate::connect::{ClientArgs, connect, plain};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Writes N subscribers with 10 attributes into lists `weekly` and
    /// `monthly`, opens and clicks as feedback-events, --events-per-subscriber
    /// behavioral events on average (purchases, logins, page views over a
    /// year) as behavior-events, and the same rows as CSV files in --csv for PostgreSQL.
    SeedSegments {
        #[arg(long)]
        subscribers: u64,
        #[arg(long, default_value_t = 10)]
        events_per_subscriber: u64,
        #[arg(long)]
        csv: PathBuf,
    },
    /// Runs PreviewSegment --runs times on one connection; prints the latencies.
    Preview {
        #[arg(long)]
        rule: String,
        #[arg(long, default_value_t = 50)]
        runs: usize,
        /// Wait until the projection reflects this position (what seed-segments printed).
        #[arg(long, default_value = "")]
        min_position: String,
    },
}

/// splitmix64: the same data on every run, no dependency.
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const DAY_MS: i64 = 86_400_000;

/// `time`, moved out of the two hours around `boundary`.
fn away_from(time: i64, boundary: i64) -> i64 {
    const TWO_HOURS: i64 = 2 * 3_600_000;
    if (time - boundary).abs() < TWO_HOURS { boundary - TWO_HOURS - (boundary - time).abs() } else { time }
}

const COUNTRIES: [&str; 8] = ["DE", "DE", "FR", "US", "GB", "ES", "IT", "NL"];
const CITIES: [&str; 10] =
    ["Berlin", "Paris", "Austin", "Leeds", "Madrid", "Milan", "Utrecht", "Hamburg", "Lyon", "Denver"];

pub async fn run(config: &Config, args: &ClientArgs, command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::SeedSegments { subscribers, events_per_subscriber, csv } => {
            seed(config, subscribers, events_per_subscriber, &csv).await
        }
        BenchCommand::Preview { rule, runs, min_position } => {
            let mut client = SegmentServiceClient::new(connect(args).await?);
            if !min_position.is_empty() {
                // Not timed: waits (10 s per call) until the seeded events are applied.
                loop {
                    let request = PreviewSegmentRequest {
                        rule: rule.clone(),
                        min_position: min_position.clone(),
                        ..Default::default()
                    };
                    match client.preview_segment(request).await {
                        Ok(_) => break,
                        Err(status) if status.code() == tonic::Code::Unavailable => continue,
                        Err(status) => return Err(plain(status)),
                    }
                }
            }
            let mut latencies = Vec::with_capacity(runs);
            let mut total = 0;
            for _ in 0..runs {
                let started = Instant::now();
                let request = PreviewSegmentRequest { rule: rule.clone(), page_size: 10, ..Default::default() };
                total = client.preview_segment(request).await.map_err(plain)?.into_inner().total;
                latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            latencies.sort_by(f64::total_cmp);
            let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
            crate::outln!("total={total} p50_ms={:.2} p99_ms={:.2}", at(0.5), at(0.99));
            Ok(())
        }
    }
}

/// Keeps the highest offset per partition (keyed from `base`, as positions are).
fn note_written(written: &mut broadside_segmentation::live::Position, base: u32, landed: Vec<(u32, i64)>) {
    for (partition, offset) in landed {
        let last = written.entry(base + partition).or_insert(offset);
        *last = (*last).max(offset);
    }
}

async fn seed(config: &Config, count: u64, per_subscriber: u64, csv: &std::path::Path) -> anyhow::Result<()> {
    let backends = crate::backends::open(config).await?;
    let store = backends.store.clone();
    crate::bootstrap::ensure_admin_key(&store, &config.data_dir).await?;
    let tenant = broadside_store::DEFAULT_TENANT;
    for id in ["weekly", "monthly"] {
        let list = MailingList {
            tenant: tenant.into(),
            id: id.into(),
            display_name: id.into(),
            description: String::new(),
            opt_in: OptIn::Single,
            create_time: now_millis(),
        };
        if store.get_list(tenant, id).await?.is_none() {
            store.create_list(list, None).await?;
        }
    }
    std::fs::create_dir_all(csv)?;
    let mut people = std::io::BufWriter::new(std::fs::File::create(csv.join("subscribers.csv"))?);
    let mut members = std::io::BufWriter::new(std::fs::File::create(csv.join("memberships.csv"))?);
    let mut views = std::io::BufWriter::new(std::fs::File::create(csv.join("events.csv"))?);
    let mut behavior_csv = std::io::BufWriter::new(std::fs::File::create(csv.join("behavior.csv"))?);
    let behavior_topic = Topic::BehaviorEvents.name(&config.bus.topic_prefix);
    let partitions = backends.bus.partitions();
    let mut behaviors = 0u64;
    // Highest offset written per partition, in the projection's position keys.
    let mut written = broadside_segmentation::live::Position::new();
    let mut random = Seeded(42);
    let now = now_millis();
    let topic = Topic::FeedbackEvents.name(&config.bus.topic_prefix);
    let started = Instant::now();
    let batch_size = 20_000u64;
    let mut events = 0u64;
    for (index, list) in ["weekly", "monthly"].iter().enumerate() {
        let (from, to) = if index == 0 { (0, count * 6 / 10) } else { (count * 6 / 10, count) };
        let mut next = from;
        while next < to {
            let end = (next + batch_size).min(to);
            let mut rows = Vec::with_capacity((end - next) as usize);
            let mut records = Vec::new();
            let mut by_partition: std::collections::BTreeMap<u32, Vec<v1::BehaviorEvent>> = Default::default();
            for n in next..end {
                let id = format!("{:032x}", 0x0190_0000_0000_7000_8000_0000_0000_0000u128 + u128::from(n));
                // No times within two hours of the rule's boundaries (30 and 365 days ago), so
                // both sides count the same even though they evaluate "now" minutes apart.
                let created = away_from(now - (random.below(730 * 86_400) as i64) * 1000, now - 365 * DAY_MS);
                let attributes = serde_json::json!({
                    "country": random.pick(&COUNTRIES),
                    "city": random.pick(&CITIES),
                    "age": 18 + random.below(63),
                    "plan": random.pick(&["free", "free", "pro", "team"]),
                    "score": random.below(10_000) as f64 / 100.0,
                    "vip": random.below(10) == 0,
                    "language": random.pick(&["de", "en", "fr", "es"]),
                    "source": random.pick(&["ads", "organic", "referral", "import"]),
                    "lifetime_value": random.below(500_000) as f64 / 100.0,
                    "frequency": random.pick(&["weekly", "monthly", "never"]),
                });
                let email = format!("user{n}@example.com");
                writeln!(people, "{n}\t{id}\t{email}\tUser {n}\tenabled\t{created}\t{attributes}")?;
                writeln!(members, "{n}\t{}\tconfirmed", index + 1)?;
                // About one event per subscriber: opens in the last 90 days, some clicks.
                for _ in 0..random.below(3) {
                    let (kind, campaign) = if random.below(4) == 0 { (1, "c2") } else { (0, "c1") };
                    let time = away_from(now - (random.below(90 * 86_400) as i64) * 1000, now - 30 * DAY_MS);
                    let time = away_from(time, now - 60 * DAY_MS);
                    writeln!(views, "{n}\t{kind}\t{campaign}\t{time}")?;
                    let event = v1::FeedbackEvent {
                        tenant: tenant.into(),
                        subscriber_id: id.clone(),
                        campaign_id: campaign.into(),
                        time: millis_to_timestamp(time),
                        kind: Some(if kind == 0 {
                            Kind::Open(v1::Open::default())
                        } else {
                            Kind::Click(v1::Click { url: "https://shop.example/".into() })
                        }),
                    };
                    records.push(Record::event(&id, tenant, "broadside.v1.FeedbackEvent", event.encode_to_vec(), None));
                    events += 1;
                }
                // Behavioral events over the last year, kept away from the rule's 30- and 90-day edges.
                for _ in 0..random.below(2 * per_subscriber + 1) {
                    let kind = random.below(10);
                    let name = if kind < 4 {
                        "purchase"
                    } else if kind < 8 {
                        "login"
                    } else {
                        "page_view"
                    };
                    let time = away_from(now - (random.below(365 * 86_400) as i64) * 1000, now - 30 * DAY_MS);
                    let time = away_from(time, now - 90 * DAY_MS);
                    let mut properties = serde_json::Map::new();
                    if name == "purchase" {
                        let amount = 1 + random.below(200);
                        let sku = format!("{}-{}", if random.below(3) == 0 { "BK" } else { "TOY" }, random.below(500));
                        writeln!(behavior_csv, "{n}\t{name}\t{time}\t{{\"amount\": {amount}, \"sku\": \"{sku}\"}}")?;
                        properties.insert("amount".into(), amount.into());
                        properties.insert("sku".into(), sku.into());
                    } else {
                        writeln!(behavior_csv, "{n}\t{name}\t{time}\t{{}}")?;
                    }
                    let event = v1::BehaviorEvent {
                        tenant: tenant.into(),
                        subscriber_id: id.clone(),
                        event_id: format!("bench-{behaviors}"),
                        name: name.into(),
                        time: millis_to_timestamp(time),
                        properties: Some(broadside_proto::convert::json_to_struct(&properties)),
                    };
                    by_partition.entry(broadside_bus::partition_for(&id, partitions)).or_default().push(event);
                    behaviors += 1;
                }
                let subscriber = Subscriber {
                    tenant: tenant.into(),
                    id,
                    email,
                    display_name: format!("User {n}"),
                    attributes: attributes.as_object().cloned().unwrap_or_default(),
                    status: SubscriberStatus::Active,
                    lists: vec![(*list).into()],
                    subscriptions: Vec::new(),
                    create_time: created,
                    update_time: created,
                };
                rows.push(ImportRow { line: n + 1, subscriber });
            }
            let job = ImportJob { list_id: (*list).into(), ..Default::default() };
            store.import_batch(tenant, job, rows, UpsertOptions::default()).await?;
            let landed = backends.bus.publish(&topic, records).await?;
            note_written(&mut written, broadside_segmentation::live::FEEDBACK, landed);
            let mut behavior_records = Vec::new();
            for events in by_partition.into_values() {
                let mut events = events.into_iter().peekable();
                while events.peek().is_some() {
                    let chunk: Vec<_> = events.by_ref().take(1000).collect();
                    behavior_records.push(broadside_subscribers::behavior_record(tenant, chunk));
                }
            }
            let landed = backends.bus.publish(&behavior_topic, behavior_records).await?;
            note_written(&mut written, broadside_segmentation::live::BEHAVIOR, landed);
            next = end;
        }
    }
    people.flush()?;
    members.flush()?;
    views.flush()?;
    behavior_csv.flush()?;
    eprintln!(
        "seeded {count} subscribers, {events} engagement events and {behaviors} behavioral events in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // format_position prints next-offset minus one: store next offsets.
    let next: broadside_segmentation::live::Position = written.into_iter().map(|(p, o)| (p, o + 1)).collect();
    crate::outln!("position={}", broadside_segmentation::live::format_position(&next));
    Ok(())
}
