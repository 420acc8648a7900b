//! QEMU as a managed process: the binary, the accelerator probe, machine
//! type pinning, the command line, and starting it daemonized.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::VmError;
use ferry_api::command::NicKind;
use ferry_core::registry::Registry;
use ferry_core::workdir::fnv1a;
use ferry_core::{Error, Jname, Result, Workdir};

use crate::config::{self, VmConfig};

/// The system emulator of this node: `binary=` in `etc/qemu.conf`
/// (`initenv qemu=`), else `qemu-system-<arch>` from `PATH`.
pub fn binary(wd: &Workdir) -> Result<String> {
    Ok(wd
        .setting(QEMU_CONF, "binary")?
        .unwrap_or_else(|| format!("qemu-system-{}", std::env::consts::ARCH)))
}

const QEMU_CONF: &str = "qemu.conf";

/// Run this node's QEMU with `args` (no stdin) to its end.
fn output<S: AsRef<std::ffi::OsStr>>(
    wd: &Workdir,
    args: impl IntoIterator<Item = S>,
) -> Result<std::process::Output> {
    let bin = binary(wd)?;
    Command::new(&bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(Error::io("cannot run QEMU (install qemu-system-x86)", bin))
}

/// The first line of `qemu --version`, if that runs and says it is QEMU.
pub fn version_of(bin: &str) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or("");
    (out.status.success() && first.starts_with("QEMU emulator version")).then(|| first.to_owned())
}

/// A program [`check_binary`] accepted as a node's QEMU.
#[derive(Debug, Clone)]
pub struct QemuBinary {
    path: String,
    /// Its `--version` line.
    pub version: String,
}

/// Check that `bin` may be a node's QEMU (`initenv qemu=`): an absolute
/// path to a program that runs as QEMU.
pub fn check_binary(bin: &Path) -> Result<QemuBinary> {
    let shown = bin.to_string_lossy();
    if !bin.is_absolute()
        || bin
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(Error::bad_value(
            "qemu",
            &shown,
            "must be an absolute path without '..'",
        ));
    }
    let s = bin
        .to_str()
        .ok_or_else(|| Error::bad_value("qemu", &shown, "must be UTF-8"))?;
    let version = version_of(s)
        .ok_or_else(|| Error::bad_value("qemu", s, "does not run as QEMU (`--version` failed)"))?;
    Ok(QemuBinary {
        path: s.to_owned(),
        version,
    })
}

/// Make `bin` the QEMU of this node.
pub fn set_binary(wd: &Workdir, bin: &QemuBinary) -> Result<()> {
    wd.set_setting(
        QEMU_CONF,
        "binary",
        &bin.path,
        "the QEMU this node runs VMs with (ferry initenv qemu=)",
    )
}

/// Where a VM's QMP socket and pid file live (local).
pub fn qmp_socket(wd: &Workdir, j: &Jname) -> PathBuf {
    wd.run_dir().join(format!("{j}.qmp"))
}

pub fn pid_file(wd: &Workdir, j: &Jname) -> PathBuf {
    wd.run_dir().join(format!("{j}.pid"))
}

pub fn console_log(wd: &Workdir, j: &Jname) -> PathBuf {
    wd.system_dir(j).join("console.log")
}

/// Unix socket paths are limited to 107 bytes.
pub fn check_socket_path(p: &Path) -> Result<()> {
    if p.as_os_str().len() > 107 {
        return Err(VmError::SocketPathTooLong(p.to_path_buf()).into());
    }
    Ok(())
}

