//! The consumer loop every idempotent consumer shares: poll a batch, apply
//! each record, commit only after the whole batch took effect; on a failure,
//! wait, rewind to the committed offsets and try again.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{Consumer, Delivered, DynBus, Result};

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
        report_lag(consumer.as_mut(), &mut lag_reported, &on_lag).await;
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

/// Hands `consumer`'s lag to `on_lag`, at most every 10 s (`last` remembers when).
pub async fn report_lag(
    consumer: &mut dyn Consumer,
    last: &mut Option<std::time::Instant>,
    on_lag: impl Fn(&[(String, u32, i64)]),
) {
    if last.is_some_and(|at| at.elapsed() < Duration::from_secs(10)) {
        return;
    }
    *last = Some(std::time::Instant::now());
    match consumer.lag().await {
        Ok(lag) => on_lag(&lag),
        Err(error) => tracing::debug!(%error, "consumer lag unavailable"),
    }
}
