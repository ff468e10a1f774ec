//! CampaignService: create, inspect and start campaigns.

use broadside_auth::{Authenticator, Caller};
use broadside_mail::address::{check_header_value, validate_address};
use broadside_proto::v1::campaign_service_server::{CampaignService, CampaignServiceServer};
use broadside_proto::v1::*;
use broadside_proto::{ServiceError, names};
use broadside_store::Scope;
use broadside_store::{CampaignState as State, PageRequest, new_id, now_millis};
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::convert::campaign_to_proto;
use crate::{Dispatch, compliance};

#[derive(Clone)]
pub struct CampaignApi {
    dispatch: Dispatch,
    auth: Authenticator,
}

impl CampaignApi {
    pub(crate) fn new(dispatch: Dispatch) -> Self {
        Self { auth: Authenticator::new(dispatch.store.clone()), dispatch }
    }

    pub fn into_service(self) -> CampaignServiceServer<Self> {
        CampaignServiceServer::new(self)
    }

    pub async fn create_campaign(
        &self,
        caller: &Caller,
        request: CreateCampaignRequest,
    ) -> Result<Campaign, ServiceError> {
        let campaign = request.campaign.unwrap_or_default();
        let store = &self.dispatch.store;
        let template_id = names::parse("campaign.template", &campaign.template, "templates")?;
        let list_id = names::parse("campaign.list", &campaign.list, "lists")?;
        validate_address("campaign.from_address", campaign.from_address.trim())
            .map_err(|e| e.into_service_error(""))?;
        check_header_value("campaign.from_name", &campaign.from_name).map_err(|e| e.into_service_error(""))?;
        let rate = campaign.max_messages_per_second;
        if !rate.is_finite() || rate < 0.0 {
            return Err(ServiceError::invalid(
                "campaign.max_messages_per_second",
                "must be 0 (no limit) or a positive number",
            ));
        }
        if !campaign.reply_to.is_empty() {
            validate_address("campaign.reply_to", &campaign.reply_to).map_err(|e| e.into_service_error(""))?;
        }
        let template = store
            .get_template(&caller.tenant, template_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("campaign.template: {}", campaign.template)))?;
        if store.get_list(&caller.tenant, list_id).await?.is_none() {
            return Err(ServiceError::NotFound(format!("campaign.list: {}", campaign.list)));
        }
        let segment_id = if campaign.segment.is_empty() {
            String::new()
        } else {
            let id = names::parse("campaign.segment", &campaign.segment, "segments")?;
            if self.dispatch.segments.is_none() {
                return Err(ServiceError::FailedPrecondition(
                    "campaign.segment: segment targeting needs the segmentation role in the dispatch process (--roles dispatch,segmentation)".into(),
                ));
            }
            if store.get_segment(&caller.tenant, id).await?.is_none() {
                return Err(ServiceError::NotFound(format!("campaign.segment: {}", campaign.segment)));
            }
            id.to_owned()
        };
        let transactional = match CampaignStream::try_from(campaign.stream) {
            Ok(CampaignStream::Transactional) => true,
            Ok(_) => false,
            Err(_) => {
                return Err(ServiceError::invalid("campaign.stream", format!("unknown value {}", campaign.stream)));
            }
        };
        check_header_value("campaign.postal_address", &campaign.postal_address)
            .map_err(|e| e.into_service_error(""))?;
        let send_window = campaign.send_window.trim().to_owned();
        if !send_window.is_empty() {
            broadside_store::schedule::SendWindow::parse(&send_window)
                .map_err(|message| ServiceError::invalid("campaign.send_window", message))?;
        }
        let tenant = store.get_tenant(&caller.tenant).await?;
        let draft = compliance::Draft {
            transactional,
            tenant_allows_transactional: tenant.is_some_and(|t| t.allow_transactional),
            postal_address: &campaign.postal_address,
            template: &template,
        };
        compliance::enforce(&compliance::checks(&draft))?;
        let stored = store
            .create_campaign(
                broadside_store::Campaign {
                    tenant: caller.tenant.clone(),
                    id: new_id(),
                    display_name: campaign.display_name,
                    template_id: template.id,
                    template_version: template.version,
                    list_id: list_id.to_owned(),
                    from_address: campaign.from_address.trim().to_owned(),
                    from_name: campaign.from_name,
                    reply_to: campaign.reply_to,
                    max_messages_per_second: rate,
                    stream: if transactional { "transactional" } else { "marketing" }.into(),
                    postal_address: campaign.postal_address.trim().to_owned(),
                    send_at: campaign.send_at.as_ref().map(broadside_proto::convert::timestamp_to_millis).unwrap_or(0),
                    send_window,
                    segment_id,
                    state: State::Draft,
                    stats: Default::default(),
                    fanout_cursor: String::new(),
                    fanout_done: false,
                    create_time: now_millis(),
                    start_time: 0,
                    complete_time: 0,
                    progress_time: 0,
                },
                (!request.request_id.is_empty()).then_some(request.request_id),
            )
            .await?;
        tracing::info!(campaign = %stored.id, list = %stored.list_id, "campaign created");
        Ok(campaign_to_proto(&stored))
    }

    pub async fn get_campaign(&self, caller: &Caller, request: GetCampaignRequest) -> Result<Campaign, ServiceError> {
        let id = names::parse("name", &request.name, "campaigns")?;
        let campaign =
            self.dispatch.store.get_campaign(&caller.tenant, id).await?.ok_or(ServiceError::NotFound(request.name))?;
        Ok(campaign_to_proto(&campaign))
    }

    pub async fn list_campaigns(
        &self,
        caller: &Caller,
        request: ListCampaignsRequest,
    ) -> Result<ListCampaignsResponse, ServiceError> {
        let page = self
            .dispatch
            .store
            .list_campaigns(&caller.tenant, PageRequest::new(request.page_size.into(), &request.page_token))
            .await?;
        Ok(ListCampaignsResponse {
            campaigns: page.items.iter().map(campaign_to_proto).collect(),
            next_page_token: page.next_token.unwrap_or_default(),
        })
    }

    /// Pause, resume or cancel: a compare-and-set of the state, announced on
    /// `campaign-events` and audited. Senders notice within a second: jobs of
    /// a paused campaign wait, those of a cancelled one are dropped.
    pub async fn transition(
        &self,
        caller: &Caller,
        name: &str,
        from: &[State],
        to: State,
        verb: &str,
    ) -> Result<Campaign, ServiceError> {
        let id = names::parse("name", name, "campaigns")?;
        let store = &self.dispatch.store;
        let current =
            store.get_campaign(&caller.tenant, id).await?.ok_or_else(|| ServiceError::NotFound(name.into()))?;
        let Some(changed) = store.transition_campaign(&caller.tenant, id, from, to).await? else {
            return Err(ServiceError::FailedPrecondition(format!(
                "{name} is {:?}; only a campaign that is {} can be {verb}d",
                current.state,
                from.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(" or ")
            )));
        };
        if to == State::Sending {
            store.touch_progress(&caller.tenant, id).await?;
            self.dispatch.fanout_wake.notify_one();
        }
        let kind = match to {
            State::Paused => "paused",
            State::Cancelled => "cancelled",
            _ => "resumed",
        };
        publish_campaign_event(&self.dispatch, &changed, kind).await;
        if changed.state == State::Completed {
            announce_completion(&self.dispatch, &changed).await; // everything finished while it was paused
        }
        broadside_auth::audit(store, caller, &format!("campaign.{verb}"), name, serde_json::json!({})).await?;
        Ok(campaign_to_proto(&changed))
    }

    /// Reports every compliance rule for an existing campaign.
    pub async fn check_campaign(
        &self,
        caller: &Caller,
        request: CheckCampaignRequest,
    ) -> Result<CheckCampaignResponse, ServiceError> {
        let id = names::parse("name", &request.name, "campaigns")?;
        let store = &self.dispatch.store;
        let campaign = store
            .get_campaign(&caller.tenant, id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(request.name.clone()))?;
        let template = store
            .get_template(&caller.tenant, &campaign.template_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("templates/{}", campaign.template_id)))?;
        let tenant = store.get_tenant(&caller.tenant).await?;
        let draft = compliance::Draft {
            transactional: campaign.stream == "transactional",
            tenant_allows_transactional: tenant.is_some_and(|t| t.allow_transactional),
            postal_address: &campaign.postal_address,
            template: &template,
        };
        let checks = compliance::checks(&draft);
        Ok(CheckCampaignResponse { passed: !checks.iter().any(|c| c.result == "failed"), checks })
    }

    /// Moves a draft to SENDING and wakes the fan-out worker. Starting a
    /// campaign that is already sending or done is FAILED_PRECONDITION.
    pub async fn start_campaign(
        &self,
        caller: &Caller,
        request: StartCampaignRequest,
    ) -> Result<Campaign, ServiceError> {
        let id = names::parse("name", &request.name, "campaigns")?;
        let store = &self.dispatch.store;
        let campaign = store
            .get_campaign(&caller.tenant, id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(request.name.clone()))?;
        if campaign.state != State::Draft {
            return Err(ServiceError::FailedPrecondition(format!(
                "{} is {:?}, only a draft can be started",
                request.name, campaign.state
            )));
        }
        let first =
            store.list_members(&caller.tenant, &campaign.list_id, true, PageRequest { size: 1, token: None }).await?;
        if first.items.is_empty() {
            return Err(ServiceError::invalid(
                "list",
                format!("lists/{} has no active subscribers: the campaign would have no recipients", campaign.list_id),
            ));
        }
        let started = store
            .transition_campaign(&caller.tenant, id, &[State::Draft], State::Sending)
            .await?
            .ok_or_else(|| ServiceError::FailedPrecondition(format!("{} was started concurrently", request.name)))?;
        publish_campaign_event(&self.dispatch, &started, "started").await;
        if let Some(traceparent) = broadside_telemetry::current_traceparent() {
            self.dispatch
                .start_traces
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(started.id.clone(), traceparent);
        }
        self.dispatch.fanout_wake.notify_one();
        tracing::info!(campaign = %started.id, "campaign started");
        broadside_auth::audit(&self.dispatch.store, caller, "campaign.start", &request.name, serde_json::json!({}))
            .await?;
        Ok(campaign_to_proto(&started))
    }
}

