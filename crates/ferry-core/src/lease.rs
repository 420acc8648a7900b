//! The owner lease of an env (DESIGN §5): `jails-system/<jname>/owner`
//! names the one node allowed to run the env, with an epoch that only
//! grows. It is changed only under an exclusive POSIX record lock (fcntl,
//! which NFSv4, GlusterFS and local file systems honour across nodes) on
//! a lock file beside it, by read-check-write-rename; readers need no lock,
//! as the rename makes every read see a whole record.

use std::fs::File;
use std::path::PathBuf;

use crate::atomic;
use crate::error::{Error, Result};
use crate::name::Jname;
use crate::workdir::Workdir;

/// Who owns an env, and since which epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The owner; `None` when the lease is released (env unregistered).
    pub node: Option<String>,
    pub epoch: u64,
}

impl Lease {
    fn render(&self) -> String {
        format!(
            "node={}\nepoch={}\n",
            self.node.as_deref().unwrap_or(""),
            self.epoch
        )
    }

    fn parse(text: &str) -> Option<Lease> {
        let mut node = None;
        let mut epoch = None;
        for line in text.lines() {
            match line.split_once('=') {
                Some(("node", v)) => node = Some(v.trim().to_owned()),
                Some(("epoch", v)) => epoch = v.trim().parse().ok(),
                _ if line.trim().is_empty() => {}
                _ => return None,
            }
        }
        let node = node?;
        Some(Lease {
            node: (!node.is_empty()).then_some(node),
            epoch: epoch?,
        })
    }
}

fn owner_path(wd: &Workdir, j: &Jname) -> PathBuf {
    wd.system_dir(j).join("owner")
}

