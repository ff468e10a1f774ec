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
    let (a, created) = store.upsert_subscriber(subscriber("t2", "Ada@Example.com", &["l1"]), None).await.unwrap();
    assert!(created);
    let (b, created) = store.upsert_subscriber(subscriber("t2", " ada@example.COM ", &[]), None).await.unwrap();
    assert!(!created);
    assert_eq!(a.id, b.id);
    assert_eq!(b.lists, vec!["l1".to_string()]);
    let error =
        store.upsert_subscriber(subscriber("t2", "new@example.com", &["l1", "missing"]), None).await.unwrap_err();
    assert!(matches!(error, StoreError::NotFound(ref what) if what.contains("missing")), "{error}");
    let all = store.list_subscribers("t2", PageRequest::new(100, "")).await.unwrap();
    assert_eq!(all.items.len(), 1, "the failed upsert must leave nothing behind");
}

/// Keyset paging visits every member exactly once.
pub async fn paging_visits_each_member_once(store: &dyn Store) {
    store.create_list(list("t3", "l1"), None).await.unwrap();
    for i in 0..25 {
        store.upsert_subscriber(subscriber("t3", &format!("s{i}@example.com"), &["l1"]), None).await.unwrap();
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
    store.record_outcome("t4", &id, "s2", Outcome::Failed).await.unwrap();
    let done = store.save_fanout("t4", &id, "s2", 1, true).await.unwrap();
    assert_eq!(done.state, CampaignState::Completed);
    assert_eq!((done.stats.recipients, done.stats.delivered, done.stats.failed), (2, 1, 1));
}

/// Runs every case of the suite against `store`.
pub async fn run_all(store: &dyn Store) {
    idempotent_creates(store).await;
    upsert_by_email_and_no_partial_write(store).await;
    paging_visits_each_member_once(store).await;
    send_ledger_claims(store).await;
    outcomes_count_once_and_complete(store).await;
}

#[cfg(test)]
mod sqlite {
    #[tokio::test]
    async fn sqlite_passes_the_store_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::SqliteStore::open(&dir.path().join("store.db")).unwrap();
        super::run_all(&store).await;
    }
}
