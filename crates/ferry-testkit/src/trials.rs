//! Live migrations interrupted by a fault at a random moment, counted
//! (issue 13): a guest that keeps rewriting and checking its memory is
//! moved with `bmigrate` between two nodes in network namespaces, and
//! while it moves one thing goes wrong: `bmigrate` killed, a daemon on
//! either side killed (and started again at once, as its supervisor
//! would), the destination's incoming QEMU killed, or the destination cut
//! off the network for a while. Then a trial waits until the cluster
//! settled and checks what must hold after any fault: exactly one QEMU
//! runs the VM, on the node its lease names, which lists it running; the
//! other node holds nothing of it; the guest runs (its counter moves) and
//! its memory checker found every page as it left it, with no fault on
//! its console. It measures how long after the fault the guest ran again.
//!
//! Used by `tests/migrate_faults.rs` (a few trials of each kind) and
//! `benches/migrate_faults.rs` (20 of each, the table in the README).

use std::fmt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::broker::{TestBroker, Transport};
use crate::view::{
    bls_row, incoming_pid, lease_owner, node_alive, qemu_pids_of, runtime_of, wait_for, wait_until,
};
use crate::{
    console, guest_counters, guest_fault, memcheck_cmdline, memcheck_reports, wait_counter, Daemon,
    Storage, TestCluster, TestWorkdir,
};

/// What goes wrong during a move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of the `bmigrate` process.
    KillBmigrate,
    /// `kill -9` of the destination's daemon, started again at once.
    KillDestDaemon,
    /// `kill -9` of the destination's incoming QEMU (while it is one).
    KillDestQemu,
    /// `kill -9` of the source's daemon, started again at once.
    KillSrcDaemon,
    /// The destination's veth down for [`CUT_FOR`], then up again.
    CutLink,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::KillBmigrate,
        Fault::KillDestDaemon,
        Fault::KillDestQemu,
        Fault::KillSrcDaemon,
        Fault::CutLink,
    ];
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::KillBmigrate => "kill -9 bmigrate",
            Fault::KillDestDaemon => "kill -9 destination daemon",
            Fault::KillDestQemu => "kill -9 incoming QEMU",
            Fault::KillSrcDaemon => "kill -9 source daemon",
            Fault::CutLink => "destination link cut",
        })
    }
}

/// How long the destination stays cut off in a [`Fault::CutLink`] trial.
pub const CUT_FOR: Duration = Duration::from_secs(8);
/// A guest that printed no counter line (every 0.2 s) for longer than
/// this was stopped.
const PAUSE: Duration = Duration::from_secs(1);
/// How long a trial may take to settle after its fault.
const SETTLE_WITHIN: Duration = Duration::from_secs(150);
/// The move: as the issue asks, a 40 MiB/s link and a 50 ms downtime limit.
const MOVE_ARGS: [&str; 3] = ["bandwidth=40", "downtime_ms=50", "timeout=120"];
/// The guest: 96 MiB checked and rewritten at this many MiB/s.
pub const MEMCHECK_MIB: u64 = 96;
pub const MEMCHECK_RATE: u64 = 16;

/// What one trial found.
#[derive(Debug, Clone)]
pub struct Trial {
    pub fault: Fault,
    /// Seconds from `bmigrate`'s start to the fault.
    pub at: Duration,
    /// What the move was doing then: `before-prepare`, `transfer` (an
    /// incoming QEMU waits there), `after` (the lease moved, or bmigrate
    /// ended); `missed` for a [`Fault::KillDestQemu`] that found no
    /// incoming QEMU left (not counted as a trial of it).
    pub phase: &'static str,
    /// From the fault until the guest ran again: its counter moved past
    /// the one at the fault, and after its last stop (no counter line for
    /// over a second) moved again.
    pub recovery: Option<Duration>,
    /// The guest's longest stop after the fault (between two counter
    /// lines; 0.2 s or so when it never stopped).
    pub pause: Duration,
    /// From the fault until everything that must hold held (bmigrate
    /// ended, one QEMU, lease, listings, no leftovers).
    pub settled: Option<Duration>,
    /// Where the VM ended (node index), if it settled.
    pub ended_on: Option<usize>,
    /// Why the trial failed, if it did.
    pub failure: Option<String>,
    /// bmigrate's own result, when it was not the one killed.
    pub bmigrate: String,
}

