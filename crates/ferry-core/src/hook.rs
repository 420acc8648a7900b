//! The mount-hook runner (DESIGN §6): checks and runs an env's `mnt_start` /
//! `mnt_stop` executable with CBSD's arguments, a clean environment, output
//! appended to the env's hook log, and a timeout that ends the hook's whole
//! process group.
//!
//! No shell is involved anywhere: the hook is executed directly with an argv
//! vector, so no user-controlled string is ever parsed by a shell (I4).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How long a hook may run when `mnt_timeout` is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a timed-out hook's process group has between SIGTERM and SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// The only variable a hook inherits, with a fixed value.
const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Mode of a hook log created by the runner.
const LOG_MODE: u32 = 0o640;
/// Polling interval while waiting for a hook: starts short, grows to a cap.
const POLL_MIN: Duration = Duration::from_millis(10);
const POLL_STEP: Duration = Duration::from_millis(10);
const POLL_MAX: Duration = Duration::from_millis(50);
/// How long to wait for a SIGKILLed process group to disappear before giving
/// up (a process stuck in uninterruptible sleep cannot die; ferry must not
/// hang with it).
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The operation a hook runs for; passed to the hook as `FERRY_PHASE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Create,
    Start,
    Stop,
    Remove,
    MigrateIn,
    MigrateOut,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Create => "create",
            Phase::Start => "start",
            Phase::Stop => "stop",
            Phase::Remove => "remove",
            Phase::MigrateIn => "migrate-in",
            Phase::MigrateOut => "migrate-out",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which hook setting is run; passed to the hook as `FERRY_HOOK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    MntStart,
    MntStop,
}

impl HookKind {
    /// The setting's key, `mnt_start` or `mnt_stop`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::MntStart => "mnt_start",
            HookKind::MntStop => "mnt_stop",
        }
    }
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a hook run needs to know.
#[derive(Debug, Clone)]
pub struct HookRun<'a> {
    pub kind: HookKind,
    pub phase: Phase,
    pub jname: &'a str,
    /// `-d`: the env's data dir (`jails-data/<jname>-data`).
    pub data_dir: &'a Path,
    /// `-f`: the env's fstab dir (`jails-fstab/<jname>`).
    pub fstab_dir: &'a Path,
    /// `-r`: the rcconf dir (`jails-rcconf`).
    pub rcconf_dir: &'a Path,
    /// `-s`: the env's system dir (`jails-system/<jname>`).
    pub system_dir: &'a Path,
    /// This node's name, `FERRY_NODE`.
    pub node: &'a str,
    /// The workdir, `FERRY_WORKDIR` (hooks find their settings under it).
    pub workdir: &'a Path,
    /// The owner lease's epoch, `FERRY_EPOCH`.
    pub epoch: u64,
    /// The env's hook log; created with mode 0640 if missing, never a symlink.
    /// Its directory must exist.
    pub log: &'a Path,
    /// `None`: no limit (`mnt_timeout=0`).
    pub timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL to a timed-out hook's process group.
    pub grace: Duration,
    /// Sets `FERRY_DRY_RUN=1`; what a dry run means is the hook's business.
    pub dry_run: bool,
}

/// A hook that ran and exited with status 0.
#[derive(Debug, Clone)]
pub struct HookOutcome {
    pub elapsed: Duration,
}

