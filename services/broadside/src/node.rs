//! A node: the roles chosen by `--roles`, their gRPC services on one
//! listener (with health and reflection), their workers, and the admin port.
//! Shutdown is ordered so nothing is lost: not-ready, stop workers (the
//! sender drains), then stop the servers.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use broadside_config::Config;
use broadside_dispatch::Dispatch;
use broadside_proto::v1::campaign_service_server::CampaignServiceServer;
use broadside_proto::v1::feedback_service_server::FeedbackServiceServer;
use broadside_proto::v1::segment_service_server::SegmentServiceServer;
use broadside_proto::v1::subscriber_service_server::SubscriberServiceServer;
use broadside_proto::v1::template_service_server::TemplateServiceServer;
use broadside_sender::{Sender, SenderSettings};
use broadside_store::StatementKind;
use broadside_telemetry::{Metrics, Readiness};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;

use crate::backends;

/// A role of design.md. `all` expands to every role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Subscribers,
    Segmentation,
    Dispatch,
    Sender,
    Feedback,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Subscribers, Role::Segmentation, Role::Dispatch, Role::Sender, Role::Feedback];

    /// Parses `all` or a comma-separated list such as `dispatch,sender`.
    pub fn parse_list(text: &str) -> anyhow::Result<Vec<Role>> {
        let mut roles = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "all" {
                return Ok(Role::ALL.to_vec());
            }
            let role = Role::from_str(part)?;
            if !roles.contains(&role) {
                roles.push(role);
            }
        }
        if roles.is_empty() {
            bail!("--roles: name at least one role (all, subscribers, segmentation, dispatch, sender, feedback)");
        }
        Ok(roles)
    }
}

impl FromStr for Role {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        Ok(match text {
            "subscribers" => Role::Subscribers,
            "segmentation" => Role::Segmentation,
            "dispatch" => Role::Dispatch,
            "sender" => Role::Sender,
            "feedback" => Role::Feedback,
            other => bail!(
                "--roles: unknown role {other:?} (use all, subscribers, segmentation, dispatch, sender, feedback)"
            ),
        })
    }
}

/// Campaign fan-out asks the segmentation role of this process who is in a segment.
struct SegmentsForDispatch(broadside_segmentation::SegmentApi);

#[async_trait::async_trait]
impl broadside_dispatch::SegmentMembers for SegmentsForDispatch {
    async fn members(
        &self,
        tenant: &str,
        segment_id: &str,
        list_id: &str,
    ) -> Result<Vec<String>, broadside_proto::ServiceError> {
        self.0.members(tenant, segment_id, Some(list_id)).await
    }
}

/// A running node.
pub struct Node {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The public HTTP listener (confirmation, unsubscribe and tracking links),
    /// when the subscribers or feedback role runs here.
    pub http_addr: Option<SocketAddr>,
    /// The inbound SMTP/LMTP listener, when the feedback role runs here.
    pub inbound_addr: Option<SocketAddr>,
    /// Set when this start created the bootstrap admin key and wrote it here.
    pub admin_key_file: Option<std::path::PathBuf>,
    pub metrics: Metrics,
    readiness: Readiness,
    health: tonic_health::server::HealthReporter,
    workers_stop: CancellationToken,
    servers_stop: CancellationToken,
    workers: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
    servers: Vec<JoinHandle<()>>,
}