/// The trials' random moments (fastrand), reproducible from the seed
/// they print.
#[derive(Debug, Clone)]
pub struct Rng(fastrand::Rng);

impl Rng {
    /// Seeded from `FERRY_TRIAL_SEED`, else at random.
    pub fn from_env() -> Rng {
        let seed = std::env::var("FERRY_TRIAL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| fastrand::u64(..));
        eprintln!("trials: FERRY_TRIAL_SEED={seed}");
        Rng(fastrand::Rng::with_seed(seed))
    }

    /// A duration uniformly in `[0, max]` (millisecond steps).
    pub fn within(&mut self, max: Duration) -> Duration {
        Duration::from_millis(self.0.u64(..=max.as_millis() as u64))
    }
}

/// Two nodes, a broker, both daemons, and the checking guest.
#[allow(missing_debug_implementations)]
pub struct Rig {
    pub c: TestCluster,
    _broker: TestBroker,
    daemons: Vec<Option<Daemon>>,
    pub vm: String,
    /// Where the VM runs now (node index).
    pub on: usize,
    /// How long a clean move takes (calibrated by [`Rig::new`]).
    pub clean_move: Duration,
}

fn args(extra: &[&str]) -> Vec<String> {
    extra.iter().map(|s| (*s).to_owned()).collect()
}

impl Rig {
    /// Set up, start the guest on n1, and time one clean move there and
    /// back (the random moments are drawn within that time).
    pub fn new(bin: &str, vm: &str) -> Rig {
        let (c, b) = TestCluster::with_broker(bin, 2, Storage::Plain, Transport::Beanstalkd, false);
        let daemons = c
            .nodes
            .iter()
            .map(|n| Some(n.daemon(&["heartbeat=1"])))
            .collect();
        let mut rig = Rig {
            c,
            _broker: b,
            daemons,
            vm: vm.to_owned(),
            on: 0,
            clean_move: Duration::ZERO,
        };
        let (n1, n2) = (&rig.c.nodes[0], &rig.c.nodes[1]);
        n1.ok(&["node", "mode=add", "node=n2"]);
        n2.ok(&["node", "mode=add", "node=n1"]);
        wait_until("both nodes alive", Duration::from_secs(20), || {
            node_alive(n1, "n2") && node_alive(n2, "n1")
        });
        let cmdline = memcheck_cmdline(MEMCHECK_MIB, MEMCHECK_RATE);
        n1.bcreate_guest(vm, &["vm_ram=256m", &cmdline]);
        n1.ok(&["bstart", &format!("jname={vm}")]);
        wait_counter(n1, vm, "the guest never counted", |c| c.len() >= 2);
        // The checker's first full pass, so the move carries a working set.
        wait_until(
            "the memory checker's first pass",
            Duration::from_secs(60),
            || {
                memcheck_reports(&console(n1, vm))
                    .last()
                    .is_some_and(|r| r.gen >= 2)
            },
        );
        let mut took = Vec::new();
        for _ in 0..2 {
            let t0 = Instant::now();
            let r = rig.move_now();
            assert_eq!(r.code, 0, "a clean move failed: {}{}", r.stdout, r.stderr);
            took.push(t0.elapsed());
            rig.on = 1 - rig.on;
        }
        rig.clean_move = took.into_iter().max().unwrap_or_default();
        eprintln!("trials: a clean move takes {:?}", rig.clean_move);
        rig
    }

    fn node(&self, i: usize) -> &TestWorkdir {
        &self.c.nodes[i]
    }

