//! ferry's VM engine: QEMU as a daemonized process with a pid file and a
//! QMP socket under `var/run`, its disks in the data dir on shared storage,
//! its serial console logged to `jails-system/<jname>/console.log`. The
//! lifecycle goes through [`ferry_core::model::check`] and the runtime
//! record, exactly as for jails.

pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod integrity;
pub mod migrate;
pub mod qemu;
pub mod qmp;

use std::fs;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use ferry_core::envdef::{self, HookCtx};
use ferry_core::envfs;
use ferry_core::hook::Phase as HookPhase;
use ferry_core::lease;
use ferry_core::model::{self, Action};
use ferry_core::registry::{EnvRow, Registry};
use ferry_core::runtime::{self, NetRecord, Phase, Runtime};
use ferry_core::{EnvKind, EnvState, Error, Jname, Result, Workdir};

pub use config::VmConfig;
use qmp::Qmp;

/// The CPU model `bcreate` defaults to: a named baseline every x86-64
/// QEMU offers, so a VM can migrate between nodes (never `host`).
pub const DEFAULT_CPU_MODEL: &str = "qemu64";

/// How long QEMU's QMP socket may take to answer once QEMU is up.
pub(crate) const QMP_CONNECT: Duration = Duration::from_secs(10);

/// Create a VM on this node (and start it when `runasap=1`).
pub fn create(wd: &Workdir, reg: &Registry, cfg: &mut VmConfig) -> Result<()> {
    cfg.args.vm_machine.0 = qemu::resolve_machine(wd, &cfg.args.vm_machine.0)?;
    check_vnc_unique(wd, reg, cfg)?;
    let def = config::to_definition(&cfg.args, wd.root())?;
    envfs::create(wd, reg, &vm_row(cfg), &cfg.hooks, &def, || {
        make_disk(wd, cfg)
    })?;
    if cfg.args.runasap {
        start(wd, reg, cfg.jname(), None)?;
    }
    Ok(())
}

/// The registry row of a VM whose definition another node wrote.
pub fn row_of(wd: &Workdir, def: &ferry_core::rcconf::Definition) -> Result<EnvRow> {
    let j = def.get("jname").map(ferry_core::error::jname).transpose()?;
    let path = j
        .as_ref()
        .map_or_else(|| wd.rcconf_dir(), |j| wd.unregistered_rcconf(j));
    let cfg = VmConfig::from_definition(def, wd, &path)?;
    Ok(vm_row(&cfg))
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
                return Err(Error::Refused(format!(
                    "VNC port {port} is already used by {}",
                    row.jname
                )));
            }
        }
    }
    Ok(())
}

pub fn load(wd: &Workdir, j: &Jname) -> Result<VmConfig> {
    let def = envdef::load_registered(wd, j)?;
    VmConfig::from_definition(&def, wd, &wd.registered_rcconf(j))
}

