//! Typed configuration: one TOML file, then `BROADSIDE__SECTION__KEY`
//! environment overrides, validated at start with errors that name the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Parse(String),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.to_owned(), message: message.into() }
}

/// The whole configuration of one `broadside` process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where relative store and capture paths live when not given.
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub bus: BusConfig,
    pub smtp: SmtpConfig,
    pub sender: SenderConfig,
    pub dispatch: DispatchConfig,
    pub mail: MailConfig,
    pub security: SecurityConfig,
    pub limits: LimitsConfig,
    pub feedback: FeedbackConfig,
    pub behavior: BehaviorConfig,
}

/// Behavioral events (TrackEvents) and their time series.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BehaviorConfig {
    /// Days events are kept, by event time: older events are refused on
    /// input, purged hourly from the store and dropped from the segment
    /// projection. The bus topic's retention should be at least as long,
    /// since the projection rebuilds from it on start.
    pub retention_days: u32,
}

impl Default for BehaviorConfig {
    fn default() -> Self {
        Self { retention_days: 400 }
    }
}

/// The feedback role: inbound bounces and complaints, unsubscribe and
/// tracking links, and what each kind of feedback does to a subscriber.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedbackConfig {
    /// SMTP and LMTP listener (one port; LHLO picks LMTP) for mail to the
    /// bounce domain, the complaint addresses and the unsubscribe mailto
    /// address. The bounce domain's MX, or a relay's transport map, points here.
    pub inbound_addr: SocketAddr,
    /// Feedback-loop mailboxes that receive ARF complaints. Default: `fbl@{mail.domain}`.
    pub complaint_addresses: Vec<String>,
    /// Largest inbound message (SIZE); larger ones get 552.
    pub max_message_bytes: usize,
    /// Concurrent inbound connections; more get 421.
    pub max_connections: usize,
    /// Seconds an inbound client may stay silent before it is disconnected.
    pub command_timeout_secs: u64,
    /// Days raw feedback messages and their verdicts are kept.
    pub retention_days: u32,
    /// Open pixel and click redirects in campaign HTML. A subscriber whose
    /// `tracking` attribute is false is never tracked.
    pub tracking: bool,
    /// What feedback does, for every tenant without its own entry in `tenants`.
    pub policy: FeedbackPolicy,
    /// Per-tenant policies, by tenant id.
    pub tenants: std::collections::BTreeMap<String, FeedbackPolicy>,
}

/// How bounces turn into suppressions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FeedbackPolicy {
    /// A soft bounce (or mailbox full) adds 1 to the subscriber's score; at
    /// this score the address is suppressed.
    pub soft_bounce_threshold: f64,
    /// The score halves every this many days without a bounce.
    pub soft_bounce_half_life_days: f64,
    /// What a bounce with each reason does, where it differs from the
    /// defaults (address reasons suppress, sender reasons are only counted,
    /// the rest score), e.g. `mailbox_full = "suppress"`.
    pub reasons: std::collections::BTreeMap<String, BounceAction>,
}

/// What the feedback role does with one bounced recipient.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BounceAction {
    /// Suppress the address and mark the subscriber bounced.
    Suppress,
    /// Add 1 to the decayed soft-bounce score; suppress at the threshold.
    Score,
    /// Record and count it only.
    Ignore,
}

/// The bounce reasons `feedback.policy.reasons` may name (the feedback
/// role's classifier defines them; a test there keeps the two equal).
pub const BOUNCE_REASONS: &[&str] = &[
    "user_unknown",
    "host_unknown",
    "has_moved",
    "not_accepted",
    "mailbox_full",
    "exceed_limit",
    "message_too_big",
    "suspended",
    "blocked",
    "rejected",
    "spam_detected",
    "policy_violation",
    "security_error",
    "virus_detected",
    "expired",
    "network_error",
    "too_many_connections",
    "system_error",
    "system_full",
    "mailer_error",
    "syntax_error",
    "auto_reply",
    "complaint",
    "delivered",
    "undefined",
];