/// Why a hook was refused (before running) or failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    // Refusals: the hook was not run. `kind` is `None` when the caller did
    // not say which setting the path came from (`check`).
    #[error("hook setting {0:?} is neither 0 nor an absolute path")]
    NotAbsolute(String),
    #[error("{} {} is missing or cannot be inspected", label(.kind), .path.display())]
    Missing {
        kind: Option<HookKind>,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} {} is not a regular file", label(.kind), .path.display())]
    NotRegularFile {
        kind: Option<HookKind>,
        path: PathBuf,
    },
    #[error("{} {} is owned by uid {uid}, not root; refusing to run it", label(.kind), .path.display())]
    NotRootOwned {
        kind: Option<HookKind>,
        path: PathBuf,
        uid: u32,
    },
    #[error(
        "{} {} is group- or world-writable (mode {mode:04o}); refusing to run it",
        label(.kind), .path.display()
    )]
    Writable {
        kind: Option<HookKind>,
        path: PathBuf,
        mode: u32,
    },
    #[error("{} {} is not executable by its owner", label(.kind), .path.display())]
    NotExecutable {
        kind: Option<HookKind>,
        path: PathBuf,
    },
    #[error(
        "{} {} lies under {}, which is group- or world-writable without the sticky bit \
         (mode {mode:04o}); refusing to run it",
        label(.kind), .path.display(), .dir.display()
    )]
    WritableDir {
        kind: Option<HookKind>,
        path: PathBuf,
        dir: PathBuf,
        mode: u32,
    },

    // Failures: the hook was (or was about to be) run and did not succeed.
    #[error("cannot start {kind} hook {}", .path.display())]
    Spawn {
        kind: HookKind,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the {kind} hook log {}", .path.display())]
    Log {
        kind: HookKind,
        /// The log's path.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot wait for {kind} hook {}", .path.display())]
    Wait {
        kind: HookKind,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{kind} hook {} exited with status {code}; see the hook log", .path.display())]
    Exit {
        kind: HookKind,
        path: PathBuf,
        code: i32,
    },
    #[error("{kind} hook {} was killed by signal {signal}; see the hook log", .path.display())]
    Signal {
        kind: HookKind,
        path: PathBuf,
        signal: i32,
    },
    #[error(
        "{kind} hook {} did not finish within {after:?} and was killed; see the hook log",
        .path.display()
    )]
    Timeout {
        kind: HookKind,
        path: PathBuf,
        after: Duration,
    },
}

fn label(kind: &Option<HookKind>) -> &'static str {
    match kind {
        Some(HookKind::MntStart) => "mnt_start hook",
        Some(HookKind::MntStop) => "mnt_stop hook",
        None => "hook",
    }
}

impl HookError {
    /// Whether the hook was refused before running (bad setting, unsafe file)
    /// rather than run and failed.
    pub fn is_refusal(&self) -> bool {
        match self {
            HookError::NotAbsolute(_)
            | HookError::Missing { .. }
            | HookError::NotRegularFile { .. }
            | HookError::NotRootOwned { .. }
            | HookError::Writable { .. }
            | HookError::NotExecutable { .. }
            | HookError::WritableDir { .. } => true,
            HookError::Spawn { .. }
            | HookError::Log { .. }
            | HookError::Wait { .. }
            | HookError::Exit { .. }
            | HookError::Signal { .. }
            | HookError::Timeout { .. } => false,
        }
    }

    /// Name the setting in a refusal that does not name one yet.
    fn with_kind(mut self, hook_kind: HookKind) -> Self {
        match &mut self {
            HookError::Missing { kind, .. }
            | HookError::NotRegularFile { kind, .. }
            | HookError::NotRootOwned { kind, .. }
            | HookError::Writable { kind, .. }
            | HookError::NotExecutable { kind, .. }
            | HookError::WritableDir { kind, .. } => {
                kind.get_or_insert(hook_kind);
            }
            _ => {}
        }
        self
    }
}

/// Parse a hook setting: "0" or "" => Ok(None); an absolute path =>
/// Ok(Some(path)); anything else => Err(HookError::NotAbsolute).
pub fn parse_setting(value: &str) -> Result<Option<PathBuf>, HookError> {
    match value {
        "" | "0" => Ok(None),
        v if Path::new(v).is_absolute() => Ok(Some(PathBuf::from(v))),
        v => Err(HookError::NotAbsolute(v.to_owned())),
    }
}

