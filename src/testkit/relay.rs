//! A TCP relay in front of a node's forward port that can cut the connections it carries
//! without closing them: what they carry is then read and dropped, as on a path that died
//! while both ends stay up. Connections made after the cut are relayed normally.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running relay; it stops when dropped.
pub struct Relay {
    /// Where to connect instead of the target.
    pub addr: SocketAddr,
    /// Connections numbered below this are cut.
    cut: Arc<AtomicU64>,
    /// Connections accepted so far.
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

/// Copies `from` to `to` until `from` closes, dropping everything once connection `number` is
/// cut.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    number: u64,
    cut: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) if number >= cut.load(Ordering::SeqCst) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
        }
    }
    let _ = to.shutdown().await;
}

impl Relay {
    /// A relay on a free loopback port to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let (c, a) = (cut.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let number = a.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, number, c.clone()));
                tokio::spawn(pump(server_read, client_write, number, c.clone()));
            }
        });
        Ok(Relay {
            addr,
            cut,
            accepted,
            task,
        })
    }

    /// Cuts every connection accepted so far.
    pub fn cut(&self) {
        self.cut.store(self.accepted(), Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