    fn move_words(&self) -> Vec<String> {
        let mut w = args(&["bmigrate"]);
        w.push(format!("jname={}", self.vm));
        w.push(format!("node=n{}", 2 - self.on));
        w.extend(args(&MOVE_ARGS));
        w
    }

    fn move_now(&self) -> crate::Run {
        let w = self.move_words();
        let refs: Vec<&str> = w.iter().map(String::as_str).collect();
        self.node(self.on).run(&refs)
    }

    fn spawn_move(&self) -> Child {
        let w = self.move_words();
        let refs: Vec<&str> = w.iter().map(String::as_str).collect();
        self.node(self.on)
            .command(&refs)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bmigrate")
    }

    fn restart_daemon(&mut self, i: usize) {
        if let Some(d) = self.daemons[i].take() {
            d.kill();
        }
        self.daemons[i] = Some(self.c.nodes[i].daemon(&["heartbeat=1"]));
    }

    /// One trial of `fault` at a random moment of a move.
    pub fn trial(&mut self, fault: Fault, rng: &mut Rng) -> Trial {
        let (src, dst) = (self.on, 1 - self.on);
        let vm = self.vm.clone();
        let log_from = console(self.node(src), &vm).len();
        let gen_before = memcheck_reports(&console(self.node(src), &vm))
            .last()
            .map_or(0, |r| r.gen);
        let mut child = Some(self.spawn_move());
        let t0 = Instant::now();
        // The moment: for the incoming QEMU, within the transfer (it only
        // exists then); for the rest, anywhere in a clean move's time.
        let mut phase = "transfer";
        let mut missed = false;
        if fault == Fault::KillDestQemu {
            let prepared = wait_for(Duration::from_secs(60), || {
                incoming_pid(self.node(dst), &vm).is_some()
            });
            let delay = rng.within(self.clean_move.mul_f64(0.8));
            std::thread::sleep(delay);
            missed = !prepared || incoming_pid(self.node(dst), &vm).is_none();
        } else {
            std::thread::sleep(rng.within(self.clean_move));
            phase = if lease_owner(&self.c, &vm) == Some(dst) || bmigrate_done(&mut child) {
                "after"
            } else if incoming_pid(self.node(dst), &vm).is_some() {
                "transfer"
            } else {
                "before-prepare"
            };
        }
        let at = t0.elapsed();
        let counter_at_fault = guest_counters(self.node(src), &vm)
            .last()
            .copied()
            .unwrap_or(0);
        let fault_time = Instant::now();
        match fault {
            Fault::KillBmigrate => {
                if let Some(mut c) = child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
            Fault::KillDestDaemon => self.restart_daemon(dst),
            Fault::KillSrcDaemon => self.restart_daemon(src),
            Fault::KillDestQemu => {
                if let Some(pid) = incoming_pid(self.node(dst), &vm) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            Fault::CutLink => {
                self.c.net().expect("namespaces").link(dst, false);
            }
        }
        if missed {
            // The incoming QEMU was gone already: nothing was killed.
            phase = "missed";
        }
        // The guest runs again: its counter moves past the one at the
        // fault, and after its last pause (no new counter line for more
        // than PAUSE) it moves again.
        let mut recovery = None;
        let mut pause = Duration::ZERO;
        let (mut last, mut last_change) = (counter_at_fault, fault_time);
        let mut link_down = fault == Fault::CutLink;
        let settle_by = fault_time + SETTLE_WITHIN;
        let mut bmigrate = String::new();
        let mut settled = None;
        while Instant::now() < settle_by {
            if link_down && fault_time.elapsed() >= CUT_FOR {
                self.c.net().expect("namespaces").link(dst, true);
                link_down = false;
            }
            let now = guest_counters(self.node(src), &vm)
                .last()
                .copied()
                .unwrap_or(0);
            if now > last {
                let silent = last_change.elapsed();
                pause = pause.max(silent);
                if recovery.is_none() || silent > PAUSE {
                    recovery = Some(fault_time.elapsed());
                }
                (last, last_change) = (now, Instant::now());
            }
            if let Some(c) = child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    let out = child.take().expect("child").wait_with_output();
                    bmigrate = out
                        .map(|o| {
                            format!(
                                "{}{}",
                                String::from_utf8_lossy(&o.stdout).trim(),
                                String::from_utf8_lossy(&o.stderr).trim()
                            )
                        })
                        .unwrap_or_default();
                }
            }
            if child.is_none() && !link_down && recovery.is_some() && last_change.elapsed() < PAUSE
            {
                if let Some(on) = settled_on(&self.c, &vm) {
                    settled = Some((on, fault_time.elapsed()));
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if link_down {
            self.c.net().expect("namespaces").link(dst, true);
        }
        if let Some(mut c) = child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut failure = None;
        match settled.map(|s| s.0) {
            None => {
                failure = Some(format!(
                    "did not settle within {} s: {}",
                    SETTLE_WITHIN.as_secs(),
                    describe(&self.c, &vm)
                ))
            }
            Some(on) => {
                self.on = on;
                if let Err(e) = memory_clean_since(self.node(on), &vm, log_from, gen_before) {
                    failure = Some(e);
                }
            }
        }
        if failure.is_some() {
            // Put it back to a known state for the next trial.
            self.reset();
        }
        Trial {
            fault,
            at,
            phase,
            recovery,
            pause,
            settled: settled.map(|s| s.1),
            ended_on: settled.map(|s| s.0),
            failure,
            bmigrate,
        }
    }

    /// After a failed trial: the VM stopped everywhere and started afresh
    /// where its lease is (or on n1).
    fn reset(&mut self) {
        for i in 0..2 {
            self.c.net().expect("namespaces").link(i, true);
        }
        let vm = self.vm.clone();
        let owner = lease_owner(&self.c, &vm).unwrap_or(0);
        let _ = self.node(owner).run(&["bstop", &format!("jname={vm}")]);
        for pid in qemu_pids_of(&vm) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_secs(2));
        let _ = self.node(owner).run(&["bstart", &format!("jname={vm}")]);
        self.on = owner;
        let _ = wait_for(Duration::from_secs(30), || {
            memcheck_reports(&console(self.node(owner), &vm))
                .last()
                .is_some_and(|r| r.gen >= 2)
        });
    }
}

fn bmigrate_done(child: &mut Option<Child>) -> bool {
    child
        .as_mut()
        .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
}

/// The node index the VM settled on: one QEMU of it on the machine; its
/// lease names that node, which lists it running and holds no migration;
/// the other node has no runtime record of it and does not list it.
pub fn settled_on(c: &TestCluster, vm: &str) -> Option<usize> {
    let on = lease_owner(c, vm)?;
    if qemu_pids_of(vm).len() != 1 {
        return None;
    }
    let here = bls_row(&c.nodes[on], vm)?;
    if here["status"] != "running" {
        return None;
    }
    let rt = runtime_of(&c.nodes[on], vm)?;
    if rt["phase"] != "running" || !rt["migration"].is_null() {
        return None;
    }
    let other = &c.nodes[1 - on];
    if bls_row(other, vm).is_some() || runtime_of(other, vm).is_some() {
        return None;
    }
    Some(on)
}

fn describe(c: &TestCluster, vm: &str) -> String {
    format!(
        "lease {:?}, QEMUs {:?}, n1 {:?} / {:?}, n2 {:?} / {:?}",
        lease_owner(c, vm).map(|i| i + 1),
        qemu_pids_of(vm),
        bls_row(&c.nodes[0], vm).map(|r| r["status"].clone()),
        runtime_of(&c.nodes[0], vm).map(|r| r["phase"].clone()),
        bls_row(&c.nodes[1], vm).map(|r| r["status"].clone()),
        runtime_of(&c.nodes[1], vm).map(|r| r["phase"].clone()),
    )
}

/// The memory checker went on (two reports newer than `gen_before`), and
/// nothing the guest printed since byte `from` of its console is a fault.
fn memory_clean_since(
    t: &TestWorkdir,
    vm: &str,
    from: usize,
    gen_before: u64,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = console(t, vm);
        let new = text.get(from..).unwrap_or("");
        if let Some(f) = guest_fault(new) {
            return Err(format!("the guest reported a fault: {f}"));
        }
        let reports = memcheck_reports(new);
        if let Some(bad) = reports.iter().find(|r| r.bad != 0) {
            return Err(format!("memcheck found bad pages: {bad:?}"));
        }
        if reports.iter().filter(|r| r.gen > gen_before).count() >= 2 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the memory checker did not go on past generation {gen_before}: {:?}",
                reports.last()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Per fault kind: trials, failures, where the fault fell, and p50 / max
/// of the time until the guest ran again and until all had settled.
pub fn table(trials: &[Trial]) -> String {
    let mut out = String::from(
        "| fault | trials | failures | fault before prepare / in transfer / after hand-over | guest runs again p50 / max | its longest stop p50 / max | all settled p50 / max |\n|---|---|---|---|---|---|---|\n",
    );
    let p50_max = |mut v: Vec<Duration>| {
        v.sort();
        match (v.get(v.len().saturating_sub(1) / 2), v.last()) {
            (Some(p), Some(m)) => format!("{:.2} s / {:.2} s", p.as_secs_f64(), m.as_secs_f64()),
            _ => "-".into(),
        }
    };
    for f in Fault::ALL {
        let of: Vec<&Trial> = trials.iter().filter(|t| t.fault == f).collect();
        if of.is_empty() {
            continue;
        }
        let count = |p: &str| of.iter().filter(|t| t.phase == p).count();
        let missed = match count("missed") {
            0 => String::new(),
            n => format!(" (+{n} missed: no incoming QEMU left to kill)"),
        };
        out.push_str(&format!(
            "| {f} | {}{missed} | {} | {} / {} / {} | {} | {} | {} |\n",
            of.len() - count("missed"),
            of.iter().filter(|t| t.failure.is_some()).count(),
            count("before-prepare"),
            count("transfer"),
            count("after"),
            p50_max(of.iter().filter_map(|t| t.recovery).collect()),
            p50_max(of.iter().map(|t| t.pause).collect()),
            p50_max(of.iter().filter_map(|t| t.settled).collect()),
        ));
    }
    out
}

/// Trials per kind: `FERRY_TRIALS`, else `default`.
pub fn per_kind(default: usize) -> usize {
    std::env::var("FERRY_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// `per_kind` trials of every fault, in turn (the kinds interleaved, so
/// that a slow stretch of the machine does not fall on one kind), each
/// printed as it ends. Returns them all.
pub fn run(bin: &str, vm: &str, per_kind: usize) -> Vec<Trial> {
    let mut rng = Rng::from_env();
    let mut rig = Rig::new(bin, vm);
    let mut all = Vec::new();
    for round in 0..per_kind {
        for f in Fault::ALL {
            let t = rig.trial(f, &mut rng);
            eprintln!(
                "trial {round} {f}: at {:.2} s ({}), guest ran again after {} (longest stop {:.2} s), settled after {}, ended on {}{}; bmigrate: {}",
                t.at.as_secs_f64(),
                t.phase,
                t.recovery
                    .map_or("never".into(), |d| format!("{:.2} s", d.as_secs_f64())),
                t.pause.as_secs_f64(),
                t.settled
                    .map_or("never".into(), |d| format!("{:.2} s", d.as_secs_f64())),
                t.ended_on.map_or("?".into(), |i| format!("n{}", i + 1)),
                t.failure
                    .as_deref()
                    .map(|f| format!(", FAILED: {f}"))
                    .unwrap_or_default(),
                t.bmigrate.lines().last().unwrap_or("(killed)")
            );
            all.push(t);
        }
    }
    all
}
