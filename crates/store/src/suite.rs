//! The behaviour every store backend must have, written once and run against
//! each backend (SQLite here; ScyllaDB when a node is given).

use std::time::Duration;

use crate::*;

fn list(tenant: &str, id: &str) -> MailingList {
    MailingList {
        tenant: tenant.into(),
        id: id.into(),
        display_name: format!("List {id}"),
        description: String::new(),
        opt_in: OptIn::Single,
        create_time: now_millis(),
    }
}

fn subscriber(tenant: &str, email: &str, lists: &[&str]) -> Subscriber {
    Subscriber {
        tenant: tenant.into(),
        id: new_id(),
        email: email.into(),
        display_name: "Ada".into(),
        attributes: serde_json::Map::new(),
        status: SubscriberStatus::Active,
        lists: lists.iter().map(|s| s.to_string()).collect(),
        subscriptions: Vec::new(),
        create_time: 0,
        update_time: 0,
    }
}

fn campaign(tenant: &str, list_id: &str) -> Campaign {
    Campaign {
        tenant: tenant.into(),
        id: new_id(),
        display_name: "c".into(),
        template_id: "t".into(),
        template_version: 1,
        list_id: list_id.into(),
        from_address: "a@example.com".into(),
        from_name: String::new(),
        reply_to: String::new(),
        max_messages_per_second: 0.0,
        stream: "marketing".into(),
        postal_address: "1 Main St, Springfield".into(),
        send_at: 0,
        send_window: "09:00-17:00 Europe/Paris".into(),
        segment_id: String::new(),
        state: CampaignState::Draft,
        stats: CampaignStats::default(),
        fanout_cursor: String::new(),
        fanout_done: false,
        create_time: now_millis(),
        start_time: 0,
        complete_time: 0,
        progress_time: 0,
    }
}

fn opts() -> UpsertOptions {
    UpsertOptions { consent: ConsentContext { source: "test".into(), ..Default::default() }, ..Default::default() }
}

/// Creating with the same request id twice returns the first resource.
pub async fn idempotent_creates(store: &dyn Store) {
    let first = store.create_list(list("t1", "l1"), Some("req-1".into())).await.unwrap();
    let again = store.create_list(list("t1", "l2"), Some("req-1".into())).await.unwrap();
    assert_eq!(again.id, first.id);
    assert!(store.get_list("t1", "l2").await.unwrap().is_none(), "the retry must not create a second list");
}

/// Subscribers are unique by normalized email; an unknown list writes nothing.
pub async fn upsert_by_email_and_no_partial_write(store: &dyn Store) {
    store.create_list(list("t2", "l1"), None).await.unwrap();
    let a = store.upsert_subscriber(subscriber("t2", "Ada@Example.com", &["l1"]), opts(), None).await.unwrap();
    assert!(a.created);
    let b = store.upsert_subscriber(subscriber("t2", " ada@example.COM ", &[]), opts(), None).await.unwrap();
    assert!(!b.created);
    assert_eq!(a.subscriber.id, b.subscriber.id);
    let b = b.subscriber;
    assert_eq!(b.lists, vec!["l1".to_string()]);
    let error = store
        .upsert_subscriber(subscriber("t2", "new@example.com", &["l1", "missing"]), opts(), None)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotFound(ref what) if what.contains("missing")), "{error}");
    let all = store.list_subscribers("t2", PageRequest::new(100, "")).await.unwrap();
    assert_eq!(all.items.len(), 1, "the failed upsert must leave nothing behind");
}

/// Keyset paging visits every member exactly once.
pub async fn paging_visits_each_member_once(store: &dyn Store) {
    store.create_list(list("t3", "l1"), None).await.unwrap();
    for i in 0..25 {
        store.upsert_subscriber(subscriber("t3", &format!("s{i}@example.com"), &["l1"]), opts(), None).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = store.list_members("t3", "l1", true, PageRequest::new(10, &token)).await.unwrap();
        assert!(page.items.len() <= 10);
        seen.extend(page.items.into_iter().map(|s| s.email));
        match page.next_token {
            Some(next) => token = next,
            None => break,
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 25);
}

/// Claims are insert-if-absent with a lease; finished claims are never handed out again.
pub async fn send_ledger_claims(store: &dyn Store) {
    let lease = Duration::from_secs(60);
    assert_eq!(store.claim("c1", "s1", "a", lease).await.unwrap(), Claim::Acquired { takeover: false });
    assert!(
        matches!(store.claim("c1", "s1", "b", lease).await.unwrap(), Claim::Held { ref owner, .. } if owner == "a")
    );
    // The same owner (restarted) may take its own claim over.
    assert_eq!(store.claim("c1", "s1", "a", lease).await.unwrap(), Claim::Acquired { takeover: true });
    assert!(matches!(store.finish("c1", "s1", "b", LedgerState::Sent, "<m>").await, Err(StoreError::Conflict(_))));
    store.finish("c1", "s1", "a", LedgerState::Sent, "<m>").await.unwrap();
    assert_eq!(
        store.claim("c1", "s1", "b", lease).await.unwrap(),
        Claim::Finished { state: LedgerState::Sent, message_id: "<m>".into() }
    );
    // An expired lease can be taken over by anyone.
    assert_eq!(store.claim("c1", "s2", "a", Duration::ZERO).await.unwrap(), Claim::Acquired { takeover: false });
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.claim("c1", "s2", "b", lease).await.unwrap(), Claim::Acquired { takeover: true });
    // A released claim starts fresh.
    store.release("c1", "s2", "b").await.unwrap();
    assert_eq!(store.claim("c1", "s2", "a", lease).await.unwrap(), Claim::Acquired { takeover: false });
}

