//! VM commands.

use ferry_api::args::Size;
use ferry_api::command::{
    BcheckpointArgs, BcloneArgs, BcreateArgs, BhyveDskArgs, BsnapshotArgs, CheckpointMode,
    DiskController, DiskMode, SizeChange, SnapshotMode,
};
use ferry_api::FromArg;
use ferry_api::{Columns, Outcome};
use ferry_core::lock::EnvLock;
use ferry_core::registry::Registry;
use ferry_core::{EnvKind, Error, NameSelector, Result, Workdir};
use ferry_vm::{disk, snapshot};
use serde_json::json;

use crate::context::{listing, select, view, Context};

pub fn create(ctx: &Context, a: BcreateArgs) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    let (a, from) = match a.vm_os_profile.clone() {
        Some(p) => {
            let profile = ferry_vm::profile::VmProfile::load(&wd, &a.vm_os_type.0, &p.0)?;
            let a = profile.apply(a)?;
            let from = profile
                .image()?
                .map(|name| image_of(&wd, &profile, &name, a.imgsize.0))
                .transpose()?;
            (a, from)
        }
        None => (a, None),
    };
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
    ferry_vm::create(&wd, &reg, &mut cfg, from.as_ref())?;
    Ok(Outcome::message(if runasap {
        format!("{j} created and started")
    } else {
        format!("{j} created")
    }))
}

/// The image a profile names, on this node, and big enough for `imgsize`.
fn image_of(
    wd: &Workdir,
    profile: &ferry_vm::profile::VmProfile,
    name: &ferry_core::Jname,
    imgsize: u64,
) -> Result<ferry_vm::image::ImageInfo> {
    let info = ferry_vm::image::get(wd, name).map_err(|_| {
        Error::Refused(format!(
            "image {name} is not on this node; add it first: ferry image mode=add name={name} url={} sha256=<its SHA-256>",
            profile.image_url().unwrap_or("<its URL>")
        ))
    })?;
    let min = profile.imgsize_min()?.max(info.virtual_size);
    if imgsize < min {
        return Err(Error::bad_value(
            "imgsize",
            &Size(imgsize).render(),
            format!("image {name} needs at least {}", Size(min).render()),
        ));
    }
    Ok(info)
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

/// `bsnapshot`: snapshots of a VM's disk.
pub fn snapshot(ctx: &Context, a: BsnapshotArgs) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    select(&reg, EnvKind::Vm, &NameSelector::One(a.jname.clone()))?;
    let j = &a.jname;
    let _lock = EnvLock::acquire(&wd, j)?;
    let name = || {
        a.snapname
            .as_ref()
            .map(|w| snapshot::resolve_name(&w.0))
            .ok_or_else(|| {
                Error::bad_value(
                    "snapname",
                    "",
                    format!("is required with mode={}", a.mode.as_str()),
                )
            })
    };
    match a.mode {
        SnapshotMode::List => {
            let mut l = listing(
                Columns::all(&["jname", "snapname", "created", "vm_state"]),
                &view(&a.display, a.header),
            )?;
            for s in snapshot::list(&wd, j)? {
                l.push(json!({"jname": j, "snapname": s.name, "created": s.created, "vm_state": s.vm_state}));
            }
            Ok(Outcome::Listing(l))
        }
        SnapshotMode::Create => {
            let n = name()?;
            let s = snapshot::create(&wd, j, &n)?;
            Ok(Outcome::message(format!(
                "snapshot {} of {j} taken at {}",
                s.name, s.created
            )))
        }
        SnapshotMode::Destroy => {
            let n = name()?;
            snapshot::destroy(&wd, j, &n)?;
            Ok(Outcome::message(format!("snapshot {n} of {j} destroyed")))
        }
        SnapshotMode::Destroyall => {
            let n = snapshot::destroy_all(&wd, j)?;
            Ok(Outcome::message(format!("{n} snapshots of {j} destroyed")))
        }
        SnapshotMode::Rollback => {
            let n = name()?;
            snapshot::rollback(&wd, j, &n)?;
            Ok(Outcome::message(format!("{j} rolled back to snapshot {n}")))
        }
    }
}

/// `bclone`: under both envs' locks.
pub fn clone(wd: &Workdir, reg: &Registry, a: BcloneArgs) -> Result<Outcome> {
    select(reg, EnvKind::Vm, &NameSelector::One(a.old.clone()))?;
    if !a.mac_reinit {
        return Err(Error::Refused(format!(
            "mac_reinit=0: a VM's MAC follows its name in ferry, so {} gets its own",
            a.new
        )));
    }
    let _old = EnvLock::acquire(wd, &a.old)?;
    let _new = EnvLock::acquire(wd, &a.new)?;
    ferry_vm::clone(wd, reg, &a.old, &a.new, a.vm_vnc_port)?;
    Ok(Outcome::message(format!("{} cloned into {}", a.old, a.new)))
}

