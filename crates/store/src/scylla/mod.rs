//! The ScyllaDB backend: the same traits as the embedded store, on a data
//! model that follows Scylla's rules (see `deploy/scylla/README.md`).
//! Requests are token-aware and stay in the local DC; every statement is
//! prepared once ([`cql`]); scans are paged by the driver; LWT only where
//! two writers must not both win. Personal data is sealed exactly as in the
//! embedded store, with the same tenant keys.

use std::collections::HashMap;
use std::sync::Arc;

use futures::TryStreamExt;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::policies::retry::DefaultRetryPolicy;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::Batch;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

use crate::crypto::MasterKeys;
use crate::statements::{StatementCounts, StatementKind};
use crate::{Result, StoreError};

mod access;
mod behavior;
mod campaigns;
pub mod cql;
mod feedback;
mod keys;
mod migrate;
mod reseal;
mod subscribers;
mod uri;

pub use uri::ScyllaUri;

/// How long feedback and behavioral events are kept (the TTL of their rows).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub feedback_days: u32,
    pub behavior_days: u32,
}

impl Retention {
    fn seconds(days: u32) -> i32 {
        (days.min(3650) * 86_400) as i32
    }
}

/// Buckets per partitioned index (list members, a tenant's subscribers and suppressions).
pub(crate) const BUCKETS: u32 = 256;

/// A stable bucket of `key` (FNV-1a): the same in every process and version.
pub(crate) fn bucket_of(key: &str, buckets: u32) -> i32 {
    let hash = key.bytes().fold(0x811c_9dc5_u32, |hash, byte| (hash ^ byte as u32).wrapping_mul(0x0100_0193));
    (hash % buckets) as i32
}

/// The position of `id` in a bucketed index: `BBB.id`, ordered as the pages are.
pub(crate) fn cursor_of(id: &str) -> String {
    format!("{:03}.{id}", bucket_of(id, BUCKETS))
}

/// Where a page starts: after (bucket, id). A bare id (an embedded-store token,
/// a fan-out cursor) starts right after that id's own position.
pub(crate) fn parse_cursor(token: Option<&str>) -> (i32, String) {
    match token.filter(|t| !t.is_empty()) {
        None => (0, String::new()),
        Some(token) => match token.split_once('.') {
            Some((bucket, id)) if bucket.len() == 3 && bucket.bytes().all(|b| b.is_ascii_digit()) => {
                (bucket.parse().unwrap_or(0), id.to_owned())
            }
            _ => (bucket_of(token, BUCKETS), token.to_owned()),
        },
    }
}

/// The CQL server that answers: ScyllaDB or Apache Cassandra (which ScyllaDB
/// keeps protocol- and language-compatible with), and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CqlServer {
    pub scylla: bool,
    pub version: String,
}

impl CqlServer {
    /// ScyllaDB nodes advertise their shards in the protocol's SUPPORTED
    /// options, which the driver keeps as each node's sharder; Cassandra has
    /// none. ScyllaDB's own version is in `system.versions` (its
    /// `system.local.release_version` is a fixed Cassandra-compatible one).
    async fn of(session: &Session) -> Result<Self> {
        let scylla = session.get_cluster_state().get_nodes_info().iter().any(|node| node.sharder().is_some());
        let (query, column) = if scylla {
            ("SELECT version FROM system.versions WHERE key = 'local'", "version")
        } else {
            ("SELECT release_version FROM system.local WHERE key = 'local'", "release_version")
        };
        let version = session
            .query_unpaged(query, ())
            .await
            .ok()
            .and_then(|result| result.into_rows_result().ok())
            .and_then(|rows| rows.maybe_first_row::<(Option<String>,)>().ok().flatten())
            .and_then(|(version,)| version)
            .unwrap_or_else(|| format!("unknown (no {column})"));
        Ok(Self { scylla, version })
    }
}

impl std::fmt::Display for CqlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.scylla { "ScyllaDB" } else { "Apache Cassandra" };
        write!(f, "{name} {}", self.version)
    }
}

/// The ScyllaDB store. Cheap to clone.
#[derive(Clone)]
pub struct ScyllaStore {
    inner: Arc<Inner>,
}

struct Inner {
    session: Session,
    st: cql::Statements,
    keys: keys::Keys,
    uri: ScyllaUri,
    retention: Retention,
    statements: StatementCounts,
}

fn backend(what: &str, error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::failed(format!("scylla: {what}"), error)
}