/// Outcomes count once per recipient and complete the campaign exactly once.
pub async fn outcomes_count_once_and_complete(store: &dyn Store) {
    store.create_list(list("t4", "l1"), None).await.unwrap();
    let created = store.create_campaign(campaign("t4", "l1"), None).await.unwrap();
    let id = created.id.clone();
    assert!(
        store
            .transition_campaign("t4", &id, &[CampaignState::Sending], CampaignState::Completed)
            .await
            .unwrap()
            .is_none()
    );
    store.transition_campaign("t4", &id, &[CampaignState::Draft], CampaignState::Sending).await.unwrap().unwrap();
    store.save_fanout("t4", &id, "s1", 1, false).await.unwrap();
    let first = store.record_outcome("t4", &id, "s1", Outcome::Delivered).await.unwrap();
    assert_eq!(first, OutcomeRecorded { recorded: true, completed_campaign: false }, "fan-out not done yet");
    let repeat = store.record_outcome("t4", &id, "s1", Outcome::Delivered).await.unwrap();
    assert!(!repeat.recorded);
    let missing = store.without_outcome(&id, &["s1".into(), "s2".into()]).await.unwrap();
    assert_eq!(missing, vec!["s2".to_string()]);
    assert!(!store.recount_outcomes("t4", &id).await.unwrap(), "a recount completes nothing while one is missing");
    store.record_outcome("t4", &id, "s2", Outcome::Failed).await.unwrap();
    let done = store.save_fanout("t4", &id, "s2", 1, true).await.unwrap();
    assert_eq!(done.state, CampaignState::Completed);
    assert_eq!((done.stats.recipients, done.stats.delivered, done.stats.failed), (2, 1, 1));
    assert!(!store.recount_outcomes("t4", &id).await.unwrap(), "completed already");
    let recounted = store.get_campaign("t4", &id).await.unwrap().unwrap();
    assert_eq!((recounted.stats.delivered, recounted.stats.failed), (1, 1), "a recount never counts twice");
}

/// Only active, confirmed, unsuppressed members are sendable; double opt-in
/// waits for confirmation; every consent action is in the ledger.
pub async fn sendable_members_and_consent(store: &dyn Store) {
    store.create_list(list("t5", "single"), None).await.unwrap();
    store.create_list(MailingList { opt_in: OptIn::Double, ..list("t5", "double") }, None).await.unwrap();
    let mut ids = Vec::new();
    for name in ["ok", "unsub", "bounced", "suppressed", "listsup", "domain"] {
        let email = if name == "domain" { "x@blocked.example".to_string() } else { format!("{name}@example.com") };
        let up = store.upsert_subscriber(subscriber("t5", &email, &["single"]), opts(), None).await.unwrap();
        ids.push(up.subscriber.id);
    }
    let consent = ConsentContext { source: "link".into(), ip: "192.0.2.1".into(), user_agent: "UA".into() };
    store.set_subscription("t5", &ids[1], "single", SubscriptionStatus::Unsubscribed, consent.clone()).await.unwrap();
    let update = SubscriberUpdate { status: Some(SubscriberStatus::Bounced), ..Default::default() };
    store.update_subscriber("t5", &ids[2], update).await.unwrap().unwrap();
    for (target, list_id) in
        [("suppressed@example.com", ""), ("listsup@example.com", "single"), ("@blocked.example", "")]
    {
        store
            .add_suppression(Suppression {
                tenant: "t5".into(),
                email_hash: String::new(),
                list_id: list_id.into(),
                target: target.into(),
                reason: SuppressionReason::Manual,
                detail: String::new(),
                create_time: now_millis(),
            })
            .await
            .unwrap();
    }
    let sendable = store.list_members("t5", "single", true, PageRequest::new(100, "")).await.unwrap();
    let emails: Vec<_> = sendable.items.iter().map(|s| s.email.as_str()).collect();
    assert_eq!(emails, vec!["ok@example.com"]);
    for (index, id) in ids.iter().enumerate() {
        assert_eq!(store.is_sendable("t5", id, "single").await.unwrap(), index == 0, "subscriber {index}");
    }
    assert!(!store.is_sendable("t5", &ids[0], "double").await.unwrap(), "not a member");
    assert_eq!(store.list_members("t5", "single", false, PageRequest::new(100, "")).await.unwrap().items.len(), 6);

    let double = store.upsert_subscriber(subscriber("t5", "ok@example.com", &["double"]), opts(), None).await.unwrap();
    assert_eq!(double.pending_confirmation, vec!["double".to_string()]);
    assert!(store.list_members("t5", "double", true, PageRequest::new(100, "")).await.unwrap().items.is_empty());
    store.set_subscription("t5", &ids[0], "double", SubscriptionStatus::Confirmed, consent.clone()).await.unwrap();
    assert_eq!(store.list_members("t5", "double", true, PageRequest::new(100, "")).await.unwrap().items.len(), 1);
    let actions: Vec<_> =
        store.consent_records("t5", &ids[0]).await.unwrap().iter().map(|r| (r.action, r.list_id.clone())).collect();
    assert_eq!(
        actions,
        vec![
            (ConsentAction::Subscribe, "single".into()),
            (ConsentAction::Subscribe, "double".into()),
            (ConsentAction::Confirm, "double".into())
        ]
    );
    // An import (no resubscribe) never brings back someone who unsubscribed.
    let again =
        store.upsert_subscriber(subscriber("t5", "unsub@example.com", &["single"]), opts(), None).await.unwrap();
    assert_eq!(again.subscriber.subscriptions[0].status, SubscriptionStatus::Unsubscribed);
    assert!(store.remove_suppression("t5", "@Blocked.Example", "").await.unwrap());
    assert_eq!(store.list_members("t5", "single", true, PageRequest::new(100, "")).await.unwrap().items.len(), 2);
}

/// Export holds everything; erasure leaves only a suppression by hash.
pub async fn export_and_erase(store: &dyn Store) {
    store.create_list(list("t6", "l1"), None).await.unwrap();
    let up = store.upsert_subscriber(subscriber("t6", "Erase.Me@Example.com", &["l1"]), opts(), None).await.unwrap();
    let id = up.subscriber.id.clone();
    store.claim("c9", &id, "s", Duration::from_secs(60)).await.unwrap();
    let export = store.export_subscriber("t6", &id).await.unwrap().unwrap();
    assert_eq!(export.subscriber.email, "Erase.Me@Example.com");
    assert_eq!(export.consent.len(), 1);
    assert_eq!(export.deliveries.len(), 1);
    let hash = store.erase_subscriber("t6", &id).await.unwrap().unwrap();
    let before = store.suppressions_for("t6", vec!["erase.me@example.com".into()]).await.unwrap();
    assert_eq!(before[0].email_hash, hash, "the erasure suppression is keyed by the address's blind index");
    assert!(store.get_subscriber("t6", &id).await.unwrap().is_none());
    assert!(store.find_subscriber("t6", "erase.me@example.com").await.unwrap().is_none());
    assert!(store.consent_records("t6", &id).await.unwrap().is_empty());
    let left = store.suppressions_for("t6", vec!["Erase.Me@example.com".into()]).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!((left[0].reason, left[0].target.as_str()), (SuppressionReason::Erased, ""));
    assert!(store.erase_subscriber("t6", &id).await.unwrap().is_none());
}

