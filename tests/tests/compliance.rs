//! Compliance rules at campaign creation: marketing mail must carry an
//! unsubscribe link and the sender's postal address; only tenants allowed to
//! use the transactional stream are exempt.

use broadside_proto::v1::*;
use broadside_tests::{POSTAL_ADDRESS, Sandbox, open_store, test_config};
use tonic::Code;

fn template(text: &str, html: &str) -> Template {
    Template {
        display_name: "t".into(),
        subject: "Hello".into(),
        text_body: text.into(),
        html_body: html.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_without_unsubscribe_link_or_postal_address_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut sandbox = Sandbox::start(test_config(dir.path())).await.unwrap();
    let list = sandbox.create_list("Readers").await.unwrap();
    let (mut templates, mut campaigns) = (sandbox.templates.clone(), sandbox.campaigns.clone());
    let mut create = async |template: Template, postal_address: &str, stream: CampaignStream| {
        let template = templates
            .create_template(CreateTemplateRequest { template: Some(template), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        let campaign = Campaign {
            template: template.name,
            list: list.clone(),
            from_address: "news@example.com".into(),
            postal_address: postal_address.into(),
            stream: stream as i32,
            ..Default::default()
        };
        campaigns.create_campaign(CreateCampaignRequest { campaign: Some(campaign), ..Default::default() }).await
    };
    let good_text = "Hi\nUnsubscribe: {{ unsubscribe_url }}\n{{ postal_address }}";
    let good_html = "<p>Hi</p><a href=\"{{ unsubscribe_url }}\">unsubscribe</a> {{ postal_address }}";
    let cases = [
        (
            template("Hi\n{{ postal_address }}", ""),
            POSTAL_ADDRESS,
            "campaign.template",
            "text part has no unsubscribe link",
        ),
        (
            template(good_text, "<p>Hi</p> {{ postal_address }}"),
            POSTAL_ADDRESS,
            "campaign.template",
            "HTML part has no unsubscribe link",
        ),
        (
            template(good_text, good_html),
            "",
            "campaign.postal_address",
            "marketing mail must show the sender's postal address",
        ),
        (
            template("Hi {{ unsubscribe_url }}", ""),
            POSTAL_ADDRESS,
            "campaign.template",
            "does not show the postal address",
        ),
    ];
    for (template, address, field, message) in cases {
        let status = create(template, address, CampaignStream::Marketing).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field) && status.message().contains(message), "{:?}", status.message());
    }
    let created = create(template(good_text, good_html), POSTAL_ADDRESS, CampaignStream::Marketing).await.unwrap();
    let report = sandbox
        .campaigns
        .check_campaign(CheckCampaignRequest { name: created.into_inner().name })
        .await
        .unwrap()
        .into_inner();
    assert!(report.passed);
    let rules: Vec<(&str, &str)> = report.checks.iter().map(|c| (c.rule.as_str(), c.result.as_str())).collect();
    assert_eq!(
        rules,
        vec![
            ("unsubscribe_link", "passed"),
            ("postal_address", "passed"),
            ("dmarc_alignment", "skipped"),
            ("list_unsubscribe_headers", "passed"),
            ("feedback_id", "passed")
        ]
    );

    // Transactional mail is exempt only where the tenant allows it.
    let receipt = template("Your receipt", "");
    let refused = create(receipt.clone(), "", CampaignStream::Transactional).await.unwrap_err();
    assert!(refused.message().starts_with("campaign.stream"), "{:?}", refused.message());
    open_store(dir.path()).await.unwrap().set_allow_transactional("default", true).await.unwrap();
    create(receipt, "", CampaignStream::Transactional).await.unwrap();
}
