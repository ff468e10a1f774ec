//! `ApiKeyService`: an admin manages its own tenant's keys over gRPC.

use broadside_auth::{Authenticator, Caller, audit};
use broadside_proto::convert::millis_to_timestamp;
use broadside_proto::v1::api_key_service_server::{ApiKeyService, ApiKeyServiceServer};
use broadside_proto::v1::audit_service_server::{AuditService, AuditServiceServer};
use broadside_proto::v1::*;
use broadside_proto::{ServiceError, names};
use broadside_store::{DynStore, Scope};
use serde_json::json;
use tonic::{Request, Response, Status};

/// API key management, scoped to the caller's tenant.
#[derive(Clone)]
pub struct ApiKeyApi {
    store: DynStore,
    auth: Authenticator,
}

pub(crate) fn key_to_proto(key: &broadside_store::ApiKey) -> ApiKey {
    ApiKey {
        name: format!("apiKeys/{}", key.id),
        scopes: key.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
        description: key.description.clone(),
        create_time: millis_to_timestamp(key.create_time),
        revoke_time: (key.revoke_time > 0).then(|| millis_to_timestamp(key.revoke_time)).flatten(),
    }
}

/// Parses scope names, naming the bad one.
pub fn parse_scopes(field: &str, names: &[String]) -> Result<Vec<Scope>, ServiceError> {
    let mut scopes = Vec::new();
    for name in names.iter().flat_map(|n| n.split(',')).map(str::trim).filter(|n| !n.is_empty()) {
        let scope = Scope::parse(name).ok_or_else(|| {
            ServiceError::invalid(
                field,
                format!("unknown scope {name:?} (use admin, subscribers:write, campaigns:write, read)"),
            )
        })?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        return Err(ServiceError::invalid(field, "name at least one scope"));
    }
    Ok(scopes)
}

impl ApiKeyApi {
    pub(crate) fn new(store: DynStore) -> Self {
        Self { auth: Authenticator::new(store.clone()), store }
    }

    pub fn into_service(self) -> ApiKeyServiceServer<Self> {
        ApiKeyServiceServer::new(self)
    }

    pub async fn create_api_key(
        &self,
        caller: &Caller,
        request: CreateApiKeyRequest,
    ) -> Result<CreateApiKeyResponse, ServiceError> {
        let key = request.key.unwrap_or_default();
        let scopes = parse_scopes("key.scopes", &key.scopes)?;
        let new = broadside_auth::generate(&caller.tenant, scopes, key.description.trim());
        self.store.create_api_key(new.record.clone()).await?;
        let scopes: Vec<&str> = new.record.scopes.iter().map(|s| s.as_str()).collect();
        let resource = format!("apiKeys/{}", new.record.id);
        audit(&self.store, caller, "api_key.create", &resource, json!({ "scopes": scopes })).await?;
        Ok(CreateApiKeyResponse { key: Some(key_to_proto(&new.record)), secret: new.secret })
    }

    pub async fn list_api_keys(&self, caller: &Caller) -> Result<ListApiKeysResponse, ServiceError> {
        let keys = self.store.list_api_keys(&caller.tenant).await?;
        Ok(ListApiKeysResponse { keys: keys.iter().map(key_to_proto).collect() })
    }

    pub async fn revoke_api_key(&self, caller: &Caller, request: RevokeApiKeyRequest) -> Result<ApiKey, ServiceError> {
        let id = names::parse("name", &request.name, "apiKeys")?;
        if !self.store.revoke_api_key(&caller.tenant, id).await? {
            return Err(ServiceError::NotFound(format!("{} (or it is already revoked)", request.name)));
        }
        audit(&self.store, caller, "api_key.revoke", &request.name, json!({})).await?;
        let key = self.store.get_api_key(id).await?.ok_or(ServiceError::NotFound(request.name))?;
        Ok(key_to_proto(&key))
    }
}

#[tonic::async_trait]
impl ApiKeyService for ApiKeyApi {
    async fn create_api_key(
        &self,
        request: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::Admin).await?;
        Ok(Response::new(ApiKeyApi::create_api_key(self, &caller, request.into_inner()).await?))
    }
    async fn list_api_keys(
        &self,
        request: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::Admin).await?;
        Ok(Response::new(ApiKeyApi::list_api_keys(self, &caller).await?))
    }
    async fn revoke_api_key(&self, request: Request<RevokeApiKeyRequest>) -> Result<Response<ApiKey>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::Admin).await?;
        Ok(Response::new(ApiKeyApi::revoke_api_key(self, &caller, request.into_inner()).await?))
    }
}

/// `AuditService`: the tenant's audit log, for admins.
#[derive(Clone)]
pub struct AuditApi {
    store: DynStore,
    auth: Authenticator,
}

impl AuditApi {
    pub(crate) fn new(store: DynStore) -> Self {
        Self { auth: Authenticator::new(store.clone()), store }
    }

    pub fn into_service(self) -> AuditServiceServer<Self> {
        AuditServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        let caller = self.auth.authorize_request(&request, Scope::Admin).await?;
        let request = request.into_inner();
        let page = broadside_store::PageRequest::new(request.page_size.into(), &request.page_token);
        let page = self.store.list_audit(&caller.tenant, page).await.map_err(ServiceError::from)?;
        Ok(Response::new(ListAuditEventsResponse {
            events: page
                .items
                .into_iter()
                .map(|entry| AuditEvent {
                    time: millis_to_timestamp(entry.time),
                    actor: entry.actor,
                    action: entry.action,
                    resource: entry.resource,
                    detail: entry.detail,
                    source: entry.source,
                })
                .collect(),
            next_page_token: page.next_token.unwrap_or_default(),
        }))
    }
}
