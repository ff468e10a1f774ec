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
    /// Print the verdict of a message (a bounce, DSN, ARF report or
    /// auto-reply) as JSON: every recipient with its status, reason, `hard`
    /// and diagnostic, the reporting MTA and the rule that matched. Given
    /// several files or a directory, one JSON line per message (`file`
    /// added). Reads no store.
    Classify {
        /// Messages as received (RFC 5322), e.g. saved .eml files, or directories of them.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The envelope recipient it was sent to (a VERP address), repeatable.
        #[arg(long)]
        rcpt: Vec<String>,
        /// Print only totals: `classify: files=N parsed=N with_recipient=N
        /// with_status=N msgs_per_s=R`, then the count of each reason.
        #[arg(long)]
        summary: bool,
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

/// The feedback role's state over `store` and `bus`, for the offline commands.
pub fn role(
    config: &Config,
    store: DynStore,
    bus: broadside_bus::DynBus,
    metrics: broadside_telemetry::Metrics,
) -> anyhow::Result<Feedback> {
    let settings = FeedbackSettings::from_config(config, backends::token_signer(config)?);
    Ok(Feedback::new(store, bus, settings, metrics))
}

pub async fn run(config: &Config, command: FeedbackCommand) -> anyhow::Result<()> {
    match command {
        FeedbackCommand::Classify { files, rcpt, summary } => classify_files(&files, &rcpt, summary)?,
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

/// Every file named, directories walked (`.eml` files, sorted).
fn message_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found = Vec::new();
            let mut dirs = vec![path.clone()];
            while let Some(dir) = dirs.pop() {
                for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
                    let entry = entry.with_context(|| format!("reading {}", dir.display()))?.path();
                    if entry.is_dir() {
                        dirs.push(entry);
                    } else if entry.extension().is_some_and(|e| e.eq_ignore_ascii_case("eml")) {
                        found.push(entry);
                    }
                }
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// `feedback classify`: one verdict as pretty JSON, several as JSON lines, or a summary.
fn classify_files(paths: &[PathBuf], rcpt: &[String], summary: bool) -> anyhow::Result<()> {
    use broadside_feedback::classify::{Kind, classify};
    let files = message_files(paths)?;
    let mut messages = Vec::with_capacity(files.len());
    for file in &files {
        messages.push(std::fs::read(file).with_context(|| format!("reading {}", file.display()))?);
    }
    if !summary {
        if let ([path], [raw]) = (paths, messages.as_slice())
            && !path.is_dir()
        {
            crate::outln!("{}", serde_json::to_string_pretty(&classify(raw, rcpt))?);
            return Ok(());
        }
        for (file, raw) in files.iter().zip(&messages) {
            let mut line = serde_json::to_value(classify(raw, rcpt))?;
            line["file"] = file.display().to_string().into();
            crate::outln!("{line}");
        }
        return Ok(());
    }
    let started = std::time::Instant::now();
    let verdicts: Vec<_> = messages.iter().map(|raw| classify(raw, rcpt)).collect();
    // A small corpus is classified again until half a second has passed, so the rate is not noise.
    let mut classified = verdicts.len();
    while started.elapsed().as_secs_f64() < 0.5 && !messages.is_empty() {
        for raw in &messages {
            std::hint::black_box(classify(raw, rcpt));
            classified += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let parsed = verdicts.iter().filter(|v| v.kind != Kind::Unknown).count();
    let with_recipient = verdicts.iter().filter(|v| !v.recipient.is_empty()).count();
    let with_status = verdicts.iter().filter(|v| !v.status.is_empty()).count();
    crate::outln!(
        "classify: files={} parsed={parsed} with_recipient={with_recipient} with_status={with_status} msgs_per_s={:.0}",
        files.len(),
        classified as f64 / seconds
    );
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for verdict in &verdicts {
        let name = if verdict.kind == Kind::Unknown { "unknown_message" } else { verdict.reason.as_str() };
        *reasons.entry(name.to_owned()).or_default() += 1;
    }
    for (reason, count) in reasons {
        crate::outln!("reason: {reason}={count}");
    }
    Ok(())
}
