//! API keys: generation, hashing, and the per-call check that turns an
//! `authorization: Bearer <key>` header into a [`Caller`] (tenant + scopes).
//!
//! A key reads `bsk_<id>_<secret>`. The id locates the stored key; only the
//! SHA-256 of the secret is stored and it is compared in constant time. The
//! secret has 256 bits of entropy, so a fast hash is enough (no password
//! stretching needed, unlike the Mailman CVE-2021-34337 class of bugs).

pub mod limits;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use broadside_proto::ServiceError;
use broadside_store::{ApiKey, DynStore, Scope, now_millis};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "bsk_";

/// Who is calling: the tenant every resource of the call belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: String,
    pub key_id: String,
    pub scopes: Vec<Scope>,
    /// Where the call came from: the first `x-forwarded-for` hop, else the
    /// peer address (for the audit log).
    pub peer: String,
}

impl Caller {
    /// Whether the caller holds `scope` (`admin` holds every scope).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }
}

/// A freshly generated key: store `record`, show `secret` once.
pub struct NewKey {
    pub record: ApiKey,
    pub secret: String,
}

/// Generates a key for `tenant` with `scopes`.
pub fn generate(tenant: &str, scopes: Vec<Scope>, description: &str) -> NewKey {
    let mut rng = rand::rng();
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let id = hex::encode(id);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    NewKey {
        record: ApiKey {
            id: id.clone(),
            tenant: tenant.to_owned(),
            secret_hash: Sha256::digest(secret.as_bytes()).to_vec(),
            scopes,
            description: description.to_owned(),
            create_time: now_millis(),
            revoke_time: 0,
        },
        secret: format!("{PREFIX}{id}_{secret}"),
    }
}