impl Default for FeedbackPolicy {
    fn default() -> Self {
        Self { soft_bounce_threshold: 3.0, soft_bounce_half_life_days: 7.0, reasons: Default::default() }
    }
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        Self {
            inbound_addr: "127.0.0.1:2525".parse().expect("valid literal"),
            complaint_addresses: Vec::new(),
            max_message_bytes: 25 * 1024 * 1024,
            max_connections: 100,
            command_timeout_secs: 300,
            retention_days: 90,
            tracking: true,
            policy: FeedbackPolicy::default(),
            tenants: Default::default(),
        }
    }
}

impl FeedbackConfig {
    /// The policy of `tenant`.
    pub fn policy_of(&self, tenant: &str) -> &FeedbackPolicy {
        self.tenants.get(tenant).unwrap_or(&self.policy)
    }
}

/// Abuse limits: token buckets refilled at `*_per_second`, holding up to
/// twice that. 0 disables a limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// gRPC calls per API key.
    pub grpc_per_key_per_second: u32,
    /// gRPC calls per client address (checked before the key, so guessing
    /// keys is slow too).
    pub grpc_per_ip_per_second: u32,
    /// Public HTTP requests (confirmation links) per client address.
    pub http_per_ip_per_second: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { grpc_per_key_per_second: 5000, grpc_per_ip_per_second: 10000, http_per_ip_per_second: 5 }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// The master key (64 hex characters) that wraps every tenant's data
    /// keys. Default: `{data_dir}/master.key`, generated on first start.
    /// Production mounts it from a secret; every process of a deployment
    /// needs the same file.
    pub master_key_file: Option<PathBuf>,
    /// Earlier master keys, still able to unwrap until `broadside keys
    /// rewrap` has run. The file name (without extension) is the key's id.
    pub old_master_key_files: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// A sending campaign with no delivery progress for this long gets its
    /// unfinished recipients dispatched again (the send ledger prevents
    /// double sends). The safety net of the delivery guarantee.
    pub reconcile_after_secs: u64,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self { reconcile_after_secs: 120 }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("broadside-data"),
            server: ServerConfig::default(),
            store: StoreConfig::default(),
            bus: BusConfig::default(),
            smtp: SmtpConfig::default(),
            sender: SenderConfig::default(),
            dispatch: DispatchConfig::default(),
            mail: MailConfig::default(),
            security: SecurityConfig::default(),
            limits: LimitsConfig::default(),
            feedback: FeedbackConfig::default(),
            behavior: BehaviorConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC listener for every API role in this process. Port 0 picks a free port.
    pub grpc_addr: SocketAddr,
    /// Health, readiness and Prometheus `/metrics`.
    pub admin_addr: SocketAddr,
    /// Public HTTP for people: double opt-in confirmation (and, with the
    /// feedback role, unsubscribe and tracking). `mail.public_url` must reach it.
    pub http_addr: SocketAddr,
    /// TLS for the gRPC listener; plaintext when unset (loopback, or a mesh
    /// that terminates TLS).
    pub tls: Option<TlsConfig>,
}

