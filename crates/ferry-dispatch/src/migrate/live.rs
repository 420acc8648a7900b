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
//! daemons (see [`recover`]): a source whose migration has no live
//! `bmigrate` undoes it while the lease is still its own; a destination
//! whose lease arrived commits by itself.

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, UdpSocket};
use std::time::{Duration, Instant};

use ferry_api::command::BmigrateArgs;
use ferry_api::Outcome;
use ferry_broker::BrokerUri;
use ferry_core::envdef::HookCtx;
use ferry_core::hook::{HookKind, Phase as HookPhase};
use ferry_core::lock::EnvLock;
use ferry_core::registry::Registry;
use ferry_core::runtime::{self, Outbound, Phase};
use ferry_core::{lease, sys, EnvKind, EnvState, Error, Jname, Result, Workdir};
use ferry_vm::cpu::GuestCpu;
use ferry_vm::migrate::{self as engine, Transfer};
use ferry_vm::qmp::MigrationInfo;
use serde::{Deserialize, Serialize};

use crate::cluster::{ask_with, Answer, Asker, Request};
use crate::Context;

/// What a `migrate-*` request is about: the VM, and for `migrate-check`
/// what it needs of the destination.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    pub jname: String,
    #[serde(default)]
    pub arch: String,
    #[serde(default)]
    pub accel: String,
    #[serde(default)]
    pub ram_mib: u64,
    #[serde(default)]
    pub dir_ids: Vec<(String, String)>,
    /// The guest's CPU as its QEMU expands it (checked there flag by flag,
    /// and the incoming QEMU gets exactly it).
    #[serde(default)]
    pub cpu: Option<GuestCpu>,
    /// Move even with a QEMU known to corrupt guests (`force=1`).
    #[serde(default)]
    pub force: bool,
    /// How long the destination watches the guest after it resumed it.
    #[serde(default)]
    pub verify_ms: u64,
}

/// What the destination answers to a `migrate-*` request: the fields of
/// the request's kind are set, the others left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateAnswer {
    /// `migrate-check`: why it cannot take the VM (empty: it can).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<String>>,
    /// `migrate-prepare`: where the incoming QEMU listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// `migrate-commit`: whether the guest runs healthy there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
    /// `migrate-commit`: what the watch of the guest found wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    /// `migrate-commit`: how long ago the guest was resumed there (absent:
    /// before this request, by its daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_us_ago: Option<u64>,
    /// `migrate-abort`: whether there was an incoming QEMU to throw away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<bool>,
}

/// How long a prepare may take there (QEMU start, `mnt_start`).
const PREPARE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the other requests may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an abort is waited for (the destination may be unreachable:
/// its daemon aborts by itself once the stream is gone).
const ABORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a refused commit waits before it is asked again.
const COMMIT_AGAIN_AFTER: Duration = Duration::from_millis(200);
/// How long the daemon watches a guest it committed itself.
const RECOVERY_VERIFY: Duration = Duration::from_secs(1);
/// The longest the destination watches a moved guest (`verify_ms=`).
const MAX_VERIFY_MS: u64 = 60_000;
/// Memory kept free on the destination besides the guest's.
const MEM_MARGIN_MIB: u64 = 64;

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
            if ferry_vm::state(&wd, j)? != EnvState::Running {
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
        Err(Error::Refused(format!(
            "bmigrate {j} to {node} refused, nothing moved: {}",
            problems.join("; ")
        )))
    };
    let Some(epoch) = epoch.filter(|_| problems.is_empty() || askable(&wd, &reg, node)) else {
        return refuse(problems);
    };
    // The destination's own checks, also when this node already found a
    // reason to refuse: every reason at once. A node not seen alive gets
    // less time to answer.
    let mut req = facts(&wd, j)?;
    req.force = a.force;
    req.verify_ms = a.verify_ms;
    if !a.force {
        match ferry_vm::integrity::running_corrupts(&wd, j, &req.accel) {
            Ok(None) => {}
            Ok(Some(why)) => problems.push(format!("here: {why}")),
            Err(e) => problems.push(crate::error_chain(&e)),
        }
    }
    match ferry_vm::cpu::of_running(&wd, j) {
        Ok(cpu) => req.cpu = Some(cpu),
        Err(e) => problems.push(format!(
            "cannot read the guest's CPU here: {}",
            crate::error_chain(&e)
        )),
    }
    let wait = if problems.is_empty() {
        ASK_TIMEOUT
    } else {
        ABORT_TIMEOUT
    };
    match ask_with(&wd, node, "migrate-check", Some(req.clone()), wait) {
        Ok(checked) => {
            if checked.code != 0 {
                problems.push(format!("{node}: {}", checked.message));
            }
            problems.extend(
                checked
                    .migrate
                    .and_then(|m| m.problems)
                    .into_iter()
                    .flatten()
                    .map(|p| format!("{node}: {p}")),
            );
        }
        Err(e) => problems.push(crate::error_chain(&e)),
    }
    if !problems.is_empty() {
        return refuse(problems);
    }
    if a.check {
        return Ok(Outcome::message(format!(
            "{j} can move to {node}: every precheck passed"
        )));
    }
    let transfer = Transfer {
        downtime: Duration::from_millis(a.downtime_ms),
        bandwidth: a.bandwidth.saturating_mul(1 << 20),
        timeout: Duration::from_secs(a.timeout.max(1)),
    };
    let _lock = EnvLock::acquire(&wd, j)?;
    move_live(ctx, &wd, &reg, j, node, epoch, &req, &transfer)
}

