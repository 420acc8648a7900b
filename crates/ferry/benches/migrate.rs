//! `bmigrate` of a 512 MiB guest (the test guest, under TCG) between two
//! nodes in network namespaces, nearly idle and while it keeps rewriting
//! 64 MiB of its memory as fast as it can, against a raw QMP `migrate` of
//! the same guest between the same two namespaces in the same run. The
//! guest checks its memory (`ferry.memcheck`, 8 MiB at 1 MiB/s when
//! "idle"): after every move of either side, its checker must go on clean
//! and its console show no fault.
//!
//! ferry: `bmigrate` back and forth; its total is the wall-clock time of
//! the whole command (prechecks, the destination's prepare, the transfer,
//! the hand-over, the source's teardown) and its downtime the one it
//! reports (QEMU's downtime plus the hand-over until the destination
//! confirmed). It runs with `verify_ms=0` (one look at the guest after
//! the move, not a watch of a second), as the raw side verifies nothing;
//! the default watch adds `verify_ms` to the command, not to the guest's
//! downtime. Raw: a QEMU with the same command line waits with
//! `-incoming` in the other namespace (started before the clock runs),
//! and the source is told `migrate` with the same downtime limit and
//! capabilities (auto-converge, return path) and no bandwidth limit;
//! total and downtime are QEMU's.
//!
//! Run as root: `cargo bench -p ferry --bench migrate` (rounds:
//! `FERRY_BENCH_ROUNDS`, default 6).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_core::Jname;
use ferry_testkit::bench::{median, ms, setting};
use ferry_testkit::broker::Transport;
use ferry_testkit::{
    assert_memory_clean, memcheck_cmdline, memcheck_gen, wait_counter, Storage, TestCluster,
};
use ferry_vm::qmp::Qmp;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");
const DOWNTIME_MS: u64 = 300;

fn main() {
    let rounds = setting("FERRY_BENCH_ROUNDS", 6);
    let (c, _b) = TestCluster::with_broker(BIN, 2, Storage::Plain, Transport::Beanstalkd, false);
    let _daemons: Vec<_> = c.nodes.iter().map(|n| n.daemon(&["heartbeat=1"])).collect();
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    n1.ok(&["node", "mode=add", "node=n2"]);
    n2.ok(&["node", "mode=add", "node=n1"]);
    std::thread::sleep(Duration::from_secs(4));
    println!("512 MiB test guest under TCG, two nodes in network namespaces, {rounds} moves each:");
    for dirty in [0, 64] {
        let vm = format!("bm{dirty}");
        let what = if dirty == 0 {
            "idle".to_owned()
        } else {
            format!("rewriting {dirty} MiB")
        };
        let cmdline = if dirty == 0 {
            memcheck_cmdline(8, 1)
        } else {
            memcheck_cmdline(dirty, 0)
        };
        n1.bcreate_guest(&vm, &["vm_ram=512m", &cmdline]);
        // ferry
        n1.ok(&["bstart", &format!("jname={vm}")]);
        wait_counter(n1, &vm, "the guest does not count", |c| c.len() >= 3);
        let (mut total, mut down, mut handover) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..rounds {
            let (from, to) = if i % 2 == 0 {
                ("n1", "n2")
            } else {
                ("n2", "n1")
            };
            let node = if from == "n1" { n1 } else { n2 };
            let gen = memcheck_gen(node, &vm);
            let t = Instant::now();
            let out = node.ok(&[
                "bmigrate",
                &format!("jname={vm}"),
                &format!("node={to}"),
                &format!("downtime_ms={DOWNTIME_MS}"),
                "verify_ms=0",
            ]);
            total.push(t.elapsed());
            assert_memory_clean(if to == "n1" { n1 } else { n2 }, &vm, gen);
            down.push(reported(&out, "guest downtime "));
            handover.push(reported(&out, "hand-over "));
            if out.contains("did not confirm") {
                eprintln!("  round {i}: {}", out.trim());
            }
        }
        let home = if rounds.is_multiple_of(2) { n1 } else { n2 };
        home.ok(&["bstop", &format!("jname={vm}")]);
        // raw
        let (raw_total, raw_down) = raw(&c, &vm, rounds);
        let row = |name: &str, t: &[Duration], d: &[Duration]| {
            println!(
                "  {what:<18} {name:<8} total {:8.1} ms  downtime {:7.1} ms",
                ms(median(t.to_vec())),
                ms(median(d.to_vec()))
            );
        };
        row("bmigrate", &total, &down);
        row("raw QMP", &raw_total, &raw_down);
        let each = |d: &[Duration]| d.iter().map(|d| d.as_millis()).collect::<Vec<_>>();
        eprintln!(
            "  {what}: downtime per move, bmigrate {:?}, raw {:?}",
            each(&down),
            each(&raw_down)
        );
        println!(
            "  {what:<18} bmigrate - raw: total {:+.1} ms, downtime {:+.1} ms (hand-over {:.1} ms)",
            ms(median(total.clone())) - ms(median(raw_total.clone())),
            ms(median(down.clone())) - ms(median(raw_down.clone())),
            ms(median(handover))
        );
    }
}

