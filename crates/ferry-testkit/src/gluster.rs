//! A GlusterFS volume for ferry's multi-node tests: one single-brick volume
//! served by this machine's `glusterd`, its brick in a temp dir, FUSE-mounted
//! once per test node. Dropping it unmounts every mount of the volume in this
//! mount namespace (also those a hook made), deletes the volume, its brick and
//! its logs, and stops `glusterd` if the testkit started it and no other
//! testkit volume remains, also when the test panicked (then the logs are
//! kept). Leftovers of a killed run are cleaned up by the next `create`.
//!
//! ```no_run
//! # use ferry_testkit::gluster::GlusterVolume;
//! # fn main() -> std::io::Result<()> {
//! let vol = GlusterVolume::create()?;
//! vol.mount("/tmp/node1/shared".as_ref())?;
//! vol.mount("/tmp/node2/shared".as_ref())?;
//! // A mount hook gets `vol.spec(Some("jails-data/web1-data"))`.
//! # Ok(()) }
//! ```
//!
//! What the mounts give (see the tests): writes, renames and removals are
//! seen at once by the other mounts; POSIX (`F_SETLK`), OFD and `flock`
//! locks exclude across mounts; a reader racing a rename-over may get
//! ESTALE (retry); two mounts racing to create one name never both win,
//! but now and then both get EEXIST and nothing was created (check, retry).
//!
//! Needs root and Debian's `glusterfs-server` and `glusterfs-client`.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use ferry_core::process::Process;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::mount::{umount2, MntFlags};
use nix::sys::signal::Signal;

/// How long a FUSE client waits for the brick to answer. A node cut off the
/// volume: the brick drops its connection and locks after about this long
/// (5.2 s measured), its own calls fail with ENOTCONN after up to twice as
/// long (9.9 s), and after reconnecting, fds whose locks were dropped fail
/// with EBADFD (`client.strict-locks`).
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Volume names are this prefix and 16 hex digits; only such volumes are ever
/// deleted.
const PREFIX: &str = "ferrytk";
/// Brick dirs are temp dirs named this prefix and the volume name's hex.
const BRICK_DIR: &str = "ferry-gluster-";
/// The default server: `glusterd` refuses `localhost` and `127.0.0.1` as a
/// brick host, but takes any other loopback address.
const LOOPBACK: &str = "127.0.0.2";
/// Serializes volume setup and teardown and glusterd's start and stop across
/// threads and test processes.
const LOCK_FILE: &str = "/run/ferry-testkit-gluster.lock";
/// The pid file of a `glusterd` the testkit started; none when it was running
/// already.
const PID_FILE: &str = "/run/ferry-testkit-glusterd.pid";
/// Where `glusterd`, the bricks and the FUSE clients log.
const LOG_DIR: &str = "/var/log/glusterfs";

/// FUSE mount options: the kernel caches neither names nor attributes, so
/// that a mount sees at once what another one removed or rewrote in place.
/// (With the defaults, 1 s, both stay stale for up to that long.)
const MOUNT_OPTIONS: &str = "attribute-timeout=0,entry-timeout=0,negative-timeout=0";

/// Volume options: no client-side caches, so that each mount sees the
/// others' writes and renames at once; fds holding POSIX locks are not
/// silently reopened after a reconnect (the brick dropped their locks); dead
/// clients and bricks are noticed within about [`PING_TIMEOUT`].
const OPTIONS: &[(&str, &str)] = &[
    ("performance.write-behind", "off"),
    ("performance.stat-prefetch", "off"),
    ("performance.quick-read", "off"),
    ("performance.io-cache", "off"),
    ("performance.read-ahead", "off"),
    ("performance.readdir-ahead", "off"),
    ("performance.open-behind", "off"),
    ("client.strict-locks", "on"),
    ("network.ping-timeout", "5"),
    ("server.tcp-user-timeout", "5"),
    ("server.keepalive-time", "2"),
    ("server.keepalive-interval", "1"),
    ("server.keepalive-count", "3"),
];

/// One GlusterFS volume served by a `glusterd` on this machine, with its
/// brick in a temp dir.
#[derive(Debug)]
pub struct GlusterVolume {
    name: String,
    server: String,
    /// The temp dir holding `brick/` and `owner` (pid and start time of the
    /// process that made it, so a later run knows when it is stale).
    dir: PathBuf,
    /// Held from creation until the volume is ready, so that a failed or
    /// panicking setup is torn down under the same lock.
    setup_lock: Option<Flock<File>>,
}

impl GlusterVolume {
    /// Start `glusterd` if it is not running, and create and start a volume
    /// served on a loopback address.
    pub fn create() -> io::Result<GlusterVolume> {
        GlusterVolume::create_at(LOOPBACK)
    }

