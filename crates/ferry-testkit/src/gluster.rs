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

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

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
        let Some((comm, state, _)) = stat(pid) else {
            continue;
        };
        let args: Vec<String> = fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if state != "Z" && pred(&comm, &args) {
            out.push(pid);
        }
    }
    out
}

/// SIGTERM, then SIGKILL after 10 s, and wait until they are gone.
fn terminate(pids: &[u32]) {
    let gone = |pid: u32| stat(pid).is_none_or(|(_, state, _)| state == "Z");
    for (sig, wait) in [(Signal::SIGTERM, 10), (Signal::SIGKILL, 5)] {
        for &pid in pids {
            if let Ok(p) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(p), sig);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(wait);
        while !pids.iter().all(|&p| gone(p)) && Instant::now() < deadline {
            sleep(Duration::from_millis(20));
        }
        if pids.iter().all(|&p| gone(p)) {
            return;
        }
    }
}

/// (comm, state, start time) from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(String, String, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, tail) = s.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    let fields: Vec<&str> = tail.split_whitespace().collect();
    Some((
        comm,
        fields.first()?.to_string(),
        fields.get(19)?.parse().ok()?,
    ))
}

fn start_time(pid: u32) -> Option<u64> {
    stat(pid)
        .filter(|(_, state, _)| state != "Z")
        .map(|(_, _, t)| t)
}