async fn session(uri: &ScyllaUri, keyspace: Option<&str>) -> Result<Session> {
    let mut policy = DefaultPolicy::builder().token_aware(true).permit_dc_failover(false);
    if let Some(dc) = &uri.dc {
        policy = policy.prefer_datacenter(dc.clone());
    }
    let profile = ExecutionProfile::builder()
        .load_balancing_policy(policy.build())
        .retry_policy(Arc::new(DefaultRetryPolicy::new()))
        .consistency(uri.consistency)
        .serial_consistency(Some(uri.serial_consistency))
        .request_timeout(Some(uri.request_timeout))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&uri.hosts)
        .connection_timeout(uri.connect_timeout)
        .default_execution_profile_handle(profile.into_handle());
    if let Some(dc) = &uri.dc {
        builder = builder.prefer_datacenter(dc.clone());
    }
    if let (Some(user), Some(file)) = (&uri.user, &uri.password_file) {
        let password = std::fs::read_to_string(file)
            .map_err(|e| backend(&format!("store.url password_file {}", file.display()), e))?;
        builder = builder.user(user, password.trim_end_matches(['\r', '\n']));
    }
    if uri.tls {
        builder = builder.tls_context(Some(tls(uri)?));
    }
    if let Some(keyspace) = keyspace {
        builder = builder.use_keyspace(keyspace, false);
    }
    builder.build().await.map_err(|e| backend(&format!("connecting to {}", uri.hosts.join(",")), e))
}

fn tls(uri: &ScyllaUri) -> Result<Arc<rustls::ClientConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        StoreError::Backend(format!("scylla: store.url {what} {}: {e}", path.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &uri.ca_file {
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad("ca_file", ca, &e))? {
            roots.add(cert.map_err(|e| bad("ca_file", ca, &e))?).map_err(|e| bad("ca_file", ca, &e))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| backend("tls", e))?
        .with_root_certificates(roots);
    let config = match (&uri.cert_file, &uri.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| bad("cert_file", cert, &e))?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| bad("cert_file", cert, &e))?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("key_file", key, &e))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| bad("cert_file", cert, &e))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

impl ScyllaStore {
    /// Connects to a migrated keyspace and prepares every statement. Fails,
    /// saying what to run, when the keyspace is behind this build's schema.
    pub async fn connect(uri: &ScyllaUri, master: MasterKeys, retention: Retention) -> Result<Self> {
        let session = session(uri, None).await?;
        let applied = migrate::applied(&session, &uri.keyspace).await?;
        if applied.last().copied().unwrap_or(0) < migrate::latest() {
            return Err(StoreError::Backend(format!(
                "keyspace {} is at schema version {} and this build needs {}: run `broadside migrate`",
                uri.keyspace,
                applied.last().copied().unwrap_or(0),
                migrate::latest()
            )));
        }
        session.use_keyspace(&uri.keyspace, false).await.map_err(|e| backend("use keyspace", e))?;
        let st = cql::Statements::prepare(&session, uri).await?;
        let server = CqlServer::of(&session).await?;
        tracing::info!(hosts = %uri.hosts.join(","), keyspace = %uri.keyspace, dc = ?uri.dc, %server, "connected to the CQL store");
        Ok(Self {
            inner: Arc::new(Inner {
                session,
                st,
                keys: keys::Keys::new(master),
                uri: uri.clone(),
                retention,
                statements: StatementCounts::default(),
            }),
        })
    }

    /// Creates the keyspace and applies the missing migrations; returns the
    /// versions applied now (empty when it was current).
    pub async fn migrate(uri: &ScyllaUri) -> Result<Vec<i32>> {
        migrate::run(&session(uri, None).await?, uri).await
    }

    /// The statements this store has sent, by kind (shared totals).
    pub fn statement_counts(&self) -> StatementCounts {
        self.inner.statements.clone()
    }

    /// The server this store is connected to (for logs and `migrate`).
    pub async fn server(&self) -> Result<CqlServer> {
        CqlServer::of(&self.inner.session).await
    }

    /// Drops the keyspace (test clean-up only).
    #[doc(hidden)]
    pub async fn drop_keyspace(&self) -> Result<()> {
        let cql = format!("DROP KEYSPACE IF EXISTS {}", self.inner.uri.keyspace);
        let statement = migrate::schema_change(cql);
        self.inner.session.query_unpaged(statement, ()).await.map_err(|e| backend("drop keyspace", e))?;
        Ok(())
    }

