//! Property tests of everything that reads bytes from the network: the frame decoder, the
//! handshake (the hello and the proofs of the cluster secret), the gossip sealing and the WAMP
//! JSON codec. The seeds are the WAMP project's test vectors
//! (`tests/data/wamp-testsuite`) and frames built from them; each case mutates a seed (bytes
//! replaced, inserted, removed, cut) or is random. None may panic; what decodes must encode
//! back to what decodes the same.
//!
//! `PROPTEST_CASES=N` sets the cases per property (256 by default); run longer with
//! `PROPTEST_CASES=200000 cargo test --release --test fuzz`.

use std::path::PathBuf;
use std::sync::OnceLock;

use bytes::BytesMut;
use proptest::prelude::*;
use tokio_util::codec::Decoder;
use wamp_cluster::testkit::protocol::{self, Frame, FrameCodec, Hello};
use wamp_cluster::testkit::protocol::{ClusterKeys, ReplayGuard, Role, Transcript, Unopened};
use wamp_cluster::wamp::{json, WampMessage};
use wamp_cluster::{NodeId, PeerId};

/// The JSON texts of every sample of the WAMP test vectors.
fn json_seeds() -> &'static [String] {
    static SEEDS: OnceLock<Vec<String>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/wamp-testsuite/singlemessage");
        let mut texts = Vec::new();
        for dir in ["basic", "advanced"] {
            let dir = root.join(dir);
            let entries = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("test vectors expected at {}: {e}", dir.display()));
            for entry in entries {
                let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
                let file: serde_json::Value = serde_json::from_str(&text).unwrap();
                for sample in file["samples"].as_array().into_iter().flatten() {
                    let variants = sample["serializers"]["json"].as_array();
                    for variant in variants.into_iter().flatten() {
                        let hex = variant["bytes_hex"].as_str().unwrap_or_default();
                        let bytes: Vec<u8> = (0..hex.len() / 2)
                            .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                            .collect();
                        texts.extend(String::from_utf8(bytes).ok());
                    }
                }
            }
        }
        assert!(texts.len() > 50, "{} seeds", texts.len());
        texts
    })
}

/// Frames as nodes send them: every forwardable message of the vectors in a `Forward` frame,
/// and the other frames.
fn frame_seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let from = PeerId::session("realm1", "node-a", 7);
        let to = PeerId::node("realm1", "node-b");
        let mut frames: Vec<Vec<u8>> = json_seeds()
            .iter()
            .filter_map(|text| json::decode(text).ok())
            .filter(WampMessage::is_forwardable)
            .enumerate()
            .map(|(id, m)| {
                protocol::encode_forward(id as u64, &from, &to, &m, 1 << 20, <[u8]>::to_vec)
                    .unwrap()
            })
            .collect();
        assert!(frames.len() > 10, "{} forward seeds", frames.len());
        for frame in [
            Frame::Hello(hello()),
            Frame::Welcome {
                version: 1,
                generation: 9,
            },
            Frame::Ack { id: 1 << 33 },
            Frame::Nack {
                id: 3,
                reason: wamp_cluster::NackReason::Refused("busy".into()),
            },
            Frame::Ping { id: 0 },
            Frame::Pong { id: 9 },
        ] {
            frames.push(protocol::encode(&frame));
        }
        frames
    })
}

fn hello() -> Hello {
    protocol::hello("default", "node-a", "node-b")
}

/// One change to a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Cut(usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Set(at, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Insert(at, b)),
        any::<usize>().prop_map(Edit::Remove),
        any::<usize>().prop_map(Edit::Cut),
    ];
    prop::collection::vec(edit, 1..6)
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let len = bytes.len();
        match *edit {
            Edit::Set(at, b) if len > 0 => bytes[at % len] = b,
            Edit::Insert(at, b) => bytes.insert(at % (len + 1), b),
            Edit::Remove(at) if len > 0 => {
                bytes.remove(at % len);
            }
            Edit::Cut(at) => bytes.truncate(at % (len + 1)),
            _ => {}
        }
    }
    bytes
}