/// Imports commit per batch and record resumable progress.
pub async fn import_batches_record_progress(store: &dyn Store) {
    store.create_list(list("t7", "l1"), None).await.unwrap();
    let rows: Vec<ImportRow> = (0..3)
        .map(|i| ImportRow { line: i + 2, subscriber: subscriber("t7", &format!("i{i}@example.com"), &["l1"]) })
        .collect();
    let job = ImportJob { request_id: "imp-1".into(), list_id: "l1".into(), lines_done: 4, ..Default::default() };
    let (done, job) = store.import_batch("t7", job, rows.clone(), opts()).await.unwrap();
    assert_eq!(done.len(), 3);
    assert_eq!(job.imported, 3);
    assert_eq!(store.import_job("t7", "imp-1").await.unwrap().unwrap(), job);
    let skip = UpsertOptions { mode: UpsertMode::SkipExisting, ..opts() };
    let fresh: Vec<ImportRow> = rows
        .iter()
        .map(|r| ImportRow { line: r.line, subscriber: Subscriber { id: new_id(), ..r.subscriber.clone() } })
        .collect();
    let (_, job) = store.import_batch("t7", ImportJob { request_id: String::new(), ..job }, fresh, skip).await.unwrap();
    assert_eq!((job.imported, job.skipped), (3, 3));
    let existing =
        store.existing_emails("t7", vec!["I0@example.com".into(), "nobody@example.com".into()]).await.unwrap();
    assert_eq!(existing.into_iter().collect::<Vec<_>>(), vec!["i0@example.com".to_string()]);
    let error = store
        .import_batch("t7", ImportJob { list_id: "nope".into(), ..Default::default() }, rows, opts())
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotFound(_)));
}

/// Tenants and keys: ids are unique, revocation sticks.
pub async fn tenants_and_keys(store: &dyn Store) {
    let tenant = Tenant {
        id: "acme".into(),
        display_name: "Acme".into(),
        create_time: now_millis(),
        allow_transactional: false,
    };
    store.create_tenant(tenant.clone()).await.unwrap();
    assert!(matches!(store.create_tenant(tenant).await, Err(StoreError::Conflict(_))));
    assert!(store.set_allow_transactional("acme", true).await.unwrap());
    assert!(store.get_tenant("acme").await.unwrap().unwrap().allow_transactional);
    assert!(!store.set_allow_transactional("nobody", true).await.unwrap());
    let key = ApiKey {
        id: "k1".into(),
        tenant: "acme".into(),
        secret_hash: vec![1, 2, 3],
        scopes: vec![Scope::Read, Scope::CampaignsWrite],
        description: "ci".into(),
        create_time: now_millis(),
        revoke_time: 0,
    };
    store.create_api_key(key.clone()).await.unwrap();
    assert_eq!(store.get_api_key("k1").await.unwrap().unwrap(), key);
    let orphan = ApiKey { id: "k2".into(), tenant: "nobody".into(), ..key };
    assert!(matches!(store.create_api_key(orphan).await, Err(StoreError::NotFound(_))));
    assert!(!store.revoke_api_key("other", "k1").await.unwrap(), "another tenant cannot revoke it");
    assert!(store.revoke_api_key("acme", "k1").await.unwrap());
    assert!(store.get_api_key("k1").await.unwrap().unwrap().revoke_time > 0);
    assert_eq!(store.list_api_keys("acme").await.unwrap().len(), 1);
}

/// A data key rotation leaves old rows readable; re-encryption moves them.
pub async fn data_key_rotation(store: &dyn Store) {
    store.create_list(list("t8", "l1"), None).await.unwrap();
    let old = store.upsert_subscriber(subscriber("t8", "old@example.com", &["l1"]), opts(), None).await.unwrap();
    let first = store.rotate_data_key("t8").await.unwrap();
    let new = store.upsert_subscriber(subscriber("t8", "new@example.com", &["l1"]), opts(), None).await.unwrap();
    for (id, email) in [(&old.subscriber.id, "old@example.com"), (&new.subscriber.id, "new@example.com")] {
        assert_eq!(store.get_subscriber("t8", id).await.unwrap().unwrap().email, email);
    }
    assert!(store.find_subscriber("t8", "OLD@example.com").await.unwrap().is_some(), "blind index survives rotation");
    let second = store.rotate_data_key("t8").await.unwrap();
    assert_ne!(first, second);
    let mut moved = 0;
    loop {
        let batch = store.reencrypt("t8", 1).await.unwrap();
        if batch == 0 {
            break;
        }
        moved += batch;
    }
    // Consent records move too where they hold a sealed client context (the
    // embedded store seals none when, as here, there is no address or agent).
    assert!(moved >= 2, "both subscribers move to the new key, moved {moved}");
    assert_eq!(store.reencrypt("t8", 100).await.unwrap(), 0);
    assert_eq!(store.get_subscriber("t8", &old.subscriber.id).await.unwrap().unwrap().email, "old@example.com");
    assert_eq!(store.consent_records("t8", &old.subscriber.id).await.unwrap().len(), 1);
}