/// Check that the hook may be run: an absolute path to a regular file (after
/// following symlinks) owned by root, not group- or world-writable,
/// executable by its owner, and in no directory (on the path as given or on
/// its resolved path) that others could change: group- or world-writable
/// without the sticky bit.
pub fn check(hook: &Path) -> Result<(), HookError> {
    if !hook.is_absolute() {
        return Err(HookError::NotAbsolute(hook.display().to_string()));
    }
    let missing = |source| HookError::Missing {
        kind: None,
        path: hook.to_owned(),
        source,
    };
    let meta = fs::metadata(hook).map_err(missing)?;
    let path = || hook.to_owned();
    if !meta.is_file() {
        return Err(HookError::NotRegularFile {
            kind: None,
            path: path(),
        });
    }
    if meta.uid() != 0 {
        return Err(HookError::NotRootOwned {
            kind: None,
            path: path(),
            uid: meta.uid(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(HookError::Writable {
            kind: None,
            path: path(),
            mode,
        });
    }
    if mode & 0o100 == 0 {
        return Err(HookError::NotExecutable {
            kind: None,
            path: path(),
        });
    }
    let resolved = fs::canonicalize(hook).map_err(missing)?;
    let mut seen: Vec<&Path> = Vec::new();
    for dir in hook.ancestors().skip(1).chain(resolved.ancestors().skip(1)) {
        if seen.contains(&dir) {
            continue;
        }
        seen.push(dir);
        let mode = fs::metadata(dir).map_err(missing)?.mode() & 0o7777;
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(HookError::WritableDir {
                kind: None,
                path: path(),
                dir: dir.to_owned(),
                mode,
            });
        }
    }
    Ok(())
}

/// Like [`check`], naming the setting the path came from in a refusal.
pub fn check_as(kind: HookKind, hook: &Path) -> Result<(), HookError> {
    check(hook).map_err(|e| e.with_kind(kind))
}

/// Check, then run the hook to completion under the timeout.
///
/// The hook gets `-d D -f F -j J -r R -s S`, an environment of `PATH` and the
/// `FERRY_*` variables only, stdin from /dev/null, stdout and stderr appended
/// to the hook log between a header and a footer line, `/` as its working
/// directory (so it never holds a mount busy), and its own process group. On
/// timeout the group gets SIGTERM, and SIGKILL if any of it is still alive
/// after `grace`. A hook that exits on its own is never signalled, and
/// whatever it left running in the background is left alone.
pub fn run(hook: &Path, run: &HookRun<'_>) -> Result<HookOutcome, HookError> {
    check_as(run.kind, hook)?;
    let kind = run.kind;
    let log_err = |source| HookError::Log {
        kind,
        path: run.log.to_owned(),
        source,
    };
    let mut log = open_log(run.log).map_err(log_err)?;
    log.write_all(header(hook, run).as_bytes())
        .map_err(log_err)?;
    let stdout = log.try_clone().map_err(log_err)?;
    let stderr = log.try_clone().map_err(log_err)?;

    let mut cmd = Command::new(hook);
    cmd.arg("-d")
        .arg(run.data_dir)
        .arg("-f")
        .arg(run.fstab_dir)
        .arg("-j")
        .arg(run.jname)
        .arg("-r")
        .arg(run.rcconf_dir)
        .arg("-s")
        .arg(run.system_dir)
        .env_clear()
        .env("PATH", HOOK_PATH)
        .env("FERRY_NODE", run.node)
        .env("FERRY_WORKDIR", run.workdir)
        .env("FERRY_EPOCH", run.epoch.to_string())
        .env("FERRY_PHASE", run.phase.as_str())
        .env("FERRY_JNAME", run.jname)
        .env("FERRY_HOOK", kind.as_str())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    if run.dry_run {
        cmd.env("FERRY_DRY_RUN", "1");
    }

    tracing::debug!(
        hook = %hook.display(), kind = kind.as_str(), phase = run.phase.as_str(),
        jname = run.jname, dry_run = run.dry_run, "running hook"
    );
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|source| {
        footer(&mut log, run.log, &format!("cannot start: {source}"));
        HookError::Spawn {
            kind,
            path: hook.to_owned(),
            source,
        }
    })?;
    let ending = wait(&mut child, run.timeout, run.grace).map_err(|source| {
        footer(&mut log, run.log, &format!("cannot wait: {source}"));
        HookError::Wait {
            kind,
            path: hook.to_owned(),
            source,
        }
    })?;
    let elapsed = started.elapsed();
    let ms = elapsed.as_millis();
    let path = hook.to_owned();
    match ending {
        Ending::Exited(status) => match (status.code(), status.signal()) {
            (Some(0), _) => {
                footer(&mut log, run.log, &format!("exit 0 after {ms} ms"));
                tracing::debug!(hook = %hook.display(), elapsed_ms = ms as u64, "hook finished");
                Ok(HookOutcome { elapsed })
            }
            (Some(code), _) => {
                footer(&mut log, run.log, &format!("exit {code} after {ms} ms"));
                Err(HookError::Exit { kind, path, code })
            }
            (None, signal) => {
                let signal = signal.unwrap_or(0);
                footer(
                    &mut log,
                    run.log,
                    &format!("exit signal {signal} after {ms} ms"),
                );
                Err(HookError::Signal { kind, path, signal })
            }
        },
        Ending::TimedOut { after, killed } => {
            let how = match killed {
                Some(grace) => format!("SIGTERM, then SIGKILL after {} ms", grace.as_millis()),
                None => "SIGTERM".to_owned(),
            };
            let line = format!("killed by timeout after {} ms ({how})", after.as_millis());
            footer(&mut log, run.log, &line);
            Err(HookError::Timeout { kind, path, after })
        }
    }
}

/// Open the hook log for appending; create it 0640 if missing; refuse a
/// symlink (the log lives on shared storage).
fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(LOG_MODE)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)
}

