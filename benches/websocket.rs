//! Which WebSocket crate serves WAMP clients: tokio-tungstenite (the router's, through its own
//! accept) against fastwebsockets, each as an echo server on its own thread, driven by the
//! same client.
//!
//! `cargo bench --bench websocket` (`-- --quick` for a short run). Prints, per server and
//! message size: round trips one at a time (p50/p99), messages per second with 64 in flight,
//! and the server thread's CPU time per message (the fair figure on a shared machine).
//! Three rounds alternate the servers; each figure is the median with min–max. Then WAMP call
//! round trips through the router with the crate's client, per transport and serializer.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Server {
    Tungstenite,
    FastWebSockets,
}

/// The CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs an echo server on a thread of its own; the thread's CPU time when the client closes.
fn serve(server: Server) -> (SocketAddr, std::thread::JoinHandle<Duration>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            let start = thread_cpu();
            match server {
                Server::Tungstenite => echo_tungstenite(stream).await,
                Server::FastWebSockets => echo_fast(stream).await,
            }
            thread_cpu() - start
        })
    });
    (addr, handle)
}

async fn echo_tungstenite(stream: TcpStream) {
    let (ws, _) = wamp_cluster::router::transport::websocket::accept(stream, 16 << 20)
        .await
        .unwrap();
    let (mut sink, mut stream) = ws.split();
    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Binary(b) => {
                sink.feed(Message::Binary(b)).await.unwrap();
                sink.flush().await.unwrap();
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
}

async fn echo_fast(mut stream: TcpStream) {
    // The upgrade by hand: read the request, answer 101 with the accept key.
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        request.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&request);
    let key = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("sec-websocket-key: ")
                .or_else(|| l.strip_prefix("Sec-WebSocket-Key: "))
        })
        .unwrap()
        .trim();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: wamp.2.msgpack\r\n\r\n"
    );
    stream.write_all(response.as_bytes()).await.unwrap();
    let mut ws = fastwebsockets::WebSocket::after_handshake(stream, fastwebsockets::Role::Server);
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    let mut ws = fastwebsockets::FragmentCollector::new(ws);
    loop {
        let frame = match ws.read_frame().await {
            Ok(frame) => frame,
            Err(_) => break,
        };
        match frame.opcode {
            fastwebsockets::OpCode::Binary => {
                let payload = frame.payload.to_vec();
                ws.write_frame(fastwebsockets::Frame::binary(
                    fastwebsockets::Payload::Owned(payload),
                ))
                .await
                .unwrap();
            }
            fastwebsockets::OpCode::Close => break,
            _ => {}
        }
    }
}

struct Figures {
    p50_us: f64,
    p99_us: f64,
    per_second: f64,
    server_cpu_us_per_message: f64,
}

/// One round against a server: `rtts` round trips one at a time, then `messages` with 64 in
/// flight.
fn round(server: Server, size: usize, rtts: usize, messages: usize) -> Figures {
    let (addr, handle) = serve(server);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (latencies, per_second) = rt.block_on(async move {
        let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("wamp.2.msgpack"),
        );
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (ws, _) = tokio_tungstenite::client_async(request, stream)
            .await
            .unwrap();
        let (mut sink, mut stream) = ws.split();
        let payload = Bytes::from(vec![7u8; size]);
        let mut latencies = Vec::with_capacity(rtts);
        for _ in 0..rtts {
            let t = Instant::now();
            sink.send(Message::Binary(payload.clone())).await.unwrap();
            while !matches!(stream.next().await, Some(Ok(Message::Binary(_)))) {}
            latencies.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let started = Instant::now();
        let (mut sent, mut received) = (0, 0);
        while received < messages {
            while sent < messages && sent - received < 64 {
                sink.feed(Message::Binary(payload.clone())).await.unwrap();
                sent += 1;
            }
            sink.flush().await.unwrap();
            if let Some(Ok(Message::Binary(_))) = stream.next().await {
                received += 1;
            }
        }
        let per_second = messages as f64 / started.elapsed().as_secs_f64();
        sink.send(Message::Close(None)).await.ok();
        (latencies, per_second)
    });
    let cpu = handle.join().unwrap();
    let mut latencies = latencies;
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    Figures {
        p50_us: at(0.5),
        p99_us: at(0.99),
        per_second,
        server_cpu_us_per_message: cpu.as_secs_f64() * 1e6 / (rtts + messages) as f64,
    }
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rtts, messages, rounds) = if quick {
        (2_000, 20_000, 3)
    } else {
        (20_000, 200_000, 3)
    };
    println!("WebSocket echo, one connection, client tokio-tungstenite; {rounds} rounds, median (min–max)");
    println!(
        "{:<16} {:>7} {:>22} {:>22} {:>26} {:>26}",
        "server",
        "bytes",
        "rtt p50 µs",
        "rtt p99 µs",
        "messages/s (64 in flight)",
        "server CPU µs/message"
    );
    for size in [128usize, 4096] {
        let mut results: Vec<(Server, Vec<Figures>)> = vec![
            (Server::Tungstenite, Vec::new()),
            (Server::FastWebSockets, Vec::new()),
        ];
        for _ in 0..rounds {
            for (server, figures) in &mut results {
                figures.push(round(*server, size, rtts, messages));
            }
        }
        for (server, figures) in &results {
            let show = |f: &dyn Fn(&Figures) -> f64| {
                let (m, lo, hi) = median(figures.iter().map(f).collect());
                format!("{m:.1} ({lo:.1}–{hi:.1})")
            };
            println!(
                "{:<16} {:>7} {:>22} {:>22} {:>26} {:>26}",
                format!("{server:?}"),
                size,
                show(&|f| f.p50_us),
                show(&|f| f.p99_us),
                show(&|f| f.per_second),
                show(&|f| f.server_cpu_us_per_message),
            );
        }
    }
    router_calls(quick);
}

