//! The workdir: one ferry environment root on a node (DESIGN §2).
//!
//! Local dirs (`var/`, `bases/`, `jails/`) belong to this node; the four
//! shared dirs live on the DFS and are identical on every node of the pool.
//! Every path ferry touches is derived here from the root and a validated
//! [`Jname`], so no caller joins user input onto a path by hand.

use std::fs;
use std::path::{Path, PathBuf};

use crate::atomic;
use crate::error::{Error, Result};
use crate::name::Jname;

/// Default workdir when neither `--workdir` nor `$workdir` is given.
pub const DEFAULT_ROOT: &str = "/usr/jails";

/// The shared dirs, each of which carries a `dir.id`.
pub const SHARED_DIRS: [&str; 4] = ["jails-data", "jails-system", "jails-rcconf", "jails-fstab"];

/// Local dirs created by `initenv`.
const LOCAL_DIRS: [&str; 8] = [
    "etc",
    "var/db",
    "var/log",
    "var/run",
    "var/run/runc",
    "bases",
    "jails",
    "jails-system/.nodes",
];

/// Name of the file in each shared dir that identifies the shared storage.
pub const DIR_ID: &str = "dir.id";

/// An opened (initialized) workdir.
#[derive(Debug, Clone)]
pub struct Workdir {
    root: PathBuf,
    nodename: String,
    /// The `dir.id`s as first read through this value: a `Workdir` lives
    /// for one command, and a glob of a thousand envs reads them once.
    ids: std::sync::Arc<std::sync::OnceLock<Vec<(String, String)>>>,
}

impl Workdir {
    /// Create the layout (idempotent). Existing ids, data and registry are
    /// kept; `nodename` is written only if there is none yet, or replaced
    /// when given explicitly.
    pub fn init(root: &Path, nodename: Option<&str>) -> Result<Workdir> {
        let root = absolute(root)?;
        fs::create_dir_all(&root).map_err(Error::io("cannot create workdir", &root))?;
        for d in SHARED_DIRS.iter().chain(LOCAL_DIRS.iter()) {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(Error::io("cannot create directory", &p))?;
        }
        for d in SHARED_DIRS {
            let id = root.join(d).join(DIR_ID);
            let fresh = format!("{}\n", uuid::Uuid::new_v4());
            atomic::create_once(&id, fresh.as_bytes(), 0o644)
                .map_err(Error::io("cannot write dir.id", &id))?;
        }
        let lock = root.join("var/run/envs.lock");
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(Error::io("cannot create lock file", &lock))?;
        let name_file = root.join("nodename");
        let nodename = match (nodename, read_trimmed(&name_file)?) {
            (Some(given), current) => {
                validate_nodename(given)?;
                if current.as_deref() != Some(given) {
                    atomic::write_atomic(&name_file, format!("{given}\n").as_bytes(), 0o644)
                        .map_err(Error::io("cannot write nodename", &name_file))?;
                }
                given.to_owned()
            }
            (None, Some(current)) => current,
            (None, None) => {
                let host = nix::unistd::gethostname()
                    .ok()
                    .and_then(|h| h.into_string().ok())
                    .unwrap_or_else(|| "localhost".to_owned());
                let host = host.split('.').next().unwrap_or("localhost").to_owned();
                validate_nodename(&host)?;
                atomic::write_atomic(&name_file, format!("{host}\n").as_bytes(), 0o644)
                    .map_err(Error::io("cannot write nodename", &name_file))?;
                host
            }
        };
        Ok(Workdir {
            root,
            nodename,
            ids: Default::default(),
        })
    }

    /// Open an initialized workdir.
    pub fn open(root: &Path) -> Result<Workdir> {
        let root = absolute(root)?;
        let nodename = read_trimmed(&root.join("nodename"))?
            .ok_or_else(|| Error::NotInitialized(root.clone()))?;
        Ok(Workdir {
            root,
            nodename,
            ids: Default::default(),
        })
    }

