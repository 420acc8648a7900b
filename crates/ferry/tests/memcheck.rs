//! The test guest's memory checker (scripts/test-guest/memcheck.c) finds
//! what a live migration that loses a dirty page leaves behind: run on the
//! host, a page of its memory is set back to an older generation's content
//! through /proc/<pid>/mem, and it must report that page, by number.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferry_testkit::{guest_fault, memcheck_reports, test_guest};

/// The start address of the one anonymous read-write mapping of `bytes`.
fn mapping_of(pid: u32, bytes: u64) -> u64 {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let found: Vec<u64> = maps
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (range, perms) = (f.next()?, f.next()?);
            let path = f.nth(3);
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            );
            (perms.starts_with("rw") && path.is_none() && b - a == bytes).then_some(a)
        })
        .collect();
    assert_eq!(found.len(), 1, "the checker's mapping in {maps}");
    found[0]
}

#[test]
fn a_page_set_back_to_an_older_generation_is_reported_by_number() {
    let bin = test_guest().join("memcheck");
    // 8 MiB at 8 MiB/s: a pass a second.
    let mut child = Command::new(&bin)
        .args(["8", "8"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run memcheck");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let out = child.stdout.take().expect("stdout");
    let pid = child.id();
    let _child = Kill(child);
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut text = String::new();
    let mut read_until = |what: &str, pred: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pred(&text) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => {
                    text.push_str(&l);
                    text.push('\n');
                }
                Err(_) => panic!("{what}: not within 30 s; the checker said:\n{text}"),
            }
        }
        text.clone()
    };
    let gen = |t: &str| memcheck_reports(t).last().map_or(0, |r| r.gen);
    let t = read_until("the first pass", &|t| gen(t) >= 2);
    assert!(guest_fault(&t).is_none(), "{t}");
    assert!(memcheck_reports(&t).iter().all(|r| r.bad == 0), "{t}");

    let base = mapping_of(pid, 8 << 20);
    let mem = OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .expect("open /proc/pid/mem");
    let page = 100u64;
    let mut old = vec![0u8; 4096];
    mem.read_exact_at(&mut old, base + page * 4096)
        .expect("read the page");
    let then = u64::from_le_bytes(old[..8].try_into().expect("8 bytes"));
    assert!(then >= 1, "the page's first word is its generation: {then}");
    // Rewritten since, twice: then set back, as a lost dirty page would be.
    read_until("two passes more", &|t| gen(t) >= then + 2);
    mem.write_all_at(&old, base + page * 4096)
        .expect("write the page");
    let t = read_until("the stale page reported", &|t| guest_fault(t).is_some());
    let fault = guest_fault(&t).expect("a fault");
    assert!(
        fault.starts_with(&format!("ferry-guest memcheck FAIL page={page} ")),
        "{fault}"
    );
    assert!(
        fault.contains(&format!("got={then:016x}")),
        "the old generation is named: {fault}"
    );
    let t = read_until("a report counting it", &|t| {
        memcheck_reports(t).last().is_some_and(|r| r.bad == 1)
    });
    assert!(
        memcheck_reports(&t).last().is_some_and(|r| r.bad == 1),
        "{t}"
    );
}

#[test]
fn bad_arguments_are_refused() {
    let bin = test_guest().join("memcheck");
    for args in [&[][..], &["0"], &["x"], &["8", "y"], &["8", "1", "2"]] {
        let out = Command::new(&bin)
            .args(args)
            .output()
            .expect("run memcheck");
        assert_eq!(out.status.code(), Some(2), "memcheck {args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
    }
}
