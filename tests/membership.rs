//! In-process cluster tests: several nodes on free loopback ports, real UDP gossip through
//! chitchat, driven through the public API only.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::SERIAL;
use tokio::sync::broadcast;
use wamp_cluster::config::MAX_GRACE_PERIOD_SECS;
use wamp_cluster::testkit::{detecting, node_config, tolerant, wait_until, within};
use wamp_cluster::Discard;
use wamp_cluster::{Config, MembershipError, MembershipEvent, Node, NodeHandle, Status, Stopped};

const CONVERGE: Duration = Duration::from_secs(15);

async fn start(config: Config) -> NodeHandle {
    Node::builder(config, |_, _| Discard)
        .start()
        .await
        .expect("node starts")
}

/// Starts `n` nodes joined through the first one.
async fn cluster(n: usize, gossip: wamp_cluster::GossipConfig) -> Vec<NodeHandle> {
    let seed = node_config("node-0", &[], gossip.clone());
    let seed_addr = seed.gossip_addr;
    let mut nodes = vec![start(seed).await];
    for i in 1..n {
        nodes.push(
            start(node_config(
                &format!("node-{i}"),
                &[seed_addr],
                gossip.clone(),
            ))
            .await,
        );
    }
    nodes
}

async fn abort_all(nodes: impl IntoIterator<Item = NodeHandle>) {
    for node in nodes {
        node.abort().await;
    }
}

fn sees_all_ready(node: &NodeHandle, n: usize) -> bool {
    let view = node.membership().view();
    view.members()
        .iter()
        .filter(|m| m.live && m.status == Status::Ready)
        .count()
        == n
}

async fn converge(nodes: &[NodeHandle]) {
    for node in nodes {
        wait_until(
            CONVERGE,
            "every node sees every node live and ready",
            || sees_all_ready(node, nodes.len()),
        )
        .await;
    }
}

/// Waits for the first event about `peer` that `matches`; other events are skipped.
async fn next_event_about(
    events: &mut broadcast::Receiver<MembershipEvent>,
    peer: &str,
    what: &str,
    matches: impl Fn(&MembershipEvent) -> bool,
) -> MembershipEvent {
    within(CONVERGE, what, async {
        loop {
            match events.recv().await {
                Ok(event) if event.node() == peer && matches(&event) => return event,
                Ok(_) => {}
                Err(err) => panic!("event stream ended: {err}"),
            }
        }
    })
    .await
}

/// A join through one seed converges: every node sees every other live and ready, with the keys
/// it published, and the same ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_through_one_seed_converges_on_every_node() {
    let _serial = SERIAL.lock().await;
    let nodes = cluster(4, tolerant()).await;
    converge(&nodes).await;
    for node in &nodes {
        let view = node.membership().view();
        assert_eq!(view.broadcast_targets().len(), 3);
        assert!(!view.is_target(node.node_id().as_str()));
        for other in &nodes {
            let member = view.member(other.node_id().as_str()).unwrap();
            assert_eq!(member.generation, other.membership().generation());
            assert_eq!(member.admin_addr, other.admin_addr());
            assert_eq!(member.version.as_deref(), Some(wamp_cluster::VERSION));
            assert!(member.forward_addr.is_some() && member.reachable);
        }
        assert_eq!(view.ring().nodes().len(), 4);
        for key in ["com.example.add", "session-42", "x"] {
            assert_eq!(
                view.ring().owners(key, 2),
                nodes[0].membership().view().ring().owners(key, 2)
            );
        }
    }
    abort_all(nodes).await;
}

/// A node that stops without a word (as a crash does) is seen `Down` by every other node and
/// leaves their broadcast targets and rings; with the longest grace period allowed, which
/// chitchat adds to the time of death.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_is_seen_down_by_every_other_node() {
    let _serial = SERIAL.lock().await;
    let mut gossip = detecting();
    gossip.dead_node_grace_period_secs = Duration::from_secs(MAX_GRACE_PERIOD_SECS);
    let mut nodes = cluster(3, gossip).await;
    converge(&nodes).await;
    let mut subscriptions: Vec<_> = nodes[..2]
        .iter()
        .map(|n| n.membership().subscribe_events())
        .collect();
    let victim = nodes.pop().unwrap();
    let victim_id = victim.node_id().to_string();
    victim.abort().await;
    for (node, events) in nodes.iter().zip(&mut subscriptions) {
        // Not a reachability report (its connections broke first), nor the `Joined` that a
        // subscription made just after the views converged may still get.
        let event = next_event_about(events, &victim_id, "down", |e| {
            !matches!(
                e,
                MembershipEvent::Unreachable { .. } | MembershipEvent::Joined { .. }
            )
        })
        .await;
        assert_eq!(event.kind(), "down", "{event:?}");
        let view = node.membership().view();
        assert!(!view.member(&victim_id).unwrap().live);
        assert!(!view.is_target(&victim_id));
        assert!(!view.ring().nodes().iter().any(|n| *n == *victim_id));
    }
    abort_all(nodes).await;
}

