//! Segments through the real API: rules with positioned errors, previews
//! that read the caller's own writes by bus position, trees, and campaigns
//! that target a segment.

use std::time::Duration;

use broadside_proto::v1::segment_service_client::SegmentServiceClient;
use broadside_proto::v1::*;
use broadside_tests::{Sandbox, read_messages, simple_template, test_config, wait_for};

async fn segments(sandbox: &Sandbox) -> SegmentServiceClient<broadside::client::Authed> {
    SegmentServiceClient::new(broadside_tests::authed(sandbox.node.as_ref().unwrap(), &sandbox.api_key).await.unwrap())
}

async fn preview(
    client: &mut SegmentServiceClient<broadside::client::Authed>,
    rule: &str,
    min_position: &str,
) -> PreviewSegmentResponse {
    let request = PreviewSegmentRequest {
        rule: rule.into(),
        min_position: min_position.into(),
        page_size: 100,
        ..Default::default()
    };
    wait_for("the projection to load", Duration::from_secs(20), || {
        let (mut client, request) = (client.clone(), request.clone());
        async move {
            match client.preview_segment(request).await {
                Ok(response) => Ok(Some(response.into_inner())),
                Err(status) if status.code() == tonic::Code::Unavailable => Ok(None),
                Err(status) => Err(status.into()),
            }
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_reads_its_own_writes_by_position_and_campaigns_target_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let list = sandbox.create_list("Weekly").await.unwrap();
    let list_id = list.trim_start_matches("lists/").to_owned();
    for (n, country) in ["DE", "FR", "DE", "US", "DE"].iter().enumerate() {
        let attributes = serde_json::json!({"country": country, "age": 20 + n * 10});
        sandbox.add_subscriber(&list, &format!("p{n}@example.com"), &format!("P{n}"), attributes).await.unwrap();
    }
    let mut client = segments(&sandbox).await;
    let rule = format!("attributes.country = \"DE\" and attributes.age >= 30 and in_list(\"{list_id}\")");
    let mut first = preview(&mut client, &rule, "").await;
    // Events apply asynchronously: wait until the five creations are in.
    if first.total != 2 {
        first = wait_for("the creations to apply", Duration::from_secs(20), || {
            let mut client = client.clone();
            let rule = rule.clone();
            async move {
                let r = preview(&mut client, &rule, "").await;
                Ok((r.total == 2).then_some(r))
            }
        })
        .await
        .unwrap();
    }
    assert_eq!(first.total, 2, "p2 (30) and p4 (60)");
    assert!(first.subscribers.iter().all(|s| s.starts_with("subscribers/")));
    assert!(!first.position.is_empty());

    // Move p0 to DE aged 35, then read it back at once by the position of the write.
    let p0 =
        sandbox.subscribers.list_subscribers(ListSubscribersRequest::default()).await.unwrap().into_inner().subscribers;
    let p0 = p0.into_iter().find(|s| s.email == "p0@example.com").unwrap();
    let update = UpdateSubscriberRequest {
        subscriber: Some(Subscriber {
            name: p0.name.clone(),
            attributes: Some(broadside_proto::convert::json_to_struct(
                serde_json::json!({"country": "DE", "age": 35}).as_object().unwrap(),
            )),
            ..Default::default()
        }),
        update_mask: vec!["attributes".into()],
    };
    let response = sandbox.subscribers.update_subscriber(update).await.unwrap();
    let position =
        response.metadata().get("x-broadside-position").expect("a position header").to_str().unwrap().to_owned();
    assert!(position.contains(':'), "{position}");
    let after = preview(&mut client, &rule, &position).await;
    assert_eq!(after.total, 3, "the write is reflected as soon as the preview answers");
    assert!(after.subscribers.contains(&p0.name));
    let reflected = broadside_segmentation::live::parse_position(&after.position).unwrap();
    for (partition, offset) in broadside_segmentation::live::parse_position(&position).unwrap() {
        let applied = reflected.iter().find(|(p, _)| *p == partition).map(|(_, o)| *o);
        assert!(
            applied.is_some_and(|applied| applied >= offset),
            "answer at {} covers the write at {position}",
            after.position
        );
    }
    let bad_position = client
        .preview_segment(PreviewSegmentRequest { rule: rule.clone(), min_position: "x".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(bad_position.code(), tonic::Code::InvalidArgument);

    // Bad rules name the place and the fix.
    let bad = Segment {
        display_name: "bad".into(),
        rule: "attributes.country = \"DE\" and\ncontry = 1".into(),
        ..Default::default()
    };
    let error =
        client.create_segment(CreateSegmentRequest { segment: Some(bad), ..Default::default() }).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(
        error.message().starts_with("segment.rule: line 2, column 1: unknown field `contry`"),
        "{}",
        error.message()
    );

    // A tree creates the same segment as its text; a campaign targets it.
    let tree = broadside_segmentation::rule::proto::to_proto(&broadside_segmentation::rule::parse(&rule).unwrap());
    let segment = Segment { display_name: "German adults".into(), tree: Some(tree), ..Default::default() };
    let segment = client
        .create_segment(CreateSegmentRequest { segment: Some(segment), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(segment.rule, rule);
    let listed = client.list_segments(ListSegmentsRequest::default()).await.unwrap().into_inner().segments;
    assert_eq!(listed.len(), 1);

    let template = sandbox
        .templates
        .create_template(CreateTemplateRequest { template: Some(simple_template()), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let campaign = Campaign {
        display_name: "Segmented".into(),
        template: template.name,
        list: list.clone(),
        segment: segment.name.clone(),
        from_address: "news@sender.example".into(),
        postal_address: broadside_tests::POSTAL_ADDRESS.into(),
        ..Default::default()
    };
    let campaign = sandbox
        .campaigns
        .create_campaign(CreateCampaignRequest { campaign: Some(campaign), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(campaign.segment, segment.name);
    sandbox.campaigns.start_campaign(StartCampaignRequest { name: campaign.name.clone() }).await.unwrap();
    let done = sandbox.wait_for_completion(&campaign.name, Duration::from_secs(30)).await.unwrap();
    assert_eq!(done.stats.unwrap().delivered, 3);
    let messages = read_messages(&sandbox.outbox()).unwrap();
    for (n, expected) in [(0, true), (1, false), (2, true), (3, false), (4, true)] {
        let got = messages.iter().any(|m| m.contains(&format!("p{n}@example.com")));
        assert_eq!(got, expected, "p{n}");
    }

    let stream = client
        .stream_segment_members(StreamSegmentMembersRequest {
            name: segment.name.clone(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let pages: Vec<SegmentMembersPage> = futures_pages(stream).await;
    assert_eq!(pages.iter().map(|p| p.subscriber_ids.len()).collect::<Vec<_>>(), vec![2, 1]);
    client.delete_segment(DeleteSegmentRequest { name: segment.name.clone() }).await.unwrap();
    let gone = client.get_segment(GetSegmentRequest { name: segment.name }).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    sandbox.stop().await.unwrap();
}

async fn futures_pages(mut stream: tonic::Streaming<SegmentMembersPage>) -> Vec<SegmentMembersPage> {
    let mut pages = Vec::new();
    while let Some(page) = stream.message().await.unwrap() {
        pages.push(page);
    }
    pages
}

/// ImportSubscribers answers with the position of the events it published
/// (from a task of its own), so a preview at that position sees every
/// imported row at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_answers_with_the_position_of_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let list = sandbox.create_list("Imported").await.unwrap();
    let list_id = list.trim_start_matches("lists/").to_owned();
    let mut client = segments(&sandbox).await;
    let rule = format!("attributes.country = \"DE\" and attributes.age >= 30 and in_list(\"{list_id}\")");
    let mut csv = String::from("email,name,country,age:number\n");
    for n in 0..300 {
        let country = if n % 3 == 0 { "FR" } else { "DE" };
        csv.push_str(&format!("q{n}@example.com,Q{n},{country},{}\n", 20 + n % 40));
    }
    let import = vec![
        ImportSubscribersRequest { parent: list.clone(), ..Default::default() },
        ImportSubscribersRequest { chunk: csv.into_bytes(), ..Default::default() },
    ];
    let response = sandbox.subscribers.import_subscribers(tokio_stream::iter(import)).await.unwrap();
    let position = response
        .metadata()
        .get("x-broadside-position")
        .expect("ImportSubscribers answers with a position header")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(position.contains(':'), "{position}");
    assert_eq!(response.into_inner().imported, 300);
    let expected = (0..300).filter(|n| n % 3 != 0 && 20 + n % 40 >= 30).count() as i64;
    let imported = preview(&mut client, &rule, &position).await;
    assert_eq!(imported.total, expected, "every imported German of 30 or more, as soon as the preview answers");
    sandbox.stop().await.unwrap();
}
