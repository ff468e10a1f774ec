//! Abuse limits: per-key and per-address token buckets (governor), shared
//! by every API of the process, answering RESOURCE_EXHAUSTED / 429.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};

use broadside_proto::ServiceError;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

type Keyed<K> = Option<Arc<DefaultKeyedRateLimiter<K>>>;

/// The process's limits.
pub struct Limits {
    per_key: Keyed<String>,
    per_ip: Keyed<IpAddr>,
    http_per_ip: Keyed<IpAddr>,
}

static LIMITS: OnceLock<Limits> = OnceLock::new();

fn keyed<K: std::hash::Hash + Eq + Clone>(per_second: u32) -> Keyed<K> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(per_second.saturating_mul(2)).unwrap_or(rate);
    Some(Arc::new(RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))))
}

/// Sets the limits for this process (the first call wins; later nodes in
/// the same process, as in tests, share them).
pub fn configure(grpc_per_key: u32, grpc_per_ip: u32, http_per_ip: u32) {
    let _ = LIMITS.set(Limits {
        per_key: keyed(grpc_per_key),
        per_ip: keyed(grpc_per_ip),
        http_per_ip: keyed(http_per_ip),
    });
}

fn limits() -> &'static Limits {
    LIMITS.get_or_init(|| Limits { per_key: keyed(5000), per_ip: keyed(10000), http_per_ip: keyed(5) })
}

/// Every so many checks, forget addresses and keys whose buckets are full
/// again, so a flood from many addresses cannot grow the maps forever.
fn prune() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CHECKS: AtomicU64 = AtomicU64::new(0);
    if CHECKS.fetch_add(1, Ordering::Relaxed) % 10_000 == 9_999 {
        let limits = limits();
        if let Some(limiter) = &limits.per_key {
            limiter.retain_recent();
        }
        for limiter in [&limits.per_ip, &limits.http_per_ip].into_iter().flatten() {
            limiter.retain_recent();
        }
    }
}

fn exhausted(what: &str) -> ServiceError {
    ServiceError::ResourceExhausted(format!("too many requests {what}; slow down and retry in a second"))
}

/// Counts one gRPC call from `ip`.
pub fn check_ip(ip: Option<IpAddr>) -> Result<(), ServiceError> {
    prune();
    match (&limits().per_ip, ip) {
        (Some(limiter), Some(ip)) if limiter.check_key(&ip).is_err() => Err(exhausted(&format!("from {ip}"))),
        _ => Ok(()),
    }
}

/// Counts one gRPC call made with API key `key_id`.
pub fn check_key(key_id: &str) -> Result<(), ServiceError> {
    match &limits().per_key {
        Some(limiter) if limiter.check_key(&key_id.to_owned()).is_err() => {
            Err(exhausted(&format!("with API key {key_id}")))
        }
        _ => Ok(()),
    }
}

/// Counts one public HTTP request from `ip`; false when over the limit.
pub fn allow_http(ip: IpAddr) -> bool {
    prune();
    limits().http_per_ip.as_ref().is_none_or(|limiter| limiter.check_key(&ip).is_ok())
}

/// The client of a public HTTP request: the first `X-Forwarded-For` hop
/// (behind an ingress), else the peer.
pub fn client_ip(headers: &tonic::codegen::http::HeaderMap, peer: std::net::SocketAddr) -> String {
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| peer.ip().to_string())
}
