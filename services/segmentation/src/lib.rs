//! The segmentation role. The rule language and in-memory evaluator arrive
//! with the segmentation issue; until then the API answers UNIMPLEMENTED so
//! clients can already be generated against the final protos.

use broadside_auth::Authenticator;
use broadside_proto::ServiceError;
use broadside_proto::v1::segment_service_server::{SegmentService, SegmentServiceServer};
use broadside_proto::v1::*;
use broadside_store::{DynStore, Scope};
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct SegmentApi {
    auth: Authenticator,
}

impl SegmentApi {
    pub fn new(store: DynStore) -> Self {
        Self { auth: Authenticator::new(store) }
    }

    pub fn into_service(self) -> SegmentServiceServer<Self> {
        SegmentServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl SegmentService for SegmentApi {
    async fn create_segment(&self, request: Request<CreateSegmentRequest>) -> Result<Response<Segment>, Status> {
        self.auth.authorize_request(&request, Scope::CampaignsWrite).await?;
        Err(ServiceError::Unimplemented("CreateSegment").into())
    }
    async fn get_segment(&self, request: Request<GetSegmentRequest>) -> Result<Response<Segment>, Status> {
        self.auth.authorize_request(&request, Scope::Read).await?;
        Err(ServiceError::Unimplemented("GetSegment").into())
    }
    async fn list_segments(
        &self,
        request: Request<ListSegmentsRequest>,
    ) -> Result<Response<ListSegmentsResponse>, Status> {
        self.auth.authorize_request(&request, Scope::Read).await?;
        Err(ServiceError::Unimplemented("ListSegments").into())
    }
    async fn preview_segment(
        &self,
        request: Request<PreviewSegmentRequest>,
    ) -> Result<Response<PreviewSegmentResponse>, Status> {
        self.auth.authorize_request(&request, Scope::Read).await?;
        Err(ServiceError::Unimplemented("PreviewSegment").into())
    }
}
