//! Tenant isolation and the scope matrix: every RPC refuses a call without
//! a valid key (UNAUTHENTICATED) or without its scope (PERMISSION_DENIED),
//! and a key of tenant B can neither read nor change anything of tenant A.

use broadside::client::Authed;
use broadside_proto::v1::api_key_service_client::ApiKeyServiceClient;
use broadside_proto::v1::audit_service_client::AuditServiceClient;
use broadside_proto::v1::campaign_service_client::CampaignServiceClient;
use broadside_proto::v1::feedback_service_client::FeedbackServiceClient;
use broadside_proto::v1::segment_service_client::SegmentServiceClient;
use broadside_proto::v1::subscriber_service_client::SubscriberServiceClient;
use broadside_proto::v1::template_service_client::TemplateServiceClient;
use broadside_proto::v1::*;
use broadside_store::{Scope, Tenant};
use broadside_tests::{Sandbox, authed, simple_template, test_config};
use tonic::Code;

/// Tenant A's resources the calls refer to.
struct Fixture {
    list: String,
    subscriber: String,
    email: String,
    template: String,
    campaign: String,
}

/// Every RPC with the scope it needs (the spec this test holds the code to).
const RPCS: &[(&str, Scope)] = &[
    ("CreateList", Scope::SubscribersWrite),
    ("GetList", Scope::Read),
    ("ListLists", Scope::Read),
    ("DeleteList", Scope::SubscribersWrite),
    ("CreateSubscriber", Scope::SubscribersWrite),
    ("GetSubscriber", Scope::Read),
    ("ListSubscribers", Scope::Read),
    ("UpdateSubscriber", Scope::SubscribersWrite),
    ("Unsubscribe", Scope::SubscribersWrite),
    ("ConfirmSubscription", Scope::SubscribersWrite),
    ("ListConsentRecords", Scope::Read),
    ("ExportSubscriber", Scope::Admin),
    ("EraseSubscriber", Scope::Admin),
    ("ImportSubscribers", Scope::SubscribersWrite),
    ("AddSuppression", Scope::SubscribersWrite),
    ("RemoveSuppression", Scope::SubscribersWrite),
    ("ListSuppressions", Scope::Read),
    ("CheckSuppression", Scope::Read),
    ("CreateApiKey", Scope::Admin),
    ("ListApiKeys", Scope::Admin),
    ("RevokeApiKey", Scope::Admin),
    ("ListAuditEvents", Scope::Admin),
    ("CreateTemplate", Scope::CampaignsWrite),
    ("GetTemplate", Scope::Read),
    ("ListTemplates", Scope::Read),
    ("CreateCampaign", Scope::CampaignsWrite),
    ("GetCampaign", Scope::Read),
    ("ListCampaigns", Scope::Read),
    ("StartCampaign", Scope::CampaignsWrite),
    ("PauseCampaign", Scope::CampaignsWrite),
    ("ResumeCampaign", Scope::CampaignsWrite),
    ("CancelCampaign", Scope::CampaignsWrite),
    ("CreateSegment", Scope::CampaignsWrite),
    ("GetSegment", Scope::Read),
    ("ListSegments", Scope::Read),
    ("PreviewSegment", Scope::Read),
    ("ListFeedbackRecords", Scope::Read),
    ("IngestReport", Scope::SubscribersWrite),
];

fn ok<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Result<T, tonic::Status> {
    result.map(tonic::Response::into_inner)
}

