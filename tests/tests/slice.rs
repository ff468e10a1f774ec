//! The vertical slice through gRPC, in-process: list, subscribers, template,
//! campaign, fan-out, sender, capture, counters.

use std::time::Duration;

use broadside_mail::token::TokenSigner;
use broadside_proto::v1::*;
use broadside_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_reaches_every_recipient_once_with_bulk_headers() {
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let list = sandbox.create_list("Readers").await.unwrap();
    let people = [
        ("ada@example.com", "Ada Lovelace", "London"),
        ("alan@example.org", "Alan Turing", "Wilmslow"),
        ("grace@example.net", "Grace Hopper", "Arlington"),
    ];
    let mut ids = Vec::new();
    for (email, name, city) in people {
        let subscriber = sandbox.add_subscriber(&list, email, name, serde_json::json!({"city": city})).await.unwrap();
        ids.push(subscriber.name.trim_start_matches("subscribers/").to_owned());
    }
    let campaign = sandbox.create_campaign(&list, simple_template()).await.unwrap();
    let campaign_id = campaign.trim_start_matches("campaigns/").to_owned();
    let started =
        sandbox.campaigns.start_campaign(StartCampaignRequest { name: campaign.clone() }).await.unwrap().into_inner();
    assert_eq!(started.state, CampaignState::Sending as i32);

    let done = sandbox.wait_for_completion(&campaign, Duration::from_secs(30)).await.unwrap();
    let stats = done.stats.unwrap();
    assert_eq!((stats.recipients, stats.delivered, stats.failed), (3, 3, 0));
    assert!(done.complete_time.is_some());

    let messages = read_messages(&sandbox.outbox()).unwrap();
    assert_eq!(messages.len(), 3, "one .eml per recipient");
    let key = std::fs::read_to_string(dir.path().join("token.key")).unwrap();
    let signer = TokenSigner::new("k1", key.trim().as_bytes());
    for ((email, name, city), subscriber_id) in people.iter().zip(&ids) {
        let message = messages
            .iter()
            .find(|m| m.contains(&format!("<{email}>")))
            .unwrap_or_else(|| panic!("no message for {email}"));
        let header = |name: &str| {
            broadside::demo::header_value(message, name).unwrap_or_else(|| panic!("{name} missing in\n{message}"))
        };
        assert_eq!(header("Message-ID"), format!("<{campaign_id}.{subscriber_id}@broadside.localhost>"));
        assert!(header("Date").len() > 20);
        assert_eq!(header("Subject"), format!("Hello {name}"));
        assert!(header("To").contains(name));
        assert!(header("List-Id").starts_with(&format!("<{}.", list.trim_start_matches("lists/"))));
        assert_eq!(header("List-Unsubscribe-Post"), "List-Unsubscribe=One-Click");
        assert!(header("Feedback-ID").starts_with(&campaign_id));
        let unsubscribe = header("List-Unsubscribe");
        let https = unsubscribe.split(['<', '>']).find(|p| p.starts_with("http")).expect("https unsubscribe URL");
        assert!(unsubscribe.contains("<mailto:"), "{unsubscribe}");
        let claims = signer.verify(https.rsplit('/').next().unwrap()).expect("token verifies");
        assert_eq!(&claims.subscriber_id, subscriber_id);
        assert_eq!(claims.campaign_id, campaign_id);
        assert!(message.contains(&format!("Hi {name} from {city}")), "personalized body for {email}");
    }
    sandbox.stop().await.unwrap();
}

