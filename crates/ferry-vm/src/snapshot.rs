//! Snapshots of a VM's disks (CBSD's `bsnapshot`): qcow2 internal
//! snapshots of every disk at once, tagged `snap:<name>` so that they never meet a
//! checkpoint's (whose names are words, without `:`). Taken and removed
//! over QMP while the VM runs (disk only: its RAM goes on), with
//! `qemu-img` while it is stopped; a rollback needs it stopped. A raw disk
//! has no snapshots: refused with the reason.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use ferry_core::lease;
use ferry_core::runtime;
use ferry_core::{EnvState, Error, Jname, Result, Workdir};

use crate::disk::{self, running_qmp, Disk};
use crate::{load, qemu, VmConfig, VmError};

/// The tag of snapshot `name` in the qcow2 image.
fn tag(name: &str) -> String {
    format!("snap:{name}")
}

/// One snapshot, as `bsnapshot mode=list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub name: String,
    /// UTC, `2026-11-29T01:15:00Z`.
    pub created: String,
    /// Bytes of guest state saved with it (0: disk only).
    pub vm_state: u64,
}

/// `qemu-img info --output=json`, the part read here.
#[derive(Debug, Deserialize)]
struct ImageInfo {
    #[serde(default)]
    snapshots: Vec<ImageSnapshot>,
}

#[derive(Debug, Deserialize)]
struct ImageSnapshot {
    name: String,
    #[serde(rename = "date-sec")]
    date_sec: u64,
    #[serde(rename = "vm-state-size", default)]
    vm_state_size: u64,
}

/// The name CBSD's `snapname=gettimeofday` stands for: the time now,
/// `YYYYMMDDhhmmss` (UTC).
pub fn resolve_name(name: &str) -> String {
    if name == "gettimeofday" {
        ferry_core::sys::utc_timestamp(SystemTime::now())
            .chars()
            .filter(char::is_ascii_digit)
            .collect()
    } else {
        name.to_owned()
    }
}

/// The VM's disks, if it can have snapshots: one at least, all qcow2.
fn disks(wd: &Workdir, cfg: &VmConfig) -> Result<Vec<(Disk, PathBuf)>> {
    let j = cfg.jname();
    let all = cfg.disks();
    if all.is_empty() {
        return Err(VmError::NoSnapshots {
            jname: j.clone(),
            why: "it has no disk (imgsize=0)".into(),
        }
        .into());
    }
    cfg.all_qcow2()?;
    Ok(all
        .into_iter()
        .map(|d| {
            let f = d.file(wd, j);
            (d, f)
        })
        .collect())
}

/// The internal snapshots of one image (`-U`: also while QEMU runs it).
fn image_snapshots(file: &Path) -> Result<Vec<ImageSnapshot>> {
    let out = qemu::img_output(&[
        "info".as_ref(),
        "-U".as_ref(),
        "--output=json".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        file.as_os_str(),
    ])?;
    let info: ImageInfo = serde_json::from_slice(&out).map_err(|e| {
        Error::Failed(format!(
            "qemu-img info of {} does not read: {e}",
            file.display()
        ))
    })?;
    Ok(info.snapshots)
}

/// Whether the image holds snapshot `name`.
fn has(file: &Path, name: &str) -> Result<bool> {
    Ok(image_snapshots(file)?.iter().any(|s| s.name == tag(name)))
}

/// The snapshots of `j`, oldest first, as its first disk holds them (a
/// snapshot is taken of every disk at once).
pub fn list(wd: &Workdir, j: &Jname) -> Result<Vec<SnapshotInfo>> {
    let cfg = load(wd, j)?;
    let (_, first) = &disks(wd, &cfg)?[0];
    let mut snaps: Vec<(u64, SnapshotInfo)> = image_snapshots(first)?
        .into_iter()
        .filter_map(|s| {
            let name = s.name.strip_prefix("snap:")?.to_owned();
            let at = std::time::UNIX_EPOCH + Duration::from_secs(s.date_sec);
            Some((
                s.date_sec,
                SnapshotInfo {
                    name,
                    created: ferry_core::sys::utc_timestamp(at),
                    vm_state: s.vm_state_size,
                },
            ))
        })
        .collect();
    snaps.sort_by_key(|(t, _)| *t);
    Ok(snaps.into_iter().map(|(_, s)| s).collect())
}

/// Take snapshot `name` of every disk of `j` (owned here): in one QMP
/// transaction while it runs (all disks at the same instant), with
/// `qemu-img` while it is stopped (undone on every disk if one fails).
pub fn create(wd: &Workdir, j: &Jname, name: &str) -> Result<SnapshotInfo> {
    lease::held(wd, j)?;
    let cfg = load(wd, j)?;
    let all = disks(wd, &cfg)?;
    if list(wd, j)?.iter().any(|s| s.name == name) {
        return Err(Error::Refused(format!(
            "{j} already has a snapshot {name}; destroy it first"
        )));
    }
    match running_qmp(wd, j, "snapshot")? {
        Some(mut q) => {
            let ds: Vec<Disk> = all.iter().map(|(d, _)| d.clone()).collect();
            disk::snapshot_live(&mut q, j, &ds, &tag(name))?;
        }
        None => {
            for (i, (_, file)) in all.iter().enumerate() {
                if let Err(e) = img_snapshot("-c", name, file) {
                    for (_, done) in &all[..i] {
                        let _ = img_snapshot("-d", name, done);
                    }
                    return Err(e);
                }
            }
        }
    }
    list(wd, j)?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| Error::Failed(format!("the snapshot {name} of {j} is not in its disk")))
}