/// Logs and publishes that a campaign finished.
pub(crate) async fn announce_completion(dispatch: &Dispatch, campaign: &broadside_store::Campaign) {
    tracing::info!(
        campaign = %campaign.id,
        recipients = campaign.stats.recipients,
        delivered = campaign.stats.delivered,
        failed = campaign.stats.failed,
        "campaign completed"
    );
    publish_campaign_event(dispatch, campaign, "completed").await;
}

/// Campaign events are informational; a failure to publish one is logged, not fatal.
async fn publish_campaign_event(dispatch: &Dispatch, campaign: &broadside_store::Campaign, kind: &str) {
    let event = CampaignEvent {
        tenant: campaign.tenant.clone(),
        campaign_id: campaign.id.clone(),
        time: broadside_proto::convert::millis_to_timestamp(now_millis()),
        kind: kind.to_owned(),
    };
    let record = broadside_bus::Record::event(
        &campaign.id,
        &campaign.tenant,
        "broadside.v1.CampaignEvent",
        event.encode_to_vec(),
        broadside_telemetry::current_traceparent(),
    );
    let topic = dispatch.topic(broadside_bus::Topic::CampaignEvents);
    if let Err(error) = dispatch.bus.publish(&topic, vec![record]).await {
        tracing::warn!(%error, campaign = %campaign.id, kind, "could not publish campaign event");
    }
}

