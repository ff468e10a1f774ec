//! The embedded store: one SQLite file in WAL mode. Calls run on a writer
//! thread so the async runtime never waits on disk, and calls that arrive
//! together share one transaction (group commit; see [`writer`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use crate::crypto::{MasterKeys, TenantKeys};
use crate::*;
use keys::Crypto;

mod access;
pub(crate) mod behavior;
mod campaigns;
pub(crate) mod encrypt;
pub(crate) mod feedback;
pub(crate) mod keys;
mod segments;
pub(crate) mod subscribers;
mod writer;

/// Schema migrations, applied in order; `PRAGMA user_version` records progress.
enum Migration {
    Sql(&'static str),
    /// Seals the personal data of rows written before encryption at rest.
    Seal,
}

const MIGRATIONS: &[Migration] = &[
    Migration::Sql(
        r#"
CREATE TABLE lists (
    tenant TEXT NOT NULL, id TEXT NOT NULL, display_name TEXT NOT NULL,
    description TEXT NOT NULL, create_time INTEGER NOT NULL,
    PRIMARY KEY (tenant, id));
CREATE TABLE subscribers (
    tenant TEXT NOT NULL, id TEXT NOT NULL, email TEXT NOT NULL, email_norm TEXT NOT NULL,
    display_name TEXT NOT NULL, attributes TEXT NOT NULL, status INTEGER NOT NULL,
    create_time INTEGER NOT NULL, update_time INTEGER NOT NULL,
    PRIMARY KEY (tenant, id));
CREATE UNIQUE INDEX subscribers_by_email ON subscribers (tenant, email_norm);
CREATE TABLE memberships (
    tenant TEXT NOT NULL, list_id TEXT NOT NULL, subscriber_id TEXT NOT NULL,
    create_time INTEGER NOT NULL,
    PRIMARY KEY (tenant, list_id, subscriber_id));
CREATE INDEX memberships_by_subscriber ON memberships (tenant, subscriber_id);
CREATE TABLE templates (
    tenant TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, display_name TEXT NOT NULL,
    subject TEXT NOT NULL, html_body TEXT NOT NULL, text_body TEXT NOT NULL,
    create_time INTEGER NOT NULL,
    PRIMARY KEY (tenant, id));
CREATE TABLE campaigns (
    tenant TEXT NOT NULL, id TEXT NOT NULL, display_name TEXT NOT NULL,
    template_id TEXT NOT NULL, template_version INTEGER NOT NULL, list_id TEXT NOT NULL,
    from_address TEXT NOT NULL, from_name TEXT NOT NULL, reply_to TEXT NOT NULL,
    state INTEGER NOT NULL, recipients INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
    deferred INTEGER NOT NULL DEFAULT 0, fanout_cursor TEXT NOT NULL DEFAULT '',
    fanout_done INTEGER NOT NULL DEFAULT 0, create_time INTEGER NOT NULL,
    start_time INTEGER NOT NULL DEFAULT 0, complete_time INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, id));
CREATE INDEX campaigns_by_state ON campaigns (state);
CREATE TABLE campaign_outcomes (
    campaign_id TEXT NOT NULL, subscriber_id TEXT NOT NULL, outcome TEXT NOT NULL,
    PRIMARY KEY (campaign_id, subscriber_id));
CREATE TABLE send_ledger (
    campaign_id TEXT NOT NULL, subscriber_id TEXT NOT NULL, state TEXT NOT NULL,
    owner TEXT NOT NULL, lease_until INTEGER NOT NULL, message_id TEXT NOT NULL,
    update_time INTEGER NOT NULL,
    PRIMARY KEY (campaign_id, subscriber_id));
CREATE TABLE idempotency (
    tenant TEXT NOT NULL, request_id TEXT NOT NULL, kind TEXT NOT NULL, resource_id TEXT NOT NULL,
    create_time INTEGER NOT NULL,
    PRIMARY KEY (tenant, request_id, kind));
"#,
    ),
    Migration::Sql(
        r#"
ALTER TABLE campaigns ADD COLUMN max_messages_per_second REAL NOT NULL DEFAULT 0;
"#,
    ),
    Migration::Sql(
        r#"
ALTER TABLE campaigns ADD COLUMN progress_time INTEGER NOT NULL DEFAULT 0;
"#,
    ),
    Migration::Sql(
        r#"
CREATE TABLE tenants (
    id TEXT NOT NULL PRIMARY KEY, display_name TEXT NOT NULL, create_time INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO tenants (id, display_name, create_time) SELECT DISTINCT tenant, tenant, 0 FROM lists;
CREATE TABLE api_keys (
    id TEXT NOT NULL PRIMARY KEY, tenant TEXT NOT NULL, secret_hash BLOB NOT NULL, scopes TEXT NOT NULL,
    description TEXT NOT NULL, create_time INTEGER NOT NULL, revoke_time INTEGER NOT NULL DEFAULT 0);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant, id);
ALTER TABLE lists ADD COLUMN opt_in INTEGER NOT NULL DEFAULT 1;
ALTER TABLE memberships ADD COLUMN status INTEGER NOT NULL DEFAULT 2;
ALTER TABLE memberships ADD COLUMN update_time INTEGER NOT NULL DEFAULT 0;
ALTER TABLE subscribers ADD COLUMN email_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE subscribers ADD COLUMN domain_hash TEXT NOT NULL DEFAULT '';
CREATE TABLE consent_log (
    tenant TEXT NOT NULL, subscriber_id TEXT NOT NULL, time INTEGER NOT NULL, action TEXT NOT NULL,
    list_id TEXT NOT NULL, source TEXT NOT NULL, ip TEXT NOT NULL, user_agent TEXT NOT NULL);
CREATE INDEX consent_by_subscriber ON consent_log (tenant, subscriber_id, time);
CREATE TABLE suppressions (
    tenant TEXT NOT NULL, email_hash TEXT NOT NULL, list_id TEXT NOT NULL, target TEXT NOT NULL,
    reason TEXT NOT NULL, create_time INTEGER NOT NULL,
    PRIMARY KEY (tenant, email_hash, list_id)) WITHOUT ROWID;
CREATE TABLE import_jobs (
    tenant TEXT NOT NULL, request_id TEXT NOT NULL, job TEXT NOT NULL, update_time INTEGER NOT NULL,
    PRIMARY KEY (tenant, request_id)) WITHOUT ROWID;
"#,
    ),
    // Clustered by primary key (WITHOUT ROWID): one b-tree per table instead
    // of a rowid table plus a primary-key index. Halves import writes.
    Migration::Sql(
        r#"
CREATE TABLE subscribers_v5 (
    tenant TEXT NOT NULL, id TEXT NOT NULL, email TEXT NOT NULL, email_norm TEXT NOT NULL,
    email_hash TEXT NOT NULL, domain_hash TEXT NOT NULL, display_name TEXT NOT NULL, attributes TEXT NOT NULL,
    status INTEGER NOT NULL, create_time INTEGER NOT NULL, update_time INTEGER NOT NULL,
    PRIMARY KEY (tenant, id)) WITHOUT ROWID;
INSERT INTO subscribers_v5 SELECT tenant, id, email, email_norm, email_hash, domain_hash, display_name, attributes,
    status, create_time, update_time FROM subscribers;
DROP TABLE subscribers;
ALTER TABLE subscribers_v5 RENAME TO subscribers;
CREATE UNIQUE INDEX subscribers_by_email ON subscribers (tenant, email_norm);
CREATE TABLE memberships_v5 (
    tenant TEXT NOT NULL, list_id TEXT NOT NULL, subscriber_id TEXT NOT NULL, create_time INTEGER NOT NULL,
    status INTEGER NOT NULL, update_time INTEGER NOT NULL,
    PRIMARY KEY (tenant, list_id, subscriber_id)) WITHOUT ROWID;
INSERT INTO memberships_v5 SELECT tenant, list_id, subscriber_id, create_time, status, update_time FROM memberships;
DROP TABLE memberships;
ALTER TABLE memberships_v5 RENAME TO memberships;
CREATE INDEX memberships_by_subscriber ON memberships (tenant, subscriber_id);
CREATE TABLE consent_v5 (
    tenant TEXT NOT NULL, subscriber_id TEXT NOT NULL, time INTEGER NOT NULL, seq INTEGER NOT NULL,
    action TEXT NOT NULL, list_id TEXT NOT NULL, source TEXT NOT NULL, ip TEXT NOT NULL, user_agent TEXT NOT NULL,
    PRIMARY KEY (tenant, subscriber_id, time, seq)) WITHOUT ROWID;
INSERT INTO consent_v5 SELECT tenant, subscriber_id, time, rowid, action, list_id, source, ip, user_agent FROM consent_log;
DROP TABLE consent_log;
ALTER TABLE consent_v5 RENAME TO consent_log;
"#,
    ),
    Migration::Seal,
    Migration::Sql(
        r#"
ALTER TABLE campaigns ADD COLUMN stream TEXT NOT NULL DEFAULT 'marketing';
ALTER TABLE campaigns ADD COLUMN postal_address TEXT NOT NULL DEFAULT '';
ALTER TABLE tenants ADD COLUMN allow_transactional INTEGER NOT NULL DEFAULT 0;
CREATE TABLE audit_log (
    tenant TEXT NOT NULL, id TEXT NOT NULL, time INTEGER NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    resource TEXT NOT NULL, detail TEXT NOT NULL, source TEXT NOT NULL,
    PRIMARY KEY (tenant, id)) WITHOUT ROWID;
"#,
    ),
    Migration::Sql(
        r#"
ALTER TABLE campaigns ADD COLUMN send_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN send_window TEXT NOT NULL DEFAULT '';
"#,
    ),
    Migration::Sql(
        r#"
CREATE TABLE feedback_records (
    tenant TEXT NOT NULL, id TEXT NOT NULL, time INTEGER NOT NULL, kind TEXT NOT NULL,
    subscriber_id TEXT NOT NULL, campaign_id TEXT NOT NULL, class TEXT NOT NULL, status_code TEXT NOT NULL,
    diagnostic BLOB NOT NULL, reporting_mta TEXT NOT NULL, rule TEXT NOT NULL, verdict TEXT NOT NULL,
    raw BLOB NOT NULL,
    PRIMARY KEY (tenant, id)) WITHOUT ROWID;
CREATE INDEX feedback_by_subscriber ON feedback_records (tenant, subscriber_id);
CREATE INDEX feedback_by_time ON feedback_records (time);
CREATE TABLE bounce_scores (
    tenant TEXT NOT NULL, subscriber_id TEXT NOT NULL, score REAL NOT NULL, update_time INTEGER NOT NULL,
    PRIMARY KEY (tenant, subscriber_id)) WITHOUT ROWID;
CREATE TABLE campaign_engagement (
    campaign_id TEXT NOT NULL, subscriber_id TEXT NOT NULL, kind TEXT NOT NULL,
    PRIMARY KEY (campaign_id, subscriber_id, kind)) WITHOUT ROWID;
ALTER TABLE campaigns ADD COLUMN bounced INTEGER NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN complained INTEGER NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN unsubscribed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN opened INTEGER NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN clicked INTEGER NOT NULL DEFAULT 0;
"#,
    ),
    Migration::Sql(
        r#"
CREATE TABLE segments (
    tenant TEXT NOT NULL, id TEXT NOT NULL, display_name TEXT NOT NULL, rule TEXT NOT NULL,
    create_time INTEGER NOT NULL,
    PRIMARY KEY (tenant, id)) WITHOUT ROWID;
ALTER TABLE campaigns ADD COLUMN segment_id TEXT NOT NULL DEFAULT '';
"#,
    ),
    Migration::Sql(
        r#"
CREATE TABLE behavior_events (
    tenant TEXT NOT NULL, event_id TEXT NOT NULL, subscriber_id TEXT NOT NULL, name TEXT NOT NULL,
    time INTEGER NOT NULL, properties BLOB NOT NULL, published INTEGER NOT NULL,
    PRIMARY KEY (tenant, event_id)) WITHOUT ROWID;
CREATE INDEX behavior_by_subscriber ON behavior_events (tenant, subscriber_id, time);
CREATE INDEX behavior_by_time ON behavior_events (time);
"#,
    ),
];

