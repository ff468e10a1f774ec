//! Tenants, API keys, the audit log, lists, segments and suppressions on ScyllaDB.

use async_trait::async_trait;

use super::{BUCKETS, ScyllaStore, bucket_of};
use crate::sqlite::encrypt::{email_key, open_text, seal_text};
use crate::sqlite::page_of;
use crate::*;

type ListRow = (String, String, String, String, i32, i64);
type SegmentRow = (String, String, String, String, i64);
type KeyRow = (String, String, Vec<u8>, String, String, i64, i64);
type AuditRow = (String, String, i64, String, String, String, String, String);
/// (email_hash, list_id, sealed target, reason, create_time)
pub(super) type SuppressionRow = (String, String, Vec<u8>, String, i64);
type NullableSuppression = (String, String, Option<Vec<u8>>, Option<String>, Option<i64>);

/// A row without a reason is what an update that raced a removal leaves: absent.
fn complete_suppression(row: NullableSuppression) -> Option<SuppressionRow> {
    let (hash, list_id, target, reason, create_time) = row;
    Some((hash, list_id, target.unwrap_or_default(), reason?, create_time.unwrap_or_default()))
}

fn list_from(row: ListRow) -> MailingList {
    let (tenant, id, display_name, description, opt_in, create_time) = row;
    MailingList { tenant, id, display_name, description, opt_in: OptIn::from_i64(opt_in as i64), create_time }
}

fn segment_from(row: SegmentRow) -> Segment {
    let (tenant, id, display_name, rule, create_time) = row;
    Segment { tenant, id, display_name, rule, create_time }
}

fn key_from(row: KeyRow) -> ApiKey {
    let (id, tenant, secret_hash, scopes, description, create_time, revoke_time) = row;
    let scopes = scopes.split(',').filter_map(Scope::parse).collect();
    ApiKey { id, tenant, secret_hash, scopes, description, create_time, revoke_time }
}

/// The token of a page of one partition clustered by id, and its LIMIT (one extra row says "more").
pub(super) fn keyset(page: &PageRequest) -> (String, i32) {
    (page.token.clone().unwrap_or_default(), page.size as i32 + 1)
}

/// The year of a time-ordered (UUIDv7) id; `None` for an id that is not one.
fn year_of_id(id: &str) -> Option<i32> {
    let uuid = uuid::Uuid::parse_str(id).ok()?;
    let (seconds, _) = uuid.get_timestamp()?.to_unix();
    Some(jiff::Timestamp::from_second(seconds as i64).ok()?.to_zoned_datetime(jiff::tz::TimeZone::UTC).year() as i32)
}

impl ScyllaStore {
    /// The resource an earlier request with this id created.
    pub(super) async fn remembered(
        &self,
        tenant: &str,
        request_id: &Option<String>,
        kind: &str,
    ) -> Result<Option<String>> {
        let Some(request_id) = request_id else { return Ok(None) };
        let row: Option<(String,)> = self.one(&self.st().idempotency_get, (tenant, request_id, kind)).await?;
        Ok(row.map(|(id,)| id))
    }

    pub(super) async fn remember(&self, tenant: &str, request_id: &Option<String>, kind: &str, id: &str) -> Result<()> {
        if let Some(request_id) = request_id {
            self.exec(&self.st().idempotency_insert, (tenant, request_id, kind, id, now_millis())).await?;
        }
        Ok(())
    }

