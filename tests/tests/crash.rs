//! SIGKILL of the real process mid-campaign, then a restart on the same data
//! dir: nobody is lost, and any duplicate is one the restarted sender counted
//! as ambiguous (a claim taken over from the killed process).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broadside_proto::v1::campaign_service_client::CampaignServiceClient;
use broadside_proto::v1::*;
use broadside_tests::smtp_sink::free_port;
use broadside_tests::*;

const RECIPIENTS: usize = 4000;

struct Serve {
    child: Child,
    grpc: u16,
    admin: u16,
    data_dir: std::path::PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(data_dir: &std::path::Path) -> Serve {
    let (grpc, admin) = (free_port().unwrap(), free_port().unwrap());
    let child = Command::new(broadside_binary())
        .args(["serve", "--roles", "all"])
        .env("BROADSIDE__DATA_DIR", data_dir)
        .env("BROADSIDE__SERVER__GRPC_ADDR", format!("127.0.0.1:{grpc}"))
        .env("BROADSIDE__SERVER__ADMIN_ADDR", format!("127.0.0.1:{admin}"))
        .env("BROADSIDE__SERVER__HTTP_ADDR", "127.0.0.1:0")
        .env("BROADSIDE__FEEDBACK__INBOUND_ADDR", "127.0.0.1:0")
        .env("BROADSIDE__SENDER__ID", "crash-test")
        .env("BROADSIDE__SENDER__CONCURRENCY", "16")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", grpc)).is_err() {
        assert!(Instant::now() < deadline, "serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Serve { child, grpc, admin, data_dir: data_dir.to_owned() }
}

async fn client(serve: &Serve) -> CampaignServiceClient<broadside::client::Authed> {
    CampaignServiceClient::new(authed(serve).await)
}

/// A channel with the admin key the first start wrote into the data dir.
async fn authed(serve: &Serve) -> broadside::client::Authed {
    let key = std::fs::read_to_string(broadside::bootstrap::key_path(&serve.data_dir)).unwrap();
    let args = broadside::client::ClientArgs {
        server: format!("http://127.0.0.1:{}", serve.grpc),
        api_key: Some(key),
        config: None,
        tls: Default::default(),
    };
    broadside::client::connect(&args).await.unwrap()
}

fn metric(admin: u16, name: &str) -> f64 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", admin)).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_campaign_loses_nobody_and_counts_possible_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let list = bulk_load(dir.path(), RECIPIENTS).await.unwrap();
    let first = serve(dir.path());
    let mut sandbox_template = simple_template();
    sandbox_template.display_name = "crash".into();
    let mut templates = broadside_proto::v1::template_service_client::TemplateServiceClient::new(authed(&first).await);
    let template = templates
        .create_template(CreateTemplateRequest { template: Some(sandbox_template), request_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    let mut campaigns = client(&first).await;
    let campaign = campaigns
        .create_campaign(CreateCampaignRequest {
            campaign: Some(Campaign {
                template: template.name,
                list,
                from_address: "news@example.com".into(),
                postal_address: broadside_tests::POSTAL_ADDRESS.into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .name;
    campaigns.start_campaign(StartCampaignRequest { name: campaign.clone() }).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = campaigns
            .get_campaign(GetCampaignRequest { name: campaign.clone() })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap_or_default();
        if stats.delivered >= 300 {
            break;
        }
        assert!(Instant::now() < deadline, "campaign made no progress: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(first); // SIGKILL
    let outbox = dir.path().join("outbox");
    let at_kill = read_messages(&outbox).unwrap().len();
    assert!(at_kill < RECIPIENTS, "the kill must come mid-campaign (captured {at_kill})");

    let second = serve(dir.path());
    let mut campaigns = client(&second).await;
    let deadline = Instant::now() + Duration::from_secs(180);
    let done = loop {
        let current = campaigns.get_campaign(GetCampaignRequest { name: campaign.clone() }).await.unwrap().into_inner();
        if current.state == CampaignState::Completed as i32 {
            break current;
        }
        assert!(Instant::now() < deadline, "campaign did not complete after restart: {:?}", current.stats);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stats = done.stats.unwrap();
    assert_eq!((stats.recipients, stats.delivered), (RECIPIENTS as i64, RECIPIENTS as i64));
    let capture = broadside::demo::count_capture(&outbox).unwrap();
    let ambiguous = metric(second.admin, "broadside_sends_ambiguous_total");
    eprintln!(
        "killed at {at_kill} captured; after restart unique={} duplicates={} ambiguous={ambiguous}",
        capture.unique(),
        capture.duplicates()
    );
    assert_eq!(capture.unique(), RECIPIENTS, "nobody lost");
    assert!(capture.duplicates() as f64 <= ambiguous, "every duplicate must be counted as ambiguous");
}
