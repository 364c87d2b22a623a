//! Real WAMP clients that nobody here wrote, against a real `wamp-cluster` process:
//! autobahn-python (the full matrix, each serializer) and autobahn-js (a smaller set, each
//! serializer), and the crate's own client with autobahn in both directions.
//!
//! The clients are installed the first time, pinned, under `target/`: a virtualenv from
//! `tests/interop/requirements.txt` and `npm ci` from `tests/interop/package-lock.json`. They
//! need `python3` (with `venv`) and `node`/`npm` on the machine, and a package registry to
//! install from.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use wamp_cluster::client::{Client, ClientOptions, WampError};
use wamp_cluster::testkit::{free_addr, Reaped};
use wamp_cluster::wamp::serializer::Serializer;
use wamp_cluster::wamp::{Dict, Payload, Value};

const BIN: &str = env!("CARGO_BIN_EXE_wamp-cluster");
const SUITE_PY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/interop/autobahn_suite.py"
);
const SUITE_JS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/interop/autobahn_suite.js"
);
const INTEROP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop");

/// Where the clients are installed: `target/tmp/interop`.
fn home() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("interop")
}

/// One installation at a time, once per test process.
static INSTALL: Mutex<()> = Mutex::new(());

fn run(command: &mut Command, what: &str) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `marker` holds `content` (what was installed last time).
fn installed(marker: &Path, content: &str) -> bool {
    std::fs::read_to_string(marker).is_ok_and(|m| m == content)
}

/// The virtualenv's python, with autobahn-python installed.
fn python() -> PathBuf {
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let venv = home().join("venv");
    let python = venv.join("bin/python");
    let requirements = std::fs::read_to_string(format!("{INTEROP}/requirements.txt")).unwrap();
    let marker = venv.join(".installed");
    if python.exists() && installed(&marker, &requirements) {
        return python;
    }
    let found = Command::new("python3").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "the interop tests need python3 with the venv module (Debian: apt install python3 python3-venv)"
    );
    let _ = std::fs::remove_dir_all(&venv);
    std::fs::create_dir_all(home()).unwrap();
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "creating the virtualenv",
    );
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(format!("{INTEROP}/requirements.txt")),
        "installing autobahn-python",
    );
    std::fs::write(&marker, requirements).unwrap();
    python
}