/// `qemu-img snapshot <op> snap:<name> <file>`.
fn img_snapshot(op: &str, name: &str, file: &Path) -> Result<()> {
    qemu::img(&[
        "snapshot".as_ref(),
        op.as_ref(),
        tag(name).as_ref(),
        file.as_os_str(),
    ])
}

/// Remove snapshot `name` of `j` (owned here; live while it runs).
pub fn destroy(wd: &Workdir, j: &Jname, name: &str) -> Result<()> {
    lease::held(wd, j)?;
    must_have(wd, j, name)?;
    remove(wd, j, &[name.to_owned()])
}

/// Refuse a snapshot `j` does not have (exit 3).
fn must_have(wd: &Workdir, j: &Jname, name: &str) -> Result<()> {
    if list(wd, j)?.iter().any(|s| s.name == name) {
        return Ok(());
    }
    Err(VmError::NoSuchSnapshot {
        jname: j.clone(),
        name: name.to_owned(),
    }
    .into())
}

/// Remove every snapshot of `j` (owned here); how many there were.
pub fn destroy_all(wd: &Workdir, j: &Jname) -> Result<usize> {
    lease::held(wd, j)?;
    let names: Vec<String> = list(wd, j)?.into_iter().map(|s| s.name).collect();
    remove(wd, j, &names)?;
    Ok(names.len())
}

/// Remove these snapshots from every disk that holds them (a disk
/// attached after a snapshot does not): over one QMP connection while the
/// VM runs, with `qemu-img` while it is stopped.
fn remove(wd: &Workdir, j: &Jname, names: &[String]) -> Result<()> {
    let all = disks(wd, &load(wd, j)?)?;
    let mut qmp = running_qmp(wd, j, "snapshot")?;
    for (d, file) in &all {
        let held = image_snapshots(file)?;
        for name in names
            .iter()
            .filter(|n| held.iter().any(|s| s.name == tag(n)))
        {
            match qmp.as_mut() {
                Some(q) => disk::delete_snapshot_live(q, j, d, &tag(name))?,
                None => img_snapshot("-d", name, file)?,
            }
        }
    }
    Ok(())
}

/// Put every disk of `j` back to snapshot `name` (stopped, owned here).
/// The snapshots taken after it stay (qcow2's snapshots are independent of
/// one another, unlike CBSD's ZFS ones). A disk attached after the
/// snapshot has nothing to go back to: refused, naming it.
pub fn rollback(wd: &Workdir, j: &Jname, name: &str) -> Result<()> {
    lease::held(wd, j)?;
    let (st, _) = runtime::state(wd, j)?;
    if matches!(st, EnvState::Running | EnvState::Incoming) {
        return Err(Error::WrongState {
            jname: j.clone(),
            state: st.display(),
            action: "rollback",
            needs: "stopped",
        });
    }
    let cfg = load(wd, j)?;
    let all = disks(wd, &cfg)?;
    must_have(wd, j, name)?;
    for (d, file) in &all {
        if !has(file, name)? {
            return Err(Error::Refused(format!(
                "{} of {j} was attached after snapshot {name}: it has nothing to roll back to; detach it first",
                d.name()
            )));
        }
    }
    for (_, file) in &all {
        img_snapshot("-a", name, file)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gettimeofday_names_the_time_and_other_names_stay() {
        let n = resolve_name("gettimeofday");
        assert_eq!(n.len(), 14, "{n}");
        assert!(n.starts_with("20"), "{n}");
        assert_eq!(resolve_name("before-upgrade"), "before-upgrade");
        assert_eq!(tag("x"), "snap:x");
    }

    #[test]
    fn qemu_img_s_snapshot_list_reads() {
        let text = r#"{"format": "qcow2", "virtual-size": 16777216, "snapshots": [
            {"id": "1", "name": "ckp1", "date-sec": 1700000000, "date-nsec": 0, "vm-state-size": 0, "vm-clock-sec": 0, "vm-clock-nsec": 0, "icount": 0},
            {"id": "2", "name": "snap:a", "date-sec": 1700000100, "date-nsec": 0, "vm-state-size": 0, "vm-clock-sec": 0, "vm-clock-nsec": 0}
        ]}"#;
        let info: ImageInfo = serde_json::from_str(text).expect("reads");
        let names: Vec<&str> = info.snapshots.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ckp1", "snap:a"]);
        let bare: ImageInfo = serde_json::from_str(r#"{"format": "raw"}"#).expect("reads");
        assert!(bare.snapshots.is_empty());
    }
}