/// The live state of a VM registered here.
pub fn state(wd: &Workdir, j: &Jname) -> Result<EnvState> {
    runtime::state(wd, j).map(|(s, _)| s)
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

/// Start a registered VM, booting it or restoring `checkpoint`.
pub fn start(wd: &Workdir, reg: &Registry, j: &Jname, checkpoint: Option<&str>) -> Result<()> {
    let (st, rt) = runtime::state(wd, j)?;
    model::check(j, st, Action::Start)?;
    let cfg = load(wd, j)?;
    // Only the lease holder may run the env (DESIGN §5, I2).
    let epoch = lease::held(wd, j)?;
    cfg.hooks.check()?;
    let sock = qemu::qmp_socket(wd, j);
    qemu::check_socket_path(&sock)?;
    if let Some(rt) = rt {
        teardown(wd, j, Some(&cfg), &rt)?;
    }
    if let Some(name) = checkpoint {
        checkpoint::check_restorable(wd, &cfg, name)?;
    }
    if cfg.args.vm_vnc_port != 0 && TcpListener::bind(("127.0.0.1", cfg.args.vm_vnc_port)).is_err()
    {
        return Err(Error::Refused(format!(
            "VNC port {} is taken",
            cfg.args.vm_vnc_port
        )));
    }
    let (mut rt, accel) = record_launch(wd, reg, &cfg, epoch, Phase::Starting, None)?;
    let ctx = HookCtx {
        wd,
        jname: j,
        epoch,
    };
    let launched = cfg.hooks.with_mounts(&ctx, HookPhase::Start, true, || {
        launch(wd, &cfg, &rt, &accel, checkpoint)
    });
    match launched {
        Ok((pid, starttime)) => {
            rt.phase = Phase::Running;
            rt.pid = Some(pid);
            rt.starttime = Some(starttime);
            runtime::write(wd, j, &rt)
        }
        Err(e) => {
            runtime::clear(wd, j)?;
            Err(e)
        }
    }
}

/// The runtime record of a QEMU of `cfg` about to be launched here (in
/// `phase`), under this node's accelerator, written before anything is
/// set up so that a crash from then on is undone. Returns it with the
/// accelerator.
pub(crate) fn record_launch(
    wd: &Workdir,
    reg: &Registry,
    cfg: &VmConfig,
    epoch: u64,
    phase: Phase,
    cpu: Option<&cpu::GuestCpu>,
) -> Result<(Runtime, String)> {
    let accel = qemu::accel(wd, reg, &cfg.args.vm_cpu_model.0)?;
    let net = config::bridged(&cfg.args).then(|| NetRecord {
        netns: String::new(),
        host_if: qemu::tap_name(wd, cfg.jname()),
        bridge: cfg.args.interface.0.clone(),
    });
    let rt = Runtime {
        phase,
        net,
        accel: Some(accel.clone()),
        cpu: cpu.map(|c| c.0.clone()),
        ..Runtime::starting(epoch)
    };
    runtime::write(wd, cfg.jname(), &rt)?;
    Ok((rt, accel))
}

/// Undo what a failed launch may have left: a QEMU without a usable
/// record, the tap.
pub(crate) fn undo_launch(wd: &Workdir, j: &Jname, rt: &Runtime) {
    kill_leftover(wd, j);
    if let Some(net) = &rt.net {
        let _ = ferry_core::net::remove_link(&net.host_if);
    }
}

fn launch(
    wd: &Workdir,
    cfg: &VmConfig,
    rt: &Runtime,
    accel: &str,
    checkpoint: Option<&str>,
) -> Result<(i32, u64)> {
    let r = try_launch(wd, cfg, rt, accel, checkpoint);
    if r.is_err() {
        undo_launch(wd, cfg.jname(), rt);
    }
    r
}

fn try_launch(
    wd: &Workdir,
    cfg: &VmConfig,
    rt: &Runtime,
    accel: &str,
    checkpoint: Option<&str>,
) -> Result<(i32, u64)> {
    let j = cfg.jname();
    if let Some(net) = &rt.net {
        ferry_core::net::tap_up(&net.host_if, &net.bridge)?;
    }
    if let Some(name) = checkpoint {
        checkpoint::revert_disks(wd, cfg, name)?;
    }
    let pid = qemu::spawn(wd, cfg, accel, checkpoint.is_some())?;
    let starttime = ferry_core::sys::proc_stat(pid)
        .map(|p| p.starttime)
        .ok_or_else(|| Error::Failed(format!("QEMU of {j} exited as soon as it started")))?;
    let mut q = Qmp::connect_retry(&qemu::qmp_socket(wd, j), Instant::now() + QMP_CONNECT)
        .map_err(|e| qmp_failed(j, e))?;
    if let Some(name) = checkpoint {
        checkpoint::restore(wd, cfg, &mut q, name)?;
    }
    Ok((pid, starttime))
}

pub(crate) fn qmp_failed(j: &Jname, e: qmp::QmpError) -> Error {
    Error::Failed(format!("QMP of {j}: {}", ferry_core_chain(&e)))
}

fn ferry_core_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Kill a QEMU of this VM that may be running without a usable record
/// (ferry was killed between starting it and recording it).
fn kill_leftover(wd: &Workdir, j: &Jname) {
    if let Some(pid) = qemu::read_pid(&qemu::pid_file(wd, j)) {
        if qemu::is_our_qemu(wd, j, pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            ferry_core::sys::wait_gone(pid, None, Duration::from_secs(5));
        }
    }
    let _ = fs::remove_file(qemu::pid_file(wd, j));
    let _ = fs::remove_file(qemu::qmp_socket(wd, j));
}

/// Undo what a runtime record says may be left, then drop the record.
pub(crate) fn teardown(
    wd: &Workdir,
    j: &Jname,
    cfg: Option<&VmConfig>,
    rt: &Runtime,
) -> Result<()> {
    teardown_as(wd, j, cfg, rt, HookPhase::Stop)
}

/// [`teardown`], `mnt_stop` told `phase`.
pub(crate) fn teardown_as(
    wd: &Workdir,
    j: &Jname,
    cfg: Option<&VmConfig>,
    rt: &Runtime,
    phase: HookPhase,
) -> Result<()> {
    kill_leftover(wd, j);
    if let Some(net) = &rt.net {
        ferry_core::net::remove_link(&net.host_if)?;
    }
    runtime::finish_teardown_as(wd, j, cfg.map(|c| &c.hooks), rt, phase)
}

/// Stop a VM: ACPI power-down, QMP `quit` after `stop_timeout`, SIGKILL as
/// a last resort; then tear down.
pub fn stop(wd: &Workdir, j: &Jname) -> Result<()> {
    let (st, rt) = runtime::begin_stop(wd, j)?;
    let cfg = load(wd, j);
    if st == EnvState::Running {
        let timeout = cfg
            .as_ref()
            .map_or(Duration::from_secs(30), VmConfig::stop_timeout);
        halt(wd, j, &rt, timeout)?;
    }
    teardown(wd, j, cfg.as_ref().ok(), &rt)
}

/// Bring the QEMU of a running VM down: power-down, then quit, then kill.
pub(crate) fn halt(wd: &Workdir, j: &Jname, rt: &Runtime, timeout: Duration) -> Result<()> {
    let (pid, start) = (rt.pid.unwrap_or(0), rt.starttime);
    let sock = qemu::qmp_socket(wd, j);
    let mut q = Qmp::connect(&sock, Duration::from_secs(5)).ok();
    if let Some(q) = q.as_mut() {
        if q.system_powerdown().is_ok() && ferry_core::sys::wait_gone(pid, start, timeout) {
            return Ok(());
        }
        let _ = q.quit();
        if ferry_core::sys::wait_gone(pid, start, Duration::from_secs(5)) {
            return Ok(());
        }
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    if ferry_core::sys::wait_gone(pid, start, Duration::from_secs(5)) {
        Ok(())
    } else {
        Err(Error::Failed(format!(
            "QEMU of {j} (pid {pid}) did not die after SIGKILL"
        )))
    }
}

/// Stop (if running) and start again.
pub fn restart(wd: &Workdir, reg: &Registry, j: &Jname) -> Result<()> {
    let st = state(wd, j)?;
    model::check(j, st, Action::Restart)?;
    if st != EnvState::Stopped {
        stop(wd, j)?;
    }
    start(wd, reg, j, None)
}

/// Remove a stopped VM with its disks and checkpoints.
pub fn remove(wd: &Workdir, reg: &Registry, j: &Jname) -> Result<()> {
    if envfs::finish_interrupted(wd, reg, j)? {
        return Ok(());
    }
    let (st, rt) = runtime::state(wd, j)?;
    model::check(j, st, Action::Remove)?;
    let cfg = load(wd, j)?;
    cfg.hooks.check()?;
    if let Some(rt) = rt {
        teardown(wd, j, Some(&cfg), &rt)?;
    }
    envfs::remove(wd, reg, j, &cfg.hooks)
}