fn header(hook: &Path, run: &HookRun<'_>) -> String {
    format!(
        "--- {} {} phase={} jname={} node={} epoch={}{} {}\n",
        crate::sys::utc_timestamp(SystemTime::now()),
        run.kind,
        run.phase,
        run.jname,
        run.node,
        run.epoch,
        if run.dry_run { " dry-run" } else { "" },
        hook.display()
    )
}

/// Append the footer line. The hook's result matters more than the log's, so
/// a failure here is reported in ferry's own log, not returned.
fn footer(log: &mut File, path: &Path, text: &str) {
    if let Err(e) = log.write_all(format!("--- {text}\n").as_bytes()) {
        tracing::warn!(log = %path.display(), error = %e, "cannot write the hook log footer");
    }
}

/// How a hook's run ended.
enum Ending {
    /// The hook exited (or was killed by someone else) within the limit.
    Exited(ExitStatus),
    /// The limit passed; the group got SIGTERM and, when `killed` says after
    /// which grace, SIGKILL.
    TimedOut {
        after: Duration,
        killed: Option<Duration>,
    },
}

/// Wait for the hook under the timeout, ending its process group if it runs
/// over.
fn wait(child: &mut Child, timeout: Option<Duration>, grace: Duration) -> io::Result<Ending> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut pause = POLL_MIN;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Ending::Exited(status));
        }
        let nap = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => pause.min(left),
                _ => break,
            },
            None => pause,
        };
        sleep(nap);
        pause = (pause + POLL_STEP).min(POLL_MAX);
    }

    // Timed out. The leader is not reaped until the group is gone, so its pid
    // stays reserved as the group id and the signals cannot reach a stranger.
    // pid_max is at most 2^22: a pid always fits.
    let pgid = Pid::from_raw(child.id() as i32);
    signal_group(pgid, Signal::SIGTERM);
    let mut killed = None;
    if !wait_group_gone(pgid, grace) {
        signal_group(pgid, Signal::SIGKILL);
        killed = Some(grace);
        if !wait_group_gone(pgid, KILL_WAIT) {
            tracing::warn!(
                pgid = pgid.as_raw(),
                "hook process group is still alive after SIGKILL; leaving it"
            );
        }
    }
    // The leader is normally a zombie by now. If it is stuck (uninterruptible
    // sleep), do not hang with it: leave it unreaped.
    if child.try_wait()?.is_none() {
        tracing::warn!(pid = pgid.as_raw(), "timed-out hook could not be reaped");
    }
    Ok(Ending::TimedOut {
        after: timeout.unwrap_or_default(),
        killed,
    })
}

fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid = pgid.as_raw(), %signal, error = %e, "cannot signal hook"),
    }
}

/// Wait up to `limit` for every process of the group to exit (zombies count
/// as gone). Returns whether they did.
fn wait_group_gone(pgid: Pid, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    let mut pause = POLL_MIN;
    loop {
        if !group_alive(pgid) {
            return true;
        }
        match until.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => sleep(pause.min(left)),
            _ => return false,
        }
        pause = (pause + POLL_STEP).min(POLL_MAX);
    }
}

