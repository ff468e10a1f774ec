//! The behaviour every bus backend must have, written once and run against
//! the embedded log and against Apache Kafka (`BROADSIDE_TEST_KAFKA_URI`,
//! which `tests/run.sh` sets after starting a broker). Each case uses its own
//! topic and group names, so runs never see each other's records.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::*;

fn record(key: &str, payload: &str) -> Record {
    Record { key: key.into(), payload: payload.as_bytes().to_vec(), headers: vec![("type".into(), "t".into())] }
}

fn unique(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("suite-{name}-{}-{nanos}-{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// Polls until `want` records arrived or 30 s passed (a Kafka group join takes seconds).
async fn poll_until(consumer: &mut dyn Consumer, want: usize) -> Vec<Delivered> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        got.extend(consumer.poll(want - got.len(), Duration::from_millis(500)).await.unwrap());
    }
    got
}

fn keys(delivered: &[Delivered]) -> BTreeSet<String> {
    delivered.iter().map(|d| d.record.key.clone()).collect()
}

/// Opens a bus whose topics `topics` exist with the suite's partition count.
pub type Opener = Box<dyn Fn(Vec<String>) -> futures::future::BoxFuture<'static, DynBus> + Send + Sync>;
type Open<'a> = &'a (dyn Fn(Vec<String>) -> futures::future::BoxFuture<'static, DynBus> + Send + Sync);

/// A new member of a group starts at the group's committed offsets: what was
/// committed is not read again, and what was read but not committed (a
/// member that crashed before its effects were done) is.
pub async fn committed_offsets_hand_over_to_the_next_member(open: Open<'_>) {
    let topic = unique("handover");
    let group = unique("g");
    let bus = open(vec![topic.clone()]).await;
    let landed = bus.publish(&topic, (0..10).map(|i| record(&format!("k{i}"), &format!("v{i}"))).collect()).await;
    let landed = landed.unwrap();
    assert_eq!(landed.len(), 10, "one position per record");
    for (i, (partition, _)) in landed.iter().enumerate() {
        assert_eq!(*partition, partition_for(&format!("k{i}"), bus.partitions()), "the same partitioner everywhere");
    }
    let mut first = bus.consumer(&group, std::slice::from_ref(&topic)).await.unwrap();
    let all = poll_until(first.as_mut(), 10).await;
    assert_eq!(keys(&all).len(), 10, "every record once");
    let partition = all[0].partition;
    let done: Vec<Delivered> = all.iter().filter(|d| d.partition == partition).cloned().collect();
    assert_eq!(bus.group_lag(&group, std::slice::from_ref(&topic)).await.unwrap(), 10, "nothing committed yet");
    first.commit(&done).await.unwrap();
    let owed = (10 - done.len()) as i64;
    assert_eq!(
        bus.group_lag(&group, std::slice::from_ref(&topic)).await.unwrap(),
        owed,
        "committed records are off the lag"
    );
    assert_eq!(
        bus.group_lag(&unique("idle"), std::slice::from_ref(&topic)).await.unwrap(),
        10,
        "a new group owes it all"
    );
    drop(first);

    let mut second = bus.consumer(&group, std::slice::from_ref(&topic)).await.unwrap();
    let rest = poll_until(second.as_mut(), 10 - done.len()).await;
    assert_eq!(keys(&rest), keys(&all).difference(&keys(&done)).cloned().collect(), "exactly the uncommitted records");
    assert_eq!(rest[0].record.header("type"), Some("t"), "headers travel");
    assert!(second.poll(10, Duration::from_millis(300)).await.unwrap().is_empty(), "nothing twice");
}

/// Records of one key arrive in publish order; two groups each read everything.
pub async fn one_key_keeps_its_order_and_groups_are_independent(open: Open<'_>) {
    let topic = unique("order");
    let bus = open(vec![topic.clone()]).await;
    for i in 0..5 {
        bus.publish(&topic, vec![record("same", &i.to_string())]).await.unwrap();
    }
    let mut a = bus.consumer(&unique("a"), std::slice::from_ref(&topic)).await.unwrap();
    let mut b = bus.consumer(&unique("b"), std::slice::from_ref(&topic)).await.unwrap();
    let from_a: Vec<Vec<u8>> = poll_until(a.as_mut(), 5).await.into_iter().map(|d| d.record.payload).collect();
    assert_eq!(from_a, (0..5).map(|i| i.to_string().into_bytes()).collect::<Vec<_>>());
    assert_eq!(poll_until(b.as_mut(), 5).await.len(), 5);
}

/// `rewind` goes back to the committed offsets; `lag` counts what is unread.
pub async fn rewind_rereads_and_lag_counts_the_unread(open: Open<'_>) {
    let topic = unique("rewind");
    let bus = open(vec![topic.clone()]).await;
    bus.publish(&topic, (0..6).map(|i| record("k", &i.to_string())).collect()).await.unwrap();
    let mut consumer = bus.consumer(&unique("g"), std::slice::from_ref(&topic)).await.unwrap();
    let read = poll_until(consumer.as_mut(), 6).await;
    assert_eq!(read.len(), 6);
    consumer.commit(&read[..2]).await.unwrap();
    let lag: i64 = consumer.lag().await.unwrap().iter().map(|(_, _, behind)| behind).sum();
    assert_eq!(lag, 0, "everything was read");
    consumer.rewind().await.unwrap();
    let again = poll_until(consumer.as_mut(), 4).await;
    assert_eq!(
        again.iter().map(|d| d.record.payload.clone()).collect::<Vec<_>>(),
        (2..6).map(|i: i32| i.to_string().into_bytes()).collect::<Vec<_>>(),
        "the uncommitted records, in order"
    );
    let (owned, of) = consumer.assigned_share();
    assert_eq!((owned, of), (bus.partitions(), bus.partitions()), "a lone member owns every partition");
}

/// Every header arrives as published, in order, beside its key and payload.
pub async fn headers_travel_with_the_record(open: Open<'_>) {
    let topic = unique("headers");
    let bus = open(vec![topic.clone()]).await;
    let headers = vec![
        ("type".to_owned(), "broadside.v1.SendJob".to_owned()),
        ("tenant".to_owned(), "t-ü".to_owned()),
        ("traceparent".to_owned(), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned()),
    ];
    let sent = Record { key: "k".into(), payload: vec![0, 1, 2, 255], headers: headers.clone() };
    bus.publish(&topic, vec![sent]).await.unwrap();
    let mut consumer = bus.consumer(&unique("g"), std::slice::from_ref(&topic)).await.unwrap();
    let got = poll_until(consumer.as_mut(), 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].record.key.as_str(), got[0].record.payload.as_slice()), ("k", &[0u8, 1, 2, 255][..]));
    assert_eq!(got[0].record.headers, headers);
    assert_eq!(got[0].record.header("tenant"), Some("t-ü"));
    assert_eq!(got[0].topic, topic);
}

