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

use nix::fcntl::OFlag;

use crate::process::{GroupEnd, ProcessGroup};

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

/// The operation a hook runs for; passed to the hook as `FERRY_PHASE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Create,
    Start,
    Stop,
    Remove,
    MigrateIn,
    MigrateOut,
    /// A clone hook (`clone-local.d`), for the env being made.
    Clone,
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
            Phase::Clone => "clone",
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
    /// An executable of `clone-local.d` (CBSD's custom clone).
    Clone,
}

impl HookKind {
    /// The setting's key, `mnt_start` or `mnt_stop`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::MntStart => "mnt_start",
            HookKind::MntStop => "mnt_stop",
            HookKind::Clone => "clone",
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
        Some(HookKind::Clone) => "clone hook",
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
    run_with_env(hook, run, &[])
}

/// [`run`], with these variables added to the hook's environment.
pub fn run_with_env(
    hook: &Path,
    run: &HookRun<'_>,
    env: &[(&str, String)],
) -> Result<HookOutcome, HookError> {
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
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
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
    let group = ProcessGroup(child.id() as i32);
    let killed = match group.terminate(grace) {
        GroupEnd::Terminated => None,
        GroupEnd::Killed => Some(grace),
        GroupEnd::Stuck => {
            tracing::warn!(
                pgid = group.0,
                "hook process group is still alive after SIGKILL; leaving it"
            );
            Some(grace)
        }
    };
    // The leader is normally a zombie by now. If it is stuck (uninterruptible
    // sleep), do not hang with it: leave it unreaped.
    if child.try_wait()?.is_none() {
        tracing::warn!(pid = group.0, "timed-out hook could not be reaped");
    }
    Ok(Ending::TimedOut {
        after: timeout.unwrap_or_default(),
        killed,
    })
}

#[cfg(test)]
mod tests;
