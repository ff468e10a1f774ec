//! A node: the roles chosen by `--roles`, their gRPC services on one
//! listener (with health and reflection), their workers, and the admin port.
//! Shutdown is ordered so nothing is lost: not-ready, stop workers (the
//! sender drains), then stop the servers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use broadside_config::Config;
use broadside_mail::MailKit;
use broadside_role::{Deps, Links, Parts, Worker};
use broadside_store::StatementKind;
use broadside_telemetry::{Metrics, Readiness};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

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

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Subscribers => "subscribers",
            Role::Segmentation => "segmentation",
            Role::Dispatch => "dispatch",
            Role::Sender => "sender",
            Role::Feedback => "feedback",
        })
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
    workers: Workers,
    servers: Vec<JoinHandle<()>>,
    /// How long shutdown waits for the roles' workers (the sender's drain plus a margin).
    drain_deadline: Duration,
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
    /// Opens the backends, binds the listeners and starts every role in
    /// `roles`, each through its crate's one `start`, in [`Role::ALL`]'s
    /// order (segmentation before dispatch, which links to it).
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
        let admin_key_file = if roles.contains(&Role::Subscribers) {
            crate::bootstrap::ensure_admin_key(&backends.store, &config.data_dir).await?
        } else {
            None
        };

        let mut deps = Deps {
            store: backends.store.clone(),
            bus: backends.bus.clone(),
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            stop: workers_stop.clone(),
            links: Links::default(),
        };
        let mut mail = None;
        let mut grpc = Vec::new();
        let mut http_routes: Option<axum::Router> = None;
        let mut workers = Workers::default();
        let mut listening = Vec::new();
        for role in Role::ALL.into_iter().filter(|role| roles.contains(role)) {
            let parts = start_role(role, config, &deps, &mut mail).await.with_context(|| format!("role {role}"))?;
            for name in &parts.serving {
                health.set_service_status(*name, tonic_health::ServingStatus::Serving).await;
            }
            grpc.extend(parts.grpc);
            if let Some(routes) = parts.http {
                http_routes = Some(match http_routes {
                    Some(all) => all.merge(routes),
                    None => routes,
                });
            }
            for worker in parts.workers {
                workers.spawn(worker);
            }
            listening.extend(parts.listening);
            deps.links.add(parts.links);
        }
        let inbound_addr = listening.iter().find(|(name, _)| *name == "inbound").map(|(_, addr)| *addr);
        let mut routes = grpc.into_iter().fold(tonic::service::Routes::default(), |routes, add| add(routes));

        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(broadside_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building gRPC reflection")?;
        routes = routes.add_service(health_service).add_service(reflection);

        let listener = tokio::net::TcpListener::bind(config.server.grpc_addr)
            .await
            .with_context(|| format!("server.grpc_addr {}: cannot listen", config.server.grpc_addr))?;
        let grpc_addr = listener.local_addr()?;
        let stop = servers_stop.clone();
        // A span per call (OpenTelemetry RPC conventions) that continues the caller's `traceparent`.
        let router = tonic::transport::Server::builder().trace_fn(grpc_span).add_routes(routes);
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
        if let Some(http_routes) = http_routes {
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
        let names: Vec<String> = roles.iter().map(Role::to_string).collect();
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
            drain_deadline: Duration::from_secs(config.sender.drain_timeout_secs) + SHUTDOWN_MARGIN,
        })
    }

    /// `http://ADDR` of the gRPC listener, for clients.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// Waits for `signal` or for a worker to stop (which stops the node), then shuts down gracefully.
    pub async fn run_until(mut self, signal: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            _ = signal => {
                tracing::info!("shutdown requested");
                self.shutdown().await
            }
            (name, result) = self.workers.next_finished() => {
                tracing::error!(role = name, result = ?result.as_ref().map(|r| r.as_ref().map_err(|e| format!("{e:#}"))), "a role stopped unexpectedly, shutting down");
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
    /// commits) within the drain deadline, then stop the gRPC and admin servers.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.readiness.set(false);
        self.health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        self.workers_stop.cancel();
        let deadline = tokio::time::Instant::now() + self.drain_deadline;
        let mut first_error = None;
        while !self.workers.is_empty() {
            let wait = (deadline - tokio::time::Instant::now()).min(STILL_WAITING_EVERY);
            match tokio::time::timeout(wait, self.workers.next_finished()).await {
                Ok((name, Ok(Ok(())))) => tracing::info!(role = name, "role stopped"),
                Ok((name, Ok(Err(error)))) => {
                    tracing::error!(role = name, error = format!("{error:#}"), "role stopped with an error");
                    first_error.get_or_insert(error.context(format!("role {name}")));
                }
                Ok((name, Err(error))) => {
                    tracing::error!(role = name, %error, "role panicked");
                    first_error.get_or_insert(anyhow::anyhow!("role {name} panicked"));
                }
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    let names = self.workers.names();
                    tracing::error!(waiting = %names, deadline_secs = self.drain_deadline.as_secs(), "roles did not stop in time: aborting them");
                    self.workers.abort_all();
                    first_error.get_or_insert(anyhow::anyhow!(
                        "roles did not stop within {}s: {names}",
                        self.drain_deadline.as_secs()
                    ));
                    break;
                }
                Err(_) => {
                    tracing::info!(count = self.workers.len(), names = %self.workers.names(), "still waiting for roles to stop")
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

/// Shutdown waits this much longer than the sender's drain timeout (within
/// the chart's grace period of the drain timeout plus 15 s).
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(10);
/// How often a slow shutdown says what it is waiting for.
const STILL_WAITING_EVERY: Duration = Duration::from_secs(5);

/// Starts one role through its crate's `start`, with its settings from the config.
async fn start_role(role: Role, config: &Config, deps: &Deps, mail: &mut Option<MailKit>) -> anyhow::Result<Parts> {
    match role {
        Role::Subscribers => {
            let settings = broadside_subscribers::SubscriberSettings::from_config(config, mail_kit(mail, config)?);
            broadside_subscribers::start(settings, deps)
        }
        Role::Segmentation => {
            broadside_segmentation::start(broadside_segmentation::SegmentationSettings::from_config(config), deps)
        }
        Role::Dispatch => broadside_dispatch::start(broadside_dispatch::DispatchSettings::from_config(config), deps),
        Role::Sender => {
            let settings = broadside_sender::SenderSettings::from_config(config);
            broadside_sender::start(settings, mail_kit(mail, config)?.clone(), deps)
        }
        Role::Feedback => {
            let settings = broadside_feedback::FeedbackSettings::from_config(config, backends::token_signer(config)?);
            broadside_feedback::start(settings, deps).await
        }
    }
}

/// The transport, link signer and DKIM keys, opened once for the roles that mail.
fn mail_kit<'a>(slot: &'a mut Option<MailKit>, config: &Config) -> anyhow::Result<&'a MailKit> {
    if slot.is_none() {
        *slot = Some(MailKit {
            transport: backends::transport(config)?,
            signer: backends::token_signer(config)?,
            dkim: backends::dkim_keys(config)?,
        });
    }
    Ok(slot.as_ref().expect("just set"))
}

/// The roles' workers, each a task with its role's name.
#[derive(Default)]
struct Workers {
    set: JoinSet<anyhow::Result<()>>,
    names: HashMap<tokio::task::Id, &'static str>,
}

impl Workers {
    fn spawn(&mut self, worker: Worker) {
        let handle = self.set.spawn(worker.run);
        self.names.insert(handle.id(), worker.name);
    }

    fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    fn len(&self) -> usize {
        self.set.len()
    }

    /// The names of the workers still running, comma-separated.
    fn names(&self) -> String {
        let mut names: Vec<&str> = self.names.values().copied().collect();
        names.sort_unstable();
        names.join(",")
    }

    fn abort_all(&mut self) {
        self.set.abort_all();
    }

    /// The next worker to finish, with its name; pending forever when none runs.
    async fn next_finished(&mut self) -> (&'static str, Result<anyhow::Result<()>, tokio::task::JoinError>) {
        let Some(joined) = self.set.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, result) = match joined {
            Ok((id, result)) => (id, Ok(result)),
            Err(error) => (error.id(), Err(error)),
        };
        (self.names.remove(&id).unwrap_or("unknown"), result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Workers are told apart by name whichever way they end: returning,
    /// failing, panicking, or aborted at the shutdown deadline.
    #[tokio::test]
    async fn workers_report_by_name_however_they_end() {
        let mut workers = Workers::default();
        let worker = |name, run: BoxFuture| Worker { name, run };
        type BoxFuture = futures::future::BoxFuture<'static, anyhow::Result<()>>;
        workers.spawn(worker("quick", Box::pin(async { Ok(()) })));
        workers.spawn(worker("failing", Box::pin(async { anyhow::bail!("broke") })));
        workers.spawn(worker("panicking", Box::pin(async { panic!("boom") })));
        workers.spawn(worker("stuck", Box::pin(std::future::pending())));
        let mut ended = std::collections::BTreeMap::new();
        for _ in 0..3 {
            let (name, result) = workers.next_finished().await;
            let how = match result {
                Ok(Ok(())) => "returned".to_owned(),
                Ok(Err(error)) => format!("failed: {error}"),
                Err(error) => format!("panicked: {}", error.is_panic()),
            };
            ended.insert(name, how);
        }
        assert_eq!(ended["quick"], "returned");
        assert_eq!(ended["failing"], "failed: broke");
        assert_eq!(ended["panicking"], "panicked: true");
        assert_eq!((workers.len(), workers.names()), (1, "stuck".to_owned()));
        let wait = tokio::time::timeout(Duration::from_millis(50), workers.next_finished()).await;
        assert!(wait.is_err(), "a stuck worker does not end by itself");
        workers.abort_all();
        let (name, result) = workers.next_finished().await;
        assert_eq!(name, "stuck");
        assert!(result.is_err_and(|error| error.is_cancelled()));
        assert!(workers.is_empty());
    }
}
