//! Subscribers, memberships, the consent ledger, imports, export and erasure
//! on ScyllaDB. An upsert claims the address's blind index with LWT first,
//! then writes the subscriber, its tenant-index entry and its memberships;
//! a crash between the steps leaves an address claim without a subscriber,
//! which the next upsert of that address completes.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;

use super::{BUCKETS, ScyllaStore, bucket_of, cursor_of, parse_cursor};
use crate::crypto::TenantKeys;
use crate::sqlite::encrypt::{domain_key, email_key, open_pii, seal_pii};
use crate::sqlite::subscribers::next_consent_seq;
use crate::upsert::{Applied, consent_action, fresh_status, imported, joins, merged};
use crate::*;

/// (time, seq, action, list_id, source, sealed ip and user agent) of a consent record.
pub(super) type ConsentRow = (i64, i64, Option<String>, Option<String>, Option<String>, Option<Vec<u8>>);

/// (id, pii, email_hash, domain_hash, status, create_time, update_time)
type SubscriberRow = (String, Vec<u8>, String, String, i32, i64, i64);

/// Which bucketed index a page walks.
#[derive(Clone, Copy)]
enum Index<'a> {
    /// Members of one list, with their membership status.
    List(&'a str),
    /// Every subscriber of the tenant.
    Tenant,
}

impl ScyllaStore {
    /// The subscriber row, or `None`. An UPDATE that raced an erasure can
    /// leave a partial row (ScyllaDB updates create rows); it has no blind
    /// index and no creation time, and reads as absent.
    pub(super) async fn subscriber_row(&self, tenant: &str, id: &str) -> Result<Option<SubscriberRow>> {
        type Nullable =
            (String, Option<Vec<u8>>, Option<String>, Option<String>, Option<i32>, Option<i64>, Option<i64>);
        let Some(row) = self.one::<Nullable>(&self.st().subscriber_get, (tenant, id)).await? else { return Ok(None) };
        match row {
            (id, Some(pii), Some(hash), domain, Some(status), Some(created), updated) => {
                Ok(Some((id, pii, hash, domain.unwrap_or_default(), status, created, updated.unwrap_or(created))))
            }
            (id, ..) => {
                tracing::warn!(%tenant, subscriber = %id, "a partial subscriber row (an update raced an erasure): erase it again");
                Ok(None)
            }
        }
    }

    /// Opens the sealed personal data; `with_lists` loads the memberships too.
    async fn open_subscriber(&self, tenant: &str, row: SubscriberRow, with_lists: bool) -> Result<Subscriber> {
        let (id, pii, _, _, status, create_time, update_time) = row;
        let keys = self.keys(tenant, TenantKeys::key_id_of(&pii)).await?;
        let pii = open_pii(&keys, &pii)?;
        let mut subscriber = Subscriber {
            tenant: tenant.to_owned(),
            id,
            email: pii.email,
            display_name: pii.name,
            attributes: pii.attributes,
            status: SubscriberStatus::from_i64(status as i64),
            lists: Vec::new(),
            subscriptions: Vec::new(),
            create_time,
            update_time,
        };
        if with_lists {
            let rows: Vec<(String, i32, i64)> =
                self.scan(&self.st().memberships_of, (tenant, subscriber.id.as_str())).await?;
            subscriber.set_subscriptions(
                rows.into_iter()
                    .map(|(list_id, status, update_time)| Subscription {
                        list_id,
                        status: SubscriptionStatus::from_i64(status as i64),
                        update_time,
                    })
                    .collect(),
            );
        }
        Ok(subscriber)
    }

    async fn get_full(&self, tenant: &str, id: &str) -> Result<Option<Subscriber>> {
        match self.subscriber_row(tenant, id).await? {
            Some(row) => Ok(Some(self.open_subscriber(tenant, row, true).await?)),
            None => Ok(None),
        }
    }

