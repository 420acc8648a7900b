//! A VM's definition, typed through the grammar of `bcreate` (as jails go
//! through `jcreate`'s), and the checks `bcreate` makes before anything is
//! created.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_api::args::{HookPath, Size};
use ferry_api::command::{BcreateArgs, NicKind};
use ferry_api::Command;
use ferry_core::envdef::Hooks;
use ferry_core::rcconf::Definition;
use ferry_core::{Error, Jname, Result, Workdir};

use crate::disk::{self, Disk};

/// Smallest `vm_ram` accepted.
pub const MIN_RAM: u64 = 16 << 20;

/// A VM's settings.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub args: BcreateArgs,
    /// Disks beyond dsk1 (`bhyve-dsk mode=attach`), from `vm_disks`.
    pub extra_disks: Vec<Disk>,
    pub hooks: Hooks,
}

impl VmConfig {
    pub fn jname(&self) -> &Jname {
        &self.args.jname
    }

    pub fn stop_timeout(&self) -> Duration {
        Duration::from_secs(self.args.stop_timeout)
    }

    /// The first disk, if the VM has one.
    pub fn disk(&self, wd: &Workdir) -> Option<PathBuf> {
        (self.args.imgsize.0 > 0).then(|| wd.data_dir(self.jname()).join("dsk1.vhd"))
    }

    pub fn disk_format(&self) -> &'static str {
        self.args.imgtype.as_str()
    }

    /// Every disk of the VM: dsk1 (when `imgsize` is not 0), then the
    /// attached ones.
    pub fn disks(&self) -> Vec<Disk> {
        let first = (self.args.imgsize.0 > 0).then(|| Disk::first(self.args.imgtype));
        first
            .into_iter()
            .chain(self.extra_disks.iter().cloned())
            .collect()
    }

    /// Type and check the settings given to `bcreate`.
    pub fn from_args(mut args: BcreateArgs, workdir: &Path) -> Result<VmConfig> {
        crate::cloud::hash_passwords(&mut args)?;
        // CBSD's ci_interface is the NIC's host bridge.
        if let (Some(i), false) = (&args.ci_interface, args.given.contains("interface")) {
            args.interface = i.clone();
        }
        validate(&args)?;
        let def = to_definition(&args, &[], workdir)?;
        let hooks = Hooks::from_definition(&def, workdir)?;
        Ok(VmConfig {
            args,
            extra_disks: Vec::new(),
            hooks,
        })
    }

    /// Read a VM's definition.
    pub fn from_definition(def: &Definition, wd: &Workdir, path: &Path) -> Result<VmConfig> {
        if let Some(e) = def.get("emulator").filter(|e| *e != "qemu") {
            return Err(Error::bad_value("emulator", e, "this env is not a QEMU VM"));
        }
        let bad = |reason: String| Error::BadDefinition {
            path: path.to_path_buf(),
            reason,
        };
        let Command::Bcreate(args) = ferry_api::definition::typed(def, wd.root(), "bcreate")
            .map_err(|e| bad(e.to_string()))?
        else {
            return Err(Error::Failed("bcreate parsed into another command".into()));
        };
        validate(&args).map_err(|e| bad(e.to_string()))?;
        let extra_disks = disk::parse_list(def.get(disk::DEFINITION_KEY).unwrap_or(""))
            .and_then(|d| disk::check_placement(&args.vm_machine.0, &d).map(|()| d))
            .map_err(|e| bad(format!("{}: {e}", disk::DEFINITION_KEY)))?;
        let hooks = Hooks::from_definition(def, wd.root())?;
        Ok(VmConfig {
            args,
            extra_disks,
            hooks,
        })
    }
}

/// Range checks the grammar alone cannot make.
fn validate(a: &BcreateArgs) -> Result<()> {
    if a.vm_ram.0 < MIN_RAM || !a.vm_ram.0.is_multiple_of(1 << 20) {
        return Err(Error::bad_value(
            "vm_ram",
            &a.vm_ram.render(),
            "must be a whole number of MiB, at least 16m",
        ));
    }
    if !(1..=255).contains(&a.vm_cpus) {
        return Err(Error::bad_value(
            "vm_cpus",
            &a.vm_cpus.to_string(),
            "must be from 1 to 255",
        ));
    }
    if a.vm_vnc_port != 0 && a.vm_vnc_port < 5900 {
        return Err(Error::bad_value(
            "vm_vnc_port",
            &a.vm_vnc_port.to_string(),
            "must be 0 or at least 5900",
        ));
    }
    if !a.imgsize.0.is_multiple_of(512) {
        return Err(Error::bad_value(
            "imgsize",
            &a.imgsize.render(),
            "must be a multiple of 512 bytes",
        ));
    }
    if a.vm_initrd.is_some() && a.vm_kernel.is_none() {
        return Err(Error::bad_value("vm_initrd", "", "needs vm_kernel"));
    }
    if a.vm_kernel.is_none() && a.imgsize.0 == 0 {
        return Err(Error::bad_value(
            "imgsize",
            "0",
            "a VM without vm_kernel boots from dsk1, so it needs a disk",
        ));
    }
    // Every cloud-init key read as the seed will read it.
    crate::cloud::seed(a.jname.as_str(), a, "52:54:00:00:00:00")?;
    for (key, p) in [("vm_kernel", &a.vm_kernel), ("vm_initrd", &a.vm_initrd)] {
        if let Some(p) = p {
            if !p.is_file() {
                return Err(Error::bad_value(key, &p.to_string_lossy(), "no such file"));
            }
        }
    }
    Ok(())
}

