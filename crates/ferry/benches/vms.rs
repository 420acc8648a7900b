//! Benchmark of the VM engine against QEMU launched by hand, in one run:
//! `ferry bstart` (until QMP answers) and `ferry bstop` (ACPI power-down
//! until QEMU exits) against spawning the very command line ferry builds
//! and connecting to its QMP socket, then connecting again, sending
//! `system_powerdown` and waiting for QEMU to exit.
//! Medians and the ratio of the medians.
//!
//! Run as root: `cargo bench -p ferry --bench vms` (rounds:
//! `FERRY_BENCH_ROUNDS`, default 10; each round boots the test guest
//! twice under TCG, so a round takes about 6 s).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_core::registry::Registry;
use ferry_core::{Jname, Workdir};
use ferry_testkit::bench::{median, ms, setting, timed};
use ferry_testkit::{guest_counters, TestWorkdir};
use ferry_vm::qmp::Qmp;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

fn main() {
    let rounds = setting("FERRY_BENCH_ROUNDS", 10);
    let t = TestWorkdir::new(BIN);
    for name in ["bench", "raw"] {
        t.bcreate_guest(name, &[]);
    }
    let wd = Workdir::open(t.root()).expect("workdir");
    let reg = Registry::open(&wd.db_dir()).expect("registry");
    let raw = Jname::new("raw").expect("name");
    let cfg = ferry_vm::load(&wd, &raw).expect("raw config");
    let accel = ferry_vm::qemu::accel(&wd, &reg, &cfg.args.vm_cpu_model.0).expect("accel");
    let argv = ferry_vm::qemu::command_line(&wd, &cfg, &accel, false);
    let sock = ferry_vm::qemu::qmp_socket(&wd, &raw);
    let pid_file = ferry_vm::qemu::pid_file(&wd, &raw);

    let (mut fs, mut fp, mut rs, mut rp) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let settle = || std::thread::sleep(Duration::from_millis(300));
    let ferry_round = |fs: &mut Vec<Duration>, fp: &mut Vec<Duration>| {
        settle();
        fs.push(timed(|| {
            t.ok(&["bstart", "jname=bench"]);
        }));
        wait_booted(&t, "bench");
        fp.push(timed(|| {
            t.ok(&["bstop", "jname=bench"]);
        }));
    };
    let raw_round = |rs: &mut Vec<Duration>, rp: &mut Vec<Duration>| {
        settle();
        let mut q = None;
        rs.push(timed(|| {
            let st = Command::new(ferry_vm::qemu::binary(&wd).expect("QEMU"))
                .args(&argv)
                .stdin(Stdio::null())
                .status()
                .expect("qemu");
            assert!(st.success());
            q = Some(
                Qmp::connect_retry(&sock, Instant::now() + Duration::from_secs(10)).expect("qmp"),
            );
        }));
        let pid = ferry_vm::qemu::read_pid(&pid_file).expect("pid");
        drop(q);
        wait_booted(&t, "raw");
        rp.push(timed(|| {
            let mut q = Qmp::connect(&sock, Duration::from_secs(5)).expect("qmp");
            q.system_powerdown().expect("powerdown");
            // Until the whole process is gone (a pidfd), not just its main thread.
            assert!(ferry_core::sys::wait_gone(
                pid,
                None,
                Duration::from_secs(30)
            ));
        }));
        let _ = std::fs::remove_file(&sock);
    };
    // Alternate which side goes first, so neither always follows the other.
    for round in 0..rounds {
        if round % 2 == 0 {
            ferry_round(&mut fs, &mut fp);
            raw_round(&mut rs, &mut rp);
        } else {
            raw_round(&mut rs, &mut rp);
            ferry_round(&mut fs, &mut fp);
        }
    }
    let (fs, fp, rs, rp) = (median(fs), median(fp), median(rs), median(rp));
    println!("VM lifecycle under {accel}, {rounds} rounds, medians:");
    println!(
        "  start: ferry bstart {:7.1} ms   qemu by hand, until QMP answers {:7.1} ms   ratio {:.2}",
        ms(fs),
        ms(rs),
        ms(fs) / ms(rs)
    );
    println!(
        "  stop:  ferry bstop  {:7.1} ms   QMP system_powerdown until exit {:7.1} ms   ratio {:.2}",
        ms(fp),
        ms(rp),
        ms(fp) / ms(rp)
    );
}

/// Wait (untimed) until the guest counts: its power-button handler runs
/// by then, so the stop measures a power-down and not a lost button press.
fn wait_booted(t: &TestWorkdir, jname: &str) {
    let log = t
        .root()
        .join("jails-system")
        .join(jname)
        .join("console.log");
    let before = guest_counters(t, jname).len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while guest_counters(t, jname).len() <= before {
        assert!(Instant::now() < deadline, "{} never counted", log.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}