/// Feedback records page newest first, filter by kind, keep the raw message
/// intact, are erased with their subscriber; engagement counts once;
/// bounce scores decay.
pub async fn feedback_records_scores_and_engagement(store: &dyn Store) {
    store.create_list(list("t9", "l1"), None).await.unwrap();
    let up = store.upsert_subscriber(subscriber("t9", "fb@example.com", &["l1"]), opts(), None).await.unwrap();
    let id = up.subscriber.id.clone();
    let raw: Vec<u8> = (0..50_000u32).flat_map(|i| format!("line {i}\r\n").into_bytes()).collect();
    for (index, kind) in ["bounce", "complaint", "bounce"].into_iter().enumerate() {
        let record = FeedbackRecord {
            tenant: "t9".into(),
            id: new_id(),
            time: now_millis() - 1000 + index as i64,
            kind: kind.into(),
            subscriber_id: id.clone(),
            class: "hard".into(),
            diagnostic: format!("550 5.1.1 no such user {index}"),
            raw: raw.clone(),
            ..Default::default()
        };
        store.insert_feedback(record).await.unwrap();
    }
    let first = store.list_feedback("t9", None, false, PageRequest { size: 2, token: None }).await.unwrap();
    assert_eq!(first.items.len(), 2);
    assert!(first.items[0].id > first.items[1].id, "newest first");
    assert!(first.items[0].raw.is_empty(), "raw only when asked");
    let rest = store.list_feedback("t9", None, true, PageRequest { size: 2, token: first.next_token }).await.unwrap();
    assert_eq!((rest.items.len(), rest.next_token), (1, None));
    assert_eq!(rest.items[0].raw, raw);
    assert_eq!(rest.items[0].diagnostic, "550 5.1.1 no such user 0");
    let bounces = store.list_feedback("t9", Some("bounce".into()), false, PageRequest::new(0, "")).await.unwrap();
    assert_eq!(bounces.items.len(), 2);
    let mut changed = bounces.items[0].clone();
    changed.verdict = "suppressed".into();
    assert!(store.update_feedback_verdict(changed).await.unwrap());
    let again = store.list_feedback("t9", Some("bounce".into()), false, PageRequest::new(0, "")).await.unwrap();
    assert_eq!(again.items[0].verdict, "suppressed");

    assert_eq!(store.add_bounce_score("t9", &id, 1.0, 3_600_000).await.unwrap(), 1.0);
    let second = store.add_bounce_score("t9", &id, 1.0, 3_600_000).await.unwrap();
    assert!(second > 1.99 && second <= 2.0, "barely decayed: {second}");
    let fast = store.add_bounce_score("t9", "other", 1.0, 1).await.unwrap();
    assert_eq!(fast, 1.0);

    let campaign = store.create_campaign(campaign("t9", "l1"), None).await.unwrap();
    assert_eq!(store.campaign_tenant(&campaign.id).await.unwrap().as_deref(), Some("t9"));
    assert_eq!(store.campaign_tenant("nope").await.unwrap(), None);
    assert!(store.record_engagement("t9", &campaign.id, &id, Engagement::Opened).await.unwrap());
    assert!(!store.record_engagement("t9", &campaign.id, &id, Engagement::Opened).await.unwrap());
    assert!(store.record_engagement("t9", &campaign.id, &id, Engagement::Bounced).await.unwrap());
    let stats = store.get_campaign("t9", &campaign.id).await.unwrap().unwrap().stats;
    assert_eq!((stats.opened, stats.bounced, stats.clicked), (1, 1, 0));

    let export = store.export_subscriber("t9", &id).await.unwrap().unwrap();
    assert_eq!(export.feedback.len(), 3);
    store.erase_subscriber("t9", &id).await.unwrap();
    assert!(store.list_feedback("t9", None, false, PageRequest::new(0, "")).await.unwrap().items.is_empty());
    assert_eq!(store.add_bounce_score("t9", &id, 1.0, 3_600_000).await.unwrap(), 1.0, "erased with the subscriber");
    let old =
        FeedbackRecord { tenant: "t9".into(), id: new_id(), time: 1, kind: "bounce".into(), ..Default::default() };
    store.insert_feedback(old).await.unwrap();
    assert!(store.purge_feedback(now_millis() - 60_000).await.unwrap() >= 1);
}

/// Segments are kept per tenant, idempotent by request id; membership statuses page by subscriber.
pub async fn segments_and_member_statuses(store: &dyn Store) {
    let segment = Segment {
        tenant: "t10".into(),
        id: new_id(),
        display_name: "DE".into(),
        rule: "attributes.country = \"DE\"".into(),
        create_time: now_millis(),
    };
    let first = store.create_segment(segment.clone(), Some("r1".into())).await.unwrap();
    let again = Segment { id: new_id(), ..segment.clone() };
    assert_eq!(store.create_segment(again, Some("r1".into())).await.unwrap(), first, "same request id, same segment");
    assert_eq!(store.get_segment("t10", &first.id).await.unwrap().as_ref(), Some(&first));
    assert!(store.get_segment("other", &first.id).await.unwrap().is_none(), "tenants are isolated");
    assert_eq!(store.list_segments("t10", PageRequest::new(0, "")).await.unwrap().items.len(), 1);
    assert!(store.delete_segment("t10", &first.id).await.unwrap());
    assert!(!store.delete_segment("t10", &first.id).await.unwrap());

    store.create_list(list("t10", "l1"), None).await.unwrap();
    let mut ids = Vec::new();
    for n in 0..5 {
        let up = store
            .upsert_subscriber(subscriber("t10", &format!("m{n}@example.com"), &["l1"]), opts(), None)
            .await
            .unwrap();
        ids.push(up.subscriber.id);
    }
    ids.sort();
    let consent = ConsentContext { source: "test".into(), ..Default::default() };
    store.set_subscription("t10", &ids[1], "l1", SubscriptionStatus::Unsubscribed, consent).await.unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = store.member_statuses("t10", "l1", PageRequest::new(2, &token)).await.unwrap();
        seen.extend(page.items);
        match page.next_token {
            Some(next) => token = next,
            None => break,
        }
    }
    // Pages follow the backend's member order: cursors increase, each member once.
    let cursors: Vec<String> = seen.iter().map(|(id, _)| store.member_cursor(id)).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "pages follow member_cursor order: {cursors:?}");
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(seen.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), ids);
    assert_eq!(seen[1].1, SubscriptionStatus::Unsubscribed);
    assert_eq!(seen[0].1, SubscriptionStatus::Confirmed);
}

