//! First start: a default tenant and an admin API key, written to a file
//! only the owner can read, so one machine works without any setup.

use std::path::{Path, PathBuf};

use anyhow::Context;
use broadside_store::{DEFAULT_TENANT, DynStore, Scope, Tenant, now_millis};

/// Where the bootstrap admin key is written.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.key")
}

/// Writes `secret` to `path` readable by the owner only.
pub fn write_key_file(path: &Path, secret: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{secret}\n").as_bytes())?;
    Ok(())
}

/// When no tenant has any API key yet, creates the `default` tenant (if
/// missing) and an admin key, and writes the key to `{data_dir}/admin.key`.
/// Returns the file written, or `None` when keys already exist.
pub async fn ensure_admin_key(store: &DynStore, data_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let tenants = store.list_tenants().await?;
    for tenant in &tenants {
        if !store.list_api_keys(&tenant.id).await?.is_empty() {
            return Ok(None);
        }
    }
    if !tenants.iter().any(|t| t.id == DEFAULT_TENANT) {
        let tenant = Tenant {
            id: DEFAULT_TENANT.into(),
            display_name: "Default".into(),
            create_time: now_millis(),
            allow_transactional: false,
        };
        store.create_tenant(tenant).await?;
    }
    let key = broadside_auth::generate(DEFAULT_TENANT, vec![Scope::Admin], "bootstrap admin key");
    let path = key_path(data_dir);
    write_key_file(&path, &key.secret)?;
    store.create_api_key(key.record.clone()).await?;
    tracing::info!(tenant = DEFAULT_TENANT, key = %key.record.id, path = %path.display(), "created the default tenant's admin API key");
    Ok(Some(path))
}
