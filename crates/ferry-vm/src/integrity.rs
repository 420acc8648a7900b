//! Whether a live migration kept the guest whole: QEMUs known to corrupt
//! guests when they move (refused before anything moves), and the check,
//! after a move, that the guest really runs on the destination (QEMU's run
//! state, and no fault on its serial console).
//!
//! The evidence for the table is in docs/migration.md ("QEMUs known to
//! corrupt guests"): a guest that checks its memory (the test guest's
//! `ferry.memcheck`) finds pages of an older generation after a move.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_core::{Error, Jname, Result, Workdir};

use crate::qmp::{QemuVersion, Qmp};
use crate::{qemu, qmp_failed};

/// A QEMU release (major.minor) and accelerator under which a live
/// migration is known to corrupt guests.
struct Corrupts {
    major: u64,
    minor: u64,
    accel: &'static str,
    what: &'static str,
}

const KNOWN_TO_CORRUPT: &[Corrupts] = &[Corrupts {
    major: 7,
    minor: 2,
    accel: "tcg",
    what: "a guest rewriting its memory finds pages of an older generation after a move, \
           and its kernel dies (list_del corruption)",
}];

/// Why a live migration from or to QEMU `version` under `accel` would
/// corrupt the guest, if it is known to.
pub fn known_to_corrupt(version: &QemuVersion, accel: &str) -> Option<String> {
    KNOWN_TO_CORRUPT
        .iter()
        .find(|c| c.major == version.major && c.minor == version.minor && c.accel == accel)
        .map(|c| {
            format!(
                "QEMU {}.{}.{}{} under {accel} is known to corrupt guests in live migration ({}; \
                 docs/migration.md): use QEMU >= 10 (scripts/install-deps installs it), or force=1",
                version.major,
                version.minor,
                version.micro,
                if version.package.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", version.package)
                },
                c.what
            )
        })
}

/// The version in a `qemu --version` line ("QEMU emulator version 7.2.22
/// (Debian 1:7.2+dfsg-7+deb12u18+b3)").
pub fn parse_version_line(line: &str) -> Option<QemuVersion> {
    let rest = line.trim().strip_prefix("QEMU emulator version ")?;
    let (number, package) = match rest.split_once(' ') {
        Some((n, p)) => (n, p.trim().trim_start_matches('(').trim_end_matches(')')),
        None => (rest, ""),
    };
    let mut parts = number.split('.').map(|p| p.parse::<u64>().ok());
    Some(QemuVersion {
        major: parts.next()??,
        minor: parts.next()??,
        micro: parts.next().flatten().unwrap_or(0),
        package: package.to_owned(),
    })
}

/// Why this node's QEMU (the one a VM would start with) under `accel`
/// must not take part in a live migration, if it must not.
pub fn binary_corrupts(wd: &Workdir, accel: &str) -> Result<Option<String>> {
    let bin = qemu::binary(wd)?;
    let line = qemu::version_of(&bin)
        .ok_or_else(|| Error::Failed(format!("{bin} does not run as QEMU (`--version` failed)")))?;
    let v = parse_version_line(&line)
        .ok_or_else(|| Error::Failed(format!("cannot read the version in {line:?}")))?;
    Ok(known_to_corrupt(&v, accel))
}

/// Why the running QEMU of `j` under `accel` must not send it live, if it
/// must not: the running process's own version (its QMP greeting), which
/// may be older than the binary installed now.
pub fn running_corrupts(wd: &Workdir, j: &Jname, accel: &str) -> Result<Option<String>> {
    let q = Qmp::connect(&qemu::qmp_socket(wd, j), Duration::from_secs(5))
        .map_err(|e| qmp_failed(j, e))?;
    Ok(known_to_corrupt(q.version(), accel))
}

/// What a guest's serial console says when its kernel found a fault, or
/// the test guest's memory checker a bad page.
const FAULTS: &[&str] = &[
    "Kernel panic",
    "BUG:",
    "Oops",
    "general protection fault",
    "list_del corruption",
    "list_add corruption",
    "ferry-guest memcheck FAIL",
];