/// Opens a SQLite connection with the pragmas every Broadside connection uses.
/// `synchronous=NORMAL` in WAL mode survives a process crash (the restart
/// guarantee); `FULL` would also survive power loss at a write-speed cost.
pub(crate) fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Deleted rows (erasure) are overwritten, not left in free pages.
    conn.pragma_update(None, "secure_delete", "ON")?;
    // Checkpoint every 64 MiB of WAL instead of 4 MiB: random index pages
    // dirtied by consecutive batches are then copied to the file once.
    conn.pragma_update(None, "wal_autocheckpoint", 16384)?;
    // 128 MiB of page cache at most (the default is 2 MiB): the unique
    // index on blind-indexed addresses takes inserts at random keys, which
    // otherwise re-read pages from the OS on every row (4x slower at 1M rows).
    conn.pragma_update(None, "cache_size", -131072)?;
    Ok(conn)
}

/// The embedded store backend. Personal data is sealed with the tenant's
/// keys before it reaches the file (see [`crate::crypto`]).
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    writer: writer::Writer,
    path: PathBuf,
    crypto: Arc<Crypto>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it;
    /// `master` wraps the tenant keys.
    pub fn open(path: &Path, master: MasterKeys) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::failed(format!("create {}", parent.display()), e))?;
        }
        let mut conn = open_connection(path).map_err(|e| StoreError::failed(format!("open {}", path.display()), e))?;
        let crypto = Arc::new(Crypto::new(master));
        migrate(&mut conn, &crypto)?;
        let conn = Arc::new(Mutex::new(conn));
        let writer = writer::Writer::start(conn.clone());
        Ok(Self { conn, writer, path: path.to_owned(), crypto })
    }

    /// Opens a sealed value found anywhere in the file, whichever tenant's
    /// key sealed it; `None` when it is not one. For audits and the tests
    /// that prove erasure: they must look inside sealed values too.
    pub fn reveal(&self, value: &[u8]) -> Option<Vec<u8>> {
        let key_id = TenantKeys::key_id_of(value)?;
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction().ok()?;
        let tenant: String =
            tx.query_row("SELECT tenant FROM tenant_keys WHERE id = ?1", params![key_id], |row| row.get(0)).ok()?;
        let keys = self.crypto.keys(&tx, &tenant, Some(key_id)).ok()?;
        keys.open(value).ok()
    }

    /// The keys that seal the embedded bus log (created on first use). Call
    /// at start-up: it blocks on the database.
    pub fn bus_keys(&self) -> Result<Arc<TenantKeys>> {
        let mut conn = self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let keys = self.crypto.keys(&tx, keys::BUS_KEYS, None)?;
        tx.commit()?;
        Ok(keys)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in its own savepoint of a transaction it may share with
    /// other calls, off the async runtime. Returns once the transaction is
    /// committed; if `f` fails, only its own changes are rolled back.
    /// Makes every commit so far survive a power cut. `synchronous=NORMAL`
    /// leaves the newest WAL frames in the OS cache (a crash of the process
    /// loses nothing, a power cut may); the WAL is append-only, so one fsync
    /// of it covers them all. Costs one fsync: for the end of a bulk write
    /// that reports success, such as an import, not for every call.
    pub(crate) async fn sync_wal(&self) -> Result<()> {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let (wal, db) = (PathBuf::from(wal), self.path.clone());
        tokio::task::spawn_blocking(move || {
            let path = if wal.exists() { wal } else { db };
            std::fs::File::open(&path)
                .and_then(|file| file.sync_all())
                .map_err(|e| StoreError::failed(format!("fsync {}", path.display()), e))
        })
        .await
        .map_err(|e| StoreError::failed("fsync task", e))?
    }

    async fn tx<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        self.writer.run(f).await
    }
}

