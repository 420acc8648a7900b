//! Test nodes as network namespaces: each node its own namespace with its
//! own address, joined by a veth to one bridge of the host, which has an
//! address on the same subnet (where tests run what all nodes reach, such
//! as the broker). Dropping a [`TestNet`] deletes all of it.

use std::process::Command;
use std::sync::Mutex;

/// One node's namespace.
#[derive(Debug)]
pub struct NodeNs {
    /// The name `ip netns` knows it by (`/run/netns/<ns>`).
    pub ns: String,
    /// Its address on the test subnet.
    pub addr: String,
    /// The host end of its veth (down: the node is cut off).
    port: String,
}

/// A bridge and the namespaces on it.
#[derive(Debug)]
pub struct TestNet {
    bridge: String,
    host_addr: String,
    nodes: Vec<NodeNs>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A /24 under 10.213/16 that no interface of the host uses yet.
fn free_subnet() -> String {
    static TAKEN: Mutex<Vec<u8>> = Mutex::new(Vec::new());
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new("ip")
        .args(["-4", "-o", "addr"])
        .output()
        .expect("ip addr");
    let used = String::from_utf8_lossy(&out.stdout);
    let start = (std::process::id() % 200) as u8;
    for k in 0..250u8 {
        let x = start.wrapping_add(k) % 250 + 1;
        let net = format!("10.213.{x}");
        if !taken.contains(&x) && !used.contains(&format!("{net}.")) {
            taken.push(x);
            return net;
        }
    }
    panic!("no free test subnet under 10.213/16");
}

impl TestNet {
    /// `n` namespaces (addresses `.1` … `.n`), the host at `.254`.
    pub fn new(n: usize) -> TestNet {
        let net = free_subnet();
        let tag = net.rsplit('.').next().unwrap_or("0").to_owned();
        let id = format!("{tag}x{}", std::process::id() % 10_000);
        let t = TestNet {
            bridge: format!("ftnb{id}"),
            host_addr: format!("{net}.254"),
            nodes: Vec::new(),
        };
        ip(&["link", "add", &t.bridge, "type", "bridge"]);
        let mut t = t;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", t.host_addr),
            "dev",
            &t.bridge,
        ]);
        ip(&["link", "set", &t.bridge, "up"]);
        for i in 1..=n {
            let node = NodeNs {
                ns: format!("ftn{id}n{i}"),
                addr: format!("{net}.{i}"),
                port: format!("ftnh{id}n{i}"),
            };
            let peer = format!("ftnp{id}n{i}");
            ip(&["netns", "add", &node.ns]);
            t.nodes.push(node);
            let node = &t.nodes[i - 1];
            ip(&[
                "link", "add", &node.port, "type", "veth", "peer", "name", &peer,
            ]);
            ip(&["link", "set", &node.port, "master", &t.bridge, "up"]);
            ip(&["link", "set", &peer, "netns", &node.ns]);
            let cidr = format!("{}/24", node.addr);
            ip(&["-n", &node.ns, "addr", "add", &cidr, "dev", &peer]);
            ip(&["-n", &node.ns, "link", "set", &peer, "up"]);
            ip(&["-n", &node.ns, "link", "set", "lo", "up"]);
        }
        t
    }

    /// The host's address on the subnet, reachable from every node.
    pub fn host_addr(&self) -> &str {
        &self.host_addr
    }

    /// Node `i` (0-based).
    pub fn node(&self, i: usize) -> &NodeNs {
        &self.nodes[i]
    }

    /// Cut node `i` off the bridge, or put it back.
    pub fn link(&self, i: usize, up: bool) {
        let port = &self.nodes[i].port;
        ip(&["link", "set", port, if up { "up" } else { "down" }]);
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for n in &self.nodes {
            let _ = Command::new("ip").args(["netns", "del", &n.ns]).output();
            let _ = Command::new("ip").args(["link", "del", &n.port]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

/// `ssh -i key target cmd` from network namespace `ns`, host keys not
/// checked (a test's guest is new each time): its stdout, trimmed, or
/// `None` when it did not log in or the command failed.
pub fn ssh_in(ns: &str, key: &std::path::Path, target: &str, cmd: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ssh", "-i"])
        .arg(key)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=3",
            "-o",
            "LogLevel=ERROR",
            target,
            cmd,
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// [`ssh_in`], again every second for up to `limit`: right after a
/// guest's first login, cloud-init still restarts services (sshd too).
pub fn ssh_in_retry(
    ns: &str,
    key: &std::path::Path,
    target: &str,
    cmd: &str,
    limit: std::time::Duration,
) -> Option<String> {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(out) = ssh_in(ns, key, target, cmd) {
            return Some(out);
        }
        if t0.elapsed() > limit {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(from_ns: &str, to: &str) -> bool {
        Command::new("ip")
            .args([
                "netns", "exec", from_ns, "busybox", "ping", "-c1", "-W1", to,
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    #[test]
    fn nodes_reach_each_other_and_the_host_until_cut_off() {
        let net = TestNet::new(2);
        let (a, b) = (net.node(0), net.node(1));
        assert!(ping(&a.ns, &b.addr));
        assert!(ping(&b.ns, net.host_addr()));
        net.link(1, false);
        assert!(!ping(&a.ns, &b.addr), "a cut-off node still answers");
        net.link(1, true);
        assert!(ping(&a.ns, &b.addr));
        let names = (a.ns.clone(), net.bridge.clone());
        drop(net);
        let listed = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip");
        assert!(!String::from_utf8_lossy(&listed.stdout).contains(&names.0));
        let link = Command::new("ip")
            .args(["link", "show", &names.1])
            .output()
            .expect("ip");
        assert!(!link.status.success(), "the bridge is left");
    }
}