/// Behavioral events are idempotent by id (a first copy wins, unpublished
/// ones are handed out again), exported, erased with their subscriber, and
/// purged by event time.
pub async fn behavior_events(store: &dyn Store) {
    store.create_list(list("t-behavior", "l1"), None).await.unwrap();
    let id =
        store.upsert_subscriber(subscriber("t-behavior", "buyer@example.com", &["l1"]), opts(), None).await.unwrap();
    let id = id.subscriber.id;
    let event = |event_id: &str, time: i64, amount: f64| BehaviorEventRow {
        tenant: "t-behavior".into(),
        event_id: event_id.into(),
        subscriber_id: id.clone(),
        name: "purchase".into(),
        time,
        properties: serde_json::json!({"amount": amount, "sku": "BK-1"}).as_object().cloned().unwrap(),
    };
    let first = store.track_events(vec![event("e1", 1_000, 10.0), event("e2", 5_000, 20.0)]).await.unwrap();
    assert_eq!(first, vec![Tracked::New, Tracked::New]);
    store.mark_published("t-behavior", vec!["e1".into()]).await.unwrap();
    let again = store.track_events(vec![event("e1", 1_000, 99.0), event("e2", 5_000, 20.0), event("e3", 9_000, 1.0)]);
    assert_eq!(again.await.unwrap(), vec![Tracked::Duplicate, Tracked::Unpublished, Tracked::New]);
    let export = store.export_subscriber("t-behavior", &id).await.unwrap().unwrap();
    let ids: Vec<&str> = export.events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, ["e1", "e2", "e3"], "oldest first");
    assert_eq!(export.events[0].properties["amount"], 10.0, "the first copy wins");
    assert_eq!(store.purge_events(5_000).await.unwrap(), 1, "only e1 happened before 5000");
    assert_eq!(store.export_subscriber("t-behavior", &id).await.unwrap().unwrap().events.len(), 2);
    store.erase_subscriber("t-behavior", &id).await.unwrap().unwrap();
    // Erased: the ids are free again and nothing of theirs is purged later.
    assert_eq!(store.purge_events(i64::MAX).await.unwrap(), 0);
    assert_eq!(store.track_events(vec![event("e2", 5_000, 20.0)]).await.unwrap(), vec![Tracked::New]);
}

/// Pages of every size visit each row once; the last page says it is the
/// last; an empty list has one empty page.
pub async fn pagination_edges(store: &dyn Store) {
    store.create_list(list("t-pages", "full"), None).await.unwrap();
    store.create_list(list("t-pages", "empty"), None).await.unwrap();
    for i in 0..25 {
        let email = format!("p{i:02}@example.com");
        store.upsert_subscriber(subscriber("t-pages", &email, &["full"]), opts(), None).await.unwrap();
    }
    for size in [1, 7, 24, 25, 26, 1000] {
        let (mut members, mut subscribers, mut pages, mut order) = (Vec::new(), Vec::new(), 0, Vec::new());
        let mut token = String::new();
        loop {
            let page = store.list_members("t-pages", "full", true, PageRequest::new(size, &token)).await.unwrap();
            assert!(page.items.len() as i64 <= size, "page of {} with size {size}", page.items.len());
            pages += 1;
            members.extend(page.items.iter().map(|s| s.email.clone()));
            order.extend(page.items.into_iter().map(|s| s.id));
            match page.next_token {
                Some(next) => token = next,
                None => break,
            }
        }
        assert!(pages <= 25 / size + 1, "{pages} pages of {size} for 25 rows");
        let cursors: Vec<String> = order.iter().map(|id| store.member_cursor(id)).collect();
        assert!(cursors.windows(2).all(|w| w[0] < w[1]), "page size {size}: pages follow member_cursor order");
        // A fan-out resumes from a member's cursor: the page starts right after that member.
        let resumed = store.list_members("t-pages", "full", true, PageRequest::new(3, &cursors[9])).await.unwrap();
        assert_eq!(resumed.items.iter().map(|s| s.id.clone()).collect::<Vec<_>>(), order[10..13]);
        let mut token = String::new();
        loop {
            let page = store.list_subscribers("t-pages", PageRequest::new(size, &token)).await.unwrap();
            subscribers.extend(page.items.into_iter().map(|s| s.email));
            match page.next_token {
                Some(next) => token = next,
                None => break,
            }
        }
        for seen in [&mut members, &mut subscribers] {
            let count = seen.len();
            seen.sort();
            seen.dedup();
            assert_eq!((count, seen.len()), (25, 25), "page size {size}: each row exactly once");
        }
    }
    let empty = store.list_members("t-pages", "empty", true, PageRequest::new(10, "")).await.unwrap();
    assert!(empty.items.is_empty() && empty.next_token.is_none());
    let nobody = store.list_subscribers("t-pages-none", PageRequest::new(10, "")).await.unwrap();
    assert!(nobody.items.is_empty() && nobody.next_token.is_none());
}

/// Concurrent callers: of four claimers of one ledger entry exactly one
/// wins; four upserts of one new address (in different spellings) create
/// exactly one subscriber.
pub async fn races(store: &dyn Store) {
    let lease = Duration::from_secs(60);
    let (a, b, c, d) = tokio::join!(
        store.claim("c-race", "s1", "a", lease),
        store.claim("c-race", "s1", "b", lease),
        store.claim("c-race", "s1", "c", lease),
        store.claim("c-race", "s1", "d", lease),
    );
    let claims = [a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()];
    let won = claims.iter().filter(|c| **c == Claim::Acquired { takeover: false }).count();
    let held = claims.iter().filter(|c| matches!(c, Claim::Held { .. })).count();
    assert_eq!((won, held), (1, 3), "{claims:?}");

    store.create_list(list("t-race", "l1"), None).await.unwrap();
    let spellings = ["race@example.com", "Race@Example.com", " race@example.com", "RACE@EXAMPLE.COM"];
    let (a, b, c, d) = tokio::join!(
        store.upsert_subscriber(subscriber("t-race", spellings[0], &["l1"]), opts(), None),
        store.upsert_subscriber(subscriber("t-race", spellings[1], &["l1"]), opts(), None),
        store.upsert_subscriber(subscriber("t-race", spellings[2], &["l1"]), opts(), None),
        store.upsert_subscriber(subscriber("t-race", spellings[3], &["l1"]), opts(), None),
    );
    let results = [a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()];
    assert_eq!(results.iter().filter(|r| r.created).count(), 1, "exactly one creates");
    assert!(results.iter().all(|r| r.subscriber.id == results[0].subscriber.id), "all name the same subscriber");
    let all = store.list_subscribers("t-race", PageRequest::new(10, "")).await.unwrap();
    assert_eq!(all.items.len(), 1);
}