/// The lease as it is now (`None`: the env never had one).
pub fn read(wd: &Workdir, j: &Jname) -> Result<Option<Lease>> {
    let p = owner_path(wd, j);
    match std::fs::read_to_string(&p) {
        Ok(text) => Lease::parse(&text)
            .map(Some)
            .ok_or_else(|| Error::bad_value("owner lease", &p.to_string_lossy(), "garbled")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot read owner lease", &p)(e)),
    }
}

/// The exclusive lock under which a lease changes; released on drop.
struct LeaseLock {
    _file: File,
}

impl LeaseLock {
    fn take(wd: &Workdir, j: &Jname) -> Result<LeaseLock> {
        let path = wd.system_dir(j).join(".owner.lock");
        let file = crate::lock::open_lock_file(&path)
            .map_err(Error::io("cannot open lease lock", &path))?;
        crate::lock::lock_range(&file, crate::lock::Kind::Posix, 0, 0)
            .map_err(Error::io("cannot lock lease", &path))?;
        Ok(LeaseLock { _file: file })
    }
}

fn write(wd: &Workdir, j: &Jname, lease: &Lease) -> Result<()> {
    let p = owner_path(wd, j);
    atomic::write_synced(&p, lease.render().as_bytes(), 0o644)
        .map_err(Error::io("cannot write owner lease", &p))
}

fn not_owner(j: &Jname, lease: &Lease) -> Error {
    Error::NotOwner {
        jname: j.clone(),
        node: lease.node.clone().unwrap_or_default(),
        epoch: lease.epoch,
    }
}

/// Take the lease for this node: allowed when it is free (released or
/// never taken; the epoch grows by one) or already ours (kept as is).
/// Returns the epoch this node holds.
pub fn acquire(wd: &Workdir, j: &Jname) -> Result<u64> {
    let _lock = LeaseLock::take(wd, j)?;
    match read(wd, j)? {
        Some(l) if l.node.as_deref() == Some(wd.nodename()) => Ok(l.epoch),
        Some(l) if l.node.is_some() => Err(not_owner(j, &l)),
        current => take(wd, j, current.map_or(0, |l| l.epoch) + 1),
    }
}

/// Take the lease from `from`, a lease held by another node that the
/// caller has found dead. Refused if the lease changed meanwhile.
pub fn take_over(wd: &Workdir, j: &Jname, from: &Lease) -> Result<u64> {
    let _lock = LeaseLock::take(wd, j)?;
    let now = read(wd, j)?;
    if now.as_ref() != Some(from) {
        return Err(Error::Refused(format!(
            "the lease of {j} changed while its owner was being checked; try again"
        )));
    }
    take(wd, j, from.epoch + 1)
}

/// Hand the lease this node holds at `epoch` to node `to`, at epoch + 1:
/// the commit point of a live migration. Refused if the lease is not this
/// node's at `epoch` any more. Returns the new epoch.
pub fn hand_over(wd: &Workdir, j: &Jname, epoch: u64, to: &str) -> Result<u64> {
    let _lock = LeaseLock::take(wd, j)?;
    let mine = Lease {
        node: Some(wd.nodename().to_owned()),
        epoch,
    };
    match read(wd, j)? {
        Some(l) if l == mine => {}
        Some(l) if l.node.is_some() => return Err(not_owner(j, &l)),
        _ => {
            return Err(Error::Refused(format!(
                "{j} is not owned by {} at epoch {epoch}",
                wd.nodename()
            )))
        }
    }
    write(
        wd,
        j,
        &Lease {
            node: Some(to.to_owned()),
            epoch: epoch + 1,
        },
    )?;
    Ok(epoch + 1)
}

/// Write the lease as this node's at `epoch` (under the lease lock).
fn take(wd: &Workdir, j: &Jname, epoch: u64) -> Result<u64> {
    let mine = Lease {
        node: Some(wd.nodename().to_owned()),
        epoch,
    };
    write(wd, j, &mine)?;
    Ok(epoch)
}

/// Release the lease this node holds (the epoch is kept, so it only grows).
pub fn release(wd: &Workdir, j: &Jname) -> Result<()> {
    let _lock = LeaseLock::take(wd, j)?;
    match read(wd, j)? {
        Some(l) if l.node.as_deref() == Some(wd.nodename()) => write(
            wd,
            j,
            &Lease {
                node: None,
                epoch: l.epoch,
            },
        ),
        Some(l) if l.node.is_some() => Err(not_owner(j, &l)),
        _ => Ok(()),
    }
}

/// The epoch this node holds, or "not owner". An env without any lease
/// yet (created before leases existed) is taken.
pub fn held(wd: &Workdir, j: &Jname) -> Result<u64> {
    match read(wd, j)? {
        Some(l) if l.node.as_deref() == Some(wd.nodename()) => Ok(l.epoch),
        Some(l) if l.node.is_some() => Err(not_owner(j, &l)),
        _ => acquire(wd, j),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_nodes() -> (tempfile::TempDir, Workdir, Workdir, Jname) {
        let t = tempfile::tempdir().unwrap();
        let a = Workdir::init(t.path(), Some("a")).unwrap();
        // A second node on the same dirs (as on shared storage).
        let b = Workdir::open(t.path()).unwrap().with_nodename("b");
        let j = Jname::new("j").unwrap();
        std::fs::create_dir_all(a.system_dir(&j)).unwrap();
        (t, a, b, j)
    }

    #[test]
    fn a_lease_is_handed_over_only_by_its_holder_at_its_epoch() {
        let (_t, a, b, j) = two_nodes();
        let e = acquire(&a, &j).unwrap();
        assert!(hand_over(&b, &j, e, "b").is_err(), "b does not hold it");
        assert!(hand_over(&a, &j, e + 1, "b").is_err(), "wrong epoch");
        assert_eq!(hand_over(&a, &j, e, "b").unwrap(), e + 1);
        assert_eq!(held(&b, &j).unwrap(), e + 1);
        assert!(held(&a, &j).is_err());
        assert!(hand_over(&a, &j, e, "b").is_err(), "twice");
    }

    #[test]
    fn one_owner_at_a_time_and_epochs_only_grow() {
        let (_t, a, b, j) = two_nodes();
        assert_eq!(acquire(&a, &j).unwrap(), 1);
        assert_eq!(acquire(&a, &j).unwrap(), 1);
        assert!(matches!(acquire(&b, &j), Err(Error::NotOwner { .. })));
        assert!(matches!(release(&b, &j), Err(Error::NotOwner { .. })));
        assert!(held(&b, &j).is_err());
        release(&a, &j).unwrap();
        assert_eq!(
            read(&a, &j).unwrap(),
            Some(Lease {
                node: None,
                epoch: 1
            })
        );
        assert_eq!(acquire(&b, &j).unwrap(), 2);
        let l = read(&a, &j).unwrap().unwrap();
        assert_eq!(take_over(&a, &j, &l).unwrap(), 3);
        assert!(
            take_over(&b, &j, &l).is_err(),
            "a stale takeover went through"
        );
        assert_eq!(held(&a, &j).unwrap(), 3);
    }

    #[test]
    fn garbled_leases_are_refused() {
        let (_t, a, _b, j) = two_nodes();
        std::fs::write(owner_path(&a, &j), "node=a\nepoch=x\n").unwrap();
        assert!(matches!(read(&a, &j), Err(Error::BadValue { .. })));
        assert!(acquire(&a, &j).is_err());
    }
}
