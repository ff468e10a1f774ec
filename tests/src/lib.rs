//! The test sandbox: every role's `serve` in-process on port 0 over a
//! temporary data dir, gRPC clients, and `wait_for_*` helpers. Also helpers
//! to run the real `broadside` binary and real SMTP receivers.

pub mod dkimverify;
pub mod postfix;
pub mod smtp_sink;
pub mod webdriver;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use broadside::client::{Authed, ClientArgs};
use broadside::{Node, Role};
use broadside_config::Config;
use broadside_proto::v1::campaign_service_client::CampaignServiceClient;
use broadside_proto::v1::subscriber_service_client::SubscriberServiceClient;
use broadside_proto::v1::template_service_client::TemplateServiceClient;
use broadside_proto::v1::*;

/// A node over a data dir, with clients authenticated by the bootstrap admin
/// key of the `default` tenant. The data dir outlives restarts.
pub struct Sandbox {
    pub node: Option<Node>,
    pub data_dir: PathBuf,
    pub config: Config,
    /// The `default` tenant's admin key.
    pub api_key: String,
    pub subscribers: SubscriberServiceClient<Authed>,
    pub templates: TemplateServiceClient<Authed>,
    pub campaigns: CampaignServiceClient<Authed>,
}

/// An authenticated channel to `node` with `key`.
pub async fn authed(node: &Node, key: &str) -> anyhow::Result<Authed> {
    broadside::client::connect(&ClientArgs {
        server: node.grpc_url(),
        api_key: Some(key.to_owned()),
        config: None,
        tls: Default::default(),
    })
    .await
}

/// A configuration for tests: embedded defaults in `data_dir`, ports 0.
pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config { data_dir: data_dir.to_owned(), ..Config::default() };
    config.server.grpc_addr = "127.0.0.1:0".parse().unwrap();
    config.server.admin_addr = "127.0.0.1:0".parse().unwrap();
    config.server.http_addr = "127.0.0.1:0".parse().unwrap();
    config.feedback.inbound_addr = "127.0.0.1:0".parse().unwrap();
    config.sender.id = Some("test-sender".into());
    config.sender.drain_timeout_secs = 10;
    config
}

impl Sandbox {
    /// Starts every role over `config`.
    pub async fn start(config: Config) -> anyhow::Result<Sandbox> {
        Sandbox::start_roles(config, &Role::ALL).await
    }

    /// Starts only `roles` over `config` (a sandbox without senders, say).
    pub async fn start_roles(config: Config, roles: &[Role]) -> anyhow::Result<Sandbox> {
        broadside_telemetry::init_for_tests();
        config.validate()?;
        let node = Node::start(&config, roles).await?;
        let api_key = std::fs::read_to_string(broadside::bootstrap::key_path(&config.data_dir))?.trim().to_owned();
        let channel = authed(&node, &api_key).await?;
        Ok(Sandbox {
            data_dir: config.data_dir.clone(),
            api_key,
            config,
            subscribers: SubscriberServiceClient::new(channel.clone()),
            templates: TemplateServiceClient::new(channel.clone()),
            campaigns: CampaignServiceClient::new(channel),
            node: Some(node),
        })
    }

