//! The feedback role. DSN/ARF parsing, the unsubscribe endpoint and
//! engagement tracking arrive with the feedback issue; until then the API
//! answers UNIMPLEMENTED.

use broadside_auth::Authenticator;
use broadside_proto::ServiceError;
use broadside_proto::v1::feedback_service_server::{FeedbackService, FeedbackServiceServer};
use broadside_proto::v1::*;
use broadside_store::{DynStore, Scope};
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct FeedbackApi {
    auth: Authenticator,
}

impl FeedbackApi {
    pub fn new(store: DynStore) -> Self {
        Self { auth: Authenticator::new(store) }
    }

    pub fn into_service(self) -> FeedbackServiceServer<Self> {
        FeedbackServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl FeedbackService for FeedbackApi {
    async fn list_feedback_records(
        &self,
        request: Request<ListFeedbackRecordsRequest>,
    ) -> Result<Response<ListFeedbackRecordsResponse>, Status> {
        self.auth.authorize_request(&request, Scope::Read).await?;
        Err(ServiceError::Unimplemented("ListFeedbackRecords").into())
    }
    async fn ingest_report(&self, request: Request<IngestReportRequest>) -> Result<Response<FeedbackRecord>, Status> {
        self.auth.authorize_request(&request, Scope::SubscribersWrite).await?;
        Err(ServiceError::Unimplemented("IngestReport").into())
    }
}