/// Calls `rpc` against tenant A's resources. Destructive calls name
/// resources that do not exist, so the matrix leaves A's data intact.
async fn call(rpc: &str, channel: Authed, f: &Fixture) -> Result<(), tonic::Status> {
    let mut subs = SubscriberServiceClient::new(channel.clone());
    let mut keys = ApiKeyServiceClient::new(channel.clone());
    let mut audit = AuditServiceClient::new(channel.clone());
    let mut templates = TemplateServiceClient::new(channel.clone());
    let mut campaigns = CampaignServiceClient::new(channel.clone());
    let mut segments = SegmentServiceClient::new(channel.clone());
    let mut feedback = FeedbackServiceClient::new(channel);
    let name = |n: &str| n.to_owned();
    match rpc {
        "CreateList" => {
            let list = MailingList { display_name: "x".into(), ..Default::default() };
            ok(subs.create_list(CreateListRequest { list: Some(list), ..Default::default() }).await).map(drop)
        }
        "GetList" => ok(subs.get_list(GetListRequest { name: name(&f.list) }).await).map(drop),
        "ListLists" => ok(subs.list_lists(ListListsRequest::default()).await).map(drop),
        "DeleteList" => ok(subs.delete_list(DeleteListRequest { name: "lists/none".into() }).await).map(drop),
        "CreateSubscriber" => {
            let subscriber =
                Subscriber { email: "new@example.com".into(), lists: vec![f.list.clone()], ..Default::default() };
            ok(subs
                .create_subscriber(CreateSubscriberRequest { subscriber: Some(subscriber), ..Default::default() })
                .await)
            .map(drop)
        }
        "GetSubscriber" => ok(subs.get_subscriber(GetSubscriberRequest { name: name(&f.subscriber) }).await).map(drop),
        "ListSubscribers" => ok(subs.list_subscribers(ListSubscribersRequest::default()).await).map(drop),
        "UpdateSubscriber" => {
            let subscriber =
                Subscriber { name: f.subscriber.clone(), display_name: "Changed".into(), ..Default::default() };
            let request =
                UpdateSubscriberRequest { subscriber: Some(subscriber), update_mask: vec!["display_name".into()] };
            ok(subs.update_subscriber(request).await).map(drop)
        }
        "Unsubscribe" => {
            let request = UnsubscribeRequest { name: "subscribers/none".into(), ..Default::default() };
            ok(subs.unsubscribe(request).await).map(drop)
        }
        "ConfirmSubscription" => {
            let request = ConfirmSubscriptionRequest { token: "k1.e30.AAAA".into(), ..Default::default() };
            ok(subs.confirm_subscription(request).await).map(drop)
        }
        "ListConsentRecords" => {
            ok(subs.list_consent_records(ListConsentRecordsRequest { parent: name(&f.subscriber) }).await).map(drop)
        }
        "ExportSubscriber" => {
            ok(subs.export_subscriber(ExportSubscriberRequest { email: f.email.clone(), ..Default::default() }).await)
                .map(drop)
        }
        "EraseSubscriber" => {
            let request = EraseSubscriberRequest { email: "nobody@example.com".into(), ..Default::default() };
            ok(subs.erase_subscriber(request).await).map(drop)
        }
        "ImportSubscribers" => {
            let first =
                ImportSubscribersRequest { parent: f.list.clone(), chunk: b"email\n".to_vec(), ..Default::default() };
            ok(subs.import_subscribers(tokio_stream::iter(vec![first])).await).map(drop)
        }
        "AddSuppression" => {
            let suppression = Suppression { target: "blocked@example.com".into(), ..Default::default() };
            ok(subs.add_suppression(AddSuppressionRequest { suppression: Some(suppression) }).await).map(drop)
        }
        "RemoveSuppression" => {
            let request = RemoveSuppressionRequest { target: "never@example.com".into(), ..Default::default() };
            ok(subs.remove_suppression(request).await).map(drop)
        }
        "ListSuppressions" => ok(subs.list_suppressions(ListSuppressionsRequest::default()).await).map(drop),
        "CheckSuppression" => {
            ok(subs.check_suppression(CheckSuppressionRequest { email: f.email.clone(), ..Default::default() }).await)
                .map(drop)
        }
        "CreateApiKey" => {
            let key = ApiKey { scopes: vec!["read".into()], ..Default::default() };
            ok(keys.create_api_key(CreateApiKeyRequest { key: Some(key) }).await).map(drop)
        }
        "ListApiKeys" => ok(keys.list_api_keys(ListApiKeysRequest {}).await).map(drop),
        "RevokeApiKey" => ok(keys.revoke_api_key(RevokeApiKeyRequest { name: "apiKeys/none".into() }).await).map(drop),
        "ListAuditEvents" => ok(audit.list_audit_events(ListAuditEventsRequest::default()).await).map(drop),
        "CreateTemplate" => {
            let request = CreateTemplateRequest { template: Some(simple_template()), ..Default::default() };
            ok(templates.create_template(request).await).map(drop)
        }
        "GetTemplate" => ok(templates.get_template(GetTemplateRequest { name: name(&f.template) }).await).map(drop),
        "ListTemplates" => ok(templates.list_templates(ListTemplatesRequest::default()).await).map(drop),
        "CreateCampaign" => {
            let campaign = Campaign {
                template: f.template.clone(),
                list: f.list.clone(),
                from_address: "news@example.com".into(),
                postal_address: broadside_tests::POSTAL_ADDRESS.into(),
                ..Default::default()
            };
            ok(campaigns
                .create_campaign(CreateCampaignRequest { campaign: Some(campaign), ..Default::default() })
                .await)
            .map(drop)
        }
        "GetCampaign" => ok(campaigns.get_campaign(GetCampaignRequest { name: name(&f.campaign) }).await).map(drop),
        "ListCampaigns" => ok(campaigns.list_campaigns(ListCampaignsRequest::default()).await).map(drop),
        "StartCampaign" => {
            ok(campaigns.start_campaign(StartCampaignRequest { name: "campaigns/none".into() }).await).map(drop)
        }
        "PauseCampaign" => {
            ok(campaigns.pause_campaign(PauseCampaignRequest { name: "campaigns/none".into() }).await).map(drop)
        }
        "ResumeCampaign" => {
            ok(campaigns.resume_campaign(ResumeCampaignRequest { name: "campaigns/none".into() }).await).map(drop)
        }
        "CancelCampaign" => {
            ok(campaigns.cancel_campaign(CancelCampaignRequest { name: "campaigns/none".into() }).await).map(drop)
        }
        "CreateSegment" => ok(segments.create_segment(CreateSegmentRequest::default()).await).map(drop),
        "GetSegment" => ok(segments.get_segment(GetSegmentRequest::default()).await).map(drop),
        "ListSegments" => ok(segments.list_segments(ListSegmentsRequest::default()).await).map(drop),
        "PreviewSegment" => ok(segments.preview_segment(PreviewSegmentRequest::default()).await).map(drop),
        "ListFeedbackRecords" => {
            ok(feedback.list_feedback_records(ListFeedbackRecordsRequest::default()).await).map(drop)
        }
        "IngestReport" => ok(feedback.ingest_report(IngestReportRequest::default()).await).map(drop),
        other => panic!("no call for {other}"),
    }
}

