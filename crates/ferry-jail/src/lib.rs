//! ferry's jail engine: a jail is an OCI bundle run by runc. Its root is a
//! local base mounted read-only with the jail's own dirs bound over it from
//! its data dir on shared storage (`baserw=0`), or its data dir itself
//! (`baserw=1`). Every lifecycle decision goes through
//! [`ferry_core::model::check`]; every step that leaves something behind is
//! recorded first in the local runtime record, so a crash is undone by the
//! next start, stop or remove.

pub mod config;
mod error;
pub mod fstab;
pub mod pkg;
pub mod profile;
pub mod runc;
pub mod spec;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use ferry_core::base::{self, WRITABLE_DIRS};
use ferry_core::engine::{self, Backend, EnvConfig, StartOptions};
use ferry_core::envdef::Hooks;
use ferry_core::envfs;
use ferry_core::model::{self, Action, Columns};
use ferry_core::net::Attachment;
use ferry_core::process::{Process, KILL_WAIT};
use ferry_core::registry::{EnvRow, Registry};
use ferry_core::workdir::fnv1a;
use ferry_core::{atomic, EnvKind, EnvState, Error, Jname, Result, Workdir};
use serde_json::{json, Value};

pub use config::JailConfig;
pub use error::JailError;
use ferry_core::runtime::{self, NetRecord, Runtime};
use fstab::{FstabEntry, MountKind};
use runc::Runc;

/// The jail engine: its lifecycle is [`ferry_core::engine`]'s, with these
/// steps.
#[derive(Debug, Clone, Copy)]
pub struct Jails;

/// The jail engine, for an [`ferry_core::engine::EngineSet`].
pub static JAILS: Jails = Jails;

impl EnvConfig for JailConfig {
    fn from_definition(
        def: &ferry_core::rcconf::Definition,
        wd: &Workdir,
        path: &std::path::Path,
    ) -> Result<JailConfig> {
        JailConfig::from_definition(def, wd, path)
    }
    fn hooks(&self) -> &Hooks {
        &self.hooks
    }
    fn stop_timeout(&self) -> Duration {
        JailConfig::stop_timeout(self)
    }
}

/// The columns of `jls`: what it shows by default, and every column it
/// can show (CBSD's names; a VM's columns read `-` for a jail).
pub const COLUMNS: Columns = Columns {
    default: &[
        "jname",
        "jid",
        "ip4_addr",
        "host_hostname",
        "base",
        "astart",
        "status",
    ],
    more: &[
        "node",
        "nodename",
        "path",
        "vm_ram",
        "vm_cpus",
        "vm_os_type",
        "vnc_port",
    ],
};