    /// Ids of the tenants created with `create_tenant`.
    pub(super) async fn tenant_ids(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = self.scan(&self.st().tenant_index_scan, ()).await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Every tenant that has keys, so has sealed data (including ones no
    /// `create_tenant` made, and `""` for unattributed feedback).
    pub(super) async fn key_tenants(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = self.scan(&self.st().key_tenant_scan, ()).await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    pub(super) async fn get_list_row(&self, tenant: &str, id: &str) -> Result<Option<MailingList>> {
        Ok(self.one::<ListRow>(&self.st().list_get, (tenant, id)).await?.map(list_from))
    }

    /// Every suppression (every scope) of one blind index.
    pub(super) async fn suppression_rows(&self, tenant: &str, hash: &str) -> Result<Vec<SuppressionRow>> {
        let rows: Vec<NullableSuppression> = self.rows(&self.st().suppressions_of, (tenant, hash)).await?;
        Ok(rows.into_iter().filter_map(complete_suppression).collect())
    }

    pub(super) async fn suppression_row(
        &self,
        tenant: &str,
        hash: &str,
        list_id: &str,
    ) -> Result<Option<SuppressionRow>> {
        let row: Option<NullableSuppression> = self.one(&self.st().suppression_get, (tenant, hash, list_id)).await?;
        Ok(row.and_then(complete_suppression))
    }

    async fn open_suppression(&self, tenant: &str, row: SuppressionRow) -> Result<Suppression> {
        let (email_hash, list_id, sealed, reason, create_time) = row;
        let keys = self.keys(tenant, crate::crypto::TenantKeys::key_id_of(&sealed)).await?;
        let (reason, detail) = Suppression::parse_stored_reason(&reason);
        Ok(Suppression {
            tenant: tenant.to_owned(),
            email_hash,
            list_id,
            target: open_text(&keys, &sealed)?,
            reason,
            detail,
            create_time,
        })
    }

    /// Every suppression whose blind index is one of `hashes`.
    pub(super) async fn suppressions_by_hash(&self, tenant: &str, hashes: &[String]) -> Result<Vec<Suppression>> {
        let mut found = Vec::new();
        for hash in hashes.iter().filter(|h| !h.is_empty()) {
            let rows = self.suppression_rows(tenant, hash).await?;
            for row in rows {
                found.push(self.open_suppression(tenant, row).await?);
            }
        }
        Ok(found)
    }

    /// Writes a suppression row and its index entry.
    pub(super) async fn put_suppression(
        &self,
        tenant: &str,
        hash: &str,
        list_id: &str,
        sealed: Vec<u8>,
        reason: &str,
        create_time: i64,
    ) -> Result<()> {
        self.exec(&self.st().suppression_upsert, (tenant, hash, list_id, sealed, reason, create_time)).await?;
        self.exec(&self.st().suppression_index_insert, (tenant, bucket_of(hash, BUCKETS), hash, list_id)).await
    }
}

#[async_trait]
impl AccessStore for ScyllaStore {
    async fn create_tenant(&self, tenant: Tenant) -> Result<Tenant> {
        let values = (&tenant.id, &tenant.display_name, tenant.create_time, tenant.allow_transactional);
        if !self.lwt(&self.st().tenant_insert, values).await?.applied {
            return Err(StoreError::Conflict(format!("tenant {:?} already exists", tenant.id)));
        }
        self.exec(&self.st().tenant_index_insert, (&tenant.id,)).await?;
        Ok(tenant)
    }

    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>> {
        let row: Option<(String, String, i64, bool)> = self.one(&self.st().tenant_get, (id,)).await?;
        Ok(row.map(|(id, display_name, create_time, allow_transactional)| Tenant {
            id,
            display_name,
            create_time,
            allow_transactional,
        }))
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        let mut tenants = Vec::new();
        for id in self.tenant_ids().await? {
            // An index entry whose tenant insert lost its race has no row: skip it.
            if let Some(tenant) = self.get_tenant(&id).await? {
                tenants.push(tenant);
            }
        }
        Ok(tenants)
    }

    async fn create_api_key(&self, key: ApiKey) -> Result<()> {
        if self.get_tenant(&key.tenant).await?.is_none() {
            return Err(StoreError::NotFound(format!("tenant {:?}", key.tenant)));
        }
        let scopes: Vec<&str> = key.scopes.iter().map(|s| s.as_str()).collect();
        let values = (&key.id, &key.tenant, &key.secret_hash, scopes.join(","), &key.description, key.create_time);
        self.exec(&self.st().api_key_insert, values).await?;
        self.exec(&self.st().api_key_index_insert, (&key.tenant, &key.id)).await
    }

    async fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKey>> {
        Ok(self.one::<KeyRow>(&self.st().api_key_get, (key_id,)).await?.map(key_from))
    }

    async fn list_api_keys(&self, tenant: &str) -> Result<Vec<ApiKey>> {
        let ids: Vec<(String,)> = self.scan(&self.st().api_keys_of_tenant, (tenant,)).await?;
        let keys = self.each(ids, |(id,)| async move { self.get_api_key(&id).await }).await?;
        Ok(keys.into_iter().flatten().filter(|key| key.tenant == tenant).collect())
    }

    async fn set_allow_transactional(&self, tenant: &str, allowed: bool) -> Result<bool> {
        Ok(self.lwt(&self.st().tenant_set_transactional, (allowed, tenant)).await?.applied)
    }

    async fn revoke_api_key(&self, tenant: &str, key_id: &str) -> Result<bool> {
        match self.get_api_key(key_id).await? {
            Some(key) if key.tenant == tenant && key.revoke_time == 0 => {
                self.exec(&self.st().api_key_revoke, (now_millis(), key_id)).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[async_trait]
impl AuditLog for ScyllaStore {
    async fn append_audit(&self, entry: AuditEntry) -> Result<()> {
        let year = year_of_id(&entry.id)
            .unwrap_or_else(|| jiff::Timestamp::now().to_zoned_datetime(jiff::tz::TimeZone::UTC).year() as i32);
        self.exec(&self.st().audit_year_insert, (&entry.tenant, year)).await?;
        let values = (
            &entry.tenant,
            year,
            &entry.id,
            entry.time,
            &entry.actor,
            &entry.action,
            &entry.resource,
            &entry.detail,
            &entry.source,
        );
        self.exec(&self.st().audit_insert, values).await
    }

    async fn list_audit(&self, tenant: &str, page: PageRequest) -> Result<Page<AuditEntry>> {
        let (token, _) = keyset(&page);
        let from_year = year_of_id(&token);
        let years: Vec<(i32,)> = self.scan(&self.st().audit_years, (tenant,)).await?;
        let mut items = Vec::new();
        for (year,) in years.into_iter().filter(|(y,)| from_year.is_none_or(|from| *y >= from)) {
            let after = if from_year == Some(year) { token.as_str() } else { "" };
            let want = (page.size + 1 - items.len()) as i32;
            let rows: Vec<AuditRow> = self.rows(&self.st().audit_page, (tenant, year, after, want)).await?;
            items.extend(rows.into_iter().map(|(tenant, id, time, actor, action, resource, detail, source)| {
                AuditEntry { tenant, id, time, actor, action, resource, detail, source }
            }));
            if items.len() > page.size {
                break;
            }
        }
        Ok(page_of(items, page.size, |entry| &entry.id))
    }
}

#[async_trait]
impl ListStore for ScyllaStore {
    async fn create_list(&self, list: MailingList, request_id: Option<String>) -> Result<MailingList> {
        if let Some(id) = self.remembered(&list.tenant, &request_id, "list").await? {
            return self
                .get_list_row(&list.tenant, &id)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("lists/{id}")));
        }
        let values =
            (&list.tenant, &list.id, &list.display_name, &list.description, list.opt_in as i32, list.create_time);
        self.exec(&self.st().list_insert, values).await?;
        self.remember(&list.tenant, &request_id, "list", &list.id).await?;
        Ok(list)
    }

    async fn get_list(&self, tenant: &str, list_id: &str) -> Result<Option<MailingList>> {
        self.get_list_row(tenant, list_id).await
    }

    async fn list_lists(&self, tenant: &str, page: PageRequest) -> Result<Page<MailingList>> {
        let (token, limit) = keyset(&page);
        let rows: Vec<ListRow> = self.rows(&self.st().list_page, (tenant, token, limit)).await?;
        Ok(page_of(rows.into_iter().map(list_from).collect(), page.size, |l| &l.id))
    }

    async fn delete_list(&self, tenant: &str, list_id: &str) -> Result<bool> {
        if self.get_list_row(tenant, list_id).await?.is_none() {
            return Ok(false);
        }
        // The list row goes first: a crash part-way leaves members of a
        // list that no longer exists, which nothing reads, and a re-run of
        // the delete (or a new list of that id) starts from a clean row.
        self.exec(&self.st().list_delete, (tenant, list_id)).await?;
        for bucket in 0..BUCKETS as i32 {
            let mut after = String::new();
            loop {
                let rows: Vec<(String, i32)> =
                    self.rows(&self.st().member_page, (tenant, list_id, bucket, &after, 1000)).await?;
                let Some((last, _)) = rows.last().cloned() else { break };
                self.each(rows, |(subscriber, _)| async move {
                    self.exec(&self.st().membership_delete, (tenant, subscriber, list_id)).await
                })
                .await?;
                after = last;
            }
            self.exec(&self.st().member_bucket_delete, (tenant, list_id, bucket)).await?;
        }
        Ok(true)
    }
}

#[async_trait]
impl SegmentStore for ScyllaStore {
    async fn create_segment(&self, segment: Segment, request_id: Option<String>) -> Result<Segment> {
        if let Some(id) = self.remembered(&segment.tenant, &request_id, "segment").await? {
            return self
                .get_segment(&segment.tenant, &id)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("segments/{id}")));
        }
        let values = (&segment.tenant, &segment.id, &segment.display_name, &segment.rule, segment.create_time);
        self.exec(&self.st().segment_insert, values).await?;
        self.remember(&segment.tenant, &request_id, "segment", &segment.id).await?;
        Ok(segment)
    }

    async fn get_segment(&self, tenant: &str, segment_id: &str) -> Result<Option<Segment>> {
        Ok(self.one::<SegmentRow>(&self.st().segment_get, (tenant, segment_id)).await?.map(segment_from))
    }

    async fn list_segments(&self, tenant: &str, page: PageRequest) -> Result<Page<Segment>> {
        let (token, limit) = keyset(&page);
        let rows: Vec<SegmentRow> = self.rows(&self.st().segment_page, (tenant, token, limit)).await?;
        Ok(page_of(rows.into_iter().map(segment_from).collect(), page.size, |s| &s.id))
    }

    async fn delete_segment(&self, tenant: &str, segment_id: &str) -> Result<bool> {
        if self.get_segment(tenant, segment_id).await?.is_none() {
            return Ok(false);
        }
        self.exec(&self.st().segment_delete, (tenant, segment_id)).await?;
        Ok(true)
    }
}

#[async_trait]
impl SuppressionStore for ScyllaStore {
    async fn add_suppression(&self, suppression: Suppression) -> Result<Suppression> {
        let tenant = suppression.tenant.as_str();
        let keys = self.keys(tenant, None).await?;
        let hash = email_key(&keys, &suppression.target);
        let existing = self.suppression_row(tenant, &hash, &suppression.list_id).await?;
        // An erased address stays anonymous: a new suppression of it does not store it again.
        let sealed = match &existing {
            Some((_, _, sealed, reason, _)) if reason == "erased" => sealed.clone(),
            _ => seal_text(&keys, &suppression.target),
        };
        let reason = suppression.stored_reason();
        self.put_suppression(tenant, &hash, &suppression.list_id, sealed.clone(), &reason, suppression.create_time)
            .await?;
        let row = (hash, suppression.list_id.clone(), sealed, reason, suppression.create_time);
        self.open_suppression(tenant, row).await
    }

    async fn remove_suppression(&self, tenant: &str, target: &str, list_id: &str) -> Result<bool> {
        let hash = email_key(&*self.keys(tenant, None).await?, target);
        if self.suppression_row(tenant, &hash, list_id).await?.is_none() {
            return Ok(false);
        }
        self.exec(&self.st().suppression_delete, (tenant, &hash, list_id)).await?;
        self.exec(&self.st().suppression_index_delete, (tenant, bucket_of(&hash, BUCKETS), &hash, list_id)).await?;
        Ok(true)
    }

    async fn list_suppressions(&self, tenant: &str, page: PageRequest) -> Result<Page<Suppression>> {
        // The token is `hash/list`, the last row of the previous page; buckets in order.
        let token = page.token.clone().unwrap_or_default();
        let (after_hash, after_list) = token.split_once('/').unwrap_or((&token, ""));
        let first_bucket = if after_hash.is_empty() { 0 } else { bucket_of(after_hash, BUCKETS) };
        let mut rows: Vec<(String, String)> = Vec::new();
        for bucket in first_bucket..BUCKETS as i32 {
            let (hash, list) = if bucket == first_bucket { (after_hash, after_list) } else { ("", "") };
            let want = (page.size + 1 - rows.len()) as i32;
            let found: Vec<(String, String)> =
                self.rows(&self.st().suppression_index_page, (tenant, bucket, hash, list, want)).await?;
            rows.extend(found);
            if rows.len() > page.size {
                break;
            }
        }
        let more = rows.len() > page.size;
        rows.truncate(page.size);
        let next_token = more.then(|| rows.last().map(|(h, l)| format!("{h}/{l}"))).flatten();
        let mut items = Vec::with_capacity(rows.len());
        for (hash, list_id) in rows {
            // An index entry whose suppression was removed meanwhile is skipped.
            if let Some(row) = self.suppression_row(tenant, &hash, &list_id).await? {
                items.push(self.open_suppression(tenant, row).await?);
            }
        }
        Ok(Page { items, next_token })
    }

    async fn suppressions_for(&self, tenant: &str, targets: Vec<String>) -> Result<Vec<Suppression>> {
        let keys = self.keys(tenant, None).await?;
        let hashes: Vec<String> = targets.iter().map(|target| email_key(&keys, target)).collect();
        self.suppressions_by_hash(tenant, &hashes).await
    }
}