/// Creates a key of `tenant` with `scopes` straight in the store.
async fn key(store: &broadside_store::DynStore, tenant: &str, scopes: Vec<Scope>) -> String {
    let key = broadside_auth::generate(tenant, scopes, "test");
    store.create_api_key(key.record).await.unwrap();
    key.secret
}

async fn fixture(sandbox: &mut Sandbox) -> Fixture {
    let list = sandbox.create_list("A's list").await.unwrap();
    let subscriber = sandbox.add_subscriber(&list, "ada@tenant-a.example", "Ada", serde_json::json!({})).await.unwrap();
    let campaign = sandbox.create_campaign(&list, simple_template()).await.unwrap();
    let template = sandbox.get_campaign(&campaign).await.unwrap().template;
    Fixture { list, subscriber: subscriber.name, email: subscriber.email, template, campaign }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_needs_a_valid_key_with_its_scope() {
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let f = fixture(&mut sandbox).await;
    let store = broadside_tests::open_store(dir.path()).await.unwrap();
    let node = sandbox.node.as_ref().unwrap();

    // No authorization header at all.
    let plain = tonic::transport::Channel::from_shared(node.grpc_url()).unwrap().connect().await.unwrap();
    let status = SubscriberServiceClient::new(plain).list_lists(ListListsRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let revoked = broadside_auth::generate("default", vec![Scope::Admin], "to revoke");
    store.create_api_key(revoked.record.clone()).await.unwrap();
    store.revoke_api_key("default", &revoked.record.id).await.unwrap();
    let invalid = ["garbage".to_string(), "bsk_0000_nope".into(), revoked.secret];

    for scope in Scope::ALL {
        let secret = key(&store, "default", vec![scope]).await;
        let channel = authed(node, &secret).await.unwrap();
        for (rpc, needed) in RPCS {
            let result = call(rpc, channel.clone(), &f).await;
            let code = result.as_ref().err().map(|s| s.code());
            if scope == Scope::Admin || scope == *needed {
                assert!(
                    !matches!(code, Some(Code::PermissionDenied | Code::Unauthenticated)),
                    "{rpc} with {scope:?} must pass auth: {result:?}"
                );
            } else {
                assert_eq!(code, Some(Code::PermissionDenied), "{rpc} with {scope:?}: {result:?}");
            }
        }
    }
    for bad in &invalid {
        let channel = authed(node, bad).await.unwrap();
        for (rpc, _) in RPCS {
            let result = call(rpc, channel.clone(), &f).await;
            assert_eq!(result.unwrap_err().code(), Code::Unauthenticated, "{rpc} with key {bad:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_tenant_b_sees_and_changes_nothing_of_tenant_a() {
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let f = fixture(&mut sandbox).await;
    let suppression = Suppression { target: "blocked@example.com".into(), ..Default::default() };
    sandbox.subscribers.add_suppression(AddSuppressionRequest { suppression: Some(suppression) }).await.unwrap();
    let store = broadside_tests::open_store(dir.path()).await.unwrap();
    let tenant_b =
        Tenant { id: "tenant-b".into(), display_name: "B".into(), create_time: 0, allow_transactional: false };
    store.create_tenant(tenant_b).await.unwrap();
    let b_key = key(&store, "tenant-b", vec![Scope::Admin]).await;
    let b = authed(sandbox.node.as_ref().unwrap(), &b_key).await.unwrap();

    // Reads of A's resources by name: NOT_FOUND, never A's data.
    for rpc in ["GetList", "GetSubscriber", "ListConsentRecords", "ExportSubscriber", "GetTemplate", "GetCampaign"] {
        let status = call(rpc, b.clone(), &f).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{rpc}: {status:?}");
    }
    // Writes that refer to A's resources: NOT_FOUND, nothing changes.
    for rpc in ["CreateSubscriber", "UpdateSubscriber", "ImportSubscribers", "CreateCampaign"] {
        let status = call(rpc, b.clone(), &f).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{rpc}: {status:?}");
    }
    let mut subs = SubscriberServiceClient::new(b.clone());
    for request in [
        EraseSubscriberRequest { name: f.subscriber.clone(), ..Default::default() },
        EraseSubscriberRequest { email: f.email.clone(), ..Default::default() },
    ] {
        assert_eq!(subs.erase_subscriber(request).await.unwrap_err().code(), Code::NotFound);
    }
    let delete = subs.delete_list(DeleteListRequest { name: f.list.clone() }).await.unwrap_err();
    assert_eq!(delete.code(), Code::NotFound);
    let unsubscribe = subs.unsubscribe(UnsubscribeRequest { name: f.subscriber.clone(), ..Default::default() }).await;
    assert_eq!(unsubscribe.unwrap_err().code(), Code::NotFound);
    let mut b_campaigns = CampaignServiceClient::new(b.clone());
    let start = b_campaigns.start_campaign(StartCampaignRequest { name: f.campaign.clone() }).await;
    assert_eq!(start.unwrap_err().code(), Code::NotFound);
    let remove = RemoveSuppressionRequest { target: "blocked@example.com".into(), ..Default::default() };
    assert_eq!(subs.remove_suppression(remove).await.unwrap_err().code(), Code::NotFound);
    // Listings and checks show none of A's data.
    assert!(ok(subs.list_lists(ListListsRequest::default()).await).unwrap().lists.is_empty());
    assert!(ok(subs.list_subscribers(ListSubscribersRequest::default()).await).unwrap().subscribers.is_empty());
    assert!(ok(subs.list_suppressions(ListSuppressionsRequest::default()).await).unwrap().suppressions.is_empty());
    let check = CheckSuppressionRequest { email: "blocked@example.com".into(), ..Default::default() };
    assert!(!ok(subs.check_suppression(check).await).unwrap().suppressed);
    let templates = TemplateServiceClient::new(b.clone()).list_templates(ListTemplatesRequest::default()).await;
    assert!(templates.unwrap().into_inner().templates.is_empty());
    let campaigns = CampaignServiceClient::new(b.clone()).list_campaigns(ListCampaignsRequest::default()).await;
    assert!(campaigns.unwrap().into_inner().campaigns.is_empty());
    let keys = ApiKeyServiceClient::new(b.clone()).list_api_keys(ListApiKeysRequest {}).await.unwrap().into_inner();
    assert_eq!(keys.keys.len(), 1, "B sees only its own key");
    let a_keys = store.list_api_keys("default").await.unwrap();
    let revoke = RevokeApiKeyRequest { name: format!("apiKeys/{}", a_keys[0].id) };
    assert_eq!(ApiKeyServiceClient::new(b).revoke_api_key(revoke).await.unwrap_err().code(), Code::NotFound);

    // A's data is intact.
    let subscriber = sandbox.subscribers.get_subscriber(GetSubscriberRequest { name: f.subscriber.clone() }).await;
    let subscriber = subscriber.unwrap().into_inner();
    assert_eq!((subscriber.display_name.as_str(), subscriber.lists.len()), ("Ada", 1));
    assert_eq!(subscriber.status, SubscriberStatus::Active as i32);
    sandbox.subscribers.get_list(GetListRequest { name: f.list.clone() }).await.unwrap();
    let check = CheckSuppressionRequest { email: "blocked@example.com".into(), ..Default::default() };
    assert!(sandbox.subscribers.check_suppression(check).await.unwrap().into_inner().suppressed);
    assert_eq!(sandbox.get_campaign(&f.campaign).await.unwrap().state, CampaignState::Draft as i32);
    assert_eq!(store.list_api_keys("default").await.unwrap().iter().filter(|k| k.revoke_time == 0).count(), 1);
}
