//! `base`: create, list, remove local bases.

use ferry_api::command::{BaseArgs, BaseFrom, BaseMode};
use ferry_api::{Columns, Outcome};
use ferry_core::base::{self, BaseSource};
use ferry_core::registry::Registry;
use ferry_core::{Error, Jname, Result, Workdir};
use serde_json::json;

use crate::context::{listing, view};

pub fn run(wd: &Workdir, reg: &Registry, a: BaseArgs) -> Result<Outcome> {
    let name = |mode: &str| -> Result<Jname> {
        a.name
            .clone()
            .ok_or_else(|| Error::bad_value("name", "", format!("is required with mode={mode}")))
    };
    match a.mode {
        BaseMode::List => {
            let mut l = listing(
                Columns::all(&["name", "from", "path", "created"]),
                &view(&a.display, a.header),
            )?;
            for b in base::list(wd)? {
                let (from, path) = match &b.source {
                    BaseSource::Busybox { binary } => ("busybox", binary),
                    BaseSource::Dir { path } => ("dir", path),
                };
                let row = json!({"name": b.name, "from": from, "path": path, "created": ferry_core::sys::utc_timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_secs(b.created))});
                l.push(row);
            }
            Ok(Outcome::Listing(l))
        }
        BaseMode::Create => {
            let n = name("create")?;
            let source = match (a.from, a.path) {
                (BaseFrom::Busybox, Some(binary)) => BaseSource::Busybox { binary },
                (BaseFrom::Busybox, None) => BaseSource::Busybox {
                    binary: base::find_busybox()?,
                },
                (BaseFrom::Dir, Some(path)) => BaseSource::Dir { path },
                (BaseFrom::Dir, None) => {
                    return Err(Error::bad_value("path", "", "is required with from=dir"))
                }
            };
            base::create(wd, &n, &source)?;
            Ok(Outcome::message(format!("base {n} created")))
        }
        BaseMode::Remove => {
            let n = name("remove")?;
            base::remove(wd, reg, &n)?;
            Ok(Outcome::message(format!("base {n} removed")))
        }
    }
}
