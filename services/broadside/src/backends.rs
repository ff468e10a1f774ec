//! Opens the store, bus, SMTP transport and token signer that the config names.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use broadside_bus::PayloadCipher;
use broadside_bus::{DynBus, EmbeddedBus, KafkaBus, KafkaSettings, Topic};
use broadside_config::{BusUrl, Config, SmtpUrl, StoreUrl};
use broadside_mail::token::TokenSigner;
use broadside_mail::transport::{RelayOptions, Transport};
use broadside_store::crypto::{MasterKey, MasterKeys, TenantKeys};
use broadside_store::{DynStore, Retention, ScyllaStore, ScyllaUri, SqliteStore, StatementCounts};

/// The backends one process uses.
#[derive(Clone)]
pub struct Backends {
    pub store: DynStore,
    pub bus: DynBus,
    /// The statements the store sends, by kind (CQL stores only).
    pub statements: Option<StatementCounts>,
}

/// Opens the store and bus named by `store.url` and `bus.url`. The embedded
/// store migrates itself; a ScyllaDB keyspace must be migrated first
/// (`broadside migrate`), and its bus is Kafka.
pub async fn open(config: &Config) -> anyhow::Result<Backends> {
    let path = match config.store_url()? {
        StoreUrl::Sqlite(path) => path,
        // Config validation makes the bus Kafka here.
        StoreUrl::Scylla { .. } => {
            let store = open_scylla(config).await?;
            let statements = Some(store.statement_counts());
            return Ok(Backends { store: Arc::new(store), bus: Arc::new(kafka(config)?), statements });
        }
    };
    let store = SqliteStore::open(&path, master_keys(config)?)
        .with_context(|| format!("store.url: cannot open sqlite://{}", path.display()))?;
    let bus: DynBus = match config.bus_url()? {
        BusUrl::Embedded => {
            let keys = store.bus_keys().context("loading the embedded bus key")?;
            Arc::new(
                EmbeddedBus::open(&path, config.bus.partitions)
                    .with_context(|| format!("bus.url: cannot open the embedded log in {}", path.display()))?
                    .with_cipher(Arc::new(SealedPayloads(keys))),
            )
        }
        BusUrl::Kafka(_) => Arc::new(kafka(config)?),
    };
    Ok(Backends { store: Arc::new(store), bus, statements: None })
}

/// The `scylla://` URL of `store.url`, parsed with errors that name the option.
pub fn scylla_uri(config: &Config) -> anyhow::Result<ScyllaUri> {
    Ok(ScyllaUri::parse(config.store.url.as_deref().unwrap_or_default())?)
}

/// Connects to the migrated ScyllaDB keyspace of `store.url`.
async fn open_scylla(config: &Config) -> anyhow::Result<ScyllaStore> {
    let uri = scylla_uri(config)?;
    let retention =
        Retention { feedback_days: config.feedback.retention_days, behavior_days: config.behavior.retention_days };
    let store = ScyllaStore::connect(&uri, master_keys(config)?, retention)
        .await
        .with_context(|| format!("store.url: cannot open keyspace {} on {}", uri.keyspace, uri.hosts.join(",")))?;
    Ok(store)
}

/// `broadside migrate`: brings the store's schema up to date and says what it did.
pub async fn migrate_store(config: &Config) -> anyhow::Result<String> {
    match config.store_url()? {
        StoreUrl::Sqlite(path) => {
            SqliteStore::open(&path, master_keys(config)?)
                .with_context(|| format!("store.url: cannot open sqlite://{}", path.display()))?;
            Ok(format!("store sqlite://{} is at the current schema", path.display()))
        }
        StoreUrl::Scylla { .. } => {
            let uri = scylla_uri(config)?;
            let applied = ScyllaStore::migrate(&uri)
                .await
                .with_context(|| format!("migrating keyspace {} on {}", uri.keyspace, uri.hosts.join(",")))?;
            // Connecting prepares every statement: proof the schema fits this build.
            open_scylla(config).await?;
            Ok(match applied.as_slice() {
                [] => format!("keyspace {} was already at the current schema", uri.keyspace),
                versions => format!("keyspace {}: applied migrations {versions:?}", uri.keyspace),
            })
        }
    }
}

