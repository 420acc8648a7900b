//! Live migration of VMs (real QEMU under TCG, the counting test guest)
//! between nodes in network namespaces, over a real broker (beanstalkd,
//! and for most tests also a NATS JetStream cluster): the guest
//! keeps counting on the destination, back and forth; prechecks refuse
//! with every reason at once; failures leave exactly one running copy.

use std::time::{Duration, Instant};

use ferry_testkit::broker::{TestBroker, Transport};
use ferry_testkit::view::{
    bls_row, incoming_pid, lease_owner, node_alive, qemu_pids_of, wait_until,
};
use ferry_testkit::{
    assert_memory_clean, guest_counters, guest_disks, memcheck_cmdline, memcheck_gen, wait_counter,
    wait_guest_disks, Daemon, Storage, TestCluster, TestWorkdir,
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

/// A VM's name for a test over `t`: the same test over both brokers runs
/// at once, and the QEMUs of a VM are counted on the whole machine.
fn vm_name(t: Transport, base: &str) -> String {
    match t {
        Transport::Beanstalkd => base.to_owned(),
        Transport::Nats => format!("{base}n"),
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

struct Pair {
    c: TestCluster,
    b: TestBroker,
    daemons: Vec<Daemon>,
}

/// Two nodes in namespaces that know each other, daemons running, and a
/// running counting guest `vm` on n1.
fn pair(t: Transport, storage: Storage, vm: &str) -> Pair {
    pair_with(t, storage, vm, &[])
}

/// [`pair`], the guest created with `extra` keys.
fn pair_with(t: Transport, storage: Storage, vm: &str, extra: &[&str]) -> Pair {
    let (c, b) = TestCluster::with_broker(BIN, 2, storage, t, false);
    let daemons = c.nodes.iter().map(|n| n.daemon(&["heartbeat=1"])).collect();
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    n1.ok(&["node", "mode=add", "node=n2"]);
    n2.ok(&["node", "mode=add", "node=n1"]);
    let t0 = Instant::now();
    while !(node_alive(n1, "n2") && node_alive(n2, "n1")) {
        assert!(t0.elapsed() < Duration::from_secs(15), "nodes not alive");
        std::thread::sleep(Duration::from_millis(200));
    }
    checking_guest(n1, vm, extra);
    n1.ok(&["bstart", &format!("jname={vm}")]);
    wait_counter(n1, vm, "the guest never counted", |c| c.len() >= 2);
    Pair { c, b, daemons }
}

/// MiB the guests of these tests check and keep rewriting, and at how
/// many MiB/s (0: as fast as the guest can).
const MEMCHECK_MIB: u64 = 96;
const MEMCHECK_RATE: u64 = 0;

/// `bcreate` a test guest on `t` that checks its memory (`extra` keys
/// replace the defaults).
fn checking_guest(t: &TestWorkdir, vm: &str, extra: &[&str]) {
    let cmdline = memcheck_cmdline(MEMCHECK_MIB, MEMCHECK_RATE);
    let key = |a: &str| a.split('=').next().unwrap_or_default().to_owned();
    let mut args: Vec<&str> = ["vm_ram=256m", cmdline.as_str()]
        .into_iter()
        .filter(|d| !extra.iter().any(|e| key(e) == key(d)))
        .collect();
    args.extend_from_slice(extra);
    t.bcreate_guest(vm, &args);
}

/// Where `vm` runs: exactly one node lists it, running, and owns it.
#[track_caller]
fn runs_only_on(c: &TestCluster, vm: &str, on: usize) {
    for (i, n) in c.nodes.iter().enumerate() {
        let r = bls_row(n, vm);
        if i == on {
            let r = r.unwrap_or_else(|| panic!("{vm} not listed on n{}", i + 1));
            assert_eq!(r["status"], "running", "on n{}: {r}", i + 1);
        } else {
            assert!(r.is_none(), "{vm} still listed on n{}: {r:?}", i + 1);
        }
    }
    assert_eq!(lease_owner(c, vm), Some(on), "the lease of {vm}");
    // One QEMU of it in the whole machine.
    let qemus = qemu_pids_of(vm).len();
    assert_eq!(qemus, 1, "QEMUs of {vm}");
}

/// Where a guest was before a move: its counter and its memory checker's
/// generation.
#[derive(Debug, Clone, Copy)]
struct Mark {
    counter: u64,
    gen: u64,
}

fn mark(t: &TestWorkdir, vm: &str) -> Mark {
    Mark {
        counter: *guest_counters(t, vm).last().expect("counter"),
        gen: memcheck_gen(t, vm),
    }
}

/// The guest counted on across a move: no restart (the counter never went
/// back), and it advanced after it; its memory checker went on and found
/// every page as it left it, and its kernel reported no fault.
#[track_caller]
fn kept_counting(t: &TestWorkdir, vm: &str, before: Mark) {
    let after = wait_counter(t, vm, "the guest stopped counting", |c| {
        c.last().is_some_and(|l| *l > before.counter + 1)
    });
    let seq: Vec<u64> = after
        .iter()
        .copied()
        .skip_while(|c| *c < before.counter)
        .collect();
    assert!(
        seq.windows(2).all(|w| w[1] > w[0]),
        "the counter went back (a reboot?): {seq:?}"
    );
    assert_memory_clean(t, vm, before.gen);
}

// Each over both brokers. Over beanstalkd only: the move on GlusterFS
// (about the storage) and the refusal of QEMUs that differ (about QEMU):
// neither asks anything of the broker that the ones here do not.
ferry_testkit::over_both_brokers!(
    a_running_vm_moves_live_back_and_forth_and_keeps_counting,
    the_destination_qemu_killed_mid_transfer_leaves_the_vm_running_here,
    a_bmigrate_killed_mid_transfer_is_undone_by_the_daemons,
    #[cfg_attr(
        not(feature = "crashpoints"),
        ignore = "needs the crash points: cargo test --features ferry/crashpoints"
    )]
    a_crash_just_before_or_just_after_the_hand_over_ends_with_one_running_copy,
    refusals_come_all_at_once_and_move_nothing,
    a_fault_on_the_console_right_after_the_move_fails_bmigrate,
    bmigrate_as_a_broker_job_sends_progress_replies,
    the_link_cut_mid_transfer_leaves_the_vm_running_here,
    the_destination_daemon_killed_during_prepare_leaves_the_vm_running_here,
    a_node_of_another_pool_is_refused_for_its_dir_ids_with_every_other_reason,
);

fn a_running_vm_moves_live_back_and_forth_and_keeps_counting(t: Transport) {
    // Ten rounds over the default broker, four over the other.
    let rounds = match t {
        Transport::Beanstalkd => 10,
        Transport::Nats => 4,
    };
    back_and_forth(t, Storage::Plain, &vm_name(t, "lm"), rounds);
}

#[test]
fn on_glusterfs_a_running_vm_moves_live_back_and_forth() {
    back_and_forth(Transport::Beanstalkd, Storage::GlusterFS, "lmg", 4);
}

fn back_and_forth(t: Transport, storage: Storage, vm: &str, rounds: usize) {
    let p = pair(t, storage, vm);
    let (n1, n2) = (&p.c.nodes[0], &p.c.nodes[1]);
    let jname = format!("jname={vm}");
    let out = n1.ok(&["bmigrate", &jname, "node=n2", "check=1"]);
    assert!(out.contains("every precheck passed"), "{out}");
    runs_only_on(&p.c, vm, 0);
    // A disk hot-plugged before the moves goes with the VM each time (the
    // destination's QEMU has it at the same place, from the definition).
    n1.ok(&["bhyve-dsk", "mode=attach", &jname, "dsk_size=64m"]);
    let disks = "vda:32768 vdb:131072";
    wait_guest_disks(n1, vm, disks);
    let mut on = 0;
    for round in 0..rounds {
        let (from, to) = (&p.c.nodes[on], &p.c.nodes[1 - on]);
        let before = mark(from, vm);
        let out = from.ok(&["bmigrate", &jname, &format!("node=n{}", 2 - on)]);
        eprintln!("round {round}: {}", out.trim());
        assert!(
            out.contains("live-migrated") && !out.contains("did not confirm"),
            "{out}"
        );
        on = 1 - on;
        runs_only_on(&p.c, vm, on);
        kept_counting(to, vm, before);
        assert_eq!(guest_disks(to, vm).as_deref(), Some(disks), "round {round}");
    }
    // Grown on the destination, live: the disk is that QEMU's own now.
    p.c.nodes[on].ok(&[
        "bhyve-dsk",
        "mode=modify",
        &jname,
        "dsk_path=dsk2",
        "dsk_size=+64m",
    ]);
    wait_guest_disks(&p.c.nodes[on], vm, "vda:32768 vdb:262144");
    let _ = n2;
}

/// `bmigrate` started in the background on `t`.
fn spawn(t: &TestWorkdir, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    let mut all = vec!["bmigrate"];
    all.extend_from_slice(args);
    t.command(&all)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn bmigrate")
}

fn no_runtime(t: &TestWorkdir, vm: &str) -> bool {
    !t.root().join(format!("jails/{vm}/runtime.json")).exists()
}

fn migrating(t: &TestWorkdir, vm: &str) -> bool {
    std::fs::read(t.root().join(format!("jails/{vm}/runtime.json")))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|rt| !rt["migration"].is_null())
}

