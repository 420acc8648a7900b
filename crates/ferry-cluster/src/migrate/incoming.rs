//! The destination's side of a live migration: the answers to the
//! `migrate-*` requests the source's `bmigrate` sends, each handled at once
//! by the daemon's router, under the env's lock (not at the same time as
//! the daemon's own recovery of that env).

use std::net::{IpAddr, UdpSocket};
use std::time::{Duration, Instant};

use ferry_broker::BrokerUri;
use ferry_core::envdef::HookCtx;
use ferry_core::hook::{HookKind, Phase as HookPhase};
use ferry_core::lock::EnvLock;
use ferry_core::registry::Registry;
use ferry_core::runtime::{self, Phase};
use ferry_core::{lease, Error, Jname, Result, Workdir};
use ferry_vm::migrate as engine;

use super::{MoveError, MAX_VERIFY_MS};
use crate::context::error_chain;
use crate::rpc::{MigrateAbort, MigrateCheck, MigrateCommit, MigratePrepare, NodeReply};

/// Memory kept free on the destination besides the guest's.
const MEM_MARGIN_MIB: u64 = 64;

fn named(jname: &str) -> Result<Jname> {
    Jname::new(jname).map_err(|e| Error::bad_value("jname", jname, e.to_string()))
}

/// `migrate-check`: every reason this node cannot take the VM.
pub fn check(wd: &Workdir, m: &MigrateCheck) -> Result<NodeReply> {
    let j = named(&m.jname)?;
    let reg = Registry::open(&wd.db_dir())?;
    let _lock = EnvLock::acquire(wd, &j)?;
    Ok(NodeReply::MigrateCheck {
        problems: check_here(wd, &reg, &j, m),
    })
}

/// `migrate-prepare`: the incoming QEMU, paused, on a free port of this
/// node's address towards the broker. Checked just before by
/// `migrate-check`; what could change since (registered, running here)
/// the engine refuses itself.
pub fn prepare(wd: &Workdir, broker: &BrokerUri, m: &MigratePrepare) -> Result<NodeReply> {
    let j = named(&m.jname)?;
    let reg = Registry::open(&wd.db_dir())?;
    let _lock = EnvLock::acquire(wd, &j)?;
    let addr = address_towards(broker)?;
    let uri = engine::incoming(wd, &reg, &j, addr, &m.cpu)?;
    Ok(NodeReply::MigratePrepare { uri })
}

/// `migrate-commit`: resume the guest (the lease is here now), watch it
/// for `verify_ms`, and say how it went. Idempotent: a guest resumed
/// already (by this node's daemon) is watched and reported the same way.
pub fn commit(wd: &Workdir, m: &MigrateCommit) -> Result<NodeReply> {
    let j = named(&m.jname)?;
    let reg = Registry::open(&wd.db_dir())?;
    let _lock = EnvLock::acquire(wd, &j)?;
    let c = engine::incoming_commit(wd, &reg, &j)?;
    let answered = Instant::now();
    // Committed: what the watch finds is reported, not refused (the guest
    // runs here now, whatever state it is in).
    let window = Duration::from_millis(m.verify_ms.min(MAX_VERIFY_MS));
    let fault = ferry_vm::integrity::verify_resumed(wd, &j, c.console_from, window)
        .err()
        .map(|e| error_chain(&e));
    if let Some(f) = &fault {
        tracing::error!(jname = %j, fault = %f, "the guest is not healthy after the move");
    }
    // None: resumed before this request (by the daemon itself).
    let resumed_us_ago = c
        .resumed_ago
        .map(|r| (r + answered.elapsed()).as_micros() as u64);
    Ok(NodeReply::MigrateCommit {
        fault,
        resumed_us_ago,
    })
}

/// `migrate-abort`: throw the incoming QEMU away, if there is one.
pub fn abort(wd: &Workdir, m: &MigrateAbort) -> Result<NodeReply> {
    let j = named(&m.jname)?;
    let _lock = EnvLock::acquire(wd, &j)?;
    Ok(NodeReply::MigrateAbort {
        aborted: engine::incoming_abort(wd, &j)?,
    })
}

