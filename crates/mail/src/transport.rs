//! Hands messages to an SMTP relay (pooled connections, STARTTLS or TLS,
//! AUTH) or to a capture folder. Outcomes are classified by type, never by
//! matching strings.

use std::path::Path;
use std::time::Duration;

use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::message::Outgoing;
use std::path::PathBuf;

/// How to reach a relay.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    pub host: String,
    pub port: u16,
    /// TLS from the first byte (smtps).
    pub implicit_tls: bool,
    /// `opportunistic`, `required` or `none`; ignored with `implicit_tls`.
    pub starttls: String,
    pub accept_invalid_certs: bool,
    pub credentials: Option<(String, String)>,
    pub pool_size: u32,
    pub timeout: Duration,
}

/// The accepted reply.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub code: u16,
    pub detail: String,
    /// Where it went: relay `host:port` or the capture folder.
    pub destination: String,
}

/// Why a message was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// 4xx, or the relay was unreachable: retry later. `ambiguous` when the
    /// relay may already have the message (a timeout without a reply, as when
    /// the answer to the final dot is lost: RFC 1047).
    #[error("transient ({code:?}): {detail}")]
    Transient { code: Option<u16>, detail: String, ambiguous: bool },
    /// 5xx: do not retry.
    #[error("permanent ({code}): {detail}")]
    Permanent { code: u16, detail: String },
}

/// A configured transport.
#[derive(Clone)]
pub enum Transport {
    Smtp { transport: AsyncSmtpTransport<Tokio1Executor>, destination: String },
    Capture { dir: PathBuf, destination: String },
}

impl Transport {
    /// Writes each message as `<uuid>.eml` into `dir`, creating it. Files
    /// appear whole (written aside, then renamed), so a crash never leaves a
    /// torn message; each send is its own file, so duplicates stay visible.
    pub fn capture(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self::Capture { dir: dir.to_owned(), destination: dir.display().to_string() })
    }

    /// A pooled connection to a relay.
    pub fn relay(options: &RelayOptions) -> Result<Self, String> {
        let tls_parameters = || {
            TlsParameters::builder(options.host.clone())
                .dangerous_accept_invalid_certs(options.accept_invalid_certs)
                .build_rustls()
                .map_err(|e| format!("TLS setup for {}: {e}", options.host))
        };
        let tls = if options.implicit_tls {
            Tls::Wrapper(tls_parameters()?)
        } else {
            match options.starttls.as_str() {
                "required" => Tls::Required(tls_parameters()?),
                "none" => Tls::None,
                _ => Tls::Opportunistic(tls_parameters()?),
            }
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(options.host.clone())
            .port(options.port)
            .tls(tls)
            .timeout(Some(options.timeout))
            .pool_config(PoolConfig::new().max_size(options.pool_size.max(1)));
        if let Some((user, password)) = &options.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(Self::Smtp { transport: builder.build(), destination: format!("{}:{}", options.host, options.port) })
    }

    pub fn destination(&self) -> &str {
        match self {
            Self::Smtp { destination, .. } | Self::Capture { destination, .. } => destination,
        }
    }

    /// Sends one message and classifies the outcome.
    pub async fn send(&self, message: &Outgoing) -> Result<Accepted, SendError> {
        match self {
            Self::Capture { dir, destination } => match write_capture(dir, message).await {
                Ok(()) => Ok(Accepted { code: 250, detail: "captured".into(), destination: destination.clone() }),
                Err(error) => Err(SendError::Transient {
                    code: None,
                    detail: format!("capture write to {destination} failed: {error}"),
                    ambiguous: false,
                }),
            },
            Self::Smtp { transport, destination } => {
                match transport.send_raw(&message.envelope, &message.bytes).await {
                    Ok(response) => Ok(Accepted {
                        code: u16::from(response.code()),
                        detail: response.message().collect::<Vec<_>>().join(" "),
                        destination: destination.clone(),
                    }),
                    Err(error) => Err(classify(&error)),
                }
            }
        }
    }
}

/// Stores the message as the final MTA would: with a Return-Path header
/// naming the envelope sender (RFC 5321 §4.4).
async fn write_capture(dir: &Path, message: &Outgoing) -> std::io::Result<()> {
    let name = uuid::Uuid::new_v4().simple().to_string();
    let partial = dir.join(format!(".{name}.partial"));
    let return_path = message.envelope.from().map(ToString::to_string).unwrap_or_default();
    let mut bytes = format!("Return-Path: <{return_path}>\r\n").into_bytes();
    bytes.extend_from_slice(&message.bytes);
    tokio::fs::write(&partial, bytes).await?;
    tokio::fs::rename(&partial, dir.join(format!("{name}.eml"))).await
}

fn classify(error: &lettre::transport::smtp::Error) -> SendError {
    let code = error.status().map(u16::from);
    match code {
        Some(code) if error.is_permanent() => SendError::Permanent { code, detail: error.to_string() },
        // lettre does not say at which step a session failed; a timeout with no
        // reply is the RFC 1047 case, so count it as possibly delivered.
        _ => SendError::Transient { code, detail: error.to_string(), ambiguous: code.is_none() && error.is_timeout() },
    }
}
