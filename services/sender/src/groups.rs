//! Destination groups: recipients are grouped by the mailbox provider that
//! runs their domain's MX, because providers throttle per sender, not per
//! domain (gmail.com and googlemail.com are one Google; outlook.com,
//! hotmail.com and live.com are one Microsoft). Each group has its own
//! concurrency and rate on this replica, and its own 4xx backoff
//! ([`crate::domains`]); a domain outside the table is its own group.
//!
//! A job waits at most [`MAX_WAIT`] for its group; past that it is put back
//! on the retry topic, so a slow or saturated provider never holds the
//! replica's slots that other destinations need (no head-of-line blocking).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broadside_config::DestinationGroup;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Longest a job waits for its group's slot or rate before being requeued.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(1);

/// Limits of one group on this replica.
struct Group {
    slots: Option<Arc<Semaphore>>,
    interval: Option<Duration>,
    next_free: Mutex<Instant>,
}

impl Group {
    fn new(concurrency: usize, per_second: f64) -> Self {
        Self {
            slots: (concurrency > 0).then(|| Arc::new(Semaphore::new(concurrency))),
            interval: (per_second > 0.0).then(|| Duration::from_secs_f64(1.0 / per_second)),
            next_free: Mutex::new(Instant::now()),
        }
    }
}

/// The group table and each group's limits.
pub(crate) struct Groups {
    /// Domain → group name, from the configured and built-in tables.
    by_domain: HashMap<String, String>,
    limits: HashMap<String, Group>,
    /// Limits for a domain outside the table.
    default_concurrency: usize,
    default_per_second: f64,
    others: Mutex<HashMap<String, Arc<Group>>>,
}

/// A held place in a group: released on drop.
pub(crate) struct Entered {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Groups {
    pub(crate) fn new(groups: &[DestinationGroup], default_concurrency: usize, default_per_second: f64) -> Self {
        let mut by_domain = HashMap::new();
        let mut limits = HashMap::new();
        for group in groups {
            for domain in &group.domains {
                by_domain.insert(domain.to_ascii_lowercase(), group.name.clone());
            }
            limits.insert(group.name.clone(), Group::new(group.concurrency, group.per_second));
        }
        Self { by_domain, limits, default_concurrency, default_per_second, others: Mutex::default() }
    }

    /// The group of a recipient domain: its provider's name, or the domain itself.
    pub(crate) fn group_of<'a>(&'a self, domain: &'a str) -> &'a str {
        self.by_domain.get(domain).map_or(domain, String::as_str)
    }

    /// Waits (at most [`MAX_WAIT`]) for a send slot in `group` and its next
    /// rate slot. `None`: the group is saturated, requeue the job.
    pub(crate) async fn enter(&self, group: &str) -> Option<Entered> {
        let other;
        let limits = match self.limits.get(group) {
            Some(limits) => limits,
            None => {
                let mut others = self.others.lock().unwrap_or_else(|p| p.into_inner());
                if others.len() > 100_000 {
                    others.retain(|_, g| Arc::strong_count(g) > 1); // forget idle domains
                }
                other = others
                    .entry(group.to_owned())
                    .or_insert_with(|| Arc::new(Group::new(self.default_concurrency, self.default_per_second)))
                    .clone();
                &*other
            }
        };
        let deadline = Instant::now() + MAX_WAIT;
        let permit = match &limits.slots {
            Some(slots) => Some(tokio::time::timeout_at(deadline, slots.clone().acquire_owned()).await.ok()?.ok()?),
            None => None,
        };
        if let Some(interval) = limits.interval {
            let slot = {
                let mut next_free = limits.next_free.lock().unwrap_or_else(|p| p.into_inner());
                let slot = (*next_free).max(Instant::now());
                if slot > deadline {
                    return None;
                }
                *next_free = slot + interval;
                slot
            };
            tokio::time::sleep_until(slot).await;
        }
        Some(Entered { _permit: permit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> Groups {
        Groups::new(&broadside_config::default_destination_groups(), 2, 0.0)
    }

    #[test]
    fn providers_share_one_group() {
        let groups = groups();
        assert_eq!(groups.group_of("gmail.com"), "google");
        assert_eq!(groups.group_of("googlemail.com"), "google");
        assert_eq!(groups.group_of("hotmail.com"), groups.group_of("outlook.com"));
        assert_eq!(groups.group_of("example.org"), "example.org");
    }

    #[tokio::test(start_paused = true)]
    async fn a_saturated_group_turns_jobs_away_without_blocking_others() {
        let groups = groups();
        let first = groups.enter("slow.example").await.expect("slot 1");
        let _second = groups.enter("slow.example").await.expect("slot 2");
        let started = Instant::now();
        assert!(groups.enter("slow.example").await.is_none(), "third waits at most MAX_WAIT, then is refused");
        assert!(started.elapsed() >= MAX_WAIT);
        assert!(groups.enter("fast.example").await.is_some(), "another domain is unaffected");
        drop(first);
        assert!(groups.enter("slow.example").await.is_some(), "a released slot is reused");
    }

    #[tokio::test(start_paused = true)]
    async fn rates_are_paced_and_excess_is_refused() {
        let groups = Groups::new(
            &[DestinationGroup {
                name: "p".into(),
                domains: vec!["p.example".into()],
                concurrency: 0,
                per_second: 4.0,
            }],
            0,
            0.0,
        );
        // Six at once at 4/s: slots at 0, .25, .5, .75 and 1 s fit in MAX_WAIT, the sixth does not.
        let started = Instant::now();
        let entered = futures::future::join_all((0..6).map(|_| groups.enter("p"))).await;
        assert_eq!(entered.iter().filter(|e| e.is_some()).count(), 5);
        assert!(entered[5].is_none(), "the excess is refused, not queued");
        assert!(started.elapsed() >= Duration::from_millis(999), "five at 4/s take a second");
    }
}
