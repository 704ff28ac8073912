use std::sync::Arc;

use learntrail_runtime::auth::Role;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, rustls};
use tokio_tungstenite::{client_async, tungstenite::client::IntoClientRequest};

use crate::helpers::{click, spawn_gateway, token};
use futures_util::{SinkExt, StreamExt};

#[tokio::test]
async fn wss_with_a_certificate_and_key_from_files() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let gateway = spawn_gateway(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    let addr = gateway
        .ws
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_string();

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&cert).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the configured certificate");
    let student = token("learner-1", Role::Student);
    let url = format!("wss://localhost/ws?token={student}");
    let (mut ws, _) = client_async(url.into_client_request().unwrap(), tls)
        .await
        .expect("upgrade over TLS");
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        click("learner-1", "tls-1", 1).to_string(),
    ))
    .await
    .unwrap();
    let ack = loop {
        match ws.next().await.unwrap().unwrap() {
            tokio_tungstenite::tungstenite::Message::Text(text) => {
                break serde_json::from_str::<serde_json::Value>(text.as_str()).unwrap();
            }
            _ => continue,
        }
    };
    assert_eq!(ack["id"], "tls-1");
    assert_eq!(gateway.stored().await.len(), 1);
    // plain ws:// on the TLS port does not get through
    assert!(
        crate::helpers::Client::connect(&gateway.ws, Some(&student), None)
            .await
            .is_err()
    );
    gateway.stop().await;
}