/// The master keys: `security.master_key_file` (or `{data_dir}/master.key`,
/// generated on first use) and `security.old_master_key_files`.
pub fn master_keys(config: &Config) -> anyhow::Result<MasterKeys> {
    let path = match &config.security.master_key_file {
        Some(path) => path.clone(),
        None => {
            let path = config.data_dir.join("master.key");
            if !path.exists() {
                std::fs::create_dir_all(&config.data_dir)
                    .with_context(|| format!("creating {}", config.data_dir.display()))?;
                MasterKey::generate_file(&path)?;
                tracing::info!(path = %path.display(), "generated the master key (set security.master_key_file to keep it elsewhere)");
            }
            path
        }
    };
    let current = MasterKey::from_file(&path, None).context("security.master_key_file")?;
    let older = config
        .security
        .old_master_key_files
        .iter()
        .map(|path| MasterKey::from_file(path, None))
        .collect::<Result<Vec<_>, _>>()
        .context("security.old_master_key_files")?;
    Ok(MasterKeys::new(current, older))
}

/// Embedded bus payloads sealed with the store's bus key.
struct SealedPayloads(Arc<TenantKeys>);

impl PayloadCipher for SealedPayloads {
    fn seal(&self, plain: &[u8]) -> Vec<u8> {
        self.0.seal(plain)
    }

    fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, broadside_bus::BusError> {
        self.0.open(sealed).map_err(|error| broadside_bus::BusError::failed("opening a sealed bus record", error))
    }
}

/// The Kafka bus named by `bus.url` (which must be `kafka://`).
pub fn kafka(config: &Config) -> anyhow::Result<KafkaBus> {
    let BusUrl::Kafka(bootstrap) = config.bus_url()? else { bail!("bus.url: not a kafka:// URL") };
    let mut from_files = Vec::new();
    for (property, path) in &config.bus.kafka_secret_files {
        let value = std::fs::read_to_string(path)
            .with_context(|| format!("bus.kafka_secret_files.{property}: cannot read {}", path.display()))?;
        from_files.push((property.clone(), value.trim_end_matches(['\r', '\n']).to_owned()));
    }
    KafkaBus::connect(KafkaSettings {
        bootstrap,
        partitions: config.bus.partitions,
        replication_factor: config.bus.replication_factor,
        session_timeout_ms: config.bus.session_timeout_ms,
        assignment_strategy: config.bus.assignment_strategy.clone(),
        client_id: broadside_sender::replica_id(config),
        properties: config
            .bus
            .kafka
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain(config.bus.kafka_secrets.iter().map(|(k, v)| (k.clone(), v.expose().to_owned())))
            .chain(from_files)
            .collect(),
    })
    .context("bus.url: cannot create the Kafka client")
}

/// Every topic name with the configured prefix.
pub fn topic_names(config: &Config) -> Vec<String> {
    Topic::ALL.iter().map(|t| t.name(&config.bus.topic_prefix)).collect()
}

/// Creates missing Kafka topics, retrying with backoff while the broker is
/// unreachable, and warns about topics with the wrong partition count.
pub async fn ensure_kafka_topics(config: &Config, give_up_after: Duration) -> anyhow::Result<()> {
    let bus = kafka(config)?;
    let deadline = std::time::Instant::now() + give_up_after;
    let mut delay = Duration::from_millis(500);
    loop {
        match bus.ensure_topics(&topic_names(config)).await {
            Ok(mismatched) => {
                for (topic, partitions) in mismatched {
                    tracing::warn!(%topic, partitions, expected = config.bus.partitions, "topic exists with a different partition count than bus.partitions");
                    eprintln!(
                        "warning: {topic} has {partitions} partitions, bus.partitions is {}",
                        config.bus.partitions
                    );
                }
                return Ok(());
            }
            Err(error) if std::time::Instant::now() < deadline => {
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot create topics yet, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                return Err(anyhow::anyhow!(error).context("bus.url: creating topics failed (is the broker up?)"));
            }
        }
    }
}

