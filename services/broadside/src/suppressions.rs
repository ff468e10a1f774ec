//! `broadside suppressions`: list a tenant's suppressions with their reasons,
//! and lift in one command the bounce suppressions made for reasons that
//! are not about the address (a block list, a spam filter, a full mailbox),
//! each removal audited with the reason it was lifted for.

use broadside_proto::v1::subscriber_service_client::SubscriberServiceClient;
use broadside_proto::v1::*;
use clap::Subcommand;

use crate::connect::{ClientArgs, connect, plain};

/// Bounce reasons that say the address itself is bad: never lifted in bulk.
const ADDRESS_REASONS: &[&str] = &["user_unknown", "host_unknown", "has_moved", "not_accepted"];

#[derive(Debug, Subcommand)]
pub enum SuppressionsCommand {
    /// Print every suppression: target, reason, bounce reason, list, time.
    List {
        /// Only this reason: `hard_bounce`, `complaint`, `unsubscribe`,
        /// `manual`, `erased`, or a bounce reason such as `blocked`.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Remove every bounce suppression made for this bounce reason (e.g.
    /// `blocked` after a block list delisted you, `mailbox_full`). Address
    /// reasons (user_unknown, host_unknown, has_moved, not_accepted) and
    /// complaints or unsubscribes are never lifted here.
    Lift {
        #[arg(long)]
        reason: String,
        /// Only print what would be lifted.
        #[arg(long)]
        dry_run: bool,
    },
}

fn reason_name(reason: i32) -> String {
    SuppressionReason::try_from(reason)
        .map(|r| r.as_str_name().trim_start_matches("SUPPRESSION_REASON_").to_ascii_lowercase())
        .unwrap_or_else(|_| reason.to_string())
}

/// Every suppression matching `reason` (all when empty), page by page.
async fn matching(
    client: &mut SubscriberServiceClient<crate::connect::Authed>,
    reason: &str,
) -> anyhow::Result<Vec<Suppression>> {
    let (mut found, mut token) = (Vec::new(), String::new());
    loop {
        let request = ListSuppressionsRequest { page_size: 1000, page_token: token, reason: reason.to_owned() };
        let page = client.list_suppressions(request).await.map_err(plain)?.into_inner();
        found.extend(page.suppressions);
        if page.next_page_token.is_empty() {
            return Ok(found);
        }
        token = page.next_page_token;
    }
}

/// Refuses what `lift` must not undo, before anything is contacted.
fn check_liftable(reason: &str) -> anyhow::Result<()> {
    let bounce_reasons = broadside_config::BOUNCE_REASONS;
    if ADDRESS_REASONS.contains(&reason) {
        anyhow::bail!(
            "--reason {reason}: the address itself is bad, so these stay suppressed \
             (remove one with RemoveSuppression if you know it works again)"
        );
    }
    if !bounce_reasons.contains(&reason) {
        anyhow::bail!(
            "--reason {reason}: not a bounce reason (lift only undoes bounce suppressions; known: {})",
            bounce_reasons.join(", ")
        );
    }
    Ok(())
}

pub async fn run(args: &ClientArgs, command: SuppressionsCommand) -> anyhow::Result<()> {
    if let SuppressionsCommand::Lift { reason, .. } = &command {
        check_liftable(reason)?;
    }
    let mut client = SubscriberServiceClient::new(connect(args).await?);
    match command {
        SuppressionsCommand::List { reason } => {
            for s in matching(&mut client, reason.as_deref().unwrap_or_default()).await? {
                let time = s.create_time.map(|t| t.seconds).unwrap_or_default();
                let target = if s.target.is_empty() { format!("(erased {})", s.email_hash) } else { s.target };
                let detail = if s.detail.is_empty() { "-" } else { &s.detail };
                let list = if s.list.is_empty() { "-" } else { &s.list };
                crate::outln!("{target}\t{}\t{detail}\t{list}\t{time}", reason_name(s.reason));
            }
        }
        SuppressionsCommand::Lift { reason, dry_run } => {
            let found: Vec<Suppression> = matching(&mut client, &reason)
                .await?
                .into_iter()
                .filter(|s| s.reason == SuppressionReason::HardBounce as i32 && s.detail == reason)
                .collect();
            let mut lifted = 0;
            for s in &found {
                if s.target.is_empty() {
                    continue; // erased: the address is gone, and its suppression stays
                }
                if !dry_run {
                    let note = format!("suppressions lift --reason {reason}");
                    let request = RemoveSuppressionRequest { target: s.target.clone(), list: s.list.clone(), note };
                    client.remove_suppression(request).await.map_err(plain)?;
                }
                lifted += 1;
                crate::outln!("{}\t{}", s.target, if dry_run { "would lift" } else { "lifted" });
            }
            let what = if dry_run { "would be lifted (run without --dry-run)" } else { "lifted, each audited" };
            eprintln!("{lifted} suppressions for bounce reason {reason} {what}");
        }
    }
    Ok(())
}
