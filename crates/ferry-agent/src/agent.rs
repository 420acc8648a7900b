//! `ferry agent`: serves one workdir's tube. Up to `concurrency` workers,
//! each with its own broker connection, reserve a job, decode it, run it
//! in-process through the dispatcher, reply, and only then delete it.
//!
//! Per job: a rejected body (see [`crate::job::Rejection`]) gets an error
//! reply and is buried. A command that changes something is journaled as
//! started before it runs and as done (with its reply) before the reply is
//! put, so the broker handing it out again (agent death, TTR, broker loss)
//! never runs it twice: a finished job is answered from the journal, a
//! job whose agent died mid-run gets an "interrupted" error. Listings run
//! without the journal: running one again is harmless. While a command
//! runs, the worker touches the job and turns the dispatcher's progress
//! reports into progress replies.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_api::{exit, Command, Outcome};
use ferry_broker::{
    Broker, ConnectOptions, Error as BrokerError, Job, JobId, ReconnectPolicy, Reconnecting,
};
use ferry_cluster::{dispatch, error_chain, Context};
use ferry_core::registry::Registry;
use ferry_core::{Jname, Workdir};

use crate::config::Config;
use crate::job::{self, Rejection, Reply, Request};
use crate::journal::{Begin, JobKey, Journal, Owner};

/// How often a running job is touched (beanstalkd's smallest TTR is 1 s).
const TOUCH_EVERY: Duration = Duration::from_millis(500);
/// Priority of replies (bs_router's).
const REPLY_PRIORITY: u32 = 1;
/// Priority of buried jobs.
const BURY_PRIORITY: u32 = 1024;
/// A job another live worker still runs is given back with this delay.
const BUSY_DELAY: Duration = Duration::from_secs(2);
/// beanstalkd's default `-z`.
const BEANSTALKD_MAX_JOB: usize = 65_535;
/// The pause before a worker tries again after a broker error.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cbsdenv {0} is not an initialized ferry workdir")]
    Workdir(String, #[source] ferry_core::Error),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error("cannot handle signals")]
    Signal(#[source] std::io::Error),
}

impl AgentError {
    /// The agent's exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::Workdir(..) => exit::REFUSED,
            AgentError::Journal(_) | AgentError::Signal(_) => exit::FAILED,
        }
    }
}

/// Serve until SIGTERM or SIGINT (which set `stop`).
pub fn serve_until_signalled(cfg: &Config, stop: Arc<AtomicBool>) -> Result<(), AgentError> {
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(AgentError::Signal)?;
    }
    serve(cfg, &stop)
}

/// Serve until `stop` is set; jobs being run are finished first.
pub fn serve(cfg: &Config, stop: &AtomicBool) -> Result<(), AgentError> {
    let db = Workdir::open(&cfg.workdir)
        .map_err(|e| AgentError::Workdir(cfg.workdir.display().to_string(), e))?
        .db_dir();
    let journal = Journal::open(&db)?;
    let pruned = journal.prune(job::unix_now())?;
    drop(journal);
    // Held while serving: with a connection open, a new one finds SQLite's
    // WAL index ready instead of rebuilding it, and closing one does not
    // checkpoint. (Commands reuse their worker's connections too.)
    let _registry = Registry::open(&db)
        .map_err(|e| AgentError::Workdir(cfg.workdir.display().to_string(), e))?;
    tracing::info!(
        workdir = %cfg.workdir.display(),
        broker = %cfg.uri,
        tube = %cfg.tube,
        concurrency = cfg.concurrency,
        signed = cfg.key.is_some(),
        pruned,
        "agent serving"
    );
    std::thread::scope(|s| {
        let db = &db;
        let workers: Vec<_> = (0..cfg.concurrency)
            .map(|n| {
                s.spawn(move || -> Result<(), AgentError> {
                    Worker::new(cfg, n, db)?.run(stop);
                    Ok(())
                })
            })
            .collect();
        let mut first_err = Ok(());
        for w in workers {
            match w.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    stop.store(true, Ordering::SeqCst);
                    if first_err.is_ok() {
                        first_err = Err(e);
                    }
                }
                Err(_) => tracing::error!("an agent worker panicked"),
            }
        }
        first_err
    })
}

/// The broker connection options of an agent or client with this config.
pub(crate) fn connect_options(cfg: &Config) -> (ConnectOptions, ReconnectPolicy) {
    (
        ConnectOptions {
            max_job_size: cfg.max_job_size,
            // A job's time with its worker: the TTR its client gives it.
            ack_wait: cfg.job_ttr,
            ..ConnectOptions::default()
        },
        ReconnectPolicy {
            give_up_after: cfg.reconnect_timeout,
            ..ReconnectPolicy::default()
        },
    )
}

struct Worker<'a> {
    cfg: &'a Config,
    n: usize,
    broker: Reconnecting,
    journal: Journal,
    runner: Runner,
    /// Where listings run (on the worker's own thread).
    listing_ctx: Context,
    me: Owner,
}