fn the_destination_qemu_killed_mid_transfer_leaves_the_vm_running_here(t: Transport) {
    let vm = &vm_name(t, "lmk");
    let jname = &format!("jname={vm}");
    let p = pair(t, Storage::Plain, vm);
    let (n1, n2) = (&p.c.nodes[0], &p.c.nodes[1]);
    let before = mark(n1, vm);
    let child = spawn(n1, &[jname, "node=n2", "bandwidth=4"], &[]);
    let mut pid = None;
    wait_until("the destination prepared", secs(30), || {
        pid = incoming_pid(n2, vm);
        pid.is_some()
    });
    std::thread::sleep(Duration::from_secs(1));
    let pid = pid.expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the incoming QEMU");
    let out = child.wait_with_output().expect("bmigrate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("not moved, it runs here"), "{err}");
    wait_until("the destination cleaned up", secs(20), || {
        no_runtime(n2, vm)
    });
    runs_only_on(&p.c, vm, 0);
    kept_counting(n1, vm, before);
}

fn a_bmigrate_killed_mid_transfer_is_undone_by_the_daemons(t: Transport) {
    let vm = &vm_name(t, "lms");
    let jname = &format!("jname={vm}");
    let p = pair(t, Storage::Plain, vm);
    let (n1, n2) = (&p.c.nodes[0], &p.c.nodes[1]);
    let before = mark(n1, vm);
    let mut child = spawn(n1, &[jname, "node=n2", "bandwidth=4"], &[]);
    wait_until("the destination prepared", secs(30), || {
        incoming_pid(n2, vm).is_some()
    });
    std::thread::sleep(Duration::from_secs(1));
    child.kill().expect("kill bmigrate");
    let _ = child.wait();
    wait_until("the source's daemon undid it", secs(30), || {
        !migrating(n1, vm)
    });
    wait_until("the destination aborted", secs(30), || no_runtime(n2, vm));
    runs_only_on(&p.c, vm, 0);
    kept_counting(n1, vm, before);
}

fn a_crash_just_before_or_just_after_the_hand_over_ends_with_one_running_copy(t: Transport) {
    let vm = &vm_name(t, "lmc");
    let jname = &format!("jname={vm}");
    let p = pair(t, Storage::Plain, vm);
    let (n1, n2) = (&p.c.nodes[0], &p.c.nodes[1]);
    // Transferred, not handed over: it stays here.
    let before = mark(n1, vm);
    let r = n1.run_env(
        &["bmigrate", jname, "node=n2"],
        &[("FERRY_CRASH_AT", "bmigrate:1")],
    );
    assert_ne!(r.code, 0, "did not crash");
    wait_until("the source's daemon undid it", secs(30), || {
        !migrating(n1, vm)
    });
    wait_until("the destination aborted", secs(30), || no_runtime(n2, vm));
    runs_only_on(&p.c, vm, 0);
    kept_counting(n1, vm, before);
    // Handed over, not committed: it runs there.
    let before = mark(n1, vm);
    let r = n1.run_env(
        &["bmigrate", jname, "node=n2"],
        &[("FERRY_CRASH_AT", "bmigrate:2")],
    );
    assert_ne!(r.code, 0, "did not crash");
    wait_until("the destination committed", secs(30), || {
        bls_row(n2, vm).is_some_and(|r| r["status"] == "running")
    });
    // Its runtime record goes first, then its row.
    wait_until("the source ended", secs(30), || {
        no_runtime(n1, vm) && bls_row(n1, vm).is_none()
    });
    runs_only_on(&p.c, vm, 1);
    kept_counting(n2, vm, before);
}

fn refusals_come_all_at_once_and_move_nothing(t: Transport) {
    let vm = &vm_name(t, "lmr");
    let jname = &format!("jname={vm}");
    let p = pair(t, Storage::Plain, vm);
    let n1 = &p.c.nodes[0];
    n1.bcreate_guest("cold", &[]);
    n1.ok(&["jcreate", "jname=jj"]);
    let err = n1.fails(6, &["bmigrate", "jname=cold", "node=n1"]);
    assert!(
        err.contains("n1 is this node") && err.contains("cold is not running here"),
        "{err}"
    );
    let err = n1.fails(6, &["bmigrate", "jname=jj", "node=n9"]);
    assert!(
        err.contains("unknown here") && err.contains("is a jail: use jmigrate"),
        "{err}"
    );
    n1.fails(2, &["bmigrate", jname, "node=n2", "downtime_ms=abc"]);
    n1.fails(2, &["bmigrate", "jname=../lmr", "node=n2"]);
    n1.fails(2, &["bmigrate", jname]);
    runs_only_on(&p.c, vm, 0);
}

/// n2 runs another QEMU (Debian bookworm's 7.2; n1 has the system's,
/// 10 or later). QEMU 7.2 under TCG is known to corrupt guests in live
/// migration: a move to it (and, forced there, from it) is refused by its
/// version, unless force=1. A VM whose CPU is n1's `max` has flags QEMU
/// 7.2 lacks, and is refused by those flags' names, forced or not. A VM on
/// a named baseline moves, forced, to QEMU 7.2 and back, and bmigrate's
/// verdict agrees with the guest's memory checker each time.
#[test]
fn qemus_known_to_corrupt_and_missing_cpu_flags_are_refused_between_nodes_whose_qemus_differ() {
    let second = ferry_testkit::second_qemu();
    let (c, b) = TestCluster::with_broker(BIN, 2, Storage::Plain, Transport::Beanstalkd, false);
    let p = Pair {
        daemons: c.nodes.iter().map(|n| n.daemon(&["heartbeat=1"])).collect(),
        c,
        b,
    };
    let (n1, n2) = (&p.c.nodes[0], &p.c.nodes[1]);
    let conf = n2.root().join("etc/qemu.conf");
    n2.fails(2, &["initenv", "qemu=usr/bin/qemu-system-x86_64"]);
    n2.fails(2, &["initenv", "qemu=/bin/true"]);
    assert!(!conf.exists(), "a refused qemu= was recorded");
    let out = n2.ok(&["initenv", &format!("qemu={}", second.display())]);
    assert!(
        out.contains("QEMU emulator version 7.2.")
            && out.contains("warning: bmigrate refuses this node"),
        "{out}"
    );
    n1.ok(&["node", "mode=add", "node=n2"]);
    n2.ok(&["node", "mode=add", "node=n1"]);
    wait_until("both nodes alive", secs(15), || {
        node_alive(n1, "n2") && node_alive(n2, "n1")
    });

    n1.bcreate_guest("lmx", &["vm_cpu_model=max"]);
    n1.ok(&["bstart", "jname=lmx"]);
    wait_counter(n1, "lmx", "the max-CPU guest never counted", |c| {
        c.len() >= 2
    });
    for extra in [&["check=1"][..], &[], &["force=1"]] {
        let mut args = vec!["bmigrate", "jname=lmx", "node=n2"];
        args.extend(extra);
        let err = n1.fails(6, &args);
        assert!(
            err.contains("cannot offer here:") && err.contains("nothing moved"),
            "{err}"
        );
        assert_eq!(
            err.contains("QEMU 7.2.") && err.contains("known to corrupt guests"),
            extra != ["force=1"],
            "{err}"
        );
        runs_only_on(&p.c, "lmx", 0);
    }
    n1.ok(&["bstop", "jname=lmx"]);

    // A light writer: the forced moves should mostly leave it whole, and
    // whatever happens, bmigrate must say it. QEMU 7.2 has no machine
    // type of QEMU 10: the VM is pinned to one both have.
    n1.bcreate_guest(
        "lmq",
        &[
            "vm_ram=256m",
            "vm_machine=pc-q35-7.2",
            &memcheck_cmdline(8, 2),
        ],
    );
    n1.ok(&["bstart", "jname=lmq"]);
    wait_counter(n1, "lmq", "the guest never counted", |c| c.len() >= 2);
    for (from, to) in [(0, 1), (1, 0)] {
        let (src, dst) = (&p.c.nodes[from], &p.c.nodes[to]);
        let node = format!("node=n{}", to + 1);
        let err = src.fails(6, &["bmigrate", "jname=lmq", &node, "check=1"]);
        let side = if from == 0 {
            "n2: QEMU 7.2."
        } else {
            "here: QEMU 7.2."
        };
        assert!(err.contains(side) && err.contains("force=1"), "{err}");
        let before = mark(src, "lmq");
        let r = src.run(&["bmigrate", "jname=lmq", &node, "force=1"]);
        if r.code != 0 {
            // The move corrupted the guest, and bmigrate said so.
            assert_eq!(r.code, 1, "{}", r.stderr);
            assert!(r.stderr.contains("not healthy there"), "{}", r.stderr);
            let console = ferry_testkit::console(dst, "lmq");
            assert!(
                ferry_testkit::guest_fault(&console).is_some(),
                "{}",
                r.stderr
            );
            eprintln!(
                "the forced move corrupted the guest, and was reported: {}",
                r.stderr
            );
            return;
        }
        runs_only_on(&p.c, "lmq", to);
        kept_counting(dst, "lmq", before);
        let pid = std::fs::read_to_string(dst.root().join("var/run/lmq.pid")).expect("pid");
        let exe = std::fs::read_link(format!("/proc/{}/exe", pid.trim())).expect("exe");
        assert_eq!(
            exe.starts_with("/opt/ferry-test/qemu-bookworm"),
            to == 1,
            "n{} runs {}",
            to + 1,
            exe.display()
        );
    }
}

/// The destination watches the guest after it continued it: a fault on
/// the console in that window (here written there by the test, as a
/// kernel would) makes bmigrate fail and say so, though the VM moved.
fn a_fault_on_the_console_right_after_the_move_fails_bmigrate(t: Transport) {
    let vm = &vm_name(t, "lmf");
    let jname = &format!("jname={vm}");
    let p = pair(t, Storage::Plain, vm);
    let (n1, n2) = (&p.c.nodes[0], &p.c.nodes[1]);
    n1.fails(2, &["bmigrate", jname, "node=n2", "verify_ms=60001"]);
    let rt = n2.root().join(format!("jails/{vm}/runtime.json"));
    let log = p.c.shared().join(format!("jails-system/{vm}/console.log"));
    let writer = std::thread::spawn(move || {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            let running = std::fs::read(&rt)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|v| v["phase"] == "running");
            if running {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&log)
                    .expect("console log");
                writeln!(
                    f,
                    "[   99.000000] BUG: unable to handle page fault (injected by the test)"
                )
                .expect("write");
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    });
    let r = n1.run(&["bmigrate", jname, "node=n2", "verify_ms=3000"]);
    assert!(writer.join().expect("writer"), "the guest never ran on n2");
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("moved to n2, but the guest is not healthy there")
            && r.stderr.contains("injected by the test"),
        "{}",
        r.stderr
    );
    runs_only_on(&p.c, vm, 1);
}

