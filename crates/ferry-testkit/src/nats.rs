//! A three-server NATS JetStream cluster on loopback for ferry's broker
//! tests (issue 18): each server with its own client, cluster and
//! monitoring port (free ports probed), its own store dir and log, routes
//! to the other two. Servers can be killed and started again (with their
//! store, as a crashed host comes back). Dropping the cluster kills every
//! server and removes their dirs, also when the test panicked.
//!
//! ```no_run
//! # use ferry_testkit::nats::NatsCluster;
//! let c = NatsCluster::start(3).expect("nats");
//! let uri = c.uri(); // nats://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3
//! ```
//!
//! Needs Debian's `nats-server` (2.9 has JetStream).

use std::fs;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a cluster may take to elect its JetStream meta leader.
const READY: Duration = Duration::from_secs(60);

/// One server of the cluster.
#[derive(Debug)]
struct Server {
    name: String,
    client_port: u16,
    cluster_port: u16,
    http_port: u16,
    child: Option<Child>,
}

/// A running cluster of `nats-server`s with JetStream.
#[derive(Debug)]
pub struct NatsCluster {
    dir: tempfile::TempDir,
    /// The address every server listens on.
    ip: Ipv4Addr,
    cluster_name: String,
    servers: Vec<Server>,
}

/// A leader's name as `/jsz` reports it (empty: none).
fn leader_name(l: &str) -> Option<String> {
    (!l.is_empty()).then(|| l.to_owned())
}

fn free_port(ip: Ipv4Addr) -> io::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

impl NatsCluster {
    /// Start `n` servers on loopback and wait until JetStream has a meta
    /// leader that every server knows.
    pub fn start(n: usize) -> io::Result<NatsCluster> {
        NatsCluster::start_at(Ipv4Addr::LOCALHOST, n)
    }

    /// [`NatsCluster::start`] with every server listening on `ip` (the
    /// host's address on a test bridge, which nodes in network namespaces
    /// reach).
    pub fn start_at(ip: Ipv4Addr, n: usize) -> io::Result<NatsCluster> {
        let dir = tempfile::Builder::new().prefix("ferry-nats").tempdir()?;
        let tag = format!("{:08x}", fastrand::u32(..));
        let mut servers = Vec::new();
        for i in 1..=n {
            servers.push(Server {
                name: format!("ferrytk-{tag}-s{i}"),
                client_port: free_port(ip)?,
                cluster_port: free_port(ip)?,
                http_port: free_port(ip)?,
                child: None,
            });
        }
        let mut c = NatsCluster {
            dir,
            ip,
            cluster_name: format!("ferrytk{tag}"),
            servers,
        };
        for i in 0..n {
            c.write_config(i)?;
            c.spawn(i)?;
        }
        c.wait_ready()?;
        Ok(c)
    }

    /// The URI ferry is given: every server's client address.
    pub fn uri(&self) -> String {
        let addrs: Vec<String> = self
            .servers
            .iter()
            .map(|s| format!("{}:{}", self.ip, s.client_port))
            .collect();
        format!("nats://{}", addrs.join(","))
    }

    /// A bs_router config (ferry agent's and client's) for a pool served on
    /// `tube` of this cluster, its workdir `cbsdenv`; `extra` are more
    /// top-level keys (`"job_ttr": 2, ...`).
    pub fn agent_config(&self, cbsdenv: &Path, tube: &str, extra: &str) -> String {
        crate::agent_config("nats", &self.uri(), cbsdenv, tube, extra)
    }

    /// Server `i`'s name (`server_name`, as JetStream reports leaders).
    pub fn name(&self, i: usize) -> &str {
        &self.servers[i].name
    }