impl<'a> Worker<'a> {
    fn new(cfg: &'a Config, n: usize, db: &std::path::Path) -> Result<Worker<'a>, AgentError> {
        let (opts, policy) = connect_options(cfg);
        Ok(Worker {
            cfg,
            n,
            broker: Reconnecting::lazy(cfg.uri.clone(), opts, policy),
            journal: Journal::open(db)?,
            runner: Runner::start(&cfg.workdir),
            listing_ctx: Context::new(&cfg.workdir).with_registry_pool(),
            me: Owner::me(),
        })
    }

    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            if let Err(e) = self.subscribe() {
                tracing::warn!(worker = self.n, "broker: {}", error_chain(&e));
                std::thread::sleep(RETRY_PAUSE);
                continue;
            }
            break;
        }
        while !stop.load(Ordering::SeqCst) {
            match self.broker.reserve(self.cfg.reserve_timeout) {
                Ok(None) => {}
                Ok(Some(job)) => self.handle(job),
                Err(BrokerError::BodyTooLarge { id, size, max }) => {
                    self.reject(id, &Rejection::TooLarge { size, max });
                }
                Err(e) => {
                    tracing::warn!(worker = self.n, "broker: {}", error_chain(&e));
                    std::thread::sleep(RETRY_PAUSE);
                }
            }
        }
    }

    /// Watch the job tube only.
    fn subscribe(&mut self) -> ferry_broker::Result<()> {
        self.broker.watch(&self.cfg.tube)?;
        if self.cfg.tube != "default" {
            self.broker.ignore("default")?;
        }
        Ok(())
    }

    fn handle(&mut self, job: Job) {
        let req = match job::decode(&job.body, self.cfg.key.as_deref(), job::unix_now()) {
            Ok(r) => r,
            Err(rej) => return self.reject(job.id, &rej),
        };
        let started = Instant::now();
        let name = req.command.name();
        if req.read_only {
            // A listing runs right here, untouched: it is quick, and were it
            // to outlive its TTR, running it again would be harmless.
            let reply = run_guarded(&self.listing_ctx, req.command);
            // Without its reply the job stays, and comes back after its TTR.
            if self.answer(job.id, &reply) {
                if let Err(e) = self.broker.delete(job.id) {
                    tracing::warn!(job = %job.id, "cannot delete: {}", error_chain(&e));
                }
            }
            return log_done(job.id, name, &reply, started);
        }
        let tube = self.cfg.tube.clone();
        let sha = job::digest(&job.body);
        let key = JobKey {
            tube: &tube,
            id: job.id.0,
            body_sha256: &sha,
        };
        let begin = self
            .journal
            .begin(key, name, req.nonce.as_deref(), self.me, job::unix_now());
        let reply = match begin {
            Err(e) => {
                // Without the journal the job cannot be run safely; the
                // broker gives it back after its TTR.
                tracing::error!(job = %job.id, "{}", error_chain(&e));
                return;
            }
            Ok(Begin::Run) => {
                ferry_core::sys::crashpoint("agent", 1);
                self.execute(job.id, req)
            }
            Ok(Begin::Finished(text)) => {
                tracing::info!(job = %job.id, "finished before: answered from the journal");
                if self.put_reply(job.id, &text) {
                    self.settle(job.id);
                }
                return;
            }
            Ok(Begin::Replied) => {
                tracing::info!(job = %job.id, "finished and answered before: deleted");
                return self.settle(job.id);
            }
            Ok(Begin::Running) => {
                let _ = self.broker.release(job.id, BURY_PRIORITY, BUSY_DELAY);
                return;
            }
            Ok(Begin::Replayed { tube, job_id }) => {
                return self.reject(job.id, &Rejection::Replayed(format!("{job_id} on {tube}")));
            }
            Ok(Begin::Interrupted { pid }) => Reply::done(
                exit::FAILED,
                format!(
                    "job {} ({name}) was started by agent pid {pid}, which stopped before \
                     finishing it; it is not run again, since it may have done part of its \
                     work: check the state, then put a new job",
                    job.id
                ),
            ),
        };
        let text = reply.to_json_within(self.cfg.max_job_size);
        if let Err(e) = self.journal.finish(&tube, job.id.0, &text, job::unix_now()) {
            tracing::error!(job = %job.id, "{}", error_chain(&e));
        }
        // Unanswered, the job comes back (TTR, lost connection) and is
        // answered from the journal.
        if self.put_reply(job.id, &text) {
            ferry_core::sys::crashpoint("agent", 2);
            self.settle(job.id);
        }
        log_done(job.id, name, &reply, started);
    }

    /// The final reply is on its tube: record it, then delete the job.
    fn settle(&mut self, id: JobId) {
        if let Err(e) = self.journal.replied(&self.cfg.tube, id.0) {
            tracing::error!(job = %id, "{}", error_chain(&e));
        }
        if let Err(e) = self.broker.delete(id) {
            tracing::warn!(job = %id, "cannot delete: {}", error_chain(&e));
        }
    }

    /// Run a command on the worker's runner thread while this one touches
    /// the job and relays progress.
    fn execute(&mut self, id: JobId, req: Request) -> Reply {
        if self.runner.commands.send(req.command).is_err() {
            return Reply::done(exit::FAILED, "the agent's command runner stopped");
        }
        loop {
            match self.runner.events.recv_timeout(TOUCH_EVERY) {
                Ok(Event::Progress(p, m)) => {
                    self.answer(id, &Reply::progress(p, m));
                }
                Ok(Event::Done(reply)) => return reply,
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.broker.touch(id) {
                        tracing::warn!(job = %id, "cannot touch: {}", error_chain(&e));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Reply::done(exit::FAILED, "the agent's command runner stopped")
                }
            }
        }
    }

    /// Put a reply; whether it is on its tube.
    fn answer(&mut self, id: JobId, reply: &Reply) -> bool {
        let text = reply.to_json_within(self.cfg.max_job_size);
        self.put_reply(id, &text)
    }

    fn put_reply(&mut self, id: JobId, text: &str) -> bool {
        let tube = self.cfg.reply_tube(id);
        let ttr = self.cfg.publish_timeout;
        let mut put = |text: &str| {
            self.broker.use_tube(&tube).and_then(|()| {
                self.broker
                    .put(text.as_bytes(), REPLY_PRIORITY, Duration::ZERO, ttr)
            })
        };
        let mut r = put(text);
        if let (Err(BrokerError::JobTooBig(_)), Some(reply)) = (&r, Reply::parse(text.as_bytes())) {
            // The server's -z is below max_job_size: cut to its default.
            r = put(&reply.to_json_within(BEANSTALKD_MAX_JOB));
        }
        if let Err(e) = &r {
            tracing::warn!(job = %id, tube, "cannot put the reply: {}", error_chain(e));
        }
        r.is_ok()
    }

    /// Answer a job that is not run with an error, and bury it.
    fn reject(&mut self, id: JobId, why: &Rejection) {
        tracing::warn!(job = %id, "rejected: {why}");
        // Buried even if the reply could not be put: a lost connection
        // loses the bury too, and the job comes back to be rejected again.
        self.answer(id, &Reply::done(why.code(), why.to_string()));
        if let Err(e) = self.broker.bury(id, BURY_PRIORITY) {
            tracing::warn!(job = %id, "cannot bury: {}", error_chain(&e));
        }
    }
}

