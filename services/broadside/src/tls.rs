//! TLS for the gRPC listener with rustls: the certificate is re-read when
//! its files change (checked at each handshake, so a renewal by
//! cert-manager or an operator takes effect without a restart), and a
//! client CA makes it mutual.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context;
use broadside_config::TlsConfig;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load(cert_file: &Path, key_file: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .with_context(|| format!("server.tls.cert_file {}", cert_file.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("server.tls.cert_file {}: not PEM certificates", cert_file.display()))?;
    anyhow::ensure!(!certs.is_empty(), "server.tls.cert_file {}: no certificate in it", cert_file.display());
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("server.tls.key_file {}: no PEM private key", key_file.display()))?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .with_context(|| format!("server.tls.key_file {}: unsupported key", key_file.display()))?;
    let certified = CertifiedKey::new(certs, signing_key);
    // A renewal written file by file can pair a new key with an old certificate for a moment.
    certified
        .keys_match()
        .with_context(|| format!("server.tls: {} does not match {}", key_file.display(), cert_file.display()))?;
    Ok(Arc::new(certified))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The server certificate, reloaded when either file's modification time changes.
#[derive(Debug)]
struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: Mutex<(Option<SystemTime>, Option<SystemTime>, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let stamps = (modified(&self.cert_file), modified(&self.key_file));
        if (current.0, current.1) != stamps {
            match load(&self.cert_file, &self.key_file) {
                Ok(key) => {
                    tracing::info!(cert = %self.cert_file.display(), "reloaded the TLS certificate");
                    *current = (stamps.0, stamps.1, key);
                }
                // A half-written renewal: keep serving the old certificate and retry next time.
                Err(error) => tracing::warn!(error = format!("{error:#}"), "TLS certificate not reloaded"),
            }
        }
        Some(current.2.clone())
    }
}

/// The rustls acceptor for `config`.
pub fn acceptor(config: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    let initial = load(&config.cert_file, &config.key_file)?;
    let resolver = Arc::new(ReloadingCert {
        cert_file: config.cert_file.clone(),
        key_file: config.key_file.clone(),
        current: Mutex::new((modified(&config.cert_file), modified(&config.key_file), initial)),
    });
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &config.client_ca_file {
        Some(ca_file) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca_file)
                .with_context(|| format!("server.tls.client_ca_file {}", ca_file.display()))?
            {
                roots.add(cert?).with_context(|| format!("server.tls.client_ca_file {}", ca_file.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .context("server.tls.client_ca_file")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_cert_resolver(resolver);
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// Accepts TCP connections and completes TLS handshakes concurrently; a
/// failed handshake (no client certificate, wrong CA) is logged and dropped.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<tokio::net::TcpStream>>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            };
            // Without it every unary reply waits for the client's delayed ACK (~40 ms).
            let _ = stream.set_nodelay(true);
            let (acceptor, connections) = (acceptor.clone(), sender.clone());
            tokio::spawn(async move {
                match acceptor.accept(stream).await {
                    Ok(tls) => {
                        let _ = connections.send(Ok(tls)).await;
                    }
                    Err(error) => tracing::info!(%peer, %error, "TLS handshake refused"),
                }
            });
            if sender.is_closed() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}