/// Pin a machine type alias (`q35`, `pc`) to the versioned type it stands
/// for on this QEMU (`pc-q35-7.2`), so the machine a VM was created with is
/// the one it migrates with. A versioned name is kept; an unknown one is refused.
pub fn resolve_machine(wd: &Workdir, name: &str) -> Result<String> {
    let out = output(wd, ["-machine", "help"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines().skip(1) {
        let mut words = line.split_whitespace();
        if words.next() != Some(name) {
            continue;
        }
        if let Some(target) = line
            .split("(alias of ")
            .nth(1)
            .and_then(|r| r.split(')').next())
        {
            return Ok(target.trim().to_owned());
        }
        return Ok(name.to_owned());
    }
    Err(Error::bad_value(
        "vm_machine",
        name,
        format!("{} has no such machine type", binary(wd)?),
    ))
}

/// The probe's code, at the start of the BIOS segment (0xF0000): from real
/// mode into 32-bit protected mode (a flat GDT), then into 64-bit long
/// mode (PAE, an identity-mapped 2 MiB page at 0 built in RAM at 0x1000,
/// EFER.LME, paging), then `mov al, 0x31; out 0xf4, al; hlt`. Entering
/// real mode alone proves little: on some hosts KVM runs real-mode code
/// but hangs a guest kernel at its switch to protected or long mode.
/// Assembled from this GNU as source (`as --32`, `objcopy -O binary`):
///
/// ```text
///     .code16
/// s:  cli
///     lgdtl %cs:(gd - s)
///     movl %cr0, %eax ; orl $1, %eax ; movl %eax, %cr0
///     ljmpl $0x08, $(0xF0000 + p - s)
///     .code32
/// p:  movw $0x10, %ax ; movw %ax, %ds ; movw %ax, %es ; movw %ax, %ss
///     movl $0x2003, 0x1000 ; movl $0, 0x1004      # PML4 -> PDPT
///     movl $0x3003, 0x2000 ; movl $0, 0x2004      # PDPT -> PD
///     movl $0x83, 0x3000 ; movl $0, 0x3004        # PD: 2 MiB page at 0
///     movl %cr4, %eax ; orl $0x20, %eax ; movl %eax, %cr4
///     movl $0x1000, %eax ; movl %eax, %cr3
///     movl $0xC0000080, %ecx ; rdmsr ; orl $0x100, %eax ; wrmsr
///     movl %cr0, %eax ; orl $0x80000000, %eax ; movl %eax, %cr0
///     ljmpl $0x18, $(0xF0000 + l - s)
///     .code64
/// l:  movb $0x31, %al ; outb %al, $0xf4
/// 1:  hlt ; jmp 1b
///     .p2align 3
/// g:  .quad 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF, 0x00AF9A000000FFFF
/// gd: .word gd - g - 1 ; .long 0xF0000 + g - s
/// ```
const PROBE_CODE: &[u8] = &[
    0xfa, 0x2e, 0x66, 0x0f, 0x01, 0x16, 0xb8, 0x00, 0x0f, 0x20, 0xc0, 0x66, 0x83, 0xc8, 0x01, 0x0f,
    0x22, 0xc0, 0x66, 0xea, 0x1a, 0x00, 0x0f, 0x00, 0x08, 0x00, 0x66, 0xb8, 0x10, 0x00, 0x8e, 0xd8,
    0x8e, 0xc0, 0x8e, 0xd0, 0xc7, 0x05, 0x00, 0x10, 0x00, 0x00, 0x03, 0x20, 0x00, 0x00, 0xc7, 0x05,
    0x04, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc7, 0x05, 0x00, 0x20, 0x00, 0x00, 0x03, 0x30,
    0x00, 0x00, 0xc7, 0x05, 0x04, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc7, 0x05, 0x00, 0x30,
    0x00, 0x00, 0x83, 0x00, 0x00, 0x00, 0xc7, 0x05, 0x04, 0x30, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x0f, 0x20, 0xe0, 0x83, 0xc8, 0x20, 0x0f, 0x22, 0xe0, 0xb8, 0x00, 0x10, 0x00, 0x00, 0x0f, 0x22,
    0xd8, 0xb9, 0x80, 0x00, 0x00, 0xc0, 0x0f, 0x32, 0x0d, 0x00, 0x01, 0x00, 0x00, 0x0f, 0x30, 0x0f,
    0x20, 0xc0, 0x0d, 0x00, 0x00, 0x00, 0x80, 0x0f, 0x22, 0xc0, 0xea, 0x91, 0x00, 0x0f, 0x00, 0x18,
    0x00, 0xb0, 0x31, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xcf, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x92, 0xcf, 0x00,
    0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xaf, 0x00, 0x1f, 0x00, 0x98, 0x00, 0x0f, 0x00,
];

/// A 64 KiB BIOS image: [`PROBE_CODE`] at its start, and at the reset
/// vector (offset 0xFFF0) a far jump to it (`jmp 0xF000:0`). QEMU exits
/// with status 99 once the code reached long mode and wrote the
/// isa-debug-exit port.
fn probe_bios() -> Vec<u8> {
    let mut img = vec![0xf4u8; 64 * 1024]; // hlt
    img[..PROBE_CODE.len()].copy_from_slice(PROBE_CODE);
    img[0xfff0..0xfff5].copy_from_slice(&[0xea, 0x00, 0x00, 0x00, 0xf0]);
    img
}

/// Whether `accel` boots guest code with `cpu_model` (all its features
/// enforced) on this host.
fn accel_boots(wd: &Workdir, accel: &str, cpu_model: &str) -> bool {
    let bios = wd.run_dir().join("accel-probe.bin");
    if fs::write(&bios, probe_bios()).is_err() {
        return false;
    }
    let Ok(bin) = binary(wd) else { return false };
    let child = Command::new(bin)
        .args([
            "-accel",
            accel,
            "-machine",
            "pc",
            "-cpu",
            &format!("{cpu_model},enforce"),
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-m",
            "16",
        ])
        .arg("-bios")
        .arg(&bios)
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.code() == Some(99),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// The accelerator VMs with `cpu_model` use on this node: KVM when it
/// really boots guest code with every feature of the model, else TCG.
/// Probed once per model and kept in the local registry (`initenv` probes
/// again).
pub fn accel(wd: &Workdir, reg: &Registry, cpu_model: &str) -> Result<String> {
    match reg.inventory(&accel_key(wd, cpu_model)?)? {
        Some(a) => Ok(a),
        None => probe_accel(wd, reg, cpu_model),
    }
}

/// Probe the accelerator for `cpu_model` and record it.
pub fn probe_accel(wd: &Workdir, reg: &Registry, cpu_model: &str) -> Result<String> {
    let key = accel_key(wd, cpu_model)?;
    let kvm = Path::new("/dev/kvm").exists() && accel_boots(wd, "kvm", cpu_model);
    let a = if kvm {
        "kvm"
    } else if accel_boots(wd, "tcg", cpu_model) {
        "tcg"
    } else {
        return Err(VmError::NoAccelerator {
            qemu: binary(wd)?,
            cpu_model: cpu_model.to_owned(),
        }
        .into());
    };
    reg.set_inventory(&key, a)?;
    Ok(a.to_owned())
}

/// Probes are kept per QEMU binary: another QEMU is probed afresh.
fn accel_key(wd: &Workdir, cpu_model: &str) -> Result<String> {
    Ok(format!("accel-lm:{}:{cpu_model}", binary(wd)?))
}

/// A stable MAC address for the VM's NIC (locally administered).
pub(crate) fn mac(j: &Jname) -> String {
    let h = fnv1a(j.as_str().as_bytes()).to_be_bytes();
    format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2], h[3])
}

/// Name of the tap device of a bridged VM.
pub fn tap_name(wd: &Workdir, j: &Jname) -> String {
    format!(
        "ft{:08x}",
        fnv1a(format!("{}/{j}", wd.pool_tag()).as_bytes()) as u32
    )
}

/// The whole QEMU command line of a VM. `incoming`: start waiting for a
/// migration stream (`-incoming defer`) instead of booting.
pub fn command_line(wd: &Workdir, cfg: &VmConfig, accel: &str, incoming: bool) -> Vec<OsString> {
    let a = &cfg.args;
    let j = cfg.jname();
    let joined = |prefix: &str, p: &Path, suffix: &str| {
        let mut s = OsString::from(prefix);
        s.push(p.as_os_str());
        s.push(suffix);
        s
    };
    let mut v: Vec<OsString> = [
        "-name".to_owned(),
        format!("guest={j},debug-threads=on"),
        "-machine".to_owned(),
        a.vm_machine.0.clone(),
        "-accel".to_owned(),
        accel.to_owned(),
        "-cpu".to_owned(),
        format!("{},enforce", a.vm_cpu_model.0),
        "-smp".to_owned(),
        a.vm_cpus.to_string(),
        "-m".to_owned(),
        format!("{}M", config::ram_mib(a)),
        "-nodefaults".to_owned(),
        "-no-user-config".to_owned(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    if a.vm_vnc_port == 0 {
        v.extend(["-display", "none"].map(OsString::from));
    } else {
        v.extend(["-vga", "std", "-vnc"].map(OsString::from));
        v.push(format!("127.0.0.1:{}", a.vm_vnc_port - 5900).into());
    }
    v.push("-chardev".into());
    v.push(joined(
        "file,id=console,append=on,path=",
        &console_log(wd, j),
        "",
    ));
    v.extend(["-serial", "chardev:console", "-qmp"].map(OsString::from));
    v.push(joined("unix:", &qmp_socket(wd, j), ",server=on,wait=off"));
    v.push("-pidfile".into());
    v.push(pid_file(wd, j).into());
    v.push("-daemonize".into());
    if let Some(disk) = cfg.disk(wd) {
        v.push("-drive".into());
        let prefix = format!("if=none,id=dsk1,format={},file=", cfg.disk_format());
        v.push(joined(&prefix, &disk, ""));
        v.extend(["-device", "virtio-blk-pci,drive=dsk1"].map(OsString::from));
    }
    v.extend(crate::disk::root_ports(&a.vm_machine.0));
    v.extend(crate::disk::command_line(wd, cfg));
    v.extend(crate::cloud::command_line(wd, cfg));
    if let Some(k) = &a.vm_kernel {
        v.push("-kernel".into());
        v.push(k.into());
        if let Some(i) = &a.vm_initrd {
            v.push("-initrd".into());
            v.push(i.into());
        }
        v.push("-append".into());
        v.push(a.vm_cmdline.clone().into());
    }
    let netdev = match a.vm_nic {
        NicKind::None => None,
        NicKind::User => Some("user,id=net0".to_owned()),
        NicKind::Bridge => Some(format!(
            "tap,id=net0,ifname={},script=no,downscript=no",
            tap_name(wd, j)
        )),
    };
    if let Some(netdev) = netdev {
        v.push("-netdev".into());
        v.push(netdev.into());
        v.push("-device".into());
        v.push(format!("virtio-net-pci,netdev=net0,mac={},romfile=", mac(j)).into());
    }
    if incoming {
        v.extend(["-incoming", "defer"].map(OsString::from));
    }
    v
}

/// Start QEMU daemonized; returns its pid once it is initialized (QEMU's
/// parent exits only then, printing any error first).
pub fn spawn(wd: &Workdir, cfg: &VmConfig, accel: &str, incoming: bool) -> Result<i32> {
    spawn_with(wd, cfg, command_line(wd, cfg, accel, incoming))
}

/// Start QEMU waiting, paused (`-S`), for a live migration stream: it runs
/// the guest only when told to continue. `cpu` is the guest's CPU as the
/// source sent it (`-cpu`), in place of the definition's model.
pub fn spawn_paused_incoming(wd: &Workdir, cfg: &VmConfig, accel: &str, cpu: &str) -> Result<i32> {
    let mut args = command_line(wd, cfg, accel, true);
    if let Some(i) = args.iter().position(|a| a == "-cpu") {
        args[i + 1] = cpu.into();
    }
    args.push("-S".into());
    spawn_with(wd, cfg, args)
}

fn spawn_with(wd: &Workdir, cfg: &VmConfig, args: Vec<OsString>) -> Result<i32> {
    let j = cfg.jname();
    let pid_path = pid_file(wd, j);
    let _ = fs::remove_file(&pid_path);
    let _ = fs::remove_file(qmp_socket(wd, j));
    let out = output(wd, args)?;
    if !out.status.success() {
        return Err(VmError::NotStarted {
            jname: j.clone(),
            said: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }
        .into());
    }
    read_pid(&pid_path).ok_or_else(|| VmError::NoPidFile(j.clone()).into())
}

/// Run `qemu-img` with these arguments; its stderr becomes the error.
pub fn img<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<()> {
    img_output(args).map(drop)
}

/// Run `qemu-img` with these arguments: its stdout, or its stderr as the
/// error.
pub fn img_output<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<Vec<u8>> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(Error::io(
            "cannot run qemu-img (install qemu-utils)",
            "qemu-img",
        ))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    Err(VmError::Img {
        args: shown.join(" "),
        said: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    }
    .into())
}

pub fn read_pid(p: &Path) -> Option<i32> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Whether `pid` is a live QEMU serving this VM's QMP socket (so a
/// recycled pid is never killed by mistake).
pub fn is_our_qemu(wd: &Workdir, j: &Jname, pid: i32) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let sock = qmp_socket(wd, j);
    let needle = sock.as_os_str().as_encoded_bytes();
    ferry_core::sys::proc_stat(pid).is_some_and(|p| p.is_live())
        && cmdline.windows(needle.len()).any(|w| w == needle)
}
