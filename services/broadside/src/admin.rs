//! Operator commands that work on the store directly (like `migrate`):
//! tenants and API keys. They need the config of the deployment, not a key:
//! whoever holds the store credentials is the root of trust.

use anyhow::bail;
use broadside_config::Config;
use broadside_store::{Tenant, now_millis};
use clap::Subcommand;

use crate::backends;

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant and print an admin key for it (shown once).
    Create {
        /// Tenant id: lowercase letters, digits and '-'.
        id: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Show every tenant.
    List,
    /// Let a tenant's campaigns use the transactional stream (exempt from the
    /// unsubscribe-link and postal-address rules), or stop it with --off.
    AllowTransactional {
        id: String,
        #[arg(long)]
        off: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key and print it (shown once, only its hash is stored).
    Create {
        #[arg(long, default_value = broadside_store::DEFAULT_TENANT)]
        tenant: String,
        /// Comma-separated: admin, subscribers:write, campaigns:write, read.
        #[arg(long, default_value = "read")]
        scopes: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Show a tenant's keys (never their secrets).
    List {
        #[arg(long, default_value = broadside_store::DEFAULT_TENANT)]
        tenant: String,
    },
    /// Revoke a key at once (`apiKeys/ID` or `ID`).
    Revoke {
        key: String,
        #[arg(long, default_value = broadside_store::DEFAULT_TENANT)]
        tenant: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print a tenant's audit log as JSON lines, oldest first.
    Export {
        #[arg(long, default_value = broadside_store::DEFAULT_TENANT)]
        tenant: String,
    },
}

pub async fn audit(config: &Config, command: AuditCommand) -> anyhow::Result<()> {
    let store = backends::open(config).await?.store;
    let AuditCommand::Export { tenant } = command;
    let mut token = String::new();
    loop {
        let page = store.list_audit(&tenant, broadside_store::PageRequest::new(1000, &token)).await?;
        for entry in &page.items {
            crate::outln!("{}", serde_json::to_string(entry)?);
        }
        match page.next_token {
            Some(next) => token = next,
            None => return Ok(()),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum EncryptionCommand {
    /// Re-wrap every tenant key with the current master key (after moving
    /// `security.master_key_file` to a new key and the old one to
    /// `security.old_master_key_files`). Rows are not touched.
    Rewrap,
    /// Give a tenant a new active data key; rows sealed with older keys stay
    /// readable until `reencrypt` moves them.
    Rotate {
        #[arg(long, default_value = broadside_store::DEFAULT_TENANT)]
        tenant: String,
    },
    /// Re-seal a tenant's rows still sealed with an older data key, in
    /// batches (safe to interrupt and run again).
    Reencrypt {
        #[arg(long, default_value = broadside_store::DEFAULT_TENANT)]
        tenant: String,
        #[arg(long, default_value_t = 5000)]
        batch: usize,
    },
}

pub async fn encryption(config: &Config, command: EncryptionCommand) -> anyhow::Result<()> {
    let store = backends::open(config).await?.store;
    match command {
        EncryptionCommand::Rewrap => {
            let count = store.rewrap_keys().await?;
            crate::outln!("re-wrapped {count} keys with master key {:?}", backends::master_keys(config)?.current().id);
        }
        EncryptionCommand::Rotate { tenant } => {
            let id = store.rotate_data_key(&tenant).await?;
            crate::outln!(
                "tenant {tenant}: data key {id} is now active; run `broadside encryption reencrypt --tenant {tenant}`"
            );
        }
        EncryptionCommand::Reencrypt { tenant, batch } => {
            let mut total = 0;
            loop {
                let done = store.reencrypt(&tenant, batch.max(1)).await?;
                if done == 0 {
                    break;
                }
                total += done;
                eprintln!("re-sealed {total} values so far");
            }
            crate::outln!("tenant {tenant}: {total} values re-sealed with the active data key");
        }
    }
    Ok(())
}

fn valid_tenant_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !id.starts_with('-')
}

pub async fn tenants(config: &Config, command: TenantsCommand) -> anyhow::Result<()> {
    let store = backends::open(config).await?.store;
    match command {
        TenantsCommand::Create { id, name } => {
            if !valid_tenant_id(&id) {
                bail!("tenant id {id:?}: use 1 to 63 lowercase letters, digits and '-' (not first)");
            }
            let display_name = if name.is_empty() { id.clone() } else { name };
            let tenant = Tenant { id: id.clone(), display_name, create_time: now_millis(), allow_transactional: false };
            store.create_tenant(tenant).await?;
            let key = broadside_auth::generate(&id, vec![broadside_store::Scope::Admin], "created with the tenant");
            store.create_api_key(key.record.clone()).await?;
            broadside_auth::audit_cli(&store, &id, "tenant.create", &format!("tenants/{id}"), serde_json::json!({}))
                .await?;
            let resource = format!("apiKeys/{}", key.record.id);
            broadside_auth::audit_cli(
                &store,
                &id,
                "api_key.create",
                &resource,
                serde_json::json!({ "scopes": ["admin"] }),
            )
            .await?;
            crate::outln!("tenant {id} created");
            crate::outln!("admin key (shown once, store it now): {}", key.secret);
        }
        TenantsCommand::AllowTransactional { id, off } => {
            if !store.set_allow_transactional(&id, !off).await? {
                bail!("tenant {id:?} does not exist");
            }
            let detail = serde_json::json!({ "allow_transactional": !off });
            broadside_auth::audit_cli(&store, &id, "tenant.update", &format!("tenants/{id}"), detail).await?;
            crate::outln!("tenant {id}: transactional stream {}", if off { "not allowed" } else { "allowed" });
        }
        TenantsCommand::List => {
            for tenant in store.list_tenants().await? {
                crate::outln!("{}\t{}", tenant.id, tenant.display_name);
            }
        }
    }
    Ok(())
}

pub async fn keys(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    let store = backends::open(config).await?.store;
    match command {
        KeysCommand::Create { tenant, scopes, description } => {
            let scopes =
                broadside_subscribers::parse_scopes("--scopes", &[scopes]).map_err(|e| anyhow::anyhow!("{e}"))?;
            if store.get_tenant(&tenant).await?.is_none() {
                bail!("--tenant {tenant:?} does not exist (create it with `broadside tenants create {tenant}`)");
            }
            let key = broadside_auth::generate(&tenant, scopes, &description);
            store.create_api_key(key.record.clone()).await?;
            let scopes: Vec<&str> = key.record.scopes.iter().map(|s| s.as_str()).collect();
            let resource = format!("apiKeys/{}", key.record.id);
            broadside_auth::audit_cli(
                &store,
                &tenant,
                "api_key.create",
                &resource,
                serde_json::json!({ "scopes": scopes }),
            )
            .await?;
            eprintln!("key apiKeys/{} created for tenant {tenant}; it is shown only once:", key.record.id);
            crate::outln!("{}", key.secret);
        }
        KeysCommand::List { tenant } => {
            for key in store.list_api_keys(&tenant).await? {
                let scopes: Vec<&str> = key.scopes.iter().map(|s| s.as_str()).collect();
                let state = if key.revoke_time > 0 { "revoked" } else { "active" };
                crate::outln!("apiKeys/{}\t{state}\t{}\t{}", key.id, scopes.join(","), key.description);
            }
        }
        KeysCommand::Revoke { key, tenant } => {
            let id = key.strip_prefix("apiKeys/").unwrap_or(&key);
            if !store.revoke_api_key(&tenant, id).await? {
                bail!("apiKeys/{id} is not an active key of tenant {tenant}");
            }
            broadside_auth::audit_cli(
                &store,
                &tenant,
                "api_key.revoke",
                &format!("apiKeys/{id}"),
                serde_json::json!({}),
            )
            .await?;
            crate::outln!("apiKeys/{id} revoked");
        }
    }
    Ok(())
}
