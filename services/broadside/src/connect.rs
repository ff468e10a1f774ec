//! Shared client plumbing of every client command (and the demo): where to
//! connect, which API key to send, TLS, and how a gRPC error is printed.

use anyhow::Context;
use tonic::transport::Channel;

/// Where the client commands connect, and with which API key.
#[derive(Debug, Clone)]
pub struct ClientArgs {
    /// gRPC URL of a node serving the role, e.g. `http://127.0.0.1:50051`.
    pub server: String,
    /// `--api-key` / `BROADSIDE_API_KEY`; else the key file a single-node
    /// `serve` wrote into the configured data dir.
    pub api_key: Option<String>,
    pub config: Option<std::path::PathBuf>,
    /// For `https://` servers: the CA to trust (PEM), and a client
    /// certificate and key (PEM) when the server requires mutual TLS.
    pub tls: ClientTls,
}

/// Client-side TLS files.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
}

impl ClientTls {
    /// The tonic TLS settings these files describe.
    pub fn config(&self) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
        let read = |path: &std::path::PathBuf, flag: &str| {
            std::fs::read(path).with_context(|| format!("{flag} {}: cannot read", path.display()))
        };
        let mut config = tonic::transport::ClientTlsConfig::new().with_webpki_roots();
        if let Some(ca) = &self.ca_file {
            config = config.ca_certificate(tonic::transport::Certificate::from_pem(read(ca, "--tls-ca")?));
        }
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                config = config
                    .identity(tonic::transport::Identity::from_pem(read(cert, "--tls-cert")?, read(key, "--tls-key")?));
            }
            (None, None) => {}
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        }
        Ok(config)
    }
}

impl ClientArgs {
    /// The API key to send: the flag, else `{data_dir}/admin.key`.
    pub fn resolve_key(&self) -> anyhow::Result<String> {
        if let Some(key) = self.api_key.as_ref().filter(|k| !k.trim().is_empty()) {
            return Ok(key.trim().to_owned());
        }
        let data_dir = broadside_config::Config::load(self.config.as_deref())
            .map(|c| c.data_dir)
            .unwrap_or_else(|_| broadside_config::Config::default().data_dir);
        let path = crate::bootstrap::key_path(&data_dir);
        std::fs::read_to_string(&path).map(|k| k.trim().to_owned()).map_err(|_| {
            anyhow::anyhow!(
                "no API key: pass --api-key or set BROADSIDE_API_KEY (a first single-node `broadside serve` writes an admin key to {})",
                path.display()
            )
        })
    }
}

/// Adds `authorization: Bearer <key>` to every call.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A channel that authenticates every call.
pub type Authed = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// Connects to `args.server` with the resolved API key.
pub async fn connect(args: &ClientArgs) -> anyhow::Result<Authed> {
    let key = args.resolve_key()?;
    let value = format!("Bearer {key}").parse().context("the API key has characters not allowed in a header")?;
    Ok(tonic::service::interceptor::InterceptedService::new(channel(&args.server, &args.tls).await?, Bearer(value)))
}

pub(crate) async fn channel(server: &str, tls: &ClientTls) -> anyhow::Result<Channel> {
    let mut endpoint = Channel::from_shared(server.to_owned())
        .with_context(|| format!("--server {server:?} is not a URL like http://127.0.0.1:50051"))?;
    if server.starts_with("https://") {
        endpoint = endpoint.tls_config(tls.config()?).context("TLS settings")?;
    }
    // A server that accepts but never answers must not hang scripts forever.
    endpoint = endpoint
        .connect_timeout(std::time::Duration::from_secs(10))
        .tcp_keepalive(Some(std::time::Duration::from_secs(30)));
    endpoint.connect().await.with_context(|| format!("cannot reach {server}: is `broadside serve` running?"))
}

/// Turns a gRPC status into a plain message: `INVALID_ARGUMENT: subscriber.email: ...`.
pub(crate) fn plain(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}