/// Server certificate files, re-read when they change (no restart), and an
/// optional client CA that makes TLS mutual.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// PEM CA certificates: when set, clients must present a certificate it signed.
    pub client_ca_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: "127.0.0.1:50051".parse().expect("valid literal"),
            admin_addr: "127.0.0.1:9464".parse().expect("valid literal"),
            http_addr: "127.0.0.1:8080".parse().expect("valid literal"),
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `scylla://h1:9042,h2:9042/KEYSPACE?dc=DC`.
    /// Default: `sqlite://{data_dir}/broadside.db`.
    pub url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// `embedded://` (a durable log in the embedded store) or `kafka://b1:9092,b2:9092`.
    pub url: String,
    /// Prefix of every topic name.
    pub topic_prefix: String,
    /// Partitions per topic; sender parallelism and throttle shares follow it.
    pub partitions: u32,
    /// Kafka only: replicas of each topic `broadside migrate` creates.
    pub replication_factor: i32,
    /// Kafka only: consumer session timeout. A dead member's partitions move
    /// after this; a group join takes about half of it.
    pub session_timeout_ms: u32,
    /// Kafka only: `cooperative-sticky` (only moved partitions pause during a
    /// rebalance), `roundrobin` or `range` (eager: every partition pauses).
    pub assignment_strategy: String,
    /// Kafka only: extra librdkafka properties, e.g. `"security.protocol" =
    /// "SASL_SSL"`, `"ssl.ca.location"`, `"sasl.mechanism"`, `"sasl.username"`.
    /// Put passwords in `kafka_secrets` so they are never printed.
    pub kafka: std::collections::BTreeMap<String, String>,
    /// Kafka only: properties whose values are secret (`"sasl.password"`).
    pub kafka_secrets: std::collections::BTreeMap<String, Secret>,
    /// Kafka only: secret properties read from files at start (a mounted
    /// Kubernetes Secret): `{ "sasl.password" = "/etc/broadside/kafka/password" }`.
    pub kafka_secret_files: std::collections::BTreeMap<String, PathBuf>,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            url: "embedded://".into(),
            topic_prefix: "broadside.".into(),
            partitions: 8,
            replication_factor: 1,
            session_timeout_ms: 10_000,
            assignment_strategy: "cooperative-sticky".into(),
            kafka: Default::default(),
            kafka_secrets: Default::default(),
            kafka_secret_files: Default::default(),
        }
    }
}

/// The bus backend chosen by `bus.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusUrl {
    Embedded,
    /// `host:port,host:port` bootstrap servers.
    Kafka(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// `capture://DIR` (writes .eml files; nothing leaves the machine),
    /// `smtp://host:port` (STARTTLS when offered) or `smtps://host:port` (implicit TLS).
    /// Default: `capture://{data_dir}/outbox`.
    pub url: Option<String>,
    /// Several relays instead of `url`: each takes a share of the messages
    /// by `weight`; one that refuses connections is skipped until a health
    /// check (every 10 s) finds it answering. TLS and AUTH settings below
    /// apply to all.
    pub relays: Vec<RelayEntry>,
    /// `opportunistic` (STARTTLS if offered), `required` or `none`.
    pub starttls: String,
    /// Accept invalid certificates (test relays only).
    pub accept_invalid_certs: bool,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Pooled connections to the relay per sender process.
    pub pool_size: u32,
    /// Seconds to wait for the relay at each SMTP step.
    pub timeout_secs: u64,
}

/// One relay of `smtp.relays`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RelayEntry {
    /// `smtp://host:port` or `smtps://host:port`.
    pub url: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            url: None,
            relays: Vec::new(),
            starttls: "opportunistic".into(),
            accept_invalid_certs: false,
            username: None,
            password: None,
            pool_size: 128,
            timeout_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenderConfig {
    /// Stable identity of this sender in the send ledger. Default: host name.
    pub id: Option<String>,
    /// SMTP transactions in flight per sender process.
    pub concurrency: usize,
    /// On SIGTERM, wait at most this long for in-flight sends.
    pub drain_timeout_secs: u64,
    /// A claim not marked sent within this time may be taken over.
    pub lease_secs: u64,
    /// A recipient not delivered within this time fails as expired.
    pub max_age_secs: u64,
    /// First retry delay after a 4xx reply; doubles per attempt up to an hour.
    pub retry_base_secs: f64,
    /// Mailbox providers: domains that share one MX operator share limits
    /// and 4xx backoff. Default: Google, Microsoft, Yahoo/AOL, Apple, GMX/WEB.DE,
    /// Orange, Comcast, Mail.ru and Yandex (see `default_destination_groups`).
    pub destinations: Vec<DestinationGroup>,
    /// Concurrent SMTP transactions per replica to a domain outside `destinations` (0: no limit).
    pub destination_concurrency: usize,
    /// Messages per second per replica to such a domain (0: no limit).
    pub destination_per_second: f64,
}