fn random_u64() -> io::Result<u64> {
    let mut b = [0u8; 8];
    File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(u64::from_ne_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::FileExt;
    use std::process::{Child, ChildStdin};
    use std::sync::{mpsc, Arc, Barrier};

    use nix::fcntl::{fcntl, FcntlArg};

    #[test]
    fn ping_timeout_matches_the_volume_options() {
        let secs = PING_TIMEOUT.as_secs().to_string();
        for key in ["network.ping-timeout", "server.tcp-user-timeout"] {
            assert!(OPTIONS.contains(&(key, secs.as_str())), "{key}");
        }
    }

    /// One volume mounted twice, as two nodes would.
    struct Two {
        _vol: GlusterVolume,
        a: PathBuf,
        b: PathBuf,
        _dirs: tempfile::TempDir,
    }

    fn two() -> Two {
        let dirs = tempfile::tempdir().expect("temp dir");
        let (a, b) = (dirs.path().join("a"), dirs.path().join("b"));
        fs::create_dir(&a).expect("mkdir a");
        fs::create_dir(&b).expect("mkdir b");
        let vol = GlusterVolume::create().expect("create volume");
        vol.mount(&a).expect("mount a");
        vol.mount(&b).expect("mount b");
        Two {
            _vol: vol,
            a,
            b,
            _dirs: dirs,
        }
    }

    fn wrlock() -> libc::flock {
        libc::flock {
            l_type: libc::F_WRLCK as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        }
    }

    fn open_rw(p: &Path) -> File {
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(p)
            .expect("open")
    }

    /// A separate process holding an exclusive lock on a file, as another
    /// node would; it answers `write` with the outcome of a write+fsync.
    struct Holder {
        child: Child,
        stdin: Option<ChildStdin>,
        lines: mpsc::Receiver<String>,
    }

    impl Holder {
        fn spawn(path: &Path, ofd: bool) -> Holder {
            let module = module_path!().split_once("::").map_or("", |m| m.1);
            let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
            cmd.args([
                &format!("{module}::lock_holder"),
                "--exact",
                "--include-ignored",
            ])
            .args(["--nocapture", "--test-threads=1"])
            .env("FERRY_GLUSTER_HOLD", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
            if ofd {
                cmd.env("FERRY_GLUSTER_HOLD_OFD", "1");
            }
            let mut child = cmd.spawn().expect("spawn holder");
            let out = child.stdout.take().expect("stdout");
            let (tx, lines) = mpsc::channel();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    // libtest may print "test ... " before it on the same line.
                    if let Some((_, l)) = l.split_once("HOLDER ") {
                        let _ = tx.send(l.to_owned());
                    }
                }
            });
            let stdin = child.stdin.take();
            Holder {
                child,
                stdin,
                lines,
            }
        }

        fn next(&self) -> String {
            self.lines
                .recv_timeout(Duration::from_secs(60))
                .expect("holder answers")
        }

        fn ask(&mut self, cmd: &str) -> String {
            let stdin = self.stdin.as_mut().expect("holder running");
            writeln!(stdin, "{cmd}").expect("to holder");
            self.next()
        }

        /// Let the holder exit, which releases its lock.
        fn release(&mut self) {
            self.stdin = None;
            let _ = self.child.wait();
        }
    }

    impl Drop for Holder {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The holder process: see [`Holder`].
    #[test]
    #[ignore = "run by the lock tests in a separate process"]
    fn lock_holder() {
        let Some(path) = std::env::var_os("FERRY_GLUSTER_HOLD") else {
            return;
        };
        let f = open_rw(Path::new(&path));
        let lk = wrlock();
        let r = if std::env::var_os("FERRY_GLUSTER_HOLD_OFD").is_some() {
            fcntl(&f, FcntlArg::F_OFD_SETLKW(&lk))
        } else {
            fcntl(&f, FcntlArg::F_SETLKW(&lk))
        };
        println!(
            "HOLDER {}",
            r.map_or_else(|e| format!("error {e}"), |_| "locked".into())
        );
        for line in io::stdin().lines().map_while(Result::ok) {
            if line == "write" {
                let r = f.write_all_at(b"x", 0).and_then(|()| f.sync_all());
                println!(
                    "HOLDER {}",
                    r.map_or_else(|e| format!("error {e}"), |()| "ok".into())
                );
            }
        }
    }

    /// Run `op` on both mounts at once, round after round, each round on a
    /// new entry `<what><round>`: never do both sides win. Entry creation on
    /// a brick is not atomic (glusterfs issue 2744): now and then both sides
    /// get EEXIST and the entry does not exist, so a loser must check.
    fn race(t: &Two, what: &'static str, op: fn(&Path) -> io::Result<()>) {
        const ROUNDS: usize = 200;
        let barrier = Arc::new(Barrier::new(2));
        let sides: Vec<_> = [t.a.clone(), t.b.clone()]
            .into_iter()
            .map(|dir| {
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    (0..ROUNDS)
                        .map(|r| {
                            barrier.wait();
                            op(&dir.join(format!("{what}{r}"))).map_err(|e| e.kind())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let res: Vec<Vec<_>> = sides
            .into_iter()
            .map(|h| h.join().expect("racer"))
            .collect();
        let lost = Err(io::ErrorKind::AlreadyExists);
        let mut none_won = Vec::new();
        for (r, (&x, &y)) in res[0].iter().zip(&res[1]).enumerate() {
            let exists = t.b.join(format!("{what}{r}")).exists();
            if x == lost && y == lost {
                assert!(!exists, "{what} {r}: both lost, but it exists");
                none_won.push(r);
            } else {
                let one = (x.is_ok() && y == lost) || (x == lost && y.is_ok());
                assert!(
                    one && exists,
                    "{what} {r}: a {x:?}, b {y:?}, exists {exists}"
                );
            }
        }
        let a_won = res[0].iter().filter(|r| r.is_ok()).count();
        eprintln!("{what}: {ROUNDS} rounds, a won {a_won}, neither won {none_won:?}");
    }

    #[test]
    fn writes_and_renames_are_seen_at_once_by_the_other_mount() {
        let t = two();
        for i in 0..100usize {
            let body = format!("{i}:").repeat(i * 7 + 1);
            let tmp = t.a.join("def.tmp");
            let mut f = File::create(&tmp).unwrap();
            f.write_all(body.as_bytes()).unwrap();
            f.sync_all().unwrap();
            drop(f);
            fs::rename(&tmp, t.a.join("def")).unwrap();
            assert_eq!(
                fs::read_to_string(t.b.join("def")).unwrap(),
                body,
                "rename {i}"
            );
            assert_eq!(
                fs::metadata(t.b.join("def")).unwrap().len(),
                body.len() as u64
            );

            fs::write(t.a.join("inplace"), &body).unwrap();
            assert_eq!(
                fs::read_to_string(t.b.join("inplace")).unwrap(),
                body,
                "rewrite {i}"
            );

            let fresh = format!("new{i}");
            assert!(!t.b.join(&fresh).exists());
            fs::write(t.a.join(&fresh), "x").unwrap();
            assert!(t.b.join(&fresh).exists(), "new name {i}");
            fs::remove_file(t.a.join(&fresh)).unwrap();
            assert!(!t.b.join(&fresh).exists(), "removed name {i}");
        }
    }

    #[test]
    fn exclusive_creates_never_have_two_winners_across_mounts() {
        let t = two();
        race(&t, "mkdir", |p| fs::create_dir(p));
        race(&t, "excl", |p| {
            File::options()
                .write(true)
                .create_new(true)
                .open(p)
                .map(drop)
        });
        race(&t, "link", |p| {
            let side = p.parent().and_then(Path::file_name).unwrap_or_default();
            let tmp = p.with_extension(side);
            fs::write(&tmp, side.as_encoded_bytes())?;
            fs::hard_link(&tmp, p)
        });
        for r in (0..200).filter(|r| t.a.join(format!("link{r}")).exists()) {
            let via_a = fs::read(t.a.join(format!("link{r}"))).unwrap();
            assert_eq!(via_a, fs::read(t.b.join(format!("link{r}"))).unwrap());
        }
    }

    #[test]
    fn posix_lock_excludes_across_mounts() {
        let t = two();
        fs::write(t.a.join("lease"), "").unwrap();
        let mut holder = Holder::spawn(&t.a.join("lease"), false);
        assert_eq!(holder.next(), "locked");

        let f = open_rw(&t.b.join("lease"));
        let denied = fcntl(&f, FcntlArg::F_SETLK(&wrlock()));
        assert!(
            matches!(denied, Err(Errno::EAGAIN | Errno::EACCES)),
            "{denied:?}"
        );
        let mut probe = wrlock();
        fcntl(&f, FcntlArg::F_GETLK(&mut probe)).unwrap();
        assert_eq!(
            probe.l_type,
            libc::F_WRLCK as libc::c_short,
            "F_GETLK shows it"
        );
        eprintln!(
            "F_GETLK: l_pid {} (holder {})",
            probe.l_pid,
            holder.child.id()
        );

        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let r = fcntl(&f, FcntlArg::F_SETLKW(&wrlock()));
            let _ = tx.send((r, Instant::now()));
            f
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(500)).is_err(),
            "F_SETLKW did not wait"
        );
        let released = Instant::now();
        holder.release();
        let (r, got) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("F_SETLKW returns");
        r.unwrap();
        eprintln!("POSIX lock hand-over across mounts: {:?}", got - released);
        // Held through b now. Each mount is its own client to the brick: the
        // same process asking through a conflicts with itself, unlike on a
        // local file system.
        let _f = waiter.join().unwrap();
        let mut p = wrlock();
        fcntl(open_rw(&t.a.join("lease")), FcntlArg::F_GETLK(&mut p)).unwrap();
        assert_eq!(
            p.l_type,
            libc::F_WRLCK as libc::c_short,
            "own lock via the other mount"
        );
    }

    #[test]
    fn ofd_lock_excludes_across_mounts() {
        let t = two();
        fs::write(t.a.join("lease"), "").unwrap();
        let (fa, fb) = (open_rw(&t.a.join("lease")), open_rw(&t.b.join("lease")));
        fcntl(&fa, FcntlArg::F_OFD_SETLK(&wrlock())).expect("F_OFD_SETLK on FUSE");
        let denied = fcntl(&fb, FcntlArg::F_OFD_SETLK(&wrlock()));
        assert_eq!(denied, Err(Errno::EAGAIN), "other mount, same process");
        let fa2 = open_rw(&t.a.join("lease"));
        let denied = fcntl(&fa2, FcntlArg::F_OFD_SETLK(&wrlock()));
        assert_eq!(denied, Err(Errno::EAGAIN), "same mount, other open file");
        drop(fa);
        // FUSE sends the close that frees an OFD lock asynchronously.
        lock_within_5s(&fb, "the holder closed");
        drop(fb);

        let mut holder = Holder::spawn(&t.a.join("lease"), true);
        assert_eq!(holder.next(), "locked");
        let f = open_rw(&t.b.join("lease"));
        let denied = fcntl(&f, FcntlArg::F_OFD_SETLK(&wrlock()));
        assert_eq!(denied, Err(Errno::EAGAIN), "other process");
        let denied = fcntl(&f, FcntlArg::F_SETLK(&wrlock()));
        assert!(
            matches!(denied, Err(Errno::EAGAIN | Errno::EACCES)),
            "POSIX vs OFD"
        );
        holder.release();
        // The same: freed asynchronously once the holder's files closed.
        lock_within_5s(&f, "the holder exited");
    }

    /// Take a write OFD lock on `f`, retrying for up to 5 s.
    #[track_caller]
    fn lock_within_5s(f: &fs::File, after: &str) {
        let since = Instant::now();
        while let Err(e) = fcntl(f, FcntlArg::F_OFD_SETLK(&wrlock())) {
            assert!(
                since.elapsed() < Duration::from_secs(5),
                "not free 5 s after {after}: {e}"
            );
            sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn flock_excludes_across_mounts() {
        let t = two();
        fs::write(t.a.join("lease"), "").unwrap();
        let a = Flock::lock(open_rw(&t.a.join("lease")), FlockArg::LockExclusiveNonblock);
        let b = Flock::lock(open_rw(&t.b.join("lease")), FlockArg::LockExclusiveNonblock);
        assert!(a.is_ok(), "{:?}", a.map_err(|e| e.1));
        assert_eq!(b.map(drop).map_err(|e| e.1), Err(Errno::EWOULDBLOCK));
        drop(a);
        let b = Flock::lock(open_rw(&t.b.join("lease")), FlockArg::LockExclusiveNonblock);
        assert!(b.is_ok(), "free once unlocked");
    }

    #[test]
    fn rename_over_is_atomic_across_mounts() {
        const SIZE: usize = 4096;
        let t = two();
        let gen = |n: u64| format!("{n:015}\n").repeat(SIZE / 16).into_bytes();
        fs::write(t.a.join("target"), gen(0)).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (dir, stop) = (t.a.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let mut f = File::create(dir.join("target.tmp")).unwrap();
                    f.write_all(&gen(n)).unwrap();
                    f.sync_all().unwrap();
                    fs::rename(dir.join("target.tmp"), dir.join("target")).unwrap();
                }
                n
            })
        };
        let (mut reads, mut last, mut stale) = (0, 0u64, [0, 0]);
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            // Under load, the open or the read may race with the rename and
            // fail with ESTALE (as on NFS): a reader retries. Never ENOENT.
            let mut bytes = Vec::new();
            let r = File::open(t.b.join("target"))
                .map_err(|e| (0, e))
                .and_then(|mut f| f.read_to_end(&mut bytes).map_err(|e| (1, e)));
            match r {
                Ok(_) => {}
                Err((at, e)) if e.raw_os_error() == Some(libc::ESTALE) => {
                    stale[at] += 1;
                    continue;
                }
                Err((at, e)) => panic!("{} failed: {e}", ["open", "read"][at]),
            }
            assert_eq!(bytes.len(), SIZE, "whole file");
            assert!(
                bytes.chunks(16).all(|c| c == &bytes[..16]),
                "one generation"
            );
            let n: u64 = String::from_utf8_lossy(&bytes[..15]).parse().unwrap();
            assert!(n >= last, "went back from {last} to {n}");
            (reads, last) = (reads + 1, n);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let written = writer.join().unwrap();
        eprintln!(
            "rename over: {written} renames in a, {reads} whole reads in b, \
             ESTALE on open {}, on read {}",
            stale[0], stale[1]
        );
        assert!(reads > 0);
    }

    #[test]
    fn subdir_mounts() {
        let dirs = tempfile::tempdir().unwrap();
        let (w, s, m) = (
            dirs.path().join("w"),
            dirs.path().join("s"),
            dirs.path().join("m"),
        );
        for d in [&w, &s, &m] {
            fs::create_dir(d).unwrap();
        }
        let vol = GlusterVolume::create().unwrap();
        vol.mount(&w).unwrap();
        fs::create_dir_all(w.join("env1/data")).unwrap();
        fs::write(w.join("env1/data/x"), "x").unwrap();
        vol.mount_subdir("env1/data", &s).unwrap();
        assert_eq!(fs::read_to_string(s.join("x")).unwrap(), "x");
        fs::write(s.join("y"), "y").unwrap();
        assert_eq!(fs::read_to_string(w.join("env1/data/y")).unwrap(), "y");
        // mount.glusterfs fails, or succeeds and the client gives up at once.
        vol.mount_subdir("missing", &m).expect_err("no such subdir");
        assert!(mountinfo().iter().all(|(p, _)| !p.ends_with("m")));
    }

    #[test]
    fn drop_tears_everything_down() {
        let dirs = tempfile::tempdir().unwrap();
        let (a, s) = (dirs.path().join("a"), dirs.path().join("s"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&s).unwrap();
        let vol = GlusterVolume::create().unwrap();
        vol.mount(&a).unwrap();
        fs::create_dir(a.join("sub")).unwrap();
        // As a mount hook would, outside the fixture.
        let log = format!("log-file={LOG_DIR}/{}-hook.log", vol.name());
        let out = Command::new("mount")
            .args(["-t", "glusterfs", "-o", &log, &vol.spec(Some("sub"))])
            .arg(&s)
            .output()
            .unwrap();
        assert!(out.status.success());
        let busy = File::create(a.join("open")).unwrap();
        let (name, dir) = (vol.name().to_owned(), vol.dir.clone());
        drop(vol);
        assert_eq!(mounts_of(&name), Vec::<PathBuf>::new());
        assert!(!dir.exists(), "brick dir left");
        let ours = |comm: &str, args: &[String]| {
            comm.starts_with("glusterfs") && args.iter().any(|a| a.contains(&name))
        };
        assert!(find_process(ours).is_empty(), "client or brick left");
        let _l = lock().unwrap();
        assert!(!volumes()
            .unwrap_or_default()
            .iter()
            .any(|(n, _)| *n == name));
        drop(busy);
    }

    #[test]
    fn leftovers_of_a_killed_run_are_cleaned() {
        let dirs = tempfile::tempdir().unwrap();
        let m = dirs.path().join("m");
        fs::create_dir(&m).unwrap();
        let mut dead = Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        let mut left = Vec::new();
        {
            let _l = lock().unwrap();
            start_glusterd().unwrap();
            for _ in 0..3 {
                let dir = tempfile::Builder::new()
                    .prefix(BRICK_DIR)
                    .tempdir()
                    .unwrap()
                    .keep();
                fs::write(dir.join("owner"), format!("{dead_pid} 1\n")).unwrap();
                fs::create_dir(dir.join("brick")).unwrap();
                let name = format!("{PREFIX}{:016x}", random_u64().unwrap());
                left.push((name, dir));
            }
            // A mounted volume of a dead process, a volume whose brick is
            // gone, a brick dir without a volume.
            for (name, dir) in &left[..2] {
                let brick = format!("{LOOPBACK}:{}", dir.join("brick").display());
                gluster(&["volume", "create", name, &brick, "force"]).unwrap();
                gluster(&["volume", "start", name]).unwrap();
            }
            mount(&format!("{LOOPBACK}:/{}", left[0].0), &m, None).unwrap();
            fs::remove_dir_all(&left[1].1).unwrap();
        }
        let vol = GlusterVolume::create().unwrap();
        let _l = lock().unwrap();
        let vols = volumes().unwrap();
        for (name, dir) in &left {
            assert!(!vols.iter().any(|(n, _)| n == name), "{name} left");
            assert!(mounts_of(name).is_empty(), "{name} mounted");
            assert!(!dir.exists(), "{} left", dir.display());
        }
        assert!(vols.iter().any(|(n, _)| n == vol.name()));
        drop(_l);
    }

    /// Figures for the design notes; run with `--nocapture` to see them.
    #[test]
    fn timings() {
        let start = Instant::now();
        let t = two();
        let setup = start.elapsed();
        let latency = |dir: &Path| {
            let mut v: Vec<Duration> = (0..200)
                .map(|i| {
                    let t0 = Instant::now();
                    let mut f = File::create(dir.join("lat.tmp")).unwrap();
                    f.write_all(format!("node1 epoch {i}\n").as_bytes())
                        .unwrap();
                    f.sync_all().unwrap();
                    fs::rename(dir.join("lat.tmp"), dir.join("lat")).unwrap();
                    t0.elapsed()
                })
                .collect();
            v.sort();
            (v[100], v[190])
        };
        let fuse = latency(&t.a);
        let local_dir = tempfile::tempdir().unwrap();
        let local = latency(local_dir.path());
        let start = Instant::now();
        drop(t);
        let teardown = start.elapsed();
        eprintln!(
            "create + 2 mounts {setup:?}; teardown {teardown:?}; write+fsync+rename \
             median/p95: glusterfs {:?}/{:?}, local {:?}/{:?}",
            fuse.0, fuse.1, local.0, local.1
        );
        assert!(setup < Duration::from_secs(60) && teardown < Duration::from_secs(60));
    }

    /// The split-brain guard's premise: a node cut off the storage loses its
    /// lock within a bounded time, and never writes through it again.
    #[test]
    fn cut_off_node_loses_its_lock() {
        let dirs = tempfile::tempdir().unwrap();
        let (a, b) = (dirs.path().join("a"), dirs.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        let net = crate::net::TestNet::new(1);
        let vol = GlusterVolume::create_at(net.host_addr()).unwrap();
        vol.mount_in_netns(&net.node(0).ns, &a).unwrap();
        vol.mount(&b).unwrap();
        fs::write(a.join("lease"), "").unwrap();
        let mut holder = Holder::spawn(&a.join("lease"), false);
        assert_eq!(holder.next(), "locked");
        assert_eq!(holder.ask("write"), "ok");
        let f = open_rw(&b.join("lease"));
        assert!(fcntl(&f, FcntlArg::F_SETLK(&wrlock())).is_err());

        net.link(0, false);
        let cut = Instant::now();
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let r = fcntl(&f, FcntlArg::F_SETLKW(&wrlock()));
            let _ = tx.send((r, Instant::now()));
            f
        });
        let w = holder.ask("write");
        eprintln!("cut-off holder's write: {w} after {:?}", cut.elapsed());
        assert!(w.starts_with("error"), "{w}");
        let (r, got) = rx
            .recv_timeout(PING_TIMEOUT * 12)
            .expect("the lock is freed");
        r.unwrap();
        eprintln!("lock taken through b {:?} after the cut", got - cut);
        let _held = waiter.join().unwrap();

        net.link(0, true);
        let back = Instant::now();
        // (Not a stat of `lease`: glusterfs serves it through the holder's
        // open fd, which now fails.)
        while fs::read_dir(&a).is_err() {
            assert!(back.elapsed() < Duration::from_secs(60), "a reconnects");
            sleep(Duration::from_millis(200));
        }
        eprintln!("a back {:?} after the link", back.elapsed());
        let w = holder.ask("write");
        eprintln!("holder's write after reconnect: {w}");
        assert!(w.starts_with("error"), "wrote through a lock it lost: {w}");
        let stat = fs::metadata(a.join("lease")).map(drop);
        eprintln!("stat of the file while the holder keeps its fd: {stat:?}");
        let fresh = File::open(a.join("lease")).map(drop);
        eprintln!("another open through a while the holder keeps its fd: {fresh:?}");
        holder.release();
        fs::metadata(a.join("lease")).expect("stat once the stale fd is closed");
        let f = open_rw(&a.join("lease"));
        let denied = fcntl(&f, FcntlArg::F_SETLK(&wrlock()));
        assert!(
            matches!(denied, Err(Errno::EAGAIN | Errno::EACCES)),
            "b holds it: {denied:?}"
        );
    }
}
