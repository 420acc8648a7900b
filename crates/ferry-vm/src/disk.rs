//! A VM's disks (CBSD's `bhyve-dsk`): dsk1, made by `bcreate` from
//! `imgsize`, and up to eight more, `dsk2.vhd` to `dsk9.vhd` in the VM's
//! data dir (so that they move with it), kept in the definition as
//! `vm_disks="dsk2:virtio-blk:qcow2 dsk3:ahci-hd:raw"`.
//!
//! Every disk has a fixed place on the VM's buses, whether it is attached
//! when QEMU starts or hot-plugged later, so that the QEMU a live
//! migration starts on the destination (from the definition) has the same
//! devices at the same addresses as the source: on a q35 machine, `dskN`
//! (virtio-blk) sits on its own PCIe root port `rpN`, present from the
//! start; on i440fx (`pc`) at slot `0x10+N` of `pci.0`; an `ahci-hd` disk
//! on port `N-2` of q35's own AHCI controller. QEMU cannot hot-plug AHCI
//! disks, so those are attached and detached while the VM is stopped.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use ferry_api::args::Size;
use ferry_api::command::{DiskController, ImgType, SizeChange};
use ferry_api::FromArg;
use ferry_core::registry::Registry;
use ferry_core::{engine, lease, runtime};
use ferry_core::{EnvState, Error, Jname, Result, Workdir};

use crate::qmp::Qmp;
use crate::{load, qemu, qmp_failed, VmConfig, VmError, VMS};

/// The definition key that lists the disks beyond dsk1.
pub const DEFINITION_KEY: &str = "vm_disks";

/// The highest disk number (`dsk9`).
pub const MAX_DISK: u8 = 9;

/// How long a guest may take to release a hot-unplugged disk.
const UNPLUG_WAIT: Duration = Duration::from_secs(30);

/// One disk of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// 1 for dsk1, up to [`MAX_DISK`].
    pub n: u8,
    pub controller: DiskController,
    pub imgtype: ImgType,
}

impl Disk {
    /// dsk1, made by `bcreate`.
    pub fn first(imgtype: ImgType) -> Disk {
        Disk {
            n: 1,
            controller: DiskController::VirtioBlk,
            imgtype,
        }
    }

    /// `dskN`: its QEMU device id and block node name.
    pub fn name(&self) -> String {
        format!("dsk{}", self.n)
    }

    /// `dskN.vhd`, CBSD's file name.
    pub fn file_name(&self) -> String {
        file_name(self.n)
    }

    pub fn file(&self, wd: &Workdir, j: &Jname) -> PathBuf {
        wd.data_dir(j).join(self.file_name())
    }
}

fn file_name(n: u8) -> String {
    format!("dsk{n}.vhd")
}

/// Why a disk or a list of disks is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskError {
    #[error("{0:?} is not a disk: use dskN or dskN.vhd, N from 1 to 9 (a VM's disks live in its data dir on shared storage, so that they move with it)")]
    BadName(String),
    #[error("{0:?} is not DISK:CONTROLLER:IMGTYPE (e.g. dsk2:virtio-blk:qcow2)")]
    BadEntry(String),
    #[error("dsk{0} is listed twice")]
    Twice(u8),
    #[error("dsk1 is the disk bcreate made (imgsize=), not one of vm_disks")]
    First,
    #[error("ahci-hd disks need a q35 machine (this VM's is {0}); use dsk_controller=virtio-blk")]
    AhciNeedsQ35(String),
    #[error("q35's AHCI controller has 6 ports: ahci-hd disks are dsk2 to dsk7, not dsk{0}")]
    AhciPort(u8),
}

/// The number of `dskN` or `dskN.vhd` (1 to 9).
pub fn parse_name(v: &str) -> Result<u8, DiskError> {
    let bad = || DiskError::BadName(v.to_owned());
    let stem = v.strip_suffix(".vhd").unwrap_or(v);
    let digits = stem.strip_prefix("dsk").ok_or_else(bad)?;
    match digits.parse::<u8>() {
        Ok(n) if (1..=MAX_DISK).contains(&n) && digits.len() == 1 => Ok(n),
        _ => Err(bad()),
    }
}

