//! `bmigrate`: a running VM moved to another node live (DESIGN §7).
//!
//! The source drives; the destination's daemon answers `migrate-*`
//! requests on its node tube, each handled at once, in the daemon:
//!
//! | step | where | what |
//! |---|---|---|
//! | check | both | every refusal at once: here (running, owned here, the node known and alive, a broker), there (`migrate-check`: arch, accelerator, a QEMU there starting the VM's machine type and CPU model with `enforce`, free memory, `dir.id`s, not registered or running there, `mnt_start` dry run) |
//! | prepare | there | `migrate-prepare`: `mnt_start` (`migrate-in`), QEMU paused with `-incoming` on a free port of its address towards the broker |
//! | transfer | here | QMP `migrate` with `downtime-limit`, auto-converge, `max-bandwidth`; progress |
//! | hand over | shared | the lease moves to the destination, epoch + 1: the commit point |
//! | commit | there | `migrate-commit`: `cont`, runtime record running, registry row |
//! | finish | here | the source QEMU quits, `mnt_stop` (`migrate-out`), the row goes |
//!
//! A failure before the hand-over aborts the destination (`migrate-abort`)
//! and continues the guest here. A crash of `bmigrate` is finished by the
//! daemons (see [`super::recovery`]): a source whose migration has no live
//! `bmigrate` undoes it while the lease is still its own; a destination
//! whose lease arrived commits by itself.

use std::time::{Duration, Instant};

use ferry_api::command::BmigrateArgs;
use ferry_api::{Outcome, Progress};
use ferry_core::lock::EnvLock;
use ferry_core::registry::Registry;
use ferry_core::runtime::{self, Outbound};
use ferry_core::{lease, sys, EnvKind, EnvState, Error, Jname, Result, Workdir};
use ferry_vm::migrate::{self as engine, Transfer};
use ferry_vm::qmp::MigrationInfo;

use super::{MoveError, MAX_VERIFY_MS};
use crate::context::{error_chain, Context};
use crate::rpc::{
    self, Asker, MigrateAbort, MigrateCheck, MigrateCommit, MigratePrepare, NodeReply, NodeRequest,
    RpcError,
};

/// How long a prepare may take there (QEMU start, `mnt_start`).
const PREPARE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the other requests may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an abort is waited for (the destination may be unreachable:
/// its daemon aborts by itself once the stream is gone).
pub(super) const ABORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a refused commit waits before it is asked again.
const COMMIT_AGAIN_AFTER: Duration = Duration::from_millis(200);

pub fn bmigrate(ctx: &Context, a: &BmigrateArgs) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    let (j, node) = (&a.jname, &a.node);
    let lease_time = Duration::from_secs(a.lease_time.max(1));
    if a.verify_ms > MAX_VERIFY_MS {
        return Err(Error::bad_value(
            "verify_ms",
            &a.verify_ms.to_string(),
            format!("at most {MAX_VERIFY_MS}"),
        ));
    }
    let mut problems = super::target_problems(&wd, &reg, node, lease_time)?;
    let mut epoch = None;
    match reg.get(j)? {
        None => problems.push(format!("{j} is not registered here")),
        Some(row) if row.kind != EnvKind::Vm => {
            problems.push(format!("{j} is a jail: use jmigrate"));
        }
        Some(_) => {
            if ferry_core::engine::state(&wd, j)? != EnvState::Running {
                problems.push(format!(
                    "{j} is not running here (start it, or move it cold)"
                ));
            }
            match lease::read(&wd, j)? {
                Some(l) if l.node.as_deref() == Some(wd.nodename()) => epoch = Some(l.epoch),
                l => problems.push(format!(
                    "{j} is not owned here (lease: {})",
                    l.and_then(|l| l.node).unwrap_or_else(|| "none".into())
                )),
            }
        }
    }
    let refuse = |problems: Vec<String>| {
        Err(MoveError::Refused {
            verb: "bmigrate",
            jname: j.clone(),
            node: node.clone(),
            problems,
        }
        .into())
    };
    let Some(epoch) = epoch.filter(|_| problems.is_empty() || askable(&wd, &reg, node)) else {
        return refuse(problems);
    };
    // The destination's own checks, also when this node already found a
    // reason to refuse: every reason at once. A node not seen alive gets
    // less time to answer.
    let mut check = facts(&wd, j)?;
    check.force = a.force;
    if !a.force {
        match ferry_vm::integrity::running_corrupts(&wd, j, &check.accel) {
            Ok(None) => {}
            Ok(Some(why)) => problems.push(format!("here: {why}")),
            Err(e) => problems.push(error_chain(&e)),
        }
    }
    match ferry_vm::cpu::of_running(&wd, j) {
        Ok(cpu) => check.cpu = Some(cpu),
        Err(e) => problems.push(format!(
            "cannot read the guest's CPU here: {}",
            error_chain(&e)
        )),
    }
    let wait = if problems.is_empty() {
        ASK_TIMEOUT
    } else {
        ABORT_TIMEOUT
    };
    match Asker::ask_once(&wd, node, NodeRequest::MigrateCheck(check.clone()), wait) {
        Ok(NodeReply::MigrateCheck { problems: there }) => {
            problems.extend(there.into_iter().map(|p| format!("{node}: {p}")));
        }
        Ok(other) => problems.push(unexpected(node, "migrate-check", &other).to_string()),
        Err(e) => problems.push(error_chain(&e)),
    }
    if !problems.is_empty() {
        return refuse(problems);
    }
    if a.check {
        return Ok(Outcome::message(format!(
            "{j} can move to {node}: every precheck passed"
        )));
    }
    let Some(cpu) = check.cpu else {
        return refuse(vec!["the guest's CPU is not known here".into()]);
    };
    let plan = Plan {
        j,
        node,
        epoch,
        prepare: MigratePrepare {
            jname: j.to_string(),
            cpu,
        },
        verify_ms: a.verify_ms,
        transfer: Transfer {
            downtime: Duration::from_millis(a.downtime_ms),
            bandwidth: a.bandwidth.saturating_mul(1 << 20),
            timeout: Duration::from_secs(a.timeout.max(1)),
        },
    };
    let _lock = EnvLock::acquire(&wd, j)?;
    move_live(ctx, &wd, &reg, &plan)
}

