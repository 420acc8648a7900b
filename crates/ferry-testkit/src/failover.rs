//! Faults to a node that runs an env, and what must hold after each
//! (issue 16): the env never runs on two nodes at once (every node is
//! sampled every 100 ms), and an `ha=1` env runs again elsewhere soon
//! after. Used by `tests/fencing.rs`, `tests/ha.rs` and
//! `benches/failover.rs`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::TestWorkdir;

/// Whether env `j` runs on the node whose workdir is `root`: its runtime
/// record names a live process (checked against its start time).
pub fn runs_at(root: &std::path::Path, j: &str) -> bool {
    let rt: Option<serde_json::Value> = std::fs::read(root.join(format!("jails/{j}/runtime.json")))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    rt.is_some_and(|rt| match (rt["pid"].as_i64(), rt["starttime"].as_u64()) {
        (Some(pid), Some(start)) => ferry_core::sys::is_alive(pid as i32, start),
        _ => false,
    })
}

/// Whether env `j` runs on node `t`.
pub fn runs(t: &TestWorkdir, j: &str) -> bool {
    runs_at(t.root(), j)
}

/// The index of the node that runs `j` now, if exactly one does.
pub fn running_on(nodes: &[TestWorkdir], j: &str) -> Option<usize> {
    let on: Vec<usize> = (0..nodes.len()).filter(|i| runs(&nodes[*i], j)).collect();
    (on.len() == 1).then(|| on[0])
}