/// `bhyve-dsk mode=list`: CBSD's columns first.
const DISK_COLUMNS: Columns = Columns {
    default: &[
        "jname",
        "dsk_controller",
        "dsk_path",
        "dsk_size",
        "dsk_sectorsize",
        "bootable",
    ],
    more: &["imgtype", "dsk_used", "attached"],
};

/// `bhyve-dsk` (CBSD's word): a VM's disks.
pub fn disk(ctx: &Context, a: BhyveDskArgs) -> Result<Outcome> {
    let (wd, reg) = ctx.open()?;
    if a.mode == DiskMode::List {
        let names = match &a.jname {
            Some(j) => select(&reg, EnvKind::Vm, &NameSelector::One(j.clone()))?,
            None => reg
                .list()?
                .into_iter()
                .filter(|r| r.kind == EnvKind::Vm)
                .map(|r| r.jname)
                .collect(),
        };
        let mut l = listing(DISK_COLUMNS, &view(&a.display, a.header))?;
        for j in names {
            for d in disk::list(&wd, &j)? {
                l.push(json!({
                    "jname": j,
                    "dsk_controller": if d.attached { d.disk.controller.as_str() } else { "-" },
                    "dsk_path": d.disk.file_name(),
                    "dsk_size": Size(d.size).render(),
                    "dsk_sectorsize": 512,
                    "bootable": d.bootable,
                    "imgtype": if d.attached { d.disk.imgtype.as_str() } else { "-" },
                    "dsk_used": Size(d.used).render(),
                    "attached": d.attached,
                }));
            }
        }
        return Ok(Outcome::Listing(l));
    }
    let j = a.jname.clone().ok_or_else(|| {
        Error::bad_value(
            "jname",
            "",
            format!("is required with mode={}", a.mode.as_str()),
        )
    })?;
    select(&reg, EnvKind::Vm, &NameSelector::One(j.clone()))?;
    let n = a
        .dsk_path
        .as_ref()
        .map(|p| disk::parse_name(p).map_err(|e| Error::bad_value("dsk_path", p, e.to_string())))
        .transpose()?;
    let needs_path = || {
        n.ok_or_else(|| {
            Error::bad_value(
                "dsk_path",
                "",
                format!("is required with mode={}", a.mode.as_str()),
            )
        })
    };
    let _lock = EnvLock::acquire(&wd, &j)?;
    match a.mode {
        DiskMode::List => unreachable!("listed above"),
        DiskMode::Attach => {
            let size = match a.dsk_size {
                None => None,
                Some(SizeChange::To(s)) => Some(s),
                Some(by @ SizeChange::By(_)) => {
                    return Err(Error::bad_value(
                        "dsk_size",
                        &by.to_arg(),
                        "a new disk has a size, not a growth (+ is for mode=modify)",
                    ))
                }
            };
            let req = disk::AttachRequest {
                controller: a.dsk_controller.unwrap_or(DiskController::VirtioBlk),
                n,
                size,
                imgtype: a.imgtype,
            };
            let running = ferry_core::engine::state(&wd, &j)? == ferry_core::EnvState::Running;
            let d = disk::attach(&wd, &reg, &j, &req)?;
            Ok(Outcome::message(format!(
                "{} ({}, {}) attached to {j}{}",
                d.file_name(),
                d.controller.as_str(),
                d.imgtype.as_str(),
                if running { ", hot-plugged" } else { "" }
            )))
        }
        DiskMode::Detach | DiskMode::Delete | DiskMode::Remove => {
            let n = needs_path()?;
            let delete = a.mode != DiskMode::Detach;
            disk::detach(&wd, &reg, &j, n, delete)?;
            Ok(Outcome::message(format!(
                "dsk{n}.vhd {} {j}",
                if delete {
                    "deleted from"
                } else {
                    "detached from"
                }
            )))
        }
        DiskMode::Modify => {
            let n = needs_path()?;
            let change = a.dsk_size.ok_or_else(|| {
                Error::bad_value(
                    "dsk_size",
                    "",
                    "is required with mode=modify (e.g. dsk_size=+10g); ferry changes only a disk's size",
                )
            })?;
            let size = disk::resize(&wd, &reg, &j, n, change)?;
            Ok(Outcome::message(format!(
                "dsk{n}.vhd of {j} is {}",
                Size(size).render()
            )))
        }
    }
}