/// Everything `bytes` decodes to, as a node's reader would take it: frames until the bytes
/// run out or an error ends the connection.
fn decode_all(bytes: &[u8], limit: usize) -> (Vec<Frame>, bool) {
    let mut codec = FrameCodec::new(limit);
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return (frames, false),
            Err(_) => return (frames, true),
        }
    }
}

proptest! {
    /// A mutated frame (or a run of them) decodes to frames or an error, never a panic; each
    /// frame it gives encodes to bytes that decode to the same frame.
    #[test]
    fn the_frame_decoder_never_panics_and_what_it_reads_round_trips(
        seeds in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
        edits in edits(),
    ) {
        let all = frame_seeds();
        let stream: Vec<u8> = seeds.iter().flat_map(|i| all[i.index(all.len())].clone()).collect();
        let (frames, _) = decode_all(&apply(stream, &edits), 1 << 20);
        for frame in frames {
            let again = protocol::encode(&frame);
            let (back, failed) = decode_all(&again, 1 << 20);
            prop_assert!(!failed);
            // Compared as text: a NaN is not equal to itself.
            prop_assert_eq!(format!("{back:?}"), format!("{:?}", [frame]));
        }
    }

    /// Random bytes, under a small frame limit and a large one.
    #[test]
    fn random_bytes_never_make_the_frame_decoder_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        small in any::<bool>(),
    ) {
        decode_all(&bytes, if small { 1024 } else { 1 << 20 });
    }

    /// Reading a stream with acks taken from the buffer first gives what the codec alone
    /// gives, whatever the bytes.
    #[test]
    fn acks_taken_from_the_buffer_agree_with_the_codec(
        seeds in prop::collection::vec(any::<prop::sample::Index>(), 1..6),
        edits in edits(),
    ) {
        let all = frame_seeds();
        let stream: Vec<u8> = seeds.iter().flat_map(|i| all[i.index(all.len())].clone()).collect();
        let stream = apply(stream, &edits);
        let mut codec = FrameCodec::new(1 << 20);
        let mut buf = BytesMut::from(&stream[..]);
        let mut taken = Vec::new();
        loop {
            protocol::take_acks(&mut buf, |id| taken.push(Frame::Ack { id }));
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => taken.push(frame),
                _ => break,
            }
        }
        let (alone, _) = decode_all(&stream, 1 << 20);
        prop_assert_eq!(format!("{taken:?}"), format!("{alone:?}"));
    }

    /// Any hello: accepted only with the magic, the cluster id, this node as its target and a
    /// common version, and then at a version both speak; never a panic.
    #[test]
    fn the_handshake_accepts_only_a_matching_hello(
        magic in prop_oneof![Just(protocol::MAGIC), any::<[u8; 4]>()],
        min_version in 0u16..4,
        max_version in 0u16..4,
        cluster in prop_oneof![Just("default".to_string()), ".{0,12}"],
        to_node in prop_oneof![Just("node-b".to_string()), "[a-z-]{0,8}"],
    ) {
        let hello = Hello {
            magic,
            min_version,
            max_version,
            cluster_id: cluster.clone(),
            to_node: NodeId::from(to_node.as_str()),
            ..hello()
        };
        let me = NodeId::from("node-b");
        match protocol::negotiate(&hello, "default", &me) {
            Ok(version) => {
                prop_assert!(magic == protocol::MAGIC && cluster == "default" && to_node == "node-b");
                prop_assert!((protocol::MIN_VERSION..=protocol::MAX_VERSION).contains(&version));
                prop_assert!((min_version..=max_version).contains(&version));
            }
            Err(_) => prop_assert!(
                magic != protocol::MAGIC
                    || cluster != "default"
                    || to_node != "node-b"
                    || max_version < protocol::MIN_VERSION
                    || min_version > protocol::MAX_VERSION
                    || min_version > max_version
            ),
        }
        // And the same hello through the codec, mutated: no panic.
        let bytes = protocol::encode(&Frame::Hello(hello));
        decode_all(&bytes[..bytes.len() / 2], 16 * 1024);
    }

    /// A proof of the handshake checks only with the secret, the role and the transcript it
    /// was made for: a changed proof, another nonce or another hello does not.
    #[test]
    fn a_handshake_proof_checks_only_for_what_it_was_made_for(
        listener_nonce in any::<[u8; 32]>(),
        dialer_nonce in any::<[u8; 32]>(),
        other_nonce in any::<[u8; 32]>(),
        flip in 0usize..256,
        edits in edits(),
    ) {
        let keys = ClusterKeys::new(["a-secret-for-properties-0123"], "default");
        let hello = protocol::hello_bytes(&hello());
        let t = Transcript {
            hello: &hello,
            listener_nonce: &listener_nonce,
            dialer_nonce: &dialer_nonce,
            version: 1,
            generation: 9,
        };
        let proof = keys.prove(0, Role::Dialer, &t);
        prop_assert_eq!(keys.check(Role::Dialer, &t, &proof), Some(0));
        let mut changed = proof;
        changed[flip / 8] ^= 1 << (flip % 8);
        prop_assert_eq!(keys.check(Role::Dialer, &t, &changed), None);
        prop_assert_eq!(keys.check(Role::Listener, &t, &proof), None);
        let other = Transcript { dialer_nonce: &other_nonce, ..t };
        prop_assert_eq!(keys.check(Role::Dialer, &other, &proof).is_some(), other_nonce == dialer_nonce);
        let edited = apply(hello.clone(), &edits);
        let other = Transcript { hello: &edited, ..t };
        prop_assert_eq!(keys.check(Role::Dialer, &other, &proof).is_some(), edited == hello);
    }

    /// A sealed gossip datagram opens to what was sealed, once; mutated, or random bytes, it
    /// does not open, and nothing panics.
    #[test]
    fn a_sealed_datagram_opens_once_and_a_mutated_one_never(
        message in prop::collection::vec(any::<u8>(), 0..2048),
        edits in edits(),
        random in prop::collection::vec(any::<u8>(), 0..128),
    ) {
        let keys = ClusterKeys::new(["a-secret-for-properties-0123"], "default");
        let now = 1_000_000;
        let mut sealed = Vec::new();
        keys.seal(&message, now, &mut sealed).unwrap();
        let mut guard = ReplayGuard::new(30_000);
        let mut out = Vec::new();
        let mutated = apply(sealed.clone(), &edits);
        if mutated != sealed {
            prop_assert_eq!(keys.open(&mutated, now, &mut guard, &mut out), Err(Unopened::Unsealed));
        }
        prop_assert!(keys.open(&random, now, &mut guard, &mut out).is_err());
        prop_assert_eq!(keys.open(&sealed, now, &mut guard, &mut out), Ok(()));
        prop_assert_eq!(&out, &message);
        prop_assert_eq!(keys.open(&sealed, now, &mut guard, &mut out), Err(Unopened::Replayed));
    }

    /// A mutated WAMP JSON message decodes or is refused, never a panic; what decodes encodes
    /// to JSON that decodes to the same message.
    #[test]
    fn the_json_codec_never_panics_and_what_it_reads_round_trips(
        seed in any::<prop::sample::Index>(),
        edits in edits(),
    ) {
        let seeds = json_seeds();
        let text = apply(seeds[seed.index(seeds.len())].clone().into_bytes(), &edits);
        if let Ok(text) = String::from_utf8(text) {
            if let Ok(message) = json::decode(&text) {
                let again = json::encode(&message);
                let back = json::decode(&again);
                prop_assert!(back.is_ok(), "{} -> {}", text, again);
                prop_assert_eq!(json::encode(&back.unwrap()), again);
            }
        }
    }
}
