//! gRPC over TLS: mutual TLS refuses clients without a certificate from the
//! client CA, and a renewed server certificate is served without a restart.

use std::path::Path;
use std::time::{Duration, Instant};

use broadside_proto::v1::ListListsRequest;
use broadside_proto::v1::subscriber_service_client::SubscriberServiceClient;
use broadside_tests::test_config;
use rcgen::{BasicConstraints, CertificateParams, CertifiedKey, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn ca(name: &str) -> CertifiedKey {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let key_pair = KeyPair::generate().unwrap();
    CertifiedKey { cert: params.self_signed(&key_pair).unwrap(), key_pair }
}

fn leaf(names: &[&str], issuer: &CertifiedKey) -> CertifiedKey {
    let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let key_pair = KeyPair::generate().unwrap();
    CertifiedKey { cert: params.signed_by(&key_pair, &issuer.cert, &issuer.key_pair).unwrap(), key_pair }
}

fn write(dir: &Path, name: &str, pem: String) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

/// Lists lists over TLS trusting `server_ca`, optionally with a client identity.
async fn call(
    addr: std::net::SocketAddr,
    server_ca: &CertifiedKey,
    client: Option<&CertifiedKey>,
    key: &str,
) -> Result<(), String> {
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(server_ca.cert.pem())).domain_name("localhost");
    if let Some(client) = client {
        tls = tls.identity(Identity::from_pem(client.cert.pem(), client.key_pair.serialize_pem()));
    }
    let channel = Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut client = SubscriberServiceClient::new(channel);
    let mut request = tonic::Request::new(ListListsRequest::default());
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    client.list_lists(request).await.map(drop).map_err(|e| format!("call: {e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_certificate_and_reloads_the_server_certificate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca, rogue_ca) = (ca("server CA"), ca("client CA"), ca("rogue CA"));
    let server = leaf(&["localhost"], &server_ca);
    let cert_file = write(dir.path(), "server.pem", server.cert.pem());
    let key_file = write(dir.path(), "server.key", server.key_pair.serialize_pem());
    let client_ca_file = write(dir.path(), "clients.pem", client_ca.cert.pem());
    let mut config = test_config(&dir.path().join("data"));
    config.server.tls = Some(broadside_config::TlsConfig {
        cert_file: cert_file.clone(),
        key_file: key_file.clone(),
        client_ca_file: Some(client_ca_file),
    });
    let node = broadside::Node::start(&config, &broadside::Role::ALL).await.unwrap();
    let addr = node.grpc_addr;
    let key = std::fs::read_to_string(dir.path().join("data/admin.key")).unwrap().trim().to_owned();

    let good_client = leaf(&["client"], &client_ca);
    let rogue_client = leaf(&["client"], &rogue_ca);
    call(addr, &server_ca, Some(&good_client), &key).await.expect("a client with a certificate from the client CA");
    let refused = call(addr, &server_ca, None, &key).await.expect_err("no client certificate");
    assert!(!refused.is_empty());
    call(addr, &server_ca, Some(&rogue_client), &key).await.expect_err("a certificate from another CA");
    let plaintext = SubscriberServiceClient::connect(format!("http://{addr}")).await;
    if let Ok(mut client) = plaintext {
        assert!(client.list_lists(ListListsRequest::default()).await.is_err(), "plaintext must not be served");
    }

    // Renew the server certificate under a new CA: new connections get it, no restart.
    let renewed_ca = ca("renewed server CA");
    let renewed = leaf(&["localhost"], &renewed_ca);
    std::thread::sleep(Duration::from_millis(20)); // a distinct modification time
    write(dir.path(), "server.key", renewed.key_pair.serialize_pem());
    write(dir.path(), "server.pem", renewed.cert.pem());
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(addr, &renewed_ca, Some(&good_client), &key).await.is_err() {
        assert!(Instant::now() < deadline, "the renewed certificate was never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    call(addr, &server_ca, Some(&good_client), &key).await.expect_err("the old certificate is no longer served");
    node.shutdown().await.unwrap();
}
