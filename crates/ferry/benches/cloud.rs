//! Benchmark of a cloud VM's first boot (issue 15): from `ferry bcreate
//! vm_os_profile=cloud-Debian-x86-12 ... runasap=1` to SSH answering with
//! the key cloud-init installed, against the same QEMU command line (read
//! from ferry's own QEMU) started by hand, with a fresh overlay on the same
//! image and the same seed ISO, from `qemu-img create` to SSH answering.
//! The Debian 12 test image (scripts/build-test-cloud-image), under TCG,
//! in a network namespace of the benchmark's own; rounds alternate which
//! goes first. Medians and their ratio (goal: at most 1.1).
//!
//! Run as root: `cargo bench -p ferry --bench cloud` (rounds:
//! `FERRY_BENCH_ROUNDS`, default 3; each takes about a minute).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_testkit::bench::{median, ms, setting};
use ferry_testkit::net::ssh_in;
use ferry_testkit::TestWorkdir;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");
const NS: &str = "ferrybenchcloud";
const GUEST: &str = "10.79.0.99";

fn run(c: &mut Command) {
    let out = c.output().expect("run");
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_ns(args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", NS]).args(args);
    c
}

/// Poll until SSH logs in with `key` (every 100 ms).
fn wait_ssh(key: &Path) {
    let t0 = Instant::now();
    while ssh_in(NS, key, &format!("debian@{GUEST}"), "true").is_none() {
        assert!(t0.elapsed() < Duration::from_secs(400), "no SSH on {GUEST}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The command line of the QEMU whose pid file is `pid`.
fn cmdline(pid: &Path) -> Vec<String> {
    let pid = std::fs::read_to_string(pid).expect("pid file");
    let raw = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).expect("cmdline");
    raw.split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect()
}

fn main() {
    let rounds = setting("FERRY_BENCH_ROUNDS", 3);
    let image: PathBuf = ferry_testkit::test_cloud_image();
    let _ = Command::new("ip").args(["netns", "del", NS]).output();
    run(Command::new("ip").args(["netns", "add", NS]));
    for args in [
        &["link", "set", "lo", "up"][..],
        &["link", "add", "ferry0", "type", "bridge"],
        &["addr", "add", "10.79.0.1/24", "dev", "ferry0"],
        &["link", "set", "ferry0", "up"],
    ] {
        run(Command::new("ip").args(["-n", NS]).args(args));
    }
    let shared = tempfile::tempdir().expect("shared dir");
    let t = TestWorkdir::node_in(BIN, "b1", shared.path(), Some(NS.to_owned()));
    t.ok(&[
        "image",
        "mode=add",
        "name=debian-12-genericcloud-amd64",
        &format!("path={}", image.display()),
    ]);
    let keys = tempfile::tempdir().expect("key dir");
    let key = keys.path().join("key");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key));
    let public = std::fs::read_to_string(keys.path().join("key.pub")).expect("key");
    let pubkey = format!("ci_user_pubkey={}", public.trim());
    let create = [
        "bcreate",
        "jname=cb1",
        "vm_os_profile=cloud-Debian-x86-12",
        "vm_ram=512m",
        "imgsize=4g",
        "host_hostname=cb1.my.domain",
        "ci_ip4_addr=10.79.0.99",
        "ci_gw4=10.79.0.1",
        &pubkey,
        "runasap=1",
    ];
    let data = t.root().join("jails-data/cb1-data");
    let pid_file = t.root().join("var/run/cb1.pid");
    let saved_seed = keys.path().join("seed.iso");
    let mut line: Vec<String> = Vec::new();
    let (mut ferry, mut raw) = (Vec::new(), Vec::new());
    let ferry_round = |ferry: &mut Vec<Duration>, line: &mut Vec<String>| {
        let t0 = Instant::now();
        t.ok(&create);
        wait_ssh(&key);
        ferry.push(t0.elapsed());
        *line = cmdline(&pid_file);
        std::fs::copy(
            t.root().join("jails-system/cb1/cloud-init/seed.iso"),
            &saved_seed,
        )
        .expect("keep the seed");
        t.ok(&["bstop", "jname=cb1"]);
        t.ok(&["bremove", "jname=cb1"]);
    };
    let raw_round = |raw: &mut Vec<Duration>, line: &[String]| {
        // What ferry's start had made, put back by hand: the data and
        // system dirs, the seed, the tap on the bridge.
        let sys = t.root().join("jails-system/cb1/cloud-init");
        std::fs::create_dir_all(&data).expect("data dir");
        std::fs::create_dir_all(&sys).expect("seed dir");
        std::fs::copy(&saved_seed, sys.join("seed.iso")).expect("seed");
        let tap = line
            .iter()
            .find_map(|w| {
                w.split("ifname=")
                    .nth(1)
                    .map(|r| r.split(',').next().unwrap_or("").to_owned())
            })
            .expect("the tap in the command line");
        run(&mut in_ns(&[
            "ip", "tuntap", "add", "dev", &tap, "mode", "tap",
        ]));
        run(&mut in_ns(&[
            "ip", "link", "set", &tap, "master", "ferry0", "up",
        ]));
        let info = ferry_vm::image::list(&t.workdir())
            .expect("images")
            .remove(0);
        let t0 = Instant::now();
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", &info.format, "-b"])
            .arg(format!("../images/{}.{}", info.sha256, info.format))
            .arg(data.join("dsk1.vhd"))
            .arg((4u64 << 30).to_string()));
        run(&mut in_ns(
            &line.iter().map(String::as_str).collect::<Vec<_>>(),
        ));
        wait_ssh(&key);
        raw.push(t0.elapsed());
        let pid = std::fs::read_to_string(&pid_file).expect("pid");
        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        std::thread::sleep(Duration::from_millis(300));
        run(&mut in_ns(&["ip", "link", "del", &tap]));
        let _ = std::fs::remove_dir_all(&data);
        let _ = std::fs::remove_dir_all(t.root().join("jails-system/cb1"));
    };
    ferry_round(&mut Vec::new(), &mut line); // warm-up: caches, the pool's image copy
    for round in 0..rounds {
        if round % 2 == 0 {
            ferry_round(&mut ferry, &mut line);
            raw_round(&mut raw, &line);
        } else {
            raw_round(&mut raw, &line);
            ferry_round(&mut ferry, &mut line);
        }
    }
    let (f, r) = (median(ferry), median(raw));
    println!(
        "Debian 12 cloud image, first boot under TCG to SSH answering, {rounds} rounds, medians:"
    );
    println!(
        "  ferry bcreate..runasap=1 {:8.0} ms   the same QEMU by hand {:8.0} ms   ratio {:.2} (goal <= 1.1)",
        ms(f),
        ms(r),
        ms(f) / ms(r)
    );
    drop(t);
    let _ = Command::new("ip").args(["netns", "del", NS]).output();
}
