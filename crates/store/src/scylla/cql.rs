//! Every CQL statement the ScyllaDB backend runs, with the access pattern it
//! serves, prepared once at connect. Each names its partition key in full:
//! no ALLOW FILTERING, no secondary index, no cross-partition batch. The
//! kind sets consistency and retries: `read`/`write`/`scan` at the
//! configured consistency (LOCAL_QUORUM), `lwt` with SERIAL/LOCAL_SERIAL,
//! `counter` never retried (an increment is not idempotent).
//!
//! The schema they run against is `deploy/scylla/V*.cql`.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::uri::ScyllaUri;
use crate::{Result, StoreError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A single-partition read; retried on timeout.
    Read,
    /// An idempotent write; retried on timeout.
    Write,
    /// A read of a whole (bounded) partition, paged by the driver.
    Scan,
    /// Lightweight transaction (Paxos): only where two writers must not both win.
    Lwt,
    /// Counter increment: never retried.
    Counter,
}

macro_rules! statements {
    ($( $(#[doc = $doc:literal])* $name:ident: $kind:ident = $cql:literal; )*) => {
        /// The prepared statements, one field per statement.
        pub(super) struct Statements { $( pub(super) $name: PreparedStatement, )* }

        impl Statements {
            pub(super) async fn prepare(session: &Session, uri: &ScyllaUri) -> Result<Self> {
                Ok(Self { $( $name: prepare(session, uri, $cql, Kind::$kind).await?, )* })
            }
        }

        /// (name, kind, CQL, access pattern) of every statement.
        pub const ALL: &[(&str, Kind, &str, &str)] = &[ $( (stringify!($name), Kind::$kind, $cql, concat!($($doc),*)), )* ];
    };
}

async fn prepare(session: &Session, uri: &ScyllaUri, cql: &str, kind: Kind) -> Result<PreparedStatement> {
    let mut statement = session.prepare(cql).await.map_err(|e| {
        StoreError::Backend(format!("preparing {cql:?}: {e} (is the keyspace migrated? run `broadside migrate`)"))
    })?;
    statement.set_consistency(uri.consistency);
    statement.set_request_timeout(Some(uri.request_timeout));
    match kind {
        Kind::Read | Kind::Write => statement.set_is_idempotent(true),
        Kind::Scan => {
            statement.set_is_idempotent(true);
            statement.set_page_size(1000);
        }
        Kind::Lwt => statement.set_serial_consistency(Some(uri.serial_consistency)),
        Kind::Counter => statement.set_is_idempotent(false),
    }
    Ok(statement)
}

statements! {
    // ---- tenants, keys, API keys, audit
    /// Create a tenant; the id must be free (admin, rare).
    tenant_insert: Lwt = "INSERT INTO tenants (id, display_name, create_time, allow_transactional) VALUES (?, ?, ?, ?) IF NOT EXISTS";
    /// The index of every tenant id (one small partition).
    tenant_index_insert: Write = "INSERT INTO tenant_index (shard, id) VALUES (0, ?)";
    /// A tenant by id.
    tenant_get: Read = "SELECT id, display_name, create_time, allow_transactional FROM tenants WHERE id = ?";
    /// Every tenant id (projection snapshots, scheduler, purge).
    tenant_index_scan: Scan = "SELECT id FROM tenant_index WHERE shard = 0";
    /// Every tenant that has keys (shard 1): key re-wrapping, re-encryption and purges visit them.
    key_tenant_insert: Write = "INSERT INTO tenant_index (shard, id) VALUES (1, ?)";
    /// Every tenant that has keys (re-wrap, purges).
    key_tenant_scan: Scan = "SELECT id FROM tenant_index WHERE shard = 1";
    /// Allow the transactional stream, if the tenant exists.
    tenant_set_transactional: Lwt = "UPDATE tenants SET allow_transactional = ? WHERE id = ? IF EXISTS";
    /// The tenant's wrapped data and index keys.
    keys_of_tenant: Scan = "SELECT id, kind, wrapped, master_id, active FROM tenant_keys WHERE tenant = ?";
    /// First key of a tenant: the index key row must be new (batched with the data key: one partition).
    key_insert_new: Lwt = "INSERT INTO tenant_keys (tenant, id, kind, wrapped, master_id, active, create_time) VALUES (?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS";
    /// Another data key (rotation).
    key_insert: Write = "INSERT INTO tenant_keys (tenant, id, kind, wrapped, master_id, active, create_time) VALUES (?, ?, ?, ?, ?, ?, ?)";
    /// Retire a data key from sealing (it still opens).
    key_deactivate: Write = "UPDATE tenant_keys SET active = false WHERE tenant = ? AND id = ?";
    /// Re-wrap a key with the current master key.
    key_rewrap: Write = "UPDATE tenant_keys SET wrapped = ?, master_id = ? WHERE tenant = ? AND id = ?";
    /// Store an API key (only the SHA-256 of its secret).
    api_key_insert: Write = "INSERT INTO api_keys (id, tenant, secret_hash, scopes, description, create_time, revoke_time) VALUES (?, ?, ?, ?, ?, ?, 0)";
    /// A tenant's key ids.
    api_key_index_insert: Write = "INSERT INTO api_keys_by_tenant (tenant, id) VALUES (?, ?)";
    /// Authenticate a call: the key by id.
    api_key_get: Read = "SELECT id, tenant, secret_hash, scopes, description, create_time, revoke_time FROM api_keys WHERE id = ?";
    /// A tenant's key ids, in order.
    api_keys_of_tenant: Scan = "SELECT id FROM api_keys_by_tenant WHERE tenant = ?";
    /// Revoke a key.
    api_key_revoke: Write = "UPDATE api_keys SET revoke_time = ? WHERE id = ?";
    /// Append to the audit log, partitioned by (tenant, year).
    audit_insert: Write = "INSERT INTO audit_log (tenant, year, id, time, actor, action, resource, detail, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)";
    /// The years a tenant's audit log spans.
    audit_year_insert: Write = "INSERT INTO audit_years (tenant, year) VALUES (?, ?)";
    /// The years of a tenant's audit log, oldest first (paging starts there).
    audit_years: Scan = "SELECT year FROM audit_years WHERE tenant = ?";
    /// One year of the audit log after a keyset token, oldest first.
    audit_page: Read = "SELECT tenant, id, time, actor, action, resource, detail, source FROM audit_log WHERE tenant = ? AND year = ? AND id > ? LIMIT ?";

    // ---- idempotency, lists, segments, templates
    /// The resource an earlier request with this id created (TTL 7 days).
    idempotency_get: Read = "SELECT resource_id FROM idempotency WHERE tenant = ? AND request_id = ? AND kind = ?";
    /// Remember the resource a request id created.
    idempotency_insert: Write = "INSERT INTO idempotency (tenant, request_id, kind, resource_id, create_time) VALUES (?, ?, ?, ?, ?)";
    /// Create a list in the tenant's partition.
    list_insert: Write = "INSERT INTO lists (tenant, id, display_name, description, opt_in, create_time) VALUES (?, ?, ?, ?, ?, ?)";
    /// A list by (tenant, id): upserts check opt-in mode, the API reads it.
    list_get: Read = "SELECT tenant, id, display_name, description, opt_in, create_time FROM lists WHERE tenant = ? AND id = ?";
    /// A page of a tenant's lists (one partition per tenant, clustered by id).
    list_page: Read = "SELECT tenant, id, display_name, description, opt_in, create_time FROM lists WHERE tenant = ? AND id > ? LIMIT ?";
    /// Delete a list row (its member buckets are dropped after).
    list_delete: Write = "DELETE FROM lists WHERE tenant = ? AND id = ?";
    /// Create a segment definition.
    segment_insert: Write = "INSERT INTO segments (tenant, id, display_name, rule, create_time) VALUES (?, ?, ?, ?, ?)";
    /// A segment by (tenant, id): fan-out and evaluation.
    segment_get: Read = "SELECT tenant, id, display_name, rule, create_time FROM segments WHERE tenant = ? AND id = ?";
    /// A page of a tenant's segments by id.
    segment_page: Read = "SELECT tenant, id, display_name, rule, create_time FROM segments WHERE tenant = ? AND id > ? LIMIT ?";
    /// Delete a segment definition.
    segment_delete: Write = "DELETE FROM segments WHERE tenant = ? AND id = ?";
    /// Create a template version.
    template_insert: Write = "INSERT INTO templates (tenant, id, version, display_name, subject, html_body, text_body, create_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)";
    /// A template by (tenant, id): senders render with it.
    template_get: Read = "SELECT tenant, id, version, display_name, subject, html_body, text_body, create_time FROM templates WHERE tenant = ? AND id = ?";
    /// A page of a tenant's templates by id.
    template_page: Read = "SELECT tenant, id, version, display_name, subject, html_body, text_body, create_time FROM templates WHERE tenant = ? AND id > ? LIMIT ?";

    // ---- subscribers
    /// Email uniqueness: claim the blind index of a normalized address.
    email_claim: Lwt = "INSERT INTO subscriber_by_email (tenant, email_hash, subscriber_id) VALUES (?, ?, ?) IF NOT EXISTS";
    /// Find a subscriber by address (blind index).
    email_get: Read = "SELECT subscriber_id FROM subscriber_by_email WHERE tenant = ? AND email_hash = ?";
    /// Free an address on erasure.
    email_delete: Write = "DELETE FROM subscriber_by_email WHERE tenant = ? AND email_hash = ?";
    /// Write a new subscriber (or complete a claim a crash left without one).
    subscriber_insert: Write = "INSERT INTO subscribers (tenant, id, pii, email_hash, domain_hash, status, create_time, update_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)";
    /// A subscriber by id (sealed personal data, blind indexes, status).
    subscriber_get: Read = "SELECT id, pii, email_hash, domain_hash, status, create_time, update_time FROM subscribers WHERE tenant = ? AND id = ?";
    /// Replace the sealed personal data and status (upsert, update).
    subscriber_update: Write = "UPDATE subscribers SET pii = ?, status = ?, update_time = ? WHERE tenant = ? AND id = ?";
    /// Re-seal the personal data with the active key (re-encryption).
    subscriber_reseal: Write = "UPDATE subscribers SET pii = ? WHERE tenant = ? AND id = ?";
    /// Delete the subscriber row (erasure, last step).
    subscriber_delete: Write = "DELETE FROM subscribers WHERE tenant = ? AND id = ?";
    /// Every subscriber of a tenant, 256 buckets by id hash.
    tenant_member_insert: Write = "INSERT INTO subscribers_by_tenant (tenant, bucket, id) VALUES (?, ?, ?)";
    /// A page of one bucket of the tenant's subscribers by id (listing, snapshots).
    tenant_member_page: Read = "SELECT id FROM subscribers_by_tenant WHERE tenant = ? AND bucket = ? AND id > ? LIMIT ?";
    /// Remove a subscriber from the tenant index (erasure).
    tenant_member_delete: Write = "DELETE FROM subscribers_by_tenant WHERE tenant = ? AND bucket = ? AND id = ?";
    /// Join or change a membership (the list's bucket partition).
    member_upsert: Write = "UPDATE memberships SET status = ?, update_time = ? WHERE tenant = ? AND list_id = ? AND bucket = ? AND subscriber_id = ?";
    /// A page of one bucket of a list, by subscriber id.
    member_page: Read = "SELECT subscriber_id, status FROM memberships WHERE tenant = ? AND list_id = ? AND bucket = ? AND subscriber_id > ? LIMIT ?";
    /// Remove one member from a list bucket (erasure).
    member_delete: Write = "DELETE FROM memberships WHERE tenant = ? AND list_id = ? AND bucket = ? AND subscriber_id = ?";
    /// Drop one bucket of a deleted list.
    member_bucket_delete: Write = "DELETE FROM memberships WHERE tenant = ? AND list_id = ? AND bucket = ?";
    /// The same membership from the subscriber's side.
    membership_upsert: Write = "UPDATE memberships_by_subscriber SET status = ?, update_time = ? WHERE tenant = ? AND subscriber_id = ? AND list_id = ?";
    /// A subscriber's memberships (few rows).
    memberships_of: Scan = "SELECT list_id, status, update_time FROM memberships_by_subscriber WHERE tenant = ? AND subscriber_id = ?";
    /// One membership's status: upserts, is_sendable, set_subscription.
    membership_get: Read = "SELECT status FROM memberships_by_subscriber WHERE tenant = ? AND subscriber_id = ? AND list_id = ?";
    /// Remove one by-subscriber membership (list deletion).
    membership_delete: Write = "DELETE FROM memberships_by_subscriber WHERE tenant = ? AND subscriber_id = ? AND list_id = ?";
    /// Remove all of a subscriber's memberships (erasure).
    memberships_delete: Write = "DELETE FROM memberships_by_subscriber WHERE tenant = ? AND subscriber_id = ?";
    /// Append to a subscriber's consent ledger.
    consent_insert: Write = "INSERT INTO consent_log (tenant, subscriber_id, time, seq, action, list_id, source, pii) VALUES (?, ?, ?, ?, ?, ?, ?, ?)";
    /// A subscriber's consent ledger, oldest first.
    consent_of: Scan = "SELECT time, seq, action, list_id, source, pii FROM consent_log WHERE tenant = ? AND subscriber_id = ?";
    /// Re-seal one consent record (re-encryption).
    consent_reseal: Write = "UPDATE consent_log SET pii = ? WHERE tenant = ? AND subscriber_id = ? AND time = ? AND seq = ?";
    /// Delete a subscriber's consent ledger (erasure).
    consent_delete: Write = "DELETE FROM consent_log WHERE tenant = ? AND subscriber_id = ?";
    /// Progress of an import request (one partition per tenant: few jobs).
    import_job_upsert: Write = "INSERT INTO import_jobs (tenant, request_id, job, update_time) VALUES (?, ?, ?, ?)";
    /// Resume an import: its recorded progress.
    import_job_get: Read = "SELECT job FROM import_jobs WHERE tenant = ? AND request_id = ?";
    /// Every import job of a tenant (re-encryption).
    import_jobs_of: Scan = "SELECT request_id, job FROM import_jobs WHERE tenant = ?";

    // ---- suppressions
    /// Add or replace a suppression of an address or @domain.
    suppression_upsert: Write = "INSERT INTO suppressions (tenant, email_hash, list_id, target, reason, create_time) VALUES (?, ?, ?, ?, ?, ?)";
    /// Suppressions of one address or @domain (every scope).
    suppressions_of: Read = "SELECT email_hash, list_id, target, reason, create_time FROM suppressions WHERE tenant = ? AND email_hash = ?";
    /// One suppression by (tenant, hash, scope).
    suppression_get: Read = "SELECT email_hash, list_id, target, reason, create_time FROM suppressions WHERE tenant = ? AND email_hash = ? AND list_id = ?";
    /// Lift a suppression.
    suppression_delete: Write = "DELETE FROM suppressions WHERE tenant = ? AND email_hash = ? AND list_id = ?";
    /// Re-seal a suppression target (re-encryption), or empty it (erasure: it keeps working, anonymous).
    suppression_reseal: Write = "UPDATE suppressions SET target = ? WHERE tenant = ? AND email_hash = ? AND list_id = ?";
    /// Every suppression of a tenant, 256 buckets by blind-index hash.
    suppression_index_insert: Write = "INSERT INTO suppressions_by_tenant (tenant, bucket, email_hash, list_id) VALUES (?, ?, ?, ?)";
    /// Remove a lifted suppression from the tenant index.
    suppression_index_delete: Write = "DELETE FROM suppressions_by_tenant WHERE tenant = ? AND bucket = ? AND email_hash = ? AND list_id = ?";
    /// A page of one bucket of the tenant's suppressions by (hash, scope).
    suppression_index_page: Read = "SELECT email_hash, list_id FROM suppressions_by_tenant WHERE tenant = ? AND bucket = ? AND (email_hash, list_id) > (?, ?) LIMIT ?";

    // ---- campaigns
    /// Create a campaign: its definition and initial state.
    campaign_insert: Write = "INSERT INTO campaigns (tenant, id, definition, state, recipients, fanout_cursor, fanout_done, create_time, start_time, complete_time, progress_time) VALUES (?, ?, ?, ?, 0, '', false, ?, 0, 0, 0)";
    /// A campaign by (tenant, id): every dispatch and API step.
    campaign_get: Read = "SELECT tenant, id, definition, state, recipients, fanout_cursor, fanout_done, create_time, start_time, complete_time, progress_time FROM campaigns WHERE tenant = ? AND id = ?";
    /// A page of a tenant's campaigns by id.
    campaign_page: Read = "SELECT tenant, id, definition, state, recipients, fanout_cursor, fanout_done, create_time, start_time, complete_time, progress_time FROM campaigns WHERE tenant = ? AND id > ? LIMIT ?";
    /// Campaign state change, compare-and-set: pause, resume, cancel and completion must not both win.
    campaign_set_state: Lwt = "UPDATE campaigns SET state = ?, start_time = ?, complete_time = ? WHERE tenant = ? AND id = ? IF state = ?";
    /// Fan-out progress (one fan-out task per campaign writes it).
    campaign_set_fanout: Write = "UPDATE campaigns SET fanout_cursor = ?, recipients = ?, fanout_done = ? WHERE tenant = ? AND id = ?";
    /// Note progress now (outcomes, deferrals, reconciliation).
    campaign_set_progress: Write = "UPDATE campaigns SET progress_time = ? WHERE tenant = ? AND id = ?";
    /// The scheduler's scan: campaigns in one state (a small partition per state;
    /// finished and cancelled ones leave it after 30 days).
    state_index_insert: Write = "INSERT INTO campaigns_by_state (state, tenant, id) VALUES (?, ?, ?) USING TTL ?";
    /// Leave the old state's index partition after a state change.
    state_index_delete: Write = "DELETE FROM campaigns_by_state WHERE state = ? AND tenant = ? AND id = ?";
    /// Campaigns in one state, for resuming work after a restart.
    state_index_page: Read = "SELECT tenant, id FROM campaigns_by_state WHERE state = ? LIMIT ?";
    /// A bounce names a campaign, not a tenant.
    campaign_tenant_insert: Write = "INSERT INTO campaign_tenant (campaign_id, tenant) VALUES (?, ?)";
    /// The tenant of a campaign named by a bounce.
    campaign_tenant_get: Read = "SELECT tenant FROM campaign_tenant WHERE campaign_id = ?";
    /// Campaign counters.
    stats_get: Read = "SELECT delivered, failed, deferred, bounced, complained, unsubscribed, opened, clicked FROM campaign_stats WHERE campaign_id = ?";
    /// Count a delivery.
    stats_delivered: Counter = "UPDATE campaign_stats SET delivered = delivered + 1 WHERE campaign_id = ?";
    /// Count a permanent failure.
    stats_failed: Counter = "UPDATE campaign_stats SET failed = failed + 1 WHERE campaign_id = ?";
    /// Count a 4xx deferral.
    stats_deferred: Counter = "UPDATE campaign_stats SET deferred = deferred + 1 WHERE campaign_id = ?";
    /// Count a bounce once per recipient.
    stats_bounced: Counter = "UPDATE campaign_stats SET bounced = bounced + 1 WHERE campaign_id = ?";
    /// Count a complaint once per recipient.
    stats_complained: Counter = "UPDATE campaign_stats SET complained = complained + 1 WHERE campaign_id = ?";
    /// Count an unsubscribe once per recipient.
    stats_unsubscribed: Counter = "UPDATE campaign_stats SET unsubscribed = unsubscribed + 1 WHERE campaign_id = ?";
    /// Count an open once per recipient.
    stats_opened: Counter = "UPDATE campaign_stats SET opened = opened + 1 WHERE campaign_id = ?";
    /// Count a click once per recipient.
    stats_clicked: Counter = "UPDATE campaign_stats SET clicked = clicked + 1 WHERE campaign_id = ?";
    /// A recipient's final outcome, once (256 buckets per campaign). Events of one
    /// subscriber arrive in order on one bus partition, so read-then-write does not race.
    outcome_get: Read = "SELECT outcome FROM campaign_outcomes WHERE campaign_id = ? AND bucket = ? AND subscriber_id = ?";
    /// Every outcome of one of a campaign's buckets (a recount, when reconciling).
    outcome_bucket: Scan = "SELECT outcome FROM campaign_outcomes WHERE campaign_id = ? AND bucket = ?";
    /// Repair the delivered counter by what a recount found missing.
    stats_add_delivered: Counter = "UPDATE campaign_stats SET delivered = delivered + ? WHERE campaign_id = ?";
    /// Repair the failed counter by what a recount found missing.
    stats_add_failed: Counter = "UPDATE campaign_stats SET failed = failed + ? WHERE campaign_id = ?";
    /// Record a recipient's final outcome.
    outcome_insert: Write = "INSERT INTO campaign_outcomes (campaign_id, bucket, subscriber_id, outcome) VALUES (?, ?, ?, ?)";
    /// Engagement counted once per (campaign, recipient, kind).
    engagement_get: Read = "SELECT kind FROM campaign_engagement WHERE campaign_id = ? AND subscriber_id = ? AND kind = ?";
    /// Record that a kind of engagement was counted.
    engagement_insert: Write = "INSERT INTO campaign_engagement (campaign_id, subscriber_id, kind) VALUES (?, ?, ?)";

    // ---- send ledger
    /// Claim a recipient before sending: exactly one claimer wins.
    ledger_claim: Lwt = "INSERT INTO send_ledger (campaign_id, subscriber_id, state, owner, lease_until, message_id, update_time) VALUES (?, ?, 'claimed', ?, ?, '', ?) IF NOT EXISTS";
    /// Take over a claim whose holder is us or whose lease passed (the holder seen must still hold it).
    ledger_takeover: Lwt = "UPDATE send_ledger SET owner = ?, lease_until = ?, update_time = ? WHERE campaign_id = ? AND subscriber_id = ? IF state = 'claimed' AND owner = ? AND lease_until = ?";
    /// Finish a claim, only by its owner.
    ledger_finish: Lwt = "UPDATE send_ledger SET state = ?, message_id = ?, update_time = ? WHERE campaign_id = ? AND subscriber_id = ? IF owner = ? AND state = 'claimed'";
    /// Give a claim back (deferred), only by its owner.
    ledger_release: Lwt = "DELETE FROM send_ledger WHERE campaign_id = ? AND subscriber_id = ? IF owner = ? AND state = 'claimed'";
    /// A subscriber's deliveries, for exports (subscriber ids are unique across tenants).
    delivery_upsert: Write = "INSERT INTO deliveries_by_subscriber (subscriber_id, campaign_id, state, message_id, update_time) VALUES (?, ?, ?, ?, ?)";
    /// Forget a released claim in the subscriber's deliveries.
    delivery_delete: Write = "DELETE FROM deliveries_by_subscriber WHERE subscriber_id = ? AND campaign_id = ?";
    /// A subscriber's deliveries (exports).
    deliveries_of: Scan = "SELECT campaign_id, state, message_id, update_time FROM deliveries_by_subscriber WHERE subscriber_id = ?";

    // ---- feedback
    /// A feedback record in its (tenant, day) partition, with the retention as TTL.
    feedback_insert: Write = "INSERT INTO feedback_records (tenant, day, id, time, kind, subscriber_id, campaign_id, class, status_code, diagnostic, reporting_mta, rule, verdict) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?";
    /// The raw message of a record, in its own partition.
    feedback_raw_insert: Write = "INSERT INTO feedback_raw (tenant, id, raw) VALUES (?, ?, ?) USING TTL ?";
    /// The raw message of a record (reclassification, with_raw listings).
    feedback_raw_get: Read = "SELECT raw FROM feedback_raw WHERE tenant = ? AND id = ?";
    /// Re-seal a raw message (re-encryption).
    feedback_raw_reseal: Write = "UPDATE feedback_raw SET raw = ? WHERE tenant = ? AND id = ?";
    /// Delete a raw message (erasure, purge).
    feedback_raw_delete: Write = "DELETE FROM feedback_raw WHERE tenant = ? AND id = ?";
    /// The days a tenant has feedback on, newest first.
    feedback_day_insert: Write = "INSERT INTO feedback_days (tenant, day) VALUES (?, ?) USING TTL ?";
    /// The days with feedback up to a day, newest first (listing, purge).
    feedback_days: Scan = "SELECT day FROM feedback_days WHERE tenant = ? AND day <= ?";
    /// Forget a purged day.
    feedback_day_delete: Write = "DELETE FROM feedback_days WHERE tenant = ? AND day = ?";
    /// A page of one day, newest first.
    feedback_page: Read = "SELECT tenant, id, time, kind, subscriber_id, campaign_id, class, status_code, diagnostic, reporting_mta, rule, verdict FROM feedback_records WHERE tenant = ? AND day = ? AND id < ? LIMIT ?";
    /// One record by (tenant, day, id): exports, verdict updates.
    feedback_get: Read = "SELECT tenant, id, time, kind, subscriber_id, campaign_id, class, status_code, diagnostic, reporting_mta, rule, verdict FROM feedback_records WHERE tenant = ? AND day = ? AND id = ?";
    /// A whole day (purge, re-encryption).
    feedback_of_day: Scan = "SELECT id, time, subscriber_id, diagnostic FROM feedback_records WHERE tenant = ? AND day = ?";
    /// Replace a record's classification and verdict.
    feedback_update: Write = "UPDATE feedback_records SET kind = ?, class = ?, status_code = ?, diagnostic = ?, reporting_mta = ?, rule = ?, verdict = ? WHERE tenant = ? AND day = ? AND id = ?";
    /// Re-seal a record's diagnostic (re-encryption).
    feedback_reseal: Write = "UPDATE feedback_records SET diagnostic = ? WHERE tenant = ? AND day = ? AND id = ?";
    /// Delete one record (erasure, purge of a partial day).
    feedback_delete: Write = "DELETE FROM feedback_records WHERE tenant = ? AND day = ? AND id = ?";
    /// Drop a whole purged day (one partition tombstone).
    feedback_day_drop: Write = "DELETE FROM feedback_records WHERE tenant = ? AND day = ?";
    /// Feedback about one subscriber (exports, erasure).
    feedback_index_insert: Write = "INSERT INTO feedback_by_subscriber (tenant, subscriber_id, day, id) VALUES (?, ?, ?, ?) USING TTL ?";
    /// The feedback about one subscriber (exports, erasure).
    feedback_index_of: Scan = "SELECT day, id FROM feedback_by_subscriber WHERE tenant = ? AND subscriber_id = ?";
    /// Remove one purged record from the subscriber index.
    feedback_index_delete: Write = "DELETE FROM feedback_by_subscriber WHERE tenant = ? AND subscriber_id = ? AND day = ? AND id = ?";
    /// Drop a subscriber's feedback index (erasure).
    feedback_index_drop: Write = "DELETE FROM feedback_by_subscriber WHERE tenant = ? AND subscriber_id = ?";
    /// Soft-bounce score of one subscriber.
    score_get: Read = "SELECT score, update_time FROM bounce_scores WHERE tenant = ? AND subscriber_id = ?";
    /// Store a decayed-and-incremented soft-bounce score.
    score_set: Write = "INSERT INTO bounce_scores (tenant, subscriber_id, score, update_time) VALUES (?, ?, ?, ?)";
    /// Delete a subscriber's score (erasure).
    score_delete: Write = "DELETE FROM bounce_scores WHERE tenant = ? AND subscriber_id = ?";

    // ---- behavioral events
    /// De-duplication by event id, and the published flag.
    event_id_get: Read = "SELECT published FROM behavior_event_ids WHERE tenant = ? AND event_id = ?";
    /// Record an event id as stored, not yet published (written last).
    event_id_insert: Write = "INSERT INTO behavior_event_ids (tenant, event_id, subscriber_id, published) VALUES (?, ?, ?, false) USING TTL ?";
    /// Mark events as published to the bus.
    event_id_published: Write = "UPDATE behavior_event_ids USING TTL ? SET published = true WHERE tenant = ? AND event_id = ?";
    /// Free an event id (erasure, purge).
    event_id_delete: Write = "DELETE FROM behavior_event_ids WHERE tenant = ? AND event_id = ?";
    /// A subscriber's events of one month (bounded partitions), by time.
    event_insert: Write = "INSERT INTO behavior_events (tenant, subscriber_id, month, time, event_id, name, properties) VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?";
    /// A subscriber's events of one month, by time (exports, erasure).
    events_of_month: Scan = "SELECT time, event_id, name, properties FROM behavior_events WHERE tenant = ? AND subscriber_id = ? AND month = ?";
    /// Re-seal an event's properties (re-encryption).
    event_reseal: Write = "UPDATE behavior_events SET properties = ? WHERE tenant = ? AND subscriber_id = ? AND month = ? AND time = ? AND event_id = ?";
    /// Delete one purged event.
    event_delete: Write = "DELETE FROM behavior_events WHERE tenant = ? AND subscriber_id = ? AND month = ? AND time = ? AND event_id = ?";
    /// Drop a subscriber's month of events (erasure).
    events_month_drop: Write = "DELETE FROM behavior_events WHERE tenant = ? AND subscriber_id = ? AND month = ?";
    /// The months a subscriber has events in.
    event_month_insert: Write = "INSERT INTO behavior_months (tenant, subscriber_id, month) VALUES (?, ?, ?) USING TTL ?";
    /// The months a subscriber has events in.
    event_months_of: Scan = "SELECT month FROM behavior_months WHERE tenant = ? AND subscriber_id = ?";
    /// Drop a subscriber's month index (erasure).
    event_months_drop: Write = "DELETE FROM behavior_months WHERE tenant = ? AND subscriber_id = ?";
    /// Events by (tenant, day) for the retention purge, and the days that have any.
    event_day_insert: Write = "INSERT INTO behavior_by_day (tenant, day, bucket, time, subscriber_id, event_id) VALUES (?, ?, ?, ?, ?, ?) USING TTL ?";
    /// Events of one day bucket that happened before a time (purge).
    event_day_rows: Scan = "SELECT time, subscriber_id, event_id FROM behavior_by_day WHERE tenant = ? AND day = ? AND bucket = ? AND time < ?";
    /// Remove one event from the purge index (erasure, purge).
    event_day_row_delete: Write = "DELETE FROM behavior_by_day WHERE tenant = ? AND day = ? AND bucket = ? AND time = ? AND subscriber_id = ? AND event_id = ?";
    /// Drop a purged day bucket.
    event_day_drop: Write = "DELETE FROM behavior_by_day WHERE tenant = ? AND day = ? AND bucket = ?";
    /// Note that a tenant has events on a day.
    event_days_insert: Write = "INSERT INTO behavior_days (tenant, day) VALUES (?, ?) USING TTL ?";
    /// The days a tenant has events on, up to a day (purge).
    event_days: Scan = "SELECT day FROM behavior_days WHERE tenant = ? AND day <= ?";
    /// Forget a purged day.
    event_days_delete: Write = "DELETE FROM behavior_days WHERE tenant = ? AND day = ?";
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules the module promises, checked on the text of every statement.
    #[test]
    fn every_statement_names_its_partition_and_follows_the_rules() {
        let mut names = std::collections::HashSet::new();
        for (name, kind, cql, pattern) in ALL {
            assert!(names.insert(name), "{name} twice");
            assert!(!pattern.is_empty(), "{name} has no access pattern");
            let upper = cql.to_ascii_uppercase();
            assert!(!upper.contains("ALLOW FILTERING"), "{name}");
            assert!(!upper.contains(" IN ("), "{name}: multi-partition IN");
            assert_eq!(upper.contains(" IF "), *kind == Kind::Lwt, "{name}: LWT only where the kind says so");
            if upper.starts_with("SELECT") || upper.starts_with("UPDATE") || upper.starts_with("DELETE") {
                assert!(upper.contains(" WHERE "), "{name}: a read or write without a partition key");
            }
            if *kind == Kind::Counter {
                assert!(upper.starts_with("UPDATE CAMPAIGN_STATS"), "{name}");
            }
        }
        let lwt_tables: std::collections::BTreeSet<&str> =
            ALL.iter().filter(|(_, kind, ..)| *kind == Kind::Lwt).map(|(_, _, cql, _)| table_of(cql)).collect();
        assert_eq!(
            lwt_tables.into_iter().collect::<Vec<_>>(),
            ["campaigns", "send_ledger", "subscriber_by_email", "tenant_keys", "tenants"],
            "LWT: email uniqueness, ledger claims, campaign state, and the two admin-rare tenant tables"
        );
    }

    fn table_of(cql: &str) -> &str {
        let words: Vec<&str> = cql.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| matches!(w.to_ascii_uppercase().as_str(), "FROM" | "INTO" | "UPDATE"))
            .expect("a table");
        words[at + 1]
    }

    /// Every table a statement names is created by the migrations.
    #[test]
    fn every_table_is_in_the_schema() {
        let schema: String = super::super::migrate::MIGRATIONS.iter().map(|(_, _, cql)| *cql).collect();
        for (name, _, cql, _) in ALL {
            let table = table_of(cql);
            assert!(
                schema.contains(&format!("CREATE TABLE IF NOT EXISTS {table} (")),
                "{name}: table {table} is not in deploy/scylla"
            );
        }
    }
}