/// Whether `node` can be asked at all: another node, added here, and a
/// broker to ask it through.
fn askable(wd: &Workdir, reg: &Registry, node: &Jname) -> bool {
    node.as_str() != wd.nodename()
        && matches!(reg.node(node), Ok(Some(_)))
        && crate::cluster::required_uri(wd).is_ok()
}

/// What the destination must offer, as this node sees the running guest.
fn facts(wd: &Workdir, j: &Jname) -> Result<MigrateRequest> {
    let cfg = ferry_vm::load(wd, j)?;
    let rt =
        runtime::read(wd, j)?.ok_or_else(|| Error::Failed(format!("{j} has no runtime record")))?;
    let accel = rt.accel.unwrap_or_else(|| "tcg".into());
    Ok(MigrateRequest {
        jname: j.to_string(),
        arch: std::env::consts::ARCH.to_owned(),
        accel,
        ram_mib: ferry_vm::config::ram_mib(&cfg.args),
        dir_ids: wd.dir_ids()?,
        ..MigrateRequest::default()
    })
}

/// Everything after the prechecks, under the env's lock. Progress goes to
/// a terminal as a bar, and to `ctx`'s listener (the broker agent's
/// progress replies).
#[allow(clippy::too_many_arguments)]
fn move_live(
    ctx: &Context,
    wd: &Workdir,
    reg: &Registry,
    j: &Jname,
    node: &Jname,
    epoch: u64,
    req: &MigrateRequest,
    transfer: &Transfer,
) -> Result<Outcome> {
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
        let _ = ask_with(wd, node, "migrate-abort", Some(named(j)), ABORT_TIMEOUT);
        let undone = engine::outgoing_undo(wd, j);
        let _ = set_outbound(wd, j, None);
        match undone {
            Ok(()) => Err(Error::Failed(format!(
                "{j} not moved, it runs here: {}",
                crate::error_chain(&why)
            ))),
            Err(e) => Err(Error::Failed(format!(
                "{j} not moved ({}), and it could not be continued here: {}",
                crate::error_chain(&why),
                crate::error_chain(&e)
            ))),
        }
    };
    // One connection from the prepare to the commit: the commit, in the
    // guest's downtime, is then one put and one reserve.
    let mut asker = match Asker::open(wd, node, ASK_TIMEOUT) {
        Ok(a) => a,
        Err(e) => return undo(e),
    };
    let prepared = asker.ask(
        "migrate-prepare",
        Some(req.clone()),
        PREPARE_TIMEOUT.min(transfer.timeout),
    );
    let uri = match prepared {
        Ok(a) if a.code == 0 => a.migrate.and_then(|m| m.uri),
        Ok(a) => {
            return undo(Error::Failed(format!(
                "{node} could not prepare: {}",
                a.message
            )))
        }
        Err(e) => return undo(e),
    };
    let Some(uri) = uri else {
        return undo(Error::Failed(format!(
            "{node} prepared no address to send to"
        )));
    };
    ctx.progress(5, &format!("{node} waits for {j} at {uri}"));
    let mut bar = Progress::new();
    let mut report = |i: &MigrationInfo| {
        bar.show(i);
        let total = i.total.unwrap_or(0).max(1);
        let sent = i.transferred.unwrap_or(0).min(total);
        ctx.progress(
            (5 + sent * 85 / total) as u8,
            &format!(
                "{} MiB sent, {} MiB left, dirty {} pages/s, expected downtime {} ms",
                sent >> 20,
                i.remaining.unwrap_or(0) >> 20,
                i.dirty_pages_rate.unwrap_or(0),
                i.expected_downtime_ms.unwrap_or(0)
            ),
        );
    };
    let info = match engine::outgoing(wd, j, &uri, transfer, &mut report) {
        Ok(info) => info,
        Err(e) => {
            bar.done();
            return undo(e);
        }
    };
    bar.done();
    let completed = Instant::now();
    ferry_core::sys::crashpoint("bmigrate", 1);
    if let Err(e) = lease::hand_over(wd, j, epoch, node.as_str()) {
        return undo(e);
    }
    ctx.progress(95, &format!("{j} handed over to {node}"));
    ferry_core::sys::crashpoint("bmigrate", 2);
    // The commit is idempotent: a refusal (the destination's daemon busy
    // with the same env, say) is asked again, within ASK_TIMEOUT.
    // It answers once it watched the guest for verify_ms.
    let commit = MigrateRequest {
        verify_ms: req.verify_ms,
        ..named(j)
    };
    let limit = ASK_TIMEOUT + Duration::from_millis(req.verify_ms);
    let asked = Instant::now();
    let mut committed = asker.ask("migrate-commit", Some(commit.clone()), limit);
    while matches!(&committed, Ok(a) if a.code != 0) && asked.elapsed() + COMMIT_AGAIN_AFTER < limit
    {
        std::thread::sleep(COMMIT_AGAIN_AFTER);
        let left = limit.saturating_sub(asked.elapsed());
        committed = asker.ask("migrate-commit", Some(commit.clone()), left);
    }
    let waited = completed.elapsed();
    // Until the guest resumed there; not known when the destination's
    // daemon had resumed it before the commit arrived, or when no answer
    // came.
    let mut handover = None;
    let mut fault = None;
    let commit_note = match committed {
        Ok(a) if a.code == 0 => {
            let m = a.migrate.unwrap_or_default();
            fault = m.fault;
            // The answer's way back stays counted: the figure errs on the
            // long side.
            handover = m
                .resumed_us_ago
                .map(|us| waited.saturating_sub(Duration::from_micros(us)));
            String::new()
        }
        Ok(a) => format!(
            "; {node} did not confirm the start ({}), its daemon starts it",
            a.message
        ),
        Err(e) => format!("; {node} did not confirm the start ({e}), its daemon starts it"),
    };
    engine::outgoing_finish(wd, j)?;
    reg.remove(j)?;
    let qemu_downtime = info.downtime_ms.unwrap_or(0);
    if let Some(fault) = fault {
        tracing::error!(event = "migrated-faulty", jname = %j, to = %node, %fault, "the guest is not healthy after the move");
        return Err(Error::Failed(format!(
            "{j} moved to {node}, but the guest is not healthy there: {fault}"
        )));
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

fn named(j: &Jname) -> MigrateRequest {
    MigrateRequest {
        jname: j.to_string(),
        ..MigrateRequest::default()
    }
}

fn set_outbound(wd: &Workdir, j: &Jname, ob: Option<Outbound>) -> Result<()> {
    let Some(mut rt) = runtime::read(wd, j)? else {
        return Ok(());
    };
    rt.migration = ob;
    runtime::write(wd, j, &rt)
}

/// A one-line progress bar on a terminal (stderr): sent, left, dirty
/// rate, expected downtime.
struct Progress {
    tty: bool,
    shown: bool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    fn show(&mut self, i: &MigrationInfo) {
        if !self.tty {
            return;
        }
        let mib = |b: Option<u64>| b.unwrap_or(0) >> 20;
        let total = i.total.unwrap_or(0).max(1);
        let done = (i.transferred.unwrap_or(0).min(total) * 30 / total) as usize;
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r[{}{}] {} MiB sent, {} MiB left, dirty {} pages/s, downtime ~{} ms   ",
            "#".repeat(done),
            " ".repeat(30 - done),
            mib(i.transferred),
            mib(i.remaining),
            i.dirty_pages_rate.unwrap_or(0),
            i.expected_downtime_ms.unwrap_or(0)
        );
        let _ = err.flush();
        self.shown = true;
    }

    fn done(&mut self) {
        if self.shown {
            eprintln!();
            self.shown = false;
        }
    }
}