/// `bus_suite!(opener)` expands to one `#[tokio::test]` per case, each
/// running that case against the bus `opener()` gives (`None`: skipped, the
/// opener says why). Invoke it in a module named for the backend, so nextest
/// lists `suite::embedded::…` and `suite::kafka::…` case by case.
#[macro_export]
macro_rules! bus_suite {
    ($opener:expr) => {
        $crate::bus_suite!(@cases $opener;
            committed_offsets_hand_over_to_the_next_member,
            one_key_keeps_its_order_and_groups_are_independent,
            rewind_rereads_and_lag_counts_the_unread,
            headers_travel_with_the_record,
        );
    };
    (@cases $opener:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(open) = $opener else { return };
                $crate::suite::$case(open.as_ref()).await;
            }
        )+
    };
}

#[cfg(test)]
mod embedded {
    use std::sync::Arc;

    use futures::FutureExt;

    use crate::*;

    /// A fresh log in its own directory for every case.
    fn opener() -> Option<super::Opener> {
        let dir = tempfile::tempdir().unwrap();
        let bus: DynBus = Arc::new(EmbeddedBus::open(&dir.path().join("bus.db"), 4).unwrap());
        Some(Box::new(move |_topics: Vec<String>| {
            let _keep = &dir;
            let bus = bus.clone();
            async move { bus }.boxed()
        }))
    }

