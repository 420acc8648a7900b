//! Checkpoints of a running VM: its RAM and device state streamed by QEMU
//! into `jails-system/<jname>/checkpoints/<name>.ckp` (through a file
//! descriptor passed over QMP: QEMU 7.2 has no `file:` URI and `exec:`
//! would go through a shell), together with an internal snapshot of each
//! qcow2 disk of the same name, so RAM and disks always match. Restoring
//! reverts the disks, starts QEMU with `-incoming defer` and feeds it the
//! file.

use std::fs::{self, File};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use ferry_core::hook::Phase as HookPhase;
use ferry_core::model::{self, Action};
use ferry_core::runtime;
use ferry_core::{atomic, EnvState, Error, Jname, Result, Workdir};

use crate::disk::{self, Disk};
use crate::qmp::Qmp;
use crate::{load, qemu, qmp_failed, VmConfig};

/// How long writing or reading a checkpoint may take.
const TRANSFER_LIMIT: Duration = Duration::from_secs(600);

/// What `bcheckpoint mode=list` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub name: String,
    pub created: String,
    pub bytes: u64,
    pub vm_machine: String,
    pub vm_cpu_model: String,
    pub vm_ram: String,
    pub disk_snapshot: bool,
    /// The disks snapshotted with it (absent in records written before
    /// VMs had more than dsk1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<String>,
}

impl CheckpointInfo {
    /// The disks it holds a snapshot of.
    fn disk_names(&self) -> Vec<String> {
        if self.disks.is_empty() && self.disk_snapshot {
            vec!["dsk1".to_owned()]
        } else {
            self.disks.clone()
        }
    }
}

/// The names of a VM's disks, as a checkpoint records them.
fn names(cfg: &VmConfig) -> Vec<String> {
    cfg.disks().iter().map(Disk::name).collect()
}

pub fn dir(wd: &Workdir, j: &Jname) -> PathBuf {
    wd.system_dir(j).join("checkpoints")
}

fn state_file(wd: &Workdir, j: &Jname, name: &str) -> PathBuf {
    dir(wd, j).join(format!("{name}.ckp"))
}

fn meta_file(wd: &Workdir, j: &Jname, name: &str) -> PathBuf {
    dir(wd, j).join(format!("{name}.json"))
}

/// The checkpoints of a VM, by name.
pub fn list(wd: &Workdir, j: &Jname) -> Result<Vec<CheckpointInfo>> {
    let d = dir(wd, j);
    let mut out = Vec::new();
    let entries = match fs::read_dir(&d) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io("cannot list", &d)(e)),
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            let text = fs::read(&p).map_err(Error::io("cannot read", &p))?;
            let info: CheckpointInfo = serde_json::from_slice(&text).map_err(|err| {
                Error::bad_value("checkpoint", &p.to_string_lossy(), err.to_string())
            })?;
            out.push(info);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Write a checkpoint of a running VM; with `suspend`, stop it afterwards.
/// The VM never stays paused: on any failure it is resumed and the partial
/// checkpoint removed.
pub fn create(wd: &Workdir, j: &Jname, name: &str, suspend: bool) -> Result<CheckpointInfo> {
    let (st, rt) = runtime::state(wd, j)?;
    model::check(j, st, Action::Checkpoint)?;
    let rt = rt.ok_or_else(|| Error::Failed(format!("{j} has no runtime record")))?;
    let cfg = load(wd, j)?;
    cfg.all_qcow2()?;
    if meta_file(wd, j, name).exists() {
        return Err(Error::Refused(format!(
            "{j} already has a checkpoint {name}; destroy it first"
        )));
    }
    let d = dir(wd, j);
    fs::create_dir_all(&d).map_err(Error::io("cannot create", &d))?;
    let mut q = Qmp::connect(&qemu::qmp_socket(wd, j), Duration::from_secs(10))
        .map_err(|e| qmp_failed(j, e))?;
    q.stop().map_err(|e| qmp_failed(j, e))?;
    let partial = d.join(format!(".{name}.ckp.partial"));
    let written = write_state(wd, &cfg, &mut q, name, &partial);
    let info = match written {
        Ok(info) => info,
        Err(e) => {
            let _ = fs::remove_file(&partial);
            for d in cfg.disks() {
                let _ = disk::delete_snapshot_live(&mut q, j, &d, name);
            }
            let _ = q.cont();
            return Err(e);
        }
    };
    if suspend {
        drop(q);
        crate::halt(wd, j, &rt, Duration::ZERO)?;
        ferry_core::engine::teardown(&crate::VMS, wd, j, Some(&cfg), &rt, HookPhase::Stop)?;
    } else {
        q.cont().map_err(|e| qmp_failed(j, e))?;
    }
    Ok(info)
}

