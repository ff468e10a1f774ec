//! Retry timing: exponential backoff with jitter, and waiting for a batch of
//! retries to come due.

use std::time::Duration;

use broadside_bus::Delivered;
use broadside_proto::convert::timestamp_to_millis;
use broadside_proto::v1::SendJob;
use broadside_store::now_millis;
use prost::Message as _;
use tokio_util::sync::CancellationToken;

/// Delay before attempt `attempt + 1`: `base` doubling per attempt up to
/// 1 h, ±20 % jitter so a burst of deferrals does not come back as a burst.
pub(crate) fn backoff(base: Duration, attempt: i32) -> Duration {
    let doubled = base.saturating_mul(1 << attempt.clamp(1, 12).saturating_sub(1)).min(Duration::from_secs(3600));
    doubled.mul_f64(0.8 + rand_fraction() * 0.4)
}

/// A cheap fraction in [0, 1) for jitter (not for anything secret).
pub(crate) fn rand_fraction() -> f64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    f64::from(nanos % 1000) / 1000.0
}

/// Sleeps until the first retry in `batch` is due; the sender puts back the
/// ones still not due (see `handle_job`), so a retry scheduled for tomorrow
/// (a closed send window, a long backoff) never holds up those due sooner.
/// Returns false if shut down first.
pub(crate) async fn wait_until_due(batch: &[Delivered], shutdown: &CancellationToken) -> bool {
    let due = batch
        .iter()
        .filter_map(|d| SendJob::decode(d.record.payload.as_slice()).ok())
        .filter_map(|job| job.not_before.as_ref().map(timestamp_to_millis))
        .min()
        .unwrap_or(0);
    let wait = due - now_millis();
    if wait <= 0 {
        return true;
    }
    tracing::debug!(wait_ms = wait, retries = batch.len(), "waiting for retries to come due");
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_secs(30);
        let first = backoff(base, 1).as_secs_f64();
        assert!((24.0..=36.0).contains(&first), "{first}");
        let third = backoff(base, 3).as_secs_f64();
        assert!((96.0..=144.0).contains(&third), "{third}");
        assert!(backoff(base, 30).as_secs() <= 4320);
    }
}
