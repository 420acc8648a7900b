//! ferry's VM engine: QEMU as a daemonized process with a pid file and a
//! QMP socket under `var/run`, its disks in the data dir on shared storage,
//! its serial console logged to `jails-system/<jname>/console.log`. The
//! lifecycle goes through [`ferry_core::model::check`] and the runtime
//! record, exactly as for jails.

pub mod checkpoint;
pub mod cloud;
pub mod cloudinit;
pub mod config;
pub mod cpu;
pub mod disk;
mod error;
pub mod image;
pub mod integrity;
pub mod migrate;
pub mod profile;
pub mod qemu;
pub mod qmp;
pub mod snapshot;

use std::fs;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use ferry_core::engine::{self, Backend, EnvConfig, StartOptions};
use ferry_core::envdef::Hooks;
use ferry_core::envfs;
use ferry_core::model::Columns;
use ferry_core::process::Process;
use ferry_core::registry::{EnvRow, Registry};
use ferry_core::runtime::{self, NetRecord, Phase, Runtime};
use ferry_core::{EnvKind, EnvState, Error, Jname, Result, Workdir};
use serde_json::{json, Value};

pub use config::VmConfig;
pub use error::VmError;
use qmp::Qmp;

/// The CPU model `bcreate` defaults to: a named baseline every x86-64
/// QEMU offers, so a VM can migrate between nodes (never `host`).
pub const DEFAULT_CPU_MODEL: &str = "qemu64";

/// How long QEMU's QMP socket may take to answer once QEMU is up.
pub(crate) const QMP_CONNECT: Duration = Duration::from_secs(10);

/// The VM engine: its lifecycle is [`ferry_core::engine`]'s, with these
/// steps.
#[derive(Debug, Clone, Copy)]
pub struct Vms;

/// The VM engine, for an [`ferry_core::engine::EngineSet`].
pub static VMS: Vms = Vms;

impl EnvConfig for VmConfig {
    fn from_definition(
        def: &ferry_core::rcconf::Definition,
        wd: &Workdir,
        path: &std::path::Path,
    ) -> Result<VmConfig> {
        VmConfig::from_definition(def, wd, path)
    }
    fn hooks(&self) -> &Hooks {
        &self.hooks
    }
    fn stop_timeout(&self) -> Duration {
        VmConfig::stop_timeout(self)
    }
}

/// The columns of `bls`: what it shows by default, and every column it
/// can show (CBSD's names; `vnc_port` is `vnc` by CBSD's name).
pub const COLUMNS: Columns = Columns {
    default: &[
        "jname",
        "jid",
        "vm_ram",
        "vm_cpus",
        "vm_os_type",
        "vnc",
        "accel",
        "qemu",
        "status",
    ],
    more: &[
        "vnc_port",
        "ip4_addr",
        "host_hostname",
        "astart",
        "node",
        "nodename",
        "path",
    ],
};