/// bmigrate as a broker job: `ferry agent` serves n1's pool, `ferry
/// client` sends the job and prints every reply: progress replies while
/// the transfer runs, then the one final reply.
fn bmigrate_as_a_broker_job_sends_progress_replies(t: Transport) {
    let vm = &vm_name(t, "lmb");
    // A guest rewriting at 8 MiB/s: a transfer limited to 16 MiB/s ends.
    let cmdline = memcheck_cmdline(MEMCHECK_MIB, 8);
    let p = pair_with(t, Storage::Plain, vm, &[&cmdline]);
    let n1 = &p.c.nodes[0];
    let config = n1.root().join("agent.json");
    std::fs::write(&config, p.b.agent_config(n1.root(), "cbsd_n1", "")).expect("config");
    let config = config.to_string_lossy().into_owned();
    let agent = n1
        .bare_command(&["agent", "-config", &config])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("agent");
    let _agent = Killed(agent);
    let before = mark(n1, vm);
    // A bandwidth limit makes the transfer last a few progress periods.
    let body = serde_json::json!({"Command": "bmigrate",
        "CommandArgs": {"jname": vm, "node": "n2", "bandwidth": 16}})
    .to_string();
    let out = n1
        .bare_command(&[
            "client", "-config", &config, "-json", "-timeout", "120", "-body", &body,
        ])
        .output()
        .expect("client");
    let replies: Vec<ferry_agent::job::Reply> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| ferry_agent::job::Reply::parse(l.as_bytes()).expect("a reply"))
        .collect();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{replies:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (last, progress) = replies.split_last().expect("replies");
    assert_eq!((last.progress, last.err_code), (100, 0), "{last:?}");
    assert!(last.message.contains("live-migrated to n2"), "{last:?}");
    let sent: Vec<u8> = progress
        .iter()
        .filter(|r| r.message.contains("MiB sent") && r.message.contains("expected downtime"))
        .map(|r| r.progress)
        .collect();
    assert!(sent.len() >= 2, "too few transfer replies: {replies:?}");
    assert!(
        sent.windows(2).all(|w| w[0] <= w[1]) && sent.iter().all(|p| (5..=90).contains(p)),
        "{sent:?}"
    );
    assert!(
        progress
            .iter()
            .any(|r| r.message.contains("handed over to n2")),
        "{replies:?}"
    );
    runs_only_on(&p.c, vm, 1);
    kept_counting(&p.c.nodes[1], vm, before);
}

