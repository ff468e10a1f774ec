//! SegmentService over the live projections.

use std::pin::Pin;
use std::time::{Duration, Instant};

use broadside_auth::Authenticator;
use broadside_proto::convert::millis_to_timestamp;
use broadside_proto::v1::segment_service_server::{SegmentService, SegmentServiceServer};
use broadside_proto::v1::*;
use broadside_proto::{ServiceError, names};
use broadside_store::{DynStore, PageRequest, Scope, new_id, now_millis};
use roaring::RoaringBitmap;
use tonic::{Request, Response, Status};

use crate::live::{Live, format_position, parse_position};
use crate::rule::{self, Rule};

/// How long PreviewSegment waits for `min_position`.
const READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct SegmentApi {
    store: DynStore,
    live: Live,
    auth: Authenticator,
}

impl SegmentApi {
    pub(crate) fn new(store: DynStore, live: Live) -> Self {
        Self { auth: Authenticator::new(store.clone()), store, live }
    }

    pub fn into_service(self) -> SegmentServiceServer<Self> {
        SegmentServiceServer::new(self)
    }

    /// The members of a stored segment (optionally within one list), as subscriber ids.
    pub async fn members(
        &self,
        tenant: &str,
        segment_id: &str,
        list_id: Option<&str>,
    ) -> Result<Vec<String>, ServiceError> {
        let segment = self
            .store
            .get_segment(tenant, segment_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("segments/{segment_id}")))?;
        let rule = rule::parse(&segment.rule).map_err(|e| ServiceError::Internal(format!("stored rule: {e}")))?;
        self.ensure_ready()?;
        let (members, projection) = self.evaluate(tenant, &rule, list_id);
        let projection = projection.read().unwrap_or_else(|p| p.into_inner());
        Ok(members.iter().map(|d| projection.id(d)).collect())
    }

    fn ensure_ready(&self) -> Result<(), ServiceError> {
        if self.live.is_ready() {
            Ok(())
        } else {
            Err(ServiceError::Unavailable(format!(
                "segmentation is loading its projection ({} subscribers so far); retry in a few seconds",
                self.live.loaded()
            )))
        }
    }

    fn evaluate(
        &self,
        tenant: &str,
        rule: &Rule,
        list_id: Option<&str>,
    ) -> (RoaringBitmap, std::sync::Arc<std::sync::RwLock<crate::engine::Projection>>) {
        let projection = self.live.tenant(tenant);
        let rule = match list_id {
            Some(list) => Rule::All(vec![Rule::InList(list.to_owned()), rule.clone()]),
            None => rule.clone(),
        };
        let members = projection.read().unwrap_or_else(|p| p.into_inner()).evaluate(&rule, now_millis());
        (members, projection)
    }
}

/// The rule of a request: text (parsed) or tree (checked), named by `field`.
fn rule_of(field: &str, text: &str, tree: Option<&SegmentRule>) -> Result<Rule, ServiceError> {
    match (text.trim().is_empty(), tree) {
        (false, Some(_)) => Err(ServiceError::invalid(field, "give the rule as text or as a tree, not both")),
        (false, None) => rule::parse(text).map_err(|e| ServiceError::invalid(format!("{field}.rule"), e.to_string())),
        (true, Some(tree)) => rule::proto::from_proto(tree, &format!("{field}.tree"))
            .map_err(|e| ServiceError::invalid(e.path, e.message)),
        (true, None) => {
            Err(ServiceError::invalid(format!("{field}.rule"), "is required, e.g. attributes.country = \"DE\""))
        }
    }
}

fn to_proto(segment: &broadside_store::Segment) -> Segment {
    let tree = rule::parse(&segment.rule).ok().map(|r| rule::proto::to_proto(&r));
    Segment {
        name: names::format("segments", &segment.id),
        display_name: segment.display_name.clone(),
        rule: segment.rule.clone(),
        create_time: millis_to_timestamp(segment.create_time),
        tree,
    }
}

fn list_of(list: &str) -> Result<Option<&str>, ServiceError> {
    if list.is_empty() { Ok(None) } else { names::parse("list", list, "lists").map(Some) }
}

type MemberStream = Pin<Box<dyn futures::Stream<Item = Result<SegmentMembersPage, Status>> + Send>>;

