//! The consumer loop every idempotent consumer shares: poll a batch, apply
//! each record, commit only after the whole batch took effect; on a failure,
//! wait, rewind to the committed offsets and try again.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{Delivered, DynBus, Result};

/// Runs `apply` over every record of `topic` in consumer group `group` until
/// `shutdown`. `apply` must be idempotent (a batch may be applied again after
/// a failure or a crash). Returns the number of records committed.
pub async fn consume<F, Fut>(
    bus: DynBus,
    group: &str,
    topic: &str,
    shutdown: CancellationToken,
    apply: F,
) -> Result<u64>
where
    F: FnMut(Delivered) -> Fut,
    Fut: Future<Output = std::result::Result<(), String>>,
{
    consume_reporting_lag(bus, group, topic, shutdown, |_| {}, apply).await
}

/// [`consume`], also handing this member's lag per partition to `on_lag`
/// every 10 s (for the `consumer_lag` gauge).
pub async fn consume_reporting_lag<F, Fut>(
    bus: DynBus,
    group: &str,
    topic: &str,
    shutdown: CancellationToken,
    on_lag: impl Fn(&[(String, u32, i64)]),
    mut apply: F,
) -> Result<u64>
where
    F: FnMut(Delivered) -> Fut,
    Fut: Future<Output = std::result::Result<(), String>>,
{
    let mut consumer = bus.consumer(group, &[topic.to_owned()]).await?;
    let mut committed = 0;
    let mut lag_reported: Option<std::time::Instant> = None;
    while !shutdown.is_cancelled() {
        if lag_reported.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            lag_reported = Some(std::time::Instant::now());
            match consumer.lag().await {
                Ok(lag) => on_lag(&lag),
                Err(error) => tracing::debug!(%error, topic, group, "consumer lag unavailable"),
            }
        }
        let batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            batch = consumer.poll(500, Duration::from_millis(500)) => batch,
        };
        let batch = match batch {
            Ok(batch) if batch.is_empty() => continue,
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(%error, topic, group, "polling failed, retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut failed = None;
        for delivered in &batch {
            if delivered.record.payload.is_empty() {
                continue; // redacted (erasure)
            }
            if let Err(error) = apply(delivered.clone()).await {
                failed = Some((delivered.partition, delivered.offset, error));
                break;
            }
        }
        if let Some((partition, offset, error)) = failed {
            tracing::warn!(%error, topic, group, partition, offset, "applying a record failed, will retry the batch");
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Err(error) = consumer.rewind().await {
                tracing::warn!(%error, topic, group, "rewinding failed, retrying later");
            }
            continue;
        }
        match consumer.commit(&batch).await {
            Ok(()) => committed += batch.len() as u64,
            Err(error) => {
                tracing::warn!(%error, topic, group, "committing offsets failed, continuing (records are applied idempotently)")
            }
        }
    }
    Ok(committed)
}