fn unexpected(node: &Jname, asked: &'static str, got: &NodeReply) -> RpcError {
    RpcError::Unexpected {
        node: node.to_string(),
        asked,
        got: got.kind().to_owned(),
    }
}

/// Whether `node` can be asked at all: another node, added here, and a
/// broker to ask it through.
fn askable(wd: &Workdir, reg: &Registry, node: &Jname) -> bool {
    node.as_str() != wd.nodename()
        && matches!(reg.node(node), Ok(Some(_)))
        && rpc::required_uri(wd).is_ok()
}

/// What the destination must offer, as this node sees the running guest.
fn facts(wd: &Workdir, j: &Jname) -> Result<MigrateCheck> {
    let cfg = ferry_vm::load(wd, j)?;
    let rt =
        runtime::read(wd, j)?.ok_or_else(|| Error::Failed(format!("{j} has no runtime record")))?;
    let accel = rt.accel.unwrap_or_else(|| "tcg".into());
    Ok(MigrateCheck {
        jname: j.to_string(),
        arch: std::env::consts::ARCH.to_owned(),
        accel,
        ram_mib: ferry_vm::config::ram_mib(&cfg.args),
        dir_ids: wd.dir_ids()?,
        ..MigrateCheck::default()
    })
}

/// A move the prechecks passed.
struct Plan<'a> {
    j: &'a Jname,
    node: &'a Jname,
    /// The lease's epoch here, which the hand-over moves on.
    epoch: u64,
    prepare: MigratePrepare,
    verify_ms: u64,
    transfer: Transfer,
}

