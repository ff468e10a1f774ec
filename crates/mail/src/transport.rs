//! Hands messages to SMTP relays (pooled connections, STARTTLS or TLS with
//! certificate checks, AUTH; several relays with weights and failover) or to
//! a capture folder. Outcomes are classified by type, never by matching
//! strings.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Share of messages relative to the other relays.
    pub weight: u32,
}

/// How long a relay that refused connections is skipped before a health
/// check may bring it back.
const DOWN_FOR: Duration = Duration::from_secs(30);

/// One relay of a set.
struct Relay {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    destination: String,
    weight: u32,
    /// Skipped until then (connection failures); `None` when healthy.
    down_until: Mutex<Option<Instant>>,
}

impl Relay {
    fn is_down(&self) -> bool {
        self.down_until.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|until| Instant::now() < until)
    }

    fn marked(&self) -> bool {
        self.down_until.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    fn mark_down(&self, error: &str) {
        let mut down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        if down.is_none() {
            tracing::warn!(relay = %self.destination, %error, "relay unreachable: failing over to the others");
        }
        *down = Some(Instant::now() + DOWN_FOR);
    }

    fn mark_up(&self) {
        if self.down_until.lock().unwrap_or_else(|p| p.into_inner()).take().is_some() {
            tracing::info!(relay = %self.destination, "relay reachable again");
        }
    }
}

/// Relays in weighted rotation, reachable ones first.
pub struct RelaySet {
    relays: Vec<Relay>,
    /// Position in the weighted rotation.
    next: AtomicU64,
}

impl RelaySet {
    /// The order to try the relays in for one message: a weighted rotation
    /// over the reachable relays, then the ones marked down (last resort).
    fn order(&self) -> Vec<&Relay> {
        let total: u64 = self.relays.iter().map(|r| u64::from(r.weight.max(1))).sum();
        let mut ticket = self.next.fetch_add(1, Ordering::Relaxed) % total.max(1);
        let mut first = 0;
        for (index, relay) in self.relays.iter().enumerate() {
            let weight = u64::from(relay.weight.max(1));
            if ticket < weight {
                first = index;
                break;
            }
            ticket -= weight;
        }
        let rotated = self.relays[first..].iter().chain(&self.relays[..first]);
        let (up, down): (Vec<&Relay>, Vec<&Relay>) = rotated.partition(|r| !r.is_down());
        up.into_iter().chain(down).collect()
    }

    /// Probes every relay marked down and brings back those that answer.
    async fn check(&self) {
        for relay in self.relays.iter().filter(|r| r.marked()) {
            match relay.transport.test_connection().await {
                Ok(true) => relay.mark_up(),
                Ok(false) => {}
                Err(error) => relay.mark_down(&error.to_string()),
            }
        }
    }

    fn destinations(&self) -> String {
        self.relays.iter().map(|r| r.destination.as_str()).collect::<Vec<_>>().join(",")
    }
}

/// The accepted reply.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub code: u16,
    /// The RFC 3463 status of the reply, when the relay gave one.
    pub enhanced: Option<EnhancedStatus>,
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
    Transient { code: Option<u16>, enhanced: Option<EnhancedStatus>, detail: String, ambiguous: bool },
    /// 5xx: do not retry.
    #[error("permanent ({code}): {detail}")]
    Permanent { code: u16, enhanced: Option<EnhancedStatus>, detail: String },
}

/// An RFC 3463 enhanced status code (`5.1.1`: class, subject, detail),
/// read from the reply where the transport receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnhancedStatus {
    /// 2 (success), 4 (persistent transient) or 5 (permanent).
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedStatus {
    /// The first enhanced status code among the words of `text`, if any.
    pub fn find(text: &str) -> Option<Self> {
        text.split_whitespace().find_map(|word| {
            let word = word.trim_end_matches([',', ';', ':']);
            let mut parts = word.split('.');
            let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
            let number = |p: &str, max: usize| {
                (!p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| p.parse::<u16>().ok())
                    .flatten()
            };
            let class = match class {
                "2" => 2,
                "4" => 4,
                "5" => 5,
                _ => return None,
            };
            if parts.next().is_some() {
                return None;
            }
            Some(EnhancedStatus { class, subject: number(subject, 3)?, detail: number(detail, 3)? })
        })
    }
}