/// A node that restarts with a lower generation (its clock stepped back between the two runs,
/// or it moved to a host whose clock is behind) is seen: once its old generation is down, the
/// new one replaces it on every node, the rings agree, and the new process does not take its
/// dead previous life for another process with its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_lower_generation_is_seen_and_the_rings_agree() {
    let _serial = SERIAL.lock().await;
    let seed = node_config("node-0", &[], detecting());
    let seed_addr = seed.gossip_addr;
    let a = start(seed).await;
    let now_ns = a.membership().generation();
    let ahead = now_ns + 3_600_000_000_000;
    let old = Node::builder(node_config("node-1", &[seed_addr], detecting()), |_, _| {
        Discard
    })
    .generation(ahead)
    .start()
    .await
    .unwrap();
    wait_until(CONVERGE, "the old generation ready", || {
        a.membership().view().is_target("node-1")
    })
    .await;
    old.abort().await;
    wait_until(CONVERGE, "the old generation down", || {
        a.membership()
            .view()
            .member("node-1")
            .is_some_and(|m| !m.live)
    })
    .await;
    let new = start(node_config("node-1", &[seed_addr], detecting())).await;
    let generation = new.membership().generation();
    assert!(generation < ahead);
    wait_until(CONVERGE, "the lower generation seen", || {
        let view = a.membership().view();
        view.is_target("node-1") && view.member("node-1").map(|m| m.generation) == Some(generation)
    })
    .await;
    wait_until(CONVERGE, "the rings agree", || {
        a.membership().view().ring().nodes() == new.membership().view().ring().nodes()
            && a.membership().view().ring().nodes().len() == 2
    })
    .await;
    a.forwarder()
        .forward(
            wamp_cluster::testkit::cluster::from(&a),
            wamp_cluster::testkit::cluster::to("node-1"),
            wamp_cluster::testkit::publish(1),
            &wamp_cluster::testkit::cluster::options(5000),
        )
        .await
        .unwrap();
    assert!(
        !new.membership().is_stopped(),
        "the new process took its previous life for a rival"
    );
    abort_all([a, new]).await;
}

/// Starts `name` seeded by `seed`, with its generation an hour behind its clock if `behind`
/// (a restart after the host's clock stepped back).
async fn start_as(name: &str, seed: SocketAddr, behind: bool) -> NodeHandle {
    let builder = Node::builder(node_config(name, &[seed], detecting()), |_, _| Discard);
    let builder = match behind {
        true => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            builder.generation(now.as_nanos() as u64 - 3_600_000_000_000)
        }
        false => builder,
    };
    builder.start().await.expect("node starts")
}

/// Waits until every node shows exactly the others' running generations, live.
async fn agree_on_generations(nodes: &[&NodeHandle], what: &str) {
    let mut running: Vec<(String, u64)> = nodes
        .iter()
        .map(|n| (n.node_id().to_string(), n.membership().generation()))
        .collect();
    running.sort();
    let shown = |node: &NodeHandle| -> Vec<(String, u64)> {
        let view = node.membership().view();
        view.members()
            .iter()
            .filter(|m| m.live)
            .map(|m| (m.node_id.to_string(), m.generation))
            .collect()
    };
    let message = format!("{what}: every node shows {running:?}");
    wait_until(CONVERGE, &message, || {
        nodes.iter().all(|node| shown(node) == running)
    })
    .await;
}