/// Everything after the prechecks, under the env's lock. Progress goes to
/// `ctx`'s listener as typed events (a bar on the command line's terminal,
/// the broker agent's progress replies).
fn move_live(ctx: &Context, wd: &Workdir, reg: &Registry, plan: &Plan<'_>) -> Result<Outcome> {
    let (j, node) = (plan.j, plan.node);
    let t0 = Instant::now();
    let me = std::process::id() as i32;
    let start = sys::proc_stat(me).map_or(0, |p| p.starttime);
    set_outbound(
        wd,
        j,
        Some(Outbound {
            node: node.to_string(),
            pid: me,
            start,
        }),
    )?;
    let undo = |why: Error| -> Result<Outcome> {
        let abort = NodeRequest::MigrateAbort(MigrateAbort {
            jname: j.to_string(),
        });
        let _ = Asker::ask_once(wd, node, abort, ABORT_TIMEOUT);
        let undone = engine::outgoing_undo(wd, j);
        let _ = set_outbound(wd, j, None);
        Err(match undone {
            Ok(()) => MoveError::RunsHere {
                jname: j.clone(),
                cause: Box::new(why),
            },
            Err(e) => MoveError::Stuck {
                jname: j.clone(),
                why: error_chain(&why),
                cause: Box::new(e),
            },
        }
        .into())
    };
    // One connection from the prepare to the commit: the commit, in the
    // guest's downtime, is then one put and one reserve.
    let mut asker = match Asker::open(wd, node, ASK_TIMEOUT) {
        Ok(a) => a,
        Err(e) => return undo(e),
    };
    let prepared = asker.ask(
        NodeRequest::MigratePrepare(plan.prepare.clone()),
        PREPARE_TIMEOUT.min(plan.transfer.timeout),
    );
    let uri = match prepared {
        Ok(NodeReply::MigratePrepare { uri }) => uri,
        Ok(other) => return undo(unexpected(node, "migrate-prepare", &other).into()),
        Err(e) => {
            return undo(
                MoveError::NotPrepared {
                    node: node.clone(),
                    cause: e,
                }
                .into(),
            )
        }
    };
    ctx.step(5, format!("{node} waits for {j} at {uri}"));
    let mut report = |i: &MigrationInfo| {
        let total = i.total.unwrap_or(0).max(1);
        let sent = i.transferred.unwrap_or(0).min(total);
        ctx.progress(Progress::Transfer {
            percent: (5 + sent * 85 / total) as u8,
            sent,
            remaining: i.remaining.unwrap_or(0),
            total,
            dirty_pages_rate: i.dirty_pages_rate.unwrap_or(0),
            expected_downtime_ms: i.expected_downtime_ms.unwrap_or(0),
        });
    };
    let info = match engine::outgoing(wd, j, &uri, &plan.transfer, &mut report) {
        Ok(info) => info,
        Err(e) => return undo(e),
    };
    let completed = Instant::now();
    ferry_core::sys::crashpoint("bmigrate", 1);
    if let Err(e) = lease::hand_over(wd, j, plan.epoch, node.as_str()) {
        return undo(e);
    }
    ctx.step(95, format!("{j} handed over to {node}"));
    ferry_core::sys::crashpoint("bmigrate", 2);
    let committed = commit(&mut asker, j, plan.verify_ms);
    let waited = completed.elapsed();
    // Until the guest resumed there; not known when the destination's
    // daemon had resumed it before the commit arrived, or when no answer
    // came.
    let mut handover = None;
    let mut fault = None;
    let commit_note = match committed {
        Ok(NodeReply::MigrateCommit {
            fault: f,
            resumed_us_ago,
        }) => {
            fault = f;
            // The answer's way back stays counted: the figure errs on the
            // long side.
            handover = resumed_us_ago.map(|us| waited.saturating_sub(Duration::from_micros(us)));
            String::new()
        }
        Ok(other) => format!(
            "; {node} did not confirm the start ({}), its daemon starts it",
            unexpected(node, "migrate-commit", &other)
        ),
        Err(e) => format!(
            "; {node} did not confirm the start ({}), its daemon starts it",
            error_chain(&e)
        ),
    };
    engine::outgoing_finish(wd, j)?;
    reg.remove(j)?;
    let qemu_downtime = info.downtime_ms.unwrap_or(0);
    if let Some(fault) = fault {
        tracing::error!(event = "migrated-faulty", jname = %j, to = %node, %fault, "the guest is not healthy after the move");
        return Err(MoveError::Unhealthy {
            jname: j.clone(),
            node: node.clone(),
            fault,
        }
        .into());
    }
    let downtime = handover.map(|h| Duration::from_millis(qemu_downtime) + h);
    tracing::info!(
        event = "migrated",
        jname = %j,
        to = %node,
        total_ms = t0.elapsed().as_millis() as u64,
        downtime_ms = downtime.map(|d| d.as_millis() as u64),
        "live migration done"
    );
    let downtime = match (downtime, handover) {
        (Some(d), Some(h)) => format!(
            "guest downtime {} ms (QEMU {qemu_downtime} ms + hand-over {} ms)",
            d.as_millis(),
            h.as_millis()
        ),
        _ => format!(
            "guest downtime not known here (QEMU {qemu_downtime} ms, then {node}'s daemon resumed it)"
        ),
    };
    Ok(Outcome::message(format!(
        "{j} live-migrated to {node} in {} ms; {downtime}; {} MiB sent{commit_note}",
        t0.elapsed().as_millis(),
        info.transferred.unwrap_or(0) >> 20
    )))
}

/// Ask the destination to resume the guest. The commit is idempotent: a
/// refusal (its daemon busy with the same env, say) is asked again,
/// within [`ASK_TIMEOUT`]. It answers once it watched the guest for
/// `verify_ms`.
fn commit(asker: &mut Asker, j: &Jname, verify_ms: u64) -> Result<NodeReply, RpcError> {
    let body = NodeRequest::MigrateCommit(MigrateCommit {
        jname: j.to_string(),
        verify_ms,
    });
    let limit = ASK_TIMEOUT + Duration::from_millis(verify_ms);
    let asked = Instant::now();
    let mut committed = asker.ask(body.clone(), limit);
    while matches!(&committed, Err(RpcError::Refused { .. }))
        && asked.elapsed() + COMMIT_AGAIN_AFTER < limit
    {
        std::thread::sleep(COMMIT_AGAIN_AFTER);
        let left = limit.saturating_sub(asked.elapsed());
        committed = asker.ask(body.clone(), left);
    }
    committed
}

/// Record (or clear) the move in the VM's runtime record: the daemon's
/// recovery finishes it if this process dies.
pub(super) fn set_outbound(wd: &Workdir, j: &Jname, ob: Option<Outbound>) -> Result<()> {
    let Some(mut rt) = runtime::read(wd, j)? else {
        return Ok(());
    };
    rt.migration = ob;
    runtime::write(wd, j, &rt)
}
