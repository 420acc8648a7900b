//! Benchmarks of the jail engine against the raw tools, in one run:
//!
//! - `ferry jstart` (until the jail's process runs) and `ferry jstop`
//!   against `runc run -d` and `runc kill` + wait + `runc delete` of the
//!   same bundle; median of each and the ratio of the medians.
//! - `ferry jls --json` with 10,000 registered jails.
//!
//! Run as root: `cargo bench -p ferry --bench jails` (rounds:
//! `FERRY_BENCH_ROUNDS`, default 30).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_api::{Command as FerryCommand, RawArgs};
use ferry_core::registry::Registry;
use ferry_core::Jname;
use ferry_testkit::bench::{median, ms, setting, timed};
use ferry_testkit::TestWorkdir;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

fn main() {
    let rounds = setting("FERRY_BENCH_ROUNDS", 30);
    lifecycle(rounds);
    jls_10k(10);
}

fn runc(root: &Path, args: &[&str]) {
    let st = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("runc");
    assert!(st.success(), "runc {args:?} failed");
}

/// Wait (untimed) until the jail's init has installed its SIGTERM handler:
/// PID 1 of a pid namespace ignores signals it does not handle, so a stop
/// sent before the handler is in place would measure a timeout instead.
fn wait_for_term_handler(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .unwrap_or(0);
        if caught & (1 << 14) != 0 {
            return;
        }
        assert!(Instant::now() < deadline, "pid {pid} never handled SIGTERM");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn lifecycle(rounds: usize) {
    let t = TestWorkdir::with_base(BIN);
    t.ok(&["jcreate", "jname=bench"]);
    // The raw side runs the very bundle ferry generates, under its own id,
    // state root and cgroup.
    t.ok(&["jstart", "jname=bench"]);
    let raw_dir = t.root().join("raw");
    fs::create_dir_all(raw_dir.join("state")).expect("raw dir");
    let mut spec: serde_json::Value = serde_json::from_slice(
        &fs::read(t.root().join("jails/bench/config.json")).expect("config.json"),
    )
    .expect("json");
    spec["linux"]["cgroupsPath"] = "/ferry-bench-raw/raw".into();
    fs::write(
        raw_dir.join("config.json"),
        serde_json::to_vec(&spec).expect("json"),
    )
    .expect("write");
    t.ok(&["jstop", "jname=bench"]);
    let state = raw_dir.join("state");
    let pid_file = raw_dir.join("pid");

    let (mut fs_, mut fp, mut rs, mut rp) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let ferry_round = |fs_: &mut Vec<Duration>, fp: &mut Vec<Duration>| {
        fs_.push(timed(|| {
            t.ok(&["jstart", "jname=bench"]);
        }));
        let pid = t.jls()["bench"]["jid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .expect("jid");
        wait_for_term_handler(pid);
        fp.push(timed(|| {
            t.ok(&["jstop", "jname=bench"]);
        }));
    };
    let raw_round = |rs: &mut Vec<Duration>, rp: &mut Vec<Duration>| {
        let (pid_arg, bundle) = (
            pid_file.to_str().expect("utf8"),
            raw_dir.to_str().expect("utf8"),
        );
        rs.push(timed(|| {
            runc(
                &state,
                &[
                    "run",
                    "-d",
                    "--pid-file",
                    pid_arg,
                    "--bundle",
                    bundle,
                    "raw",
                ],
            );
        }));
        let pid: i32 = fs::read_to_string(&pid_file)
            .expect("pid")
            .trim()
            .parse()
            .expect("pid");
        wait_for_term_handler(pid);
        rp.push(timed(|| {
            runc(&state, &["kill", "raw", "TERM"]);
            assert!(
                ferry_core::sys::wait_gone(pid, None, Duration::from_secs(10)),
                "raw jail ignored TERM"
            );
            runc(&state, &["delete", "raw"]);
        }));
    };
    // Alternate which side goes first, so neither always follows the other.
    for round in 0..rounds {
        if round % 2 == 0 {
            ferry_round(&mut fs_, &mut fp);
            raw_round(&mut rs, &mut rp);
        } else {
            raw_round(&mut rs, &mut rp);
            ferry_round(&mut fs_, &mut fp);
        }
    }
    let (fs_, fp, rs, rp) = (median(fs_), median(fp), median(rs), median(rp));
    println!("jail lifecycle, {rounds} rounds, medians:");
    println!(
        "  start: ferry jstart {:7.1} ms   runc run -d              {:7.1} ms   ratio {:.2}",
        ms(fs_),
        ms(rs),
        ms(fs_) / ms(rs)
    );
    println!(
        "  stop:  ferry jstop  {:7.1} ms   runc kill+wait+delete    {:7.1} ms   ratio {:.2}",
        ms(fp),
        ms(rp),
        ms(fp) / ms(rp)
    );
}

fn jls_10k(runs: usize) {
    const N: usize = 10_000;
    let t = TestWorkdir::new(BIN);
    let wd = t.workdir();
    let mut reg = Registry::open(&wd.db_dir()).expect("registry");
    let mut rows = Vec::with_capacity(N);
    for i in 0..N {
        let name = format!("j{i:05}");
        let raw = RawArgs::from_words([
            format!("jname={name}"),
            format!("ip4_addr=10.1.{}.{}/16", i / 250, i % 250 + 1),
        ])
        .expect("words");
        let FerryCommand::Jcreate(args) = FerryCommand::parse("jcreate", raw).expect("args") else {
            unreachable!()
        };
        let cfg = ferry_jail::JailConfig::from_args(args, wd.root()).expect("config");
        let j = Jname::new(&name).expect("name");
        fs::create_dir_all(wd.system_dir(&j)).expect("system dir");
        ferry_jail::config::to_definition(&cfg.args, wd.root())
            .expect("definition")
            .store(&wd.registered_rcconf(&j), wd.root())
            .expect("store");
        rows.push(ferry_jail::row(&cfg));
    }
    reg.upsert_many(&rows).expect("rows");
    let count = serde_json::from_str::<serde_json::Value>(&t.ok(&["jls", "--json"]))
        .expect("json")
        .as_array()
        .map(Vec::len);
    assert_eq!(count, Some(N));
    let times: Vec<Duration> = (0..runs)
        .map(|_| {
            timed(|| {
                t.ok(&["jls", "--json"]);
            })
        })
        .collect();
    println!(
        "jls --json with {N} registered jails: median {:.1} ms over {runs} runs (whole process)",
        ms(median(times))
    );
}
