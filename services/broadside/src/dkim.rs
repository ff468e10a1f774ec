//! `broadside dkim`: key generation and a check of what a node would sign
//! with. Keys live in `mail.dkim_dir` as `<domain>/<selector>.pem`.

use std::path::PathBuf;

use broadside_config::Config;
use broadside_mail::dkim::{DkimKeys, keygen, txt_strings};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum DkimCommand {
    /// Write an RSA-2048 key (selector S) and an Ed25519 key (selector
    /// S-ed25519) for a sending domain and print the DNS TXT records.
    Keygen {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        selector: String,
        /// Where to write; default `mail.dkim_dir` of the config.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// List the keys a node with this config signs with.
    List,
}

pub fn run(config: &Config, command: DkimCommand) -> anyhow::Result<()> {
    match command {
        DkimCommand::Keygen { domain, selector, dir } => {
            let dir = dir.unwrap_or_else(|| config.dkim_dir());
            let keys = keygen(&dir, &domain, &selector)?;
            for key in &keys {
                eprintln!("wrote {} ({})", key.path.display(), key.algorithm);
            }
            crate::outln!("; publish these TXT records, then restart or roll the senders");
            for key in &keys {
                crate::outln!("{}. IN TXT ( {} )", key.dns_name, txt_strings(&key.dns_value));
            }
        }
        DkimCommand::List => {
            let dir = config.dkim_dir();
            let keys = DkimKeys::load(&dir)?;
            if keys.is_empty() {
                crate::outln!("no DKIM keys in {}", dir.display());
            }
            for key in keys.describe() {
                crate::outln!("{key}");
            }
        }
    }
    Ok(())
}