/// Everything else an operator or the API touches: list, template, campaign,
/// suppression, audit and tenant listings page each row once; a deleted list
/// takes its memberships with it; deferrals and progress are recorded; the
/// scheduler finds campaigns by state; re-wrapping with the current master
/// key has nothing to do.
pub async fn catalog_and_admin(store: &dyn Store) {
    let tenant =
        Tenant { id: "t-admin".into(), display_name: "Admin".into(), create_time: 1, allow_transactional: false };
    store.create_tenant(tenant).await.unwrap();
    assert!(store.list_tenants().await.unwrap().iter().any(|t| t.id == "t-admin"));
    for id in ["a", "b", "c"] {
        store.create_list(list("t-admin", id), None).await.unwrap();
    }
    let first = store.list_lists("t-admin", PageRequest::new(2, "")).await.unwrap();
    let rest = store.list_lists("t-admin", PageRequest::new(2, first.next_token.as_deref().unwrap())).await.unwrap();
    let ids: Vec<String> = first.items.iter().chain(&rest.items).map(|l| l.id.clone()).collect();
    assert_eq!((ids, rest.next_token), (vec!["a".into(), "b".into(), "c".into()], None));
    let member =
        store.upsert_subscriber(subscriber("t-admin", "m@example.com", &["a", "b"]), opts(), None).await.unwrap();
    assert!(store.delete_list("t-admin", "a").await.unwrap());
    assert!(!store.delete_list("t-admin", "a").await.unwrap(), "already gone");
    assert!(store.get_list("t-admin", "a").await.unwrap().is_none());
    assert!(store.list_members("t-admin", "a", false, PageRequest::new(10, "")).await.unwrap().items.is_empty());
    let left = store.get_subscriber("t-admin", &member.subscriber.id).await.unwrap().unwrap();
    assert_eq!(left.lists, vec!["b".to_string()], "the deleted list's membership went with it");

    let template = |id: &str| Template {
        tenant: "t-admin".into(),
        id: id.into(),
        version: 1,
        display_name: format!("T {id}"),
        subject: "Hi {{ name }}".into(),
        html_body: "<p>Hi</p>".into(),
        text_body: "Hi".into(),
        create_time: now_millis(),
    };
    let created = store.create_template(template("t1"), Some("tpl-1".into())).await.unwrap();
    assert_eq!(store.create_template(template("t2"), Some("tpl-1".into())).await.unwrap(), created, "same request id");
    store.create_template(template("t3"), None).await.unwrap();
    assert_eq!(store.get_template("t-admin", "t1").await.unwrap(), Some(created));
    let templates = store.list_templates("t-admin", PageRequest::new(10, "")).await.unwrap();
    assert_eq!(templates.items.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["t1", "t3"]);

    let mut campaigns = Vec::new();
    for _ in 0..3 {
        campaigns.push(store.create_campaign(campaign("t-admin", "b"), None).await.unwrap().id);
    }
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = store.list_campaigns("t-admin", PageRequest::new(2, &token)).await.unwrap();
        listed.extend(page.items.into_iter().map(|c| c.id));
        match page.next_token {
            Some(next) => token = next,
            None => break,
        }
    }
    assert_eq!(listed, campaigns, "every campaign once, by id");
    let sending = &campaigns[1];
    store
        .transition_campaign("t-admin", sending, &[CampaignState::Draft], CampaignState::Sending)
        .await
        .unwrap()
        .unwrap();
    let in_state = |state| async move { store.campaigns_in_state(state, 1000).await.unwrap() };
    assert!(in_state(CampaignState::Sending).await.iter().any(|c| &c.id == sending));
    assert!(!in_state(CampaignState::Draft).await.iter().any(|c| &c.id == sending));
    assert!(in_state(CampaignState::Draft).await.iter().any(|c| c.id == campaigns[0]));
    store.record_deferral("t-admin", sending).await.unwrap();
    store.record_deferral("t-admin", sending).await.unwrap();
    let deferred = store.get_campaign("t-admin", sending).await.unwrap().unwrap();
    assert_eq!(deferred.stats.deferred, 2);
    assert!(deferred.progress_time > 0, "a deferral is progress");
    let idle = store.get_campaign("t-admin", &campaigns[2]).await.unwrap().unwrap();
    assert_eq!(idle.progress_time, 0);
    store.touch_progress("t-admin", &campaigns[2]).await.unwrap();
    assert!(store.get_campaign("t-admin", &campaigns[2]).await.unwrap().unwrap().progress_time > 0);

    let mut targets: Vec<String> = (0..7).map(|i| format!("blocked{i}@example.com")).collect();
    targets.push("@spam.example".into());
    for target in &targets {
        let suppression = Suppression {
            tenant: "t-admin".into(),
            email_hash: String::new(),
            list_id: String::new(),
            target: target.clone(),
            // A bounce suppression keeps its bounce reason beside its own.
            reason: if target.starts_with('@') { SuppressionReason::HardBounce } else { SuppressionReason::Manual },
            detail: if target.starts_with('@') { "blocked".into() } else { String::new() },
            create_time: now_millis(),
        };
        store.add_suppression(suppression).await.unwrap();
    }
    let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = store.list_suppressions("t-admin", PageRequest::new(3, &token)).await.unwrap();
        assert!(page.items.len() <= 3);
        pages += 1;
        for item in &page.items {
            let expected = if item.target.starts_with('@') {
                (SuppressionReason::HardBounce, "blocked")
            } else {
                (SuppressionReason::Manual, "")
            };
            assert_eq!((item.reason, item.detail.as_str()), expected, "{item:?}");
        }
        seen.extend(page.items.into_iter().map(|s| s.target));
        match page.next_token {
            Some(next) => token = next,
            None => break,
        }
    }
    seen.sort();
    targets.sort();
    assert_eq!((seen, pages), (targets, 3), "each suppression once, three pages of at most three");

    let mut audited = Vec::new();
    for n in 0..5 {
        let entry = AuditEntry {
            tenant: "t-admin".into(),
            id: new_id(),
            time: now_millis(),
            actor: "cli".into(),
            action: "list.delete".into(),
            resource: format!("lists/{n}"),
            detail: "{}".into(),
            source: "cli".into(),
        };
        audited.push(entry.clone());
        store.append_audit(entry).await.unwrap();
    }
    let (mut read, mut token) = (Vec::new(), String::new());
    loop {
        let page = store.list_audit("t-admin", PageRequest::new(2, &token)).await.unwrap();
        read.extend(page.items);
        match page.next_token {
            Some(next) => token = next,
            None => break,
        }
    }
    assert_eq!(read, audited, "oldest first, each entry once");
    assert!(store.list_audit("t-none", PageRequest::new(2, "")).await.unwrap().items.is_empty());
    assert_eq!(store.rewrap_keys().await.unwrap(), 0, "every key is wrapped by the current master key already");
}

