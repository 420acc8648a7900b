//! The engine's part of a live migration (DESIGN §7): the destination's
//! incoming QEMU, the source's transfer, and how each side ends.
//!
//! The destination QEMU is started paused (`-S`) with `-incoming`: it
//! loads the guest's state but runs nothing, and (paused) does not take
//! the disks over, until it is told to continue. Between "the transfer
//! completed" (the source QEMU stops for good, in `postmigrate`) and that
//! `cont`, the owner lease moves to the destination: the one commit point.
//! Before it, the source can always continue the guest ([`outgoing_undo`])
//! and the destination is thrown away ([`incoming_abort`]); after it, only
//! the destination may run it ([`incoming_commit`]) and the source ends its
//! QEMU ([`outgoing_finish`]). So there are never two running copies.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::VmError;
use ferry_core::engine;
use ferry_core::envdef::HookCtx;
use ferry_core::hook::Phase as HookPhase;
use ferry_core::lease;
use ferry_core::registry::Registry;
use ferry_core::runtime::{self, Phase, Runtime};
use ferry_core::{EnvState, Error, Jname, Result, Workdir};
use serde_json::{json, Value};

use crate::cpu::GuestCpu;
use crate::qmp::{MigrationInfo, Qmp, QmpError};
use crate::{load, qemu, qmp_failed, QMP_CONNECT};

/// How the transfer may go.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    /// The longest the guest may be stopped for the last pass.
    pub downtime: Duration,
    /// Bytes per second; 0 for no limit.
    pub bandwidth: u64,
    /// The whole transfer's limit; it is cancelled after it.
    pub timeout: Duration,
}

/// "No limit" for QEMU's `max-bandwidth` (bytes per second).
const UNLIMITED: u64 = 1 << 40;

/// How often progress is reported while the transfer runs.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// A transfer that sent nothing for this long is cancelled (the link to
/// the destination is cut, or the destination stopped reading): the
/// guest, which may be stopped for the last pass, runs on here.
pub const STALL_AFTER: Duration = Duration::from_secs(3);

fn qmp(wd: &Workdir, j: &Jname) -> Result<Qmp> {
    Qmp::connect(&qemu::qmp_socket(wd, j), Duration::from_secs(5)).map_err(|e| qmp_failed(j, e))
}

fn status(q: &mut Qmp, j: &Jname) -> Result<String> {
    q.query_status()
        .map(|s| s.status)
        .map_err(|e| qmp_failed(j, e))
}