/// A child killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn the_link_cut_mid_transfer_leaves_the_vm_running_here(t: Transport) {
    let vm = &vm_name(t, "lml");
    let jname = &format!("jname={vm}");
    let p = pair(t, Storage::Plain, vm);
    let (n1, n2) = (&p.c.nodes[0], &p.c.nodes[1]);
    let before = mark(n1, vm);
    let child = spawn(n1, &[jname, "node=n2", "bandwidth=4", "timeout=6"], &[]);
    wait_until("the destination prepared", secs(30), || {
        incoming_pid(n2, vm).is_some()
    });
    std::thread::sleep(Duration::from_secs(1));
    let net = p.c.net().expect("namespaces");
    net.link(1, false);
    let out = child.wait_with_output().expect("bmigrate");
    net.link(1, true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("not moved, it runs here"), "{err}");
    runs_only_on_source_while_the_destination_cleans_up(&p.c, vm);
    kept_counting(n1, vm, before);
}

fn the_destination_daemon_killed_during_prepare_leaves_the_vm_running_here(t: Transport) {
    let vm = &vm_name(t, "lmd");
    let jname = &format!("jname={vm}");
    let (c, b) = TestCluster::with_broker(BIN, 2, Storage::Plain, t, false);
    let mut p = Pair {
        daemons: c.nodes.iter().map(|n| n.daemon(&["heartbeat=1"])).collect(),
        c,
        b,
    };
    let (n1, n2) = (&p.c.nodes[0], &p.c.nodes[1]);
    n1.ok(&["node", "mode=add", "node=n2"]);
    wait_until("n2 alive", secs(15), || node_alive(n1, "n2"));
    // Hooks are named relative to the workdir: each node has its own copy.
    let began = n1.root().join("prepare-began");
    let body = format!(
        "[ \"$FERRY_DRY_RUN\" = 1 ] && exit 0\n\
         [ \"$FERRY_PHASE\" = migrate-in ] && {{ touch {m}; sleep 3; }}\nexit 0",
        m = began.display()
    );
    n2.hook("slow-in", &body);
    let hook = n1.hook("slow-in", &body);
    checking_guest(n1, vm, &[&format!("mnt_start={}", hook.display())]);
    n1.ok(&["bstart", jname]);
    wait_counter(n1, vm, "no counter", |c| c.len() >= 2);
    let before = mark(n1, vm);
    let mut child = spawn(n1, &[jname, "node=n2", "timeout=6"], &[]);
    wait_until("the prepare began", secs(30), || {
        began.exists() || child.try_wait().ok().flatten().is_some()
    });
    assert!(
        began.exists(),
        "bmigrate ended first: {:?}",
        child
            .wait_with_output()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
    );
    p.daemons.remove(1).kill();
    let out = child.wait_with_output().expect("bmigrate");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("not moved, it runs here"), "{err}");
    runs_only_on(&p.c, vm, 0);
    // Back, n2's daemon finds the prepare and the abort in its tube.
    p.daemons.push(n2.daemon(&["heartbeat=1"]));
    runs_only_on_source_while_the_destination_cleans_up(&p.c, vm);
    kept_counting(n1, vm, before);
}

