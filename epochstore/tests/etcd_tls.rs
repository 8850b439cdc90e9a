//! etcd serving clients over TLS with client-certificate authentication (reliability.md
//! §6.2): the store connects with the CA and a client certificate; without a client
//! certificate it gets a typed error within its deadline instead of hanging.

use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use tally_common::ids::LogId;
use tally_epochstore::conformance::{small_attributes, storage_node};
use tally_epochstore::harness::{EtcdHarness, HarnessTls};
use tally_epochstore::{ActivateOptions, EpochStore, EtcdStore};
use tokio::time::Instant;

/// A private CA, a server certificate for 127.0.0.1 and a client certificate.
fn certificates() -> HarnessTls {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "tally test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert_pem, server_key_pem) = leaf("etcd", ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert_pem, client_key_pem) = leaf("tally", ExtendedKeyUsagePurpose::ClientAuth);
    HarnessTls {
        ca_pem: ca_cert.pem(),
        server_cert_pem,
        server_key_pem,
        client_cert_pem,
        client_key_pem,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let etcd = EtcdHarness::start_tls(certificates())
        .await
        .expect("start etcd with TLS");
    assert!(etcd.client_url().starts_with("https://"));
    let store = etcd.store("tls").await.expect("connect over TLS");
    let mut leases = Vec::new();
    for id in 1..=2 {
        leases.push(
            store
                .register_node(storage_node(id), Duration::from_secs(10))
                .await
                .unwrap(),
        );
    }
    store
        .create_log(LogId(1), small_attributes())
        .await
        .expect("create");
    let a = store
        .activate(LogId(1), ActivateOptions::default())
        .await
        .expect("activate");
    assert_eq!(a.node_set.node_set.len(), 2);

    // The CA but no client certificate: refused, as a typed error within the deadline.
    let mut config = etcd.config("tls");
    config.call_timeout = Duration::from_secs(1);
    if let Some(tls) = config.tls.as_mut() {
        tls.cert_file = None;
        tls.key_file = None;
    }
    let anonymous = EtcdStore::connect(config).await.expect("lazy connect");
    let started = Instant::now();
    let err = anonymous
        .get_log(LogId(1))
        .await
        .expect_err("served without a client certificate");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    eprintln!("without a client certificate: {err}");
    for lease in leases {
        lease.deregister().await.expect("deregister");
    }
}
