//! VM commands.

use ferry_api::command::{BcheckpointArgs, BcreateArgs, CheckpointMode};
use ferry_api::{Columns, Outcome};
use ferry_core::lock::EnvLock;
use ferry_core::{EnvKind, NameSelector, Result};

use crate::context::{listing, select, view, Context};

pub fn create(ctx: &Context, a: BcreateArgs) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    let j = a.jname.clone();
    let runasap = a.runasap;
    let size = a.imgsize.render();
    let mut cfg = ferry_vm::VmConfig::from_args(a, wd.root())?;
    let _lock = EnvLock::acquire(&wd, &j)?;
    ctx.step(
        10,
        format!(
            "creating {j}: definition and a {size} disk{}",
            if runasap { ", then starting it" } else { "" }
        ),
    );
    ferry_vm::create(&wd, &reg, &mut cfg)?;
    Ok(Outcome::message(if runasap {
        format!("{j} created and started")
    } else {
        format!("{j} created")
    }))
}

pub fn checkpoint(ctx: &Context, a: BcheckpointArgs) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    select(&reg, EnvKind::Vm, &NameSelector::One(a.jname.clone()))?;
    let j = &a.jname;
    let _lock = EnvLock::acquire(&wd, j)?;
    match a.mode {
        CheckpointMode::List => {
            let mut l = listing(
                Columns::all(&[
                    "name",
                    "created",
                    "bytes",
                    "vm_machine",
                    "vm_ram",
                    "disk_snapshot",
                ]),
                &view(&a.display, a.header),
            )?;
            for c in ferry_vm::checkpoint::list(&wd, j)? {
                l.push(serde_json::to_value(&c).unwrap_or_default());
            }
            Ok(Outcome::Listing(l))
        }
        CheckpointMode::Create => {
            let c = ferry_vm::checkpoint::create(&wd, j, &a.name.0, a.suspend)?;
            Ok(Outcome::message(format!(
                "checkpoint {} of {j} written ({} MiB){}",
                c.name,
                c.bytes >> 20,
                if a.suspend { "; the VM is stopped" } else { "" }
            )))
        }
        CheckpointMode::Destroyall => {
            let n = ferry_vm::checkpoint::destroy_all(&wd, j)?;
            Ok(Outcome::message(format!(
                "{n} checkpoints of {j} destroyed"
            )))
        }
    }
}
