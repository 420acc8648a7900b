//! Snapshots of a VM's disk (CBSD's `bsnapshot`): qcow2 internal
//! snapshots of `dsk1`, tagged `snap:<name>` so that they never meet a
//! checkpoint's (whose names are words, without `:`). Taken and removed
//! over QMP while the VM runs (disk only: its RAM goes on), with
//! `qemu-img` while it is stopped; a rollback needs it stopped. A raw disk
//! has no snapshots: refused with the reason.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::json;

use ferry_core::lease;
use ferry_core::runtime;
use ferry_core::{EnvState, Error, Jname, Result, Workdir};

use crate::qmp::Qmp;
use crate::{load, qemu, qmp_failed, VmConfig, VmError};

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
    format: String,
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

/// The VM's disk, if it can have snapshots: qcow2, and one at all.
fn disk(wd: &Workdir, cfg: &VmConfig) -> Result<PathBuf> {
    let j = cfg.jname();
    let disk = cfg.disk(wd).ok_or_else(|| VmError::NoSnapshots {
        jname: j.clone(),
        why: "it has no disk (imgsize=0)".into(),
    })?;
    if !crate::config::checkpointable(&cfg.args) {
        return Err(VmError::NoSnapshots {
            jname: j.clone(),
            why: "its disk is raw (imgtype=raw); snapshots need qcow2".into(),
        }
        .into());
    }
    Ok(disk)
}

/// The VM's QMP while it runs; `None` while it is stopped.
fn running_qmp(wd: &Workdir, j: &Jname) -> Result<Option<Qmp>> {
    match runtime::state(wd, j)?.0 {
        EnvState::Running => Qmp::connect(&qemu::qmp_socket(wd, j), Duration::from_secs(10))
            .map(Some)
            .map_err(|e| qmp_failed(j, e)),
        EnvState::Incoming => Err(Error::WrongState {
            jname: j.clone(),
            state: "incoming",
            action: "snapshot",
            needs: "stopped or running",
        }),
        _ => Ok(None),
    }
}

/// The snapshots of `j`, oldest first.
pub fn list(wd: &Workdir, j: &Jname) -> Result<Vec<SnapshotInfo>> {
    let cfg = load(wd, j)?;
    let disk = disk(wd, &cfg)?;
    // -U: read while a running QEMU holds the image.
    let out = qemu::img_output(&[
        "info".as_ref(),
        "-U".as_ref(),
        "--output=json".as_ref(),
        disk.as_os_str(),
    ])?;
    let info: ImageInfo = serde_json::from_slice(&out).map_err(|e| {
        Error::Failed(format!(
            "qemu-img info of {} does not read: {e}",
            disk.display()
        ))
    })?;
    if info.format != "qcow2" {
        return Err(VmError::NoSnapshots {
            jname: j.clone(),
            why: format!("its disk is {}, not qcow2", info.format),
        }
        .into());
    }
    let mut snaps: Vec<(u64, SnapshotInfo)> = info
        .snapshots
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

/// Take snapshot `name` of `j`'s disk (owned here; live while it runs).
pub fn create(wd: &Workdir, j: &Jname, name: &str) -> Result<SnapshotInfo> {
    lease::held(wd, j)?;
    let cfg = load(wd, j)?;
    let disk = disk(wd, &cfg)?;
    if list(wd, j)?.iter().any(|s| s.name == name) {
        return Err(Error::Refused(format!(
            "{j} already has a snapshot {name}; destroy it first"
        )));
    }
    match running_qmp(wd, j)? {
        Some(mut q) => {
            q.execute(
                "blockdev-snapshot-internal-sync",
                Some(json!({"device": "dsk1", "name": tag(name)})),
            )
            .map_err(|e| qmp_failed(j, e))?;
        }
        None => qemu::img(&[
            "snapshot".as_ref(),
            "-c".as_ref(),
            tag(name).as_ref(),
            disk.as_os_str(),
        ])?,
    }
    list(wd, j)?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| Error::Failed(format!("the snapshot {name} of {j} is not in its disk")))
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

/// Remove these snapshots, known to exist: over one QMP connection while
/// the VM runs, with `qemu-img` while it is stopped.
fn remove(wd: &Workdir, j: &Jname, names: &[String]) -> Result<()> {
    let disk = disk(wd, &load(wd, j)?)?;
    let mut qmp = running_qmp(wd, j)?;
    for name in names {
        match qmp.as_mut() {
            Some(q) => q
                .execute(
                    "blockdev-snapshot-delete-internal-sync",
                    Some(json!({"device": "dsk1", "name": tag(name)})),
                )
                .map(drop)
                .map_err(|e| qmp_failed(j, e))?,
            None => qemu::img(&[
                "snapshot".as_ref(),
                "-d".as_ref(),
                tag(name).as_ref(),
                disk.as_os_str(),
            ])?,
        }
    }
    Ok(())
}

/// Put `j`'s disk back to snapshot `name` (stopped, owned here). The
/// snapshots taken after it stay (qcow2's snapshots are independent of one
/// another, unlike CBSD's ZFS ones).
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
    let disk = disk(wd, &cfg)?;
    must_have(wd, j, name)?;
    qemu::img(&[
        "snapshot".as_ref(),
        "-a".as_ref(),
        tag(name).as_ref(),
        disk.as_os_str(),
    ])
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
        assert_eq!(info.format, "qcow2");
        let names: Vec<&str> = info.snapshots.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ckp1", "snap:a"]);
        let bare: ImageInfo = serde_json::from_str(r#"{"format": "raw"}"#).expect("reads");
        assert!(bare.snapshots.is_empty());
    }
}