/// Restarts one after another, each at once after a crash (the old generation still looks
/// alive for a while), two of them with the clock an hour behind, the seed included: every
/// node agrees on the running generations after each. A node started after a restart learns
/// the old generation (dead, but news to it) together with the new, lower one, and shows the
/// new one once its heartbeat grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_whose_clocks_go_back_one_after_another_are_seen_by_every_node() {
    let _serial = SERIAL.lock().await;
    let n0 = start(node_config("node-0", &[], detecting())).await;
    let n1 = start_as("node-1", n0.membership().gossip_addr(), false).await;
    let n2 = start_as("node-2", n0.membership().gossip_addr(), false).await;
    agree_on_generations(&[&n0, &n1, &n2], "at the start").await;
    n1.abort().await;
    let n1 = start_as("node-1", n2.membership().gossip_addr(), true).await;
    agree_on_generations(&[&n0, &n1, &n2], "node-1 behind").await;
    n2.abort().await;
    let n2 = start_as("node-2", n1.membership().gossip_addr(), false).await;
    agree_on_generations(&[&n0, &n1, &n2], "node-2 restarted").await;
    n0.abort().await;
    let n0 = start_as("node-0", n2.membership().gossip_addr(), true).await;
    agree_on_generations(&[&n0, &n1, &n2], "node-0 behind").await;
    abort_all([n0, n1, n2]).await;
}

/// A graceful leave is seen as `Leaving` (out of the targets at once) and then `Left`, never
/// `Down`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_leave_is_seen_as_leaving_then_left() {
    let _serial = SERIAL.lock().await;
    let mut nodes = cluster(3, detecting()).await;
    converge(&nodes).await;
    let mut subscriptions: Vec<_> = nodes[..2]
        .iter()
        .map(|n| n.membership().subscribe_events())
        .collect();
    let leaver = nodes.pop().unwrap();
    let leaver_id = leaver.node_id().to_string();
    assert_eq!(
        within(CONVERGE, "leave ends", leaver.leave()).await,
        Stopped::Left
    );
    for events in &mut subscriptions {
        let first = next_event_about(events, &leaver_id, "leaving", |_| true).await;
        assert_eq!(first.kind(), "leaving", "{first:?}");
        let second = next_event_about(events, &leaver_id, "left", |_| true).await;
        assert_eq!(second.kind(), "left", "{second:?}");
    }
    for node in &nodes {
        wait_until(
            CONVERGE,
            "the leaver is out of every view's targets",
            || {
                let view = node.membership().view();
                let m = view.member(&leaver_id).unwrap();
                !m.live && m.status == Status::Leaving && !view.is_target(&leaver_id)
            },
        )
        .await;
    }
    abort_all(nodes).await;
}

/// A node restarted on the same address with a new generation is seen `Restarted`, and the old
/// generation never shows again in any view, not even when gossip declares it dead (detection
/// timings, so that this happens while the test watches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_is_seen_as_restarted_and_the_old_generation_never_reappears() {
    let _serial = SERIAL.lock().await;
    let seed_config = node_config("node-0", &[], detecting());
    let seed_addr = seed_config.gossip_addr;
    let seed = start(seed_config).await;
    let config = node_config("node-1", &[seed_addr], detecting());
    let first = start(config.clone()).await;
    let old_generation = first.membership().generation();
    let nodes = [seed, first];
    converge(&nodes).await;
    let [seed, first] = nodes;
    let mut views = seed.membership().watch_view();
    let mut events = seed.membership().subscribe_events();
    first.abort().await;
    let second = start(config).await;
    let new_generation = second.membership().generation();
    assert!(new_generation > old_generation);

    let event = next_event_about(&mut events, "node-1", "restarted", |_| true).await;
    assert_eq!(
        event,
        MembershipEvent::Restarted {
            node: "node-1".into(),
            old_generation,
            generation: new_generation
        }
    );
    // Watch every view while the old generation dies: it must never come back, and its death
    // is no event (the node is up in its new generation).
    let watch_until = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Ok(())) = tokio::time::timeout_at(watch_until, views.changed()).await {
        let view = views.borrow_and_update().clone();
        if let Some(m) = view.member("node-1") {
            assert_eq!(m.generation, new_generation, "old generation reappeared");
        }
    }
    while let Ok(event) = events.try_recv() {
        assert!(
            matches!(event, MembershipEvent::Joined { generation, .. } if generation == new_generation),
            "unexpected {event:?}"
        );
    }
    let nodes = [seed, second];
    converge(&nodes).await;
    abort_all(nodes).await;
}

