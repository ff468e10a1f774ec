//! Trace context crosses the bus: a client's `traceparent` on StartCampaign
//! is continued by the fan-out, carried by every send job, continued by the
//! sender around the SMTP transaction, and carried by the delivery events it
//! publishes back (to dispatch and the feedback role). Read from the
//! embedded bus log's record headers.

use std::time::Duration;

use broadside_proto::v1::*;
use broadside_tests::{Sandbox, simple_template, test_config};
use opentelemetry::trace::TracerProvider as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_campaign_trace_reaches_every_send_and_delivery_event() {
    // Real span contexts (OpenTelemetry SDK, no exporter needed to propagate them).
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .try_init()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let list = sandbox.create_list("Traced").await.unwrap();
    for n in 0..3 {
        sandbox.add_subscriber(&list, &format!("t{n}@example.com"), "T", serde_json::json!({})).await.unwrap();
    }
    let campaign = sandbox.create_campaign(&list, simple_template()).await.unwrap();
    let mut start = tonic::Request::new(StartCampaignRequest { name: campaign.clone() });
    start.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01").parse().unwrap());
    sandbox.campaigns.start_campaign(start).await.unwrap();
    sandbox.wait_for_completion(&campaign, Duration::from_secs(60)).await.unwrap();

    let conn = rusqlite::Connection::open(dir.path().join("broadside.db")).unwrap();
    let headers = |topic: &str| -> Vec<String> {
        conn.prepare("SELECT headers FROM bus_log WHERE topic = ?1")
            .unwrap()
            .query_map([topic], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let trace_of = |headers: &str| -> String {
        let traceparent = headers.lines().find_map(|l| l.strip_prefix("traceparent\t")).unwrap_or_default();
        traceparent.split('-').nth(1).unwrap_or_default().to_owned()
    };
    let jobs = headers("broadside.send-jobs");
    let deliveries = headers("broadside.delivery-events");
    assert_eq!((jobs.len(), deliveries.len()), (3, 3));
    for (topic, records) in [("send-jobs", &jobs), ("delivery-events", &deliveries)] {
        for record in records {
            assert_eq!(trace_of(record), TRACE_ID, "{topic} record headers: {record:?}");
        }
    }
    // Each hop is its own span: the sender's span id differs from the fan-out's.
    let span_of = |headers: &str| headers.lines().find_map(|l| l.strip_prefix("traceparent\t")).unwrap().to_owned();
    assert_ne!(span_of(&jobs[0]).split('-').nth(2), span_of(&deliveries[0]).split('-').nth(2));
    sandbox.stop().await.unwrap();
}