fn migrate(conn: &mut Connection, crypto: &Crypto) -> Result<()> {
    let version: usize = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        match migration {
            Migration::Sql(sql) => tx.execute_batch(sql)?,
            Migration::Seal => encrypt::migrate(&tx, crypto)?,
        }
        tx.pragma_update(None, "user_version", index + 1)?;
        tx.commit()?;
        if matches!(migration, Migration::Seal) {
            // Old plaintext may sit in freed pages and in the WAL: rewrite the file.
            conn.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")?;
        }
        tracing::info!(version = index + 1, "applied store migration");
    }
    Ok(())
}

/// Looks up an earlier result of the same idempotent request.
fn remembered(tx: &Transaction<'_>, tenant: &str, request_id: &Option<String>, kind: &str) -> Result<Option<String>> {
    let Some(request_id) = request_id else { return Ok(None) };
    Ok(tx
        .query_row(
            "SELECT resource_id FROM idempotency WHERE tenant = ?1 AND request_id = ?2 AND kind = ?3",
            params![tenant, request_id, kind],
            |row| row.get(0),
        )
        .optional()?)
}

fn remember(tx: &Transaction<'_>, tenant: &str, request_id: &Option<String>, kind: &str, id: &str) -> Result<()> {
    if let Some(request_id) = request_id {
        tx.execute(
            "INSERT INTO idempotency (tenant, request_id, kind, resource_id, create_time) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![tenant, request_id, kind, id, now_millis()],
        )?;
    }
    Ok(())
}