    /// Like [`GlusterVolume::create`], with the brick served at `server`, an
    /// address of this machine: a bridge address makes the volume reachable
    /// from the test nodes' network namespaces.
    pub fn create_at(server: &str) -> io::Result<GlusterVolume> {
        let setup_lock = Some(lock()?);
        let id = format!("{:016x}", random_u64()?);
        let mut vol = GlusterVolume {
            name: format!("{PREFIX}{id}"),
            server: server.to_owned(),
            dir: std::env::temp_dir().join(format!("{BRICK_DIR}{id}")),
            setup_lock,
        };
        // On failure, dropping `vol` undoes what was done.
        vol.setup()?;
        vol.setup_lock = None;
        Ok(vol)
    }

    fn setup(&self) -> io::Result<()> {
        start_glusterd()?;
        clean_stale();
        fs::create_dir(&self.dir)?;
        let me = std::process::id();
        let start = start_time(me).ok_or_else(|| io::Error::other("own start time unknown"))?;
        fs::write(self.dir.join("owner"), format!("{me} {start}\n"))?;
        let brick = self.dir.join("brick");
        fs::create_dir(&brick)?;
        let brick = format!("{}:{}", self.server, brick.display());
        // `force`: the brick is on the root file system.
        gluster(&["volume", "create", &self.name, &brick, "force"])?;
        let mut set = vec!["volume", "set", self.name.as_str()];
        set.extend(OPTIONS.iter().flat_map(|(k, v)| [*k, *v]));
        gluster(&set)?;
        gluster(&["volume", "start", &self.name])?;
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host part of mount specs.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// `server:/name`, or `server:/name/sub`: the source for
    /// `mount -t glusterfs`, e.g. in a mount hook.
    pub fn spec(&self, sub: Option<&str>) -> String {
        match sub {
            Some(sub) => format!("{}:/{}/{}", self.server, self.name, sub.trim_matches('/')),
            None => format!("{}:/{}", self.server, self.name),
        }
    }

    /// FUSE-mount the volume on `dir`.
    pub fn mount(&self, dir: &Path) -> io::Result<()> {
        mount(&self.spec(None), dir, None)
    }

    /// FUSE-mount directory `sub` of the volume (it must exist) on `dir`.
    pub fn mount_subdir(&self, sub: &str, dir: &Path) -> io::Result<()> {
        mount(&self.spec(Some(sub)), dir, None)
    }

    /// FUSE-mount the volume on `dir` with the client running in network
    /// namespace `netns` (as made by `ip netns add`): cutting that namespace's
    /// link cuts this mount off the volume. The mount point is in this
    /// process's mount namespace. The volume must be served at an address the
    /// namespace reaches (see [`GlusterVolume::create_at`]).
    pub fn mount_in_netns(&self, netns: &str, dir: &Path) -> io::Result<()> {
        mount(&self.spec(None), dir, Some(netns))
    }

    /// Unmount `dir`, lazily if it is busy.
    pub fn unmount(&self, dir: &Path) -> io::Result<()> {
        unmount(dir)
    }

    /// Unmount, stop, delete, remove the brick and, unless `keep_logs`, the
    /// logs; under the lock.
    fn teardown(&self, keep_logs: bool) {
        for m in mounts_of(&self.name) {
            if let Err(e) = unmount(&m) {
                eprintln!("gluster fixture: unmount {}: {e}", m.display());
            }
        }
        remove_volume(&self.name);
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                eprintln!("gluster fixture: remove {}: {e}", self.dir.display());
            }
            _ => {}
        }
        if keep_logs {
            eprintln!("gluster fixture: logs of {} kept in {LOG_DIR}", self.name);
        } else {
            remove_logs(&self.name, &self.dir);
        }
    }
}

impl Drop for GlusterVolume {
    fn drop(&mut self) {
        // A failed setup or test: keep the logs.
        let keep_logs = self.setup_lock.is_some() || std::thread::panicking();
        let _lock = match self.setup_lock.take() {
            Some(l) => l,
            None => match lock() {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("gluster fixture: {e}; tearing down unlocked");
                    self.teardown(keep_logs);
                    return;
                }
            },
        };
        self.teardown(keep_logs);
        stop_glusterd_if_ours();
    }
}

/// Take the cross-process lock.
fn lock() -> io::Result<Flock<File>> {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)?;
    Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))
}

