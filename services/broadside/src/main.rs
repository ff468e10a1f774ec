//! `broadside`: one binary for every role, the demo, and the client commands.

use std::path::PathBuf;
use std::process::ExitCode;

use broadside::client::{self, CampaignsCommand, ClientArgs, ListsCommand, SubscribersCommand, TemplatesCommand};
use broadside::{Node, Role, demo};
use broadside_config::Config;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "broadside", version, about = "Email lists and bulk sending at scale")]
struct Cli {
    /// TOML config file; `BROADSIDE__SECTION__KEY` variables override it.
    #[arg(long, global = true, env = "BROADSIDE_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC address of a running node, for the client commands.
    #[arg(long, global = true, env = "BROADSIDE_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// API key for the client commands (default: the admin key a first
    /// single-node `serve` wrote to DATA_DIR/admin.key).
    #[arg(long, global = true, env = "BROADSIDE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// CA certificate (PEM) to trust for an `https://` --server.
    #[arg(long, global = true, env = "BROADSIDE_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for servers that require mutual TLS.
    #[arg(long, global = true, env = "BROADSIDE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Client private key (PEM) for --tls-cert.
    #[arg(long, global = true, env = "BROADSIDE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run roles until SIGTERM or SIGINT, then drain and exit.
    Serve {
        /// `all`, or a comma-separated list of subscribers, segmentation, dispatch, sender, feedback.
        #[arg(long, default_value = "all")]
        roles: String,
    },
    /// Run the whole pipeline in-process on embedded defaults with a sample list.
    Demo {
        /// Keep the data here instead of a temporary folder (must hold no earlier outbox).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Sample subscribers to load.
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
    },
    /// Create or upgrade the store schema (a ScyllaDB keyspace too) and the Kafka topics, then exit.
    Migrate {
        /// The store to migrate instead of the config's `store.url`, e.g.
        /// `scylla://h1:9042,h2:9042/broadside?dc=dc1&rf=3`.
        #[arg(long, value_name = "URL")]
        store: Option<String>,
    },
    /// Tenants (works on the store named by the config, like `migrate`).
    #[command(subcommand)]
    Tenants(broadside::admin::TenantsCommand),
    /// API keys (works on the store named by the config, like `migrate`).
    #[command(subcommand)]
    Keys(broadside::admin::KeysCommand),
    /// The audit log (works on the store named by the config).
    #[command(subcommand)]
    Audit(broadside::admin::AuditCommand),
    /// Encryption at rest: rotate and re-wrap keys, re-seal rows.
    #[command(subcommand)]
    Encryption(broadside::admin::EncryptionCommand),
    /// DKIM signing keys (in `mail.dkim_dir`).
    #[command(subcommand)]
    Dkim(broadside::dkim::DkimCommand),
    /// Bounces and complaints: classify a message, reclassify the stored ones.
    #[command(subcommand)]
    Feedback(broadside::feedback::FeedbackCommand),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Mailing lists (client of a running node).
    #[command(subcommand)]
    Lists(ListsCommand),
    /// Subscribers (client of a running node).
    #[command(subcommand)]
    Subscribers(SubscribersCommand),
    /// Suppressions with their reasons; lift those made for a non-address bounce reason (client of a running node).
    #[command(subcommand)]
    Suppressions(broadside::suppressions::SuppressionsCommand),
    /// Templates (client of a running node).
    #[command(subcommand)]
    Templates(TemplatesCommand),
    /// Campaigns (client of a running node).
    #[command(subcommand)]
    Campaigns(CampaignsCommand),
    /// Benchmark helpers (bench/segment.sh).
    #[command(subcommand, hide = true)]
    Bench(broadside::bench::BenchCommand),
    /// Segments: rules over attributes, lists and engagement (client of a running node).
    #[command(subcommand)]
    Segments(broadside::segments::SegmentsCommand),
    /// Behavioral events (purchases, logins, ...) for segmentation (client of a running node).
    #[command(subcommand)]
    Events(broadside::events::EventsCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration with secrets redacted.
    Print,
}

/// mimalloc: the import and send paths allocate per row from several threads,
/// where glibc malloc's arena locks cost a third of the CPU (measured with perf).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo and client commands talk to a person: only warnings unless RUST_LOG says otherwise.
    let default_level =
        if matches!(cli.command, Command::Serve { .. } | Command::Migrate { .. }) { "info" } else { "warn" };
    let _telemetry = match broadside_telemetry::init("broadside", default_level) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let load = || Config::load(cli.config.as_deref());
    let client_args = ClientArgs {
        server: cli.server.clone(),
        api_key: cli.api_key.clone(),
        config: cli.config.clone(),
        tls: broadside::client::ClientTls {
            ca_file: cli.tls_ca.clone(),
            cert_file: cli.tls_cert.clone(),
            key_file: cli.tls_key.clone(),
        },
    };
    match cli.command {
        Command::Serve { roles } => {
            let roles = Role::parse_list(&roles)?;
            let config = load()?;
            let node = Node::start(&config, &roles).await?;
            if let Some(path) = &node.admin_key_file {
                eprintln!("first start: created tenant `default` and an admin API key in {}", path.display());
                eprintln!(
                    "client commands read it from there; other machines pass it with --api-key or BROADSIDE_API_KEY"
                );
            }
            node.run_until(shutdown_signal()).await?;
        }
        Command::Demo { data_dir, subscribers } => {
            let ok = demo::run(demo::DemoOptions { data_dir, subscribers }).await?;
            return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        Command::Migrate { store } => {
            let mut config = load()?;
            if store.is_some() {
                config.store.url = store;
                config.store_url()?;
            }
            broadside::outln!("{}", broadside::backends::migrate_store(&config).await?);
            if let broadside_config::BusUrl::Kafka(brokers) = config.bus_url()? {
                broadside::backends::ensure_kafka_topics(&config, std::time::Duration::from_secs(120)).await?;
                broadside::outln!(
                    "kafka topics ready on {brokers}: {}",
                    broadside::backends::topic_names(&config).join(", ")
                );
            }
        }
        Command::Tenants(command) => broadside::admin::tenants(&load()?, command).await?,
        Command::Keys(command) => broadside::admin::keys(&load()?, command).await?,
        Command::Audit(command) => broadside::admin::audit(&load()?, command).await?,
        Command::Encryption(command) => broadside::admin::encryption(&load()?, command).await?,
        Command::Dkim(command) => broadside::dkim::run(&load()?, command)?,
        Command::Feedback(command @ broadside::feedback::FeedbackCommand::Classify { .. }) => {
            broadside::feedback::run(&Config::default(), command).await?
        }
        Command::Feedback(command) => broadside::feedback::run(&load()?, command).await?,
        Command::Config(ConfigCommand::Print) => {
            let config = load()?;
            if matches!(config.store_url()?, broadside_config::StoreUrl::Scylla { .. }) {
                broadside::backends::scylla_uri(&config)?; // its options, named in errors
            }
            print!("{}", config.to_redacted_toml())
        }
        Command::Lists(command) => client::lists(&client_args, command).await?,
        Command::Subscribers(command) => client::subscribers(&client_args, command).await?,
        Command::Templates(command) => client::templates(&client_args, command).await?,
        Command::Suppressions(command) => broadside::suppressions::run(&client_args, command).await?,
        Command::Campaigns(command) => client::campaigns(&client_args, command).await?,
        Command::Bench(command) => broadside::bench::run(&load()?, &client_args, command).await?,
        Command::Segments(command) => broadside::segments::run(&client_args, command).await?,
        Command::Events(command) => broadside::events::run(&client_args, command).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