/// Read `vm_disks`: space-separated `dskN:CONTROLLER:IMGTYPE`, N from 2.
pub fn parse_list(text: &str) -> Result<Vec<Disk>, DiskError> {
    let mut out: Vec<Disk> = Vec::new();
    for entry in text.split_whitespace() {
        let bad = || DiskError::BadEntry(entry.to_owned());
        let mut parts = entry.split(':');
        let (Some(name), Some(ctl), Some(img), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let n = parse_name(name)?;
        if n == 1 {
            return Err(DiskError::First);
        }
        if out.iter().any(|d| d.n == n) {
            return Err(DiskError::Twice(n));
        }
        let controller = DiskController::from_arg("dsk_controller", ctl).map_err(|_| bad())?;
        let imgtype = ImgType::from_arg("imgtype", img).map_err(|_| bad())?;
        out.push(Disk {
            n,
            controller,
            imgtype,
        });
    }
    Ok(out)
}

/// The text of `vm_disks`, disks in order of their numbers.
pub fn render_list(disks: &[Disk]) -> String {
    let mut sorted: Vec<&Disk> = disks.iter().collect();
    sorted.sort_by_key(|d| d.n);
    sorted
        .iter()
        .map(|d| {
            format!(
                "{}:{}:{}",
                d.name(),
                d.controller.as_str(),
                d.imgtype.as_str()
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_q35(machine: &str) -> bool {
    machine.contains("q35")
}

/// Whether each disk has a place on this machine's buses.
pub fn check_placement(machine: &str, disks: &[Disk]) -> Result<(), DiskError> {
    for d in disks
        .iter()
        .filter(|d| d.controller == DiskController::AhciHd)
    {
        if !is_q35(machine) {
            return Err(DiskError::AhciNeedsQ35(machine.to_owned()));
        }
        if !(2..=7).contains(&d.n) {
            return Err(DiskError::AhciPort(d.n));
        }
    }
    Ok(())
}

/// The PCIe root ports that disks dsk2..dsk9 hang on (q35 only): one per
/// disk, functions 0-7 of slot 0x10, always present so that the buses are
/// the same whether a disk was there at the start or hot-plugged.
pub fn root_ports(machine: &str) -> Vec<OsString> {
    if !is_q35(machine) {
        return Vec::new();
    }
    (2..=MAX_DISK)
        .flat_map(|n| {
            let f = n - 2;
            let multi = if f == 0 { ",multifunction=on" } else { "" };
            [
                OsString::from("-device"),
                format!("pcie-root-port,id=rp{n},chassis={n},bus=pcie.0,addr=0x10.{f}{multi}")
                    .into(),
            ]
        })
        .collect()
}

/// The `-blockdev` (and `blockdev-add`) object of a disk beyond dsk1.
fn blockdev(d: &Disk, file: &Path) -> Value {
    json!({
        "driver": d.imgtype.as_str(),
        "node-name": d.name(),
        "file": {"driver": "file", "filename": file},
    })
}

/// The `-device` (and `device_add`) properties of a disk beyond dsk1.
fn device(d: &Disk, machine: &str) -> Value {
    let name = d.name();
    match d.controller {
        DiskController::AhciHd => json!({
            "driver": "ide-hd", "id": name, "drive": name, "bus": format!("ide.{}", d.n - 2),
        }),
        DiskController::VirtioBlk if is_q35(machine) => json!({
            "driver": "virtio-blk-pci", "id": name, "drive": name, "bus": format!("rp{}", d.n),
        }),
        DiskController::VirtioBlk => json!({
            "driver": "virtio-blk-pci", "id": name, "drive": name,
            "bus": "pci.0", "addr": format!("0x{:x}", 0x10 + d.n),
        }),
    }
}

/// The command-line arguments of the disks beyond dsk1 (JSON, so that no
/// path needs escaping).
pub fn command_line(wd: &Workdir, cfg: &VmConfig) -> Vec<OsString> {
    let machine = &cfg.args.vm_machine.0;
    cfg.extra_disks
        .iter()
        .flat_map(|d| {
            let file = d.file(wd, cfg.jname());
            [
                "-blockdev".into(),
                blockdev(d, &file).to_string().into(),
                "-device".into(),
                device(d, machine).to_string().into(),
            ]
        })
        .collect()
}

/// The reference QMP's block commands take for a disk: dsk1's block
/// backend (`-drive id=dsk1`) or another disk's node, which QEMU looks up
/// under either key.
pub(crate) fn qmp_ref(d: &Disk) -> Value {
    json!({"device": d.name(), "node-name": d.name()})
}

/// Take internal snapshot `tag` of these disks of a running VM in one QMP
/// transaction: all at the same instant, or none.
pub(crate) fn snapshot_live(q: &mut Qmp, j: &Jname, disks: &[Disk], tag: &str) -> Result<()> {
    let actions: Vec<Value> = disks
        .iter()
        .map(|d| {
            json!({"type": "blockdev-snapshot-internal-sync",
                   "data": {"device": d.name(), "name": tag}})
        })
        .collect();
    q.execute("transaction", Some(json!({ "actions": actions })))
        .map(drop)
        .map_err(|e| qmp_failed(j, e))
}

/// Remove internal snapshot `tag` of one disk of a running VM.
pub(crate) fn delete_snapshot_live(q: &mut Qmp, j: &Jname, d: &Disk, tag: &str) -> Result<()> {
    q.execute(
        "blockdev-snapshot-delete-internal-sync",
        Some(json!({"device": d.name(), "name": tag})),
    )
    .map(drop)
    .map_err(|e| qmp_failed(j, e))
}

/// One disk, as `bhyve-dsk mode=list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    pub disk: Disk,
    /// Virtual size in bytes.
    pub size: u64,
    /// Bytes the image takes on storage.
    pub used: u64,
    /// The VM boots from it (dsk1 without `vm_kernel`).
    pub bootable: bool,
    /// In the definition (false: a `dskN.vhd` in the data dir that no
    /// definition names, e.g. detached).
    pub attached: bool,
}

/// `qemu-img info --output=json`, the part read here.
#[derive(Debug, Deserialize)]
struct ImageSizes {
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    #[serde(rename = "actual-size", default)]
    actual_size: u64,
}

/// Virtual and used size of an image of `format` (`-U`: while a running
/// QEMU holds it).
fn sizes(file: &Path, format: ImgType) -> Result<ImageSizes> {
    let out = qemu::img_output(&[
        "info".as_ref(),
        "-U".as_ref(),
        "--output=json".as_ref(),
        "-f".as_ref(),
        format.as_str().as_ref(),
        file.as_os_str(),
    ])?;
    serde_json::from_slice(&out).map_err(|e| {
        Error::Failed(format!(
            "qemu-img info of {} does not read: {e}",
            file.display()
        ))
    })
}

/// The disks of `j`: attached ones in order, then `dskN.vhd` files in its
/// data dir that it does not name (detached).
pub fn list(wd: &Workdir, j: &Jname) -> Result<Vec<DiskInfo>> {
    let cfg = load(wd, j)?;
    let attached = cfg.disks();
    let mut out = Vec::new();
    for d in &attached {
        let s = sizes(&d.file(wd, j), d.imgtype)?;
        out.push(DiskInfo {
            bootable: d.n == 1 && cfg.args.vm_kernel.is_none(),
            disk: d.clone(),
            size: s.virtual_size,
            used: s.actual_size,
            attached: true,
        });
    }
    for n in 1..=MAX_DISK {
        let file = wd.data_dir(j).join(file_name(n));
        if attached.iter().any(|d| d.n == n) || !file.is_file() {
            continue;
        }
        // A detached image's format is not on record: not probed (a guest
        // may have written any header into a raw disk); shown by its file.
        let used = fs::metadata(&file)
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .unwrap_or(0);
        let len = fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        out.push(DiskInfo {
            disk: Disk {
                n,
                controller: DiskController::VirtioBlk,
                imgtype: ImgType::Raw,
            },
            size: len,
            used,
            bootable: false,
            attached: false,
        });
    }
    Ok(out)
}

/// The VM's QMP while it runs, `None` while it is stopped; refused while
/// it arrives by migration.
pub(crate) fn running_qmp(wd: &Workdir, j: &Jname, action: &'static str) -> Result<Option<Qmp>> {
    match runtime::state(wd, j)?.0 {
        EnvState::Running => Qmp::connect(&qemu::qmp_socket(wd, j), crate::QMP_CONNECT)
            .map(Some)
            .map_err(|e| qmp_failed(j, e)),
        EnvState::Incoming => Err(Error::WrongState {
            jname: j.clone(),
            state: "incoming",
            action,
            needs: "stopped or running",
        }),
        _ => Ok(None),
    }
}

/// Refuse an AHCI change while the VM runs: QEMU has no AHCI hot-plug.
fn no_ahci_hotplug(j: &Jname, d: &Disk, running: bool, what: &str) -> Result<()> {
    if running && d.controller == DiskController::AhciHd {
        return Err(Error::Refused(format!(
            "{j} is running and QEMU cannot {what} an ahci-hd disk live; stop it first, or use dsk_controller=virtio-blk"
        )));
    }
    Ok(())
}

/// Write `disks` as the VM's `vm_disks`, checked like any definition.
fn store(wd: &Workdir, reg: &Registry, j: &Jname, disks: &[Disk]) -> Result<()> {
    engine::set(
        &VMS,
        wd,
        reg,
        j,
        &[(DEFINITION_KEY.to_owned(), render_list(disks))],
    )
    .map(drop)
}

/// What `attach` is asked.
#[derive(Debug, Clone)]
pub struct AttachRequest {
    pub controller: DiskController,
    /// The disk's number; `None`: the lowest free one.
    pub n: Option<u8>,
    /// Size of a new image; `None` to attach an existing `dskN.vhd`.
    pub size: Option<Size>,
    pub imgtype: ImgType,
}

/// Attach a disk to `j` (owned here): a new image of `size`, or the
/// existing `dskN.vhd` of its data dir; hot-plugged while it runs. A
/// failure at any step undoes the steps before it.
pub fn attach(wd: &Workdir, reg: &Registry, j: &Jname, req: &AttachRequest) -> Result<Disk> {
    lease::held(wd, j)?;
    let cfg = load(wd, j)?;
    let taken = cfg.disks();
    let n = match req.n {
        Some(1) => {
            return Err(Error::bad_value(
                "dsk_path",
                "dsk1",
                DiskError::First.to_string(),
            ))
        }
        Some(n) if taken.iter().any(|d| d.n == n) => {
            return Err(Error::Refused(format!("dsk{n} is already attached to {j}")))
        }
        Some(n) => n,
        None => (2..=MAX_DISK)
            .find(|&n| {
                !taken.iter().any(|d| d.n == n) && !wd.data_dir(j).join(file_name(n)).exists()
            })
            .ok_or_else(|| Error::Refused(format!("{j} has no free disk slot (dsk2 to dsk9)")))?,
    };
    let d = Disk {
        n,
        controller: req.controller,
        imgtype: req.imgtype,
    };
    check_placement(&cfg.args.vm_machine.0, std::slice::from_ref(&d))
        .map_err(|e| Error::bad_value("dsk_controller", d.controller.as_str(), e.to_string()))?;
    let mut qmp = running_qmp(wd, j, "attach a disk")?;
    no_ahci_hotplug(j, &d, qmp.is_some(), "attach")?;
    let file = d.file(wd, j);
    let created = match (file.exists(), req.size) {
        (true, Some(_)) => {
            return Err(Error::Refused(format!(
            "{} already exists in {j}'s data dir; attach it without dsk_size, or delete it first",
            d.file_name()
        )))
        }
        (true, None) => false,
        (false, None) => {
            return Err(Error::bad_value(
                "dsk_size",
                "",
                format!("is required: {} does not exist yet", d.file_name()),
            ))
        }
        (false, Some(size)) => {
            check_size(size.0)?;
            qemu::img(&[
                "create".as_ref(),
                "-q".as_ref(),
                "-f".as_ref(),
                d.imgtype.as_str().as_ref(),
                file.as_os_str(),
                size.0.to_string().as_ref(),
            ])?;
            true
        }
    };
    let undo_file = || {
        if created {
            let _ = fs::remove_file(&file);
        }
    };
    if let Some(q) = qmp.as_mut() {
        if let Err(e) = plug(q, j, &d, &file, &cfg.args.vm_machine.0) {
            undo_file();
            return Err(e);
        }
    }
    let mut disks = cfg.extra_disks.clone();
    disks.push(d.clone());
    if let Err(e) = store(wd, reg, j, &disks) {
        if let Some(q) = qmp.as_mut() {
            let _ = unplug(q, j, &d);
        }
        undo_file();
        return Err(e);
    }
    Ok(d)
}

/// A disk size QEMU takes: a whole number of 512-byte sectors, not 0.
fn check_size(size: u64) -> Result<()> {
    if size == 0 || !size.is_multiple_of(512) {
        return Err(Error::bad_value(
            "dsk_size",
            &Size(size).render(),
            "must be a multiple of 512 bytes, not 0",
        ));
    }
    Ok(())
}

/// Hot-plug: the block node, then the device; the node goes if the device
/// does not come.
fn plug(q: &mut Qmp, j: &Jname, d: &Disk, file: &Path, machine: &str) -> Result<()> {
    q.execute("blockdev-add", Some(blockdev(d, file)))
        .map_err(|e| qmp_failed(j, e))?;
    if let Err(e) = q.execute("device_add", Some(device(d, machine))) {
        let _ = q.execute("blockdev-del", Some(json!({"node-name": d.name()})));
        return Err(qmp_failed(j, e));
    }
    Ok(())
}

/// Hot-unplug: ask the guest to release the device, wait until QEMU says
/// it is gone, then drop the block node.
fn unplug(q: &mut Qmp, j: &Jname, d: &Disk) -> Result<()> {
    let name = d.name();
    q.execute("device_del", Some(json!({"id": name})))
        .map_err(|e| qmp_failed(j, e))?;
    q.wait_event_where("DEVICE_DELETED", UNPLUG_WAIT, |data| {
        data.get("device").and_then(Value::as_str) == Some(name.as_str())
    })
    .map_err(|_| {
        Error::Failed(format!(
            "the guest of {j} did not release {name} within {} s (does it support PCI hot-unplug?); {name} stays attached",
            UNPLUG_WAIT.as_secs()
        ))
    })?;
    q.execute("blockdev-del", Some(json!({"node-name": name})))
        .map_err(|e| qmp_failed(j, e))?;
    Ok(())
}

/// Detach disk `n` from `j` (owned here), hot-unplugged while it runs; with
/// `delete`, its image is removed too (a detached image as well). dsk1
/// stays: it is the disk `bcreate` made.
pub fn detach(wd: &Workdir, reg: &Registry, j: &Jname, n: u8, delete: bool) -> Result<()> {
    lease::held(wd, j)?;
    let cfg = load(wd, j)?;
    if n == 1 {
        return Err(Error::Refused(format!(
            "dsk1 is the disk {j} was created with; it stays (grow it with mode=modify, or bremove the VM)"
        )));
    }
    let file = wd.data_dir(j).join(file_name(n));
    let Some(d) = cfg.extra_disks.iter().find(|d| d.n == n).cloned() else {
        if delete && file.is_file() {
            return fs::remove_file(&file).map_err(Error::io("cannot remove", &file));
        }
        return Err(VmError::NoSuchDisk {
            jname: j.clone(),
            disk: file_name(n),
        }
        .into());
    };
    let mut qmp = running_qmp(wd, j, "detach a disk")?;
    no_ahci_hotplug(j, &d, qmp.is_some(), "detach")?;
    if let Some(q) = qmp.as_mut() {
        unplug(q, j, &d)?;
    }
    let rest: Vec<Disk> = cfg.extra_disks.into_iter().filter(|x| x.n != n).collect();
    store(wd, reg, j, &rest)?;
    if delete {
        fs::remove_file(&file).map_err(Error::io("cannot remove", &file))?;
    }
    Ok(())
}

/// Grow disk `n` of `j` (owned here), live while it runs; returns its new
/// size. Shrinking is refused: it would cut off the guest's data.
pub fn resize(wd: &Workdir, reg: &Registry, j: &Jname, n: u8, change: SizeChange) -> Result<u64> {
    lease::held(wd, j)?;
    let cfg = load(wd, j)?;
    let d = cfg
        .disks()
        .into_iter()
        .find(|d| d.n == n)
        .ok_or_else(|| VmError::NoSuchDisk {
            jname: j.clone(),
            disk: file_name(n),
        })?;
    let file = d.file(wd, j);
    let now = sizes(&file, d.imgtype)?.virtual_size;
    let new = change
        .applied_to(now)
        .ok_or_else(|| Error::bad_value("dsk_size", &change.to_arg(), "too large"))?;
    check_size(new)?;
    if new < now {
        return Err(Error::Refused(format!(
            "{} of {j} is {}; shrinking it to {} would cut off the guest's data",
            d.name(),
            Size(now).render(),
            Size(new).render()
        )));
    }
    if new == now {
        return Ok(now);
    }
    match running_qmp(wd, j, "resize a disk")? {
        Some(mut q) => {
            let mut args = qmp_ref(&d);
            args["size"] = json!(new);
            q.execute("block_resize", Some(args))
                .map_err(|e| qmp_failed(j, e))?;
        }
        None => qemu::img(&[
            "resize".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            d.imgtype.as_str().as_ref(),
            file.as_os_str(),
            new.to_string().as_ref(),
        ])?,
    }
    // dsk1's size is on record as `imgsize`: kept true.
    if n == 1 {
        engine::set(
            &VMS,
            wd,
            reg,
            j,
            &[("imgsize".to_owned(), Size(new).render())],
        )?;
    }
    Ok(new)
}

impl From<DiskError> for Error {
    fn from(e: DiskError) -> Error {
        Error::classified(ferry_core::ErrorKind::BadInput, e)
    }
}

impl VmConfig {
    /// Refuse a change while the VM has a disk QEMU cannot snapshot.
    pub fn all_qcow2(&self) -> std::result::Result<(), VmError> {
        match self
            .disks()
            .into_iter()
            .find(|d| d.imgtype != ImgType::Qcow2)
        {
            None => Ok(()),
            Some(d) => Err(VmError::NoSnapshots {
                jname: self.jname().clone(),
                why: format!(
                    "its disk {} is raw (imgtype=raw); snapshots need qcow2",
                    d.name()
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_names_are_dsk1_to_dsk9_with_or_without_vhd() {
        assert_eq!(parse_name("dsk2"), Ok(2));
        assert_eq!(parse_name("dsk9.vhd"), Ok(9));
        assert_eq!(parse_name("dsk1.vhd"), Ok(1));
        for bad in [
            "dsk0", "dsk10", "dsk02", "/dev/da2", "../dsk2", "dsk", "disk2", "dsk2.img",
        ] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_list_of_disks_reads_back_as_written() {
        let disks = parse_list("dsk3:ahci-hd:raw  dsk2:virtio-blk:qcow2").expect("reads");
        assert_eq!(disks.len(), 2);
        assert_eq!(
            render_list(&disks),
            "dsk2:virtio-blk:qcow2 dsk3:ahci-hd:raw"
        );
        assert_eq!(parse_list("").expect("empty"), Vec::new());
        assert_eq!(
            parse_list("dsk2:virtio-blk:qcow2 dsk2:ahci-hd:raw"),
            Err(DiskError::Twice(2))
        );
        assert_eq!(parse_list("dsk1:virtio-blk:qcow2"), Err(DiskError::First));
        for bad in [
            "dsk2",
            "dsk2:nvme:qcow2",
            "dsk2:virtio-blk:vmdk",
            "dsk2:virtio-blk:qcow2:x",
        ] {
            assert!(parse_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn disks_have_fixed_places_on_each_machine() {
        let v = Disk {
            n: 3,
            controller: DiskController::VirtioBlk,
            imgtype: ImgType::Qcow2,
        };
        assert_eq!(device(&v, "pc-q35-10.0")["bus"], "rp3");
        assert_eq!(device(&v, "pc-i440fx-10.0")["addr"], "0x13");
        let a = Disk {
            controller: DiskController::AhciHd,
            ..v.clone()
        };
        assert_eq!(device(&a, "pc-q35-10.0")["bus"], "ide.1");
        assert!(check_placement("pc-q35-10.0", std::slice::from_ref(&a)).is_ok());
        assert!(matches!(
            check_placement("pc-i440fx-10.0", std::slice::from_ref(&a)),
            Err(DiskError::AhciNeedsQ35(_))
        ));
        let a8 = Disk { n: 8, ..a };
        assert_eq!(
            check_placement("pc-q35-10.0", &[a8]),
            Err(DiskError::AhciPort(8))
        );
        assert_eq!(root_ports("pc-q35-10.0").len(), 16);
        assert!(root_ports("pc-i440fx-10.0").is_empty());
        let file = Path::new("/w/jails-data/v-data/dsk3.vhd");
        assert_eq!(
            blockdev(&v, file)["file"]["filename"],
            "/w/jails-data/v-data/dsk3.vhd"
        );
    }

    #[test]
    fn growth_adds_and_a_size_replaces() {
        assert_eq!(SizeChange::By(Size(10)).applied_to(5), Some(15));
        assert_eq!(SizeChange::To(Size(10)).applied_to(50), Some(10));
        assert_eq!(SizeChange::By(Size(u64::MAX)).applied_to(1), None);
    }
}
