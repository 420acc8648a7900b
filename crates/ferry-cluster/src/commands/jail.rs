//! Jail commands.

use ferry_api::command::JcreateArgs;
use ferry_api::Outcome;
use ferry_core::lock::EnvLock;
use ferry_core::registry::Registry;
use ferry_core::{Result, Workdir};

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