/// Whether any live (not zombie) process is in the process group. `kill(-pgid,
/// 0)` cannot tell, since the unreaped leader counts; so read /proc. When
/// /proc cannot be read, say "alive": the caller then waits and SIGKILLs.
fn group_alive(pgid: Pid) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return true;
    };
    let want = pgid.as_raw();
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            return false;
        };
        // A process that vanished between listing and reading is gone.
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        crate::sys::parse_proc_stat(&stat).is_some_and(|p| p.pgrp == want && p.is_live())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Dirs and a log for a hook run, in a root-owned 0700 tempdir.
    struct Fixture {
        dir: tempfile::TempDir,
        data: PathBuf,
        fstab: PathBuf,
        rcconf: PathBuf,
        system: PathBuf,
        log: PathBuf,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let sub = |name: &str| {
                let p = dir.path().join(name);
                fs::create_dir(&p).expect("mkdir");
                p
            };
            let (data, fstab, rcconf, system) =
                (sub("data"), sub("fstab"), sub("rcconf"), sub("system"));
            let log = system.join("hook.log");
            Fixture {
                dir,
                data,
                fstab,
                rcconf,
                system,
                log,
            }
        }

        /// Write an sh script hook with mode 0755.
        fn hook(&self, name: &str, body: &str) -> PathBuf {
            write_hook(&self.dir.path().join(name), body)
        }

        fn req(&self) -> HookRun<'_> {
            HookRun {
                kind: HookKind::MntStart,
                phase: Phase::Start,
                jname: "j1",
                data_dir: &self.data,
                fstab_dir: &self.fstab,
                rcconf_dir: &self.rcconf,
                system_dir: &self.system,
                node: "n1",
                workdir: Path::new("/usr/jails"),
                epoch: 3,
                log: &self.log,
                timeout: Some(Duration::from_secs(10)),
                grace: Duration::from_millis(500),
                dry_run: false,
            }
        }

        fn log_text(&self) -> String {
            fs::read_to_string(&self.log).expect("read log")
        }

        /// A file in the data dir, where the test hooks write what they saw.
        fn data_file(&self, name: &str) -> String {
            fs::read_to_string(self.data.join(name)).expect("read data file")
        }

        fn pid_in(&self, name: &str) -> i32 {
            self.data_file(name).trim().parse().expect("pid")
        }
    }

    fn write_hook(path: &Path, body: &str) -> PathBuf {
        fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write hook");
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod");
        path.to_owned()
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// Alive and not a zombie (PID 1 here may not reap orphans).
    fn alive(pid: i32) -> bool {
        crate::sys::proc_stat(pid).is_some_and(|p| p.is_live())
    }

    fn kill_stray(pid: i32) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    }

    #[test]
    fn passes_cbsd_arguments_exactly() {
        let fx = Fixture::new();
        let hook = fx.hook(
            "h",
            r#"for a in "$@"; do printf '%s\n' "$a"; done > "$2/args""#,
        );
        run(&hook, &fx.req()).expect("hook runs");
        let want = [
            "-d",
            fx.data.to_str().expect("utf8"),
            "-f",
            fx.fstab.to_str().expect("utf8"),
            "-j",
            "j1",
            "-r",
            fx.rcconf.to_str().expect("utf8"),
            "-s",
            fx.system.to_str().expect("utf8"),
        ];
        assert_eq!(fx.data_file("args").lines().collect::<Vec<_>>(), want);
    }

    #[test]
    fn arguments_are_never_shell_parsed() {
        let fx = Fixture::new();
        let hook = fx.hook("h", r#"printf '%s' "$6" > "$2/jname""#);
        let mut req = fx.req();
        let evil = "j; touch /tmp/ferry-hook-pwned $(id)";
        req.jname = evil;
        run(&hook, &req).expect("hook runs");
        assert_eq!(fx.data_file("jname"), evil);
    }

    #[test]
    fn environment_is_clean_apart_from_path_and_ferry_vars() {
        let fx = Fixture::new();
        let hook = fx.hook("h", r#"env > "$2/env""#);
        run(&hook, &fx.req()).expect("hook runs");
        let env = fx.data_file("env");
        let vars: Vec<(&str, &str)> = env.lines().filter_map(|l| l.split_once('=')).collect();
        let get = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        assert_eq!(get("PATH"), Some(HOOK_PATH));
        assert_eq!(get("FERRY_NODE"), Some("n1"));
        assert_eq!(get("FERRY_EPOCH"), Some("3"));
        assert_eq!(get("FERRY_PHASE"), Some("start"));
        assert_eq!(get("FERRY_JNAME"), Some("j1"));
        assert_eq!(get("FERRY_HOOK"), Some("mnt_start"));
        assert_eq!(get("FERRY_DRY_RUN"), None);
        // Only what sh itself adds may appear beside ours.
        for (name, _) in &vars {
            assert!(
                name.starts_with("FERRY_")
                    || ["PATH", "PWD", "OLDPWD", "SHLVL", "_"].contains(name),
                "unexpected variable {name} in hook env"
            );
        }
        // The parent has variables of its own (cargo sets some); none leaked.
        for (name, _) in std::env::vars() {
            if name != "PATH" && name != "PWD" && !name.starts_with("FERRY_") {
                assert_eq!(get(&name), None, "{name} leaked into the hook env");
            }
        }
        assert_eq!(get("PWD"), Some("/"));
    }

    #[test]
    fn dry_run_and_phase_and_kind_reach_the_hook() {
        let fx = Fixture::new();
        let hook = fx.hook(
            "h",
            r#"echo "$FERRY_DRY_RUN $FERRY_PHASE $FERRY_HOOK" > "$2/seen""#,
        );
        let mut req = fx.req();
        req.dry_run = true;
        req.phase = Phase::MigrateOut;
        req.kind = HookKind::MntStop;
        run(&hook, &req).expect("hook runs");
        assert_eq!(fx.data_file("seen"), "1 migrate-out mnt_stop\n");
        assert!(fx.log_text().contains(" dry-run "));
    }

    #[test]
    fn stdin_is_dev_null() {
        let fx = Fixture::new();
        let hook = fx.hook(
            "h",
            r#"cat > "$2/stdin"; readlink /proc/self/fd/0 >> "$2/stdin""#,
        );
        run(&hook, &fx.req()).expect("hook runs");
        assert_eq!(fx.data_file("stdin"), "/dev/null\n");
    }

    #[test]
    fn output_lands_in_the_log_between_header_and_footer() {
        let fx = Fixture::new();
        let hook = fx.hook("h", "echo to-stdout; echo to-stderr >&2");
        let outcome = run(&hook, &fx.req()).expect("hook runs");
        assert!(outcome.elapsed < Duration::from_secs(5));
        let mode = fs::metadata(&fx.log).expect("log").mode() & 0o777;
        assert_eq!(mode, LOG_MODE);
        let text = fx.log_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        let head = lines[0];
        assert!(
            head.starts_with("--- 20") && head.as_bytes()[23] == b'Z',
            "{head}"
        );
        let want = format!(
            " mnt_start phase=start jname=j1 node=n1 epoch=3 {}",
            hook.display()
        );
        assert!(head.ends_with(&want), "{head}");
        assert_eq!(&lines[1..3], ["to-stdout", "to-stderr"]);
        assert!(lines[3].starts_with("--- exit 0 after ") && lines[3].ends_with(" ms"));

        // A second run appends.
        run(&hook, &fx.req()).expect("hook runs");
        assert_eq!(fx.log_text().lines().count(), 8);
    }

    #[test]
    fn log_that_is_a_symlink_is_not_followed() {
        let fx = Fixture::new();
        let target = fx.dir.path().join("elsewhere");
        std::os::unix::fs::symlink(&target, &fx.log).expect("symlink");
        let hook = fx.hook("h", r#"touch "$2/ran""#);
        let err = run(&hook, &fx.req()).expect_err("refused log");
        assert!(matches!(err, HookError::Log { .. }), "{err:?}");
        assert!(!err.is_refusal());
        assert!(!target.exists());
        assert!(
            !fx.data.join("ran").exists(),
            "hook must not run without its log"
        );
    }

    #[test]
    fn nonzero_exit_is_a_failure() {
        let fx = Fixture::new();
        let hook = fx.hook("h", "exit 3");
        let err = run(&hook, &fx.req()).expect_err("exit 3");
        assert!(
            matches!(
                err,
                HookError::Exit {
                    code: 3,
                    kind: HookKind::MntStart,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!err.is_refusal());
        let msg = err.to_string();
        assert_eq!(
            msg,
            format!(
                "mnt_start hook {} exited with status 3; see the hook log",
                hook.display()
            )
        );
        assert!(fx
            .log_text()
            .lines()
            .last()
            .expect("footer")
            .starts_with("--- exit 3 after "));
    }

    #[test]
    fn death_by_signal_is_a_failure() {
        let fx = Fixture::new();
        let hook = fx.hook("h", "kill -9 $$");
        let err = run(&hook, &fx.req()).expect_err("signal");
        assert!(
            matches!(err, HookError::Signal { signal: 9, .. }),
            "{err:?}"
        );
        assert!(fx
            .log_text()
            .lines()
            .last()
            .expect("footer")
            .starts_with("--- exit signal 9 "));
    }

    #[test]
    fn timeout_ends_the_whole_group_with_sigterm() {
        let fx = Fixture::new();
        let hook = fx.hook("h", r#"sleep 1000 & echo $! > "$2/bg"; sleep 1000"#);
        let mut req = fx.req();
        req.timeout = Some(Duration::from_millis(300));
        req.grace = Duration::from_secs(2);
        let t0 = Instant::now();
        let err = run(&hook, &req).expect_err("timeout");
        let took = t0.elapsed();
        let bg = fx.pid_in("bg");
        let bg_alive = alive(bg);
        kill_stray(bg);
        assert!(
            matches!(err, HookError::Timeout { after, .. } if after == Duration::from_millis(300)),
            "{err:?}"
        );
        assert!(!bg_alive, "background child {bg} survived the timeout");
        // sh and sleep die on SIGTERM: no need to sit out the grace.
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_millis(300 + 1500), "{took:?}");
        let footer = fx.log_text().lines().last().expect("footer").to_owned();
        assert_eq!(footer, "--- killed by timeout after 300 ms (SIGTERM)");
    }

    #[test]
    fn timeout_sigkills_a_group_that_ignores_sigterm() {
        let fx = Fixture::new();
        let hook = fx.hook(
            "h",
            r#"trap '' TERM; sleep 1000 & echo $! > "$2/bg"; sleep 1000"#,
        );
        let mut req = fx.req();
        req.timeout = Some(Duration::from_millis(300));
        req.grace = Duration::from_millis(500);
        let t0 = Instant::now();
        let err = run(&hook, &req).expect_err("timeout");
        let took = t0.elapsed();
        let bg = fx.pid_in("bg");
        let bg_alive = alive(bg);
        kill_stray(bg);
        assert!(matches!(err, HookError::Timeout { .. }), "{err:?}");
        assert!(!bg_alive, "background child {bg} survived SIGKILL");
        assert!(took >= Duration::from_millis(800), "{took:?}");
        assert!(took < Duration::from_millis(800 + 1500), "{took:?}");
        let footer = fx.log_text().lines().last().expect("footer").to_owned();
        assert_eq!(
            footer,
            "--- killed by timeout after 300 ms (SIGTERM, then SIGKILL after 500 ms)"
        );
    }

    #[test]
    fn no_timeout_means_no_limit() {
        let fx = Fixture::new();
        let hook = fx.hook("h", "sleep 0.3");
        let mut req = fx.req();
        req.timeout = None;
        let outcome = run(&hook, &req).expect("hook runs");
        assert!(outcome.elapsed >= Duration::from_millis(300));
    }

    #[test]
    fn background_process_of_a_successful_hook_is_left_alone() {
        let fx = Fixture::new();
        let hook = fx.hook(
            "h",
            r#"sleep 2 >/dev/null 2>&1 & echo $! > "$2/bg"; exit 0"#,
        );
        let mut req = fx.req();
        req.timeout = Some(Duration::from_secs(1));
        run(&hook, &req).expect("hook runs");
        let bg = fx.pid_in("bg");
        let bg_alive = alive(bg);
        kill_stray(bg);
        assert!(
            bg_alive,
            "background child {bg} of a successful hook was killed"
        );
    }

    #[test]
    fn refuses_group_and_world_writable_hooks() {
        let fx = Fixture::new();
        for mode in [0o757, 0o777, 0o775, 0o775 | 0o1000] {
            let hook = fx.hook("h", "exit 0");
            chmod(&hook, mode);
            let err = run(&hook, &fx.req()).expect_err("writable");
            assert!(
                matches!(err, HookError::Writable { mode: m, .. } if m == mode),
                "{err:?}"
            );
            assert!(err.is_refusal());
            assert!(err.to_string().starts_with("mnt_start hook "), "{err}");
        }
        assert!(!fx.log.exists(), "a refused hook leaves no log entry");
    }

    #[test]
    fn refuses_hooks_not_owned_by_root() {
        let fx = Fixture::new();
        let hook = fx.hook("h", "exit 0");
        std::os::unix::fs::chown(&hook, Some(65534), Some(65534)).expect("chown");
        chmod(&hook, 0o755);
        let err = check(&hook).expect_err("not root");
        assert!(
            matches!(
                err,
                HookError::NotRootOwned {
                    uid: 65534,
                    kind: None,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.is_refusal());
        assert!(err.to_string().starts_with("hook "), "{err}");
    }

    #[test]
    fn refuses_non_executable_missing_and_non_regular_hooks() {
        let fx = Fixture::new();
        let hook = fx.hook("h", "exit 0");
        chmod(&hook, 0o644);
        let err = check(&hook).expect_err("not executable");
        assert!(matches!(err, HookError::NotExecutable { .. }), "{err:?}");

        let err = check(&fx.dir.path().join("absent")).expect_err("missing");
        assert!(matches!(err, HookError::Missing { .. }), "{err:?}");
        assert!(err.is_refusal());

        let err = check(fx.dir.path()).expect_err("directory");
        assert!(matches!(err, HookError::NotRegularFile { .. }), "{err:?}");

        let err = check(Path::new("relative/hook")).expect_err("relative");
        assert!(matches!(err, HookError::NotAbsolute(_)), "{err:?}");
    }

    #[test]
    fn symlinks_are_judged_by_their_target() {
        let fx = Fixture::new();
        let target = fx.hook("real", "exit 0");
        let link = fx.dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        check(&link).expect("root-owned target is fine");
        chmod(&target, 0o777);
        let err = check(&link).expect_err("writable target");
        assert!(matches!(err, HookError::Writable { .. }), "{err:?}");
    }

    #[test]
    fn refuses_hook_in_a_world_writable_directory_without_sticky_bit() {
        let fx = Fixture::new();
        let open = fx.dir.path().join("open");
        fs::create_dir(&open).expect("mkdir");
        let hook = write_hook(&open.join("h"), "exit 0");
        chmod(&open, 0o777);
        let err = run(&hook, &fx.req()).expect_err("writable dir");
        assert!(
            matches!(&err, HookError::WritableDir { dir, mode: 0o777, kind: Some(HookKind::MntStart), .. } if *dir == open),
            "{err:?}"
        );
        assert!(err.is_refusal());

        // A sticky dir (like /tmp) is fine: others cannot replace root's file.
        chmod(&open, 0o1777);
        check(&hook).expect("sticky dir is fine");

        // A link in a safe dir does not launder a target in an unsafe one.
        chmod(&open, 0o777);
        let link = fx.dir.path().join("link");
        std::os::unix::fs::symlink(&hook, &link).expect("symlink");
        let err = check(&link).expect_err("target dir writable");
        assert!(matches!(err, HookError::WritableDir { .. }), "{err:?}");
    }

    #[test]
    fn missing_interpreter_is_a_spawn_failure() {
        let fx = Fixture::new();
        let hook = fx.dir.path().join("h");
        fs::write(&hook, "#!/nonexistent/interpreter\n").expect("write");
        chmod(&hook, 0o755);
        let err = run(&hook, &fx.req()).expect_err("spawn");
        assert!(matches!(err, HookError::Spawn { .. }), "{err:?}");
        assert!(!err.is_refusal());
        assert!(fx
            .log_text()
            .lines()
            .last()
            .expect("footer")
            .starts_with("--- cannot start: "));
    }

    #[test]
    fn parses_settings() {
        assert_eq!(parse_setting("0").expect("0"), None);
        assert_eq!(parse_setting("").expect("empty"), None);
        assert_eq!(
            parse_setting("/usr/local/libexec/ferry/nfs").expect("abs"),
            Some(PathBuf::from("/usr/local/libexec/ferry/nfs"))
        );
        for bad in ["hook", "./hook", "bin/hook", " /hook", "00"] {
            let err = parse_setting(bad).expect_err(bad);
            assert!(
                matches!(err, HookError::NotAbsolute(ref v) if v == bad),
                "{err:?}"
            );
            assert!(err.is_refusal());
        }
    }

    #[test]
    fn names_and_display() {
        let all = [
            (Phase::Create, "create"),
            (Phase::Start, "start"),
            (Phase::Stop, "stop"),
            (Phase::Remove, "remove"),
            (Phase::MigrateIn, "migrate-in"),
            (Phase::MigrateOut, "migrate-out"),
        ];
        for (phase, s) in all {
            assert_eq!(phase.as_str(), s);
            assert_eq!(phase.to_string(), s);
        }
        assert_eq!(HookKind::MntStart.to_string(), "mnt_start");
        assert_eq!(HookKind::MntStop.as_str(), "mnt_stop");
    }
}
