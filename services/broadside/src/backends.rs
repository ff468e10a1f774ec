//! Opens the store, bus, SMTP transport and token signer that the config names.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use broadside_bus::{DynBus, EmbeddedBus};
use broadside_config::{Config, SmtpUrl, StoreUrl};
use broadside_mail::token::TokenSigner;
use broadside_mail::transport::{RelayOptions, Transport};
use broadside_store::{DynStore, SqliteStore};

/// The backends one process uses.
#[derive(Clone)]
pub struct Backends {
    pub store: DynStore,
    pub bus: DynBus,
}

/// Opens (and migrates) the store and bus named by `store.url` and `bus.url`.
pub fn open(config: &Config) -> anyhow::Result<Backends> {
    let path = match config.store_url()? {
        StoreUrl::Sqlite(path) => path,
        StoreUrl::Scylla { .. } => {
            bail!("store.url: the scylla:// backend is not available in this build yet; use sqlite://PATH")
        }
    };
    let store =
        SqliteStore::open(&path).with_context(|| format!("store.url: cannot open sqlite://{}", path.display()))?;
    let bus = EmbeddedBus::open(&path, config.bus.partitions)
        .with_context(|| format!("bus.url: cannot open the embedded log in {}", path.display()))?;
    Ok(Backends { store: Arc::new(store), bus: Arc::new(bus) })
}

/// The transport named by `smtp.url`.
pub fn transport(config: &Config) -> anyhow::Result<Transport> {
    Ok(match config.smtp_url()? {
        SmtpUrl::Capture(dir) => Transport::capture(&dir)
            .with_context(|| format!("smtp.url: cannot create capture folder {}", dir.display()))?,
        SmtpUrl::Smtp { host, port, implicit_tls } => Transport::relay(&RelayOptions {
            host,
            port,
            implicit_tls,
            starttls: config.smtp.starttls.clone(),
            accept_invalid_certs: config.smtp.accept_invalid_certs,
            credentials: config.smtp.username.clone().zip(config.smtp.password.as_ref().map(|p| p.expose().to_owned())),
            pool_size: config.smtp.pool_size,
            timeout: Duration::from_secs(config.smtp.timeout_secs),
        })
        .map_err(|e| anyhow::anyhow!("smtp.url: {e}"))?,
    })
}

/// The token signer: `mail.token_key`, or a key generated once into `{data_dir}/token.key`.
/// Several processes must share one key, so distributed deployments set `mail.token_key`.
pub fn token_signer(config: &Config) -> anyhow::Result<TokenSigner> {
    if let Some(key) = &config.mail.token_key {
        return Ok(TokenSigner::new(&config.mail.token_key_id, key.expose().as_bytes()));
    }
    let path = config.data_dir.join("token.key");
    let key = read_or_create_key(&path)
        .with_context(|| format!("mail.token_key is unset and {} cannot be used", path.display()))?;
    Ok(TokenSigner::new(&config.mail.token_key_id, key.as_bytes()))
}

fn read_or_create_key(path: &Path) -> std::io::Result<String> {
    if let Ok(key) = std::fs::read_to_string(path) {
        return Ok(key.trim().to_owned());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let key = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &key)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::rename(&tmp, path)?;
    tracing::info!(path = %path.display(), "generated a token signing key (set mail.token_key to share one across processes)");
    Ok(key)
}

/// This sender's ledger identity: `sender.id`, else the host name.
pub fn sender_id(config: &Config) -> String {
    config.sender.id.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "sender".into())
    })
}