/// The first line of `text` that reports a guest fault.
pub fn fault_in(text: &str) -> Option<&str> {
    text.lines()
        .map(str::trim)
        .find(|l| FAULTS.iter().any(|f| l.contains(f)))
}

/// The size of a VM's console log now: where [`verify_resumed`] starts
/// reading.
pub fn console_mark(wd: &Workdir, j: &Jname) -> u64 {
    std::fs::metadata(qemu::console_log(wd, j)).map_or(0, |m| m.len())
}

/// The console log of a VM from byte `from` on (at most 1 MiB of it).
fn console_since(path: &Path, from: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(from)).is_ok() {
            let _ = f.take(1 << 20).read_to_end(&mut buf);
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// After a move: for `window`, the guest `j` must stay running here (QEMU's
/// run state) and its console, from byte `console_from` on, must report
/// no fault. One check at least, however short the window.
pub fn verify_resumed(wd: &Workdir, j: &Jname, console_from: u64, window: Duration) -> Result<()> {
    let mut q = Qmp::connect(&qemu::qmp_socket(wd, j), Duration::from_secs(5))
        .map_err(|e| qmp_failed(j, e))?;
    let until = Instant::now() + window;
    let log = qemu::console_log(wd, j);
    loop {
        let s = q.query_status().map_err(|e| qmp_failed(j, e))?;
        if s.status != "running" {
            return Err(Error::Failed(format!(
                "{j} is {} here after the move, not running",
                s.status
            )));
        }
        if let Some(line) = fault_in(&console_since(&log, console_from)) {
            return Err(Error::Failed(format!(
                "{j} reported a fault after the move: its console says {line:?}"
            )));
        }
        if Instant::now() >= until {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100).min(window));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u64, minor: u64, micro: u64) -> QemuVersion {
        QemuVersion {
            major,
            minor,
            micro,
            package: String::new(),
        }
    }

    #[test]
    fn the_table_names_qemu_7_2_under_tcg_only() {
        let why = known_to_corrupt(&v(7, 2, 22), "tcg").expect("known");
        assert!(
            why.contains("QEMU 7.2.22 under tcg") && why.contains("force=1"),
            "{why}"
        );
        assert!(known_to_corrupt(&v(7, 2, 22), "kvm").is_none());
        assert!(known_to_corrupt(&v(10, 0, 2), "tcg").is_none());
        assert!(known_to_corrupt(&v(8, 2, 0), "tcg").is_none());
    }

    #[test]
    fn version_lines_are_read() {
        let got =
            parse_version_line("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)")
                .expect("parsed");
        assert_eq!((got.major, got.minor, got.micro), (7, 2, 22));
        assert_eq!(got.package, "Debian 1:7.2+dfsg-7+deb12u18+b3");
        let got = parse_version_line("QEMU emulator version 10.0.2").expect("parsed");
        assert_eq!((got.major, got.minor, got.micro), (10, 0, 2));
        assert!(parse_version_line("QEMU emulator version x.y").is_none());
        assert!(parse_version_line("qemu 7.2").is_none());
    }

    #[test]
    fn faults_are_found_in_console_text() {
        let clean =
            "ferry-guest counter 5\nferry-guest memcheck gen=3 pages=24576 bad=0 checked=9\n";
        assert_eq!(fault_in(clean), None);
        let oops = "ferry-guest counter 6\n[   12.5] list_del corruption. prev->next should be x\n";
        assert_eq!(
            fault_in(oops),
            Some("[   12.5] list_del corruption. prev->next should be x")
        );
        let mc = "ferry-guest memcheck FAIL page=308 gen=75 word=0 want=4b got=4a\n";
        assert!(fault_in(mc).is_some());
        assert!(fault_in("[ 1.0] BUG: kernel NULL pointer dereference").is_some());
    }
}
