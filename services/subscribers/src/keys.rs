//! `ApiKeyService`: an admin manages its own tenant's keys over gRPC.

use broadside_auth::{Authenticator, Caller};
use broadside_proto::convert::millis_to_timestamp;
use broadside_proto::v1::api_key_service_server::{ApiKeyService, ApiKeyServiceServer};
use broadside_proto::v1::*;
use broadside_proto::{ServiceError, names};
use broadside_store::{DynStore, Scope};
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
    pub fn new(store: DynStore) -> Self {
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
        tracing::info!(tenant = %caller.tenant, by = %caller.key_id, key = %new.record.id, "api key created");
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
        tracing::info!(tenant = %caller.tenant, by = %caller.key_id, key = %id, "api key revoked");
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
        let caller = self.auth.authorize(request.metadata(), Scope::Admin).await?;
        Ok(Response::new(ApiKeyApi::create_api_key(self, &caller, request.into_inner()).await?))
    }
    async fn list_api_keys(
        &self,
        request: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        let caller = self.auth.authorize(request.metadata(), Scope::Admin).await?;
        Ok(Response::new(ApiKeyApi::list_api_keys(self, &caller).await?))
    }
    async fn revoke_api_key(&self, request: Request<RevokeApiKeyRequest>) -> Result<Response<ApiKey>, Status> {
        let caller = self.auth.authorize(request.metadata(), Scope::Admin).await?;
        Ok(Response::new(ApiKeyApi::revoke_api_key(self, &caller, request.into_inner()).await?))
    }
}