    /// Drops the keyspaces named `{prefix}…` for which `stale` says yes
    /// (test clean-up only: suites that ended without dropping theirs).
    #[doc(hidden)]
    pub async fn drop_keyspaces(&self, prefix: &str, stale: impl Fn(&str) -> bool) -> Result<Vec<String>> {
        let what = "listing keyspaces";
        let result = self
            .inner
            .session
            .query_unpaged("SELECT keyspace_name FROM system_schema.keyspaces", ())
            .await
            .map_err(|e| backend(what, e))?;
        let rows = result.into_rows_result().map_err(|e| backend(what, e))?;
        let names: Vec<String> = rows
            .rows::<(String,)>()
            .map_err(|e| backend(what, e))?
            .filter_map(|row| row.ok().map(|(name,)| name))
            .filter(|name| name.starts_with(prefix) && stale(name))
            .collect();
        for name in &names {
            let statement = migrate::schema_change(format!("DROP KEYSPACE IF EXISTS {name}"));
            self.inner.session.query_unpaged(statement, ()).await.map_err(|e| backend("drop keyspace", e))?;
        }
        Ok(names)
    }

    fn st(&self) -> &cql::Statements {
        &self.inner.st
    }

    fn feedback_ttl(&self) -> i32 {
        Retention::seconds(self.inner.retention.feedback_days)
    }

    fn behavior_ttl(&self) -> i32 {
        Retention::seconds(self.inner.retention.behavior_days)
    }

    /// Runs a write (or a read whose rows are not wanted).
    async fn exec(&self, statement: &PreparedStatement, values: impl SerializeRow) -> Result<()> {
        self.inner.statements.count(StatementKind::Write);
        self.inner
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| backend(statement.get_statement(), e))?;
        Ok(())
    }

    /// The rows of a keyed or LIMITed read.
    async fn rows<R>(&self, statement: &PreparedStatement, values: impl SerializeRow) -> Result<Vec<R>>
    where
        R: for<'f> DeserializeRow<'f, 'f>,
    {
        let what = statement.get_statement();
        self.inner.statements.count(StatementKind::Read);
        let result = self.inner.session.execute_unpaged(statement, values).await.map_err(|e| backend(what, e))?;
        let rows = result.into_rows_result().map_err(|e| backend(what, e))?;
        let typed = rows.rows::<R>().map_err(|e| backend(what, e))?;
        typed.collect::<std::result::Result<Vec<R>, _>>().map_err(|e| backend(what, e))
    }

    async fn one<R>(&self, statement: &PreparedStatement, values: impl SerializeRow) -> Result<Option<R>>
    where
        R: for<'f> DeserializeRow<'f, 'f>,
    {
        Ok(self.rows(statement, values).await?.into_iter().next())
    }

    /// Every row of a bounded partition, fetched page by page by the driver.
    async fn scan<R>(&self, statement: &PreparedStatement, values: impl SerializeRow) -> Result<Vec<R>>
    where
        R: 'static + for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let what = statement.get_statement();
        self.inner.statements.count(StatementKind::Read);
        let pager = self.inner.session.execute_iter(statement.clone(), values).await.map_err(|e| backend(what, e))?;
        pager.rows_stream::<R>().map_err(|e| backend(what, e))?.try_collect().await.map_err(|e| backend(what, e))
    }

    /// Runs a lightweight transaction; says whether it applied and, when it
    /// did not, the current values of the columns it tested.
    async fn lwt(&self, statement: &PreparedStatement, values: impl SerializeRow) -> Result<Lwt> {
        let what = statement.get_statement();
        self.inner.statements.count(StatementKind::Lwt);
        let result = self.inner.session.execute_unpaged(statement, values).await.map_err(|e| backend(what, e))?;
        Lwt::from_result(result, what)
    }

    /// A conditional batch inside one partition.
    async fn lwt_batch(&self, batch: &Batch, values: impl scylla::serialize::batch::BatchValues) -> Result<Lwt> {
        self.inner.statements.count(StatementKind::Lwt);
        let result = self.inner.session.batch(batch, values).await.map_err(|e| backend("batch", e))?;
        Lwt::from_result(result, "batch")
    }

    /// An unconditional batch inside one partition (atomic and isolated there).
    async fn batch(&self, batch: &Batch, values: impl scylla::serialize::batch::BatchValues) -> Result<()> {
        self.inner.statements.count(StatementKind::Batch);
        self.inner.session.batch(batch, values).await.map_err(|e| backend("batch", e))?;
        Ok(())
    }

    /// Runs `f` over `items` with up to 32 requests in flight, in order.
    async fn each<T, O, F, Fut>(&self, items: Vec<T>, f: F) -> Result<Vec<O>>
    where
        F: Fn(T) -> Fut,
        Fut: std::future::Future<Output = Result<O>>,
    {
        use futures::StreamExt;
        futures::stream::iter(items.into_iter().map(f)).buffered(32).try_collect().await
    }
}