/// The server span of one gRPC call, child of the caller's trace when it sent one.
fn grpc_span(request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    let span = tracing::info_span!(
        "grpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    );
    let traceparent = request.headers().get("traceparent").and_then(|v| v.to_str().ok());
    broadside_telemetry::follow_traceparent(&span, traceparent);
    span
}

impl Node {
    /// Opens the backends, binds the listeners and starts every role in `roles`.
    pub async fn start(config: &Config, roles: &[Role]) -> anyhow::Result<Node> {
        let backends = backends::open(config).await?;
        let limits = &config.limits;
        broadside_auth::limits::configure(
            limits.grpc_per_key_per_second,
            limits.grpc_per_ip_per_second,
            limits.http_per_ip_per_second,
        );
        let metrics = Metrics::new();
        if let Some(counts) = backends.statements.clone() {
            metrics.observe_store_statements(move || {
                StatementKind::ALL.iter().map(|kind| (kind.label(), counts.total(*kind))).collect()
            });
        }
        let readiness = Readiness::default();
        let workers_stop = CancellationToken::new();
        let servers_stop = CancellationToken::new();
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut routes = RoutesBuilder::default();
        let mut workers: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)> = Vec::new();
        let prefix = &config.bus.topic_prefix;

        let dkim = if roles.contains(&Role::Subscribers) || roles.contains(&Role::Sender) {
            backends::dkim_keys(config)?
        } else {
            Default::default()
        };
        let mut http_routes = axum::Router::new();
        let mut admin_key_file = None;
        if roles.contains(&Role::Subscribers) {
            admin_key_file = crate::bootstrap::ensure_admin_key(&backends.store, &config.data_dir).await?;
            let settings = broadside_subscribers::SubscriberSettings {
                topic_prefix: prefix.clone(),
                public_url: config.mail.public_url.clone(),
                confirm_from: config
                    .mail
                    .confirm_from
                    .clone()
                    .unwrap_or_else(|| format!("lists@{}", config.mail.domain)),
                domain: config.mail.domain.clone(),
                signer: backends::token_signer(config)?,
                transport: backends::transport(config)?,
                dkim: dkim.clone(),
            };
            let api = broadside_subscribers::SubscriberApi::new(backends.store.clone(), backends.bus.clone(), settings);
            http_routes = http_routes.merge(broadside_subscribers::http_routes(api.clone()));
            let lag_metrics = metrics.clone();
            let on_lag =
                move |lag: &[(String, u32, i64)]| lag_metrics.set_lag(broadside_subscribers::FEEDBACK_GROUP, lag);
            let feedback_worker = api.clone().run_feedback(workers_stop.clone(), on_lag);
            workers.push(("subscribers", tokio::spawn(async move { Ok(feedback_worker.await?) })));
            routes.add_service(api.into_service());
            let behavior = broadside_subscribers::BehaviorApi::new(
                backends.store.clone(),
                backends.bus.clone(),
                prefix,
                config.behavior.retention_days,
            );
            let purge = behavior.clone().purge(workers_stop.clone());
            workers.push(("behavior-retention", tokio::spawn(async move { Ok(purge.await?) })));
            routes.add_service(behavior.into_service());
            routes.add_service(broadside_subscribers::ApiKeyApi::new(backends.store.clone()).into_service());
            routes.add_service(broadside_subscribers::AuditApi::new(backends.store.clone()).into_service());
            health.set_serving::<SubscriberServiceServer<broadside_subscribers::SubscriberApi>>().await;
        }
        let mut segments = None;
        if roles.contains(&Role::Segmentation) {
            let live =
                broadside_segmentation::live::Live::default().with_behavior_retention(config.behavior.retention_days);
            let run = live.clone().run(
                backends.store.clone(),
                backends.bus.clone(),
                prefix.clone(),
                metrics.clone(),
                workers_stop.clone(),
            );
            workers.push(("segmentation", tokio::spawn(run)));
            let api = broadside_segmentation::SegmentApi::new(backends.store.clone(), live);
            segments = Some(api.clone());
            routes.add_service(api.into_service());
            health.set_serving::<SegmentServiceServer<broadside_segmentation::SegmentApi>>().await;
        }
        if roles.contains(&Role::Dispatch) {
            let mut dispatch = Dispatch::new(
                backends.store.clone(),
                backends.bus.clone(),
                prefix,
                metrics.clone(),
                config.sender.max_age_secs,
                Duration::from_secs(config.dispatch.reconcile_after_secs),
            );
            if let Some(segments) = &segments {
                dispatch = dispatch.with_segments(std::sync::Arc::new(SegmentsForDispatch(segments.clone())));
            }
            routes.add_service(dispatch.template_api().into_service());
            routes.add_service(dispatch.campaign_api().into_service());
            health.set_serving::<TemplateServiceServer<broadside_dispatch::TemplateApi>>().await;
            health.set_serving::<CampaignServiceServer<broadside_dispatch::CampaignApi>>().await;
            workers.push(("dispatch", tokio::spawn(dispatch.run(workers_stop.clone()))));
        }
        let mut inbound_addr = None;
        if roles.contains(&Role::Feedback) {
            let feedback =
                crate::feedback::role(config, backends.store.clone(), backends.bus.clone(), metrics.clone())?;
            routes.add_service(feedback.api().into_service());
            http_routes = http_routes.merge(feedback.http_routes());
            health.set_serving::<FeedbackServiceServer<broadside_feedback::FeedbackApi>>().await;
            let listener = tokio::net::TcpListener::bind(config.feedback.inbound_addr)
                .await
                .with_context(|| format!("feedback.inbound_addr {}: cannot listen", config.feedback.inbound_addr))?;
            inbound_addr = Some(listener.local_addr()?);
            workers.push(("feedback", tokio::spawn(feedback.run(listener, workers_stop.clone()))));
        }
        if roles.contains(&Role::Sender) {
            let settings = SenderSettings {
                id: backends::sender_id(config),
                concurrency: config.sender.concurrency,
                drain_timeout: Duration::from_secs(config.sender.drain_timeout_secs),
                lease: Duration::from_secs(config.sender.lease_secs),
                retry_base: Duration::from_secs_f64(config.sender.retry_base_secs),
                topic_prefix: prefix.clone(),
                public_url: config.mail.public_url.clone(),
                tracking: config.feedback.tracking,
                domain: config.mail.domain.clone(),
                bounce_domain: config.bounce_domain().to_owned(),
                destinations: config.sender.destinations.clone(),
                destination_concurrency: config.sender.destination_concurrency,
                destination_per_second: config.sender.destination_per_second,
            };
            let sender = Sender::new(
                settings,
                backends.store.clone(),
                backends.bus.clone(),
                backends::transport(config)?,
                backends::token_signer(config)?,
                metrics.clone(),
            )
            .with_dkim(dkim.clone());
            workers.push(("sender", tokio::spawn(sender.run(readiness.clone(), workers_stop.clone()))));
        }

        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(broadside_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building gRPC reflection")?;
        routes.add_service(health_service);
        routes.add_service(reflection);

        let listener = tokio::net::TcpListener::bind(config.server.grpc_addr)
            .await
            .with_context(|| format!("server.grpc_addr {}: cannot listen", config.server.grpc_addr))?;
        let grpc_addr = listener.local_addr()?;
        let stop = servers_stop.clone();
        // A span per call (OpenTelemetry RPC conventions) that continues the caller's `traceparent`.
        let router = tonic::transport::Server::builder().trace_fn(grpc_span).add_routes(routes.routes());
        let grpc = match &config.server.tls {
            Some(tls) => {
                let incoming = crate::tls::incoming(listener, crate::tls::acceptor(tls)?);
                tokio::spawn(async move {
                    if let Err(error) = router.serve_with_incoming_shutdown(incoming, stop.cancelled_owned()).await {
                        tracing::error!(%error, "gRPC server failed");
                    }
                })
            }
            None => {
                // TCP_NODELAY: without it every unary reply waits for the client's delayed ACK (~40 ms).
                let incoming =
                    tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |s| {
                        if let Ok(stream) = &s {
                            let _ = stream.set_nodelay(true);
                        }
                        s
                    });
                tokio::spawn(async move {
                    if let Err(error) = router.serve_with_incoming_shutdown(incoming, stop.cancelled_owned()).await {
                        tracing::error!(%error, "gRPC server failed");
                    }
                })
            }
        };
        let (admin_addr, admin) = broadside_telemetry::serve_admin(
            config.server.admin_addr,
            metrics.clone(),
            readiness.clone(),
            servers_stop.clone(),
        )
        .await?;
        let mut servers = vec![grpc, admin];
        let mut http_addr = None;
        if roles.contains(&Role::Subscribers) || roles.contains(&Role::Feedback) {
            let listener = tokio::net::TcpListener::bind(config.server.http_addr)
                .await
                .with_context(|| format!("server.http_addr {}: cannot listen", config.server.http_addr))?;
            http_addr = Some(listener.local_addr()?);
            let stop = servers_stop.clone();
            let app = http_routes.into_make_service_with_connect_info::<SocketAddr>();
            servers.push(tokio::spawn(async move {
                let served = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
                if let Err(error) = served {
                    tracing::error!(%error, "public HTTP server failed");
                }
            }));
        }
        readiness.set(true);
        let names: Vec<String> = roles.iter().map(|r| format!("{r:?}").to_lowercase()).collect();
        tracing::info!(roles = %names.join(","), grpc = %grpc_addr, admin = %admin_addr, http = ?http_addr, inbound = ?inbound_addr, "broadside node started");
        Ok(Node {
            grpc_addr,
            admin_addr,
            metrics,
            readiness,
            health,
            workers_stop,
            servers_stop,
            workers,
            servers,
            http_addr,
            inbound_addr,
            admin_key_file,
        })
    }

    /// `http://ADDR` of the gRPC listener, for clients.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// Waits for `signal` or for a worker to fail, then shuts down gracefully.
    pub async fn run_until(mut self, signal: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let failed = async {
            loop {
                if let Some(index) = self.workers.iter().position(|(_, handle)| handle.is_finished()) {
                    return index;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        tokio::select! {
            _ = signal => {
                tracing::info!("shutdown requested");
                self.shutdown().await
            }
            index = failed => {
                let (name, handle) = self.workers.remove(index);
                let result = handle.await;
                tracing::error!(role = name, ?result, "a role stopped unexpectedly, shutting down");
                self.shutdown().await?;
                match result {
                    Ok(Ok(())) => bail!("role {name} stopped unexpectedly"),
                    Ok(Err(error)) => Err(error.context(format!("role {name} failed"))),
                    Err(error) => bail!("role {name} panicked: {error}"),
                }
            }
        }
    }

    /// Graceful shutdown: not-ready, stop workers (the sender drains and
    /// commits), then stop the gRPC and admin servers.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.readiness.set(false);
        self.health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        self.workers_stop.cancel();
        let mut first_error = None;
        for (name, handle) in self.workers {
            match handle.await {
                Ok(Ok(())) => tracing::info!(role = name, "role stopped"),
                Ok(Err(error)) => {
                    tracing::error!(role = name, error = format!("{error:#}"), "role stopped with an error");
                    first_error.get_or_insert(error);
                }
                Err(error) => {
                    tracing::error!(role = name, %error, "role panicked");
                    first_error.get_or_insert(anyhow::anyhow!("role {name} panicked"));
                }
            }
        }
        self.servers_stop.cancel();
        for server in self.servers {
            let _ = server.await;
        }
        tracing::info!("broadside node stopped");
        first_error.map_or(Ok(()), Err)
    }
}