impl Backend for Jails {
    type Config = JailConfig;
    const KIND: EnvKind = EnvKind::Jail;
    const STOP_TIMEOUT: Duration = Duration::from_secs(10);
    /// The container's UTS namespace, network and process are made at
    /// start.
    const RESTART_KEYS: &'static [&'static str] = &[
        "host_hostname",
        "ip4_addr",
        "interface",
        "defaultrouter",
        "exec_start",
    ];

    fn row(&self, wd: &Workdir, cfg: &JailConfig) -> Result<EnvRow> {
        if !cfg.args.baserw && !base::exists(wd, &cfg.args.base) {
            return Err(JailError::BaseMissing {
                jname: cfg.jname().clone(),
                base: cfg.args.base.to_string(),
            }
            .into());
        }
        Ok(row(cfg))
    }

    fn check_start(
        &self,
        wd: &Workdir,
        _: &Registry,
        cfg: &JailConfig,
        opts: &StartOptions,
    ) -> Result<()> {
        if opts.checkpoint.is_some() {
            return Err(JailError::NoCheckpoints(cfg.jname().clone()).into());
        }
        if !cfg.args.baserw && !base::exists(wd, &cfg.args.base) {
            return Err(Error::BaseNotFound(cfg.args.base.to_string()));
        }
        Ok(())
    }

    fn record(&self, wd: &Workdir, _: &Registry, cfg: &JailConfig, epoch: u64) -> Result<Runtime> {
        let j = cfg.jname();
        let net = (!cfg.args.ip4_addr.0.is_empty()).then(|| {
            let tag = wd.pool_tag();
            NetRecord {
                netns: format!("ferry-{tag}-{j}"),
                host_if: format!("fy{:08x}", fnv1a(format!("{tag}/{j}").as_bytes()) as u32),
                bridge: cfg.args.interface.0.clone(),
            }
        });
        Ok(Runtime {
            net,
            ..Runtime::starting(epoch)
        })
    }

    fn launch(
        &self,
        wd: &Workdir,
        cfg: &JailConfig,
        rt: &Runtime,
        _: &StartOptions,
    ) -> Result<Process> {
        launch(wd, cfg, rt)
    }

    /// SIGTERM to the jail's init (through a pidfd: no runc process, no
    /// pid-reuse race; runc is the fallback), SIGKILL to all of it after
    /// `timeout`.
    fn halt(&self, wd: &Workdir, j: &Jname, rt: &Runtime, timeout: Duration) -> Result<()> {
        let runc = Runc::new(wd);
        let init = init_of(rt);
        if !init.signal(nix::sys::signal::Signal::SIGTERM) {
            let _ = runc.kill(j, "TERM");
        }
        if init.wait_gone(timeout) {
            return Ok(());
        }
        self.kill(wd, j, rt)
    }

    fn kill(&self, wd: &Workdir, j: &Jname, rt: &Runtime) -> Result<()> {
        let init = init_of(rt);
        let _ = Runc::new(wd).kill(j, "KILL");
        if init.kill() || init.wait_gone(KILL_WAIT) {
            Ok(())
        } else {
            Err(JailError::Unkillable {
                jname: j.clone(),
                pid: init.pid,
            }
            .into())
        }
    }

    /// The container, its network; the mounts are `mnt_stop`'s.
    fn release(&self, wd: &Workdir, j: &Jname, rt: &Runtime) -> Result<()> {
        Runc::new(wd).delete(j)?;
        if let Some(net) = &rt.net {
            net.attachment().down()?;
        }
        Ok(())
    }

    fn columns(&self) -> Columns {
        COLUMNS
    }

    fn describe(&self, wd: &Workdir, row: &EnvRow) -> Result<Value> {
        let (state, rt) = runtime::state(wd, &row.jname)?;
        let jid = match state {
            EnvState::Running => rt.and_then(|r| r.pid).map_or(Value::Null, Value::from),
            _ => Value::Null,
        };
        Ok(json!({
            "jname": row.jname,
            "jid": jid,
            "ip4_addr": row.ip4_addr,
            "host_hostname": row.host_hostname,
            "base": row.base,
            "astart": row.astart,
            "status": state.display(),
            "node": wd.nodename(),
            "nodename": wd.nodename(),
            "path": wd.data_dir(&row.jname),
            "vm_ram": null,
            "vm_cpus": null,
            "vm_os_type": null,
            "vnc_port": null,
        }))
    }
}

/// The jail's init, as its record names it.
fn init_of(rt: &Runtime) -> Process {
    Process {
        pid: rt.pid.unwrap_or(0),
        start: rt.starttime.unwrap_or(0),
    }
}

/// Create a jail on this node (and start it when `runasap=1`).
pub fn create(wd: &Workdir, reg: &Registry, cfg: &JailConfig) -> Result<()> {
    if !base::exists(wd, &cfg.args.base) {
        return Err(Error::BaseNotFound(cfg.args.base.to_string()));
    }
    let pkgs = pkg::names(cfg.args.pkglist.as_deref().unwrap_or(""))?;
    if !pkgs.is_empty() {
        let base = cfg.args.base.to_string();
        if !pkg::has_package_manager(&wd.base_dir(&cfg.args.base)) {
            return Err(JailError::NoPackages {
                pkgs: pkgs.join(" "),
                why: format!(
                    "base {base} has no package manager (no /usr/bin/apt-get and dpkg); pkglist \
                     needs a Debian base (`ferry base mode=create from=dir path=<a debootstrap or \
                     mmdebstrap tree>`)"
                ),
            }
            .into());
        }
        // Checked before anything is made.
        pkg::Mirror::of(wd)?;
    }
    let def = config::to_definition(&cfg.args, wd.root())?;
    envfs::create(wd, reg, &row(cfg), &cfg.hooks, &def, || {
        populate(wd, cfg)?;
        if pkgs.is_empty() {
            return Ok(());
        }
        pkg::install(wd, cfg, &pkgs)
    })?;
    if cfg.args.runasap {
        engine::start(&JAILS, wd, reg, cfg.jname(), &StartOptions::default())?;
    }
    Ok(())
}