    /// Whether a subscriber row may be mailed for `list_id`: active and not
    /// suppressed tenant-wide, for the list, or for the domain.
    async fn unsuppressed_active(&self, tenant: &str, row: &SubscriberRow, list_id: &str) -> Result<bool> {
        if row.4 != SubscriberStatus::Active as i32 {
            return Ok(false);
        }
        for hash in [&row.2, &row.3] {
            let rows = self.suppression_rows(tenant, hash).await?;
            if rows.iter().any(|(_, scope, ..)| scope.is_empty() || scope == list_id) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The next rows of a bucketed index after `(bucket, after)`, moving to the
    /// next bucket when one runs out; `None` after the last bucket.
    async fn next_rows(
        &self,
        tenant: &str,
        index: Index<'_>,
        at: &mut (i32, String),
        want: usize,
    ) -> Result<Option<Vec<(String, i32)>>> {
        let want = want.clamp(1, 1000) as i32;
        while at.0 < BUCKETS as i32 {
            let rows: Vec<(String, i32)> = match index {
                Index::List(list_id) => {
                    self.rows(&self.st().member_page, (tenant, list_id, at.0, at.1.as_str(), want)).await?
                }
                Index::Tenant => {
                    let ids: Vec<(String,)> =
                        self.rows(&self.st().tenant_member_page, (tenant, at.0, at.1.as_str(), want)).await?;
                    ids.into_iter().map(|(id,)| (id, 0)).collect()
                }
            };
            match rows.last() {
                Some((last, _)) => {
                    at.1 = last.clone();
                    return Ok(Some(rows));
                }
                None => *at = (at.0 + 1, String::new()),
            }
        }
        Ok(None)
    }

    /// A page of subscribers from a bucketed index; with `sendable_only`, only
    /// confirmed members who are active and not suppressed.
    async fn subscriber_page(
        &self,
        tenant: &str,
        index: Index<'_>,
        sendable_only: bool,
        page: &PageRequest,
    ) -> Result<Page<Subscriber>> {
        let mut at = parse_cursor(page.token.as_deref());
        let mut items: Vec<Subscriber> = Vec::new();
        while items.len() <= page.size {
            let Some(rows) = self.next_rows(tenant, index, &mut at, page.size + 1 - items.len()).await? else { break };
            let rows: Vec<(String, i32)> = rows
                .into_iter()
                .filter(|(_, status)| !sendable_only || *status == SubscriptionStatus::Confirmed as i32)
                .collect();
            let list_id = match index {
                Index::List(list_id) => list_id,
                Index::Tenant => "",
            };
            let found = self
                .each(rows, |(id, _)| async move {
                    let Some(row) = self.subscriber_row(tenant, &id).await? else { return Ok(None) };
                    if sendable_only && !self.unsuppressed_active(tenant, &row, list_id).await? {
                        return Ok(None);
                    }
                    Ok(Some(self.open_subscriber(tenant, row, false).await?))
                })
                .await?;
            items.extend(found.into_iter().flatten());
        }
        let more = items.len() > page.size;
        items.truncate(page.size);
        let next_token = if more { items.last().map(|s| cursor_of(&s.id)) } else { None };
        Ok(Page { items, next_token })
    }

    async fn list_modes(&self, tenant: &str, list_ids: &[String]) -> Result<HashMap<String, OptIn>> {
        let mut modes = HashMap::new();
        for list_id in list_ids {
            let list = self
                .get_list_row(tenant, list_id)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("lists/{list_id}")))?;
            modes.insert(list_id.clone(), list.opt_in);
        }
        Ok(modes)
    }

    async fn append_consent(
        &self,
        keys: &TenantKeys,
        subscriber_id: &str,
        action: ConsentAction,
        list_id: &str,
        consent: &ConsentContext,
        now: i64,
    ) -> Result<()> {
        let sealed = keys.seal(&serde_json::to_vec(&(&consent.ip, &consent.user_agent)).expect("strings encode"));
        let values =
            (&keys.tenant, subscriber_id, now, next_consent_seq(), action.as_str(), list_id, &consent.source, sealed);
        self.exec(&self.st().consent_insert, values).await
    }

