//! The dispatch reconciler, the delivery guarantee's safety net: send jobs
//! whose offsets were committed without being processed (the "stranded jobs"
//! symptom) are re-dispatched once the senders have nothing left queued, and
//! the campaign completes with every recipient sent exactly once.

use std::time::Duration;

use broadside::Role;
use broadside_bus::Topic;
use broadside_proto::v1::*;
use broadside_tests::*;

const RECIPIENTS: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_committed_but_never_sent_are_re_dispatched_and_sent_once() {
    let dir = tempfile::tempdir().unwrap();
    let list = bulk_load(dir.path(), RECIPIENTS).await.unwrap();
    let mut config = test_config(dir.path());
    config.dispatch.reconcile_after_secs = 2;

    // Fan out with no sender running, then strand some jobs: commit the
    // senders' group past records nobody processed.
    let no_sender = [Role::Subscribers, Role::Segmentation, Role::Dispatch, Role::Feedback];
    let mut sandbox = Sandbox::start_roles(config.clone(), &no_sender).await.unwrap();
    let campaign = sandbox.create_campaign(&list, simple_template()).await.unwrap();
    sandbox.campaigns.start_campaign(StartCampaignRequest { name: campaign.clone() }).await.unwrap();
    sandbox
        .wait_for_campaign(&campaign, Duration::from_secs(30), |c| {
            c.stats.as_ref().is_some_and(|s| s.recipients == RECIPIENTS as i64)
        })
        .await
        .unwrap();
    sandbox.stop().await.unwrap();
    let bus = broadside::backends::open(&config).await.unwrap().bus;
    let topic = Topic::SendJobs.name(&config.bus.topic_prefix);
    let mut thief = bus.consumer(broadside_bus::SENDER_GROUP, std::slice::from_ref(&topic)).await.unwrap();
    let jobs = thief.poll(RECIPIENTS, Duration::from_secs(5)).await.unwrap();
    assert_eq!(jobs.len(), RECIPIENTS, "one job per recipient");
    let partition = jobs[0].partition;
    let stranded: Vec<_> = jobs.iter().filter(|job| job.partition == partition).cloned().collect();
    thief.commit(&stranded).await.unwrap();
    drop((thief, bus));
    eprintln!("stranded {} of {RECIPIENTS} jobs (partition {partition})", stranded.len());

    // With senders: the rest is sent, then the reconciler finds the
    // recipients without an outcome while nothing is queued, and re-sends them.
    let mut sandbox = Sandbox::start(config).await.unwrap();
    let done = sandbox.wait_for_completion(&campaign, Duration::from_secs(60)).await.unwrap();
    let stats = done.stats.unwrap();
    assert_eq!((stats.recipients, stats.delivered, stats.failed), (RECIPIENTS as i64, RECIPIENTS as i64, 0));
    let capture = broadside::demo::count_capture(&sandbox.outbox()).unwrap();
    assert_eq!(capture.unique(), RECIPIENTS, "nobody lost, the stranded included");
    assert_eq!(capture.duplicates(), 0, "nobody got two");
    sandbox.stop().await.unwrap();
}