impl Backend for Vms {
    type Config = VmConfig;
    const KIND: EnvKind = EnvKind::Vm;
    const STOP_TIMEOUT: Duration = Duration::from_secs(30);
    /// QEMU's command line is made at start.
    /// cloud-init's keys too: the seed is written at each start.
    const RESTART_KEYS: &'static [&'static str] = &[
        "vm_ram",
        "vm_cpus",
        "vm_vnc_port",
        "vm_cmdline",
        "host_hostname",
        "ci_ip4_addr",
        "ci_gw4",
        "ci_nameserver_address",
        "ci_nameserver_search",
        "ci_user_pubkey",
        "ci_user_pw_root",
        "ci_user_pw_user",
    ];

    fn check_settings(&self, wd: &Workdir, reg: &Registry, cfg: &VmConfig) -> Result<()> {
        check_vnc_unique(wd, reg, cfg)
    }

    fn row(&self, _: &Workdir, cfg: &VmConfig) -> Result<EnvRow> {
        Ok(vm_row(cfg))
    }

    fn check_start(
        &self,
        wd: &Workdir,
        _: &Registry,
        cfg: &VmConfig,
        opts: &StartOptions,
    ) -> Result<()> {
        qemu::check_socket_path(&qemu::qmp_socket(wd, cfg.jname()))?;
        if let Some(name) = &opts.checkpoint {
            checkpoint::check_restorable(wd, cfg, name)?;
        }
        let port = cfg.args.vm_vnc_port;
        if port != 0 && TcpListener::bind(("127.0.0.1", port)).is_err() {
            return Err(VmError::VncTaken(port).into());
        }
        Ok(())
    }

    fn record(&self, wd: &Workdir, reg: &Registry, cfg: &VmConfig, epoch: u64) -> Result<Runtime> {
        launch_record(wd, reg, cfg, epoch, Phase::Starting, None)
    }

    fn launch(
        &self,
        wd: &Workdir,
        cfg: &VmConfig,
        rt: &Runtime,
        opts: &StartOptions,
    ) -> Result<Process> {
        let r = try_launch(wd, cfg, rt, opts.checkpoint.as_deref());
        if r.is_err() {
            undo_launch(wd, cfg.jname(), rt);
        }
        r
    }

    fn halt(&self, wd: &Workdir, j: &Jname, rt: &Runtime, timeout: Duration) -> Result<()> {
        halt(wd, j, rt, timeout)
    }

    fn kill(&self, _: &Workdir, j: &Jname, rt: &Runtime) -> Result<()> {
        kill(j, rt)
    }

    /// A QEMU left without a usable record, the tap; the mounts are
    /// `mnt_stop`'s.
    fn release(&self, wd: &Workdir, j: &Jname, rt: &Runtime) -> Result<()> {
        kill_leftover(wd, j);
        if let Some(net) = &rt.net {
            ferry_core::net::remove_link(&net.host_if)?;
        }
        Ok(())
    }

    fn columns(&self) -> Columns {
        COLUMNS
    }

    fn describe(&self, wd: &Workdir, row: &EnvRow) -> Result<Value> {
        let cfg = load(wd, &row.jname);
        let live = live(wd, &row.jname)?;
        let (ram, cpus, os, vnc) = match &cfg {
            Ok(c) => (
                Value::from(c.args.vm_ram.render()),
                Value::from(c.args.vm_cpus),
                Value::from(c.args.vm_os_type.0.clone()),
                match c.args.vm_vnc_port {
                    0 => Value::Null,
                    port => Value::from(port),
                },
            ),
            Err(_) => (Value::Null, Value::Null, Value::Null, Value::Null),
        };
        Ok(json!({
            "jname": row.jname,
            "jid": live.pid,
            "vm_ram": ram,
            "vm_cpus": cpus,
            "vm_os_type": os,
            "vnc": vnc.clone(),
            "accel": if live.state == EnvState::Running { live.accel } else { None },
            "qemu": live.qemu_status,
            "status": live.state.display(),
            "vnc_port": vnc,
            // The address cloud-init gives it; else CBSD's `0`: none.
            "ip4_addr": cfg.as_ref().ok().and_then(|c| c.args.ci_ip4_addr.clone()).unwrap_or_else(|| "0".to_owned()),
            "host_hostname": cfg.as_ref().ok().and_then(|c| c.args.host_hostname.clone()),
            "astart": row.astart,
            "node": wd.nodename(),
            "nodename": wd.nodename(),
            "path": wd.data_dir(&row.jname),
        }))
    }
}

/// Create a VM on this node (and start it when `runasap=1`).
/// `from`: the image dsk1 is an overlay on (a VM profile's), else a new
/// empty disk.
pub fn create(
    wd: &Workdir,
    reg: &Registry,
    cfg: &mut VmConfig,
    from: Option<&image::ImageInfo>,
) -> Result<()> {
    cfg.args.vm_machine.0 = qemu::resolve_machine(wd, &cfg.args.vm_machine.0)?;
    check_vnc_unique(wd, reg, cfg)?;
    let mut def = config::to_definition(&cfg.args, &cfg.extra_disks, wd.root())?;
    if let Some(i) = from {
        for (k, v) in [("vm_image", &i.name), ("vm_image_sha256", &i.sha256)] {
            def.set(k, v.clone())
                .map_err(|e| Error::bad_value(k, v, e.to_string()))?;
        }
    }
    envfs::create(wd, reg, &vm_row(cfg), &cfg.hooks, &def, || {
        match (from, cfg.disk(wd)) {
            (Some(i), Some(disk)) => image::overlay(wd, i, &disk, cfg.args.imgsize.0),
            _ => make_disk(wd, cfg),
        }
    })?;
    if cfg.args.runasap {
        engine::start(&VMS, wd, reg, cfg.jname(), &StartOptions::default())?;
    }
    Ok(())
}