    /// Writes one membership on both sides (list bucket, then subscriber).
    async fn put_membership(
        &self,
        tenant: &str,
        list_id: &str,
        id: &str,
        status: SubscriptionStatus,
        now: i64,
    ) -> Result<()> {
        let bucket = bucket_of(id, BUCKETS);
        self.exec(&self.st().member_upsert, (status as i32, now, tenant, list_id, bucket, id)).await?;
        self.exec(&self.st().membership_upsert, (status as i32, now, tenant, id, list_id)).await
    }

    async fn apply_upsert(
        &self,
        keys: &TenantKeys,
        subscriber: &Subscriber,
        options: &UpsertOptions,
        modes: &HashMap<String, OptIn>,
        now: i64,
    ) -> Result<Applied> {
        let tenant = subscriber.tenant.as_str();
        let hash = email_key(keys, &subscriber.email);
        let claim = self.lwt(&self.st().email_claim, (tenant, &hash, &subscriber.id)).await?;
        let (id, created) =
            if claim.applied { (subscriber.id.clone(), true) } else { (claim.text("subscriber_id"), false) };
        let existing = if created { None } else { self.subscriber_row(tenant, &id).await? };
        let mut state = None;
        let changed = match existing {
            // New, or an address claim whose subscriber a crash never wrote: write it whole.
            None => {
                let pii = seal_pii(keys, &subscriber.email, &subscriber.display_name, &subscriber.attributes)?;
                let create_time = if subscriber.create_time > 0 && subscriber.create_time <= now {
                    subscriber.create_time
                } else {
                    now
                };
                let domain = domain_key(keys, &subscriber.email);
                let values = (tenant, &id, pii, &hash, domain, subscriber.status as i32, create_time, now);
                self.exec(&self.st().subscriber_insert, values).await?;
                self.exec(&self.st().tenant_member_insert, (tenant, bucket_of(&id, BUCKETS), &id)).await?;
                true
            }
            Some((_, sealed, _, _, status, ..)) => {
                let old = open_pii(&*self.keys(tenant, TenantKeys::key_id_of(&sealed)).await?, &sealed)?;
                let status = SubscriberStatus::from_i64(status as i64);
                if options.mode == UpsertMode::SkipExisting {
                    state = Some((old.name, old.attributes, status));
                    false
                } else {
                    let (name, attributes) = merged(old.name, old.attributes, subscriber);
                    let pii = seal_pii(keys, &subscriber.email, &name, &attributes)?;
                    self.exec(&self.st().subscriber_update, (pii, status as i32, now, tenant, &id)).await?;
                    state = Some((name, attributes, status));
                    true
                }
            }
        };
        let mut statuses = Vec::with_capacity(subscriber.lists.len());
        let mut pending_confirmation = Vec::new();
        for list_id in &subscriber.lists {
            let fresh = fresh_status(modes, list_id);
            let current: Option<(i32,)> =
                if created { None } else { self.one(&self.st().membership_get, (tenant, &id, list_id)).await? };
            let current = current.map(|(status,)| SubscriptionStatus::from_i64(status as i64));
            let join = joins(current, options, list_id, &mut pending_confirmation);
            if !join {
                statuses.push(current.unwrap_or(fresh));
                continue;
            }
            self.put_membership(tenant, list_id, &id, fresh, now).await?;
            self.append_consent(keys, &id, ConsentAction::Subscribe, list_id, &options.consent, now).await?;
            if fresh == SubscriptionStatus::Unconfirmed {
                pending_confirmation.push(list_id.clone());
            }
            statuses.push(fresh);
        }
        Ok(Applied { id, created, changed, statuses, pending_confirmation, state })
    }