/// What a backend's opener gives each case: a fresh (or shared, for CQL)
/// store, and whatever must live as long as it (a temporary directory).
pub struct Fixture {
    pub store: crate::DynStore,
    pub keep: Box<dyn std::any::Any + Send>,
}

/// `store_suite!(open)` expands to one `#[tokio::test]` per case, each
/// running that case against the store `open.await` gives (`None`: skipped,
/// the opener says why). Invoke it in a module named for the backend, so
/// nextest lists `suite::sqlite::races`, `suite::cql::races`, … and one
/// failure hides none of the others. Quickwit's `metastore_test_suite!` is
/// the model.
#[macro_export]
macro_rules! store_suite {
    ($open:expr) => {
        $crate::store_suite!(@cases $open;
            idempotent_creates,
            upsert_by_email_and_no_partial_write,
            paging_visits_each_member_once,
            send_ledger_claims,
            outcomes_count_once_and_complete,
            sendable_members_and_consent,
            export_and_erase,
            import_batches_record_progress,
            tenants_and_keys,
            data_key_rotation,
            feedback_records_scores_and_engagement,
            segments_and_member_statuses,
            behavior_events,
            pagination_edges,
            races,
            catalog_and_admin,
        );
    };
    (@cases $open:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(fixture) = $open.await else { return };
                $crate::suite::$case(fixture.store.as_ref()).await;
            }
        )+
    };
}

#[cfg(test)]
mod sqlite {
    use std::sync::Arc;

    use super::Fixture;
    use crate::crypto::{MasterKey, MasterKeys};
    use crate::*;

    /// A fresh store in its own directory for every case.
    async fn open() -> Option<Fixture> {
        let dir = tempfile::tempdir().unwrap();
        let keys = MasterKeys::new(MasterKey::new("m1", [1; 32]), vec![]);
        let store = SqliteStore::open(&dir.path().join("store.db"), keys).unwrap();
        Some(Fixture { store: Arc::new(store), keep: Box::new(dir) })
    }

    crate::store_suite!(open());
}

/// The same cases against a real CQL database (Apache Cassandra, or a
/// ScyllaDB node). Never a fake: without `BROADSIDE_TEST_SCYLLA_URI` every
/// case says it was skipped (see `deploy/scylla/README.md`). The cases of one
/// run share a keyspace named for the run (the test runner's process id),
/// migrated once under a file lock: a migration of the 39 tables takes far
/// longer than any case.
#[cfg(test)]
mod cql {
    use std::sync::Arc;

    use super::Fixture;
    use crate::crypto::{MasterKey, MasterKeys};
    use crate::*;

    const RETENTION: Retention = Retention { feedback_days: 90, behavior_days: 400 };

    fn master() -> MasterKeys {
        MasterKeys::new(MasterKey::new("m1", [1; 32]), vec![])
    }

    fn base() -> Option<ScyllaUri> {
        let Ok(url) = std::env::var("BROADSIDE_TEST_SCYLLA_URI") else {
            println!(
                "SKIPPED: the CQL store suite needs a node; set \
                 BROADSIDE_TEST_SCYLLA_URI=scylla://127.0.0.1:9042/broadside_test?dc=datacenter1&rf=1 (deploy/scylla/README.md)"
            );
            return None;
        };
        Some(ScyllaUri::parse(&url).expect("BROADSIDE_TEST_SCYLLA_URI"))
    }

    /// The run's keyspace, migrated by the first case to get here. Suite
    /// keyspaces of runs whose runner is gone are dropped on the way.
    async fn open() -> Option<Fixture> {
        Some(Fixture { store: Arc::new(open_store().await?), keep: Box::new(()) })
    }

    async fn open_store() -> Option<ScyllaStore> {
        let base = base()?;
        let prefix = format!("{}_suite_", base.keyspace);
        let runner = std::os::unix::process::parent_id();
        let uri = base.with_keyspace(&format!("{prefix}{runner}"));
        let lock_path = std::env::temp_dir().join(format!("broadside-cql-suite-{}.lock", uri.keyspace));
        let lock = std::fs::File::create(&lock_path).unwrap();
        lock.lock().unwrap();
        ScyllaStore::migrate(&uri).await.unwrap();
        let store = ScyllaStore::connect(&uri, master(), RETENTION).await.unwrap();
        let stale = |name: &str| {
            name.strip_prefix(&prefix)
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| pid != runner && !std::path::Path::new(&format!("/proc/{pid}")).exists())
        };
        let dropped = store.drop_keyspaces(&prefix, stale).await.unwrap();
        drop(lock);
        println!(
            "CQL store suite: server {}, keyspace {}{}",
            store.server().await.unwrap(),
            uri.keyspace,
            if dropped.is_empty() { String::new() } else { format!(" (dropped stale {dropped:?})") }
        );
        Some(store)
    }

    crate::store_suite!(open());

    /// Migrations refuse an unmigrated keyspace by name, apply once, and a
    /// second run has nothing to do (a keyspace of its own, dropped after).
    #[tokio::test]
    async fn migrations_apply_once() {
        let Some(base) = base() else { return };
        let uri = base.with_keyspace(&format!("{}_{}", base.keyspace, &new_id()[20..]));
        let error = ScyllaStore::connect(&uri, master(), RETENTION).await.err().expect("not migrated yet");
        assert!(error.to_string().contains("broadside migrate"), "{error}");
        assert_eq!(ScyllaStore::migrate(&uri).await.unwrap(), vec![1]);
        assert!(ScyllaStore::migrate(&uri).await.unwrap().is_empty(), "a second run has nothing to do");
        let store = ScyllaStore::connect(&uri, master(), RETENTION).await.unwrap();
        store.drop_keyspace().await.unwrap();
    }

    #[tokio::test]
    async fn counters_short_of_their_outcome_rows_are_repaired() {
        let Some(store) = open_store().await else { return };
        super::counters_short_of_their_outcome_rows_are_repaired_in(&store).await;
    }
}