fn vm_row(cfg: &VmConfig) -> EnvRow {
    EnvRow {
        jname: cfg.jname().clone(),
        kind: EnvKind::Vm,
        base: None,
        host_hostname: String::new(),
        ip4_addr: String::new(),
        astart: cfg.args.astart,
    }
}

fn make_disk(wd: &Workdir, cfg: &VmConfig) -> Result<()> {
    let Some(disk) = cfg.disk(wd) else {
        return Ok(());
    };
    let size = cfg.args.imgsize.0.to_string();
    qemu::img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        cfg.disk_format().as_ref(),
        disk.as_os_str(),
        size.as_ref(),
    ])
}

/// Clone the stopped VM `old` (owned here) into `new`, its disks copied
/// (holes kept, reflinked where the file system can). Its NIC's MAC
/// follows its name, so it is new; its VNC port is `vm_vnc_port` (default
/// none: one port serves one VM here).
pub fn clone(
    wd: &Workdir,
    reg: &Registry,
    old: &Jname,
    new: &Jname,
    vm_vnc_port: Option<u16>,
) -> Result<()> {
    let from = load(wd, old)?;
    let mut args = from.args;
    args.jname = new.clone();
    args.vm_vnc_port = vm_vnc_port.unwrap_or(0);
    let def = config::to_definition(&args, &from.extra_disks, wd.root())?;
    let cfg = VmConfig::from_definition(&def, wd, &wd.registered_rcconf(new))?;
    check_vnc_unique(wd, reg, &cfg)?;
    ferry_core::clone::clone(wd, reg, old, &vm_row(&cfg), &cfg.hooks, &def)
}

/// No two VMs registered here share a VNC port.
fn check_vnc_unique(wd: &Workdir, reg: &Registry, cfg: &VmConfig) -> Result<()> {
    let port = cfg.args.vm_vnc_port;
    if port == 0 {
        return Ok(());
    }
    for row in reg
        .list()?
        .into_iter()
        .filter(|r| r.kind == EnvKind::Vm && &r.jname != cfg.jname())
    {
        if let Ok(other) = load(wd, &row.jname) {
            if other.args.vm_vnc_port == port {
                return Err(VmError::VncUsed {
                    port,
                    by: row.jname,
                }
                .into());
            }
        }
    }
    Ok(())
}

/// The settings of a VM registered here.
pub fn load(wd: &Workdir, j: &Jname) -> Result<VmConfig> {
    engine::load(wd, j)
}

/// What `bls` shows of a VM's live state.
#[derive(Debug, Clone)]
pub struct Live {
    pub state: EnvState,
    pub pid: Option<i32>,
    pub accel: Option<String>,
    /// QEMU's own run state (`running`, `paused` ...), when it answered.
    pub qemu_status: Option<String>,
}

/// The state of a VM, asking the live QEMU over QMP when it runs.
pub fn live(wd: &Workdir, j: &Jname) -> Result<Live> {
    let (state, rt) = runtime::state(wd, j)?;
    let (pid, accel) = rt.map_or((None, None), |r| (r.pid, r.accel));
    let qemu_status = (state == EnvState::Running)
        .then(|| {
            Qmp::connect(&qemu::qmp_socket(wd, j), Duration::from_secs(2))
                .and_then(|mut q| q.query_status())
        })
        .and_then(|r| r.ok())
        .map(|s| s.status);
    Ok(Live {
        state,
        pid: if state == EnvState::Running {
            pid
        } else {
            None
        },
        accel,
        qemu_status,
    })
}