    /// Graceful stop, as on SIGTERM.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(node) = self.node.take() {
            node.shutdown().await?;
        }
        Ok(())
    }

    /// Stops and starts again on the same data dir.
    pub async fn restart(mut self) -> anyhow::Result<Sandbox> {
        self.stop().await?;
        Sandbox::start(self.config.clone()).await
    }

    pub fn outbox(&self) -> PathBuf {
        self.data_dir.join("outbox")
    }

    pub async fn create_list(&mut self, name: &str) -> anyhow::Result<String> {
        let list = MailingList { display_name: name.into(), ..Default::default() };
        Ok(self
            .subscribers
            .create_list(CreateListRequest { list: Some(list), request_id: String::new() })
            .await?
            .into_inner()
            .name)
    }

    pub async fn add_subscriber(
        &mut self,
        list: &str,
        email: &str,
        name: &str,
        attributes: serde_json::Value,
    ) -> anyhow::Result<Subscriber> {
        let subscriber = Subscriber {
            email: email.into(),
            display_name: name.into(),
            lists: vec![list.into()],
            attributes: Some(broadside_proto::convert::json_to_struct(
                attributes.as_object().expect("attributes object"),
            )),
            ..Default::default()
        };
        Ok(self
            .subscribers
            .create_subscriber(CreateSubscriberRequest { subscriber: Some(subscriber), ..Default::default() })
            .await?
            .into_inner())
    }

    /// Creates a template and a draft campaign for `list`; returns the campaign name.
    pub async fn create_campaign(&mut self, list: &str, template: Template) -> anyhow::Result<String> {
        self.create_paced_campaign(list, template, 0.0).await
    }

    /// [`Self::create_campaign`] sending at most `per_second` messages per second
    /// (slow campaigns give tests time to act while they send).
    pub async fn create_paced_campaign(
        &mut self,
        list: &str,
        template: Template,
        per_second: f64,
    ) -> anyhow::Result<String> {
        let template = self
            .templates
            .create_template(CreateTemplateRequest { template: Some(template), request_id: String::new() })
            .await?
            .into_inner();
        let campaign = Campaign {
            display_name: "Test campaign".into(),
            template: template.name,
            list: list.into(),
            from_address: "news@sender.example".into(),
            from_name: "Sender".into(),
            postal_address: POSTAL_ADDRESS.into(),
            max_messages_per_second: per_second,
            ..Default::default()
        };
        Ok(self
            .campaigns
            .create_campaign(CreateCampaignRequest { campaign: Some(campaign), request_id: String::new() })
            .await?
            .into_inner()
            .name)
    }

    pub async fn get_campaign(&mut self, name: &str) -> anyhow::Result<Campaign> {
        Ok(self.campaigns.get_campaign(GetCampaignRequest { name: name.into() }).await?.into_inner())
    }

    /// Waits until the campaign is COMPLETED.
    pub async fn wait_for_completion(&mut self, name: &str, timeout: Duration) -> anyhow::Result<Campaign> {
        self.wait_for_campaign(name, timeout, |c| c.state == CampaignState::Completed as i32).await
    }

    /// Polls the campaign until `done` holds, or fails with its last state.
    pub async fn wait_for_campaign(
        &mut self,
        name: &str,
        timeout: Duration,
        done: impl Fn(&Campaign) -> bool,
    ) -> anyhow::Result<Campaign> {
        let deadline = Instant::now() + timeout;
        loop {
            let campaign = self.get_campaign(name).await?;
            if done(&campaign) {
                return Ok(campaign);
            }
            if Instant::now() > deadline {
                anyhow::bail!("timed out waiting for {name}: {campaign:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Bulk-loads `count` subscribers into a new list straight through the store
/// (fast setup for large campaigns). Returns the list's resource name.
pub async fn bulk_load(data_dir: &Path, count: usize) -> anyhow::Result<String> {
    use broadside_store::*;
    let store = open_store(data_dir).await?;
    let list_id = new_id();
    store
        .create_list(
            MailingList {
                tenant: DEFAULT_TENANT.into(),
                id: list_id.clone(),
                display_name: "bulk".into(),
                description: String::new(),
                opt_in: OptIn::Single,
                create_time: now_millis(),
            },
            None,
        )
        .await?;
    for index in 0..count {
        let mut attributes = serde_json::Map::new();
        attributes.insert("n".into(), serde_json::json!(index));
        store
            .upsert_subscriber(
                Subscriber {
                    tenant: DEFAULT_TENANT.into(),
                    id: new_id(),
                    email: format!("user{index}@example.com"),
                    display_name: format!("User {index}"),
                    attributes,
                    status: SubscriberStatus::Active,
                    lists: vec![list_id.clone()],
                    subscriptions: Vec::new(),
                    create_time: 0,
                    update_time: 0,
                },
                UpsertOptions::default(),
                None,
            )
            .await?;
    }
    Ok(format!("lists/{list_id}"))
}

/// The store of a sandbox's data dir, opened as the node opens it (same master key).
pub async fn open_store(data_dir: &Path) -> anyhow::Result<broadside_store::DynStore> {
    Ok(broadside::backends::open(&test_config(data_dir)).await?.store)
}

/// The sender's postal address test campaigns carry.
pub const POSTAL_ADDRESS: &str = "Test Sender, 1 Test Street, Testville";

/// A simple template using subscriber fields.
pub fn simple_template() -> Template {
    Template {
        display_name: "t".into(),
        subject: "Hello {{ subscriber.display_name }}".into(),
        html_body: "<p>Hi {{ subscriber.display_name }} from {{ subscriber.attributes.city | default('nowhere') }}</p><a href=\"{{ unsubscribe_url }}\">unsubscribe</a> {{ postal_address }}".into(),
        text_body: "Hi {{ subscriber.display_name }} from {{ subscriber.attributes.city | default('nowhere') }}\nUnsubscribe: {{ unsubscribe_url }}\n{{ postal_address }}".into(),
        ..Default::default()
    }
}

/// Every finished message in `dir` (capture or smtp-sink dumps), as text; skips partial files.
pub fn read_messages(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut messages = Vec::new();
    if dir.exists() {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if path.is_file() && !hidden {
                messages.push(String::from_utf8_lossy(&std::fs::read(&path)?).into_owned());
            }
        }
    }
    Ok(messages)
}

/// Path of the `broadside` binary built for this test run (same target dir).
pub fn broadside_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let binary = dir.join("broadside");
    assert!(binary.exists(), "{} is missing: build it first (cargo build -p broadside)", binary.display());
    binary
}

/// One HTTP/1.1 request to a node's public listener; returns (status, whole response).
pub fn http_request(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the public HTTP listener");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: TestBrowser/1.0\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write the request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read the response");
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response)
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