/// Run `gluster --mode=script args...`; its output, or an error with it.
fn gluster(args: &[&str]) -> io::Result<String> {
    let out = Command::new("gluster")
        .arg("--mode=script")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| not_installed(e, "gluster", "glusterfs-server"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    Err(io::Error::other(format!(
        "gluster {} failed: {}{}",
        args.join(" "),
        stdout.trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

fn not_installed(e: io::Error, tool: &str, package: &str) -> io::Error {
    if e.kind() == io::ErrorKind::NotFound {
        io::Error::new(
            e.kind(),
            format!("{tool} not found: apt-get install {package}"),
        )
    } else {
        e
    }
}

/// Start `glusterd` unless it runs, and wait until it answers.
fn start_glusterd() -> io::Result<()> {
    if find_process(|comm, _| comm == "glusterd").is_empty() {
        let status = Command::new("glusterd")
            .args(["-p", PID_FILE])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| not_installed(e, "glusterd", "glusterfs-server"))?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "glusterd failed to start ({status}): see {LOG_DIR}/glusterd.log"
            )));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match gluster(&["volume", "list"]) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(io::Error::other(format!(
                    "glusterd does not answer: {e} (see {LOG_DIR}/glusterd.log)"
                )))
            }
            Err(_) => sleep(Duration::from_millis(100)),
        }
    }
}

/// Stop `glusterd` if the testkit started it and no testkit volume remains.
fn stop_glusterd_if_ours() {
    let Some(pid) = fs::read_to_string(PID_FILE)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return;
    };
    if !find_process(|comm, _| comm == "glusterd").contains(&pid) {
        let _ = fs::remove_file(PID_FILE);
        return;
    }
    // One that does not answer twice is stopped all the same.
    let vols = volumes().or_else(|_| {
        sleep(Duration::from_secs(1));
        volumes()
    });
    if vols.is_ok_and(|v| v.iter().any(|(name, _)| is_ours(name))) {
        return;
    }
    terminate(&[pid]);
    let _ = fs::remove_file(PID_FILE);
}

/// Delete testkit volumes whose owner is gone (or whose brick is), and
/// testkit brick dirs no volume uses, left by killed runs.
fn clean_stale() {
    let vols = match volumes() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("gluster fixture: cannot list volumes: {e}");
            return;
        }
    };
    for (name, brick) in &vols {
        let owner = brick.as_deref().and_then(Path::parent);
        if is_ours(name) && !owner.is_some_and(owner_alive) {
            for m in mounts_of(name) {
                let _ = unmount(&m);
            }
            remove_volume(name);
            if let Some(dir) = owner.filter(|d| is_brick_dir(d)) {
                let _ = fs::remove_dir_all(dir);
                remove_logs(name, dir);
            }
        }
    }
    for e in fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = e.path();
        let used = vols
            .iter()
            .any(|(_, b)| b.as_deref().and_then(Path::parent) == Some(dir.as_path()));
        if is_brick_dir(&dir) && !used && !owner_alive(&dir) {
            let _ = fs::remove_dir_all(&dir);
            let id = e.file_name().to_string_lossy().replace(BRICK_DIR, "");
            remove_logs(&format!("{PREFIX}{id}"), &dir);
        }
    }
}

fn is_ours(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_brick_dir(dir: &Path) -> bool {
    dir.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(BRICK_DIR))
}

/// Whether the process that made this brick dir still runs.
fn owner_alive(dir: &Path) -> bool {
    let Ok(s) = fs::read_to_string(dir.join("owner")) else {
        return false;
    };
    let mut it = s.split_whitespace().map(|w| w.parse::<u64>().ok());
    match (it.next().flatten(), it.next().flatten()) {
        (Some(pid), Some(start)) => u32::try_from(pid)
            .ok()
            .and_then(start_time)
            .is_some_and(|s| s == start),
        _ => false,
    }
}

/// Every volume with the path of its first brick, from `gluster volume info`.
fn volumes() -> io::Result<Vec<(String, Option<PathBuf>)>> {
    let info = gluster(&["volume", "info"])?;
    let mut out: Vec<(String, Option<PathBuf>)> = Vec::new();
    for line in info.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("Volume Name:") {
            out.push((name.trim().to_owned(), None));
        } else if let Some(brick) = line.strip_prefix("Brick1:") {
            if let (Some(last), Some(i)) = (out.last_mut(), brick.find(":/")) {
                last.1 = Some(PathBuf::from(&brick[i + 1..]));
            }
        }
    }
    Ok(out)
}

/// Stop and delete a volume, and end any of its processes that survive.
fn remove_volume(name: &str) {
    let stop = gluster(&["volume", "stop", name, "force"]);
    if let Err(e) = stop.and(gluster(&["volume", "delete", name])) {
        if volumes().is_ok_and(|v| v.iter().any(|(n, _)| n == name)) {
            eprintln!("gluster fixture: {e}");
        }
    }
    // FUSE clients of lazily unmounted or foreign-namespace mounts, a brick
    // whose stop failed.
    terminate(&find_process(|comm, args| {
        (comm == "glusterfs" || comm == "glusterfsd") && args.iter().any(|a| a.contains(name))
    }));
}

