//! TemplateService: templates are compiled and test-rendered when created,
//! and immutable afterwards.

use broadside_auth::{Authenticator, Caller};
use broadside_mail::template::{TemplateEngine, TemplateSource};
use broadside_proto::v1::template_service_server::{TemplateService, TemplateServiceServer};
use broadside_proto::v1::*;
use broadside_proto::{ServiceError, names};
use broadside_store::Scope;
use broadside_store::{PageRequest, new_id, now_millis};
use tonic::{Request, Response, Status};

use crate::Dispatch;
use crate::convert::template_to_proto;

/// The context every template renders against: `subscriber` and `unsubscribe_url`.
/// Used with a sample subscriber to test-render new templates.
pub fn sample_context() -> minijinja::Value {
    sample_context_with("1 Sample Street, Springfield")
}

/// The sample context with the campaign's postal address.
pub(crate) fn sample_context_with(postal_address: &str) -> minijinja::Value {
    minijinja::Value::from_serialize(serde_json::json!({
        "postal_address": postal_address,
        "subscriber": {
            "id": "sample",
            "email": "sample@example.com",
            "display_name": "Sample Subscriber",
            "attributes": {}
        },
        "unsubscribe_url": "https://example.com/u/sample",
        "campaign": {"id": "sample"}
    }))
}

#[derive(Clone)]
pub struct TemplateApi {
    dispatch: Dispatch,
    auth: Authenticator,
}

impl TemplateApi {
    pub(crate) fn new(dispatch: Dispatch) -> Self {
        Self { auth: Authenticator::new(dispatch.store.clone()), dispatch }
    }

    pub fn into_service(self) -> TemplateServiceServer<Self> {
        TemplateServiceServer::new(self)
    }

    pub async fn create_template(
        &self,
        caller: &Caller,
        request: CreateTemplateRequest,
    ) -> Result<Template, ServiceError> {
        let template = request.template.unwrap_or_default();
        let source = TemplateSource {
            subject: &template.subject,
            html_body: &template.html_body,
            text_body: &template.text_body,
        };
        TemplateEngine::validate(&source, &sample_context()).map_err(|e| e.into_service_error("template"))?;
        let stored = self
            .dispatch
            .store
            .create_template(
                broadside_store::Template {
                    tenant: caller.tenant.clone(),
                    id: new_id(),
                    version: 1,
                    display_name: template.display_name,
                    subject: template.subject,
                    html_body: template.html_body,
                    text_body: template.text_body,
                    create_time: now_millis(),
                },
                (!request.request_id.is_empty()).then_some(request.request_id),
            )
            .await?;
        tracing::info!(template = %stored.id, "template created");
        Ok(template_to_proto(&stored))
    }

    pub async fn get_template(&self, caller: &Caller, request: GetTemplateRequest) -> Result<Template, ServiceError> {
        let id = names::parse("name", &request.name, "templates")?;
        let template =
            self.dispatch.store.get_template(&caller.tenant, id).await?.ok_or(ServiceError::NotFound(request.name))?;
        Ok(template_to_proto(&template))
    }

    pub async fn list_templates(
        &self,
        caller: &Caller,
        request: ListTemplatesRequest,
    ) -> Result<ListTemplatesResponse, ServiceError> {
        let page = self
            .dispatch
            .store
            .list_templates(&caller.tenant, PageRequest::new(request.page_size.into(), &request.page_token))
            .await?;
        Ok(ListTemplatesResponse {
            templates: page.items.iter().map(template_to_proto).collect(),
            next_page_token: page.next_token.unwrap_or_default(),
        })
    }
}

#[tonic::async_trait]
impl TemplateService for TemplateApi {
    async fn create_template(&self, request: Request<CreateTemplateRequest>) -> Result<Response<Template>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::CampaignsWrite).await?;
        Ok(Response::new(TemplateApi::create_template(self, &caller, request.into_inner()).await?))
    }
    async fn get_template(&self, request: Request<GetTemplateRequest>) -> Result<Response<Template>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::Read).await?;
        Ok(Response::new(TemplateApi::get_template(self, &caller, request.into_inner()).await?))
    }
    async fn list_templates(
        &self,
        request: Request<ListTemplatesRequest>,
    ) -> Result<Response<ListTemplatesResponse>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::Read).await?;
        Ok(Response::new(TemplateApi::list_templates(self, &caller, request.into_inner()).await?))
    }
}