/// Builds a page from `limit + 1` fetched rows: the extra row only says there is more.
pub(crate) fn page_of<T>(mut items: Vec<T>, size: usize, id_of: impl Fn(&T) -> &str) -> Page<T> {
    let more = items.len() > size;
    items.truncate(size);
    let next_token = if more { items.last().map(|item| id_of(item).to_owned()) } else { None };
    Page { items, next_token }
}

fn list_from_row(row: &Row<'_>) -> rusqlite::Result<MailingList> {
    Ok(MailingList {
        tenant: row.get("tenant")?,
        id: row.get("id")?,
        display_name: row.get("display_name")?,
        description: row.get("description")?,
        opt_in: OptIn::from_i64(row.get("opt_in")?),
        create_time: row.get("create_time")?,
    })
}

const SUBSCRIBER_COLUMNS: &str = "s.tenant, s.id, s.pii, s.status, s.create_time, s.update_time";

/// A subscriber row whose personal data is still sealed.
struct SealedSubscriber {
    subscriber: Subscriber,
    pii: Vec<u8>,
}

fn subscriber_from_row(row: &Row<'_>) -> rusqlite::Result<SealedSubscriber> {
    Ok(SealedSubscriber {
        subscriber: Subscriber {
            tenant: row.get("tenant")?,
            id: row.get("id")?,
            email: String::new(),
            display_name: String::new(),
            attributes: serde_json::Map::new(),
            status: SubscriberStatus::from_i64(row.get("status")?),
            lists: Vec::new(),
            subscriptions: Vec::new(),
            create_time: row.get("create_time")?,
            update_time: row.get("update_time")?,
        },
        pii: row.get("pii")?,
    })
}