/// Wait until QEMU's run state is one of `want` (or `limit` passes).
fn wait_status(q: &mut Qmp, j: &Jname, want: &[&str], limit: Duration) -> Result<String> {
    let until = Instant::now() + limit;
    loop {
        let s = status(q, j)?;
        if want.contains(&s.as_str()) || Instant::now() >= until {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ---- the destination ----

/// Start the paused incoming QEMU of `j` (registered on another node,
/// its definition read from shared storage), listening on `listen`: runs
/// `mnt_start` in phase `migrate-in` first. Returns the migration URI.
/// On failure nothing is left.
pub fn incoming(
    wd: &Workdir,
    reg: &Registry,
    j: &Jname,
    listen: IpAddr,
    cpu: &GuestCpu,
) -> Result<String> {
    match runtime::state(wd, j)? {
        (_, None) => {}
        (_, Some(rt)) if rt.phase == Phase::Incoming => {
            // A prepare that was never committed nor aborted: start afresh.
            incoming_abort(wd, j)?;
        }
        (EnvState::Running, Some(_)) => {
            return Err(Error::WrongState {
                jname: j.clone(),
                state: "running",
                action: "receive by live migration",
                needs: "not running here",
            })
        }
        (_, Some(rt)) => engine::teardown(&crate::VMS, wd, j, None, &rt, HookPhase::Stop)?,
    }
    let cfg = load(wd, j)?;
    cfg.hooks.check()?;
    qemu::check_socket_path(&qemu::qmp_socket(wd, j))?;
    let epoch = lease::read(wd, j)?.map_or(0, |l| l.epoch);
    // Recorded first, so a crash from here on is undone by an abort.
    let mut rt = crate::launch_record(wd, reg, &cfg, epoch, Phase::Incoming, Some(cpu))?;
    runtime::write(wd, j, &rt)?;
    let accel = rt.accel.clone().unwrap_or_else(|| "tcg".into());
    let ctx = HookCtx {
        wd,
        jname: j,
        epoch,
    };
    let started = cfg.hooks.with_mounts(&ctx, HookPhase::MigrateIn, true, || {
        if let Some(net) = &rt.net {
            ferry_core::net::tap_up(&net.host_if, &net.bridge)?;
        }
        let pid = qemu::spawn_paused_incoming(wd, &cfg, &accel, &cpu.arg()?)?;
        let start = ferry_core::sys::proc_stat(pid)
            .map(|p| p.starttime)
            .ok_or_else(|| VmError::ExitedAtOnce(j.clone()))?;
        let mut q = Qmp::connect_retry(&qemu::qmp_socket(wd, j), Instant::now() + QMP_CONNECT)
            .map_err(|e| qmp_failed(j, e))?;
        q.set_migrate_capabilities(&[("events", true), ("return-path", true)])
            .map_err(|e| qmp_failed(j, e))?;
        q.migrate_incoming(&format!("tcp:{}", SocketAddr::new(listen, 0)))
            .map_err(|e| qmp_failed(j, e))?;
        let port = listening_port(&mut q, j)?;
        Ok((pid, start, port))
    });
    match started {
        Ok((pid, start, port)) => {
            rt.pid = Some(pid);
            rt.starttime = Some(start);
            runtime::write(wd, j, &rt)?;
            Ok(format!("tcp:{}", SocketAddr::new(listen, port)))
        }
        Err(e) => {
            crate::undo_launch(wd, j, &rt);
            runtime::clear(wd, j)?;
            Err(e)
        }
    }
}

/// The port QEMU listens on for the incoming stream (`tcp:ADDR:0` lets it
/// choose one that is free).
fn listening_port(q: &mut Qmp, j: &Jname) -> Result<u16> {
    /// What `query-migrate` says of an incoming QEMU's socket.
    #[derive(serde::Deserialize)]
    struct Listening {
        #[serde(rename = "socket-address", default)]
        socket_address: Vec<Socket>,
    }
    #[derive(serde::Deserialize)]
    struct Socket {
        port: Port,
    }
    /// QEMU gives the port as text (an `InetSocketAddress`'s `port`).
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Port {
        Number(u16),
        Text(String),
    }
    let v = q
        .execute("query-migrate", None)
        .map_err(|e| qmp_failed(j, e))?;
    serde_json::from_value::<Listening>(v.clone())
        .ok()
        .and_then(|l| l.socket_address.into_iter().next())
        .and_then(|s| match s.port {
            Port::Number(n) => Some(n),
            Port::Text(t) => t.parse().ok(),
        })
        .ok_or_else(|| Error::Failed(format!("QEMU of {j} names no listening port: {v}")))
}

/// What [`incoming_commit`] did.
#[derive(Debug, Clone, Copy)]
pub struct Committed {
    /// How long ago the guest was resumed here (`None`: it ran already,
    /// resumed by an earlier commit): what followed its resumption was
    /// not part of its downtime.
    pub resumed_ago: Option<Duration>,
    /// The size of its console log when it was resumed: what it printed
    /// since is its life here ([`crate::integrity::verify_resumed`]).
    pub console_from: u64,
}

/// The lease names this node now: run the received guest and register it
/// here. The incoming QEMU must have loaded the whole state.
pub fn incoming_commit(wd: &Workdir, reg: &Registry, j: &Jname) -> Result<Committed> {
    let Some(mut rt) = runtime::read(wd, j)? else {
        return Err(VmError::NotIncoming(j.clone()).into());
    };
    let lease = lease::read(wd, j)?;
    let ours = lease
        .as_ref()
        .is_some_and(|l| l.node.as_deref() == Some(wd.nodename()));
    if rt.phase == Phase::Running && ours {
        // Committed already (by the daemon, or a repeated request).
        return Ok(Committed {
            resumed_ago: None,
            console_from: crate::integrity::console_mark(wd, j),
        });
    }
    if rt.phase != Phase::Incoming {
        return Err(VmError::NotIncoming(j.clone()).into());
    }
    let epoch = match lease {
        Some(l) if ours => l.epoch,
        l => {
            return Err(VmError::LeaseNotHere {
                jname: j.clone(),
                node: wd.nodename().to_owned(),
                lease: format!("{l:?}"),
            }
            .into())
        }
    };
    let mut q = qmp(wd, j)?;
    let s = wait_status(&mut q, j, &["paused", "running"], Duration::from_secs(30))?;
    let console_from = crate::integrity::console_mark(wd, j);
    if s != "running" {
        if s != "paused" {
            return Err(VmError::NotLoaded {
                jname: j.clone(),
                status: s,
            }
            .into());
        }
        q.cont().map_err(|e| qmp_failed(j, e))?;
    }
    let resumed = Instant::now();
    runtime::enter(&mut rt, Phase::Running)?;
    rt.epoch = epoch;
    runtime::write(wd, j, &rt)?;
    let def = ferry_core::envdef::load_registered(wd, j)?;
    reg.upsert(&engine::Backend::row_of(&crate::VMS, wd, &def)?)?;
    Ok(Committed {
        resumed_ago: Some(resumed.elapsed()),
        console_from,
    })
}

/// Throw away an incoming QEMU of `j` that was not committed: it quits,
/// `mnt_stop` runs in phase `migrate-in`. Refused once the lease names
/// this node (then the guest is this node's to run). Returns whether
/// there was one.
pub fn incoming_abort(wd: &Workdir, j: &Jname) -> Result<bool> {
    let Some(rt) = runtime::read(wd, j)?.filter(|r| r.phase == Phase::Incoming) else {
        return Ok(false);
    };
    if let Some(l) = lease::read(wd, j)? {
        if l.node.as_deref() == Some(wd.nodename()) && l.epoch > rt.epoch {
            return Err(VmError::LeaseArrived {
                jname: j.clone(),
                node: wd.nodename().to_owned(),
                epoch: l.epoch,
            }
            .into());
        }
    }
    quit_and_teardown(wd, j, &rt, HookPhase::MigrateIn)?;
    Ok(true)
}

/// Tell the QEMU of `rt` to quit (a paused or migrated-away one never
/// powers down), wait for it, and tear down, `mnt_stop` told `phase`.
fn quit_and_teardown(wd: &Workdir, j: &Jname, rt: &Runtime, phase: HookPhase) -> Result<()> {
    if let Ok(mut q) = qmp(wd, j) {
        let _ = q.quit();
    }
    if let (Some(pid), Some(start)) = (rt.pid, rt.starttime) {
        ferry_core::sys::wait_gone(pid, Some(start), Duration::from_secs(5));
    }
    engine::teardown(&crate::VMS, wd, j, load(wd, j).ok().as_ref(), rt, phase)
}

// ---- the source ----

/// Send the running guest `j` to `uri`; `progress` sees the transfer every
/// `PROGRESS_EVERY`. Returns QEMU's figures once it completed (the
/// source QEMU is then stopped for good, in `postmigrate`). A transfer
/// that fails or times out is cancelled, and the guest runs on here.
pub fn outgoing(
    wd: &Workdir,
    j: &Jname,
    uri: &str,
    t: &Transfer,
    progress: &mut dyn FnMut(&MigrationInfo),
) -> Result<MigrationInfo> {
    let mut q = qmp(wd, j)?;
    let failed = |e: QmpError| qmp_failed(j, e);
    // With the return path, "completed" means the destination loaded the
    // whole state: a destination that fails to load it fails the
    // migration here, before the lease could move.
    q.set_migrate_capabilities(&[
        ("events", true),
        ("auto-converge", true),
        ("return-path", true),
    ])
    .map_err(failed)?;
    let bandwidth = if t.bandwidth == 0 {
        UNLIMITED
    } else {
        t.bandwidth
    };
    let downtime = u64::try_from(t.downtime.as_millis()).unwrap_or(u64::MAX);
    q.set_migrate_parameters(json!({"downtime-limit": downtime, "max-bandwidth": bandwidth}))
        .map_err(failed)?;
    q.migrate(uri).map_err(failed)?;
    let until = Instant::now() + t.timeout;
    let (mut sent, mut moved) = (0u64, Instant::now());
    let end = |d: &Value| {
        matches!(
            d.get("status").and_then(Value::as_str),
            Some("completed" | "failed" | "cancelled")
        )
    };
    loop {
        match q.wait_event_where("MIGRATION", PROGRESS_EVERY, end) {
            Ok(_) => break,
            Err(QmpError::Timeout(_)) => {}
            Err(e) => return Err(failed(e)),
        }
        let info = q.query_migrate().map_err(failed)?;
        if info.is_finished() {
            break;
        }
        progress(&info);
        let now = info.transferred.unwrap_or(0);
        if now != sent {
            (sent, moved) = (now, Instant::now());
        } else if moved.elapsed() >= STALL_AFTER {
            let _ = q.execute("migrate_cancel", None);
            return Err(VmError::Stalled {
                jname: j.clone(),
                secs: STALL_AFTER.as_secs(),
            }
            .into());
        }
        if Instant::now() >= until {
            let _ = q.execute("migrate_cancel", None);
            return Err(VmError::TransferTimedOut {
                jname: j.clone(),
                secs: t.timeout.as_secs(),
            }
            .into());
        }
    }
    let info = q.query_migrate().map_err(failed)?;
    match info.status.as_str() {
        "completed" => Ok(info),
        s => Err(VmError::TransferEnded {
            jname: j.clone(),
            status: s.to_owned(),
            why: info
                .error_desc
                .clone()
                .unwrap_or_else(|| "no reason given".into()),
        }
        .into()),
    }
}

/// Before the lease moved: make sure the guest runs here again (a transfer
/// still going is cancelled; a completed one is continued from).
pub fn outgoing_undo(wd: &Workdir, j: &Jname) -> Result<()> {
    let mut q = qmp(wd, j)?;
    let info = q.query_migrate().map_err(|e| qmp_failed(j, e))?;
    if !info.is_finished() && info.status != "none" {
        let _ = q.execute("migrate_cancel", None);
        let until = Instant::now() + Duration::from_secs(30);
        while !q
            .query_migrate()
            .map_err(|e| qmp_failed(j, e))?
            .is_finished()
            && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let s = status(&mut q, j)?;
    if matches!(s.as_str(), "postmigrate" | "paused" | "finish-migrate") {
        q.cont().map_err(|e| qmp_failed(j, e))?;
    }
    let s = wait_status(&mut q, j, &["running"], Duration::from_secs(10))?;
    if s != "running" {
        return Err(VmError::NotRunningAgain {
            jname: j.clone(),
            status: s,
        }
        .into());
    }
    Ok(())
}

/// After the lease moved: end the source QEMU (stopped since the transfer
/// completed) and tear down here, `mnt_stop` in phase `migrate-out`.
pub fn outgoing_finish(wd: &Workdir, j: &Jname) -> Result<()> {
    match runtime::read(wd, j)? {
        Some(rt) => quit_and_teardown(wd, j, &rt, HookPhase::MigrateOut),
        None => Ok(()),
    }
}