/// The answer to a lightweight transaction.
pub(crate) struct Lwt {
    pub(crate) applied: bool,
    columns: HashMap<String, CqlValue>,
}

impl Lwt {
    fn from_result(result: scylla::response::query_result::QueryResult, what: &str) -> Result<Self> {
        let rows = result.into_rows_result().map_err(|e| backend(what, e))?;
        let names: Vec<String> = rows.column_specs().iter().map(|spec| spec.name().to_owned()).collect();
        let row: Row = rows.first_row().map_err(|e| backend(what, e))?;
        let mut columns = HashMap::new();
        for (name, value) in names.into_iter().zip(row.columns) {
            if let Some(value) = value {
                columns.insert(name, value);
            }
        }
        let applied = matches!(columns.get("[applied]"), Some(CqlValue::Boolean(true)));
        Ok(Self { applied, columns })
    }

    pub(crate) fn text(&self, column: &str) -> String {
        match self.columns.get(column) {
            Some(CqlValue::Text(text)) | Some(CqlValue::Ascii(text)) => text.clone(),
            _ => String::new(),
        }
    }

    pub(crate) fn bigint(&self, column: &str) -> i64 {
        match self.columns.get(column) {
            Some(CqlValue::BigInt(value)) => *value,
            Some(CqlValue::Int(value)) => *value as i64,
            _ => 0,
        }
    }
}

/// UTC day number of a Unix-ms time.
pub(crate) fn day_of(ms: i64) -> i32 {
    ms.div_euclid(86_400_000).clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

/// Splits `items` into waves in which no two share a key: the n-th item of
/// each key goes in wave n, keeping positions, so a wave can run
/// concurrently and repeats still apply in order.
pub(crate) fn waves<T>(items: Vec<T>, key: impl Fn(&T) -> String) -> Vec<Vec<(usize, T)>> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut waves: Vec<Vec<(usize, T)>> = Vec::new();
    for (position, item) in items.into_iter().enumerate() {
        let wave = seen.entry(key(&item)).or_default();
        if waves.len() <= *wave {
            waves.push(Vec::new());
        }
        waves[*wave].push((position, item));
        *wave += 1;
    }
    waves
}

/// UTC month number (months since 1970-01) of a Unix-ms time.
pub(crate) fn month_of(ms: i64) -> i32 {
    let date =
        jiff::Timestamp::from_millisecond(ms).unwrap_or_default().to_zoned_datetime(jiff::tz::TimeZone::UTC).date();
    (date.year() as i32 - 1970) * 12 + date.month() as i32 - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_cursors_order_like_pages() {
        // FNV-1a of the empty string and of "a": fixed forever (rows are stored by it).
        assert_eq!(bucket_of("", 256), (0x811c_9dc5_u32 % 256) as i32);
        assert_eq!(bucket_of("a", 256), (0xe40c_292c_u32 % 256) as i32);
        let ids: Vec<String> = (0..2000).map(|_| crate::new_id()).collect();
        let used: std::collections::HashSet<i32> = ids.iter().map(|id| bucket_of(id, BUCKETS)).collect();
        assert!(used.len() > 240, "ids spread over the buckets: {}", used.len());
        for id in &ids {
            let cursor = cursor_of(id);
            assert_eq!(parse_cursor(Some(&cursor)), (bucket_of(id, BUCKETS), id.clone()));
            assert_eq!(parse_cursor(Some(id)), parse_cursor(Some(&cursor)), "a bare id is its own position");
        }
        assert_eq!(parse_cursor(None), (0, String::new()));
        assert_eq!(parse_cursor(Some("")), (0, String::new()));
    }

    #[test]
    fn waves_keep_repeats_in_order() {
        let waves = waves(vec!["a", "b", "a", "c", "a", "b"], |s| s.to_string());
        let positions: Vec<Vec<usize>> = waves.iter().map(|w| w.iter().map(|(p, _)| *p).collect()).collect();
        assert_eq!(positions, [vec![0, 1, 3], vec![2, 5], vec![4]]);
    }

    #[test]
    fn days_and_months_are_utc() {
        assert_eq!((day_of(0), day_of(86_399_999), day_of(86_400_000), day_of(-1)), (0, 0, 1, -1));
        assert_eq!(day_of(i64::MAX), i32::MAX, "saturates");
        assert_eq!(month_of(0), 0);
        // 2026-12-01T00:00:00Z
        assert_eq!(month_of(1_796_083_200_000), (2026 - 1970) * 12 + 11);
    }
}