    /// The server index whose name is `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.servers.iter().position(|s| s.name == name)
    }

    fn store(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("s{}", i + 1))
    }

    fn config_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("s{}.conf", i + 1))
    }

    /// The server's log file.
    pub fn log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("s{}.log", i + 1))
    }

    fn write_config(&self, i: usize) -> io::Result<()> {
        let s = &self.servers[i];
        let routes: Vec<String> = self
            .servers
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != i)
            .map(|(_, o)| format!("nats-route://{}:{}", self.ip, o.cluster_port))
            .collect();
        let store = self.store(i);
        fs::create_dir_all(&store)?;
        let conf = format!(
            "server_name: {name}\nlisten: {ip}:{client}\nhttp: {ip}:{http}\n\
             log_file: {log:?}\njetstream {{\n  store_dir: {store:?}\n}}\n\
             cluster {{\n  name: {cluster}\n  listen: {ip}:{cport}\n  routes: [\n    {routes}\n  ]\n}}\n",
            ip = self.ip,
            name = s.name,
            client = s.client_port,
            http = s.http_port,
            log = self.log(i),
            store = store,
            cluster = self.cluster_name,
            cport = s.cluster_port,
            routes = routes.join("\n    "),
        );
        fs::write(self.config_path(i), conf)
    }

    fn spawn(&mut self, i: usize) -> io::Result<()> {
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(self.config_path(i))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot start nats-server (apt-get install nats-server): {e}"),
                )
            })?;
        self.servers[i].child = Some(child);
        Ok(())
    }

    /// `kill -9` server `i` (its store stays).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start server `i` again on its ports and store, and wait until the
    /// cluster has a meta leader that it knows too.
    pub fn restart(&mut self, i: usize) -> io::Result<()> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_ready()
    }

    /// Start every server that is down again on its ports and store, and
    /// wait until they agree on a meta leader (all three killed and back:
    /// the streams come back from their stores).
    pub fn restart_all(&mut self) -> io::Result<()> {
        for i in 0..self.servers.len() {
            if !self.is_running(i) {
                self.kill(i);
                self.spawn(i)?;
            }
        }
        self.wait_ready()
    }

    /// How many servers the cluster has.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether the cluster has no server (never, once started).
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Whether server `i` runs.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.servers[i]
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Server `i`'s JetStream report (`/jsz`), if it answers.
    pub fn jsz(&self, i: usize) -> Option<serde_json::Value> {
        self.jsz_query(i, "")
    }

    /// Server `i`'s `/jsz` with `query` (`?consumers=true`).
    fn jsz_query(&self, i: usize, query: &str) -> Option<serde_json::Value> {
        let url = format!(
            "http://{}:{}/jsz{query}",
            self.ip, self.servers[i].http_port
        );
        let body = ureq::get(&url)
            .timeout(Duration::from_secs(2))
            .call()
            .ok()?
            .into_string()
            .ok()?;
        serde_json::from_str(&body).ok()
    }

    /// The JetStream meta leader as running server `i` sees it.
    pub fn meta_leader(&self, i: usize) -> Option<String> {
        let v = self.jsz(i)?;
        v["meta_cluster"]["leader"].as_str().and_then(leader_name)
    }

    /// Stream `stream`'s details as running server `i` reports them
    /// (`/jsz?consumers=true`).
    fn stream_detail(&self, i: usize, stream: &str) -> Option<serde_json::Value> {
        let v = self.jsz_query(i, "?consumers=true")?;
        v["account_details"]
            .as_array()?
            .iter()
            .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
            .find(|s| s["name"] == stream)
    }

    /// The leader of stream `stream`'s Raft group, as the first server
    /// that answers sees it.
    pub fn stream_leader(&self, stream: &str) -> Option<String> {
        (0..self.servers.len()).find_map(|i| {
            self.stream_detail(i, stream)?["cluster"]["leader"]
                .as_str()
                .and_then(leader_name)
        })
    }

    /// The server that holds consumer `consumer` of stream `stream` (its
    /// leader): a server reports only the consumers it holds.
    pub fn consumer_leader(&self, stream: &str, consumer: &str) -> Option<String> {
        (0..self.servers.len()).find_map(|i| {
            self.stream_detail(i, stream)?["consumer_detail"]
                .as_array()?
                .iter()
                .find(|c| c["name"] == consumer)?["cluster"]["leader"]
                .as_str()
                .and_then(leader_name)
        })
    }

    /// Wait until every running server names the same meta leader, one
    /// of them.
    pub fn wait_ready(&mut self) -> io::Result<()> {
        let t0 = Instant::now();
        loop {
            let running: Vec<usize> = (0..self.servers.len())
                .filter(|i| self.is_running(*i))
                .collect();
            let leaders: Vec<Option<String>> =
                running.iter().map(|i| self.meta_leader(*i)).collect();
            // One leader, named by every running server, and running itself.
            let agreed =
                !running.is_empty() && leaders.iter().all(|l| l.is_some() && *l == leaders[0]);
            let alive = leaders
                .first()
                .and_then(Option::as_deref)
                .and_then(|l| self.index_of(l))
                .is_some_and(|l| running.contains(&l));
            if agreed && alive {
                return Ok(());
            }
            if t0.elapsed() > READY {
                return Err(io::Error::other(format!(
                    "the NATS cluster elected no JetStream leader within {READY:?} (logs in {})",
                    self.dir.path().display()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The directory of the servers' stores, configs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

/// `$FERRY_NATS_SERVER`, else `nats-server` on the `PATH`.
pub fn nats_server_bin() -> PathBuf {
    std::env::var_os("FERRY_NATS_SERVER")
        .map_or_else(|| PathBuf::from("nats-server"), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_servers_elect_a_leader_and_a_new_one_when_it_dies() {
        let mut c = NatsCluster::start(3).expect("cluster");
        assert!(c.uri().starts_with("nats://127.0.0.1:"), "{}", c.uri());
        assert_eq!(c.uri().matches(',').count(), 2);
        let leader = c.meta_leader(0).expect("a leader");
        let l = c.index_of(&leader).expect("one of ours");
        c.kill(l);
        c.wait_ready().expect("a new leader");
        let other = (0..3).find(|i| *i != l).expect("another server");
        let new = c.meta_leader(other).expect("a new leader");
        assert_ne!(new, leader);
        c.restart(l).expect("back");
        assert_eq!(c.meta_leader(l), c.meta_leader(other));
    }
}
