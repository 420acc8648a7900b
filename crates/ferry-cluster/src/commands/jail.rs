//! Jail commands.

use ferry_api::command::{JcloneArgs, JcreateArgs, JsnapshotArgs};
use ferry_api::Outcome;
use ferry_core::lock::EnvLock;
use ferry_core::registry::Registry;
use ferry_core::{EnvKind, Error, NameSelector, Result, Workdir};

pub fn create(wd: &Workdir, reg: &Registry, a: JcreateArgs) -> Result<Outcome> {
    let profile = ferry_jail::profile::JailProfile::load(wd, &a.jail_profile.0)?;
    let a = profile.apply(a)?;
    let j = a.jname.clone();
    let runasap = a.runasap;
    let cfg = ferry_jail::JailConfig::from_args(a, wd.root())?;
    let _lock = EnvLock::acquire(wd, &j)?;
    ferry_jail::create(wd, reg, &cfg)?;
    Ok(Outcome::message(if runasap {
        format!("{j} created and started")
    } else {
        format!("{j} created")
    }))
}

/// `jsnapshot`: a jail's data lives on shared storage (GlusterFS, NFS, a
/// shared directory) that offers ferry no snapshots; refused with the
/// reason, after the jail is found.
pub fn snapshot(wd: &Workdir, reg: &Registry, a: &JsnapshotArgs) -> Result<Outcome> {
    crate::context::select(reg, EnvKind::Jail, &NameSelector::One(a.jname.clone()))?;
    Err(Error::Refused(format!(
        "jsnapshot {} of {}: ferry takes no jail snapshots, since the jail's data ({}) is on \
         shared storage that offers none to it; snapshot that storage itself (its volume or \
         file system), or keep the data in a VM's qcow2 disk (bsnapshot)",
        a.mode.as_str(),
        a.jname,
        wd.data_dir(&a.jname).display()
    )))
}

/// `jclone`: under both envs' locks.
pub fn clone(wd: &Workdir, reg: &Registry, a: JcloneArgs) -> Result<Outcome> {
    crate::context::select(reg, EnvKind::Jail, &NameSelector::One(a.old.clone()))?;
    let _old = EnvLock::acquire(wd, &a.old)?;
    let _new = EnvLock::acquire(wd, &a.new)?;
    ferry_jail::clone(wd, reg, &a.old, &a.new, a.host_hostname, a.ip4_addr)?;
    Ok(Outcome::message(format!("{} cloned into {}", a.old, a.new)))
}