// ---- the destination ----

/// Answer a `migrate-*` request on this node's tube.
pub fn answer(wd: &Workdir, broker: &BrokerUri, req: &Request) -> Answer {
    match handle(wd, broker, req) {
        Ok(v) => Answer {
            migrate: Some(v),
            ..Answer::to(&req.id)
        },
        Err(e) => {
            tracing::warn!(kind = %req.kind, error = %e, "migration request failed");
            Answer::error(&req.id, &e)
        }
    }
}

fn handle(wd: &Workdir, broker: &BrokerUri, req: &Request) -> Result<MigrateAnswer> {
    let Some(m) = &req.migrate else {
        return Err(Error::bad_value("migrate", "", "missing"));
    };
    let j = Jname::new(&m.jname).map_err(|e| Error::bad_value("jname", &m.jname, e.to_string()))?;
    let reg = Registry::open(&wd.db_dir())?;
    // Not with the daemon's own recovery of the same env.
    let _lock = EnvLock::acquire(wd, &j)?;
    match req.kind.as_str() {
        "migrate-check" => Ok(MigrateAnswer {
            problems: Some(check_here(wd, &reg, &j, m)),
            ..MigrateAnswer::default()
        }),
        "migrate-prepare" => {
            // Checked just before by migrate-check; what could change
            // since (registered, running here) the engine refuses itself.
            let cpu = m.cpu.as_ref().ok_or_else(|| no_cpu(&j))?;
            let addr = address_towards(broker)?;
            let uri = engine::incoming(wd, &reg, &j, addr, cpu)?;
            Ok(MigrateAnswer {
                uri: Some(uri),
                ..MigrateAnswer::default()
            })
        }
        "migrate-commit" => {
            let c = engine::incoming_commit(wd, &reg, &j)?;
            let answered = std::time::Instant::now();
            // Committed: what the watch finds is reported, not refused
            // (the guest runs here now, whatever state it is in).
            let window = Duration::from_millis(m.verify_ms.min(MAX_VERIFY_MS));
            let fault = ferry_vm::integrity::verify_resumed(wd, &j, c.console_from, window)
                .err()
                .map(|e| crate::error_chain(&e));
            if let Some(f) = &fault {
                tracing::error!(jname = %j, fault = %f, "the guest is not healthy after the move");
            }
            // None: resumed before this request (by the daemon itself).
            let resumed_ago = c
                .resumed_ago
                .map(|r| (r + answered.elapsed()).as_micros() as u64);
            Ok(MigrateAnswer {
                running: Some(fault.is_none()),
                fault,
                resumed_us_ago: resumed_ago,
                ..MigrateAnswer::default()
            })
        }
        "migrate-abort" => Ok(MigrateAnswer {
            aborted: Some(engine::incoming_abort(wd, &j)?),
            ..MigrateAnswer::default()
        }),
        other => Err(Error::bad_value("kind", other, "unknown migration request")),
    }
}