/// One mailbox provider's domains and this replica's limits towards it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DestinationGroup {
    pub name: String,
    pub domains: Vec<String>,
    /// Concurrent SMTP transactions per replica (0: no limit).
    #[serde(default)]
    pub concurrency: usize,
    /// Messages per second per replica (0: no limit).
    #[serde(default)]
    pub per_second: f64,
}

/// The large providers, with limits per sending IP that they accept from a
/// warmed-up sender with a good reputation. Start lower on a new IP and raise
/// them as the provider's postmaster tools show no throttling.
pub fn default_destination_groups() -> Vec<DestinationGroup> {
    let group = |name: &str, domains: &[&str], concurrency: usize, per_second: f64| DestinationGroup {
        name: name.into(),
        domains: domains.iter().map(|d| (*d).to_owned()).collect(),
        concurrency,
        per_second,
    };
    vec![
        group("google", &["gmail.com", "googlemail.com"], 50, 0.0),
        group(
            "microsoft",
            &[
                "outlook.com",
                "hotmail.com",
                "live.com",
                "msn.com",
                "hotmail.co.uk",
                "hotmail.fr",
                "live.co.uk",
                "outlook.fr",
            ],
            30,
            0.0,
        ),
        group("yahoo", &["yahoo.com", "ymail.com", "rocketmail.com", "aol.com", "yahoo.co.uk", "yahoo.fr"], 30, 0.0),
        group("apple", &["icloud.com", "me.com", "mac.com"], 20, 0.0),
        group("united-internet", &["gmx.de", "gmx.net", "gmx.com", "web.de"], 20, 0.0),
        group("orange", &["orange.fr", "wanadoo.fr"], 10, 0.0),
        group("comcast", &["comcast.net"], 10, 0.0),
        group("mailru", &["mail.ru", "inbox.ru", "list.ru", "bk.ru"], 10, 0.0),
        group("yandex", &["yandex.ru", "yandex.com", "ya.ru"], 10, 0.0),
    ]
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            id: None,
            concurrency: 128,
            drain_timeout_secs: 30,
            lease_secs: 120,
            max_age_secs: 72 * 3600,
            retry_base_secs: 30.0,
            destinations: default_destination_groups(),
            destination_concurrency: 20,
            destination_per_second: 0.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// Public base URL of the feedback role's HTTP endpoint, used in
    /// List-Unsubscribe links.
    pub public_url: String,
    /// Domain for List-Id, Message-ID and the List-Unsubscribe mailto address.
    pub domain: String,
    /// From address of double opt-in confirmation messages. Default: `lists@{domain}`.
    pub confirm_from: Option<String>,
    /// Key id written into tokens, so keys can rotate.
    pub token_key_id: String,
    /// HMAC key for unsubscribe and tracking tokens. Default: generated once
    /// and kept in `{data_dir}/token.key`.
    pub token_key: Option<Secret>,
    /// Keys of earlier `token_key_id`s (id → key): links in mail sent before
    /// a rotation keep working while these are listed.
    pub old_token_keys: std::collections::BTreeMap<String, Secret>,
    /// DKIM private keys as `<dir>/<domain>/<selector>.pem` (RSA or Ed25519;
    /// `broadside dkim keygen` writes them). Default: `{data_dir}/dkim`.
    pub dkim_dir: Option<PathBuf>,
    /// Domain of the VERP return path `bnc+<tag>@<domain>`; its MX must
    /// reach the feedback role. Default: `domain`.
    pub bounce_domain: Option<String>,
}

impl Default for MailConfig {
    fn default() -> Self {
        Self {
            public_url: "http://127.0.0.1:8080".into(),
            domain: "broadside.localhost".into(),
            confirm_from: None,
            token_key_id: "k1".into(),
            token_key: None,
            old_token_keys: Default::default(),
            dkim_dir: None,
            bounce_domain: None,
        }
    }
}

/// The store backend chosen by `store.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    Scylla { hosts: Vec<String>, keyspace: String },
}

/// The SMTP transport chosen by `smtp.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmtpUrl {
    Capture(PathBuf),
    Smtp { host: String, port: u16, implicit_tls: bool },
}

