//! `broadside feedback`: classify one message offline, or re-run the rules
//! over the stored messages (after a rule changed), and the feedback role's
//! wiring from the config.

use std::path::PathBuf;

use anyhow::Context;
use broadside_config::Config;
use broadside_feedback::{Feedback, FeedbackSettings};
use broadside_store::{DynStore, PageRequest};
use clap::Subcommand;

use crate::backends;

#[derive(Debug, Subcommand)]
pub enum FeedbackCommand {
    /// Print the verdict of one message (a bounce, DSN, ARF report or
    /// auto-reply) as JSON: recipient, status, class, diagnostic, reporting
    /// MTA and the rule that matched. Reads no store.
    Classify {
        /// The message as received (RFC 5322), e.g. a saved .eml file.
        file: PathBuf,
        /// The envelope recipient it was sent to (a VERP address), repeatable.
        #[arg(long)]
        rcpt: Vec<String>,
    },
    /// Re-run the classification rules over the stored messages and print
    /// every record whose verdict changes (works on the store named by the config).
    Reclassify {
        /// Only this tenant's records (default: every tenant, and the unattributed ones).
        #[arg(long)]
        tenant: Option<String>,
        /// Store the new classifications and apply the policy where it now
        /// calls for an action (suppress, unsubscribe) not taken before.
        #[arg(long)]
        apply: bool,
    },
}

/// The feedback role over `store` and `bus`, configured from `config`.
pub fn role(
    config: &Config,
    store: DynStore,
    bus: broadside_bus::DynBus,
    metrics: broadside_telemetry::Metrics,
) -> anyhow::Result<Feedback> {
    let settings = FeedbackSettings {
        topic_prefix: config.bus.topic_prefix.clone(),
        signer: backends::token_signer(config)?,
        bounce_domain: config.bounce_domain().to_owned(),
        domain: config.mail.domain.clone(),
        hostname: config.bounce_domain().to_owned(),
        config: config.feedback.clone(),
    };
    Ok(Feedback::new(store, bus, settings, metrics))
}

pub async fn run(config: &Config, command: FeedbackCommand) -> anyhow::Result<()> {
    match command {
        FeedbackCommand::Classify { file, rcpt } => {
            let raw = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let verdict = broadside_feedback::classify::classify(&raw, &rcpt);
            crate::outln!("{}", serde_json::to_string_pretty(&verdict)?);
        }
        FeedbackCommand::Reclassify { tenant, apply } => {
            let backends = backends::open(config).await?;
            let feedback = role(config, backends.store.clone(), backends.bus.clone(), Default::default())?;
            let tenants = match tenant {
                Some(tenant) => vec![tenant],
                None => {
                    let mut all: Vec<String> = backends.store.list_tenants().await?.into_iter().map(|t| t.id).collect();
                    all.push(String::new());
                    all
                }
            };
            let (mut seen, mut changed) = (0u64, 0u64);
            for tenant in tenants {
                let mut token = String::new();
                loop {
                    let page = backends.store.list_feedback(&tenant, None, true, PageRequest::new(200, &token)).await?;
                    for record in page.items {
                        seen += 1;
                        if let Some(update) = feedback.reclassify(&record, apply).await? {
                            changed += 1;
                            crate::outln!(
                                "{}\t{}\t{} {} ({}) -> {} {} ({})\t{}",
                                if tenant.is_empty() { "-" } else { &tenant },
                                record.id,
                                record.kind,
                                record.class,
                                record.rule,
                                update.kind,
                                update.class,
                                update.rule,
                                update.verdict
                            );
                        }
                    }
                    match page.next_token {
                        Some(next) => token = next,
                        None => break,
                    }
                }
            }
            let what = if apply { "changed" } else { "would change (run with --apply to store)" };
            eprintln!("{seen} stored messages reclassified, {changed} {what}");
        }
    }
    Ok(())
}
