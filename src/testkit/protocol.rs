//! The wire format, the handshake's proofs and the gossip sealing, for tests that speak to a
//! node byte by byte (bad input, impostors) and for the property tests of the decoders. A node
//! keeps these to itself; they are shown here as they are.

use bytes::BytesMut;
use tokio_util::codec::Encoder;

pub use crate::membership::chitchat_config;
pub use crate::security::{ClusterKeys, ReplayGuard, Role, Transcript, Unopened};
pub use crate::wire::frame::Forward;
pub use crate::wire::{
    check_clock, encode_forward, hello_bytes, negotiate, set_deadline, take_acks, wall_clock_ms,
    Frame, FrameCodec, Hello, RefuseReason, WireError, FRAME_LIMIT, MAGIC, MAX_VERSION,
    MIN_VERSION,
};

/// `frame`, encoded as a node writes it.
pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut buf = BytesMut::new();
    // Encoding into a growable buffer fails only past the frame limit.
    FrameCodec::new(FRAME_LIMIT)
        .encode(frame, &mut buf)
        .unwrap_or_else(|err| panic!("{} frame: {err}", frame.name()));
    buf.to_vec()
}

/// The next frame on `stream`, read into `buf` (bytes after it stay there); `None` when the
/// stream closes first. Panics on a bad frame or after 5 s.
pub async fn read_frame(stream: &mut tokio::net::TcpStream, buf: &mut BytesMut) -> Option<Frame> {
    use tokio::io::AsyncReadExt;
    use tokio_util::codec::Decoder;
    let mut codec = FrameCodec::new(FRAME_LIMIT);
    super::within(std::time::Duration::from_secs(5), "a frame", async {
        loop {
            if let Some(frame) = codec.decode(buf).expect("a well-formed frame") {
                return Some(frame);
            }
            if stream.read_buf(buf).await.unwrap_or(0) == 0 {
                return None;
            }
        }
    })
    .await
}

/// A hello of this version range from `node_id` (generation 1) to `to_node` of `cluster`.
pub fn hello(cluster: &str, node_id: &str, to_node: &str) -> Hello {
    Hello {
        magic: MAGIC,
        min_version: MIN_VERSION,
        max_version: MAX_VERSION,
        cluster_id: cluster.into(),
        node_id: node_id.into(),
        generation: 1,
        to_node: to_node.into(),
        wall_clock_ms: crate::wire::wall_clock_ms(),
    }
}

/// A hello from `intruder` to `node-1` of `cluster`, encoded as a node sends it.
pub fn hello_from_intruder(cluster: &str) -> Vec<u8> {
    encode(&Frame::Hello(hello(cluster, "intruder", "node-1")))
}

/// The pure functions that derive a live view from gossip, for benchmarks that build a view
/// without a cluster.
pub mod view {
    pub use crate::membership::keys::NodeKeys;
    pub use crate::membership::view::{derive_view, GossipNode, ViewInput};
}
