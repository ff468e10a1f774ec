//! The segmentation role. The rule language and in-memory evaluator arrive
//! with the segmentation issue; until then the API answers UNIMPLEMENTED so
//! clients can already be generated against the final protos.

use broadside_proto::ServiceError;
use broadside_proto::v1::segment_service_server::{SegmentService, SegmentServiceServer};
use broadside_proto::v1::*;
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
pub struct SegmentApi;

impl SegmentApi {
    pub fn into_service(self) -> SegmentServiceServer<Self> {
        SegmentServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl SegmentService for SegmentApi {
    async fn create_segment(&self, _: Request<CreateSegmentRequest>) -> Result<Response<Segment>, Status> {
        Err(ServiceError::Unimplemented("CreateSegment").into())
    }
    async fn get_segment(&self, _: Request<GetSegmentRequest>) -> Result<Response<Segment>, Status> {
        Err(ServiceError::Unimplemented("GetSegment").into())
    }
    async fn list_segments(&self, _: Request<ListSegmentsRequest>) -> Result<Response<ListSegmentsResponse>, Status> {
        Err(ServiceError::Unimplemented("ListSegments").into())
    }
    async fn preview_segment(
        &self,
        _: Request<PreviewSegmentRequest>,
    ) -> Result<Response<PreviewSegmentResponse>, Status> {
        Err(ServiceError::Unimplemented("PreviewSegment").into())
    }
}
