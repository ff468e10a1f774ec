//! `broadside demo`: every role in one process on embedded defaults, a
//! built-in sample list, one personalized campaign, and a check at the
//! capture folder that every recipient got exactly one message.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use broadside_config::Config;
use broadside_proto::v1::campaign_service_client::CampaignServiceClient;
use broadside_proto::v1::subscriber_service_client::SubscriberServiceClient;
use broadside_proto::v1::template_service_client::TemplateServiceClient;
use broadside_proto::v1::*;
use futures::StreamExt;

use crate::node::{Node, Role};
use crate::samples::{DEMO_POSTAL_ADDRESS, sample_subscriber, sample_template};

/// What the capture folder holds.
#[derive(Debug, Default)]
pub struct CaptureCount {
    pub files: usize,
    /// Message-ID → number of files carrying it.
    pub by_message_id: HashMap<String, usize>,
}

impl CaptureCount {
    pub fn unique(&self) -> usize {
        self.by_message_id.len()
    }

    pub fn duplicates(&self) -> usize {
        self.by_message_id.values().map(|n| n - 1).sum()
    }
}

/// Reads the Message-ID header of every `.eml` in `dir`.
pub fn count_capture(dir: &Path) -> anyhow::Result<CaptureCount> {
    let mut count = CaptureCount::default();
    if !dir.exists() {
        return Ok(count);
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|ext| ext != "eml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        count.files += 1;
        let id = header_value(&text, "message-id").unwrap_or_else(|| format!("(missing in {})", path.display()));
        *count.by_message_id.entry(id).or_default() += 1;
    }
    Ok(count)
}

/// The first value of header `name` (case-insensitive) in the header section, unfolded.
pub fn header_value(message: &str, name: &str) -> Option<String> {
    let headers = message.split("\r\n\r\n").next().unwrap_or(message);
    let unfolded = headers.replace("\r\n ", " ").replace("\r\n\t", " ");
    unfolded.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
    })
}

/// Options of `broadside demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub data_dir: Option<PathBuf>,
    pub subscribers: usize,
}

/// The demo's sending domain (its DKIM keys are generated on first run).
const DEMO_DOMAIN: &str = "broadside.localhost";

/// Runs the demo and returns whether every recipient got exactly one message.
pub async fn run(options: DemoOptions) -> anyhow::Result<bool> {
    let temp;
    let data_dir = match &options.data_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new().prefix("broadside-demo-").tempdir()?;
            temp.path().to_owned()
        }
    };
    let mut config = Config::load(None)?;
    config.data_dir = data_dir.clone();
    config.server.grpc_addr = "127.0.0.1:0".parse()?;
    config.server.admin_addr = "127.0.0.1:0".parse()?;
    config.server.http_addr = "127.0.0.1:0".parse()?;
    config.feedback.inbound_addr = "127.0.0.1:0".parse()?;
    config.store.url = None;
    config.smtp.url = None;
    config.validate()?;
    let outbox = data_dir.join("outbox");
    if count_capture(&outbox)?.files > 0 {
        bail!("--data-dir {}: the outbox already holds messages; use an empty folder", data_dir.display());
    }

    let started = Instant::now();
    if broadside_mail::dkim::DkimKeys::load(&config.dkim_dir())?.is_empty() {
        broadside_mail::dkim::keygen(&config.dkim_dir(), DEMO_DOMAIN, "demo")?;
        println!("generated DKIM keys for {DEMO_DOMAIN} (RSA and Ed25519) in {}", config.dkim_dir().display());
    }
    let node = Node::start(&config, &Role::ALL).await?;
    let key_file = crate::bootstrap::key_path(&data_dir);
    if node.admin_key_file.is_some() {
        println!("created tenant `default` and an admin API key in {}", key_file.display());
    }
    let result = drive(&node, &key_file, &outbox, options.subscribers).await;
    node.shutdown().await?;
    let summary = result?;
    let capture = count_capture(&outbox)?;
    let ok = summary.recipients == options.subscribers
        && capture.unique() == summary.recipients
        && capture.duplicates() == 0
        && summary.failed == 0;
    match options.data_dir {
        Some(_) => println!("data kept in {}", data_dir.display()),
        None => println!("data was in a temporary folder (pass --data-dir DIR to keep it)"),
    }
    println!(
        "demo: recipients={} delivered={} duplicates={} failed={} seconds={:.2}",
        summary.recipients,
        capture.unique(),
        capture.duplicates(),
        summary.failed,
        started.elapsed().as_secs_f64()
    );
    Ok(ok)
}