/// The folder whose `node_modules` holds autobahn-js.
fn node_modules() -> PathBuf {
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = home().join("js");
    let lock = std::fs::read_to_string(format!("{INTEROP}/package-lock.json")).unwrap();
    let marker = dir.join(".installed");
    if dir.join("node_modules/autobahn").exists() && installed(&marker, &lock) {
        return dir.join("node_modules");
    }
    for tool in ["node", "npm"] {
        let found = Command::new(tool).arg("--version").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "the interop tests need {tool} (Node.js 20 or later with npm)"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["package.json", "package-lock.json"] {
        std::fs::copy(format!("{INTEROP}/{file}"), dir.join(file)).unwrap();
    }
    run(
        Command::new("npm")
            .args(["ci", "--silent", "--no-audit", "--no-fund"])
            .current_dir(&dir),
        "installing autobahn-js",
    );
    std::fs::write(&marker, lock).unwrap();
    dir.join("node_modules")
}

/// A `wamp-cluster` process with realm `realm1` (anonymous) and realm `secure` (a ticket, a
/// WAMP-CRA secret plain and salted, a cryptosign key), its secrets in its folder.
struct Node {
    _process: Reaped,
    ws: SocketAddr,
    rs: SocketAddr,
    dir: tempfile::TempDir,
}

/// The cryptosign seed of user `carol`.
const SEED: [u8; 32] = [5; 32];

impl Node {
    fn start() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        std::fs::write(dir.path().join("ticket"), "ticket-of-alice\n").unwrap();
        std::fs::write(dir.path().join("secret"), "bob's secret\n").unwrap();
        let seed: String = SEED.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(dir.path().join("cryptosign.seed"), &seed).unwrap();
        let public: String = ed25519_dalek::SigningKey::from_bytes(&SEED)
            .verifying_key()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let (ws, rs) = (free_addr(), free_addr());
        let config = format!(
            r#"node_id = "interop"
gossip_addr = "{gossip}"
forward_addr = "{forward}"
admin_addr = "127.0.0.1:0"

[router]
ws_addr = "{ws}"
rawsocket_addr = "{rs}"

[[router.realms]]
name = "realm1"
anonymous_role = "anonymous"
[[router.realms.roles]]
name = "anonymous"
permissions = [
  {{ uri = "", match = "prefix", call = true, register = true, publish = true, subscribe = true }},
  {{ uri = "com.interop.who", match = "exact", publish = true, subscribe = true, disclose = true }},
]

[[router.realms]]
name = "secure"
[[router.realms.roles]]
name = "user"
permissions = [
  {{ uri = "com.example.", match = "prefix", call = true, subscribe = true }},
  {{ uri = "com.example.mine", match = "exact", call = true, register = true, publish = true }},
]
[[router.realms.users]]
authid = "alice"
role = "user"
ticket_file = "{d}/ticket"
[[router.realms.users]]
authid = "bob"
role = "user"
secret_file = "{d}/secret"
[[router.realms.users]]
authid = "bob-salted"
role = "user"
secret_file = "{d}/secret"
salt = "pepper"
iterations = 100
[[router.realms.users]]
authid = "carol"
role = "user"
pubkeys = ["{public}"]
"#,
            gossip = free_addr(),
            forward = free_addr(),
        );
        let path = dir.path().join("node.toml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
        let process = Reaped(
            Command::new(BIN)
                .args(["node", "--config"])
                .arg(&path)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("wamp-cluster starts"),
        );
        common::wait_listening(ws, Duration::from_secs(20));
        Node {
            _process: process,
            ws,
            rs,
            dir,
        }
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.ws)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }
}

/// Runs a client script to its end (at most 5 minutes); its output.
fn script(command: &mut Command, node: &Node) -> String {
    let mut child = Reaped(
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the client starts"),
    );
    let status = child.wait_exit(Duration::from_secs(300));
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read;
    if let Some(stdout) = child.0.stdout.as_mut() {
        let _ = stdout.read_to_string(&mut out);
    }
    if let Some(stderr) = child.0.stderr.as_mut() {
        let _ = stderr.read_to_string(&mut err);
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "{command:?} failed ({status:?}):\n{out}\n{err}\nnode log:\n{}",
        node.log()
    );
    out
}

/// Runs a suite once per serializer against one node: each run passes `checks` checks.
fn suite(node: &Node, checks: usize, command: impl Fn() -> Command) {
    for serializer in ["json", "msgpack", "cbor"] {
        let out = script(
            command()
                .args(["--ws", &node.ws_url(), "--rs", &node.rs.to_string()])
                .args(["--serializer", serializer])
                .arg("--secrets")
                .arg(node.dir.path()),
            node,
        );
        let passed = out.lines().filter(|l| l.starts_with("ok ")).count();
        assert_eq!(passed, checks, "{serializer}: every check ran:\n{out}");
    }
}

/// autobahn-python, every check of its suite, over each serializer.
#[test]
fn autobahn_python_passes_the_full_suite_with_each_serializer() {
    let python = python();
    let node = Node::start();
    suite(&node, 15, || {
        let mut command = Command::new(&python);
        command.arg(SUITE_PY).arg("suite");
        command
    });
}

/// autobahn-js, its smaller suite, over each serializer.
#[test]
fn autobahn_js_passes_its_suite_with_each_serializer() {
    let modules = node_modules();
    let node = Node::start();
    suite(&node, 5, || {
        let mut command = Command::new("node");
        command.arg(SUITE_JS).env("NODE_PATH", &modules);
        command
    });
}

