//! The test guest and what tests read of it: where its kernel and
//! initramfs are (built and cached by the project's script), the second
//! QEMU, the counters and memory checker it prints on its console, and
//! the faults a kernel prints.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::TestWorkdir;

/// The test guest (kernel and initramfs), built by the project's script
/// and cached: returns the directory holding `vmlinuz` and `initrd.img`.
pub fn test_guest() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| script_path("build-test-guest")).clone()
}

/// A second QEMU, of another version than the system's (Debian's
/// backports build, fetched and unpacked once by the project's script).
pub fn second_qemu() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| script_path("install-second-qemu"))
        .clone()
}

/// A bootable Debian 12 cloud image (qcow2), built once from Debian's
/// archive by the project's script and cached.
pub fn test_cloud_image() -> PathBuf {
    static IMAGE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| script_path("build-test-cloud-image"))
        .clone()
}

/// A Debian base with apt and dpkg, and a flat package repository holding
/// mc and git with what they need beyond it (built once from Debian's
/// archive by the project's script): `(base, repo)`.
pub fn test_debian() -> (PathBuf, PathBuf) {
    static DIRS: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    DIRS.get_or_init(|| {
        let lines = script_lines("install-test-debian");
        match &lines[..] {
            [.., base, repo] => (PathBuf::from(base), PathBuf::from(repo)),
            _ => panic!("install-test-debian printed {lines:?}"),
        }
    })
    .clone()
}

/// Run one of the project's `scripts/`: the path its last line names.
fn script_path(name: &str) -> PathBuf {
    PathBuf::from(script_lines(name).last().cloned().unwrap_or_default())
}

/// Run one of the project's `scripts/`: the lines it printed.
fn script_lines(name: &str) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(name);
    let out = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .collect()
}

/// The `ferry-guest counter N` lines of a VM's console log, as numbers.
pub fn guest_counters(t: &TestWorkdir, jname: &str) -> Vec<u64> {
    let log = t
        .root()
        .join("jails-system")
        .join(jname)
        .join("console.log");
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ferry-guest counter "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// The kernel command line of a test guest that checks `mib` MiB of its
/// memory, rewriting at most `rate` MiB/s (0: as fast as it can):
/// scripts/test-guest/memcheck.c.
pub fn memcheck_cmdline(mib: u64, rate: u64) -> String {
    format!(
        "vm_cmdline=console=ttyS0 panic=-1 quiet ferry.memcheck={mib} ferry.memcheck_rate={rate}"
    )
}

/// A VM's whole console log.
pub fn console(t: &TestWorkdir, jname: &str) -> String {
    let log = t
        .root()
        .join("jails-system")
        .join(jname)
        .join("console.log");
    String::from_utf8_lossy(&fs::read(log).unwrap_or_default()).into_owned()
}

/// One `ferry-guest memcheck gen=G pages=P bad=B checked=C` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memcheck {
    pub gen: u64,
    pub bad: u64,
    pub checked: u64,
}

/// The memory checker's reports in a console text, in order.
pub fn memcheck_reports(console: &str) -> Vec<Memcheck> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ferry-guest memcheck gen="))
        .filter_map(|rest| {
            let mut f = rest.split(' ');
            let gen = f.next()?.parse().ok()?;
            let get = |k: &str| {
                f.clone()
                    .find_map(|w| w.strip_prefix(k))
                    .and_then(|v| v.parse().ok())
            };
            Some(Memcheck {
                gen,
                bad: get("bad=")?,
                checked: get("checked=")?,
            })
        })
        .collect()
}

/// The first line of a console that reports a guest fault: a kernel
/// oops, BUG or panic, or a bad page found by the memory checker (the
/// same list `bmigrate` watches for, `ferry_vm::integrity`).
pub fn guest_fault(console: &str) -> Option<String> {
    ferry_vm::integrity::fault_in(console).map(str::to_owned)
}

/// The memory checker of `jname` went on after `since` (two more reports
/// with a newer generation), every report clean and no fault on its
/// console. Returns the last report.
#[track_caller]
pub fn assert_memory_clean(t: &TestWorkdir, jname: &str, since: u64) -> Memcheck {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let text = console(t, jname);
        if let Some(f) = guest_fault(&text) {
            panic!("{jname}: the guest reported a fault: {f}");
        }
        let reports = memcheck_reports(&text);
        if let Some(bad) = reports.iter().find(|r| r.bad != 0) {
            panic!("{jname}: memcheck found bad pages: {bad:?}");
        }
        let newer: Vec<&Memcheck> = reports.iter().filter(|r| r.gen > since).collect();
        if newer.len() >= 2 {
            return *newer[newer.len() - 1];
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{jname}: the memory checker did not go on past generation {since}: {:?}",
            reports.last()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The last generation the memory checker of `jname` reported (0: none
/// yet).
pub fn memcheck_gen(t: &TestWorkdir, jname: &str) -> u64 {
    memcheck_reports(&console(t, jname))
        .last()
        .map_or(0, |r| r.gen)
}

/// Wait until a VM's console shows a counter line satisfying `pred`.
#[track_caller]
pub fn wait_counter(
    t: &TestWorkdir,
    jname: &str,
    what: &str,
    pred: impl Fn(&[u64]) -> bool,
) -> Vec<u64> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let c = guest_counters(t, jname);
        if pred(&c) {
            return c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{jname}: {what}; counters so far: {c:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The virtio disks the guest saw last, as it prints them
/// (`vda:SECTORS vdb:SECTORS`, or `none`); `None` before its first report.
pub fn guest_disks(t: &TestWorkdir, jname: &str) -> Option<String> {
    console(t, jname)
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("ferry-guest disks "))
        .map(str::to_owned)
}

/// Wait until the guest reports exactly these disks (`vda:20971520 vdb:131072`).
#[track_caller]
pub fn wait_guest_disks(t: &TestWorkdir, jname: &str, want: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let seen = guest_disks(t, jname);
        if seen.as_deref() == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{jname}: the guest never saw the disks {want:?}; it saw {seen:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