#[tonic::async_trait]
impl CampaignService for CampaignApi {
    async fn create_campaign(&self, request: Request<CreateCampaignRequest>) -> Result<Response<Campaign>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::CampaignsWrite).await?;
        Ok(Response::new(CampaignApi::create_campaign(self, &caller, request.into_inner()).await?))
    }
    async fn get_campaign(&self, request: Request<GetCampaignRequest>) -> Result<Response<Campaign>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::Read).await?;
        Ok(Response::new(CampaignApi::get_campaign(self, &caller, request.into_inner()).await?))
    }
    async fn list_campaigns(
        &self,
        request: Request<ListCampaignsRequest>,
    ) -> Result<Response<ListCampaignsResponse>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::Read).await?;
        Ok(Response::new(CampaignApi::list_campaigns(self, &caller, request.into_inner()).await?))
    }
    async fn start_campaign(&self, request: Request<StartCampaignRequest>) -> Result<Response<Campaign>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::CampaignsWrite).await?;
        Ok(Response::new(CampaignApi::start_campaign(self, &caller, request.into_inner()).await?))
    }
    async fn check_campaign(
        &self,
        request: Request<CheckCampaignRequest>,
    ) -> Result<Response<CheckCampaignResponse>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::Read).await?;
        Ok(Response::new(CampaignApi::check_campaign(self, &caller, request.into_inner()).await?))
    }
    async fn pause_campaign(&self, request: Request<PauseCampaignRequest>) -> Result<Response<Campaign>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::CampaignsWrite).await?;
        let name = request.into_inner().name;
        Ok(Response::new(self.transition(&caller, &name, &[State::Sending], State::Paused, "pause").await?))
    }
    async fn resume_campaign(&self, request: Request<ResumeCampaignRequest>) -> Result<Response<Campaign>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::CampaignsWrite).await?;
        let name = request.into_inner().name;
        Ok(Response::new(self.transition(&caller, &name, &[State::Paused], State::Sending, "resume").await?))
    }
    async fn cancel_campaign(&self, request: Request<CancelCampaignRequest>) -> Result<Response<Campaign>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::CampaignsWrite).await?;
        let name = request.into_inner().name;
        let from = [State::Draft, State::Sending, State::Paused];
        Ok(Response::new(self.transition(&caller, &name, &from, State::Cancelled, "cancel").await?))
    }
}
