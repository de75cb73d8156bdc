//! TLS between peers: an mTLS cluster works, a peer without a valid client certificate is refused,
//! a plaintext client against a TLS port fails cleanly, and slow clients are cut off.

use std::time::Duration;

use groupcache_rs::{Groupcache, PeerTls, Server};
use groupcache_tests::{GROUP, Replica, TestLoader, key_owned, key_owned_by};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A certificate authority made for one test.
struct Authority {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Authority {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for 127.0.0.1 (server and client use), and its key, in PEM.
    fn leaf(&self) -> (String, String) {
        self.leaf_for(&["127.0.0.1", "localhost"])
    }

    /// A certificate for `names` only, and its key, in PEM.
    fn leaf_for(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names = names
            .iter()
            .map(|name| name.to_string())
            .collect::<Vec<_>>();
        let certificate = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (certificate.pem(), key.serialize_pem())
    }

    /// Trust in this authority, with a fresh identity of its own.
    fn peer_tls(&self) -> PeerTls {
        let (cert, key) = self.leaf();
        PeerTls::new(self.pem.as_bytes())
            .unwrap()
            .identity(cert.as_bytes(), key.as_bytes())
            .unwrap()
    }
}

/// A replica serving mTLS with `tls`, connecting to peers with `client_tls`.
fn mtls_replica(loader: &TestLoader, tls: &PeerTls, client_tls: PeerTls) -> Replica<TestLoader> {
    let server = Server::new().tls(tls.server_config(true).unwrap());
    Replica::start_served("https", server, |url| {
        Groupcache::builder(GROUP, url, loader.clone()).peer_tls(client_tls)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mtls_cluster_works() {
    let authority = Authority::new();
    let loader = TestLoader::new();
    let cluster: Vec<_> = (0..3)
        .map(|_| {
            let tls = authority.peer_tls();
            mtls_replica(&loader, &tls, tls.clone())
        })
        .collect();
    groupcache_tests::connect(&cluster);
    assert!(cluster[0].url.starts_with("https://"));
    for owner in 0..3 {
        let key = key_owned_by(&cluster, owner, "tls-");
        for replica in &cluster {
            assert_eq!(
                replica.cache.get(&key).await.unwrap(),
                loader.value_for(&key)
            );
        }
        cluster[(owner + 1) % 3].cache.remove(&key).await.unwrap();
    }
    for replica in &cluster {
        assert_eq!(replica.cache.stats().peer_errors, 0, "{}", replica.url);
    }
    assert_eq!(loader.loads.total(), 3);
}

/// Replicas dialled by address share one certificate that names none of their addresses (a
/// Kubernetes deployment's pods, whose IPs change): with `PeerTls::server_name` every peer is
/// verified against that name and the cluster works; without it, the certificate does not match
/// the URL's host and every fetch fails its handshake (and is loaded locally).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_certificate_for_every_replica_with_a_server_name() {
    const NAME: &str = "groupcache-peer";
    let authority = Authority::new();
    let (cert, key) = authority.leaf_for(&[NAME]);
    let shared = PeerTls::new(authority.pem.as_bytes())
        .unwrap()
        .identity(cert.as_bytes(), key.as_bytes())
        .unwrap();
    for named in [true, false] {
        let loader = TestLoader::new();
        let client_tls = if named {
            shared.clone().server_name(NAME).unwrap()
        } else {
            shared.clone()
        };
        let cluster: Vec<_> = (0..2)
            .map(|_| mtls_replica(&loader, &shared, client_tls.clone()))
            .collect();
        groupcache_tests::connect(&cluster);
        let key = key_owned_by(&cluster, 1, "named-");
        assert_eq!(
            cluster[0].cache.get(&key).await.unwrap(),
            loader.value_for(&key)
        );
        let stats = cluster[0].cache.stats();
        if named {
            assert_eq!(
                (stats.peer_loads, stats.peer_errors),
                (1, 0),
                "fetched from its owner over TLS"
            );
        } else {
            assert_eq!(
                (stats.peer_loads, stats.peer_errors),
                (0, 1),
                "the certificate names no address: the handshake fails"
            );
        }
    }
    assert!(
        PeerTls::new(authority.pem.as_bytes())
            .unwrap()
            .server_name("not a name!")
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_a_valid_client_certificate_are_refused() {
    let authority = Authority::new();
    let loader = TestLoader::new();
    let owner_tls = authority.peer_tls();
    let owner = mtls_replica(&loader, &owner_tls, owner_tls.clone());
    let stranger = Authority::new();
    for (name, client_tls) in [
        (
            "no client certificate",
            PeerTls::new(authority.pem.as_bytes()).unwrap(),
        ),
        ("a certificate from another CA", {
            let (cert, key) = stranger.leaf();
            PeerTls::new(authority.pem.as_bytes())
                .unwrap()
                .identity(cert.as_bytes(), key.as_bytes())
                .unwrap()
        }),
    ] {
        let asker = Replica::start(|url| {
            Groupcache::builder(GROUP, url, loader.clone()).peer_tls(client_tls)
        });
        asker
            .cache
            .set_peers([owner.url.as_str(), asker.url.as_str()])
            .unwrap();
        let key = key_owned(&asker.cache, &owner.url, "{name}-");
        assert_eq!(
            asker.cache.get(&key).await.unwrap(),
            loader.value_for(&key),
            "{name}"
        );
        let stats = asker.cache.stats();
        assert_eq!(
            (stats.peer_errors, stats.local_loads),
            (1, 1),
            "{name}: refused, then loaded locally"
        );
    }
    assert_eq!(
        owner.cache.stats().server_requests,
        0,
        "no refused peer reached the router"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_against_a_tls_port_fails_cleanly() {
    let authority = Authority::new();
    let loader = TestLoader::new();
    let tls = authority.peer_tls();
    let owner = mtls_replica(&loader, &tls, tls.clone());
    let plain = owner.url.replacen("https://", "http://", 1);
    let error = reqwest::get(format!("{plain}/_groupcache/{GROUP}/k"))
        .await
        .unwrap_err();
    assert!(error.is_request() || error.is_connect(), "{error:?}");
    // The port still serves TLS peers afterwards.
    let friend = mtls_replica(&loader, &authority.peer_tls(), authority.peer_tls());
    let cluster = [owner, friend];
    groupcache_tests::connect(&cluster);
    let key = key_owned_by(&cluster, 0, "after-");
    assert_eq!(
        cluster[1].cache.get(&key).await.unwrap(),
        loader.value_for(&key)
    );
    assert_eq!(cluster[1].cache.stats().peer_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_headers_slowly_is_disconnected() {
    let loader = TestLoader::new();
    let server = Server::new().header_read_timeout(Duration::from_millis(200));
    let replica = Replica::start_served("http", server, |url| {
        Groupcache::builder(GROUP, url, loader.clone())
    });
    let mut slow = tokio::net::TcpStream::connect(replica.addr).await.unwrap();
    slow.write_all(b"GET /_groupcache/test/k HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // Never finish the headers: the server must close the connection by itself.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the server kept a slowloris connection open"
    );
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
    assert_eq!(loader.loads.total(), 0);
    // Normal clients are still served.
    let response = reqwest::get(format!("{}/_groupcache/{GROUP}/k", replica.url))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
