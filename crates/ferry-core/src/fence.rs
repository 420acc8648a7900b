//! The fencing watchdog (DESIGN §5, I2): the half of the split-brain
//! guard that holds when the node daemon itself hangs.
//!
//! `ferry daemon` starts `ferry watchdog`, a small process of its own in
//! its own process group, and feeds it one byte through a pipe after every
//! heartbeat it wrote to shared storage. When no feed came for
//! `fence_time`, the watchdog kills (SIGKILL, no polite stop) every env
//! process this node runs, and goes on killing any that appears while the
//! feed stays away; a marker file makes `jstart`/`bstart` refuse
//! meanwhile. A node whose daemon is frozen, deadlocked, killed or cut off
//! from the storage therefore stops its envs within `fence_time` of its
//! last heartbeat, while another node takes them over only after watching
//! that heartbeat stand still for `lease_time` > `fence_time` + the kill.
//!
//! The watchdog reads nothing on shared storage (a hung mount cannot hang
//! it): only the pipe, this node's runtime records under `jails/` and
//! `/proc`. A clean daemon stop disarms it (`V`, as the kernel's watchdog
//! device is closed); a daemon that dies without disarming is a daemon
//! that stopped feeding.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;

use crate::error::{Error, Result};
use crate::name::Jname;
use crate::runtime;
use crate::sys;
use crate::workdir::Workdir;

/// The byte that feeds the watchdog: the daemon wrote a heartbeat.
pub const FEED: u8 = b'F';
/// The byte that disarms it: the daemon stops cleanly.
pub const DISARM: u8 = b'V';
/// How often the watchdog looks at the clock and, once fired, kills.
pub const POLL: Duration = Duration::from_millis(100);
/// How long env processes may outlive SIGKILL before the watchdog takes
/// them for stuck on lost storage and cuts the node's storage connections.
const STUCK_GRACE: Duration = Duration::from_millis(500);
/// After its daemon died and it fired, how long the watchdog goes on
/// killing envs that were being started at that moment before it exits.
const AFTERMATH: Duration = Duration::from_secs(5);

/// The marker of a fenced node: present while the watchdog has fired and
/// no feed came since. Local (`var/run`), never on shared storage.
pub fn marker(wd: &Workdir) -> PathBuf {
    wd.run_dir().join("fenced")
}