impl Config {
    /// Loads defaults, then `path` (if any), then `BROADSIDE__*` variables, and validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            if !path.is_file() {
                return Err(ConfigError::File {
                    path: path.to_owned(),
                    message: "no such file (pass --config with an existing TOML file)".into(),
                });
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(Env::prefixed("BROADSIDE__").split("__").lowercase(true));
        let config: Config = figment.extract().map_err(|error| ConfigError::Parse(describe(error)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every URL and number, naming the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.store_url()?;
        self.smtp_url()?;
        self.smtp_relays()?;
        if self.bus_url()? == BusUrl::Embedded && !matches!(self.store_url()?, StoreUrl::Sqlite(_)) {
            return Err(invalid(
                "bus.url",
                "embedded:// lives in the sqlite:// store; with a scylla:// store set bus.url = kafka://BROKERS",
            ));
        }
        if self.bus.replication_factor < 1 {
            return Err(invalid("bus.replication_factor", "must be at least 1"));
        }
        if !["cooperative-sticky", "roundrobin", "range"].contains(&self.bus.assignment_strategy.as_str()) {
            return Err(invalid("bus.assignment_strategy", "must be cooperative-sticky, roundrobin or range"));
        }
        if self.bus.session_timeout_ms < 1000 {
            return Err(invalid("bus.session_timeout_ms", "must be at least 1000"));
        }
        if self.bus.partitions == 0 || self.bus.partitions > 1024 {
            return Err(invalid("bus.partitions", "must be between 1 and 1024"));
        }
        if !(self.sender.retry_base_secs.is_finite() && self.sender.retry_base_secs > 0.0) {
            return Err(invalid("sender.retry_base_secs", "must be a positive number of seconds"));
        }
        if self.sender.concurrency == 0 {
            return Err(invalid("sender.concurrency", "must be at least 1"));
        }
        if !["opportunistic", "required", "none"].contains(&self.smtp.starttls.as_str()) {
            return Err(invalid("smtp.starttls", "must be opportunistic, required or none"));
        }
        if self.smtp.username.is_some() != self.smtp.password.is_some() {
            return Err(invalid("smtp.password", "smtp.username and smtp.password go together"));
        }
        url::Url::parse(&self.mail.public_url).map_err(|error| invalid("mail.public_url", format!("{error}")))?;
        if self.mail.domain.is_empty() || self.mail.domain.contains(['@', ' ', '\r', '\n']) {
            return Err(invalid("mail.domain", "must be a bare domain name"));
        }
        let policies = std::iter::once(("feedback.policy".to_owned(), &self.feedback.policy))
            .chain(self.feedback.tenants.iter().map(|(tenant, policy)| (format!("feedback.tenants.{tenant}"), policy)));
        for (key, policy) in policies {
            if !(policy.soft_bounce_threshold.is_finite() && policy.soft_bounce_threshold >= 1.0) {
                return Err(invalid(&format!("{key}.soft_bounce_threshold"), "must be at least 1"));
            }
            if !(policy.soft_bounce_half_life_days.is_finite() && policy.soft_bounce_half_life_days > 0.0) {
                return Err(invalid(&format!("{key}.soft_bounce_half_life_days"), "must be a positive number of days"));
            }
            if let Some(unknown) = policy.reasons.keys().find(|r| !BOUNCE_REASONS.contains(&r.as_str())) {
                return Err(invalid(
                    &format!("{key}.reasons.{unknown}"),
                    format!("unknown bounce reason (known: {})", BOUNCE_REASONS.join(", ")),
                ));
            }
        }
        if self.feedback.max_connections == 0 {
            return Err(invalid("feedback.max_connections", "must be at least 1"));
        }
        if self.feedback.retention_days == 0 {
            return Err(invalid("feedback.retention_days", "must be at least 1"));
        }
        if !(1..=3650).contains(&self.behavior.retention_days) {
            return Err(invalid("behavior.retention_days", "must be between 1 and 3650 days"));
        }
        if let Some(bad) = self.feedback.complaint_addresses.iter().find(|a| !a.contains('@')) {
            return Err(invalid("feedback.complaint_addresses", format!("{bad:?} is not an address")));
        }
        Ok(())
    }

    /// The parsed `store.url`, defaulting to a SQLite file in `data_dir`.
    pub fn store_url(&self) -> Result<StoreUrl, ConfigError> {
        let Some(raw) = &self.store.url else {
            return Ok(StoreUrl::Sqlite(self.data_dir.join("broadside.db")));
        };
        if let Some(path) = raw.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(invalid("store.url", "sqlite:// needs a file path, e.g. sqlite://data/broadside.db"));
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
        }
        if let Some(rest) = raw.strip_prefix("scylla://") {
            let (hosts, keyspace) = rest
                .split_once('/')
                .ok_or_else(|| invalid("store.url", "scylla:// needs a keyspace: scylla://HOST:9042/KEYSPACE"))?;
            let keyspace = keyspace.split('?').next().unwrap_or_default().to_owned();
            if hosts.is_empty() || keyspace.is_empty() {
                return Err(invalid("store.url", "scylla:// needs hosts and a keyspace"));
            }
            return Ok(StoreUrl::Scylla { hosts: hosts.split(',').map(str::to_owned).collect(), keyspace });
        }
        Err(invalid("store.url", format!("unsupported {raw:?} (use sqlite://PATH or scylla://HOSTS/KEYSPACE)")))
    }