/// Samples every node every 100 ms on a thread of its own and counts the
/// samples in which more than one node ran the env.
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    overlaps: Arc<AtomicU32>,
    samples: Arc<AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub fn start(nodes: &[TestWorkdir], j: &str) -> Sampler {
        let roots: Vec<PathBuf> = nodes.iter().map(|n| n.root().to_path_buf()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let overlaps = Arc::new(AtomicU32::new(0));
        let samples = Arc::new(AtomicU32::new(0));
        let (s, o, n, j) = (
            Arc::clone(&stop),
            Arc::clone(&overlaps),
            Arc::clone(&samples),
            j.to_owned(),
        );
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let t = Instant::now();
                if roots.iter().filter(|r| runs_at(r, &j)).count() > 1 {
                    o.fetch_add(1, Ordering::SeqCst);
                }
                n.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
            }
        });
        Sampler {
            stop,
            overlaps,
            samples,
            thread: Some(thread),
        }
    }

    /// Stop sampling: (samples with two copies, samples taken).
    pub fn finish(mut self) -> (u32, u32) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.overlaps.load(Ordering::SeqCst),
            self.samples.load(Ordering::SeqCst),
        )
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What goes wrong on the node that runs the env.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -STOP` of the node's daemon (resumed after).
    FreezeDaemon,
    /// `kill -9` of the node's daemon (started again after).
    KillDaemon,
    /// `kill -9` of the node's GlusterFS client: its storage is gone.
    CutStorage,
    /// `kill -9` of the broker (started again after): nothing may move.
    KillBroker,
    /// The node's network namespace cut off the bridge (its storage and
    /// the broker with it).
    CutNetwork,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::FreezeDaemon,
        Fault::KillDaemon,
        Fault::CutStorage,
        Fault::KillBroker,
        Fault::CutNetwork,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Fault::FreezeDaemon => "SIGSTOP of the daemon",
            Fault::KillDaemon => "kill -9 of the daemon",
            Fault::CutStorage => "kill -9 of the storage client",
            Fault::KillBroker => "kill -9 of the broker",
            Fault::CutNetwork => "the node's network cut",
        }
    }

    /// Whether the env must move: the other nodes find the node dead.
    pub fn moves(self) -> bool {
        self != Fault::KillBroker
    }
}

/// One fault and what followed.
#[derive(Debug, Clone)]
pub struct Trial {
    pub fault: Fault,
    pub from: usize,
    /// Where the env ran after (node index).
    pub to: Option<usize>,
    /// From the fault to the env running on another node.
    pub failover: Option<Duration>,
    /// Samples (every 100 ms) in which two nodes ran the env.
    pub overlaps: u32,
    pub samples: u32,
    /// Why the trial failed, if it did.
    pub failure: Option<String>,
}

impl std::fmt::Display for Trial {
    /// `FAULT: nA -> nB, failover 9.87 s, N samples, M with two copies`,
    /// and why it failed, if it did.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: n{} -> {}, failover {}, {} samples, {} with two copies",
            self.fault.as_str(),
            self.from + 1,
            self.to.map_or("none".into(), |i| format!("n{}", i + 1)),
            self.failover
                .map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64())),
            self.samples,
            self.overlaps,
        )?;
        match &self.failure {
            Some(why) => write!(f, ": FAILED {why}"),
            None => Ok(()),
        }
    }
}

/// Three nodes in network namespaces on a GlusterFS volume each reaches
/// through its own namespace, a broker, every daemon, and one `ha=1` jail.
#[allow(missing_debug_implementations)]
pub struct Rig {
    pub c: crate::TestCluster,
    broker: crate::broker::TestBroker,
    daemons: Vec<Option<crate::Daemon>>,
    args: Vec<String>,
    pub lease_time: Duration,
    pub j: String,
}

impl Rig {
    /// Set up with daemons at `heartbeat=1 lease_time=<lease_time>` (the
    /// watchdog's `fence_time` at its default, two thirds of it).
    pub fn new(bin: &str, lease_time: u64) -> Rig {
        let (c, broker) = crate::TestCluster::with_broker(
            bin,
            3,
            crate::Storage::GlusterFSOverNet,
            crate::broker::Transport::Beanstalkd,
            false,
        );
        let args = vec!["heartbeat=1".to_owned(), format!("lease_time={lease_time}")];
        let mut rig = Rig {
            daemons: Vec::new(),
            c,
            broker,
            args,
            lease_time: Duration::from_secs(lease_time),
            j: "hafo".into(),
        };
        rig.daemons = (0..3).map(|i| Some(rig.daemon(i))).collect();
        rig.wait_all_alive();
        rig.c.nodes[0].ok(&[
            "jcreate",
            "jname=hafo",
            "ha=1",
            "ha_max_restart=100000",
            "runasap=1",
        ]);
        rig
    }

    fn daemon(&self, i: usize) -> crate::Daemon {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.c.nodes[i].daemon(&args)
    }

    fn wait_all_alive(&self) -> bool {
        let lease = format!("lease_time={}", self.lease_time.as_secs());
        crate::view::wait_for(Duration::from_secs(60), || {
            (0..3).all(|i| {
                let out = self.c.nodes[i].run(&["node", &lease, "--json"]);
                let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
                v.as_array().is_some_and(|rows| {
                    rows.len() == 3 && rows.iter().all(|r| r["state"] == "alive")
                })
            })
        })
    }

    fn running_on(&self) -> Option<usize> {
        running_on(&self.c.nodes, &self.j)
    }

    fn inject(&mut self, fault: Fault, i: usize) {
        match fault {
            Fault::FreezeDaemon => {
                let d = self.daemons[i].as_ref().expect("daemon");
                let pid = nix::unistd::Pid::from_raw(d.pid() as i32);
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
            }
            Fault::KillDaemon => {
                if let Some(d) = self.daemons[i].take() {
                    d.kill();
                }
            }
            Fault::CutStorage => self.c.cut_storage(i),
            Fault::KillBroker => self.broker.kill().expect("kill the broker"),
            Fault::CutNetwork => self.c.net().expect("namespaces").link(i, false),
        }
    }

    fn repair(&mut self, fault: Fault, i: usize) {
        match fault {
            Fault::FreezeDaemon => {
                let d = self.daemons[i].as_ref().expect("daemon");
                let pid = nix::unistd::Pid::from_raw(d.pid() as i32);
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
            }
            Fault::KillDaemon => self.daemons[i] = Some(self.daemon(i)),
            Fault::CutStorage => self.c.restore_storage(i),
            Fault::KillBroker => self.broker.start_again().expect("restart the broker"),
            Fault::CutNetwork => {
                self.c.net().expect("namespaces").link(i, true);
                // The watchdog may have aborted the node's storage client
                // (env processes stuck in calls on it): mounted again, as
                // an operator brings a fenced node back.
                self.c.restore_storage(i);
            }
        }
    }

    /// One fault at a random moment on the node that runs the env, the
    /// cluster repaired after, and what was seen meanwhile.
    pub fn trial(&mut self, fault: Fault, rng: &mut crate::trials::Rng) -> Trial {
        let mut t = Trial {
            fault,
            from: self.running_on().unwrap_or(usize::MAX),
            to: None,
            failover: None,
            overlaps: 0,
            samples: 0,
            failure: None,
        };
        if t.from == usize::MAX {
            t.failure = Some("the env ran on no single node before the fault".into());
            return t;
        }
        let sampler = Sampler::start(&self.c.nodes, &self.j);
        std::thread::sleep(rng.within(Duration::from_millis(2000)));
        let t0 = Instant::now();
        self.inject(fault, t.from);
        let limit = self.lease_time + Duration::from_secs(30);
        if fault.moves() {
            let from = t.from;
            if crate::view::wait_for(limit, || self.running_on().is_some_and(|i| i != from)) {
                t.failover = Some(t0.elapsed());
                t.to = self.running_on();
            } else {
                t.failure = Some(format!("it ran on no other node within {limit:?}"));
            }
        } else {
            // Nothing may move: watch for longer than a takeover takes.
            let watch = self.lease_time + Duration::from_secs(5);
            while t0.elapsed() < watch {
                if self.running_on() != Some(t.from) {
                    t.failure = Some(format!("it left node {} or stopped", t.from + 1));
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            t.to = self.running_on();
        }
        self.repair(fault, t.from);
        let from = t.from;
        if fault.moves()
            && !crate::view::wait_for(Duration::from_secs(60), || {
                !crate::failover::holds_at(&self.c.nodes[from], &self.j)
            })
        {
            t.failure
                .get_or_insert_with(|| "the old node kept the env".into());
        }
        if !self.wait_all_alive() {
            t.failure
                .get_or_insert_with(|| "the nodes were not all alive again".into());
        }
        // Settled: still one copy, where it went.
        std::thread::sleep(Duration::from_millis(500));
        if self.running_on() != t.to {
            t.failure
                .get_or_insert_with(|| format!("it did not stay on {:?}", t.to.map(|i| i + 1)));
        }
        (t.overlaps, t.samples) = sampler.finish();
        if t.overlaps > 0 {
            t.failure
                .get_or_insert_with(|| format!("{} samples saw two copies", t.overlaps));
        }
        if t.failure.is_some() {
            // What the daemons and watchdogs said, for the one who reads.
            for (i, n) in self.c.nodes.iter().enumerate() {
                let log = std::fs::read_to_string(n.root().join("var/log/daemon.log"))
                    .unwrap_or_default();
                let mut tail: Vec<&str> = log.lines().rev().take(40).collect();
                tail.reverse();
                eprintln!("--- n{} daemon.log (last lines):", i + 1);
                for l in tail {
                    eprintln!("{l}");
                }
            }
        }
        t
    }
}

/// Whether node `t` has env `j` registered (jails' listing).
pub fn holds_at(t: &TestWorkdir, j: &str) -> bool {
    t.jls().contains_key(j)
}

/// Per fault kind: trials, failures, overlapping samples, failover time
/// p50 / max.
pub fn table(trials: &[Trial]) -> String {
    use crate::bench::{ms, percentile};
    let mut out = String::from(
        "| fault | trials | failed | samples with two copies | failover p50 | failover max |\n|---|---|---|---|---|---|\n",
    );
    for f in Fault::ALL {
        let of: Vec<&Trial> = trials.iter().filter(|t| t.fault == f).collect();
        if of.is_empty() {
            continue;
        }
        let times: Vec<Duration> = of.iter().filter_map(|t| t.failover).collect();
        let (p50, max) = if times.is_empty() {
            ("none (nothing moves)".to_owned(), "-".to_owned())
        } else {
            (
                format!("{:.1} s", ms(percentile(times.clone(), 50)) / 1000.0),
                format!("{:.1} s", ms(percentile(times, 100)) / 1000.0),
            )
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {p50} | {max} |\n",
            f.as_str(),
            of.len(),
            of.iter().filter(|t| t.failure.is_some()).count(),
            of.iter().map(|t| t.overlaps).sum::<u32>(),
        ));
    }
    out
}