/// Why this node cannot take `j` as `m` describes it (empty: it can).
fn check_here(wd: &Workdir, reg: &Registry, j: &Jname, m: &MigrateRequest) -> Vec<String> {
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
        Err(e) => p.push(crate::error_chain(&e)),
    }
    let cfg = match ferry_vm::load(wd, j) {
        Ok(cfg) => cfg,
        Err(e) => {
            p.push(format!(
                "cannot read its definition here: {}",
                crate::error_chain(&e)
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
                    Err(e) => p.push(crate::error_chain(&e)),
                }
            }
            if let Some(Err(e)) = m
                .cpu
                .as_ref()
                .map(|c| ferry_vm::cpu::runs_here(wd, machine, &accel, c))
            {
                p.push(crate::error_chain(&e));
            }
        }
        Err(e) => p.push(crate::error_chain(&e)),
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
        p.push(format!("mnt_start dry run: {}", crate::error_chain(&e)));
    }
    p
}

fn no_cpu(j: &Jname) -> Error {
    Error::bad_value(
        "migrate",
        j.as_str(),
        "the request does not describe the guest's CPU (a ferry older than this node's?)",
    )
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
    let target = std::net::ToSocketAddrs::to_socket_addrs(&(broker.host.as_str(), broker.port))
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::Failed(format!("cannot resolve the broker {broker}")))?;
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let s = UdpSocket::bind(bind).map_err(|e| Error::Failed(format!("no local address: {e}")))?;
    s.connect(target)
        .map_err(|e| Error::Failed(format!("no route to the broker {broker}: {e}")))?;
    let ip = s
        .local_addr()
        .map_err(|e| Error::Failed(format!("no local address: {e}")))?
        .ip();
    Ok(ip)
}

