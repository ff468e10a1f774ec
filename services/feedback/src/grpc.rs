//! FeedbackService: the stored records with their verdicts, and reports
//! received out of band.

use broadside_auth::Authenticator;
use broadside_proto::ServiceError;
use broadside_proto::convert::millis_to_timestamp;
use broadside_proto::v1::feedback_service_server::{FeedbackService, FeedbackServiceServer};
use broadside_proto::v1::*;
use broadside_store::{PageRequest, Scope};
use tonic::{Request, Response, Status};

use crate::Feedback;

/// Largest report IngestReport takes.
const MAX_REPORT: usize = 25 * 1024 * 1024;
const KINDS: [&str; 5] = ["bounce", "complaint", "auto_reply", "unsubscribe", "unknown"];

#[derive(Clone)]
pub struct FeedbackApi {
    feedback: Feedback,
    auth: Authenticator,
}

impl FeedbackApi {
    pub(crate) fn new(feedback: Feedback) -> Self {
        Self { auth: Authenticator::new(feedback.store.clone()), feedback }
    }

    pub fn into_service(self) -> FeedbackServiceServer<Self> {
        FeedbackServiceServer::new(self).max_decoding_message_size(MAX_REPORT + 1024)
    }
}

fn to_proto(record: &broadside_store::FeedbackRecord) -> FeedbackRecord {
    FeedbackRecord {
        name: format!("feedbackRecords/{}", record.id),
        kind: record.kind.clone(),
        subscriber: if record.subscriber_id.is_empty() {
            String::new()
        } else {
            format!("subscribers/{}", record.subscriber_id)
        },
        campaign: if record.campaign_id.is_empty() {
            String::new()
        } else {
            format!("campaigns/{}", record.campaign_id)
        },
        status_code: record.status_code.clone(),
        verdict: record.verdict.clone(),
        receive_time: millis_to_timestamp(record.time),
        class: record.class.clone(),
        diagnostic: record.diagnostic.clone(),
        reporting_mta: record.reporting_mta.clone(),
        rule: record.rule.clone(),
    }
}

/// `kind = "bounce"` → `Some("bounce")`; empty → `None`.
fn parse_filter(filter: &str) -> Result<Option<String>, ServiceError> {
    let filter = filter.trim();
    if filter.is_empty() {
        return Ok(None);
    }
    let value = filter
        .strip_prefix("kind")
        .map(str::trim_start)
        .and_then(|rest| rest.strip_prefix('='))
        .map(|rest| rest.trim().trim_matches('"'))
        .ok_or_else(|| {
            ServiceError::invalid("filter", format!("unsupported filter {filter:?}: use kind = \"bounce\""))
        })?;
    if !KINDS.contains(&value) {
        return Err(ServiceError::invalid("filter", format!("unknown kind {value:?} (one of {})", KINDS.join(", "))));
    }
    Ok(Some(value.to_owned()))
}

#[tonic::async_trait]
impl FeedbackService for FeedbackApi {
    async fn list_feedback_records(
        &self,
        request: Request<ListFeedbackRecordsRequest>,
    ) -> Result<Response<ListFeedbackRecordsResponse>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::Read).await?;
        let request = request.into_inner();
        let kind = parse_filter(&request.filter)?;
        let page = PageRequest::new(request.page_size.into(), &request.page_token);
        let page =
            self.feedback.store.list_feedback(&caller.tenant, kind, false, page).await.map_err(ServiceError::from)?;
        Ok(Response::new(ListFeedbackRecordsResponse {
            records: page.items.iter().map(to_proto).collect(),
            next_page_token: page.next_token.unwrap_or_default(),
        }))
    }

    async fn ingest_report(&self, request: Request<IngestReportRequest>) -> Result<Response<FeedbackRecord>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::SubscribersWrite).await?;
        let raw = request.into_inner().raw_message;
        if raw.is_empty() {
            return Err(ServiceError::invalid("raw_message", "is empty: send the whole RFC 5322 message").into());
        }
        if raw.len() > MAX_REPORT {
            return Err(ServiceError::invalid("raw_message", format!("is larger than {MAX_REPORT} bytes")).into());
        }
        let handled =
            self.feedback.handle_message(&raw, &[], Some(&caller.tenant)).await.map_err(ServiceError::from)?;
        let page = self
            .feedback
            .store
            .list_feedback(&caller.tenant, None, false, PageRequest::new(20, ""))
            .await
            .map_err(ServiceError::from)?;
        let record = page
            .items
            .iter()
            .find(|r| r.id == handled.record_id)
            .map(to_proto)
            .ok_or_else(|| ServiceError::Internal("the stored report was not found".into()))?;
        Ok(Response::new(record))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_filter;

    #[test]
    fn filters() {
        assert_eq!(parse_filter("").unwrap(), None);
        assert_eq!(parse_filter("kind = \"bounce\"").unwrap().as_deref(), Some("bounce"));
        assert_eq!(parse_filter("kind=complaint").unwrap().as_deref(), Some("complaint"));
        assert!(parse_filter("kind = \"nope\"").is_err());
        assert!(parse_filter("status = 1").is_err());
    }
}