/// The "N ms" after `label` in bmigrate's result line.
fn reported(out: &str, label: &str) -> Duration {
    let n = out
        .split(label)
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in {out}"));
    Duration::from_millis(n)
}

/// Raw QMP migrations of `vm`'s guest back and forth: QEMUs started by
/// hand in the nodes' namespaces with ferry's command line for it.
fn raw(c: &TestCluster, vm: &str, rounds: usize) -> (Vec<Duration>, Vec<Duration>) {
    let net = c.net().expect("namespaces");
    let j = Jname::new(vm).expect("name");
    let wd1 = c.nodes[0].workdir();
    let cfg = ferry_vm::load(&wd1, &j).expect("definition");
    let reg = ferry_core::registry::Registry::open(&wd1.db_dir()).expect("registry");
    let accel = ferry_vm::qemu::accel(&wd1, &reg, &cfg.args.vm_cpu_model.0).expect("accel");
    let sock = |k: usize| std::env::temp_dir().join(format!("ferry-bench-raw-{vm}-{k}.qmp"));
    let start = |node: usize, k: usize, incoming: bool| {
        let wd = c.nodes[node].workdir();
        let mut args = ferry_vm::qemu::command_line(&wd, &cfg, &accel, incoming);
        replace_after(
            &mut args,
            "-qmp",
            format!("unix:{},server=on,wait=off", sock(k).display()),
        );
        replace_after(
            &mut args,
            "-pidfile",
            std::env::temp_dir()
                .join(format!("ferry-bench-raw-{vm}-{k}.pid"))
                .display()
                .to_string(),
        );
        let st = Command::new("ip")
            .args(["netns", "exec", &net.node(node).ns])
            .arg(ferry_vm::qemu::binary(&wd).expect("QEMU"))
            .args(&args)
            .status()
            .expect("start QEMU");
        assert!(st.success(), "raw QEMU did not start");
        Qmp::connect_retry(&sock(k), Instant::now() + Duration::from_secs(10)).expect("QMP")
    };
    // The console log is the VM's (shared, appended to): wait for lines
    // of this boot.
    let seen = ferry_testkit::guest_counters(&c.nodes[0], vm).len();
    let reports = |c: &TestCluster| {
        ferry_testkit::memcheck_reports(&ferry_testkit::console(&c.nodes[0], vm)).len()
    };
    let reported = reports(c);
    let mut src = start(0, 0, false);
    wait_counter(&c.nodes[0], vm, "the raw guest does not count", |c| {
        c.len() >= seen + 3
    });
    // The checker of this boot reported (it counts generations afresh).
    let t0 = Instant::now();
    while reports(c) < reported + 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the raw guest's checker is silent"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (mut total, mut down) = (Vec::new(), Vec::new());
    for k in 1..=rounds {
        let to = k % 2; // 1: to n2, 0: back to n1
        let mut dst = start(to, k, true);
        let addr: std::net::IpAddr = net.node(to).addr.parse().expect("address");
        dst.set_migrate_capabilities(&[("return-path", true)])
            .expect("caps");
        dst.migrate_incoming(&format!("tcp:{}", SocketAddr::new(addr, 0)))
            .expect("incoming");
        let v = dst.execute("query-migrate", None).expect("query");
        let port = v["socket-address"][0]["port"]
            .as_str()
            .and_then(|p| p.parse::<u16>().ok())
            .expect("port");
        src.set_migrate_capabilities(&[
            ("events", true),
            ("auto-converge", true),
            ("return-path", true),
        ])
        .expect("caps");
        src.set_migrate_parameters(
            json!({"downtime-limit": DOWNTIME_MS, "max-bandwidth": 1u64 << 40}),
        )
        .expect("params");
        let gen = memcheck_gen(&c.nodes[0], vm);
        src.migrate(&format!("tcp:{}", SocketAddr::new(addr, port)))
            .expect("migrate");
        src.wait_event_where("MIGRATION", Duration::from_secs(300), |d| {
            d["status"] == "completed" || d["status"] == "failed"
        })
        .expect("completed");
        let info = src.query_migrate().expect("query");
        assert_eq!(info.status, "completed", "{info:?}");
        total.push(Duration::from_millis(info.total_time_ms.unwrap_or(0)));
        down.push(Duration::from_millis(info.downtime_ms.unwrap_or(0)));
        let _ = src.quit();
        assert_memory_clean(&c.nodes[0], vm, gen);
        src = dst;
    }
    let _ = src.quit();
    std::thread::sleep(Duration::from_millis(500));
    (total, down)
}

fn replace_after(args: &mut [OsString], flag: &str, value: String) {
    if let Some(i) = args.iter().position(|a| a == flag) {
        if let Some(v) = args.get_mut(i + 1) {
            *v = value.into();
        }
    }
}