/// WAMP calls through the router in this process, with the crate's client: one call in flight,
/// caller and callee on one node, per transport and serializer. The baseline the router's own
/// benchmarks build on.
fn router_calls(quick: bool) {
    use wamp_cluster::client::{Client, ClientOptions};
    use wamp_cluster::router::config::RouterConfig;
    use wamp_cluster::router::Router;
    use wamp_cluster::wamp::serializer::Serializer;
    use wamp_cluster::wamp::{Dict, Payload, Value};

    let calls = if quick { 2_000 } else { 20_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!();
    println!(
        "WAMP call round trip through the router (one process, one call in flight), {calls} calls"
    );
    println!(
        "{:<10} {:<8} {:>12} {:>12} {:>12}",
        "transport", "serial.", "p50 µs", "p99 µs", "calls/s"
    );
    rt.block_on(async move {
        // The body runs as a task on the runtime's workers (see MEASURING.md).
        tokio::spawn(async move {
            let config = RouterConfig {
                ws_addr: ([127, 0, 0, 1], 0).into(),
                rawsocket_addr: Some(([127, 0, 0, 1], 0).into()),
                ..RouterConfig::default()
            };
            let router = Router::start(config, "bench", &wamp_cluster::TlsConfig::default())
                .await
                .unwrap();
            let urls = [
                ("websocket", router.ws_url()),
                (
                    "rawsocket",
                    format!("rs://{}", router.rawsocket_addr().unwrap()),
                ),
            ];
            for (transport, url) in urls {
                for serializer in [Serializer::Json, Serializer::Msgpack] {
                    let options = ClientOptions::new("realm1").serializer(serializer);
                    let callee = Client::connect(&url, options.clone()).await.unwrap();
                    let procedure = format!("bench.echo.{transport}.{serializer}");
                    callee
                        .register(
                            &procedure,
                            Dict::new(),
                            |inv| async move { Ok(inv.payload) },
                        )
                        .await
                        .unwrap();
                    let caller = Client::connect(&url, options).await.unwrap();
                    let payload = Payload::Args(vec![Value::String("x".repeat(64))]);
                    let mut latencies = Vec::with_capacity(calls);
                    let started = Instant::now();
                    for _ in 0..calls {
                        let t = Instant::now();
                        caller.call(&procedure, payload.clone()).await.unwrap();
                        latencies.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                    let per_second = calls as f64 / started.elapsed().as_secs_f64();
                    latencies.sort_by(f64::total_cmp);
                    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
                    println!(
                        "{:<10} {:<8} {:>12.1} {:>12.1} {:>12.0}",
                        transport,
                        serializer.name(),
                        at(0.5),
                        at(0.99),
                        per_second
                    );
                    caller.leave().await.unwrap();
                    callee.leave().await.unwrap();
                }
            }
            router.shutdown().await;
        })
        .await
        .unwrap();
    });
}