/// FUSE-mount `spec` on `dir`, the client in `netns` if given.
fn mount(spec: &str, dir: &Path, netns: Option<&str>) -> io::Result<()> {
    let dir = &fs::canonicalize(dir)?;
    if !Path::new("/sbin/mount.glusterfs").exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "mount.glusterfs not found: apt-get install glusterfs-client",
        ));
    }
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg("mount");
            c
        }
        None => Command::new("mount"),
    };
    let volume = spec.split_once(":/").map_or("", |(_, v)| v);
    let volume = volume.split('/').next().unwrap_or(volume);
    let log = format!("{LOG_DIR}/{volume}-{}.log", log_name(dir));
    let out = cmd
        .args(["-t", "glusterfs", "-o"])
        .arg(format!("{MOUNT_OPTIONS},log-file={log}"))
        .arg(spec)
        .arg(dir)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "mount {spec} on {} failed: {}{} (see {log})",
            dir.display(),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // mount.glusterfs succeeds even when the client gives up right after
    // (a missing subdirectory): the first access waits for the handshake.
    let _ = fs::metadata(dir);
    if !mountinfo().iter().any(|(m, src)| m == dir && src == spec) {
        return Err(io::Error::other(format!(
            "mount {spec} on {} did not stay (see {log})",
            dir.display()
        )));
    }
    Ok(())
}

/// A path as glusterfs names log files after it: `/tmp/a/b` is `tmp-a-b`.
fn log_name(p: &Path) -> String {
    p.to_string_lossy().trim_matches('/').replace('/', "-")
}

/// The logs of a volume's brick and of the mounts this module made.
fn remove_logs(name: &str, dir: &Path) {
    let _ = fs::remove_file(format!(
        "{LOG_DIR}/bricks/{}.log",
        log_name(&dir.join("brick"))
    ));
    let prefix = format!("{name}-");
    for e in fs::read_dir(LOG_DIR).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_file(e.path());
        }
    }
}

fn unmount(dir: &Path) -> io::Result<()> {
    match umount2(dir, MntFlags::empty()) {
        Err(Errno::EBUSY) => umount2(dir, MntFlags::MNT_DETACH).map_err(io::Error::from),
        r => r.map_err(io::Error::from),
    }
}

/// This mount namespace's glusterfs mounts of volume `name`, deepest first.
fn mounts_of(name: &str) -> Vec<PathBuf> {
    let whole = format!(":/{name}");
    let sub = format!(":/{name}/");
    let mut out: Vec<PathBuf> = mountinfo()
        .into_iter()
        .filter(|(_, src)| src.ends_with(&whole) || src.contains(&sub))
        .map(|(m, _)| m)
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    out
}

/// (mount point, source) of every `fuse.glusterfs` mount.
fn mountinfo() -> Vec<(PathBuf, String)> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mut right = right.split(' ');
            if right.next()? != "fuse.glusterfs" {
                return None;
            }
            let point = unescape(left.split(' ').nth(4)?);
            Some((PathBuf::from(point), unescape(right.next()?)))
        })
        .collect()
}

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(o) if b[i] == b'\\' => {
                out.push(
                    o.iter()
                        .fold(0u8, |n, c| n.wrapping_mul(8).wrapping_add(c - b'0')),
                );
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Pids of live processes whose name and arguments satisfy `pred`.
fn find_process(pred: impl Fn(&str, &[String]) -> bool) -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if start_time(pid).is_none() {
            continue;
        }
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let args: Vec<String> = fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if pred(comm.trim_end(), &args) {
            out.push(pid);
        }
    }
    out
}

/// SIGTERM, then SIGKILL after 10 s, and wait until they are gone.
fn terminate(pids: &[u32]) {
    let procs: Vec<Process> = pids
        .iter()
        .filter_map(|&p| Process::of(i32::try_from(p).ok()?))
        .collect();
    for p in &procs {
        p.signal(Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for p in &procs {
        if !p.wait_gone(deadline.saturating_duration_since(Instant::now())) {
            p.kill();
        }
    }
}

/// The start time of live process `pid`.
fn start_time(pid: u32) -> Option<u64> {
    Process::of(i32::try_from(pid).ok()?).map(|p| p.start)
}

fn random_u64() -> io::Result<u64> {
    let mut b = [0u8; 8];
    File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(u64::from_ne_bytes(b))
}

#[cfg(test)]
mod tests;