    crate::bus_suite!(opener());
}

/// Against a real broker: `BROADSIDE_TEST_KAFKA_URI=kafka://HOST:PORT`.
#[cfg(test)]
mod kafka {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use futures::FutureExt;

    use super::{keys, record, unique};
    use crate::*;

    fn settings() -> Option<KafkaSettings> {
        let Ok(url) = std::env::var("BROADSIDE_TEST_KAFKA_URI") else {
            println!(
                "SKIPPED: the Kafka bus suite needs a broker; set BROADSIDE_TEST_KAFKA_URI=kafka://127.0.0.1:19092 (deploy/local/engines.sh kafka up)"
            );
            return None;
        };
        println!("Kafka bus suite: broker {url}");
        let bootstrap = url.strip_prefix("kafka://").expect("BROADSIDE_TEST_KAFKA_URI is kafka://HOST:PORT").to_owned();
        Some(KafkaSettings {
            bootstrap,
            partitions: 4,
            replication_factor: 1,
            session_timeout_ms: 6000,
            assignment_strategy: "cooperative-sticky".into(),
            client_id: "broadside-bus-suite".into(),
            properties: Vec::new(),
        })
    }

    fn opener() -> Option<super::Opener> {
        let settings = settings()?;
        Some(Box::new(move |topics: Vec<String>| {
            let settings = settings.clone();
            async move {
                let bus = KafkaBus::connect(settings).unwrap();
                assert!(bus.ensure_topics(&topics).await.unwrap().is_empty(), "new topics have the suite's partitions");
                Arc::new(bus) as DynBus
            }
            .boxed()
        }))
    }

    crate::bus_suite!(opener());

    /// A second member of a group takes over some partitions (a rebalance):
    /// the two shares add up to every partition, and each record reaches
    /// exactly one member. Kafka only: the embedded log has one member a group.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_member_shares_the_partitions() {
        let Some(open) = opener() else { return };
        let topic = unique("rebalance");
        let group = unique("g");
        let bus = open(vec![topic.clone()]).await;
        let mut first = bus.consumer(&group, std::slice::from_ref(&topic)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while first.assigned_share().0 == 0 && Instant::now() < deadline {
            first.poll(1, Duration::from_millis(200)).await.unwrap();
        }
        let mut second = bus.consumer(&group, std::slice::from_ref(&topic)).await.unwrap();
        while (second.assigned_share().0 == 0 || first.assigned_share().0 == bus.partitions())
            && Instant::now() < deadline
        {
            first.poll(1, Duration::from_millis(200)).await.unwrap();
            second.poll(1, Duration::from_millis(200)).await.unwrap();
        }
        let (a, b) = (first.assigned_share(), second.assigned_share());
        assert!(a.0 > 0 && b.0 > 0, "both members own partitions after the rebalance: {a:?} {b:?}");
        assert_eq!(a.0 + b.0, bus.partitions(), "every partition has exactly one owner: {a:?} {b:?}");

        bus.publish(&topic, (0..40).map(|i| record(&format!("k{i}"), "v")).collect()).await.unwrap();
        let (mut from_first, mut from_second) = (Vec::new(), Vec::new());
        while from_first.len() + from_second.len() < 40 && Instant::now() < deadline {
            from_first.extend(first.poll(40, Duration::from_millis(200)).await.unwrap());
            from_second.extend(second.poll(40, Duration::from_millis(200)).await.unwrap());
        }
        assert_eq!(from_first.len() + from_second.len(), 40, "every record once");
        assert!(keys(&from_first).is_disjoint(&keys(&from_second)), "no record reaches both members");
        assert!(!from_first.is_empty() && !from_second.is_empty(), "both members receive records");
    }
}