    pub(super) async fn consent_of(&self, tenant: &str, subscriber_id: &str) -> Result<Vec<ConsentRecord>> {
        let rows: Vec<ConsentRow> = self.scan(&self.st().consent_of, (tenant, subscriber_id)).await?;
        let mut records = Vec::with_capacity(rows.len());
        for (time, _, action, list_id, source, sealed) in rows {
            // A row without its action is what a re-seal that raced an erasure leaves: skip it.
            let (Some(action), Some(sealed)) = (action, sealed) else { continue };
            let (list_id, source) = (list_id.unwrap_or_default(), source.unwrap_or_default());
            let keys = self.keys(tenant, TenantKeys::key_id_of(&sealed)).await?;
            let (ip, user_agent): (String, String) =
                serde_json::from_slice(&keys.open(&sealed)?).map_err(|e| StoreError::failed("consent record", e))?;
            records.push(ConsentRecord {
                subscriber_id: subscriber_id.to_owned(),
                time,
                action: ConsentAction::parse(&action),
                list_id,
                context: ConsentContext { source, ip, user_agent },
            });
        }
        Ok(records)
    }
}

#[async_trait]
impl SubscriberStore for ScyllaStore {
    async fn upsert_subscriber(
        &self,
        subscriber: Subscriber,
        options: UpsertOptions,
        request_id: Option<String>,
    ) -> Result<Upserted> {
        let tenant = subscriber.tenant.clone();
        if let Some(id) = self.remembered(&tenant, &request_id, "subscriber").await? {
            let existing =
                self.get_full(&tenant, &id).await?.ok_or_else(|| StoreError::NotFound(format!("subscribers/{id}")))?;
            return Ok(Upserted { subscriber: existing, created: false, changed: false, pending_confirmation: vec![] });
        }
        let modes = self.list_modes(&tenant, &subscriber.lists).await?;
        let keys = self.keys(&tenant, None).await?;
        let applied = self.apply_upsert(&keys, &subscriber, &options, &modes, now_millis()).await?;
        self.remember(&tenant, &request_id, "subscriber", &applied.id).await?;
        let stored = self
            .get_full(&tenant, &applied.id)
            .await?
            .ok_or_else(|| StoreError::Backend("subscriber vanished".into()))?;
        Ok(Upserted {
            subscriber: stored,
            created: applied.created,
            changed: applied.changed,
            pending_confirmation: applied.pending_confirmation,
        })
    }

    async fn get_subscriber(&self, tenant: &str, subscriber_id: &str) -> Result<Option<Subscriber>> {
        self.get_full(tenant, subscriber_id).await
    }

    async fn find_subscriber(&self, tenant: &str, email: &str) -> Result<Option<Subscriber>> {
        let hash = email_key(&*self.keys(tenant, None).await?, email);
        match self.one::<(String,)>(&self.st().email_get, (tenant, hash)).await? {
            Some((id,)) => self.get_full(tenant, &id).await,
            None => Ok(None),
        }
    }

    async fn list_subscribers(&self, tenant: &str, page: PageRequest) -> Result<Page<Subscriber>> {
        self.subscriber_page(tenant, Index::Tenant, false, &page).await
    }

    async fn list_members(
        &self,
        tenant: &str,
        list_id: &str,
        sendable_only: bool,
        page: PageRequest,
    ) -> Result<Page<Subscriber>> {
        self.subscriber_page(tenant, Index::List(list_id), sendable_only, &page).await
    }

    async fn member_statuses(
        &self,
        tenant: &str,
        list_id: &str,
        page: PageRequest,
    ) -> Result<Page<(String, SubscriptionStatus)>> {
        let mut at = parse_cursor(page.token.as_deref());
        let mut items = Vec::new();
        while items.len() <= page.size {
            let want = page.size + 1 - items.len();
            let Some(rows) = self.next_rows(tenant, Index::List(list_id), &mut at, want).await? else { break };
            items.extend(rows.into_iter().map(|(id, status)| (id, SubscriptionStatus::from_i64(status as i64))));
        }
        let more = items.len() > page.size;
        items.truncate(page.size);
        let next_token = if more { items.last().map(|(id, _)| cursor_of(id)) } else { None };
        Ok(Page { items, next_token })
    }

    fn member_cursor(&self, subscriber_id: &str) -> String {
        cursor_of(subscriber_id)
    }

