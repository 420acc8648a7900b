//! Jail commands.

use ferry_api::command::JcreateArgs;
use ferry_api::Outcome;
use ferry_core::lock::EnvLock;
use ferry_core::registry::Registry;
use ferry_core::{EnvKind, NameSelector, Result, Workdir};
use serde_json::{json, Value};

pub fn create(wd: &Workdir, reg: &Registry, a: JcreateArgs) -> Result<Outcome> {
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

pub const COLUMNS: [&str; 7] = [
    "jname",
    "jid",
    "ip4_addr",
    "host_hostname",
    "base",
    "astart",
    "status",
];

pub fn list(
    wd: &Workdir,
    reg: &Registry,
    sel: &NameSelector,
    display: Option<&str>,
) -> Result<Outcome> {
    let mut l = crate::context::listing(&COLUMNS, display)?;
    for row in reg.list()? {
        if row.kind != EnvKind::Jail || !sel.matches(row.jname.as_str()) {
            continue;
        }
        let (state, rt) = ferry_core::runtime::state(wd, &row.jname)?;
        let jid = match state {
            ferry_core::EnvState::Running => {
                rt.and_then(|r| r.pid).map_or(Value::Null, Value::from)
            }
            _ => Value::Null,
        };
        let v = json!({
            "jname": row.jname,
            "jid": jid,
            "ip4_addr": row.ip4_addr,
            "host_hostname": row.host_hostname,
            "base": row.base,
            "astart": row.astart,
            "status": state.display(),
        });
        l.push(v);
    }
    Ok(Outcome::Listing(l))
}
