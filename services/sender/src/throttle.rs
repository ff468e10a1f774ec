//! Per-campaign rate limits without coordination between replicas.
//!
//! A campaign limit L is split over the P partitions of `send-jobs`; a
//! replica that owns k of them paces its sends at L·k/P. The shares of all
//! replicas add up to L whatever their number, and scaling moves partitions,
//! never the total. Error bound: the total never exceeds L by more than one
//! message per replica at a rate change (sends are scheduled, not bursted);
//! it falls below L when some partitions run out of work before others (key
//! skew) or while a rebalance has partitions unassigned.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Schedules sends per campaign at this replica's share of each limit.
#[derive(Default)]
pub(crate) struct Throttle {
    next_free: Mutex<HashMap<String, Instant>>,
    /// (owned partitions << 32) | total partitions of `send-jobs`.
    share: AtomicU64,
}

impl Throttle {
    /// Records the partitions this replica owns, after each poll.
    pub(crate) fn set_share(&self, owned: u32, total: u32) {
        self.share.store((u64::from(owned) << 32) | u64::from(total), Ordering::Relaxed);
    }

    /// This replica's part of `limit` (messages per second across all replicas).
    pub(crate) fn local_rate(&self, limit: f64) -> f64 {
        let packed = self.share.load(Ordering::Relaxed);
        let (owned, total) = ((packed >> 32) as u32, packed as u32);
        if total == 0 || owned == 0 {
            // Not assigned yet (or only retries): pace as one partition's share at most.
            return limit / f64::from(total.max(1));
        }
        limit * f64::from(owned) / f64::from(total)
    }

    /// Waits for this campaign's next send slot. `limit` 0 means no limit.
    pub(crate) async fn acquire(&self, campaign: &str, limit: f64) {
        if limit <= 0.0 {
            return;
        }
        let interval = Duration::from_secs_f64(1.0 / self.local_rate(limit).max(1e-6));
        let slot = {
            let mut next_free = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let next = next_free.entry(campaign.to_owned()).or_insert(now);
            let slot = (*next).max(now);
            *next = slot + interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_limit() {
        let replicas = [3_u32, 3, 2];
        let total: f64 = replicas
            .iter()
            .map(|&owned| {
                let throttle = Throttle::default();
                throttle.set_share(owned, 8);
                throttle.local_rate(100.0)
            })
            .sum();
        assert!((total - 100.0).abs() < 1e-9, "{total}");
    }

    #[tokio::test(start_paused = true)]
    async fn paces_sends_at_the_local_rate() {
        let throttle = Throttle::default();
        throttle.set_share(2, 4); // half of 40/s = 20/s
        let started = tokio::time::Instant::now();
        for _ in 0..21 {
            throttle.acquire("c", 40.0).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        assert!((0.99..1.05).contains(&elapsed), "21 sends at 20/s take 1 s, took {elapsed}");
        throttle.acquire("unlimited", 0.0).await;
    }
}