    async fn is_sendable(&self, tenant: &str, subscriber_id: &str, list_id: &str) -> Result<bool> {
        let membership: Option<(i32,)> = self.one(&self.st().membership_get, (tenant, subscriber_id, list_id)).await?;
        if membership.map(|(s,)| s) != Some(SubscriptionStatus::Confirmed as i32) {
            return Ok(false);
        }
        match self.subscriber_row(tenant, subscriber_id).await? {
            Some(row) => self.unsuppressed_active(tenant, &row, list_id).await,
            None => Ok(false),
        }
    }

    async fn update_subscriber(
        &self,
        tenant: &str,
        subscriber_id: &str,
        update: SubscriberUpdate,
    ) -> Result<Option<Subscriber>> {
        let Some(current) = self.get_full(tenant, subscriber_id).await? else { return Ok(None) };
        let name = update.display_name.unwrap_or(current.display_name);
        let attributes = update.attributes.unwrap_or(current.attributes);
        let status = update.status.unwrap_or(current.status);
        let pii = seal_pii(&*self.keys(tenant, None).await?, &current.email, &name, &attributes)?;
        self.exec(&self.st().subscriber_update, (pii, status as i32, now_millis(), tenant, subscriber_id)).await?;
        self.get_full(tenant, subscriber_id).await
    }

    async fn set_subscription(
        &self,
        tenant: &str,
        subscriber_id: &str,
        list_id: &str,
        status: SubscriptionStatus,
        consent: ConsentContext,
    ) -> Result<Option<Subscriber>> {
        let current: Option<(i32,)> = self.one(&self.st().membership_get, (tenant, subscriber_id, list_id)).await?;
        let Some((current,)) = current else { return Ok(None) };
        if self.subscriber_row(tenant, subscriber_id).await?.is_none() {
            return Ok(None);
        }
        if current != status as i32 {
            let now = now_millis();
            self.put_membership(tenant, list_id, subscriber_id, status, now).await?;
            let action = consent_action(status);
            let keys = self.keys(tenant, None).await?;
            self.append_consent(&keys, subscriber_id, action, list_id, &consent, now).await?;
        }
        self.get_full(tenant, subscriber_id).await
    }

    async fn consent_records(&self, tenant: &str, subscriber_id: &str) -> Result<Vec<ConsentRecord>> {
        self.consent_of(tenant, subscriber_id).await
    }