/// Counters of the finished demo campaign.
struct Summary {
    recipients: usize,
    failed: i64,
}

async fn drive(node: &Node, key_file: &Path, outbox: &Path, subscribers: usize) -> anyhow::Result<Summary> {
    let key =
        std::fs::read_to_string(key_file).with_context(|| format!("reading the admin key {}", key_file.display()))?;
    let args = crate::connect::ClientArgs {
        server: node.grpc_url(),
        api_key: Some(key),
        config: None,
        tls: Default::default(),
    };
    let channel = crate::connect::connect(&args).await?;
    let mut lists = SubscriberServiceClient::new(channel.clone());
    let mut templates = TemplateServiceClient::new(channel.clone());
    let mut campaigns = CampaignServiceClient::new(channel.clone());

    let list = lists
        .create_list(CreateListRequest {
            list: Some(MailingList {
                display_name: "Demo subscribers".into(),
                description: "Built-in sample".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await?
        .into_inner();
    let loaded = futures::stream::iter(0..subscribers)
        .map(|index| {
            let mut client = lists.clone();
            let subscriber = sample_subscriber(index, &list.name);
            async move {
                client
                    .create_subscriber(CreateSubscriberRequest {
                        subscriber: Some(subscriber),
                        request_id: format!("demo-{index}"),
                        ..Default::default()
                    })
                    .await
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    if let Some(Err(status)) = loaded.into_iter().find(|r| r.is_err()) {
        bail!("loading sample subscribers: {}", status.message());
    }
    println!("loaded {subscribers} sample subscribers into {} ({})", list.name, list.display_name);

    let template = templates
        .create_template(CreateTemplateRequest { template: Some(sample_template()), request_id: String::new() })
        .await?
        .into_inner();
    let campaign = campaigns
        .create_campaign(CreateCampaignRequest {
            campaign: Some(Campaign {
                display_name: "Weekly digest".into(),
                template: template.name.clone(),
                list: list.name.clone(),
                from_address: format!("digest@{DEMO_DOMAIN}"),
                postal_address: DEMO_POSTAL_ADDRESS.into(),
                from_name: "Broadside Demo".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await?
        .into_inner();
    let send_started = Instant::now();
    campaigns.start_campaign(StartCampaignRequest { name: campaign.name.clone() }).await?;
    println!("started {} to {}", campaign.name, list.name);

    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last_print = Instant::now();
    let finished = loop {
        let current = campaigns.get_campaign(GetCampaignRequest { name: campaign.name.clone() }).await?.into_inner();
        let stats = current.stats.unwrap_or_default();
        if current.state == CampaignState::Completed as i32 {
            break current;
        }
        if Instant::now() > deadline {
            bail!("campaign did not complete within 10 minutes: {stats:?}");
        }
        if last_print.elapsed() > Duration::from_secs(2) {
            println!("  sending: {}/{} delivered", stats.delivered, stats.recipients);
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let send_seconds = send_started.elapsed().as_secs_f64();
    let stats = finished.stats.unwrap_or_default();
    let capture = count_capture(outbox)?;
    let rate = stats.delivered as f64 / send_seconds.max(0.001);
    println!("campaign {} completed in {send_seconds:.2}s ({rate:.0} msg/s)", finished.name);
    println!("captured {} messages in {} ({} unique Message-IDs)", capture.files, outbox.display(), capture.unique());
    if let Some(example) = first_message(outbox)? {
        println!("example: To: {}", header_value(&example, "to").unwrap_or_default());
        println!("         Subject: {}", decode_subject(&header_value(&example, "subject").unwrap_or_default()));
        let signatures = example.lines().filter(|l| l.starts_with("DKIM-Signature:")).count();
        println!("         Return-Path: {}", header_value(&example, "return-path").unwrap_or_default());
        println!("         DKIM signatures: {signatures}");
    }
    Ok(Summary { recipients: stats.recipients as usize, failed: stats.failed })
}

fn first_message(dir: &Path) -> anyhow::Result<Option<String>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    Ok(entries.first().map(std::fs::read_to_string).transpose()?)
}

/// Decodes `=?utf-8?b?...?=` words for display.
fn decode_subject(raw: &str) -> String {
    use base64::Engine;
    raw.split(' ')
        .map(|word| {
            word.strip_prefix("=?utf-8?b?")
                .and_then(|w| w.strip_suffix("?="))
                .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .unwrap_or_else(|| word.to_owned())
        })
        .collect::<Vec<_>>()
        .join(" ")
}
