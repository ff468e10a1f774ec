//! Destination backoff: when a destination group (a mailbox provider, see
//! [`crate::groups`]) answers 4xx, stop sending to it for a while (doubling,
//! with jitter) and let one probe through when the pause ends, so a
//! throttling provider costs us one connection per pause instead of one per
//! recipient, and other providers keep their pace.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Longest pause of one domain.
const MAX_PAUSE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Pause {
    until: Instant,
    strikes: u32,
    probing: bool,
}

/// What to do with a recipient at `domain` now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    Send,
    /// Paused: retry at this time without trying SMTP.
    WaitUntil(Instant),
}

#[derive(Default)]
pub(crate) struct DomainBackoff {
    paused: Mutex<HashMap<String, Pause>>,
}

impl DomainBackoff {
    pub(crate) fn gate(&self, domain: &str) -> Gate {
        let mut paused = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        let Some(pause) = paused.get_mut(domain) else { return Gate::Send };
        let now = Instant::now();
        if now < pause.until {
            return Gate::WaitUntil(pause.until);
        }
        if pause.probing {
            // One probe is out; the others wait for its answer.
            return Gate::WaitUntil(now + Duration::from_secs(1));
        }
        pause.probing = true;
        Gate::Send
    }

    /// A 4xx from `domain`: pause it for `base` doubling per strike, ±20 %.
    pub(crate) fn deferred(&self, domain: &str, base: Duration) -> Instant {
        let mut paused = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let pause = paused.entry(domain.to_owned()).or_insert(Pause { until: now, strikes: 0, probing: false });
        if pause.until > now && !pause.probing {
            return pause.until; // already paused by a concurrent send
        }
        pause.strikes += 1;
        // Doubling, but never past 16 × base, so a recovered domain is probed soon.
        let length = base.saturating_mul(1 << pause.strikes.min(5).saturating_sub(1)).min(base * 16).min(MAX_PAUSE);
        pause.until = now + length.mul_f64(0.8 + crate::retry::rand_fraction() * 0.4);
        pause.probing = false;
        tracing::info!(
            domain,
            strikes = pause.strikes,
            pause_ms = (pause.until - now).as_millis() as u64,
            "destination deferred us, pausing it"
        );
        pause.until
    }

    /// Accepted (or refused for good): the domain is healthy again.
    pub(crate) fn answered(&self, domain: &str) {
        let mut paused = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        if paused.remove(domain).is_some() {
            tracing::info!(domain, "destination accepts again, resuming");
        }
    }
}

/// The lowercased domain of an address.
pub(crate) fn domain_of(email: &str) -> String {
    email.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pauses_probes_once_and_resumes() {
        let backoff = DomainBackoff::default();
        assert_eq!(backoff.gate("slow.example"), Gate::Send);
        let until = backoff.deferred("slow.example", Duration::from_secs(10));
        assert!(matches!(backoff.gate("slow.example"), Gate::WaitUntil(t) if t == until));
        assert_eq!(backoff.gate("fast.example"), Gate::Send, "other domains are not affected");
        tokio::time::advance(Duration::from_secs(13)).await;
        assert_eq!(backoff.gate("slow.example"), Gate::Send, "one probe after the pause");
        assert!(matches!(backoff.gate("slow.example"), Gate::WaitUntil(_)), "the rest wait for the probe");
        let second = backoff.deferred("slow.example", Duration::from_secs(10));
        assert!(second - Instant::now() >= Duration::from_secs(16), "the pause doubles");
        backoff.answered("slow.example");
        assert_eq!(backoff.gate("slow.example"), Gate::Send);
    }
}