/// The VM runs on n1 only, and n2 ends without any trace of it.
#[track_caller]
fn runs_only_on_source_while_the_destination_cleans_up(c: &TestCluster, vm: &str) {
    let n2 = &c.nodes[1];
    wait_until("the destination cleaned up", secs(60), || {
        no_runtime(n2, vm) && incoming_pid(n2, vm).is_none()
    });
    runs_only_on(c, vm, 0);
}

fn a_node_of_another_pool_is_refused_for_its_dir_ids_with_every_other_reason(t: Transport) {
    let vm = &vm_name(t, "lmp");
    let jname = &format!("jname={vm}");
    let p = pair(t, Storage::Plain, vm);
    let n1 = &p.c.nodes[0];
    // n3: its own shared dirs (another pool), on the same broker, its
    // daemon running; added on n1, but its heartbeat is not in n1's pool.
    let uri = std::fs::read_to_string(n1.root().join("etc/broker.conf"))
        .expect("broker.conf")
        .lines()
        .find_map(|l| l.strip_prefix("uri=").map(str::to_owned))
        .expect("uri");
    let other_pool = tempfile::tempdir().expect("dir");
    let n3 = TestWorkdir::node_in(BIN, "n3", other_pool.path(), None);
    n3.ok(&["initenv", &format!("broker={uri}")]);
    let _d3 = n3.daemon(&["heartbeat=1"]);
    n1.ok(&["node", "mode=add", "node=n3"]);
    let err = n1.fails(6, &["bmigrate", jname, "node=n3", "check=1"]);
    assert!(err.contains("node n3 is unknown"), "{err}");
    assert!(
        err.contains("n3: jails-data is another file system here"),
        "{err}"
    );
    assert!(err.contains("cannot read its definition here"), "{err}");
    runs_only_on(&p.c, vm, 0);
}
