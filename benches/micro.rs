//! Micro-benchmarks (criterion) of the pieces on every forward's path: encoding and decoding
//! the `Forward` frame of each forwardable message type, reading the live view, and looking up
//! a key's owners on the ring; and sealing and opening gossip datagrams.
//!
//! Run: `cargo bench --bench micro` (add a filter such as `-- decode` for one group).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::SocketAddr;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tokio_util::codec::Decoder;
use wamp_cluster::testkit::protocol::view::{derive_view, GossipNode, NodeKeys, ViewInput};
use wamp_cluster::testkit::protocol::{self, ClusterKeys, FrameCodec, ReplayGuard};
use wamp_cluster::wamp::{Dict, Payload, Value, WampMessage};
use wamp_cluster::{LiveView, NodeId, PeerId};
use wamp_cluster::{Ring, Status};

/// The payload of every message: one 128-byte binary argument, as in the forward benchmark,
/// plus a keyword argument for the types that carry details.
fn payload() -> Payload {
    let mut kw = Dict::new();
    kw.insert("trace".into(), Value::String("a1b2c3".into()));
    Payload::ArgsKw(vec![Value::Bytes(vec![0x5a; 128])], kw)
}

/// One message of each forwardable type.
fn messages() -> Vec<(&'static str, WampMessage)> {
    let mut details = Dict::new();
    details.insert("caller".into(), Value::Integer(7_219_342));
    vec![
        (
            "publish",
            WampMessage::Publish {
                request: 239_714_735,
                options: Dict::new(),
                topic: "com.example.topic".into(),
                payload: payload(),
            },
        ),
        (
            "invocation",
            WampMessage::Invocation {
                request: 6_131_533,
                registration: 9_823_526,
                details: details.clone(),
                payload: payload(),
            },
        ),
        (
            "result",
            WampMessage::Result {
                request: 7_814_135,
                details: Dict::new(),
                payload: payload(),
            },
        ),
        (
            "error",
            WampMessage::Error {
                request_type: 68,
                request: 6_131_533,
                details: Dict::new(),
                error: "com.example.error.busy".into(),
                payload: payload(),
            },
        ),
        (
            "interrupt",
            WampMessage::Interrupt {
                request: 6_131_533,
                options: details,
            },
        ),
    ]
}

fn frames(c: &mut Criterion) {
    let from = PeerId::session("com.example.realm", "node-1", 3_957_483);
    let to = PeerId::session("com.example.realm", "node-2", 1_284_713);
    let max = 16 * 1024 * 1024;
    let mut encode = c.benchmark_group("encode");
    for (name, message) in messages() {
        encode.throughput(Throughput::Elements(1));
        encode.bench_function(name, |b| {
            b.iter(|| {
                protocol::encode_forward(
                    black_box(42),
                    &from,
                    &to,
                    black_box(&message),
                    max,
                    <[u8]>::len,
                )
            })
        });
    }
    encode.finish();
    let mut decode = c.benchmark_group("decode");
    for (name, message) in messages() {
        let bytes =
            protocol::encode_forward(42, &from, &to, &message, max, <[u8]>::to_vec).unwrap();
        let mut codec = FrameCodec::new(max);
        decode.throughput(Throughput::Elements(1));
        decode.bench_function(name, |b| {
            b.iter_batched_ref(
                || BytesMut::from(&bytes[..]),
                |buf| codec.decode(buf).unwrap().unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    decode.finish();
}

/// A live view of `n` ready members, as gossip would have built it.
fn view(n: usize) -> LiveView {
    let self_id = NodeId::from("node-0");
    let mut input = ViewInput::default();
    for i in 0..n {
        let port = 7000 + 2 * i as u16;
        input.gossip.push(GossipNode {
            node_id: NodeId::from(format!("node-{i}")),
            generation: 1,
            gossip_addr: SocketAddr::from(([127, 0, 0, 1], port)),
            alive: true,
            heartbeat: 1,
            keys: NodeKeys {
                forward_addr: Some(SocketAddr::from(([127, 0, 0, 1], port + 1))),
                admin_addr: None,
                status: Status::Ready,
                version: None,
                labels: BTreeMap::new(),
            },
        });
    }
    derive_view(&self_id, &mut input, &LiveView::empty(self_id.clone()))
}

fn membership(c: &mut Criterion) {
    let mut group = c.benchmark_group("live_view");
    for n in [5, 50] {
        let view = view(n);
        let shared = arc_swap::ArcSwap::from_pointee(view.clone());
        // What each forward does: load the current view, find the destination.
        group.bench_function(format!("member_of_{n}"), |b| {
            b.iter(|| {
                let view = shared.load_full();
                view.member(black_box("node-3"))
                    .and_then(|m| m.forward_addr)
                    .is_some()
            })
        });
        group.bench_function(format!("broadcast_targets_of_{n}"), |b| {
            b.iter(|| shared.load_full().broadcast_targets().len())
        });
    }
    group.finish();
    let mut group = c.benchmark_group("ring");
    for n in [5, 50] {
        let ring = Ring::new((0..n).map(|i| NodeId::from(format!("node-{i}"))));
        group.bench_function(format!("owner_of_{n}"), |b| {
            b.iter(|| ring.owner(black_box("com.example.procedure")).cloned())
        });
        group.bench_function(format!("owners_3_of_{n}"), |b| {
            b.iter(|| ring.owners(black_box("com.example.procedure"), 3))
        });
    }
    group.finish();
}

/// Sealing and opening gossip datagrams with a cluster secret, at chitchat's usual sizes and
/// at its largest.
fn sealing(c: &mut Criterion) {
    let keys = ClusterKeys::new(["a-secret-for-the-bench-0123"], "default");
    let mut group = c.benchmark_group("gossip");
    for size in [256usize, 1400, 65_000] {
        let message = vec![0x5a; size];
        let mut sealed = Vec::new();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("seal_{size}"), |b| {
            b.iter(|| keys.seal(black_box(&message), 1_000_000, &mut sealed))
        });
        keys.seal(&message, 1_000_000, &mut sealed).unwrap();
        let mut out = Vec::new();
        group.bench_function(format!("open_{size}"), |b| {
            b.iter_batched_ref(
                || ReplayGuard::new(30_000),
                |guard| keys.open(black_box(&sealed), 1_000_000, guard, &mut out),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, frames, membership, sealing);
criterion_main!(benches);