/// The runtime record of a QEMU of `cfg` about to be launched here (in
/// `phase`), under this node's accelerator (in the record).
pub(crate) fn launch_record(
    wd: &Workdir,
    reg: &Registry,
    cfg: &VmConfig,
    epoch: u64,
    phase: Phase,
    cpu: Option<&cpu::GuestCpu>,
) -> Result<Runtime> {
    let accel = qemu::accel(wd, reg, &cfg.args.vm_cpu_model.0)?;
    let net = config::bridged(&cfg.args).then(|| NetRecord {
        netns: String::new(),
        host_if: qemu::tap_name(wd, cfg.jname()),
        bridge: cfg.args.interface.0.clone(),
    });
    Ok(Runtime {
        phase,
        net,
        accel: Some(accel),
        cpu: cpu.map(|c| c.0.clone()),
        ..Runtime::starting(epoch)
    })
}

/// Undo what a failed launch may have left: a QEMU without a usable
/// record, the tap.
pub(crate) fn undo_launch(wd: &Workdir, j: &Jname, rt: &Runtime) {
    kill_leftover(wd, j);
    if let Some(net) = &rt.net {
        let _ = ferry_core::net::remove_link(&net.host_if);
    }
}

fn try_launch(
    wd: &Workdir,
    cfg: &VmConfig,
    rt: &Runtime,
    checkpoint: Option<&str>,
) -> Result<Process> {
    let j = cfg.jname();
    let accel = rt.accel.as_deref().unwrap_or("tcg");
    if let Some(net) = &rt.net {
        ferry_core::net::tap_up(&net.host_if, &net.bridge)?;
    }
    if let Some(name) = checkpoint {
        checkpoint::revert_disks(wd, cfg, name)?;
    }
    cloud::write(wd, cfg)?;
    let pid = qemu::spawn(wd, cfg, accel, checkpoint.is_some())?;
    let process = Process::of(pid)
        .ok_or_else(|| Error::Failed(format!("QEMU of {j} exited as soon as it started")))?;
    let mut q = Qmp::connect_retry(&qemu::qmp_socket(wd, j), Instant::now() + QMP_CONNECT)
        .map_err(|e| qmp_failed(j, e))?;
    if let Some(name) = checkpoint {
        checkpoint::restore(wd, cfg, &mut q, name)?;
    }
    Ok(process)
}

pub(crate) fn qmp_failed(j: &Jname, source: qmp::QmpError) -> Error {
    VmError::Qmp {
        jname: j.clone(),
        source,
    }
    .into()
}

/// Kill a QEMU of this VM that may be running without a usable record
/// (ferry was killed between starting it and recording it).
fn kill_leftover(wd: &Workdir, j: &Jname) {
    if let Some(pid) = qemu::read_pid(&qemu::pid_file(wd, j)) {
        if qemu::is_our_qemu(wd, j, pid) {
            if let Some(p) = Process::of(pid) {
                p.kill();
            }
        }
    }
    let _ = fs::remove_file(qemu::pid_file(wd, j));
    let _ = fs::remove_file(qemu::qmp_socket(wd, j));
}

/// Bring the QEMU of a running VM down: power-down, then quit, then kill.
pub(crate) fn halt(wd: &Workdir, j: &Jname, rt: &Runtime, timeout: Duration) -> Result<()> {
    let qemu = qemu_of(rt);
    let sock = qemu::qmp_socket(wd, j);
    if let Ok(mut q) = Qmp::connect(&sock, Duration::from_secs(5)) {
        if q.system_powerdown().is_ok() && qemu.wait_gone(timeout) {
            return Ok(());
        }
        let _ = q.quit();
        if qemu.wait_gone(Duration::from_secs(5)) {
            return Ok(());
        }
    }
    kill(j, rt)
}

/// SIGKILL the QEMU of a running VM.
pub(crate) fn kill(j: &Jname, rt: &Runtime) -> Result<()> {
    let qemu = qemu_of(rt);
    if qemu.kill() {
        Ok(())
    } else {
        Err(VmError::Unkillable {
            jname: j.clone(),
            pid: qemu.pid,
        }
        .into())
    }
}

/// The QEMU a record names.
fn qemu_of(rt: &Runtime) -> Process {
    Process {
        pid: rt.pid.unwrap_or(0),
        start: rt.starttime.unwrap_or(0),
    }
}
