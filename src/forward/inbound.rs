//! The listening side: accepts connections from other nodes, does the handshake, hands each
//! `Forward` to the [`Deliver`] handler in arrival order, and answers `Ack` or `Nack` only after
//! the handler's verdict. Answers are batched: they are written when no further frame is
//! already readable.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use futures_util::{FutureExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::codec::{Encoder, FramedRead};
use tracing::{debug, warn};

use super::deliver::{Deliver, Delivery, Verdict};
use super::Inner;
use crate::metrics as m;
use crate::wire::{self, Frame, FrameCodec, NackReason, RefuseReason};

/// Accepts connections until shutdown.
pub(crate) async fn listen(inner: Arc<Inner>, listener: TcpListener, deliver: Arc<dyn Deliver>) {
    loop {
        let accepted = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                inner
                    .tasks
                    .spawn(connection(inner.clone(), stream, peer, deliver.clone()));
            }
            Err(err) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                warn!(error = %err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

fn count_refusal(inner: &Inner, reason: &'static str) {
    metrics::counter!(m::HANDSHAKES_REFUSED, "node" => inner.self_id.to_string(), "reason" => reason)
        .increment(1);
}

/// Serves one inbound connection.
async fn connection(
    inner: Arc<Inner>,
    stream: TcpStream,
    peer: SocketAddr,
    deliver: Arc<dyn Deliver>,
) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut codec = FrameCodec::new(inner.config.max_frame_bytes);
    let mut reader = FramedRead::new(read, FrameCodec::new(inner.config.max_frame_bytes));
    let mut out = BytesMut::new();

    let first = tokio::time::timeout(inner.config.connect_timeout(), reader.next()).await;
    let hello = match first {
        Ok(Some(Ok(Frame::Hello(hello)))) => hello,
        Ok(Some(Ok(_))) | Ok(Some(Err(_))) => {
            count_refusal(&inner, "bad_hello");
            debug!(%peer, "refused: the first frame is not a hello");
            let _ = codec.encode(
                &Frame::Refuse {
                    reason: RefuseReason::BadHello,
                },
                &mut out,
            );
            let _ = write.write_all(&out).await;
            return;
        }
        Ok(None) => return,
        Err(_) => {
            count_refusal(&inner, "timeout");
            return;
        }
    };
    let version = match wire::negotiate(&hello, &inner.cluster_id, &inner.self_id) {
        Ok(version) => version,
        Err(reason) => {
            count_refusal(
                &inner,
                match reason {
                    RefuseReason::BadHello => "bad_hello",
                    RefuseReason::NoCommonVersion { .. } => "no_common_version",
                    RefuseReason::WrongCluster { .. } => "wrong_cluster",
                    RefuseReason::WrongNode { .. } => "wrong_node",
                    RefuseReason::Overloaded => "overloaded",
                    RefuseReason::ShuttingDown => "shutting_down",
                },
            );
            debug!(%peer, from = %hello.node_id, %reason, "handshake refused");
            let _ = codec.encode(&Frame::Refuse { reason }, &mut out);
            let _ = write.write_all(&out).await;
            return;
        }
    };
    if codec.encode(&Frame::Welcome { version }, &mut out).is_err()
        || write.write_all(&out).await.is_err()
    {
        return;
    }
    out.clear();
    let from = hello.node_id;

    loop {
        // Take what is already readable; flush the answers before waiting for more.
        let next = match reader.next().now_or_never() {
            Some(next) => next,
            None => {
                if !out.is_empty() {
                    if write.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
                tokio::select! {
                    _ = inner.shutdown.cancelled() => return,
                    next = reader.next() => next,
                }
            }
        };
        let frame = match next {
            None => return,
            Some(Ok(frame)) => frame,
            Some(Err(err)) => {
                let reason = match err {
                    wire::WireError::TooLarge { .. } => "too_large",
                    wire::WireError::Malformed(_) => "malformed",
                    wire::WireError::Io(_) => "io",
                };
                metrics::counter!(m::FRAMES_REFUSED, "node" => inner.self_id.to_string(), "reason" => reason)
                    .increment(1);
                debug!(%peer, %from, error = %err, "bad frame; closing");
                return;
            }
        };
        let answer = match frame {
            Frame::Forward(forward) => {
                let expiry =
                    Instant::now() + std::time::Duration::from_millis(forward.ttl_ms.into());
                let id = forward.id;
                let verdict = if forward.ttl_ms == 0 {
                    Some(Err(NackReason::Expired))
                } else {
                    let delivery = Delivery {
                        from: forward.from,
                        to: forward.to,
                        message: forward.message,
                    };
                    match deliver.deliver(delivery) {
                        Verdict::Accepted => Some(Ok(())),
                        Verdict::Refused(reason) => Some(Err(reason)),
                        // A handler that does not answer within the time to live gets no
                        // answer sent for it: the sender sees `Timeout`, as from a node that
                        // does not answer, which is the truth.
                        Verdict::Later(answer) => {
                            let answer = tokio::select! {
                                _ = inner.shutdown.cancelled() => return,
                                answer = tokio::time::timeout_at(expiry, answer) => answer,
                            };
                            match answer {
                                Ok(Ok(result)) => Some(result),
                                Ok(Err(_)) => Some(Err(NackReason::Refused(
                                    "the handler dropped the message".into(),
                                ))),
                                Err(_) => None,
                            }
                        }
                    }
                };
                match verdict {
                    Some(Ok(())) => Frame::Ack { id },
                    Some(Err(reason)) => Frame::Nack { id, reason },
                    None => continue,
                }
            }
            Frame::Ping { id } => Frame::Pong { id },
            other => {
                metrics::counter!(m::FRAMES_REFUSED, "node" => inner.self_id.to_string(), "reason" => "unexpected")
                    .increment(1);
                debug!(%peer, %from, frame = ?other, "unexpected frame; closing");
                return;
            }
        };
        if codec.encode(&answer, &mut out).is_err() {
            return;
        }
    }
}
