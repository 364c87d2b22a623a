//! The cluster secret: members that share one (through a change of secret) form a cluster and
//! forward; a node with another secret sees nobody; handshakes without a valid proof and gossip
//! datagrams that do not open are refused and counted while the members keep forwarding.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use common::SERIAL;
use wamp_cluster::testkit::cluster::{failed_forward_report, forward_all, Cluster};
use wamp_cluster::testkit::protocol::{self, encode, read_frame, Frame, Hello, RefuseReason};
use wamp_cluster::testkit::protocol::{ClusterKeys, ReplayGuard, Role, Transcript};
use wamp_cluster::testkit::{counter, node_config, tolerant, wait_until, within};
use wamp_cluster::Discard;
use wamp_cluster::Secret;
use wamp_cluster::{Config, Node, NodeHandle};

const OLD: &str = "old-secret-0123456789";
const NEW: &str = "new-secret-0123456789";

fn with_secret(text: &'static str) -> impl Fn(&mut Config) {
    move |config| config.cluster_secret = Some(Secret::new(text))
}

fn live_members(node: &NodeHandle) -> usize {
    node.membership()
        .view()
        .members()
        .iter()
        .filter(|m| m.live)
        .count()
}

/// Nodes in the middle of a change of secret (one seals with the new one, one still with the
/// old, each accepting both; a third reads its secrets from a file) form one cluster and
/// forward both ways; a node with another secret, seeded with a member, sees nobody and nobody
/// sees it, and its datagrams are counted as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_with_a_secret_in_common_form_a_cluster_and_a_node_with_another_sees_nobody() {
    let _serial = SERIAL.lock().await;
    let prometheus = wamp_cluster::metrics::install_prometheus().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{NEW}\n{OLD}\n")).unwrap();
    let secrets = [format!("{OLD}\n{NEW}"), format!("{NEW} {OLD}")];
    let c = Cluster::start_with(3, |config| match config.node_id.as_str() {
        "node-0" => config.cluster_secret = Some(Secret::new(secrets[0].clone())),
        "node-1" => config.cluster_secret = Some(Secret::new(secrets[1].clone())),
        _ => config.cluster_secret_file = Some(file.clone()),
    })
    .await;
    forward_all(&c.nodes[0], "node-1", 100).await;
    forward_all(&c.nodes[1], "node-0", 100).await;
    forward_all(&c.nodes[2], "node-0", 100).await;

    let seed = c.nodes[0].membership().gossip_addr();
    let mut config = node_config("outsider", &[seed], tolerant());
    config.cluster_secret = Some(Secret::new("another-secret-0123456789"));
    config.gossip.join_timeout_ms = Duration::from_millis(500);
    let outsider = Node::builder(config, |_, _| Discard).start().await.unwrap();
    let dropped = r#"wamp_cluster_gossip_dropped_total{node="node-0",reason="unsealed"}"#;
    let before = counter(&prometheus.render(), dropped);
    wait_until(
        Duration::from_secs(10),
        "node-0 drops the outsider's gossip",
        || counter(&prometheus.render(), dropped) >= before + 3,
    )
    .await;
    // Many gossip rounds later still nobody sees anybody across the secrets.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(live_members(&outsider), 1);
    for node in &c.nodes {
        assert_eq!(live_members(node), 3, "{}", node.node_id());
    }
    outsider.abort().await;
    c.stop().await;
}

/// A hello to `node-1` from a client that is not a member (a hello from a member's node id
/// would take over that member's connection once accepted).
fn hello(cluster: &str) -> Hello {
    protocol::hello(cluster, "tester", "node-1")
}

/// Says hello, reads the challenge, sends what `answer` makes of the hello and the listener's
/// nonce; returns the bytes sent, the hello, the listener's nonce and its last frame (`None`:
/// closed without one).
async fn handshake(
    target: SocketAddr,
    answer: impl FnOnce(&Hello, [u8; 32]) -> Vec<u8>,
) -> (Vec<u8>, Hello, [u8; 32], Option<Frame>) {
    let mut stream = TcpStream::connect(target).await.unwrap();
    let said = hello("default");
    let mut sent = encode(&Frame::Hello(said.clone()));
    stream.write_all(&sent).await.unwrap();
    let mut buf = BytesMut::new();
    let Some(Frame::Challenge { nonce }) = read_frame(&mut stream, &mut buf).await else {
        panic!("no challenge");
    };
    let reply = answer(&said, nonce);
    stream.write_all(&reply).await.unwrap();
    sent.extend_from_slice(&reply);
    (sent, said, nonce, read_frame(&mut stream, &mut buf).await)
}

