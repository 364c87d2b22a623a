//! Network namespaces for the nodes: one namespace per node, joined by veth pairs to a bridge
//! that this launcher creates (the launcher reaches the nodes' admin ports through the bridge's
//! address). Partitions and packet loss are nftables rules inside a node's namespace; delay is
//! `tc netem`. Everything is removed when the value is dropped.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// The namespaces of one launcher run.
pub struct Netns {
    /// Short name prefix: `wc` and the launcher's process id.
    pub prefix: String,
    bridge: String,
    /// The subnet's first two... three octets: `10.a.b.0/24`.
    net: [u8; 3],
    namespaces: Vec<String>,
    /// Why `tc netem` cannot be used, if it cannot.
    pub netem_missing: Option<String>,
}

/// Runs `ip`, `nft` or `tc`; the error names the command and what it printed.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("{program}: {err}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|err| format!("{program}: {err}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|err| format!("{program}: {err}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Removes the namespaces and bridges of launchers that are gone (killed with `kill -9`, so
/// that nothing of theirs could run): names `wc<pid>n<i>` and `wc<pid>br` whose process no
/// longer exists.
fn remove_stale() {
    let gone = |name: &str, suffix: char| {
        let pid = name
            .strip_prefix("wc")
            .and_then(|rest| rest.split(suffix).next())
            .and_then(|pid| pid.parse::<u32>().ok());
        pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    };
    let listed = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    for line in listed(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.contains('n') && gone(name, 'n') {
            let _ = run("ip", &["netns", "del", name], None);
        }
    }
    for line in listed(&["-o", "link", "show", "type", "bridge"]).lines() {
        // `<index>: <name>: <flags> ...`
        let name = line.split(": ").nth(1).unwrap_or("");
        if name.ends_with("br") && gone(name, 'b') {
            let _ = run("ip", &["link", "del", name], None);
        }
    }
}

/// The nftables table of our rules in a node's namespace.
const TABLE: &str = "wamp_cluster_chaos";

impl Netns {
    /// Creates the bridge and checks, with a first namespace, that namespaces, veth pairs and
    /// nftables work here; the error says what does not.
    pub fn new() -> Result<Netns, String> {
        remove_stale();
        let id = std::process::id();
        let mut netns = Netns {
            prefix: format!("wc{id}"),
            bridge: format!("wc{id}br"),
            net: [10, 200 + (id % 50) as u8, (id / 50 % 250) as u8],
            namespaces: Vec::new(),
            netem_missing: None,
        };
        run(
            "ip",
            &["link", "add", &netns.bridge, "type", "bridge"],
            None,
        )?;
        let [a, b, c] = netns.net;
        let address = format!("{a}.{b}.{c}.254/24");
        run("ip", &["addr", "add", &address, "dev", &netns.bridge], None)?;
        run("ip", &["link", "set", &netns.bridge, "up"], None)?;
        // The first node's namespace doubles as the probe.
        netns.add(1)?;
        let ns = netns.name(1);
        let probe = format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n");
        run(
            "ip",
            &["netns", "exec", &ns, "nft", "-f", "-"],
            Some(&probe),
        )
        .map_err(|err| format!("nftables: {err}"))?;
        let netem = [
            "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "1ms",
        ];
        match run(
            "ip",
            &[&["netns", "exec", &ns, "tc"][..], &netem].concat(),
            None,
        ) {
            Ok(()) => {
                let _ = netns.tc(1, &["qdisc", "del", "dev", "eth0", "root"]);
            }
            Err(err) => netns.netem_missing = Some(err),
        }
        Ok(netns)
    }

    fn name(&self, node: usize) -> String {
        format!("{}n{node}", self.prefix)
    }

    /// The address of `node` (slot number from 1) inside its namespace.
    pub fn ip(&self, node: usize) -> Ipv4Addr {
        let [a, b, c] = self.net;
        Ipv4Addr::new(a, b, c, node as u8)
    }

    /// Creates the namespace of `node` (once) and links it to the bridge.
    pub fn add(&mut self, node: usize) -> Result<(), String> {
        let ns = self.name(node);
        if self.namespaces.contains(&ns) {
            return Ok(());
        }
        if node == 0 || node > 250 {
            return Err(format!("no address for node {node} in a /24"));
        }
        run("ip", &["netns", "add", &ns], None)?;
        self.namespaces.push(ns.clone());
        let host = format!("{}v{node}", self.prefix);
        run(
            "ip",
            &[
                "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
            None,
        )?;
        run("ip", &["link", "set", &host, "master", &self.bridge], None)?;
        run("ip", &["link", "set", &host, "up"], None)?;
        let address = format!("{}/24", self.ip(node));
        let exec = |args: &[&str]| {
            run(
                "ip",
                &[&["netns", "exec", &ns, "ip"][..], args].concat(),
                None,
            )
        };
        exec(&["addr", "add", &address, "dev", "eth0"])?;
        exec(&["link", "set", "eth0", "up"])?;
        exec(&["link", "set", "lo", "up"])
    }

    /// A command that runs `program` inside the namespace of `node`.
    pub fn command(&self, node: usize, program: &std::path::Path) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name(node)])
            .arg(program);
        command
    }

    fn nft(&self, node: usize, rules: &str) -> Result<(), String> {
        run(
            "ip",
            &["netns", "exec", &self.name(node), "nft", "-f", "-"],
            Some(rules),
        )
    }

    fn tc(&self, node: usize, args: &[&str]) -> Result<(), String> {
        let ns = self.name(node);
        run(
            "ip",
            &[&["netns", "exec", &ns, "tc"][..], args].concat(),
            None,
        )
    }

    /// Drops what `node` receives from `from` and, unless `one_way`, what it sends to them.
    pub fn cut(&self, node: usize, from: &[usize], one_way: bool) -> Result<(), String> {
        let set: Vec<String> = from.iter().map(|&n| self.ip(n).to_string()).collect();
        let set = set.join(", ");
        let mut rules = format!(
            "table inet {TABLE} {{\n chain input {{ type filter hook input priority 0; ip saddr {{ {set} }} drop; }}\n"
        );
        if !one_way {
            rules += &format!(
                " chain output {{ type filter hook output priority 0; ip daddr {{ {set} }} drop; }}\n"
            );
        }
        rules += "}\n";
        self.nft(node, &rules)
    }

    /// Drops `percent` of what `node` receives.
    pub fn loss(&self, node: usize, percent: u64) -> Result<(), String> {
        self.nft(
            node,
            &format!(
                "table inet {TABLE} {{\n chain input {{ type filter hook input priority 0; iifname \"eth0\" numgen random mod 100 < {percent} drop; }}\n}}\n"
            ),
        )
    }

    /// Delays what `node` sends by `ms`.
    pub fn delay(&self, node: usize, ms: u64) -> Result<(), String> {
        if let Some(why) = &self.netem_missing {
            return Err(why.clone());
        }
        let delay = format!("{ms}ms");
        self.tc(
            node,
            &[
                "qdisc", "add", "dev", "eth0", "root", "netem", "delay", &delay,
            ],
        )
    }

    /// Removes every rule and delay from `node`'s namespace.
    pub fn heal(&self, node: usize) {
        let _ = self.nft(node, &format!("delete table inet {TABLE}\n"));
        if self.netem_missing.is_none() {
            let _ = self.tc(node, &["qdisc", "del", "dev", "eth0", "root"]);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and with it the other end.
        for ns in &self.namespaces {
            let _ = run("ip", &["netns", "del", ns], None);
        }
        let _ = run("ip", &["link", "del", &self.bridge], None);
    }
}