impl SealedSubscriber {
    /// Opens the personal data with the tenant's keys.
    fn open(self, tx: &Transaction<'_>, crypto: &Crypto) -> Result<Subscriber> {
        let mut subscriber = self.subscriber;
        let keys = crypto.keys(tx, &subscriber.tenant, TenantKeys::key_id_of(&self.pii))?;
        let pii = encrypt::open_pii(&keys, &self.pii)?;
        (subscriber.email, subscriber.display_name, subscriber.attributes) = (pii.email, pii.name, pii.attributes);
        Ok(subscriber)
    }
}

/// Opens every subscriber of a page.
fn open_page(tx: &Transaction<'_>, crypto: &Crypto, page: Page<SealedSubscriber>) -> Result<Page<Subscriber>> {
    let items = page.items.into_iter().map(|sealed| sealed.open(tx, crypto)).collect::<Result<_>>()?;
    Ok(Page { items, next_token: page.next_token })
}

fn template_from_row(row: &Row<'_>) -> rusqlite::Result<Template> {
    Ok(Template {
        tenant: row.get("tenant")?,
        id: row.get("id")?,
        version: row.get("version")?,
        display_name: row.get("display_name")?,
        subject: row.get("subject")?,
        html_body: row.get("html_body")?,
        text_body: row.get("text_body")?,
        create_time: row.get("create_time")?,
    })
}

fn campaign_from_row(row: &Row<'_>) -> rusqlite::Result<Campaign> {
    Ok(Campaign {
        tenant: row.get("tenant")?,
        id: row.get("id")?,
        display_name: row.get("display_name")?,
        template_id: row.get("template_id")?,
        template_version: row.get("template_version")?,
        list_id: row.get("list_id")?,
        from_address: row.get("from_address")?,
        from_name: row.get("from_name")?,
        reply_to: row.get("reply_to")?,
        max_messages_per_second: row.get("max_messages_per_second")?,
        stream: row.get("stream")?,
        postal_address: row.get("postal_address")?,
        send_at: row.get("send_at")?,
        send_window: row.get("send_window")?,
        segment_id: row.get("segment_id")?,
        state: CampaignState::from_i64(row.get("state")?),
        stats: CampaignStats {
            recipients: row.get("recipients")?,
            delivered: row.get("delivered")?,
            failed: row.get("failed")?,
            deferred: row.get("deferred")?,
            bounced: row.get("bounced")?,
            complained: row.get("complained")?,
            unsubscribed: row.get("unsubscribed")?,
            opened: row.get("opened")?,
            clicked: row.get("clicked")?,
        },
        fanout_cursor: row.get("fanout_cursor")?,
        fanout_done: row.get::<_, i64>("fanout_done")? != 0,
        create_time: row.get("create_time")?,
        start_time: row.get("start_time")?,
        complete_time: row.get("complete_time")?,
        progress_time: row.get("progress_time")?,
    })
}