fn assert_status(result: Result<impl std::fmt::Debug, tonic::Status>, code: tonic::Code, field: &str) {
    let status = result.expect_err("the request must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(field), "message {:?} should name {field}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_naming_the_field_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let list = sandbox.create_list("Readers").await.unwrap();
    let create = |email: &str, name: &str, lists: Vec<String>| CreateSubscriberRequest {
        subscriber: Some(Subscriber { email: email.into(), display_name: name.into(), lists, ..Default::default() }),
        ..Default::default()
    };
    use tonic::Code::*;
    let subs = &mut sandbox.subscribers;
    assert_status(
        subs.create_subscriber(create("not-an-address", "", vec![list.clone()])).await,
        InvalidArgument,
        "subscriber.email",
    );
    assert_status(
        subs.create_subscriber(create(&format!("{}@example.com", "a".repeat(65)), "", vec![])).await,
        InvalidArgument,
        "subscriber.email",
    );
    assert_status(
        subs.create_subscriber(create("x@example.com", "Eve\r\nBcc: all@example.com", vec![])).await,
        InvalidArgument,
        "subscriber.display_name",
    );
    assert_status(
        subs.create_subscriber(create("x@example.com", "", vec!["lists/nope".into()])).await,
        NotFound,
        "lists/nope",
    );
    assert_status(
        subs.create_subscriber(create("x@example.com", "", vec!["bogus".into()])).await,
        InvalidArgument,
        "subscriber.lists[0]",
    );
    let all = subs.list_subscribers(ListSubscribersRequest::default()).await.unwrap().into_inner();
    assert!(all.subscribers.is_empty(), "refused requests must leave nothing behind: {:?}", all.subscribers);
    assert_status(subs.get_list(GetListRequest { name: "lists/missing".into() }).await, NotFound, "lists/missing");
    let bad_list = CreateListRequest {
        list: Some(MailingList { display_name: "A\nB".into(), ..Default::default() }),
        request_id: String::new(),
    };
    assert_status(subs.create_list(bad_list).await, InvalidArgument, "list.display_name");

    let bad_template =
        Template { subject: "Hi {{ subscriber.display_name".into(), text_body: "x".into(), ..Default::default() };
    assert_status(
        sandbox
            .templates
            .create_template(CreateTemplateRequest { template: Some(bad_template), request_id: String::new() })
            .await,
        InvalidArgument,
        "template.subject",
    );
    let header_injection =
        Template { subject: "Hi{{ '\\r\\nBcc: x@example.com' }}".into(), text_body: "x".into(), ..Default::default() };
    assert_status(
        sandbox
            .templates
            .create_template(CreateTemplateRequest { template: Some(header_injection), request_id: String::new() })
            .await,
        InvalidArgument,
        "template.subject",
    );
    let templates = sandbox.templates.list_templates(ListTemplatesRequest::default()).await.unwrap().into_inner();
    assert!(templates.templates.is_empty());

    let template = sandbox
        .templates
        .create_template(CreateTemplateRequest { template: Some(simple_template()), request_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    let campaign = |list: &str, from: &str, from_name: &str| CreateCampaignRequest {
        campaign: Some(Campaign {
            template: template.name.clone(),
            list: list.into(),
            from_address: from.into(),
            postal_address: broadside_tests::POSTAL_ADDRESS.into(),
            from_name: from_name.into(),
            ..Default::default()
        }),
        request_id: String::new(),
    };
    let campaigns = &mut sandbox.campaigns;
    assert_status(
        campaigns.create_campaign(campaign("lists/unknown", "a@example.com", "")).await,
        NotFound,
        "campaign.list",
    );
    assert_status(
        campaigns.create_campaign(campaign(&list, "no-at", "")).await,
        InvalidArgument,
        "campaign.from_address",
    );
    assert_status(
        campaigns.create_campaign(campaign(&list, "a@example.com", "X\r\nY: z")).await,
        InvalidArgument,
        "campaign.from_name",
    );
    let empty = campaigns.create_campaign(campaign(&list, "a@example.com", "")).await.unwrap().into_inner();
    assert_status(
        campaigns.start_campaign(StartCampaignRequest { name: empty.name.clone() }).await,
        InvalidArgument,
        "list",
    );
    let after = campaigns.get_campaign(GetCampaignRequest { name: empty.name.clone() }).await.unwrap().into_inner();
    assert_eq!(after.state, CampaignState::Draft as i32, "a refused start leaves the draft as it was");
    assert_status(
        campaigns.get_campaign(GetCampaignRequest { name: "campaigns/none".into() }).await,
        NotFound,
        "campaigns/none",
    );
    sandbox.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_with_a_request_id_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let request = CreateListRequest {
        list: Some(MailingList { display_name: "Once".into(), ..Default::default() }),
        request_id: "r-1".into(),
    };
    let first = sandbox.subscribers.create_list(request.clone()).await.unwrap().into_inner();
    let second = sandbox.subscribers.create_list(request).await.unwrap().into_inner();
    assert_eq!(first.name, second.name);
    let lists = sandbox.subscribers.list_lists(ListListsRequest::default()).await.unwrap().into_inner();
    assert_eq!(lists.lists.len(), 1);
    sandbox.stop().await.unwrap();
}