    /// The same workdir as seen by another node name (tests of several
    /// nodes on one set of dirs).
    pub fn with_nodename(mut self, nodename: &str) -> Workdir {
        nodename.clone_into(&mut self.nodename);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn nodename(&self) -> &str {
        &self.nodename
    }

    pub fn db_dir(&self) -> PathBuf {
        self.root.join("var/db")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.root.join("var/log")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.root.join("var/run")
    }

    /// runc's state root for this workdir (so two workdirs never share one).
    pub fn runc_root(&self) -> PathBuf {
        self.root.join("var/run/runc")
    }

    pub fn bases_dir(&self) -> PathBuf {
        self.root.join("bases")
    }

    pub fn base_dir(&self, base: &Jname) -> PathBuf {
        self.root.join("bases").join(base.as_str())
    }

    /// LOCAL runtime dir of a jail (its OCI bundle).
    pub fn runtime_dir(&self, j: &Jname) -> PathBuf {
        self.root.join("jails").join(j.as_str())
    }

    /// SHARED data dir: a jail's files, a VM's disks.
    pub fn data_dir(&self, j: &Jname) -> PathBuf {
        self.root.join("jails-data").join(format!("{j}-data"))
    }

    /// SHARED system dir: definition while registered, lease, hook log.
    pub fn system_dir(&self, j: &Jname) -> PathBuf {
        self.root.join("jails-system").join(j.as_str())
    }

    pub fn rcconf_dir(&self) -> PathBuf {
        self.root.join("jails-rcconf")
    }

    /// Definition of a registered env.
    pub fn registered_rcconf(&self, j: &Jname) -> PathBuf {
        self.system_dir(j).join(format!("rc.conf_{j}"))
    }

    /// Definition of an unregistered env.
    pub fn unregistered_rcconf(&self, j: &Jname) -> PathBuf {
        self.rcconf_dir().join(format!("rc.conf_{j}"))
    }

    pub fn fstab_dir(&self, j: &Jname) -> PathBuf {
        self.root.join("jails-fstab").join(j.as_str())
    }

    pub fn fstab_file(&self, j: &Jname) -> PathBuf {
        self.fstab_dir(j).join("fstab")
    }

    pub fn hook_log(&self, j: &Jname) -> PathBuf {
        self.system_dir(j).join("hook.log")
    }

    /// A short id of this workdir, unique on the node, stable across runs:
    /// used to name host-global objects (cgroups, veths, netns).
    pub fn pool_tag(&self) -> String {
        format!(
            "{:08x}",
            fnv1a(self.root.as_os_str().as_encoded_bytes()) as u32
        )
    }

    /// The `dir.id` of each shared dir, in [`SHARED_DIRS`] order (read
    /// once per `Workdir` value).
    pub fn dir_ids(&self) -> Result<Vec<(String, String)>> {
        if let Some(ids) = self.ids.get() {
            return Ok(ids.clone());
        }
        let ids = SHARED_DIRS
            .iter()
            .map(|d| {
                let p = self.root.join(d).join(DIR_ID);
                let id =
                    read_trimmed(&p)?.ok_or_else(|| Error::NotInitialized(self.root.clone()))?;
                Ok(((*d).to_owned(), id))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(self.ids.get_or_init(|| ids).clone())
    }

    /// A node setting: the `key=value` line of `etc/<file>` (`initenv`
    /// writes them; `#` starts a comment). `None` when the file is absent;
    /// a file without the key is an error, not a silent default.
    pub fn setting(&self, file: &str, key: &str) -> Result<Option<String>> {
        let p = self.root.join("etc").join(file);
        let Some(text) = read_trimmed(&p)? else {
            return Ok(None);
        };
        let prefix = format!("{key}=");
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| Some(v.trim().to_owned()))
            .ok_or_else(|| Error::bad_value(file, &p.to_string_lossy(), format!("no {key}= line")))
    }

    /// Record a node setting in `etc/<file>` (atomically), with a comment
    /// saying what it is.
    pub fn set_setting(&self, file: &str, key: &str, value: &str, what: &str) -> Result<()> {
        if value.contains(['\n', '\r']) {
            return Err(Error::bad_value(key, value, "must be one line"));
        }
        let p = self.root.join("etc").join(file);
        let text = format!("# {what}\n{key}={value}\n");
        atomic::write_atomic(&p, text.as_bytes(), 0o644).map_err(Error::io("cannot write", &p))
    }
}

/// 64-bit FNV-1a: a stable hash for naming, not for security.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn validate_nodename(name: &str) -> Result<()> {
    Jname::new(name)
        .map(|_| ())
        .map_err(|e| Error::bad_value("nodename", name, e.to_string()))
}

fn absolute(root: &Path) -> Result<PathBuf> {
    if !root.is_absolute() {
        return Err(Error::bad_value(
            "workdir",
            &root.to_string_lossy(),
            "must be an absolute path",
        ));
    }
    if root
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(Error::bad_value(
            "workdir",
            &root.to_string_lossy(),
            "must not contain '..'",
        ));
    }
    Ok(root.to_path_buf())
}

fn read_trimmed(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot read", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_idempotent_and_keeps_ids() {
        let t = tempfile::tempdir().unwrap();
        let w = Workdir::init(t.path(), Some("n1")).unwrap();
        let ids = w.dir_ids().unwrap();
        let again = Workdir::init(t.path(), None).unwrap();
        assert_eq!(again.nodename(), "n1");
        assert_eq!(again.dir_ids().unwrap(), ids);
        let other = tempfile::tempdir().unwrap();
        let w2 = Workdir::init(other.path(), Some("n1")).unwrap();
        assert_ne!(w2.dir_ids().unwrap(), ids);
        assert_ne!(w2.pool_tag(), w.pool_tag());
    }

    #[test]
    fn refuses_relative_and_bad_names() {
        assert!(Workdir::init(Path::new("rel"), None).is_err());
        let t = tempfile::tempdir().unwrap();
        assert!(Workdir::init(t.path(), Some("../evil")).is_err());
        assert!(Workdir::open(t.path()).is_err());
    }
}