/// Splits `bsk_<id>_<secret>` into id and secret.
fn parse(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

/// Checks API keys against the store.
#[derive(Clone)]
pub struct Authenticator {
    store: DynStore,
}

impl Authenticator {
    pub fn new(store: DynStore) -> Self {
        Self { store }
    }

    /// Authenticates the call and checks that it holds `needed`.
    /// UNAUTHENTICATED without a valid key, PERMISSION_DENIED without the scope.
    pub async fn authorize(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        needed: Scope,
    ) -> Result<Caller, ServiceError> {
        let caller = self.authenticate(metadata).await?;
        if !caller.has(needed) {
            tracing::info!(key = %caller.key_id, tenant = %caller.tenant, needed = needed.as_str(), "call refused: missing scope");
            return Err(ServiceError::PermissionDenied(format!(
                "this API key lacks the {:?} scope; create one with `broadside keys create --scopes {}`",
                needed.as_str(),
                needed.as_str()
            )));
        }
        Ok(caller)
    }

    /// [`Self::authorize`] for a tonic request, recording where it came from.
    /// Rate limits apply per client address before the key is checked, and
    /// per key after.
    pub async fn authorize_request<T>(
        &self,
        request: &tonic::Request<T>,
        needed: Scope,
    ) -> Result<Caller, ServiceError> {
        limits::check_ip(request.remote_addr().map(|a| a.ip()))?;
        let mut caller = self.authorize(request.metadata(), needed).await?;
        limits::check_key(&caller.key_id)?;
        caller.peer = request
            .metadata()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_owned())
            .or_else(|| request.remote_addr().map(|a| a.ip().to_string()))
            .unwrap_or_default();
        Ok(caller)
    }

    /// Resolves the bearer key of the call to its caller.
    pub async fn authenticate(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Caller, ServiceError> {
        let unauthenticated = |message: &str| Err(ServiceError::Unauthenticated(message.to_owned()));
        let Some(header) = metadata.get("authorization") else {
            return unauthenticated("missing `authorization: Bearer <api key>` metadata");
        };
        let Some(key) = header.to_str().ok().and_then(|value| value.strip_prefix("Bearer ")) else {
            return unauthenticated("the authorization metadata must read `Bearer <api key>`");
        };
        let Some((id, secret)) = parse(key.trim()) else {
            return unauthenticated("malformed API key (expected bsk_<id>_<secret>)");
        };
        let stored = self.store.get_api_key(id).await?;
        let presented = Sha256::digest(secret.as_bytes());
        // Compare against a dummy hash when the id is unknown so both paths cost the same.
        let expected = stored.as_ref().map_or(&[0u8; 32][..], |key| &key.secret_hash[..]);
        let matches: bool = presented.as_slice().ct_eq(expected).into();
        match stored {
            Some(key) if matches && key.revoke_time == 0 => {
                Ok(Caller { tenant: key.tenant, key_id: key.id, scopes: key.scopes, peer: String::new() })
            }
            Some(key) if matches => {
                tracing::info!(key = %key.id, "call refused: revoked key");
                unauthenticated("this API key was revoked")
            }
            _ => unauthenticated("unknown API key"),
        }
    }
}

/// Appends an administrative action to the tenant's audit log and logs it.
/// Details must not hold personal data (use resource names and counts).
pub async fn audit(
    store: &DynStore,
    caller: &Caller,
    action: &str,
    resource: &str,
    detail: serde_json::Value,
) -> Result<(), ServiceError> {
    record(store, &caller.tenant, &format!("apiKeys/{}", caller.key_id), &caller.peer, action, resource, detail).await
}

/// Appends an action done by an operator command (`actor` "cli").
pub async fn audit_cli(
    store: &DynStore,
    tenant: &str,
    action: &str,
    resource: &str,
    detail: serde_json::Value,
) -> Result<(), ServiceError> {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    record(store, tenant, "cli", &format!("cli:{user}"), action, resource, detail).await
}

async fn record(
    store: &DynStore,
    tenant: &str,
    actor: &str,
    source: &str,
    action: &str,
    resource: &str,
    detail: serde_json::Value,
) -> Result<(), ServiceError> {
    tracing::info!(target: "audit", %tenant, %actor, %source, %action, %resource, %detail, "audit");
    store
        .append_audit(broadside_store::AuditEntry {
            tenant: tenant.to_owned(),
            id: broadside_store::new_id(),
            time: now_millis(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            resource: resource.to_owned(),
            detail: detail.to_string(),
            source: source.to_owned(),
        })
        .await
        .map_err(|error| ServiceError::Unavailable(format!("the action was done but not audited: {error}")))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use broadside_store::{AccessStore, SqliteStore, Tenant};
    use tonic::metadata::MetadataMap;

    use super::*;

    fn with_key(key: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", format!("Bearer {key}").parse().unwrap());
        metadata
    }

    #[tokio::test]
    async fn keys_authenticate_until_revoked_and_scopes_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let master =
            broadside_store::crypto::MasterKeys::new(broadside_store::crypto::MasterKey::new("m", [1; 32]), vec![]);
        let store = Arc::new(SqliteStore::open(&dir.path().join("db"), master).unwrap());
        let tenant = Tenant { id: "t".into(), display_name: "T".into(), create_time: 0, allow_transactional: false };
        store.create_tenant(tenant).await.unwrap();
        let key = generate("t", vec![Scope::Read], "test");
        store.create_api_key(key.record.clone()).await.unwrap();
        let auth = Authenticator::new(store.clone());

        let caller = auth.authorize(&with_key(&key.secret), Scope::Read).await.unwrap();
        assert_eq!(caller.tenant, "t");
        let denied = auth.authorize(&with_key(&key.secret), Scope::SubscribersWrite).await.unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);

        let mut tampered = key.secret.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        for bad in [tampered.as_str(), "bsk_nope_x", "garbage", ""] {
            let error = auth.authorize(&with_key(bad), Scope::Read).await.unwrap_err();
            assert_eq!(error.code(), tonic::Code::Unauthenticated, "{bad}");
        }
        assert_eq!(
            auth.authorize(&MetadataMap::new(), Scope::Read).await.unwrap_err().code(),
            tonic::Code::Unauthenticated
        );

        store.revoke_api_key("t", &key.record.id).await.unwrap();
        let revoked = auth.authorize(&with_key(&key.secret), Scope::Read).await.unwrap_err();
        assert!(revoked.to_string().contains("revoked"));
    }
}