/// A counter update that failed after its outcome row was written (an
/// outage between the two; counters are not idempotent, so not retried)
/// leaves the campaign one short for ever, unless a recount repairs it.
#[cfg(test)]
async fn counters_short_of_their_outcome_rows_are_repaired_in(store: &ScyllaStore) {
    let created = store.create_campaign(campaign("t-recount", "l1"), None).await.unwrap();
    let id = created.id.clone();
    store.transition_campaign("t-recount", &id, &[CampaignState::Draft], CampaignState::Sending).await.unwrap();
    store.save_fanout("t-recount", &id, "s2", 2, true).await.unwrap();
    store.record_outcome("t-recount", &id, "s1", Outcome::Delivered).await.unwrap();
    store.outcome_row_without_counter(&id, "s2").await.unwrap();
    let stuck = store.get_campaign("t-recount", &id).await.unwrap().unwrap();
    assert_eq!((stuck.state, stuck.stats.delivered), (CampaignState::Sending, 1), "one short");
    assert!(store.recount_outcomes("t-recount", &id).await.unwrap(), "the recount completes it");
    let repaired = store.get_campaign("t-recount", &id).await.unwrap().unwrap();
    assert_eq!((repaired.state, repaired.stats.delivered), (CampaignState::Completed, 2));
    assert!(!store.recount_outcomes("t-recount", &id).await.unwrap());
    assert_eq!(store.get_campaign("t-recount", &id).await.unwrap().unwrap().stats.delivered, 2, "never twice");
}

/// What only the embedded store promises.
#[cfg(test)]
mod sqlite_only {
    use crate::crypto::{MasterKey, MasterKeys};
    use crate::*;

    fn master(id: &str, byte: u8) -> MasterKey {
        MasterKey::new(id, [byte; 32])
    }

    /// The raw file holds no address, name or attribute in the clear, and a
    /// master key rotation re-wraps keys so the old master can be retired.
    #[tokio::test]
    async fn the_file_holds_no_plaintext_and_the_master_key_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let store = SqliteStore::open(&path, MasterKeys::new(master("m1", 1), vec![])).unwrap();
        let list = MailingList {
            tenant: "t".into(),
            id: "l".into(),
            display_name: "L".into(),
            description: String::new(),
            opt_in: OptIn::Single,
            create_time: 0,
        };
        store.create_list(list, None).await.unwrap();
        let mut attributes = serde_json::Map::new();
        attributes.insert("city".into(), "Quuxville".into());
        let ada = Subscriber {
            tenant: "t".into(),
            id: new_id(),
            email: "ada.lovelace@example.com".into(),
            display_name: "Ada Zylberstein".into(),
            attributes,
            status: SubscriberStatus::Active,
            lists: vec!["l".into()],
            subscriptions: vec![],
            create_time: 0,
            update_time: 0,
        };
        let consent = ConsentContext { source: "web".into(), ip: "198.51.100.7".into(), user_agent: "Mozilla".into() };
        let options = UpsertOptions { consent, ..Default::default() };
        let id = store.upsert_subscriber(ada, options, None).await.unwrap().subscriber.id;
        let suppression = Suppression {
            tenant: "t".into(),
            email_hash: String::new(),
            list_id: String::new(),
            target: "grace.hopper@example.com".into(),
            reason: SuppressionReason::Manual,
            detail: String::new(),
            create_time: 0,
        };
        store.add_suppression(suppression).await.unwrap();
        let purchase = BehaviorEventRow {
            tenant: "t".into(),
            event_id: "e1".into(),
            subscriber_id: id.clone(),
            name: "purchase".into(),
            time: 0,
            properties: serde_json::json!({"sku": "XYZZY-BOOK"}).as_object().cloned().unwrap(),
        };
        store.track_events(vec![purchase]).await.unwrap();
        drop(store);
        // Everything the WAL held is in the main file after a clean close; read both anyway.
        let mut raw = std::fs::read(&path).unwrap();
        raw.extend(std::fs::read(dir.path().join("store.db-wal")).unwrap_or_default());
        for needle in
            ["ada.lovelace", "Zylberstein", "Quuxville", "198.51.100.7", "grace.hopper", "example.com", "XYZZY"]
        {
            assert!(!raw.windows(needle.len()).any(|w| w == needle.as_bytes()), "{needle} is in the file in the clear");
        }

        // Rotate the master: open with m2 current and m1 still known, re-wrap, then drop m1.
        let rotated = SqliteStore::open(&path, MasterKeys::new(master("m2", 2), vec![master("m1", 1)])).unwrap();
        assert!(rotated.rewrap_keys().await.unwrap() >= 2, "the tenant's data and index keys");
        drop(rotated);
        let only_new = SqliteStore::open(&path, MasterKeys::new(master("m2", 2), vec![])).unwrap();
        let ada = only_new.get_subscriber("t", &id).await.unwrap().unwrap();
        assert_eq!((ada.email.as_str(), ada.display_name.as_str()), ("ada.lovelace@example.com", "Ada Zylberstein"));
        drop(only_new);
        let wrong = SqliteStore::open(&path, MasterKeys::new(master("m3", 3), vec![])).unwrap();
        let error = wrong.get_subscriber("t", &id).await.unwrap_err();
        assert!(error.to_string().contains("m2"), "names the missing master key: {error}");
    }
}