    /// The parsed `bus.url`.
    pub fn bus_url(&self) -> Result<BusUrl, ConfigError> {
        let raw = self.bus.url.trim();
        if raw == "embedded://" {
            return Ok(BusUrl::Embedded);
        }
        let Some(brokers) = raw.strip_prefix("kafka://") else {
            return Err(invalid(
                "bus.url",
                format!("unsupported {raw:?} (use embedded:// or kafka://HOST:PORT,HOST:PORT)"),
            ));
        };
        let brokers: Vec<&str> = brokers.trim_end_matches('/').split(',').map(str::trim).collect();
        for broker in &brokers {
            let valid =
                broker.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(invalid("bus.url", format!("kafka broker {broker:?} must be HOST:PORT")));
            }
        }
        Ok(BusUrl::Kafka(brokers.join(",")))
    }

    /// Where DKIM keys live.
    pub fn dkim_dir(&self) -> PathBuf {
        self.mail.dkim_dir.clone().unwrap_or_else(|| self.data_dir.join("dkim"))
    }

    /// The domain of VERP return paths.
    pub fn bounce_domain(&self) -> &str {
        self.mail.bounce_domain.as_deref().unwrap_or(&self.mail.domain)
    }

    /// The parsed `smtp.url`, defaulting to a capture folder in `data_dir`.
    pub fn smtp_url(&self) -> Result<SmtpUrl, ConfigError> {
        let Some(raw) = &self.smtp.url else {
            return Ok(SmtpUrl::Capture(self.data_dir.join("outbox")));
        };
        parse_smtp_url("smtp.url", raw)
    }

    /// `smtp.relays` parsed, with weights; empty when `smtp.url` is used.
    pub fn smtp_relays(&self) -> Result<Vec<(SmtpUrl, u32)>, ConfigError> {
        if !self.smtp.relays.is_empty() && self.smtp.url.is_some() {
            return Err(invalid("smtp.relays", "set either smtp.url or smtp.relays, not both"));
        }
        self.smtp
            .relays
            .iter()
            .enumerate()
            .map(|(index, relay)| {
                let field = format!("smtp.relays[{index}].url");
                match parse_smtp_url(&field, &relay.url)? {
                    SmtpUrl::Capture(_) => Err(invalid(&field, "relays must be smtp:// or smtps://")),
                    url if relay.weight == 0 => {
                        let _ = url;
                        Err(invalid(&format!("smtp.relays[{index}].weight"), "must be at least 1"))
                    }
                    url => Ok((url, relay.weight)),
                }
            })
            .collect()
    }

    /// The effective configuration as TOML, with secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|error| format!("# cannot print config: {error}"))
    }
}

