//! Client subcommands: talk gRPC to a running `broadside serve`.
//! Errors print the server's message (which names the field) and exit non-zero.

use std::time::Duration;

use anyhow::Context;
use broadside_proto::v1::campaign_service_client::CampaignServiceClient;
use broadside_proto::v1::subscriber_service_client::SubscriberServiceClient;
use broadside_proto::v1::template_service_client::TemplateServiceClient;
use broadside_proto::v1::*;
use clap::Subcommand;

use crate::connect::plain;
pub use crate::connect::{Authed, Bearer, ClientArgs, ClientTls, connect};

#[derive(Debug, Subcommand)]
pub enum ListsCommand {
    /// Create a list; prints its resource name.
    Create {
        display_name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// New members get a confirmation message and are mailed only after they confirm.
        #[arg(long)]
        double_opt_in: bool,
    },
    /// Show every list.
    List,
}

#[derive(Debug, Subcommand)]
pub enum SubscribersCommand {
    /// Add (or update) a subscriber and put it on lists.
    Add {
        email: String,
        /// `lists/ID`; repeat for several lists.
        #[arg(long = "list")]
        lists: Vec<String>,
        #[arg(long, default_value = "")]
        name: String,
        /// `key=value` attribute; numbers and true/false are typed. Repeatable.
        #[arg(long = "attr")]
        attributes: Vec<String>,
    },
    /// List subscribers, of one list with --list.
    List {
        #[arg(long)]
        list: Option<String>,
    },
    /// Import a CSV file (header row with an `email` column) into a list, with a progress bar.
    Import(crate::import::ImportArgs),
    /// Print everything stored about a subscriber as JSON (needs an admin key).
    Export { email: String },
    /// Erase a subscriber's personal data, keeping a hashed suppression (needs an admin key).
    Erase { email: String },
    /// Load N generated sample subscribers into a list (for trials and benchmarks).
    AddSample {
        #[arg(long)]
        list: String,
        #[arg(long)]
        count: usize,
        /// Requests in flight.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum TemplatesCommand {
    /// Create a template from inline text or files.
    Create {
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long)]
        subject: String,
        #[arg(long, conflicts_with = "html_file")]
        html: Option<String>,
        #[arg(long)]
        html_file: Option<std::path::PathBuf>,
        #[arg(long, conflicts_with = "text_file")]
        text: Option<String>,
        #[arg(long)]
        text_file: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CampaignsCommand {
    /// Create a draft campaign.
    Create {
        #[arg(long, default_value = "")]
        name: String,
        /// `templates/ID`.
        #[arg(long)]
        template: String,
        /// `lists/ID`.
        #[arg(long)]
        list: String,
        #[arg(long)]
        from: String,
        #[arg(long, default_value = "")]
        from_name: String,
        /// Campaign-wide limit in messages per second across all senders (0: none).
        #[arg(long, default_value_t = 0.0)]
        max_per_second: f64,
        /// The sender's postal address, shown by `{{ postal_address }}` (required for marketing).
        #[arg(long, default_value = "")]
        postal_address: String,
        /// Transactional stream: exempt from the unsubscribe and address rules, if the tenant allows it.
        #[arg(long)]
        transactional: bool,
        /// Schedule: `start` arms the campaign and sending begins at this RFC 3339 time.
        #[arg(long)]
        send_at: Option<String>,
        /// Daily window `HH:MM-HH:MM ZONE`, e.g. "09:00-17:00 Europe/Paris".
        #[arg(long, default_value = "")]
        send_window: String,
        /// `segments/ID`: only the list's members that match it.
        #[arg(long, default_value = "")]
        segment: String,
    },
    /// Report the compliance rules (unsubscribe link, postal address, ...) for a campaign.
    Check { campaign: String },
    /// Stop sending for now (senders notice within a second); `resume` continues.
    Pause { campaign: String },
    /// Continue a paused campaign.
    Resume { campaign: String },
    /// Stop a campaign for good; unsent recipients are not mailed.
    Cancel { campaign: String },
    /// Start sending a draft.
    Start { campaign: String },
    /// Show state and counters; --wait polls until the campaign completes.
    Get {
        campaign: String,
        #[arg(long)]
        wait: bool,
    },
}

fn parse_attribute(text: &str) -> anyhow::Result<(String, serde_json::Value)> {
    let (key, value) = text.split_once('=').with_context(|| format!("--attr {text:?}: expected key=value"))?;
    let value = serde_json::from_str::<serde_json::Value>(value)
        .ok()
        .filter(|v| v.is_number() || v.is_boolean())
        .unwrap_or_else(|| serde_json::Value::String(value.to_owned()));
    Ok((key.to_owned(), value))
}

pub async fn lists(args: &ClientArgs, command: ListsCommand) -> anyhow::Result<()> {
    let mut client = SubscriberServiceClient::new(connect(args).await?);
    match command {
        ListsCommand::Create { display_name, description, double_opt_in } => {
            let opt_in = if double_opt_in { OptIn::Double } else { OptIn::Single } as i32;
            let list = client
                .create_list(CreateListRequest {
                    list: Some(MailingList { display_name, description, opt_in, ..Default::default() }),
                    request_id: String::new(),
                })
                .await
                .map_err(plain)?
                .into_inner();
            crate::outln!("{}\t{}", list.name, list.display_name);
        }
        ListsCommand::List => {
            let mut token = String::new();
            loop {
                let page = client
                    .list_lists(ListListsRequest { page_size: 1000, page_token: token })
                    .await
                    .map_err(plain)?
                    .into_inner();
                for list in page.lists {
                    crate::outln!("{}\t{}", list.name, list.display_name);
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
        }
    }
    Ok(())
}

pub async fn subscribers(args: &ClientArgs, command: SubscribersCommand) -> anyhow::Result<()> {
    let mut client = SubscriberServiceClient::new(connect(args).await?);
    match command {
        SubscribersCommand::Add { email, lists, name, attributes } => {
            let mut map = serde_json::Map::new();
            for attribute in &attributes {
                let (key, value) = parse_attribute(attribute)?;
                map.insert(key, value);
            }
            let subscriber = Subscriber {
                email,
                display_name: name,
                lists,
                attributes: Some(broadside_proto::convert::json_to_struct(&map)),
                ..Default::default()
            };
            let stored = client
                .create_subscriber(CreateSubscriberRequest { subscriber: Some(subscriber), ..Default::default() })
                .await
                .map_err(plain)?
                .into_inner();
            crate::outln!("{}\t{}", stored.name, stored.email);
        }
        SubscribersCommand::Import(import) => return crate::import::run(args, import).await,
        SubscribersCommand::Export { email } => {
            let export = client
                .export_subscriber(ExportSubscriberRequest { email, ..Default::default() })
                .await
                .map_err(plain)?
                .into_inner();
            crate::outln!("{}", export.json);
        }
        SubscribersCommand::Erase { email } => {
            let erased = client
                .erase_subscriber(EraseSubscriberRequest { email, ..Default::default() })
                .await
                .map_err(plain)?
                .into_inner();
            crate::outln!("erased; suppressed by hash {}", erased.email_hash);
        }
        SubscribersCommand::AddSample { list, count, concurrency } => {
            use futures::StreamExt;
            let results = futures::stream::iter(0..count)
                .map(|index| {
                    let mut client = client.clone();
                    let subscriber = crate::samples::sample_subscriber(index, &list);
                    let request_id = format!("sample-{list}-{index}");
                    async move {
                        // Rate limited: wait and retry (the request id keeps the retry idempotent).
                        let mut pause = Duration::from_millis(100);
                        loop {
                            let request = CreateSubscriberRequest {
                                subscriber: Some(subscriber.clone()),
                                request_id: request_id.clone(),
                                ..Default::default()
                            };
                            match client.create_subscriber(request).await {
                                Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                                    tokio::time::sleep(pause).await;
                                    pause = (pause * 2).min(Duration::from_secs(2));
                                }
                                result => break result,
                            }
                        }
                    }
                })
                .buffer_unordered(concurrency.max(1))
                .collect::<Vec<_>>()
                .await;
            if let Some(Err(status)) = results.into_iter().find(|r| r.is_err()) {
                return Err(plain(status));
            }
            crate::outln!("added {count} sample subscribers to {list}");
        }
        SubscribersCommand::List { list } => {
            let mut token = String::new();
            loop {
                let request = ListSubscribersRequest {
                    parent: list.clone().unwrap_or_default(),
                    page_size: 1000,
                    page_token: token,
                };
                let page = client.list_subscribers(request).await.map_err(plain)?.into_inner();
                for subscriber in page.subscribers {
                    crate::outln!("{}\t{}\t{}", subscriber.name, subscriber.email, subscriber.display_name);
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
        }
    }
    Ok(())
}

fn inline_or_file(inline: Option<String>, file: Option<std::path::PathBuf>, flag: &str) -> anyhow::Result<String> {
    match (inline, file) {
        (Some(text), _) => Ok(text),
        (None, Some(path)) => {
            std::fs::read_to_string(&path).with_context(|| format!("--{flag}-file {}", path.display()))
        }
        (None, None) => Ok(String::new()),
    }
}

pub async fn templates(args: &ClientArgs, command: TemplatesCommand) -> anyhow::Result<()> {
    let mut client = TemplateServiceClient::new(connect(args).await?);
    let TemplatesCommand::Create { name, subject, html, html_file, text, text_file } = command;
    let template = Template {
        display_name: name,
        subject,
        html_body: inline_or_file(html, html_file, "html")?,
        text_body: inline_or_file(text, text_file, "text")?,
        ..Default::default()
    };
    let stored = client
        .create_template(CreateTemplateRequest { template: Some(template), request_id: String::new() })
        .await
        .map_err(plain)?
        .into_inner();
    crate::outln!("{}\tversion {}", stored.name, stored.version);
    Ok(())
}

fn state_name(state: i32) -> String {
    CampaignState::try_from(state)
        .map(|s| s.as_str_name().trim_start_matches("CAMPAIGN_STATE_").to_lowercase())
        .unwrap_or_else(|_| "unknown".into())
}

fn print_campaign(campaign: &Campaign) {
    let stats = campaign.stats.unwrap_or_default();
    crate::outln!(
        "{}\tstate={} recipients={} delivered={} failed={} deferred={}",
        campaign.name,
        state_name(campaign.state),
        stats.recipients,
        stats.delivered,
        stats.failed,
        stats.deferred
    );
}

pub async fn campaigns(args: &ClientArgs, command: CampaignsCommand) -> anyhow::Result<()> {
    let mut client = CampaignServiceClient::new(connect(args).await?);
    match command {
        CampaignsCommand::Create {
            name,
            template,
            list,
            from,
            from_name,
            max_per_second,
            postal_address,
            transactional,
            send_at,
            send_window,
            segment,
        } => {
            let send_at = send_at
                .map(|text| {
                    text.parse::<jiff::Timestamp>()
                        .map(|t| prost_types::Timestamp { seconds: t.as_second(), nanos: t.subsec_nanosecond() })
                        .map_err(|e| anyhow::anyhow!("--send-at {text:?}: not an RFC 3339 time ({e})"))
                })
                .transpose()?;
            let stream = if transactional { CampaignStream::Transactional } else { CampaignStream::Marketing };
            let campaign = Campaign {
                display_name: name,
                template,
                list,
                from_address: from,
                from_name,
                max_messages_per_second: max_per_second,
                postal_address,
                stream: stream as i32,
                send_at,
                send_window,
                segment,
                ..Default::default()
            };
            let stored = client
                .create_campaign(CreateCampaignRequest { campaign: Some(campaign), request_id: String::new() })
                .await
                .map_err(plain)?
                .into_inner();
            print_campaign(&stored);
        }
        CampaignsCommand::Start { campaign } => {
            let started =
                client.start_campaign(StartCampaignRequest { name: campaign }).await.map_err(plain)?.into_inner();
            print_campaign(&started);
        }
        CampaignsCommand::Pause { campaign } => {
            print_campaign(
                &client.pause_campaign(PauseCampaignRequest { name: campaign }).await.map_err(plain)?.into_inner(),
            );
        }
        CampaignsCommand::Resume { campaign } => {
            let resumed = client.resume_campaign(ResumeCampaignRequest { name: campaign }).await.map_err(plain)?;
            print_campaign(&resumed.into_inner());
        }
        CampaignsCommand::Cancel { campaign } => {
            print_campaign(
                &client.cancel_campaign(CancelCampaignRequest { name: campaign }).await.map_err(plain)?.into_inner(),
            );
        }
        CampaignsCommand::Check { campaign } => {
            let report = client
                .check_campaign(CheckCampaignRequest { name: campaign.clone() })
                .await
                .map_err(plain)?
                .into_inner();
            for check in &report.checks {
                let mark = match check.result.as_str() {
                    "passed" => "ok  ",
                    "failed" => "FAIL",
                    _ => "skip",
                };
                crate::outln!("{mark} {:<26} {}", check.rule, check.message);
            }
            crate::outln!("{campaign}: {}", if report.passed { "passes" } else { "FAILS" });
        }
        CampaignsCommand::Get { campaign, wait } => loop {
            let current =
                client.get_campaign(GetCampaignRequest { name: campaign.clone() }).await.map_err(plain)?.into_inner();
            print_campaign(&current);
            let finished = matches!(
                CampaignState::try_from(current.state),
                Ok(CampaignState::Completed | CampaignState::Cancelled | CampaignState::Draft)
            );
            if !wait || finished {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        },
    }
    Ok(())
}