// ---- after a crash ----

/// The daemon's part: finish live migrations whose `bmigrate` is gone. A
/// source VM whose lease is still this node's is continued here (the
/// destination aborted); one whose lease moved is committed there and
/// ended here; a destination whose lease arrived is committed; one whose
/// source is dead, or whose QEMU died, is aborted.
///
/// Each such env is watched by a thread of its own, which waits for the
/// env's lock: a `bmigrate` (or a prepare) in progress holds it, so the
/// heartbeat never waits for a migration, and a `bmigrate` that dies lets
/// its watcher act at once.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    watched: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<Jname>>>,
}

impl Recovery {
    /// Every beat: a watcher for each env of this node in a migration
    /// that has none yet.
    pub fn tick(&self, wd: &Workdir, lease_time: Duration) {
        let Ok(entries) = std::fs::read_dir(wd.root().join("jails")) else {
            return;
        };
        for e in entries.flatten() {
            let Some(j) = e.file_name().to_str().and_then(|n| Jname::new(n).ok()) else {
                continue;
            };
            let Ok(Some(rt)) = runtime::read(wd, &j) else {
                continue;
            };
            if rt.phase != Phase::Incoming && rt.migration.is_none() {
                continue;
            }
            let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
            if !watched.insert(j.clone()) {
                continue;
            }
            drop(watched);
            let (wd, set) = (wd.clone(), std::sync::Arc::clone(&self.watched));
            std::thread::spawn(move || {
                if let Err(e) = recover_one(&wd, &j, lease_time) {
                    tracing::warn!(jname = %j, error = %e, "cannot finish an interrupted migration");
                }
                set.lock().unwrap_or_else(|e| e.into_inner()).remove(&j);
            });
        }
    }
}

/// Under the env's lock (waited for), with its record read again: a
/// prepare or a bmigrate in progress holds it, and its record is only
/// whole once it is done.
fn recover_one(wd: &Workdir, j: &Jname, lease_time: Duration) -> Result<()> {
    let _lock = EnvLock::acquire(wd, j)?;
    let Some(rt) = runtime::read(wd, j)? else {
        return Ok(());
    };
    if rt.phase == Phase::Incoming {
        let reg = Registry::open(&wd.db_dir())?;
        recover_incoming(wd, &reg, j, &rt, lease_time)
    } else if let Some(ob) = &rt.migration {
        recover_outbound(wd, j, ob)
    } else {
        Ok(())
    }
}