/// What a runner reports while it runs a command.
enum Event {
    Progress(u8, String),
    Done(Reply),
}

/// A worker's thread that runs its commands (kept for the worker's life:
/// starting a thread per job would cost more than a listing).
struct Runner {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<Event>,
}

impl Runner {
    fn start(workdir: &std::path::Path) -> Runner {
        let (commands, jobs) = mpsc::channel::<Command>();
        let (tx, events) = mpsc::channel();
        let progress = tx.clone();
        let ctx = Context::new(workdir)
            .with_registry_pool()
            .with_progress(Arc::new(move |p: &ferry_api::Progress| {
                let _ = progress.send(Event::Progress(p.percent(), p.message()));
            }));
        std::thread::spawn(move || {
            for cmd in jobs {
                if tx.send(Event::Done(run_guarded(&ctx, cmd))).is_err() {
                    break;
                }
            }
        });
        Runner { commands, events }
    }
}

fn log_done(id: JobId, name: &str, reply: &Reply, started: Instant) {
    tracing::info!(
        job = %id,
        command = name,
        code = reply.err_code,
        ms = started.elapsed().as_millis() as u64,
        "done"
    );
}

/// [`run_command`], a panic in it answered as a failure.
fn run_guarded(ctx: &Context, cmd: Command) -> Reply {
    let run = std::panic::AssertUnwindSafe(|| run_command(ctx, cmd));
    std::panic::catch_unwind(run)
        .unwrap_or_else(|_| Reply::done(exit::FAILED, "the command panicked"))
}

/// Run one command through the dispatcher and shape its reply as the
/// command line would print it.
pub fn run_command(ctx: &Context, cmd: Command) -> Reply {
    let bstart = matches!(cmd, Command::Bstart(_));
    match dispatch(ctx, cmd) {
        Ok(outcome) => {
            let mut reply = Reply::done(outcome.exit_code(), outcome.to_text());
            if bstart {
                reply.vnc = vnc_of(ctx, &outcome);
            }
            reply
        }
        Err(e) => Reply::done(exit::for_kind(e.kind()), error_chain(&e)),
    }
}

/// The VNC addresses of the VMs a `bstart` started (QEMU listens on
/// loopback only: `127.0.0.1:PORT`).
fn vnc_of(ctx: &Context, o: &Outcome) -> String {
    let (Outcome::PerEnv { results }, Ok(wd)) = (o, Workdir::open(&ctx.workdir)) else {
        return String::new();
    };
    results
        .iter()
        .filter(|r| r.code == exit::OK)
        .filter_map(|r| Jname::new(&r.jname).ok())
        .filter_map(|j| ferry_vm::load(&wd, &j).ok())
        .filter(|c| c.args.vm_vnc_port != 0)
        .map(|c| format!("127.0.0.1:{}", c.args.vm_vnc_port))
        .collect::<Vec<_>>()
        .join(",")
}