fn write_state(
    wd: &Workdir,
    cfg: &VmConfig,
    q: &mut Qmp,
    name: &str,
    partial: &PathBuf,
) -> Result<CheckpointInfo> {
    let j = cfg.jname();
    let disks = cfg.disks();
    if !disks.is_empty() {
        disk::snapshot_live(q, j, &disks, name)?;
    }
    let file = File::create(partial).map_err(Error::io("cannot create", partial))?;
    q.getfd("ferry-ckp", file.as_fd())
        .map_err(|e| qmp_failed(j, e))?;
    q.migrate("fd:ferry-ckp").map_err(|e| qmp_failed(j, e))?;
    wait_migration(q, j)?;
    file.sync_all().map_err(Error::io("cannot sync", partial))?;
    drop(file);
    let ckp = state_file(wd, j, name);
    atomic::rename_durable(partial, &ckp).map_err(Error::io("cannot write", &ckp))?;
    let info = CheckpointInfo {
        name: name.to_owned(),
        created: ferry_core::sys::utc_timestamp(std::time::SystemTime::now()),
        bytes: fs::metadata(&ckp).map(|m| m.len()).unwrap_or(0),
        vm_machine: cfg.args.vm_machine.0.clone(),
        vm_cpu_model: cfg.args.vm_cpu_model.0.clone(),
        vm_ram: cfg.args.vm_ram.render(),
        disk_snapshot: !disks.is_empty(),
        disks: names(cfg),
    };
    let meta = meta_file(wd, j, name);
    let json =
        serde_json::to_vec_pretty(&info).map_err(Error::encode("the checkpoint's record"))?;
    atomic::write_atomic(&meta, &json, 0o644).map_err(Error::io("cannot write", &meta))?;
    Ok(info)
}

