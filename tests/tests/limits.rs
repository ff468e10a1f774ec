//! Abuse limits: per-key gRPC limits answer RESOURCE_EXHAUSTED without
//! affecting other keys; the public HTTP endpoint answers 429 per address.

use broadside_proto::v1::subscriber_service_client::SubscriberServiceClient;
use broadside_proto::v1::*;
use broadside_store::Scope;
use broadside_tests::{Sandbox, authed, open_store, test_config};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_refuse_floods_per_key_and_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.limits.grpc_per_key_per_second = 5; // buckets of 10
    config.limits.grpc_per_ip_per_second = 0; // off: every test client is 127.0.0.1
    config.limits.http_per_ip_per_second = 1; // buckets of 2
    let mut sandbox = Sandbox::start(config).await.unwrap();
    let mut codes = Vec::new();
    for _ in 0..30 {
        let result = sandbox.subscribers.list_lists(ListListsRequest::default()).await;
        codes.push(result.err().map(|status| status.code()));
    }
    assert!(codes[..10].iter().all(Option::is_none), "the burst is allowed: {codes:?}");
    assert!(codes.contains(&Some(Code::ResourceExhausted)), "a flood is refused: {codes:?}");

    // Another key has its own bucket.
    let store = open_store(dir.path()).await.unwrap();
    let other = broadside_auth::generate("default", vec![Scope::Read], "other");
    store.create_api_key(other.record).await.unwrap();
    let channel = authed(sandbox.node.as_ref().unwrap(), &other.secret).await.unwrap();
    SubscriberServiceClient::new(channel).list_lists(ListListsRequest::default()).await.unwrap();

    let http = sandbox.node.as_ref().unwrap().http_addr.unwrap();
    let statuses = tokio::task::spawn_blocking(move || {
        (0..6)
            .map(|_| {
                use std::io::{Read, Write};
                let mut stream = std::net::TcpStream::connect(http).unwrap();
                write!(
                    stream,
                    "POST /confirm/k1.e30.AAAA HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                let mut response = String::new();
                stream.read_to_string(&mut response).unwrap();
                response.split(' ').nth(1).unwrap_or_default().to_owned()
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(&statuses[..2], &["400", "400"], "{statuses:?}");
    assert!(statuses.iter().any(|s| s == "429"), "{statuses:?}");
}