fn get_list_tx(tx: &Transaction<'_>, tenant: &str, id: &str) -> Result<Option<MailingList>> {
    Ok(tx
        .query_row("SELECT * FROM lists WHERE tenant = ?1 AND id = ?2", params![tenant, id], list_from_row)
        .optional()?)
}

fn get_subscriber_tx(tx: &Transaction<'_>, crypto: &Crypto, tenant: &str, id: &str) -> Result<Option<Subscriber>> {
    let sql = format!("SELECT {SUBSCRIBER_COLUMNS} FROM subscribers s WHERE s.tenant = ?1 AND s.id = ?2");
    let Some(sealed) = tx.query_row(&sql, params![tenant, id], subscriber_from_row).optional()? else {
        return Ok(None);
    };
    let mut subscriber = sealed.open(tx, crypto)?;
    let mut statement = tx.prepare_cached(
        "SELECT list_id, status, update_time FROM memberships WHERE tenant = ?1 AND subscriber_id = ?2 ORDER BY list_id",
    )?;
    let subscriptions = statement
        .query_map(params![tenant, id], |row| {
            Ok(Subscription {
                list_id: row.get(0)?,
                status: SubscriptionStatus::from_i64(row.get(1)?),
                update_time: row.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    subscriber.set_subscriptions(subscriptions);
    Ok(Some(subscriber))
}

fn get_template_tx(tx: &Transaction<'_>, tenant: &str, id: &str) -> Result<Option<Template>> {
    Ok(tx
        .query_row("SELECT * FROM templates WHERE tenant = ?1 AND id = ?2", params![tenant, id], template_from_row)
        .optional()?)
}

fn get_campaign_tx(tx: &Transaction<'_>, tenant: &str, id: &str) -> Result<Option<Campaign>> {
    Ok(tx
        .query_row("SELECT * FROM campaigns WHERE tenant = ?1 AND id = ?2", params![tenant, id], campaign_from_row)
        .optional()?)
}

fn must_get_campaign(tx: &Transaction<'_>, tenant: &str, id: &str) -> Result<Campaign> {
    get_campaign_tx(tx, tenant, id)?.ok_or_else(|| StoreError::NotFound(format!("campaigns/{id}")))
}

/// Runs a keyset-paged query whose last two parameters are the token and the limit.
fn paged<T>(
    tx: &Transaction<'_>,
    sql: &str,
    tenant: &str,
    extra: Option<&str>,
    page: &PageRequest,
    map: fn(&Row<'_>) -> rusqlite::Result<T>,
    id_of: fn(&T) -> &str,
) -> Result<Page<T>> {
    let token = page.token.clone().unwrap_or_default();
    let limit = (page.size + 1) as i64;
    let mut statement = tx.prepare_cached(sql)?;
    let rows = match extra {
        Some(extra) => statement.query_map(params![tenant, extra, token, limit], map)?,
        None => statement.query_map(params![tenant, token, limit], map)?,
    };
    Ok(page_of(rows.collect::<rusqlite::Result<Vec<T>>>()?, page.size, id_of))
}

#[async_trait]
impl ListStore for SqliteStore {
    async fn create_list(&self, list: MailingList, request_id: Option<String>) -> Result<MailingList> {
        self.tx(move |tx| {
            if let Some(id) = remembered(tx, &list.tenant, &request_id, "list")? {
                return get_list_tx(tx, &list.tenant, &id)?.ok_or_else(|| StoreError::NotFound(format!("lists/{id}")));
            }
            tx.execute(
                "INSERT INTO lists (tenant, id, display_name, description, create_time, opt_in) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![list.tenant, list.id, list.display_name, list.description, list.create_time, list.opt_in as i64],
            )?;
            remember(tx, &list.tenant, &request_id, "list", &list.id)?;
            Ok(list)
        })
        .await
    }

    async fn get_list(&self, tenant: &str, list_id: &str) -> Result<Option<MailingList>> {
        let (tenant, id) = (tenant.to_owned(), list_id.to_owned());
        self.tx(move |tx| get_list_tx(tx, &tenant, &id)).await
    }

    async fn list_lists(&self, tenant: &str, page: PageRequest) -> Result<Page<MailingList>> {
        let tenant = tenant.to_owned();
        self.tx(move |tx| {
            paged(
                tx,
                "SELECT * FROM lists WHERE tenant = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
                &tenant,
                None,
                &page,
                list_from_row,
                |l| &l.id,
            )
        })
        .await
    }

    async fn delete_list(&self, tenant: &str, list_id: &str) -> Result<bool> {
        let (tenant, id) = (tenant.to_owned(), list_id.to_owned());
        self.tx(move |tx| {
            tx.execute("DELETE FROM memberships WHERE tenant = ?1 AND list_id = ?2", params![tenant, id])?;
            Ok(tx.execute("DELETE FROM lists WHERE tenant = ?1 AND id = ?2", params![tenant, id])? > 0)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

    /// A store written before encryption at rest is sealed by the migration
    /// and reads back the same.
    #[tokio::test]
    async fn migration_seals_a_store_written_in_the_clear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = open_connection(&path).unwrap();
            let mut applied = 0;
            for migration in MIGRATIONS {
                match migration {
                    Migration::Sql(sql) => conn.execute_batch(sql).unwrap(),
                    Migration::Seal => break,
                }
                applied += 1;
            }
            conn.pragma_update(None, "user_version", applied).unwrap();
            conn.execute_batch(
                "INSERT INTO lists (tenant, id, display_name, description, create_time, opt_in) VALUES ('t', 'l', 'L', '', 0, 1);
                 INSERT INTO subscribers (tenant, id, email, email_norm, email_hash, domain_hash, display_name, attributes, status, create_time, update_time)
                   VALUES ('t', 's1', 'Old.Timer@example.com', 'old.timer@example.com', 'x', 'y', 'Old Timer', '{\"city\":\"Quuxville\"}', 1, 0, 0);
                 INSERT INTO memberships (tenant, list_id, subscriber_id, create_time, status, update_time) VALUES ('t', 'l', 's1', 0, 2, 0);
                 INSERT INTO consent_log (tenant, subscriber_id, time, seq, action, list_id, source, ip, user_agent)
                   VALUES ('t', 's1', 1, 1, 'subscribe', 'l', 'api', '192.0.2.44', 'Lynx');
                 INSERT INTO suppressions (tenant, email_hash, list_id, target, reason, create_time)
                   VALUES ('t', 'h', '', 'blocked.person@example.com', 'manual', 0);
                 INSERT INTO import_jobs (tenant, request_id, job, update_time)
                   VALUES ('t', 'r', '{\"request_id\":\"r\",\"list_id\":\"l\",\"lines_done\":3,\"imported\":2,\"updated\":0,\"skipped\":0,\"rejected\":1,\"errors\":[\"line 3: email: \\\"bad.row@\\\"\"],\"done\":true}', 0);",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path, MasterKeys::new(MasterKey::new("m", [4; 32]), vec![])).unwrap();
        let old = store.get_subscriber("t", "s1").await.unwrap().unwrap();
        assert_eq!((old.email.as_str(), old.display_name.as_str()), ("Old.Timer@example.com", "Old Timer"));
        assert_eq!(old.attributes["city"], "Quuxville");
        assert_eq!(store.find_subscriber("t", "OLD.TIMER@example.com").await.unwrap().unwrap().id, "s1");
        assert_eq!(store.consent_records("t", "s1").await.unwrap()[0].context.ip, "192.0.2.44");
        let suppressed = store.suppressions_for("t", vec!["blocked.person@example.com".into()]).await.unwrap();
        assert_eq!(suppressed.len(), 1);
        assert_eq!(store.import_job("t", "r").await.unwrap().unwrap().rejected, 1);
        assert!(store.is_sendable("t", "s1", "l").await.unwrap());
        drop(store);
        let mut raw = std::fs::read(&path).unwrap();
        raw.extend(std::fs::read(dir.path().join("old.db-wal")).unwrap_or_default());
        for needle in ["old.timer", "Quuxville", "192.0.2.44", "Lynx", "blocked.person", "bad.row"] {
            assert!(!raw.windows(needle.len()).any(|w| w == needle.as_bytes()), "{needle} is in the file in the clear");
        }
    }
}