/// Poll `query-migrate` until the stream is complete.
fn wait_migration(q: &mut Qmp, j: &Jname) -> Result<()> {
    let deadline = Instant::now() + TRANSFER_LIMIT;
    loop {
        let info = q.query_migrate().map_err(|e| qmp_failed(j, e))?;
        match info.status.as_str() {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                return Err(Error::Failed(format!(
                    "checkpoint stream of {j} {}: {}",
                    info.status,
                    info.error_desc.unwrap_or_default()
                )))
            }
            _ if Instant::now() > deadline => {
                return Err(Error::Failed(format!(
                    "checkpoint stream of {j} did not finish in time"
                )))
            }
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Refuse a restore that cannot work, before anything starts.
pub(crate) fn check_restorable(wd: &Workdir, cfg: &VmConfig, name: &str) -> Result<()> {
    let j = cfg.jname();
    let meta = meta_file(wd, j, name);
    let text = fs::read(&meta)
        .map_err(|_| Error::bad_value("checkpoint", name, format!("{j} has no such checkpoint")))?;
    let info: CheckpointInfo = serde_json::from_slice(&text)
        .map_err(|e| Error::bad_value("checkpoint", &meta.to_string_lossy(), e.to_string()))?;
    let now = (
        &cfg.args.vm_machine.0,
        &cfg.args.vm_cpu_model.0,
        cfg.args.vm_ram.render(),
    );
    if (&info.vm_machine, &info.vm_cpu_model, info.vm_ram.clone()) != now {
        return Err(Error::Refused(format!(
            "checkpoint {name} was taken with machine {}, CPU {}, RAM {}; {j} now has {}, {}, {}",
            info.vm_machine, info.vm_cpu_model, info.vm_ram, now.0, now.1, now.2
        )));
    }
    if info.disk_names() != names(cfg) {
        return Err(Error::Refused(format!(
            "checkpoint {name} was taken with the disks [{}]; {j} now has [{}] (attach or detach them back first)",
            info.disk_names().join(" "),
            names(cfg).join(" ")
        )));
    }
    if !state_file(wd, j, name).is_file() {
        return Err(Error::Failed(format!(
            "checkpoint {name} of {j} has no state file"
        )));
    }
    Ok(())
}

/// Put each disk back to the checkpoint's internal snapshot (VM stopped).
pub(crate) fn revert_disks(wd: &Workdir, cfg: &VmConfig, name: &str) -> Result<()> {
    for d in cfg.disks() {
        qemu_img(&["snapshot", "-a", name], &d.file(wd, cfg.jname()))?;
    }
    Ok(())
}

fn qemu_img(args: &[&str], disk: &std::path::Path) -> Result<()> {
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    all.push(disk.as_os_str());
    qemu::img(&all)
}

/// Feed a QEMU started with `-incoming defer` the checkpoint's state and
/// wait until the guest runs.
pub(crate) fn restore(wd: &Workdir, cfg: &VmConfig, q: &mut Qmp, name: &str) -> Result<()> {
    let j = cfg.jname();
    let path = state_file(wd, j, name);
    let file = File::open(&path).map_err(Error::io("cannot open", &path))?;
    q.getfd("ferry-ckp", file.as_fd())
        .map_err(|e| qmp_failed(j, e))?;
    q.migrate_incoming("fd:ferry-ckp")
        .map_err(|e| qmp_failed(j, e))?;
    let deadline = Instant::now() + TRANSFER_LIMIT;
    loop {
        let st = q.query_status().map_err(|e| qmp_failed(j, e))?;
        if st.running {
            return Ok(());
        }
        if st.status == "paused" || st.status == "postmigrate" {
            // Incoming migration completed without autostart: resume.
            let mi = q.query_migrate().map_err(|e| qmp_failed(j, e))?;
            if mi.status == "completed" {
                q.cont().map_err(|e| qmp_failed(j, e))?;
                continue;
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Failed(format!(
                "restoring checkpoint {name} of {j} did not finish in time"
            )));
        }
        let mi = q.query_migrate().map_err(|e| qmp_failed(j, e))?;
        if mi.status == "failed" {
            return Err(Error::Failed(format!(
                "restoring checkpoint {name} of {j} failed: {}",
                mi.error_desc.unwrap_or_default()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Remove every checkpoint of a VM (state files and disk snapshots).
pub fn destroy_all(wd: &Workdir, j: &Jname) -> Result<usize> {
    let cfg = load(wd, j)?;
    let all = list(wd, j)?;
    let running = runtime::state(wd, j)?.0 == EnvState::Running;
    let mut q = if running {
        Some(
            Qmp::connect(&qemu::qmp_socket(wd, j), Duration::from_secs(10))
                .map_err(|e| qmp_failed(j, e))?,
        )
    } else {
        None
    };
    for c in &all {
        // A snapshot that is already gone (or a disk attached since) is
        // not an error.
        for d in cfg
            .disks()
            .iter()
            .filter(|d| c.disk_names().contains(&d.name()))
        {
            match q.as_mut() {
                Some(q) => {
                    let _ = disk::delete_snapshot_live(q, j, d, &c.name);
                }
                None => {
                    let _ = qemu_img(&["snapshot", "-d", &c.name], &d.file(wd, j));
                }
            }
        }
        for p in [state_file(wd, j, &c.name), meta_file(wd, j, &c.name)] {
            if let Err(e) = fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(Error::io("cannot remove", &p)(e));
                }
            }
        }
    }
    Ok(all.len())
}