/// Parses one `capture://DIR`, `smtp://host:port` or `smtps://host:port`.
fn parse_smtp_url(field: &str, raw: &str) -> Result<SmtpUrl, ConfigError> {
    {
        if let Some(dir) = raw.strip_prefix("capture://") {
            if dir.is_empty() {
                return Err(invalid(field, "capture:// needs a folder, e.g. capture://outbox"));
            }
            return Ok(SmtpUrl::Capture(PathBuf::from(dir)));
        }
        let url = url::Url::parse(raw).map_err(|error| invalid(field, format!("{raw:?}: {error}")))?;
        let implicit_tls = match url.scheme() {
            "smtp" => false,
            "smtps" => true,
            other => {
                return Err(invalid(field, format!("unsupported scheme {other:?} (use smtp, smtps or capture)")));
            }
        };
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| invalid(field, "missing host"))?;
        let port = url.port().unwrap_or(if implicit_tls { 465 } else { 25 });
        Ok(SmtpUrl::Smtp { host: host.trim_matches(['[', ']']).to_owned(), port, implicit_tls })
    }
}

/// A secret value: deserializes normally, but prints and serializes as
/// `[redacted]` so it never reaches a log or `config print`.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[redacted]")
    }
}

/// Turns figment's error into one line per problem, each naming its key.
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            if key.is_empty() { e.kind.to_string() } else { format!("{key}: {}", e.kind) }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_embedded() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.store_url().unwrap(), StoreUrl::Sqlite("broadside-data/broadside.db".into()));
        assert_eq!(config.smtp_url().unwrap(), SmtpUrl::Capture("broadside-data/outbox".into()));
    }

    #[test]
    fn bad_urls_name_their_key() {
        let mut config = Config::default();
        config.store.url = Some("mysql://x".into());
        assert!(config.validate().unwrap_err().to_string().starts_with("store.url:"));
        let mut config = Config::default();
        config.smtp.url = Some("http://relay".into());
        assert!(config.validate().unwrap_err().to_string().starts_with("smtp.url:"));
    }

    #[test]
    fn bus_url_parses_kafka_brokers() {
        let mut config = Config::default();
        config.bus.url = "kafka://b1:9092, b2:9093".into();
        assert_eq!(config.bus_url().unwrap(), BusUrl::Kafka("b1:9092,b2:9093".into()));
        config.validate().unwrap();
        config.bus.url = "kafka://b1".into();
        assert!(config.validate().unwrap_err().to_string().contains("must be HOST:PORT"));
        config.bus.url = "amqp://x".into();
        assert!(config.validate().unwrap_err().to_string().starts_with("bus.url:"));
    }

    #[test]
    fn smtp_url_parses_host_port_and_tls() {
        let mut config = Config::default();
        config.smtp.url = Some("smtps://relay.example:2465".into());
        assert_eq!(
            config.smtp_url().unwrap(),
            SmtpUrl::Smtp { host: "relay.example".into(), port: 2465, implicit_tls: true }
        );
    }

    #[test]
    fn secrets_are_redacted_when_printed() {
        let mut config = Config::default();
        config.mail.token_key = Some(Secret::new("hunter2"));
        config.mail.old_token_keys.insert("k0".into(), Secret::new("oldhunter"));
        let printed = config.to_redacted_toml();
        assert!(!printed.contains("hunter2") && !printed.contains("oldhunter"));
        assert!(printed.contains("[redacted]"));
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn unknown_keys_and_env_overrides_are_checked() {
        let dir = std::env::temp_dir().join(format!("broadside-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(
            &path,
            "[smtp]
urll = \"smtp://x\"\n",
        )
        .unwrap();
        let error = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(error.contains("urll"), "{error}");
        let missing = Config::load(Some(&dir.join("missing.toml"))).unwrap_err().to_string();
        assert!(missing.contains("missing.toml"), "{missing}");
    }
}