    async fn existing_emails(&self, tenant: &str, emails: Vec<String>) -> Result<HashSet<String>> {
        let keys = self.keys(tenant, None).await?;
        let keys = &keys;
        let found = self
            .each(emails, |email| async move {
                let row: Option<(String,)> = self.one(&self.st().email_get, (tenant, email_key(keys, &email))).await?;
                Ok(row.map(|_| normalize_email(&email)))
            })
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    /// Rows with different addresses run concurrently; repeats of an address
    /// run after its earlier rows, in file order. There are no multi-row
    /// transactions here: a crash part-way leaves the rows before it written,
    /// and the re-run (resuming at the job's `lines_done`) upserts them again.
    async fn import_batch(
        &self,
        tenant: &str,
        job: ImportJob,
        rows: Vec<ImportRow>,
        options: UpsertOptions,
    ) -> Result<(Vec<ImportedRow>, ImportJob)> {
        let mut job = job;
        let modes = self.list_modes(tenant, std::slice::from_ref(&job.list_id)).await?;
        let keys = self.keys(tenant, None).await?;
        let now = now_millis();
        let waves = super::waves(rows, |row| normalize_email(&row.subscriber.email));
        let (keys, modes, options) = (&keys, &modes, &options);
        let mut results: Vec<(usize, ImportRow, Applied)> = Vec::new();
        for wave in waves {
            let done = self
                .each(wave, |(position, row)| async move {
                    let applied = self.apply_upsert(keys, &row.subscriber, options, modes, now).await?;
                    Ok((position, row, applied))
                })
                .await?;
            results.extend(done);
        }
        results.sort_by_key(|(position, ..)| *position);
        let imported = results.into_iter().map(|(_, row, applied)| imported(&mut job, row, applied)).collect();
        if !job.request_id.is_empty() {
            let encoded = serde_json::to_vec(&job).map_err(|e| StoreError::failed("encode import job", e))?;
            self.exec(&self.st().import_job_upsert, (tenant, &job.request_id, keys.seal(&encoded), now)).await?;
        }
        Ok((imported, job))
    }

    async fn import_job(&self, tenant: &str, request_id: &str) -> Result<Option<ImportJob>> {
        let Some((sealed,)) = self.one::<(Vec<u8>,)>(&self.st().import_job_get, (tenant, request_id)).await? else {
            return Ok(None);
        };
        let keys = self.keys(tenant, TenantKeys::key_id_of(&sealed)).await?;
        serde_json::from_slice(&keys.open(&sealed)?).map(Some).map_err(|e| StoreError::failed("import job", e))
    }

    async fn export_subscriber(&self, tenant: &str, subscriber_id: &str) -> Result<Option<SubscriberExport>> {
        let Some(row) = self.subscriber_row(tenant, subscriber_id).await? else { return Ok(None) };
        let hashes = [row.2.clone(), row.3.clone()];
        let subscriber = self.open_subscriber(tenant, row, true).await?;
        let suppressions = self.suppressions_by_hash(tenant, &hashes).await?;
        let rows: Vec<(String, String, String, i64)> = self.scan(&self.st().deliveries_of, (subscriber_id,)).await?;
        let deliveries = rows
            .into_iter()
            .map(|(campaign_id, state, message_id, update_time)| Delivery {
                campaign_id,
                state,
                message_id,
                update_time,
            })
            .collect();
        let consent = self.consent_of(tenant, subscriber_id).await?;
        let feedback = self.feedback_of_subscriber(tenant, subscriber_id).await?;
        let events = self.events_of_subscriber(tenant, subscriber_id).await?;
        Ok(Some(SubscriberExport { subscriber, consent, suppressions, deliveries, feedback, events }))
    }

    /// Deletes in an order that a re-run after a crash finishes: everything
    /// found through the subscriber row, then the `erased` suppression by
    /// hash and the address claim, and the subscriber row itself last.
    async fn erase_subscriber(&self, tenant: &str, subscriber_id: &str) -> Result<Option<String>> {
        let Some((_, _, hash, ..)) = self.subscriber_row(tenant, subscriber_id).await? else { return Ok(None) };
        let memberships: Vec<(String, i32, i64)> =
            self.scan(&self.st().memberships_of, (tenant, subscriber_id)).await?;
        let bucket = bucket_of(subscriber_id, BUCKETS);
        for (list_id, ..) in memberships {
            self.exec(&self.st().member_delete, (tenant, &list_id, bucket, subscriber_id)).await?;
        }
        self.exec(&self.st().memberships_delete, (tenant, subscriber_id)).await?;
        self.exec(&self.st().consent_delete, (tenant, subscriber_id)).await?;
        self.erase_feedback(tenant, subscriber_id).await?;
        self.exec(&self.st().score_delete, (tenant, subscriber_id)).await?;
        self.erase_events(tenant, subscriber_id).await?;
        // Suppressions of this address keep working, but no longer say whose they are.
        let scopes = self.suppression_rows(tenant, &hash).await?;
        for (_, list_id, ..) in &scopes {
            self.exec(&self.st().suppression_reseal, (Vec::<u8>::new(), tenant, &hash, list_id)).await?;
        }
        let created = scopes.iter().find(|(_, list_id, ..)| list_id.is_empty()).map_or_else(now_millis, |row| row.4);
        self.put_suppression(tenant, &hash, "", Vec::new(), "erased", created).await?;
        self.exec(&self.st().email_delete, (tenant, &hash)).await?;
        self.exec(&self.st().tenant_member_delete, (tenant, bucket, subscriber_id)).await?;
        self.exec(&self.st().subscriber_delete, (tenant, subscriber_id)).await?;
        Ok(Some(hash))
    }
}
