//! TLS on the forwarding connections, with certificates made for each test run (`rcgen`):
//! members forward over TLS; connections without a certificate the authority signed, or whose
//! certificate names another node than their hello, are refused and counted while members
//! forward; a node whose certificate names another node is never reached.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_util::codec::Decoder;

use common::SERIAL;
use wamp_cluster::testkit::certs::Authority;
use wamp_cluster::testkit::cluster::{failed_forward_report, forward_all, Cluster};
use wamp_cluster::testkit::protocol::{self, Frame, FrameCodec, RefuseReason};
use wamp_cluster::testkit::{counter, within};
use wamp_cluster::Secret;
use wamp_cluster::{BadReason, Config};

/// Members with certificates and a secret forward both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_forward_over_tls() {
    let _serial = SERIAL.lock().await;
    let ca = Authority::new();
    let c = Cluster::start_with(2, |config| {
        let name = config.node_id.clone();
        ca.configure(config, &name);
        config.cluster_secret = Some(Secret::new("a-secret-for-tls-0123456789"));
    })
    .await;
    forward_all(&c.nodes[0], "node-1", 200).await;
    forward_all(&c.nodes[1], "node-0", 200).await;
    c.stop().await;
}

fn client(ca: &Path, identity: Option<(&Path, &Path)>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
    };
    TlsConnector::from(Arc::new(config))
}

/// Connects over TLS and says hello as `tester`; the node's answer, `None` when the connection
/// ends without one (or the TLS handshake fails).
async fn hello_over_tls(target: std::net::SocketAddr, connector: &TlsConnector) -> Option<Frame> {
    within(Duration::from_secs(5), "an answer over TLS", async {
        let tcp = TcpStream::connect(target).await.unwrap();
        let name = ServerName::try_from("node-1").unwrap();
        let mut tls = connector.connect(name, tcp).await.ok()?;
        let hello = protocol::encode(&Frame::Hello(protocol::hello(
            "default", "tester", "node-1",
        )));
        tls.write_all(&hello).await.ok()?;
        tls.flush().await.ok()?;
        let mut buf = BytesMut::new();
        let mut codec = FrameCodec::new(1 << 20);
        loop {
            if let Some(frame) = codec.decode(&mut buf).ok()? {
                return Some(frame);
            }
            // TLS 1.3 reports a refused client certificate on the first read.
            if tls.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return None;
            }
        }
    })
    .await
}

/// On the forward port of a node that requires client certificates: a plain hello, a TLS
/// client without a certificate, one with a certificate of another authority, and one whose
/// certificate names another node than its hello are refused and counted; a client whose
/// certificate names its hello's node is welcomed; the members forward all the while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_the_right_certificate_are_refused_and_counted() {
    let _serial = SERIAL.lock().await;
    let prometheus = wamp_cluster::metrics::install_prometheus().unwrap();
    let ca = Authority::new();
    let c = Cluster::start_with(2, |config| {
        let name = config.node_id.clone();
        ca.configure(config, &name);
    })
    .await;
    let target = c.nodes[1].forwarder().local_addr();
    let series = |reason: &str| {
        format!(r#"wamp_cluster_handshakes_refused_total{{node="node-1",reason="{reason}"}}"#)
    };
    let before = prometheus.render();
    let other_ca = Authority::new();
    let (other_cert, other_key) = other_ca.issue("tester", "other");
    let (named_other, named_other_key) = ca.issue("node-7", "node-7");
    let (tester, tester_key) = ca.issue("tester", "tester");

    let members = forward_all(&c.nodes[0], "node-1", 300);
    let intruders = async {
        let mut plain = TcpStream::connect(target).await.unwrap();
        plain
            .write_all(&wamp_cluster::testkit::protocol::hello_from_intruder(
                "default",
            ))
            .await
            .unwrap();
        let mut answer = Vec::new();
        let read = within(
            Duration::from_secs(5),
            "closed",
            plain.read_to_end(&mut answer),
        );
        let _ = read.await;
        // Whatever TLS answers (an alert), it is no frame.
        let frame = FrameCodec::new(1 << 20).decode(&mut BytesMut::from(&answer[..]));
        assert!(
            !matches!(frame, Ok(Some(_))),
            "a plain client got a frame: {frame:?}"
        );
        assert_eq!(
            hello_over_tls(target, &client(&ca.ca_file(), None)).await,
            None
        );
        let foreign = client(&ca.ca_file(), Some((&other_cert, &other_key)));
        assert_eq!(hello_over_tls(target, &foreign).await, None);
        let misnamed = client(&ca.ca_file(), Some((&named_other, &named_other_key)));
        assert_eq!(
            hello_over_tls(target, &misnamed).await,
            Some(Frame::Refuse {
                reason: RefuseReason::BadCertificate
            })
        );
        let right = client(&ca.ca_file(), Some((&tester, &tester_key)));
        assert!(matches!(
            hello_over_tls(target, &right).await,
            Some(Frame::Welcome { .. })
        ));
    };
    tokio::join!(members, intruders);
    let after = prometheus.render();
    let delta = |reason: &str| counter(&after, &series(reason)) - counter(&before, &series(reason));
    assert_eq!((delta("tls"), delta("bad_certificate")), (3, 1));
    c.stop().await;
}

/// With `require_client_cert = false` a dialer without a certificate gets in (who may dial then
/// rests on the cluster secret), and one whose certificate names another node than its hello
/// still does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_required_client_certificates_a_dialer_without_one_gets_in() {
    let _serial = SERIAL.lock().await;
    let ca = Authority::new();
    let c = Cluster::start_with(2, |config| {
        let name = config.node_id.clone();
        ca.configure(config, &name);
        config.tls.require_client_cert = false;
    })
    .await;
    let target = c.nodes[1].forwarder().local_addr();
    assert!(matches!(
        hello_over_tls(target, &client(&ca.ca_file(), None)).await,
        Some(Frame::Welcome { .. })
    ));
    let (named_other, named_other_key) = ca.issue("node-7", "node-7");
    let misnamed = client(&ca.ca_file(), Some((&named_other, &named_other_key)));
    assert_eq!(
        hello_over_tls(target, &misnamed).await,
        Some(Frame::Refuse {
            reason: RefuseReason::BadCertificate
        })
    );
    forward_all(&c.nodes[0], "node-1", 50).await;
    c.stop().await;
}

/// A node whose certificate names another node: its peer's dial fails the TLS handshake,
/// reports it, and forwards to it fail; it never receives a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_certificate_names_another_node_is_never_reached() {
    let _serial = SERIAL.lock().await;
    let ca = Authority::new();
    let c = Cluster::start_with(2, |config| {
        let name = match config.node_id.as_str() {
            "node-1" => "node-9".to_string(),
            other => other.to_string(),
        };
        ca.configure(config, &name);
    })
    .await;
    match failed_forward_report(&c, 2_000).await {
        BadReason::ConnectFailed(why) => assert!(why.contains("TLS"), "{why}"),
        other => panic!("{other:?}"),
    }
    c.stop().await;
}

/// With TLS, valid files pass validation, and a node id that no certificate can name (an IP
/// address) is refused by name.
#[test]
fn with_tls_the_node_id_must_be_a_dns_name() {
    let ca = Authority::new();
    let mut config = Config::new("node-1");
    ca.configure(&mut config, "node-1");
    config.validate().unwrap();
    config.node_id = "10.0.0.1".into();
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("`node_id`") && err.contains("DNS name"),
        "{err}"
    );
}