fn recover_outbound(wd: &Workdir, j: &Jname, ob: &Outbound) -> Result<()> {
    if sys::is_alive(ob.pid, ob.start) {
        return Ok(());
    }
    let mine = lease::read(wd, j)?.is_some_and(|l| l.node.as_deref() == Some(wd.nodename()));
    if !mine {
        tracing::warn!(jname = %j, to = %ob.node, "bmigrate died after the hand-over: committed there, ended here");
        // The destination's daemon commits by itself at its next beat;
        // asked, it does now (a commit is idempotent).
        if let Ok(node) = Jname::new(&ob.node) {
            let _ = ask_with(wd, &node, "migrate-commit", Some(named(j)), ABORT_TIMEOUT);
        }
        engine::outgoing_finish(wd, j)?;
        let reg = Registry::open(&wd.db_dir())?;
        reg.remove(j)?;
        return Ok(());
    }
    tracing::warn!(jname = %j, to = %ob.node, "bmigrate died before the hand-over: the guest stays here");
    if let Ok(node) = Jname::new(&ob.node) {
        let _ = ask_with(wd, &node, "migrate-abort", Some(named(j)), ABORT_TIMEOUT);
    }
    engine::outgoing_undo(wd, j)?;
    set_outbound(wd, j, None)
}

fn recover_incoming(
    wd: &Workdir,
    reg: &Registry,
    j: &Jname,
    rt: &runtime::Runtime,
    lease_time: Duration,
) -> Result<()> {
    let lease = lease::read(wd, j)?;
    let arrived = lease
        .as_ref()
        .is_some_and(|l| l.node.as_deref() == Some(wd.nodename()) && l.epoch > rt.epoch);
    let alive = matches!((rt.pid, rt.starttime), (Some(p), Some(s)) if sys::is_alive(p, s));
    if arrived && alive {
        tracing::warn!(jname = %j, "the lease arrived without a commit: running it here");
        let c = engine::incoming_commit(wd, reg, j)?;
        // No bmigrate is left to say it: the log does.
        if let Err(e) = ferry_vm::integrity::verify_resumed(wd, j, c.console_from, RECOVERY_VERIFY)
        {
            tracing::error!(event = "migrated-faulty", jname = %j, fault = %crate::error_chain(&e), "the guest is not healthy after the move");
        }
        return Ok(());
    }
    let source_dead = lease
        .as_ref()
        .and_then(|l| l.node.as_deref())
        .is_none_or(|n| {
            ferry_core::node::liveness(reg, n, lease_time).ok()
                == Some(ferry_core::node::Liveness::Dead)
        });
    if !alive || (!arrived && source_dead) {
        tracing::warn!(jname = %j, "an incoming migration that cannot finish: aborted");
        engine::incoming_abort(wd, j)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_carry_only_their_kind_s_fields_and_read_back() {
        let commit = MigrateAnswer {
            running: Some(true),
            resumed_us_ago: Some(1234),
            ..MigrateAnswer::default()
        };
        let text = serde_json::to_string(&commit).expect("JSON");
        assert_eq!(text, r#"{"running":true,"resumed_us_ago":1234}"#);
        let back: MigrateAnswer = serde_json::from_str(&text).expect("read");
        assert_eq!(back, commit);
        // Resumed by the daemon before the commit came: no figure.
        let late: MigrateAnswer = serde_json::from_str(r#"{"running":true}"#).expect("read");
        assert_eq!(late.resumed_us_ago, None);
        let faulty: MigrateAnswer =
            serde_json::from_str(r#"{"running":false,"fault":"BUG: x"}"#).expect("read");
        assert_eq!(faulty.fault.as_deref(), Some("BUG: x"));
        assert!(serde_json::from_str::<MigrateAnswer>(r#"{"uri":"tcp:a:1","extra":1}"#).is_err());
    }

    #[test]
    fn a_request_without_the_newer_keys_reads_as_not_forced_and_not_watched() {
        let m: MigrateRequest = serde_json::from_str(r#"{"jname":"vm1"}"#).expect("read");
        assert_eq!((m.force, m.verify_ms, m.cpu.is_none()), (false, 0, true));
        let m: MigrateRequest =
            serde_json::from_str(r#"{"jname":"vm1","force":true,"verify_ms":1000}"#).expect("read");
        assert_eq!((m.force, m.verify_ms), (true, 1000));
        assert!(serde_json::from_str::<MigrateRequest>(r#"{"jname":"vm1","forse":true}"#).is_err());
    }
}