/// Why this node cannot take `j` as `m` describes it (empty: it can).
fn check_here(wd: &Workdir, reg: &Registry, j: &Jname, m: &MigrateCheck) -> Vec<String> {
    let mut p = Vec::new();
    if m.arch != std::env::consts::ARCH {
        p.push(format!(
            "architecture {} here, {} there",
            std::env::consts::ARCH,
            m.arch
        ));
    }
    if matches!(reg.get(j), Ok(Some(_))) {
        p.push(format!("{j} is registered here"));
    }
    match runtime::read(wd, j) {
        Ok(Some(rt)) if rt.phase != Phase::Incoming => {
            p.push(format!(
                "{j} has a runtime record here (running or not torn down)"
            ));
        }
        _ => {}
    }
    match wd.dir_ids() {
        Ok(ids) => {
            for ((dir, here), (_, there)) in ids.iter().zip(&m.dir_ids) {
                if here != there {
                    p.push(format!(
                        "{dir} is another file system here (dir.id {here}, not {there})"
                    ));
                }
            }
            if ids.len() != m.dir_ids.len() {
                p.push("the shared dirs differ".into());
            }
        }
        Err(e) => p.push(error_chain(&e)),
    }
    let cfg = match ferry_vm::load(wd, j) {
        Ok(cfg) => cfg,
        Err(e) => {
            p.push(format!(
                "cannot read its definition here: {}",
                error_chain(&e)
            ));
            return p;
        }
    };
    let (machine, model) = (&cfg.args.vm_machine.0, &cfg.args.vm_cpu_model.0);
    match ferry_vm::qemu::accel(wd, reg, model) {
        Ok(accel) if accel != m.accel => p.push(format!(
            "it runs under {} there, and would under {accel} here",
            m.accel
        )),
        // Every CPU flag, then machine type and CPU at once: would QEMU
        // here start it? (Without a CPU the source has refused already.)
        Ok(accel) => {
            if !m.force {
                match ferry_vm::integrity::binary_corrupts(wd, &accel) {
                    Ok(None) => {}
                    Ok(Some(why)) => p.push(why),
                    Err(e) => p.push(error_chain(&e)),
                }
            }
            if let Some(Err(e)) = m
                .cpu
                .as_ref()
                .map(|c| ferry_vm::cpu::runs_here(wd, machine, &accel, c))
            {
                p.push(error_chain(&e));
            }
        }
        Err(e) => p.push(error_chain(&e)),
    }
    match mem_available_mib() {
        Some(free) if free < m.ram_mib + MEM_MARGIN_MIB => p.push(format!(
            "{free} MiB free here, {} MiB needed",
            m.ram_mib + MEM_MARGIN_MIB
        )),
        Some(_) => {}
        None => p.push("cannot read free memory here".into()),
    }
    let epoch = lease::read(wd, j).ok().flatten().map_or(0, |l| l.epoch);
    let ctx = HookCtx {
        wd,
        jname: j,
        epoch,
    };
    if let Err(e) = cfg.hooks.check().and_then(|()| {
        cfg.hooks
            .dry_run(&ctx, HookKind::MntStart, HookPhase::MigrateIn)
    }) {
        p.push(format!("mnt_start dry run: {}", error_chain(&e)));
    }
    p
}

fn mem_available_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib >> 10)
}

/// This node's address on the way to the broker: the cluster network's,
/// which the source can reach. (A connected UDP socket sends nothing.)
fn address_towards(broker: &BrokerUri) -> Result<IpAddr> {
    let no_route = |source| MoveError::NoRoute {
        broker: broker.to_string(),
        source,
    };
    let target = std::net::ToSocketAddrs::to_socket_addrs(&(broker.host.as_str(), broker.port))
        .map_err(no_route)?
        .next()
        .ok_or_else(|| no_route(std::io::ErrorKind::NotFound.into()))?;
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let s = UdpSocket::bind(bind).map_err(no_route)?;
    s.connect(target).map_err(no_route)?;
    Ok(s.local_addr().map_err(no_route)?.ip())
}
