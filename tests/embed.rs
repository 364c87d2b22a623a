//! The embedding example as its comment says to run it: two routers on one machine form a
//! cluster; one leaves through its admin API, the other on SIGINT; both exit 0 and say how they
//! stopped.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{http, SERIAL};
use wamp_cluster::testkit::{free_port_pair, wait_until, Reaped};

/// The embed example, built by `cargo test` beside the binary.
fn example() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_wamp-cluster"));
    bin.parent().unwrap().join("examples").join("embed")
}

/// A running example and what it printed so far.
struct Router {
    process: Reaped,
    out: Arc<Mutex<Vec<String>>>,
}

impl Router {
    fn start(name: &str, port: u16, seeds: &[String]) -> Router {
        let mut child = Command::new(example())
            .arg(name)
            .arg(port.to_string())
            .args(seeds)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the embed example is built by cargo test");
        let stdout = child.stdout.take().unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let lines = out.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Router {
            process: Reaped(child),
            out,
        }
    }

    fn printed(&self, what: &str) -> bool {
        self.out.lock().unwrap().iter().any(|l| l.contains(what))
    }

    /// The admin API's address, once printed.
    async fn admin(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = self
                .out
                .lock()
                .unwrap()
                .iter()
                .find_map(|l| l.strip_prefix("admin API on ").map(str::to_owned));
            if let Some(url) = found {
                return url;
            }
            assert!(Instant::now() < deadline, "no admin address printed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether the node behind `admin` shows `node` live.
async fn sees(admin: &str, node: &str) -> bool {
    let Ok(response) = http().get(format!("{admin}/cluster/members")).send().await else {
        return false;
    };
    let Ok(members) = response.json::<serde_json::Value>().await else {
        return false;
    };
    members["members"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m["node_id"] == node && m["live"] == true))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_embedded_routers_form_a_cluster_and_each_stops_cleanly() {
    let _serial = SERIAL.lock().await;
    // The example gossips on the port it is given and forwards on the next one.
    let (p1, p2) = (free_port_pair(), free_port_pair());
    let mut first = Router::start("router-1", p1, &[]);
    let mut second = Router::start("router-2", p2, &[format!("127.0.0.1:{p1}")]);
    let (admin1, admin2) = (first.admin().await, second.admin().await);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(sees(&admin1, "router-2").await && sees(&admin2, "router-1").await) {
        assert!(
            Instant::now() < deadline,
            "the routers did not see each other"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A leave through the admin API: the node carries it out and the program exits 0.
    let response = http()
        .post(format!("{admin2}/cluster/leave"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let status = second.process.wait_exit(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    // Its last lines may still be on their way from the reader thread.
    wait_until(
        Duration::from_secs(5),
        "router-2 says how it stopped",
        || second.printed("stopped: LeaveRequested"),
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "router-1 sees router-2 leave",
        || first.printed("Leaving") || first.printed("Left"),
    )
    .await;

    // SIGINT: a graceful leave asked by the program itself.
    assert!(first.process.signal("-INT"));
    let status = first.process.wait_exit(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    wait_until(
        Duration::from_secs(5),
        "router-1 says how it stopped",
        || first.printed("stopped: Left"),
    )
    .await;
}
