//! Benchmark of `bclone` (issue 17): a VM with a 1 GiB qcow2 disk of which
//! 100 MiB are written, cloned with `ferry bclone` (the whole command: the
//! new env's create, its lease, the copy) against
//! `cp --reflink=auto --sparse=always` of the same disk file, on the same
//! file system, alternating which goes first. Medians and their ratio
//! (goal: at most 1.2).
//!
//! Run as root: `cargo bench -p ferry --bench clone` (rounds:
//! `FERRY_BENCH_ROUNDS`, default 10).

use std::process::Command;
use std::time::Duration;

use ferry_testkit::bench::{median, ms, setting, timed};
use ferry_testkit::TestWorkdir;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

fn main() {
    let rounds = setting("FERRY_BENCH_ROUNDS", 10);
    let t = TestWorkdir::new(BIN);
    t.bcreate_guest("src", &["imgsize=1g"]);
    let disk = t.root().join("jails-data/src-data/dsk1.vhd");
    // 100 MiB written, in 1 MiB pieces spread over the disk.
    for i in 0..100u64 {
        let op = format!("write -P {} {}M 1M", i % 250 + 1, i * 10);
        let ok = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", &op])
            .arg(&disk)
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "qemu-io {op}");
    }
    let allocated = std::fs::metadata(&disk)
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .unwrap_or(0);
    let copy = t.root().join("jails-data/raw-copy.vhd");
    let (mut ferry, mut raw) = (Vec::new(), Vec::new());
    let ferry_round = |ferry: &mut Vec<Duration>| {
        ferry.push(timed(|| {
            t.ok(&["bclone", "old=src", "new=dst"]);
        }));
        t.ok(&["bremove", "jname=dst"]);
    };
    let raw_round = |raw: &mut Vec<Duration>| {
        raw.push(timed(|| {
            let st = Command::new("cp")
                .args(["--reflink=auto", "--sparse=always"])
                .arg(&disk)
                .arg(&copy)
                .status()
                .expect("cp");
            assert!(st.success());
        }));
        std::fs::remove_file(&copy).expect("remove the copy");
    };
    for round in 0..rounds {
        if round % 2 == 0 {
            ferry_round(&mut ferry);
            raw_round(&mut raw);
        } else {
            raw_round(&mut raw);
            ferry_round(&mut ferry);
        }
    }
    let (f, r) = (median(ferry), median(raw));
    println!(
        "1 GiB qcow2 disk, {} MiB allocated, {rounds} rounds, medians:",
        allocated >> 20
    );
    println!(
        "  ferry bclone {:8.1} ms   cp --reflink=auto --sparse=always {:8.1} ms   ratio {:.2} (goal <= 1.2)",
        ms(f),
        ms(r),
        ms(f) / ms(r)
    );
}
