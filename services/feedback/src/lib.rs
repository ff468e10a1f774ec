//! The feedback role. DSN/ARF parsing, the unsubscribe endpoint and
//! engagement tracking arrive with the feedback issue; until then the API
//! answers UNIMPLEMENTED.

use broadside_proto::ServiceError;
use broadside_proto::v1::feedback_service_server::{FeedbackService, FeedbackServiceServer};
use broadside_proto::v1::*;
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
pub struct FeedbackApi;

impl FeedbackApi {
    pub fn into_service(self) -> FeedbackServiceServer<Self> {
        FeedbackServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl FeedbackService for FeedbackApi {
    async fn list_feedback_records(
        &self,
        _: Request<ListFeedbackRecordsRequest>,
    ) -> Result<Response<ListFeedbackRecordsResponse>, Status> {
        Err(ServiceError::Unimplemented("ListFeedbackRecords").into())
    }
    async fn ingest_report(&self, _: Request<IngestReportRequest>) -> Result<Response<FeedbackRecord>, Status> {
        Err(ServiceError::Unimplemented("IngestReport").into())
    }
}
