//! Versioned CQL migrations from `deploy/scylla/`, applied by `broadside
//! migrate`: create the keyspace (NetworkTopologyStrategy; on ScyllaDB with
//! tablets off, for LWT and counters), then each file not yet recorded in
//! `schema_migrations`. Every statement is `IF NOT EXISTS`, so a run cut
//! short is simply run again.

use std::time::Duration;

use scylla::client::session::Session;
use scylla::statement::unprepared::Statement;

use super::CqlServer;
use super::uri::ScyllaUri;
use crate::{Result, StoreError};

/// (version, name, CQL) in order.
pub(super) const MIGRATIONS: &[(i32, &str, &str)] =
    &[(1, "initial", include_str!("../../../../deploy/scylla/V001__initial.cql"))];

/// The statements of one file: comments dropped, split at a `;` that ends a line.
pub(super) fn statements(cql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in cql.lines() {
        let line = line.split("--").next().unwrap_or_default().trim_end();
        if line.trim().is_empty() {
            continue;
        }
        current.push_str(line.trim());
        current.push(' ');
        if line.ends_with(';') {
            out.push(current.trim().trim_end_matches(';').to_owned());
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_owned());
    }
    out
}

/// The keyspace's CQL. `tablets` is ScyllaDB's option (Apache Cassandra
/// rejects it), so it is added only when the server is ScyllaDB.
pub(super) fn keyspace_cql(uri: &ScyllaUri, server: &CqlServer) -> String {
    let replication = match &uri.dc {
        Some(dc) => format!("'{}': {}", dc.replace('\'', "''"), uri.replication_factor),
        None => format!("'replication_factor': {}", uri.replication_factor),
    };
    let tablets = if server.scylla { " AND tablets = {'enabled': false}" } else { "" };
    format!(
        "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {{'class': 'NetworkTopologyStrategy', {replication}}}{tablets}",
        uri.keyspace
    )
}

/// How long one schema change may take. Creating or dropping a table makes
/// every node flush and agree on the schema, which takes seconds on a busy
/// or small machine: far longer than the request timeout meant for data.
pub(crate) const SCHEMA_TIMEOUT: Duration = Duration::from_secs(120);

/// A schema change (DDL) with [`SCHEMA_TIMEOUT`].
pub(crate) fn schema_change(cql: String) -> Statement {
    let mut statement = Statement::new(cql);
    statement.set_request_timeout(Some(SCHEMA_TIMEOUT));
    statement
}

fn failed(what: &str, error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::failed(format!("migrate: {what}"), error)
}

/// Versions recorded in `schema_migrations` (empty before the first run).
pub(super) async fn applied(session: &Session, keyspace: &str) -> Result<Vec<i32>> {
    let exists = session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ? AND table_name = 'schema_migrations'",
            (keyspace,),
        )
        .await
        .map_err(|e| failed("reading system_schema.tables", e))?
        .into_rows_result()
        .map_err(|e| failed("reading system_schema.tables", e))?
        .rows_num()
        > 0;
    if !exists {
        return Ok(Vec::new());
    }
    let query = format!("SELECT version FROM {keyspace}.schema_migrations");
    let result = session.query_unpaged(query, ()).await.map_err(|e| failed("reading schema_migrations", e))?;
    let rows = result.into_rows_result().map_err(|e| failed("reading schema_migrations", e))?;
    let mut versions: Vec<i32> = rows
        .rows::<(i32,)>()
        .map_err(|e| failed("reading schema_migrations", e))?
        .map(|row| row.map(|(v,)| v))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| failed("reading schema_migrations", e))?;
    versions.sort();
    Ok(versions)
}

/// The newest version this build knows.
pub(super) fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |(version, ..)| *version)
}

/// Creates the keyspace and applies every missing migration; returns the versions applied now.
pub(super) async fn run(session: &Session, uri: &ScyllaUri) -> Result<Vec<i32>> {
    let server = CqlServer::of(session).await?;
    session.query_unpaged(schema_change(keyspace_cql(uri, &server)), ()).await.map_err(|e| {
        let hint = if server.scylla { " (ScyllaDB 6.0 or later: the tablets option)" } else { "" };
        failed(&format!("creating keyspace {} on {server}{hint}", uri.keyspace), e)
    })?;
    let done = applied(session, &uri.keyspace).await?;
    let mut now = Vec::new();
    for (version, name, cql) in MIGRATIONS.iter().filter(|(v, ..)| !done.contains(v)) {
        for statement in statements(cql) {
            // Unqualified names go to the keyspace being migrated.
            let statement = qualify(&statement, &uri.keyspace);
            session
                .query_unpaged(schema_change(statement.clone()), ())
                .await
                .map_err(|e| failed(&format!("V{version:03}__{name}: {statement}"), e))?;
        }
        session
            .query_unpaged(
                format!(
                    "INSERT INTO {}.schema_migrations (version, name, applied_at) VALUES (?, ?, toTimestamp(now()))",
                    uri.keyspace
                ),
                (*version, *name),
            )
            .await
            .map_err(|e| failed("recording the version", e))?;
        tracing::info!(version, name, keyspace = %uri.keyspace, "applied ScyllaDB migration");
        now.push(*version);
    }
    Ok(now)
}

/// `CREATE TABLE IF NOT EXISTS t (` → `... ks.t (`.
fn qualify(statement: &str, keyspace: &str) -> String {
    const PREFIX: &str = "CREATE TABLE IF NOT EXISTS ";
    match statement.strip_prefix(PREFIX) {
        Some(rest) => format!("{PREFIX}{keyspace}.{rest}"),
        None => statement.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_split_into_idempotent_statements() {
        for (version, name, cql) in MIGRATIONS {
            let statements = statements(cql);
            assert!(statements.len() > 20, "V{version:03}__{name}");
            for statement in &statements {
                assert!(statement.starts_with("CREATE TABLE IF NOT EXISTS "), "not idempotent: {statement}");
                assert!(!statement.contains(';'), "two statements in one: {statement}");
                assert!(qualify(statement, "ks").starts_with("CREATE TABLE IF NOT EXISTS ks."));
            }
        }
        assert_eq!(statements("CREATE TABLE IF NOT EXISTS a (x int PRIMARY KEY); -- note\n").len(), 1);
    }

    #[test]
    fn the_keyspace_uses_network_topology_and_turns_tablets_off_only_on_scylla() {
        let uri = ScyllaUri::parse("scylla://h:9042/broadside?dc=eu_west&rf=3").unwrap();
        let scylla = CqlServer { scylla: true, version: "6.2.0".into() };
        let cql = keyspace_cql(&uri, &scylla);
        assert!(cql.contains("'class': 'NetworkTopologyStrategy', 'eu_west': 3"), "{cql}");
        assert!(cql.ends_with("AND tablets = {'enabled': false}"), "{cql}");
        let cassandra = CqlServer { scylla: false, version: "5.0.6".into() };
        assert!(!keyspace_cql(&uri, &cassandra).contains("tablets"), "Apache Cassandra rejects the option");
    }

    /// The files on disk are the ones compiled in, in version order.
    #[test]
    fn every_file_in_deploy_scylla_is_listed() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/scylla");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".cql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS.iter().map(|(v, name, _)| format!("V{v:03}__{name}.cql")).collect();
        assert_eq!(files, listed);
    }
}
