//! Small facts read from the running system: `/proc/<pid>/stat`, and UTC
//! timestamps for logs and listings.

use std::fs;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The fields of `/proc/<pid>/stat` ferry uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// One-letter state (`R`, `S`, `Z` ...).
    pub state: char,
    pub pgrp: i32,
    /// The session id (the pid of the session's leader).
    pub session: i32,
    /// Start time in clock ticks since boot: with the pid, it names one
    /// process for good (a recycled pid has another start time).
    pub starttime: u64,
}

impl ProcStat {
    /// Alive, not a zombie waiting to be reaped.
    pub fn is_live(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

/// Parse "pid (comm) S ppid pgrp ... starttime ...". The command name may
/// hold spaces and parentheses, so fields are counted after the last ')'.
pub fn parse_proc_stat(stat: &str) -> Option<ProcStat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        // Field 22 of the whole line; the state is field 3.
        starttime: fields.get(19)?.parse().ok()?,
    })
}

/// `/proc/<pid>/stat` of a process, if it exists.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    parse_proc_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Wait until process `pid` (started at `start`, when known) is gone or a
/// zombie; false if it still lives after `timeout`. The pid is not our
/// child, so it cannot be waited for: a pidfd wakes us the moment it exits
/// (polling `/proc` is the fallback on kernels without pidfds).
pub fn wait_gone(pid: i32, start: Option<u64>, timeout: Duration) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    use rustix::process::{pidfd_open, Pid, PidfdFlags};
    let alive =
        || proc_stat(pid).is_some_and(|p| p.is_live() && start.is_none_or(|s| s == p.starttime));
    if !alive() {
        return true;
    }
    let deadline = Instant::now() + timeout;
    if let Some(fd) = Pid::from_raw(pid).and_then(|p| pidfd_open(p, PidfdFlags::empty()).ok()) {
        // The pid may have been reused between the check and the open.
        if !alive() {
            return true;
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(ts) = Timespec::try_from(left) else {
                break;
            };
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(n) if n > 0 => return true,
                Ok(_) => return !alive(),
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => break,
            }
        }
    }
    let mut nap = Duration::from_millis(1);
    loop {
        if !alive() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(5));
    }
}

/// Send `sig` to process `pid` if it is still the one started at `start`,
/// through a pidfd so that a recycled pid is never signalled. Returns
/// whether the signal was sent.
pub fn signal(pid: i32, start: u64, sig: nix::sys::signal::Signal) -> bool {
    use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
    let Some(fd) = Pid::from_raw(pid).and_then(|p| pidfd_open(p, PidfdFlags::empty()).ok()) else {
        return false;
    };
    // Checked after the pidfd pins the process: it is the one we mean.
    if !is_alive(pid, start) {
        return false;
    }
    Signal::from_named_raw(sig as i32).is_some_and(|s| pidfd_send_signal(&fd, s).is_ok())
}

/// Whether process `pid` is alive and is the one started at `start`.
pub fn is_alive(pid: i32, start: u64) -> bool {
    proc_stat(pid).is_some_and(|p| p.is_live() && p.starttime == start)
}

/// The live processes of session `sid`, with their start times.
pub fn session_members(sid: i32) -> Vec<(i32, u64)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, proc_stat(pid)?)))
        .filter(|(_, p)| p.session == sid && p.is_live())
        .map(|(pid, p)| (pid, p.starttime))
        .collect()
}

/// Send `sig` to every live process of session `sid` (each through a
/// pidfd after checking its start time, so a recycled pid is spared).
/// Returns how many were signalled.
pub fn signal_session(sid: i32, sig: nix::sys::signal::Signal) -> usize {
    session_members(sid)
        .into_iter()
        .filter(|(pid, start)| signal(*pid, *start, sig))
        .count()
}

/// Wait up to `limit` until session `sid` has no live process left.
pub fn wait_session_gone(sid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if session_members(sid).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `2026-11-21T11:40:26Z`. Times before 1970 print as the epoch.
pub fn utc_timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Test-only crash injection, compiled in only with the `crashpoints`
/// feature (`./run-tests` builds with it; releases never do): with
/// `FERRY_CRASH_AT=<op>:<step>` in the environment the process aborts (as
/// if killed) at that step; `<op>:<step>:<n>` aborts the `n`th time the
/// step is reached (in a glob).
#[cfg(feature = "crashpoints")]
pub fn crashpoint(op: &str, step: u32) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEEN: AtomicU32 = AtomicU32::new(0);
    let Ok(at) = std::env::var("FERRY_CRASH_AT") else {
        return;
    };
    let mut parts = at.split(':');
    if parts.next() != Some(op) || parts.next() != Some(step.to_string().as_str()) {
        return;
    }
    let nth: u32 = parts.next().and_then(|n| n.parse().ok()).unwrap_or(1);
    if SEEN.fetch_add(1, Ordering::SeqCst) + 1 == nth {
        std::process::abort();
    }
}

/// Without the `crashpoints` feature, a crash point is nothing.
#[cfg(not(feature = "crashpoints"))]
#[inline(always)]
pub fn crashpoint(_op: &str, _step: u32) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = i32::try_from(std::process::id()).unwrap();
        let start = proc_stat(me).unwrap().starttime;
        assert!(is_alive(me, start));
        assert!(!is_alive(me, start + 1));
        assert!(!is_alive(i32::MAX, start));
    }

    #[test]
    fn formats_utc_timestamps() {
        let at = |s: u64| utc_timestamp(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(1_795_261_226), "2026-11-21T11:40:26Z");
        assert_eq!(at(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn parses_proc_stat_with_awkward_comm() {
        let tail = "1 40 40 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0";
        let p = parse_proc_stat(&format!("42 (a) b (c)) S {tail}")).unwrap();
        assert_eq!(
            (p.state, p.pgrp, p.session, p.starttime),
            ('S', 40, 40, 777)
        );
        assert!(!parse_proc_stat(&format!("42 (sh) Z {tail}"))
            .unwrap()
            .is_live());
        assert_eq!(parse_proc_stat("garbage"), None);
        let me = proc_stat(i32::try_from(std::process::id()).unwrap()).unwrap();
        assert!(me.is_live());
    }

    #[test]
    fn waits_for_a_process_that_is_not_our_child_to_exit() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let start = proc_stat(pid).unwrap().starttime;
        assert!(!wait_gone(pid, Some(start), Duration::from_millis(50)));
        let began = Instant::now();
        // Reap it from another thread, as init would.
        let reaper = std::thread::spawn(move || child.wait());
        assert!(wait_gone(pid, Some(start), Duration::from_secs(5)));
        assert!(began.elapsed() < Duration::from_secs(2));
        reaper.join().unwrap().unwrap();
        assert!(wait_gone(pid, Some(start), Duration::ZERO));
    }
}