/// Refuse to start an env here while this node is fenced.
pub fn check_not_fenced(wd: &Workdir) -> Result<()> {
    match fs::read_to_string(marker(wd)) {
        Ok(since) => Err(Error::Refused(format!(
            "this node is fenced since {}: its daemon stopped beating the heartbeat, so the \
             watchdog killed its envs (another node may take them over). Start or resume \
             `ferry daemon`: its next heartbeat lifts the fence",
            since.trim()
        ))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot read", &marker(wd))(e)),
    }
}

/// The watchdog's timing rule: a heartbeat more often than `fence_time`,
/// which is shorter than `lease_time` by at least the time to notice and
/// kill (one second). `fence_time` 0 means two thirds of `lease_time`.
pub fn fence_time(heartbeat: u64, lease_time: u64, fence_time: u64) -> Result<u64> {
    let f = if fence_time == 0 {
        lease_time * 2 / 3
    } else {
        fence_time
    };
    if f + 1 > lease_time || f <= heartbeat {
        return Err(Error::bad_value(
            "fence_time",
            &f.to_string(),
            format!(
                "must be longer than heartbeat ({heartbeat}) and at least 1 s shorter than \
                 lease_time ({lease_time}), so that this node's envs are dead before another \
                 node may take them over"
            ),
        ));
    }
    Ok(f)
}

/// The daemon's end: the watchdog process and the pipe that feeds it.
#[derive(Debug)]
pub struct Feeder {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl Feeder {
    /// Start `exe watchdog fence_time=N` (the ferry binary) on the workdir
    /// of `wd`, in a process group of its own, so that a signal to the
    /// daemon's group does not reach it.
    pub fn spawn(wd: &Workdir, exe: &Path, fence_time: u64) -> Result<Feeder> {
        let mut cmd = Command::new(exe);
        cmd.arg("--workdir")
            .arg(wd.root())
            .arg("watchdog")
            .arg(format!("fence_time={fence_time}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        cmd.process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(Error::io("cannot start the watchdog", exe))?;
        let pipe = child.stdin.take();
        Ok(Feeder { child, pipe })
    }

    /// The watchdog's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One feed: a heartbeat was written. An error means the watchdog is
    /// gone (it will not fence this node).
    pub fn feed(&mut self) -> Result<()> {
        let pipe = self
            .pipe
            .as_mut()
            .ok_or_else(|| Error::Failed("the watchdog was disarmed".into()))?;
        pipe.write_all(&[FEED])
            .map_err(|e| Error::Failed(format!("cannot feed the watchdog: {e}")))
    }

    /// Disarm and wait for the watchdog to end (a clean daemon stop).
    pub fn disarm(mut self) {
        if let Some(mut p) = self.pipe.take() {
            let _ = p.write_all(&[DISARM]);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the watchdog read from its pipe in one look.
#[derive(Debug, Default, PartialEq, Eq)]
struct Input {
    fed: bool,
    disarmed: bool,
    closed: bool,
}

/// Read what is there without waiting more than `POLL`.
fn read_input(pipe: &mut impl Read, fd: std::os::fd::BorrowedFd<'_>) -> Input {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut input = Input::default();
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let timeout = Timespec {
        tv_sec: 0,
        tv_nsec: POLL.as_nanos() as i64,
    };
    match poll(&mut fds, Some(&timeout)) {
        Ok(0) | Err(_) => return input,
        Ok(_) => {}
    }
    let mut buf = [0u8; 512];
    match pipe.read(&mut buf) {
        Ok(0) => input.closed = true,
        Ok(n) => {
            input.fed = buf[..n].contains(&FEED);
            input.disarmed = buf[..n].contains(&DISARM);
        }
        Err(e) if e.kind() == ErrorKind::Interrupted => {}
        Err(_) => input.closed = true,
    }
    input
}

/// `ferry watchdog`: watch the feed on stdin until disarmed, or until the
/// daemon is gone and its envs are dead.
pub fn watch(wd: &Workdir, fence_time: Duration) -> Result<()> {
    use std::os::fd::AsFd;
    let stdin = std::io::stdin();
    let fd = stdin.as_fd();
    let mut pipe = stdin.lock();
    let pid_file = pid_file(wd);
    crate::atomic::replace(
        &pid_file,
        format!("{}\n", std::process::id()).as_bytes(),
        0o644,
    )
    .map_err(Error::io("cannot write", &pid_file))?;
    tracing::info!(node = wd.nodename(), ?fence_time, "watchdog armed");
    let r = watch_feed(wd, fence_time, &mut pipe, fd);
    if !another_watchdog(wd) {
        let _ = fs::remove_file(&pid_file);
    }
    r
}

/// Whether the pid file names a live watchdog other than this process (a
/// new daemon's: it guards the node now).
fn another_watchdog(wd: &Workdir) -> bool {
    fs::read_to_string(pid_file(wd))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .is_some_and(|pid| {
            pid != std::process::id() as i32 && sys::proc_stat(pid).is_some_and(|p| p.is_live())
        })
}

/// The watchdog's pid file (`var/run/watchdog.pid`).
pub fn pid_file(wd: &Workdir) -> PathBuf {
    wd.run_dir().join("watchdog.pid")
}

fn watch_feed(
    wd: &Workdir,
    fence_time: Duration,
    pipe: &mut impl Read,
    fd: std::os::fd::BorrowedFd<'_>,
) -> Result<()> {
    let mut last_feed = Instant::now();
    let mut fired: Option<Instant> = None;
    let mut closed = false;
    let mut storage_cut = false;
    let mut signalled = std::collections::BTreeSet::new();
    loop {
        let input = read_input(pipe, fd);
        if input.disarmed {
            tracing::info!("watchdog disarmed by its daemon");
            return Ok(());
        }
        if input.fed && !closed {
            last_feed = Instant::now();
            storage_cut = false;
            signalled.clear();
            if fired.take().is_some() || marker(wd).exists() {
                tracing::warn!("the daemon beats again: fence lifted");
                let _ = fs::remove_file(marker(wd));
            }
        }
        if input.closed && !closed {
            closed = true;
            tracing::error!("the daemon is gone without disarming the watchdog");
        }
        if closed && fired.is_none() && another_watchdog(wd) {
            tracing::warn!("a new daemon's watchdog guards this node now");
            return Ok(());
        }
        if last_feed.elapsed() >= fence_time {
            let at = *fired.get_or_insert_with(|| {
                tracing::error!(
                    ?fence_time,
                    "no heartbeat for fence_time: killing every env of this node"
                );
                let stamp = sys::utc_timestamp(SystemTime::now());
                if let Err(e) = crate::atomic::replace(&marker(wd), stamp.as_bytes(), 0o644) {
                    tracing::error!(error = %e, "cannot write the fence marker");
                }
                Instant::now()
            });
            let alive = kill_all(wd);
            for (j, pid) in &alive {
                // Once per process, not at every look.
                if signalled.insert(*pid) {
                    tracing::warn!(jname = %j, pid, "killed (fenced)");
                }
            }
            // Still alive after SIGKILL and a grace: stuck in a call on
            // storage that is gone (a FUSE request waits for a server it
            // cannot reach). Cut this node's connections to the shared
            // dirs, so every pending call fails and they finish dying.
            if !alive.is_empty() && at.elapsed() >= STUCK_GRACE && !storage_cut {
                storage_cut = true;
                match cut_shared_storage(wd) {
                    Ok(cut) => tracing::error!(
                        connections = ?cut,
                        "env processes outlived SIGKILL: this node's FUSE connections to the \
                         shared dirs are aborted (remount them to bring the node back)"
                    ),
                    Err(e) => tracing::error!(error = %e, "cannot cut the shared storage"),
                }
            }
            // Its daemon is gone: a while more for envs that were being
            // started, unless a new daemon's watchdog lifted the fence.
            if closed && (at.elapsed() >= AFTERMATH || !marker(wd).exists()) {
                return Ok(());
            }
        } else if closed {
            // Nothing to read any more: wait without spinning.
            std::thread::sleep(POLL);
        }
    }
}

/// The FUSE connections (`/sys/fs/fuse/connections/<id>`) that back this
/// workdir's shared dirs, from `/proc/self/mountinfo` (no call on the
/// storage itself, which may hang).
pub fn shared_fuse_connections(wd: &Workdir) -> Vec<u32> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let dirs: Vec<PathBuf> = crate::workdir::SHARED_DIRS
        .iter()
        .map(|d| wd.root().join(d))
        .collect();
    let mut ids: Vec<u32> = info
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            let fstype = fields.get(sep + 1)?;
            let mount_point = unescape(fields.get(4)?);
            let shared = dirs.iter().any(|d| Path::new(&mount_point).starts_with(d));
            if !fstype.starts_with("fuse") || !shared {
                return None;
            }
            fields.get(2)?.split_once(':')?.1.parse().ok()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// A mountinfo path with its octal escapes (`\040` for a space) undone.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Abort this node's FUSE connections to the shared dirs (through the
/// fuse control file system, mounted if it is not): every call pending on
/// them fails at once, and so does every later one until they are
/// mounted again. Returns the connections aborted.
pub fn cut_shared_storage(wd: &Workdir) -> Result<Vec<u32>> {
    let ctl = Path::new("/sys/fs/fuse/connections");
    let ids = shared_fuse_connections(wd);
    if ids.is_empty() {
        return Err(Error::Failed(
            "no FUSE mount backs the shared dirs (only FUSE storage can be cut here)".into(),
        ));
    }
    if !ids.iter().any(|id| ctl.join(id.to_string()).exists()) {
        let _ = nix::mount::mount(
            Some("fusectl"),
            ctl,
            Some("fusectl"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
    for id in &ids {
        let abort = ctl.join(id.to_string()).join("abort");
        fs::write(&abort, b"1").map_err(Error::io("cannot abort the FUSE connection", &abort))?;
    }
    Ok(ids)
}

/// SIGKILL every env process this node's runtime records name (a VM's
/// QEMU, a jail's init: the kernel ends its whole pid namespace with it).
/// Each is checked against its start time, so a recycled pid is spared.
/// Returns the envs signalled.
pub fn kill_all(wd: &Workdir) -> Vec<(Jname, i32)> {
    let Ok(entries) = fs::read_dir(wd.root().join("jails")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| Jname::new(e.file_name().to_str()?).ok())
        .filter_map(|j| {
            let rt = runtime::read(wd, &j).ok()??;
            let (pid, start) = (rt.pid?, rt.starttime?);
            sys::signal(pid, start, Signal::SIGKILL).then_some((j, pid))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timing_rule_leaves_room_for_the_kill() {
        assert_eq!(fence_time(2, 30, 0).unwrap(), 20);
        assert_eq!(fence_time(1, 10, 0).unwrap(), 6);
        assert_eq!(fence_time(1, 10, 9).unwrap(), 9);
        for (hb, lease, f) in [(1, 10, 10), (1, 10, 12), (2, 10, 2), (1, 2, 0)] {
            let e = fence_time(hb, lease, f).unwrap_err().to_string();
            assert!(e.contains("fence_time"), "{e}");
        }
    }

    #[test]
    fn bytes_on_the_pipe_read_as_feeds_disarm_and_close() {
        let (r, mut w) = std::io::pipe().unwrap();
        use std::os::fd::AsFd;
        let mut rr = &r;
        assert_eq!(read_input(&mut rr, r.as_fd()), Input::default());
        w.write_all(&[FEED, FEED]).unwrap();
        let i = read_input(&mut rr, r.as_fd());
        assert!(i.fed && !i.disarmed && !i.closed);
        w.write_all(&[DISARM]).unwrap();
        assert!(read_input(&mut rr, r.as_fd()).disarmed);
        drop(w);
        assert!(read_input(&mut rr, r.as_fd()).closed);
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape("/a\\040b/c"), "/a b/c");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/x\\9"), "/x\\9");
    }

    #[test]
    fn a_fenced_node_refuses_to_start_and_says_why() {
        let t = tempfile::tempdir().unwrap();
        let wd = Workdir::init(t.path(), Some("n1")).unwrap();
        check_not_fenced(&wd).unwrap();
        fs::create_dir_all(wd.run_dir()).unwrap();
        fs::write(marker(&wd), "2026-11-29T06:00:00Z").unwrap();
        let e = check_not_fenced(&wd).unwrap_err().to_string();
        assert!(e.contains("fenced since 2026-11-29T06:00:00Z"), "{e}");
        assert!(e.contains("ferry daemon"), "{e}");
    }
}