/// The registry row of a jail.
pub fn row(cfg: &JailConfig) -> EnvRow {
    EnvRow {
        jname: cfg.jname().clone(),
        kind: EnvKind::Jail,
        base: Some(cfg.args.base.to_string()),
        host_hostname: cfg.host_hostname().to_owned(),
        ip4_addr: cfg.args.ip4_addr.render(),
        astart: cfg.args.astart,
    }
}

/// Clone the stopped jail `old` (owned here) into `new`: host name `new`
/// unless given, the old addresses unless given (two jails with one
/// address cannot run at once on one bridge).
pub fn clone(
    wd: &Workdir,
    reg: &Registry,
    old: &Jname,
    new: &Jname,
    host_hostname: Option<String>,
    ip4_addr: Option<ferry_api::args::Ip4List>,
) -> Result<()> {
    let mut args = JAILS.load(wd, old)?.args;
    args.jname = new.clone();
    args.host_hostname = Some(host_hostname.unwrap_or_else(|| new.to_string()));
    if let Some(ip) = ip4_addr {
        args.ip4_addr = ip;
    }
    let def = config::to_definition(&args, wd.root())?;
    let cfg = JailConfig::from_definition(&def, wd, &wd.registered_rcconf(new))?;
    let row = JAILS.row(wd, &cfg)?;
    ferry_core::clone::clone(wd, reg, old, &row, &cfg.hooks, &def)
}

/// Fill a new jail's data dir from its base.
fn populate(wd: &Workdir, cfg: &JailConfig) -> Result<()> {
    let j = cfg.jname();
    let base = wd.base_dir(&cfg.args.base);
    let data = wd.data_dir(j);
    if cfg.args.baserw {
        base::copy_tree(&base, &data)?;
    } else {
        for d in WRITABLE_DIRS {
            let (src, dst) = (base.join(d), data.join(d));
            fs::create_dir_all(&dst).map_err(Error::io("cannot create", &dst))?;
            if matches!(d, "etc" | "var") && src.is_dir() {
                base::copy_tree(&src, &dst)?;
            }
        }
        let modes = [("root", 0o700), ("tmp", 0o1777)];
        for (d, mode) in modes {
            let p = data.join(d);
            fs::set_permissions(&p, fs::Permissions::from_mode(mode))
                .map_err(Error::io("cannot set mode", &p))?;
        }
    }
    let etc = data.join("etc");
    fs::create_dir_all(&etc).map_err(Error::io("cannot create", &etc))?;
    let hostname = etc.join("hostname");
    atomic::write_atomic(
        &hostname,
        format!("{}\n", cfg.host_hostname()).as_bytes(),
        0o644,
    )
    .map_err(Error::io("cannot write", &hostname))?;
    let fstab = wd.fstab_file(j);
    if !fstab.exists() {
        let text =
            "# Extra mounts of this jail: source target type options (nullfs, bind or tmpfs)\n";
        atomic::write_atomic(&fstab, text.as_bytes(), 0o644)
            .map_err(Error::io("cannot write", &fstab))?;
    }
    Ok(())
}

/// Set up network and bundle and run the container; undo all of it on failure.
fn launch(wd: &Workdir, cfg: &JailConfig, rt: &Runtime) -> Result<Process> {
    let r = try_launch(wd, cfg, rt);
    if r.is_err() {
        let j = cfg.jname();
        let _ = Runc::new(wd).delete(j);
        if let Some(net) = &rt.net {
            let _ = net.attachment().down();
        }
    }
    r
}