fn proof(
    keys: &ClusterKeys,
    hello: &Hello,
    listener_nonce: [u8; 32],
    dialer_nonce: [u8; 32],
) -> Frame {
    let hello = protocol::hello_bytes(hello);
    let transcript = Transcript {
        hello: &hello,
        listener_nonce: &listener_nonce,
        dialer_nonce: &dialer_nonce,
        version: 0,
        generation: 0,
    };
    Frame::Proof {
        nonce: dialer_nonce,
        mac: keys.prove(0, Role::Dialer, &transcript),
    }
}

/// On the forward port of a node with a secret: a proof made with another secret, no proof, a
/// proof of the right secret replayed on a new connection, and a hello sent without waiting
/// for the challenge are refused (`bad_secret`) and counted, while a right proof is answered
/// with the listener's own and the members forward all the while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_without_a_fresh_proof_of_the_secret_are_refused_and_counted() {
    let _serial = SERIAL.lock().await;
    let prometheus = wamp_cluster::metrics::install_prometheus().unwrap();
    let c = Cluster::start_with(2, with_secret(OLD)).await;
    let target = c.nodes[1].forwarder().local_addr();
    let refused = r#"wamp_cluster_handshakes_refused_total{node="node-1",reason="bad_secret"}"#;
    let before = counter(&prometheus.render(), refused);
    let right = ClusterKeys::new([OLD], "default");
    let wrong = ClusterKeys::new([NEW], "default");
    let members = forward_all(&c.nodes[0], "node-1", 300);
    let intruders = async {
        let bad_secret = Some(Frame::Refuse {
            reason: RefuseReason::BadSecret,
        });
        let (_, _, _, answer) = handshake(target, |hello, nonce| {
            encode(&proof(&wrong, hello, nonce, [1; 32]))
        })
        .await;
        assert_eq!(answer, bad_secret, "a proof of another secret");
        let (_, _, _, answer) = handshake(target, |_, _| encode(&Frame::Ping { id: 1 })).await;
        assert_eq!(answer, bad_secret, "no proof");

        let (sent, said, listener_nonce, answer) = handshake(target, |hello, nonce| {
            encode(&proof(&right, hello, nonce, [2; 32]))
        })
        .await;
        let Some(Frame::Verified {
            version,
            generation,
            mac,
        }) = answer
        else {
            panic!("a right proof is not verified: {answer:?}");
        };
        assert_eq!(generation, c.nodes[1].membership().generation());
        // The listener proves the secret in turn, over the same transcript.
        let hello = protocol::hello_bytes(&said);
        let transcript = Transcript {
            hello: &hello,
            listener_nonce: &listener_nonce,
            dialer_nonce: &[2; 32],
            version,
            generation,
        };
        assert_eq!(version, protocol::MAX_VERSION);
        assert!(right.check_with(0, Role::Listener, &transcript, &mac));
        assert!(!wrong.check_with(0, Role::Listener, &transcript, &mac));

        // The same bytes again: the listener's nonce is new, so the proof no longer holds.
        let mut stream = TcpStream::connect(target).await.unwrap();
        stream.write_all(&sent).await.unwrap();
        let mut buf = BytesMut::new();
        let first = read_frame(&mut stream, &mut buf).await;
        assert!(matches!(first, Some(Frame::Challenge { .. })), "{first:?}");
        assert_eq!(
            read_frame(&mut stream, &mut buf).await,
            bad_secret,
            "a replayed proof"
        );
    };
    tokio::join!(members, intruders);
    let after = counter(&prometheus.render(), refused);
    assert_eq!(after - before, 3);
    c.stop().await;
}

/// A listener that says it is `node-1` and cannot prove the secret: it welcomes without a
/// challenge, or answers a proof with a wrong one. Serves connections until dropped.
async fn impostor(welcome: bool) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        // Bounded: a few dials are all the test makes.
        for _ in 0..50 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                let Some(Frame::Hello(_)) = read_frame(&mut stream, &mut buf).await else {
                    return;
                };
                if welcome {
                    let _ = stream
                        .write_all(&encode(&Frame::Welcome {
                            version: protocol::MAX_VERSION,
                            generation: u64::MAX,
                        }))
                        .await;
                } else {
                    let challenge = encode(&Frame::Challenge { nonce: [5; 32] });
                    let _ = stream.write_all(&challenge).await;
                    if let Some(Frame::Proof { .. }) = read_frame(&mut stream, &mut buf).await {
                        let verified = Frame::Verified {
                            version: protocol::MAX_VERSION,
                            generation: u64::MAX,
                            mac: [6; 32],
                        };
                        let _ = stream.write_all(&encode(&verified)).await;
                    }
                }
                // Until the dialer gives up on it.
                let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_u8()).await;
            });
        }
    });
    (addr, task)
}