/// A node of another cluster gossiping with the same seed never joins either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_cluster_id_never_joins() {
    let _serial = SERIAL.lock().await;
    let nodes = cluster(2, tolerant()).await;
    converge(&nodes).await;
    let mut stranger_config = node_config(
        "stranger",
        &[nodes[0].membership().gossip_addr()],
        tolerant(),
    );
    stranger_config.cluster_id = "another".into();
    let stranger = start(stranger_config).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for node in &nodes {
        assert!(node.membership().view().member("stranger").is_none());
    }
    let view = stranger.membership().view();
    assert_eq!(view.members().len(), 1, "{:?}", view.members());
    stranger.abort().await;
    abort_all(nodes).await;
}

/// A seed given as `localhost:PORT` is resolved and joined through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_given_by_host_name_works() {
    let _serial = SERIAL.lock().await;
    let seed_config = node_config("node-0", &[], tolerant());
    let port = seed_config.gossip_addr.port();
    let seed = start(seed_config).await;
    let mut joiner_config = node_config("node-1", &[], tolerant());
    joiner_config.seeds = vec![format!("localhost:{port}")];
    let joiner = start(joiner_config).await;
    let nodes = [seed, joiner];
    converge(&nodes).await;
    abort_all(nodes).await;
}

/// Two nodes with the same id: the older one sees the newer generation, stops, and says why
/// with both gossip addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_with_a_running_nodes_id_makes_one_of_them_stop_with_a_clear_error() {
    let _serial = SERIAL.lock().await;
    let first_config = node_config("twin", &[], tolerant());
    let first_addr = first_config.gossip_addr;
    let first = start(first_config).await;
    let second_config = node_config("twin", &[first_addr], tolerant());
    let second_addr = second_config.gossip_addr;
    let second = start(second_config).await;
    let stopped = within(CONVERGE, "the older twin stops", first.stopped()).await;
    let Stopped::Failed(err) = stopped else {
        panic!("{stopped:?}")
    };
    match &err {
        MembershipError::NodeIdConflict {
            node_id,
            gossip_addr,
            other_gossip_addr,
            ..
        } => {
            assert_eq!(node_id, "twin");
            assert_eq!(*gossip_addr, first_addr);
            assert_eq!(*other_gossip_addr, second_addr);
        }
        other => panic!("unexpected error {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&first_addr.to_string()), "{message}");
    assert!(message.contains(&second_addr.to_string()), "{message}");
    // Stopped once: an abort now says how it stopped.
    assert!(matches!(
        first.abort().await,
        Stopped::Failed(MembershipError::NodeIdConflict { .. })
    ));
    assert!(!second.membership().is_stopped());
    second.abort().await;
}

/// Reachability reports: one transition per report, out of the targets but not off the ring,
/// events to subscribers, and back with `report_reachable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_report_takes_a_node_out_of_the_targets_until_it_is_reachable() {
    let _serial = SERIAL.lock().await;
    let nodes = cluster(3, tolerant()).await;
    converge(&nodes).await;
    let membership = nodes[0].membership();
    let mut events = membership.subscribe_events();
    assert!(membership.report_unreachable("node-1", "ack timeout"));
    assert!(!membership.report_unreachable("node-1", "ack timeout again"));
    assert!(!membership.report_unreachable("node-0", "self"));
    assert!(!membership.report_unreachable("nobody", "unknown"));
    let view = membership.view();
    assert_eq!(view.broadcast_targets(), ["node-2"]);
    assert_eq!(view.ring().nodes().len(), 3);
    let member = view.member("node-1").unwrap();
    assert!(member.live && !member.reachable);
    assert_eq!(
        events.try_recv().unwrap(),
        MembershipEvent::Unreachable {
            node: "node-1".into(),
            generation: member.generation,
            reason: "ack timeout".into()
        }
    );
    // Other nodes keep their own opinion.
    assert!(nodes[2].membership().view().is_target("node-1"));

    assert!(membership.report_reachable("node-1"));
    assert!(!membership.report_reachable("node-1"));
    assert!(membership.view().is_target("node-1"));
    assert_eq!(events.try_recv().unwrap().kind(), "reachable");
    abort_all(nodes).await;
}

/// A configuration error is refused before anything starts, naming the key.
#[tokio::test]
async fn a_bad_configuration_is_refused_naming_the_key() {
    let mut config = node_config("node-0", &[], tolerant());
    config.gossip_addr = "0.0.0.0:7946".parse::<SocketAddr>().unwrap();
    let err = Node::builder(config, |_, _| Discard)
        .start()
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("gossip_advertise_addr"), "{err}");
}

