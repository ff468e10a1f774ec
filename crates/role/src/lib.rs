//! The contract between a node and its roles. Every `services/<role>` crate
//! exposes `Settings::from_config` and one `start(settings, deps)` that
//! returns its [`Parts`]: gRPC services, public HTTP routes and named worker
//! futures. The node only serves and runs them, so a role can be read in
//! its own crate, and `Node::start` is a loop over the selected roles.

use std::net::SocketAddr;
use std::sync::Arc;

use broadside_bus::DynBus;
use broadside_proto::ServiceError;
use broadside_store::DynStore;
use broadside_telemetry::{Metrics, Readiness};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

/// What every role gets from the node.
#[derive(Clone)]
pub struct Deps {
    pub store: DynStore,
    pub bus: DynBus,
    pub metrics: Metrics,
    /// The node's readiness (`/readyz`); a role may hold it down while it cannot work.
    pub readiness: Readiness,
    /// Cancelled when the node stops: workers finish what they hold and return.
    pub stop: CancellationToken,
    /// Links offered by the roles started before this one in the same process.
    pub links: Links,
}

/// What one role of a process offers the roles started after it.
#[derive(Clone, Default)]
pub struct Links {
    /// Who is in a segment (the segmentation role), for campaign fan-out.
    pub segments: Option<Arc<dyn SegmentMembers>>,
}

impl Links {
    /// Adds the links `other` offers (a role offers each link at most once per process).
    pub fn add(&mut self, other: Links) {
        if other.segments.is_some() {
            self.segments = other.segments;
        }
    }
}

/// Who is in a segment, asked by campaign fan-out (dispatch) of the
/// segmentation role running in the same process.
#[async_trait::async_trait]
pub trait SegmentMembers: Send + Sync {
    /// Subscriber ids in `segment_id` of `tenant`, restricted to members of `list_id`.
    async fn members(&self, tenant: &str, segment_id: &str, list_id: &str) -> Result<Vec<String>, ServiceError>;
}

/// A named future the node runs until it returns or the node stops; an
/// early return (or error) of any worker stops the node.
pub struct Worker {
    pub name: &'static str,
    pub run: BoxFuture<'static, anyhow::Result<()>>,
}

/// Adds one gRPC service to the node's routes.
pub type AddService = Box<dyn FnOnce(tonic::service::Routes) -> tonic::service::Routes + Send>;

/// What a started role hands to the node.
#[derive(Default)]
pub struct Parts {
    /// gRPC services, served on the node's one gRPC listener.
    pub grpc: Vec<AddService>,
    /// The names of those services, reported SERVING by the health service.
    pub serving: Vec<&'static str>,
    /// Routes for the node's public HTTP listener (links in messages).
    pub http: Option<axum::Router>,
    pub workers: Vec<Worker>,
    /// Listeners the role bound itself, by name (for logs and tests).
    pub listening: Vec<(&'static str, SocketAddr)>,
    /// What this role offers the roles started after it.
    pub links: Links,
}

impl Parts {
    /// Adds a gRPC service and reports it SERVING.
    pub fn grpc<S>(mut self, service: S) -> Self
    where
        S: tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>, Error = std::convert::Infallible>
            + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.grpc.push(Box::new(move |routes| routes.add_service(service)));
        self.serving.push(S::NAME);
        self
    }

    /// Adds public HTTP routes.
    pub fn http(mut self, routes: axum::Router) -> Self {
        self.http = Some(match self.http.take() {
            Some(existing) => existing.merge(routes),
            None => routes,
        });
        self
    }

    /// Adds a worker.
    pub fn worker(
        mut self,
        name: &'static str,
        run: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    ) -> Self {
        self.workers.push(Worker { name, run: Box::pin(run) });
        self
    }
}