/// A dialer with the secret refuses a listener that cannot prove it, whether it welcomes
/// without a challenge or answers the proof with a wrong one: the forward fails, nothing is
/// sent to it, and the node is reported with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_refuses_a_listener_that_cannot_prove_the_secret() {
    let _serial = SERIAL.lock().await;
    for (welcome, why) in [
        (true, "no cluster secret"),
        (false, "proof of the cluster secret is wrong"),
    ] {
        let (fake, task) = impostor(welcome).await;
        let c = Cluster::start_with(2, |config| {
            config.cluster_secret = Some(Secret::new(OLD));
            if config.node_id == "node-1" {
                config.forward_advertise_addr = Some(fake);
            }
        })
        .await;
        match failed_forward_report(&c, 1_000).await {
            wamp_cluster::BadReason::ConnectFailed(reason) => {
                assert!(reason.contains(why), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        task.abort();
        c.stop().await;
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A node's gossip, caught by a socket it takes for a seed, is sealed (neither its cluster id
/// nor its node id can be read in it); sent back to it, it opens once and never again; sealed
/// with another secret, changed, sealed long ago, or not sealed at all, it is dropped and
/// counted, and the members keep forwarding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_datagrams_that_do_not_open_are_dropped_and_counted() {
    let _serial = SERIAL.lock().await;
    let prometheus = wamp_cluster::metrics::install_prometheus().unwrap();
    let seed = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let c = Cluster::start_with(2, |config| {
        config.cluster_secret = Some(Secret::new(OLD));
        if config.node_id == "node-0" {
            config.seeds.push(seed.local_addr().unwrap().to_string());
        }
    })
    .await;
    let node = c.nodes[0].membership().gossip_addr();
    let mut caught = vec![0; 65_536];
    let (len, from) = within(Duration::from_secs(10), "gossip to the seed", async {
        loop {
            let (len, from) = seed.recv_from(&mut caught).await.unwrap();
            if from == node {
                return (len, from);
            }
        }
    })
    .await;
    let caught = caught[..len].to_vec();
    for clear in [&b"default"[..], b"node-0", b"node-1"] {
        assert!(
            !caught.windows(clear.len()).any(|w| w == clear),
            "{:?} readable in sealed gossip",
            String::from_utf8_lossy(clear)
        );
    }
    let right = ClusterKeys::new([OLD], "default");
    let mut message = Vec::new();
    right
        .open(
            &caught,
            now_ms(),
            &mut ReplayGuard::new(60_000),
            &mut message,
        )
        .unwrap();

    let series = |reason: &str| {
        format!(r#"wamp_cluster_gossip_dropped_total{{node="node-0",reason="{reason}"}}"#)
    };
    let before = prometheus.render();
    let mut sealed = Vec::new();
    let mut changed = caught.clone();
    changed[len / 2] ^= 1;
    let members = forward_all(&c.nodes[1], "node-0", 300);
    let intruder = async {
        // Once: it opens (it was sent to the seed, not to the node).
        seed.send_to(&caught, from).await.unwrap();
        // Again: replayed.
        seed.send_to(&caught, from).await.unwrap();
        seed.send_to(&changed, from).await.unwrap();
        ClusterKeys::new([NEW], "default")
            .seal(&message, now_ms(), &mut sealed)
            .unwrap();
        seed.send_to(&sealed, from).await.unwrap();
        right
            .seal(&message, now_ms() - 60_000, &mut sealed)
            .unwrap();
        seed.send_to(&sealed, from).await.unwrap();
        seed.send_to(b"plain garbage", from).await.unwrap();
    };
    tokio::join!(members, intruder);
    let expected = [("replayed", 1), ("unsealed", 3), ("stale", 1)];
    wait_until(Duration::from_secs(5), "the drops counted", || {
        let after = prometheus.render();
        expected.iter().all(|(reason, n)| {
            counter(&after, &series(reason)) - counter(&before, &series(reason)) == *n
        })
    })
    .await;
    assert_eq!(live_members(&c.nodes[0]), 2);
    c.stop().await;
}