/// The definition file of a VM with these settings and these disks beyond
/// dsk1.
pub fn to_definition(a: &BcreateArgs, extra_disks: &[Disk], workdir: &Path) -> Result<Definition> {
    let j = a.jname.as_str();
    let hook = |h: &HookPath| {
        h.0.as_ref()
            .map_or_else(|| "0".to_owned(), |p| p.to_string_lossy().into_owned())
    };
    let flag = |b: bool| if b { "1" } else { "0" }.to_owned();
    let root = workdir.to_string_lossy();
    let pairs: Vec<(&str, String)> = vec![
        ("jname", j.to_owned()),
        ("emulator", "qemu".to_owned()),
        ("path", format!("{root}/jails/{j}")),
        ("data", format!("{root}/jails-data/{j}-data")),
        ("vm_ram", a.vm_ram.render()),
        ("vm_cpus", a.vm_cpus.to_string()),
        ("vm_os_type", a.vm_os_type.0.clone()),
        ("imgsize", a.imgsize.render()),
        ("imgtype", a.imgtype.as_str().to_owned()),
        ("vm_cmdline", a.vm_cmdline.clone()),
        ("vm_nic", a.vm_nic.as_str().to_owned()),
        ("interface", a.interface.0.clone()),
        ("vm_vnc_port", a.vm_vnc_port.to_string()),
        ("vm_cpu_model", a.vm_cpu_model.0.clone()),
        ("vm_machine", a.vm_machine.0.clone()),
        ("astart", flag(a.astart)),
        ("mnt_start", hook(&a.mnt_start)),
        ("mnt_stop", hook(&a.mnt_stop)),
        ("mnt_timeout", a.mnt_timeout.to_string()),
        ("stop_timeout", a.stop_timeout.to_string()),
    ];
    let mut pairs = pairs;
    pairs.extend(ferry_api::values::ha_definition(
        a.ha,
        &a.ha_nodes,
        a.ha_max_restart,
    ));
    if !extra_disks.is_empty() {
        pairs.push((disk::DEFINITION_KEY, disk::render_list(extra_disks)));
    }
    let word = |w: &Option<ferry_api::args::Word>| w.as_ref().map(|w| w.0.clone());
    for (key, v) in [
        ("vm_os_profile", word(&a.vm_os_profile)),
        ("host_hostname", a.host_hostname.clone()),
        ("ci_ip4_addr", a.ci_ip4_addr.clone()),
        ("ci_gw4", a.ci_gw4.clone()),
        ("ci_nameserver_address", a.ci_nameserver_address.clone()),
        ("ci_nameserver_search", a.ci_nameserver_search.clone()),
        ("ci_interface", a.ci_interface.as_ref().map(|i| i.0.clone())),
        ("ci_interface_name", word(&a.ci_interface_name)),
        ("ci_user_add", word(&a.ci_user_add)),
        ("ci_user_pubkey", a.ci_user_pubkey.clone()),
        ("ci_user_pw_root", a.ci_user_pw_root.clone()),
        ("ci_user_pw_user", a.ci_user_pw_user.clone()),
    ] {
        if let Some(v) = v {
            pairs.push((key, v));
        }
    }
    // Direct kernel boot only: absent keys mean "boot from dsk1".
    for (key, p) in [("vm_kernel", &a.vm_kernel), ("vm_initrd", &a.vm_initrd)] {
        if let Some(p) = p {
            pairs.push((key, p.to_string_lossy().into_owned()));
        }
    }
    let mut def = Definition::new();
    for (k, v) in pairs {
        def.set(k, v)
            .map_err(|e| Error::bad_value(k, "", e.to_string()))?;
    }
    for (user, key) in &a.ci_user_pubkey_ {
        let k = format!("ci_user_pubkey_{user}");
        def.set(&k, key.clone())
            .map_err(|e| Error::bad_value(&k, "", e.to_string()))?;
    }
    Ok(def)
}

/// Whether the VM has a NIC on a host bridge.
pub fn bridged(a: &BcreateArgs) -> bool {
    a.vm_nic == NicKind::Bridge
}

/// `vm_ram` in MiB, as QEMU's `-m` takes it.
pub fn ram_mib(a: &BcreateArgs) -> u64 {
    Size::mib(a.vm_ram)
}