fn try_launch(wd: &Workdir, cfg: &JailConfig, rt: &Runtime) -> Result<Process> {
    let j = cfg.jname();
    let fstab = read_fstab(wd, cfg)?;
    ensure_own_dirs(wd, cfg)?;
    prepare_mount_points(wd, cfg, &fstab)?;
    let netns = match &rt.net {
        Some(n) => {
            let att = Attachment {
                addrs: cfg
                    .args
                    .ip4_addr
                    .0
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                gateway: cfg.args.defaultrouter,
                ..n.attachment()
            };
            att.up()?;
            Some(att.netns_path())
        }
        None => None,
    };
    let spec = spec::build(&spec::SpecInput {
        wd,
        cfg,
        fstab: &fstab,
        netns,
    })?;
    let bundle = wd.runtime_dir(j);
    let config = bundle.join("config.json");
    let json = serde_json::to_vec_pretty(&spec).map_err(JailError::Spec)?;
    // Local and rebuilt on every start: atomic, no need to force it to disk.
    atomic::replace(&config, &json, 0o600).map_err(Error::io("cannot write", &config))?;
    let runc = Runc::new(wd);
    runc.delete(j)?;
    let pid_file = bundle.join("pid");
    let console = wd.system_dir(j).join("console.log");
    runc.run_detached(j, &bundle, &pid_file, &console)?;
    let pid: i32 = fs::read_to_string(&pid_file)
        .map_err(Error::io("cannot read", &pid_file))?
        .trim()
        .parse()
        .map_err(|_| JailError::NoPid(pid_file.clone()))?;
    Process::of(pid).ok_or_else(|| {
        JailError::ExitedAtOnce {
            jname: j.clone(),
            console: console.clone(),
        }
        .into()
    })
}

/// The dirs bound over the base must exist, also when a hook has just
/// mounted fresh (empty) storage on the data dir.
fn ensure_own_dirs(wd: &Workdir, cfg: &JailConfig) -> Result<()> {
    if cfg.args.baserw {
        return Ok(());
    }
    let data = wd.data_dir(cfg.jname());
    for d in WRITABLE_DIRS {
        let p = data.join(d);
        if !p.is_dir() {
            fs::create_dir_all(&p).map_err(Error::io("cannot create", &p))?;
            if d == "tmp" {
                fs::set_permissions(&p, fs::Permissions::from_mode(0o1777))
                    .map_err(Error::io("cannot set mode", &p))?;
            }
        }
    }
    Ok(())
}

fn read_fstab(wd: &Workdir, cfg: &JailConfig) -> Result<Vec<FstabEntry>> {
    let path = wd.fstab_file(cfg.jname());
    match fs::read_to_string(&path) {
        Ok(text) => fstab::parse(&text, &path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io("cannot read", &path)(e)),
    }
}

/// Make sure every extra mount has a mount point without writing to the
/// base: targets under the jail's own dirs are created in its data dir;
/// other targets must already exist in the base.
fn prepare_mount_points(wd: &Workdir, cfg: &JailConfig, entries: &[FstabEntry]) -> Result<()> {
    let data = wd.data_dir(cfg.jname());
    for e in entries {
        let rel = e.target.strip_prefix("/").unwrap_or(&e.target);
        let own = cfg.args.baserw || WRITABLE_DIRS.iter().any(|d| rel.starts_with(d));
        if e.kind == MountKind::Bind && !e.source.is_dir() {
            return Err(Error::bad_value(
                "fstab",
                &e.source.to_string_lossy(),
                "source is not a directory",
            ));
        }
        if own {
            let p = data.join(rel);
            fs::create_dir_all(&p).map_err(Error::io("cannot create mount point", &p))?;
        } else if !wd.base_dir(&cfg.args.base).join(rel).is_dir() {
            return Err(Error::bad_value(
                "fstab",
                &e.target.to_string_lossy(),
                format!(
                    "mount point does not exist in base {}; use a path under /{} or add it to the base",
                    cfg.args.base,
                    WRITABLE_DIRS.join(", /")
                ),
            ));
        }
    }
    Ok(())
}

/// Run a command in a running jail with the caller's stdio.
pub fn exec(wd: &Workdir, j: &Jname, cmd: &[String]) -> Result<i32> {
    let st = engine::state(wd, j)?;
    if !wd.registered_rcconf(j).exists() {
        return Err(Error::EnvNotFound(j.clone()));
    }
    model::check(j, st, Action::Exec)?;
    let argv = if cmd.is_empty() {
        vec!["/bin/sh".to_owned()]
    } else {
        cmd.to_vec()
    };
    use std::io::IsTerminal;
    Runc::new(wd).exec(j, &argv, std::io::stdin().is_terminal())
}