/// The transport named by `smtp.url` or `smtp.relays`.
pub fn transport(config: &Config) -> anyhow::Result<Transport> {
    let options = |host: String, port: u16, implicit_tls: bool, weight: u32| RelayOptions {
        host,
        port,
        implicit_tls,
        starttls: config.smtp.starttls.clone(),
        accept_invalid_certs: config.smtp.accept_invalid_certs,
        credentials: config.smtp.username.clone().zip(config.smtp.password.as_ref().map(|p| p.expose().to_owned())),
        pool_size: config.smtp.pool_size,
        timeout: Duration::from_secs(config.smtp.timeout_secs),
        weight,
    };
    let relays = config.smtp_relays()?;
    if !relays.is_empty() {
        let relays: Vec<RelayOptions> = relays
            .into_iter()
            .filter_map(|(url, weight)| match url {
                SmtpUrl::Smtp { host, port, implicit_tls } => Some(options(host, port, implicit_tls, weight)),
                SmtpUrl::Capture(_) => None,
            })
            .collect();
        return Transport::relays(&relays).map_err(|e| anyhow::anyhow!("smtp.relays: {e}"));
    }
    Ok(match config.smtp_url()? {
        SmtpUrl::Capture(dir) => Transport::capture(&dir)
            .with_context(|| format!("smtp.url: cannot create capture folder {}", dir.display()))?,
        SmtpUrl::Smtp { host, port, implicit_tls } => {
            Transport::relay(&options(host, port, implicit_tls, 1)).map_err(|e| anyhow::anyhow!("smtp.url: {e}"))?
        }
    })
}

/// The token signer: `mail.token_key`, or a key generated once into `{data_dir}/token.key`.
/// Several processes must share one key, so distributed deployments set `mail.token_key`.
/// Keys in `mail.old_token_keys` still verify links signed before a rotation.
pub fn token_signer(config: &Config) -> anyhow::Result<TokenSigner> {
    let mut signer = if let Some(key) = &config.mail.token_key {
        TokenSigner::new(&config.mail.token_key_id, key.expose().as_bytes())
    } else {
        let path = config.data_dir.join("token.key");
        let key = read_or_create_key(&path)
            .with_context(|| format!("mail.token_key is unset and {} cannot be used", path.display()))?;
        TokenSigner::new(&config.mail.token_key_id, key.as_bytes())
    };
    for (key_id, key) in &config.mail.old_token_keys {
        signer = signer.with_old_key(key_id, key.expose().as_bytes());
    }
    Ok(signer)
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

/// The DKIM keys of `mail.dkim_dir`, loaded once and shared by every role
/// that sends mail. No keys is allowed (a trial run) but said loudly.
pub fn dkim_keys(config: &Config) -> anyhow::Result<std::sync::Arc<broadside_mail::dkim::DkimKeys>> {
    let dir = config.dkim_dir();
    let keys = broadside_mail::dkim::DkimKeys::load(&dir)
        .with_context(|| format!("mail.dkim_dir {}: cannot load the DKIM keys", dir.display()))?;
    if keys.is_empty() {
        tracing::warn!(dir = %dir.display(), "no DKIM keys: messages go out unsigned, which Gmail, Yahoo and Microsoft reject or junk for bulk mail; run `broadside dkim keygen --domain D --selector S`");
    } else {
        tracing::info!(dir = %dir.display(), keys = ?keys.describe(), "DKIM keys loaded");
    }
    Ok(std::sync::Arc::new(keys))
}