fn s(text: &str) -> Value {
    Value::String(text.into())
}

/// The crate's client calls procedures an autobahn-python callee registered, and an
/// autobahn-python caller calls procedures the crate's client registered: arguments, keyword
/// arguments, errors and progressive results cross both ways, for each serializer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_and_autobahn_call_each_other_both_ways() {
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let node = Node::start();
    for serializer in Serializer::ALL {
        // Rust caller, Python callee.
        let mut callee = Reaped(
            Command::new(&python)
                .arg(SUITE_PY)
                .arg("callee")
                .args(["--ws", &node.ws_url(), "--serializer", serializer.name()])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let stdout = callee.0.stdout.take().unwrap();
        let ready = tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .any(|l| l == "ready")
        });
        assert!(
            tokio::time::timeout(Duration::from_secs(30), ready)
                .await
                .unwrap()
                .unwrap(),
            "the python callee registered"
        );
        let client = Client::connect(
            &node.ws_url(),
            ClientOptions::new("realm1").serializer(serializer),
        )
        .await
        .unwrap();
        let kwargs: Dict = [(
            "k".to_owned(),
            Value::List(vec![Value::Integer(1), Value::Null]),
        )]
        .into_iter()
        .collect();
        let payload = Payload::ArgsKw(vec![s("ü ✓"), Value::Float(2.5)], kwargs);
        let echoed = client
            .call("com.interop.py.echo", payload.clone())
            .await
            .unwrap();
        assert_eq!(echoed.payload, payload, "{serializer}");
        let err = client
            .call("com.interop.py.fail", Payload::Empty)
            .await
            .unwrap_err();
        let wamp_cluster::client::ClientError::Error(err) = err else {
            panic!("{err:?}")
        };
        assert_eq!(err.uri, "com.interop.py.error");
        let mut call = client
            .call_with(
                "com.interop.py.progress",
                Payload::Args(vec![Value::Integer(3)]),
                Default::default(),
                true,
            )
            .await
            .unwrap();
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let p = tokio::time::timeout(Duration::from_secs(5), call.progress.recv())
                .await
                .unwrap()
                .unwrap();
            seen.push(p.payload);
        }
        assert_eq!(
            seen,
            (0..3)
                .map(|i| Payload::Args(vec![Value::Integer(i)]))
                .collect::<Vec<_>>()
        );
        let last = call.result(Duration::from_secs(5)).await.unwrap();
        assert_eq!(last.payload, Payload::Args(vec![Value::Integer(3)]));
        drop(callee);

        // Python caller, Rust callee.
        client
            .register("com.interop.rust.echo", Dict::new(), |inv| async move {
                Ok(inv.payload)
            })
            .await
            .unwrap();
        client
            .register("com.interop.rust.fail", Dict::new(), |_| async {
                let kwargs = [("n".to_owned(), Value::Integer(2))].into_iter().collect();
                Err(WampError::new(
                    "com.interop.rust.error",
                    Payload::ArgsKw(vec![s("from rust")], kwargs),
                ))
            })
            .await
            .unwrap();
        client
            .register("com.interop.rust.progress", Dict::new(), |inv| async move {
                let Payload::Args(args) = &inv.payload else {
                    return Ok(Payload::Empty);
                };
                let Some(Value::Integer(n)) = args.first().cloned() else {
                    return Ok(Payload::Empty);
                };
                for i in 0..n {
                    let _ = inv.progress(Payload::Args(vec![Value::Integer(i)])).await;
                }
                Ok(Payload::Args(vec![Value::Integer(n)]))
            })
            .await
            .unwrap();
        let python = python.clone();
        let url = node.ws_url();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(&python)
                .arg(SUITE_PY)
                .arg("caller")
                .args(["--ws", &url, "--serializer", serializer.name()])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{serializer}: the python caller:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        client.leave().await.unwrap();
    }
}