/// A node whose gossip port is taken fails to start with an error naming the address.
#[tokio::test]
async fn a_taken_gossip_port_is_a_clear_start_error() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut config = node_config("node-0", &[], tolerant());
    config.gossip_addr = taken.local_addr().unwrap();
    let err = Node::builder(config, |_, _| Discard)
        .start()
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains(&taken.local_addr().unwrap().to_string()),
        "{err}"
    );
}

/// Gossip runs over a transport the program gives: here chitchat's own in-memory
/// `ChannelTransport`, which can cut the link between two nodes. A cut link between node-0 and
/// node-1 does not split the cluster (node-2 relays their state); once that link is back and
/// node-2 is cut off from both, they see it down and it sees them down, while they still see
/// each other; healed, all see each other again. Messages still go over real TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_in_memory_survives_one_cut_link_and_sees_a_node_cut_off_down() {
    use chitchat::transport::ChannelTransport;
    let _serial = SERIAL.lock().await;
    let transport = ChannelTransport::default();
    let seed = node_config("node-0", &[], detecting());
    let seed_addr = seed.gossip_addr;
    let mut configs = vec![seed];
    for i in 1..3 {
        configs.push(node_config(&format!("node-{i}"), &[seed_addr], detecting()));
    }
    let addrs: Vec<SocketAddr> = configs.iter().map(|c| c.gossip_addr).collect();
    let mut nodes = Vec::new();
    for config in configs {
        let node = Node::builder(config, |_, _| Discard)
            .transport(transport.clone())
            .start()
            .await
            .expect("node starts");
        nodes.push(node);
    }
    converge(&nodes).await;
    assert!(
        transport.statistics().num_messages_total > 0,
        "gossip went in memory"
    );

    transport.remove_link(addrs[0], addrs[1]).await;
    // Several failure-detection periods: still one cluster.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for node in &nodes {
        assert!(
            sees_all_ready(node, 3),
            "{:?}",
            node.membership().view().members()
        );
    }
    nodes[0]
        .forwarder()
        .forward(
            wamp_cluster::PeerId::node("realm1", "node-0"),
            wamp_cluster::PeerId::node("realm1", "node-1"),
            wamp_cluster::testkit::publish(1),
            &Default::default(),
        )
        .await
        .expect("forwarding goes over TCP, not gossip");

    // Node-0 and node-1 talk directly again; node-2 is cut off from both.
    transport.add_link(addrs[0], addrs[1]).await;
    transport.remove_link(addrs[2], addrs[0]).await;
    transport.remove_link(addrs[2], addrs[1]).await;
    let live = |node: &NodeHandle, peer: &str| {
        node.membership()
            .view()
            .member(peer)
            .is_some_and(|m| m.live)
    };
    wait_until(
        CONVERGE,
        "node-2 is seen down and sees the others down",
        || {
            !live(&nodes[0], "node-2")
                && !live(&nodes[1], "node-2")
                && !live(&nodes[2], "node-0")
                && !live(&nodes[2], "node-1")
        },
    )
    .await;
    assert!(live(&nodes[0], "node-1") && live(&nodes[1], "node-0"));

    for (a, b) in [(2, 0), (2, 1)] {
        transport.add_link(addrs[a], addrs[b]).await;
    }
    converge(&nodes).await;
    abort_all(nodes).await;
}

/// Gossip over a transport the program gives cannot be sealed: a node with a cluster secret
/// refuses one rather than gossip in the clear, and the error names where the secret came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_secret_refuses_a_transport_it_cannot_seal() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "a-secret-of-the-cluster-0123\n").unwrap();
    let given = |config: &mut wamp_cluster::Config| {
        config.cluster_secret = Some(wamp_cluster::Secret::new("a-secret-of-the-cluster-0123"))
    };
    let in_file =
        |config: &mut wamp_cluster::Config| config.cluster_secret_file = Some(file.clone());
    for (source, set) in [
        (
            "WAMP_CLUSTER_SECRET",
            &given as &dyn Fn(&mut wamp_cluster::Config),
        ),
        ("cluster_secret_file", &in_file),
    ] {
        let mut config = node_config("sealed", &[], tolerant());
        set(&mut config);
        let err = Node::builder(config, |_, _| Discard)
            .transport(chitchat::transport::ChannelTransport::default())
            .start()
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains(source), "{err}");
        assert!(err.to_string().contains("cannot be sealed"), "{err}");
    }
}