#[tonic::async_trait]
impl SegmentService for SegmentApi {
    async fn create_segment(&self, request: Request<CreateSegmentRequest>) -> Result<Response<Segment>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::CampaignsWrite).await?;
        let request = request.into_inner();
        let segment = request.segment.unwrap_or_default();
        let rule = rule_of("segment", &segment.rule, segment.tree.as_ref())?;
        if segment.display_name.trim().is_empty() {
            return Err(ServiceError::invalid("segment.display_name", "is required").into());
        }
        let stored = broadside_store::Segment {
            tenant: caller.tenant.clone(),
            id: new_id(),
            display_name: segment.display_name.trim().chars().take(200).collect(),
            rule: rule.to_string(),
            create_time: now_millis(),
        };
        let request_id = (!request.request_id.is_empty()).then_some(request.request_id);
        let stored = self.store.create_segment(stored, request_id).await.map_err(ServiceError::from)?;
        let detail = serde_json::json!({ "rule": stored.rule });
        broadside_auth::audit(&self.store, &caller, "segment.create", &format!("segments/{}", stored.id), detail)
            .await?;
        Ok(Response::new(to_proto(&stored)))
    }

    async fn get_segment(&self, request: Request<GetSegmentRequest>) -> Result<Response<Segment>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::Read).await?;
        let id = names::parse("name", &request.get_ref().name, "segments")?;
        let segment = self.store.get_segment(&caller.tenant, id).await.map_err(ServiceError::from)?;
        Ok(Response::new(to_proto(&segment.ok_or_else(|| ServiceError::NotFound(request.get_ref().name.clone()))?)))
    }

    async fn list_segments(
        &self,
        request: Request<ListSegmentsRequest>,
    ) -> Result<Response<ListSegmentsResponse>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::Read).await?;
        let request = request.into_inner();
        let page = PageRequest::new(request.page_size.into(), &request.page_token);
        let page = self.store.list_segments(&caller.tenant, page).await.map_err(ServiceError::from)?;
        Ok(Response::new(ListSegmentsResponse {
            segments: page.items.iter().map(to_proto).collect(),
            next_page_token: page.next_token.unwrap_or_default(),
        }))
    }

    async fn delete_segment(&self, request: Request<DeleteSegmentRequest>) -> Result<Response<()>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::CampaignsWrite).await?;
        let name = request.into_inner().name;
        let id = names::parse("name", &name, "segments")?;
        if !self.store.delete_segment(&caller.tenant, id).await.map_err(ServiceError::from)? {
            return Err(ServiceError::NotFound(name).into());
        }
        broadside_auth::audit(&self.store, &caller, "segment.delete", &name, serde_json::json!({})).await?;
        Ok(Response::new(()))
    }

    async fn preview_segment(
        &self,
        request: Request<PreviewSegmentRequest>,
    ) -> Result<Response<PreviewSegmentResponse>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::Read).await?;
        let request = request.into_inner();
        let rule = if request.name.is_empty() {
            rule_of("preview", &request.rule, request.tree.as_ref())?
        } else {
            let id = names::parse("name", &request.name, "segments")?;
            let segment = self.store.get_segment(&caller.tenant, id).await.map_err(ServiceError::from)?;
            let segment = segment.ok_or_else(|| ServiceError::NotFound(request.name.clone()))?;
            rule::parse(&segment.rule).map_err(|e| ServiceError::Internal(format!("stored rule: {e}")))?
        };
        let list = list_of(&request.list)?;
        self.ensure_ready()?;
        if !request.min_position.is_empty() {
            let written =
                parse_position(&request.min_position).map_err(|e| ServiceError::invalid("min_position", e))?;
            if !self.live.wait_for(&written, READ_YOUR_WRITES_WAIT).await {
                return Err(ServiceError::Unavailable(format!(
                    "the projection has not reached min_position {} within {READ_YOUR_WRITES_WAIT:?} (it is at {}); retry",
                    request.min_position,
                    format_position(&self.live.position())
                ))
                .into());
            }
        }
        let position = format_position(&self.live.position());
        let started = Instant::now();
        let (members, projection) = self.evaluate(&caller.tenant, &rule, list);
        let evaluate_ms = started.elapsed().as_secs_f64() * 1000.0;
        let size = match request.page_size {
            n if n <= 0 => 10,
            n => n.min(1000) as usize,
        };
        let after: u32 = match request.page_token.as_str() {
            "" => 0,
            token => token
                .parse::<u32>()
                .map_err(|_| ServiceError::invalid("page_token", "is not a token this API returned"))?,
        };
        let projection = projection.read().unwrap_or_else(|p| p.into_inner());
        let mut page: Vec<u32> = members.range(after..).take(size + 1).collect();
        let next = (page.len() > size).then(|| page.pop().map(|d| d.to_string())).flatten();
        Ok(Response::new(PreviewSegmentResponse {
            total: members.len() as i64,
            subscribers: page.iter().map(|d| names::format("subscribers", &projection.id(*d))).collect(),
            next_page_token: next.unwrap_or_default(),
            position,
            evaluate_ms,
            rule: rule.to_string(),
        }))
    }

    type StreamSegmentMembersStream = MemberStream;

    async fn stream_segment_members(
        &self,
        request: Request<StreamSegmentMembersRequest>,
    ) -> Result<Response<Self::StreamSegmentMembersStream>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::Read).await?;
        let request = request.into_inner();
        let id = names::parse("name", &request.name, "segments")?;
        let list = list_of(&request.list)?;
        let members = self.members(&caller.tenant, id, list).await?;
        let size = match request.page_size {
            n if n <= 0 => 1000,
            n => n.min(10_000) as usize,
        };
        let pages: Vec<Result<SegmentMembersPage, Status>> =
            members.chunks(size).map(|chunk| Ok(SegmentMembersPage { subscriber_ids: chunk.to_vec() })).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(pages))))
    }
}
