//! Where a command runs and who hears of its progress, and the helpers
//! every command handler shares: opening the workdir, selecting envs by
//! name or glob, running an operation on each under its lock.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use ferry_api::{exit, Columns, EnvResult, Progress, View};
use ferry_core::lock::EnvLock;
use ferry_core::registry::{Registry, RegistryPool};
use ferry_core::{EnvKind, Error, Jname, NameSelector, Result, Workdir};

/// Told how far a long command got. The command line draws it; the broker
/// agent turns each event into a progress reply.
pub type ProgressSink = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Where commands run, and who hears of their progress.
#[derive(Clone)]
pub struct Context {
    pub workdir: PathBuf,
    progress: Option<ProgressSink>,
    registries: Option<RegistryPool>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("workdir", &self.workdir)
            .field("progress", &self.progress.is_some())
            .field("pooled", &self.registries.is_some())
            .finish()
    }
}

impl Context {
    pub fn new(workdir: impl Into<PathBuf>) -> Context {
        Context {
            workdir: workdir.into(),
            progress: None,
            registries: None,
        }
    }

    /// The same context, keeping registry connections between commands
    /// (for a long-lived front door that runs many: the broker agent).
    pub fn with_registry_pool(mut self) -> Context {
        self.registries = Some(RegistryPool::default());
        self
    }

    /// The same context, telling `progress` how far long commands got.
    pub fn with_progress(mut self, progress: ProgressSink) -> Context {
        self.progress = Some(progress);
        self
    }

    /// Report progress of the running command; nothing happens without a
    /// listener.
    pub fn progress(&self, event: Progress) {
        if let Some(p) = &self.progress {
            p(&event);
        }
    }

    /// Report a step: percent done (capped at 99: only the command's end
    /// is 100) and one line of text.
    pub fn step(&self, percent: u8, message: impl Into<String>) {
        if self.progress.is_some() {
            self.progress(Progress::step(percent, message));
        }
    }

    /// The workdir alone (no registry opened).
    pub(crate) fn workdir(&self) -> Result<Workdir> {
        Workdir::open(&self.workdir)
    }

    pub(crate) fn open(&self) -> Result<(Workdir, Registry)> {
        let wd = Workdir::open(&self.workdir)?;
        let reg = match &self.registries {
            Some(pool) => Registry::open_pooled(&wd.db_dir(), pool)?,
            None => Registry::open(&wd.db_dir())?,
        };
        Ok((wd, reg))
    }
}

/// The registered envs of `kind` a selector names. A single name that is
/// not registered, or a glob that matches nothing, is "not found".
pub fn select(reg: &Registry, kind: EnvKind, sel: &NameSelector) -> Result<Vec<Jname>> {
    if let NameSelector::One(j) = sel {
        return match reg.get(j)? {
            Some(row) if row.kind == kind => Ok(vec![j.clone()]),
            Some(row) => Err(Error::WrongKind {
                jname: j.clone(),
                is: row.kind.as_str(),
                wanted: kind.as_str(),
            }),
            None => Err(Error::EnvNotFound(j.clone())),
        };
    }
    let names: Vec<Jname> = reg
        .list()?
        .into_iter()
        .filter(|r| r.kind == kind && sel.matches(r.jname.as_str()))
        .map(|r| r.jname)
        .collect();
    if names.is_empty() {
        return Err(Error::NoMatch(sel.to_string()));
    }
    Ok(names)
}

/// Run `op` on each env under its lock. One env's failure does not stop the
/// others; a single env's error is returned as is.
pub(crate) fn per_env(
    wd: &Workdir,
    names: Vec<Jname>,
    done: &str,
    mut op: impl FnMut(&Workdir, &Jname) -> Result<()>,
) -> Vec<EnvResult> {
    names
        .iter()
        .map(|j| {
            let r = EnvLock::acquire(wd, j).and_then(|_lock| op(wd, j));
            env_result(j, done, r)
        })
        .collect()
}

/// How many envs [`per_env_parallel`] works on at once.
const WORKERS: usize = 16;

/// Like [`per_env`], `op` running on up to [`WORKERS`] envs at once, each
/// worker with its own registry connection: for operations whose time goes
/// to round trips to shared storage, which overlap. Results keep the order
/// of `names`; an env for which `op` returns `Ok(false)` (not one it
/// applies to) is left out of them.
pub(crate) fn per_env_parallel(
    wd: &Workdir,
    names: Vec<Jname>,
    done: &str,
    op: impl Fn(&Workdir, &Registry, &Jname) -> Result<bool> + Sync,
) -> Vec<EnvResult> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<EnvResult>>> =
        names.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let work = || {
        let reg = Registry::open(&wd.db_dir()).and_then(|r| r.relaxed().map(|()| r));
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(j) = names.get(i) else { break };
            let r = match &reg {
                Ok(reg) => EnvLock::acquire(wd, j).and_then(|_lock| op(wd, reg, j)),
                Err(e) => Err(Error::Failed(format!("cannot open the registry: {e}"))),
            };
            if let Ok(mut slot) = slots[i].lock() {
                *slot = match r {
                    Ok(false) => None,
                    r => Some(env_result(j, done, r.map(|_| ()))),
                };
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 1..WORKERS.min(names.len()) {
            s.spawn(work);
        }
        work();
    });
    slots
        .into_iter()
        .filter_map(|slot| slot.into_inner().ok().flatten())
        .collect()
}

fn env_result(j: &Jname, done: &str, r: Result<()>) -> EnvResult {
    match r {
        Ok(()) => EnvResult {
            jname: j.to_string(),
            code: exit::OK,
            message: format!("{j} {done}"),
        },
        Err(e) => EnvResult {
            jname: j.to_string(),
            code: exit::for_kind(e.kind()),
            message: error_chain(&e),
        },
    }
}

/// A listing of `columns` as `view` asks for it (CBSD's `display=`,
/// `header=`); an unknown column is refused by name.
pub(crate) fn listing(columns: Columns, view: &View) -> Result<ferry_api::Listing> {
    ferry_api::Listing::of(columns, view).map_err(|e| {
        Error::bad_value(
            "display",
            view.display.as_deref().unwrap_or(""),
            e.to_string(),
        )
    })
}

/// The view a listing command's `display=` and `header=` ask for.
pub(crate) fn view(display: &Option<String>, header: bool) -> View {
    View {
        display: display.clone(),
        header,
    }
}

/// An error and all its causes on one line, each said once: how a front
/// door shows an error, and how a per-env result or a node's reply
/// carries one.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
