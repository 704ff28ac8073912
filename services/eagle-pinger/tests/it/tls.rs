//! HTTPS to a private relay: certificates are verified, and `EAGLE_CA_FILE` adds the relay's CA.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use learntrail_fake_eagle::{Api, FakeEagle, MeterSpec};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, rustls, server::TlsStream};

use clap::Parser as _;
use learntrail_eagle_pinger::Config;

use crate::helpers::{KEY_A, Rig, TestApp, registration, spawn_app};

/// A test app polling `url`, with a poll timeout long enough for a TLS handshake on a busy
/// machine (the other tests' 300 ms would fail some handshakes by time, not by certificate).
async fn spawn_tls(rig: &Rig, extra: &[&str]) -> TestApp {
    let mut args = rig.args(KEY_A);
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut config = Config::parse_from(args);
    config.poll_timeout = Duration::from_secs(5);
    spawn_app(config).await
}

/// Connections that finished a TLS handshake with `acceptor` (failed handshakes are dropped).
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, peer)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// The fake relay over HTTPS with a certificate for `localhost`; returns its CA file and URL.
async fn https_relay(fake: &FakeEagle, dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let ca = dir.join("relay-ca.pem");
    std::fs::write(&ca, certified.cert.pem()).unwrap();
    let chain = vec![CertificateDer::from_pem_slice(certified.cert.pem().as_bytes()).unwrap()];
    let key =
        PrivateKeyDer::from_pem_slice(certified.signing_key.serialize_pem().as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let listener = TlsListener {
        tcp,
        acceptor: TlsAcceptor::from(Arc::new(config)),
    };
    tokio::spawn(axum::serve(listener, fake.router()).into_future());
    (ca, format!("https://localhost:{port}/cgi-bin/post_manager"))
}

#[tokio::test]
async fn a_private_relay_over_https_needs_its_ca_file() {
    let rig = Rig::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, url) = https_relay(&rig.fake, dir.path()).await;
    rig.fake
        .add("00c401", MeterSpec::demo("00c401", Api::Cloud));
    let body = registration("00c401", Api::Cloud, &rig.fake_addr);

    // without the CA the relay's certificate is refused: verification is on
    let app = spawn_tls(&rig, &["--eagle-cloud-url", &url]).await;
    assert_eq!(app.register("00c401", &body).await.0, 201);
    let refused = app.wait_state("00c401", "unreachable").await;
    let error = refused["poll"]["last_error"]
        .as_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        error.contains("certificate") || error.contains("issuer"),
        "{error}"
    );
    assert_eq!(rig.fake.requests("00c401"), 0);
    app.stop().await;

    // with it, readings flow over HTTPS
    let app = spawn_tls(
        &rig,
        &[
            "--eagle-cloud-url",
            &url,
            "--eagle-ca-file",
            ca.to_str().unwrap(),
        ],
    )
    .await;
    app.wait_state("00c401", "ok").await;
    assert!(rig.fake.requests("00c401") >= 2);
    tokio::time::timeout(Duration::from_secs(5), app.stop())
        .await
        .unwrap();
}