impl std::fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// A configured transport.
#[derive(Clone)]
pub enum Transport {
    Smtp { relays: Arc<RelaySet>, destination: String },
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

    /// Pooled connections to one relay.
    pub fn relay(options: &RelayOptions) -> Result<Self, String> {
        Self::relays(std::slice::from_ref(options))
    }

    /// Pooled connections to several relays, used by weight; a relay that
    /// refuses connections is skipped (failover) until a health check,
    /// every 10 s, finds it answering again. Needs a Tokio runtime.
    pub fn relays(options: &[RelayOptions]) -> Result<Self, String> {
        if options.is_empty() {
            return Err("no relay configured".into());
        }
        let relays = options
            .iter()
            .map(|options| {
                Ok(Relay {
                    transport: build_relay(options)?,
                    destination: format!("{}:{}", options.host, options.port),
                    weight: options.weight,
                    down_until: Mutex::new(None),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let set = Arc::new(RelaySet { relays, next: AtomicU64::new(0) });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&set);
            runtime.spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    let Some(set) = weak.upgrade() else { return };
                    set.check().await;
                }
            });
        }
        Ok(Self::Smtp { destination: set.destinations(), relays: set })
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
                Ok(()) => Ok(Accepted {
                    code: 250,
                    enhanced: None,
                    detail: "captured".into(),
                    destination: destination.clone(),
                }),
                Err(error) => Err(SendError::Transient {
                    code: None,
                    enhanced: None,
                    detail: format!("capture write to {destination} failed: {error}"),
                    ambiguous: false,
                }),
            },
            Self::Smtp { relays, .. } => {
                let mut last = None;
                for relay in relays.order() {
                    match relay.transport.send_raw(&message.envelope, &message.bytes).await {
                        Ok(response) => {
                            relay.mark_up();
                            let detail = response.message().collect::<Vec<_>>().join(" ");
                            return Ok(Accepted {
                                code: u16::from(response.code()),
                                enhanced: EnhancedStatus::find(&detail),
                                detail,
                                destination: relay.destination.clone(),
                            });
                        }
                        Err(error) => {
                            let classified = classify(&error);
                            // No reply at all and not a timeout: the relay is unreachable and
                            // holds nothing of this message, so the next relay may take it.
                            let unreachable =
                                matches!(classified, SendError::Transient { code: None, ambiguous: false, .. });
                            if !unreachable {
                                return Err(classified);
                            }
                            relay.mark_down(&error.to_string());
                            last = Some(classified);
                        }
                    }
                }
                Err(last.unwrap_or(SendError::Transient {
                    code: None,
                    enhanced: None,
                    detail: "no relay configured".into(),
                    ambiguous: false,
                }))
            }
        }
    }
}

fn build_relay(options: &RelayOptions) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
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
    Ok(builder.build())
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
    let detail = error.to_string();
    let enhanced = EnhancedStatus::find(&detail);
    match code {
        Some(code) if error.is_permanent() => SendError::Permanent { code, enhanced, detail },
        // lettre does not say at which step a session failed; a timeout with no
        // reply is the RFC 1047 case, so count it as possibly delivered.
        _ => SendError::Transient { code, enhanced, detail, ambiguous: code.is_none() && error.is_timeout() },
    }
}

#[cfg(test)]
mod tests {
    use super::EnhancedStatus;

    #[test]
    fn finds_enhanced_status_codes_in_replies() {
        let found = |text: &str| EnhancedStatus::find(text).map(|s| s.to_string());
        assert_eq!(found("5.1.1 <x@y>: Recipient address rejected").as_deref(), Some("5.1.1"));
        assert_eq!(found("permanent error (550): 5.7.1 blocked").as_deref(), Some("5.7.1"));
        assert_eq!(found("4.7.28 Our system has detected an unusual rate,").as_deref(), Some("4.7.28"));
        assert_eq!(EnhancedStatus::find("2.0.0 Ok: queued"), Some(EnhancedStatus { class: 2, subject: 0, detail: 0 }));
        assert_eq!(found("Ok: queued as 12.3"), None);
        assert_eq!(found("version 3.1.1 and 5.1.1.1"), None, "class 3 and four parts are not status codes");
        assert_eq!(found("5.1234.1 too long"), None);
    }
}
