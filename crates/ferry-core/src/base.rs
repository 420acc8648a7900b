//! Local read-only bases for jails (`bases/<name>/`).
//!
//! A base is built in a hidden temp dir and renamed into place, so a crash
//! never leaves a half-built base under its real name. Its metadata sits
//! beside it in `bases/<name>.json`, outside the tree jails see.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::atomic;
use crate::error::{Error, Result};
use crate::name::Jname;
use crate::registry::Registry;
use crate::workdir::Workdir;

/// Directories a jail with `baserw=0` writes to: bound from its data dir
/// over the read-only base.
pub const WRITABLE_DIRS: [&str; 5] = ["etc", "home", "root", "tmp", "var"];

/// Directories every base has (mount points for the runtime and the
/// writable dirs), created if a source tree lacks them.
const MOUNT_POINTS: [&str; 10] = [
    "dev", "proc", "sys", "run", "etc", "home", "root", "tmp", "var", "bin",
];

/// Where Debian's busybox-static installs its binary.
pub const BUSYBOX_PATHS: [&str; 2] = ["/bin/busybox", "/usr/bin/busybox"];

/// The init script of a busybox base: runs until SIGTERM, then exits 0.
const BUSYBOX_RC: &str = "#!/bin/sh\n\
# ferry busybox base: the jail's main process. Stops cleanly on SIGTERM.\n\
trap 'exit 0' TERM INT\n\
while :; do sleep 3600 & wait $!; done\n";

/// Where a base came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "from", rename_all = "lowercase")]
pub enum BaseSource {
    Busybox { binary: PathBuf },
    Dir { path: PathBuf },
}

/// A base as `base mode=list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaseInfo {
    pub name: String,
    pub source: BaseSource,
    pub created: u64,
}

/// Build a base named `name` from `source`.
pub fn create(wd: &Workdir, name: &Jname, source: &BaseSource) -> Result<BaseInfo> {
    let dir = wd.base_dir(name);
    if dir.exists() {
        return Err(Error::BaseExists(name.to_string()));
    }
    let tmp = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(wd.bases_dir())
        .map_err(Error::io("cannot create temp dir", wd.bases_dir()))?;
    let root = tmp.path();
    fs::set_permissions(root, fs::Permissions::from_mode(0o755))
        .map_err(Error::io("cannot set mode", root))?;
    match source {
        BaseSource::Busybox { binary } => populate_busybox(root, binary)?,
        BaseSource::Dir { path } => populate_from_dir(root, path)?,
    }
    for d in MOUNT_POINTS {
        let p = root.join(d);
        if fs::symlink_metadata(&p).is_err() {
            fs::create_dir_all(&p).map_err(Error::io("cannot create", &p))?;
        }
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))
        .map_err(Error::io("cannot set mode", root.join("tmp")))?;
    let info = BaseInfo {
        name: name.to_string(),
        source: source.clone(),
        created: now(),
    };
    let meta = meta_path(wd, name.as_str());
    let json = serde_json::to_vec_pretty(&info).map_err(Error::encode("the base's record"))?;
    atomic::write_atomic(&meta, &json, 0o644).map_err(Error::io("cannot write", &meta))?;
    let tmp = tmp.keep();
    atomic::rename_durable(&tmp, &dir).map_err(Error::io("cannot move base into place", &dir))?;
    Ok(info)
}

/// The bases of this workdir, by name.
pub fn list(wd: &Workdir) -> Result<Vec<BaseInfo>> {
    let dir = wd.bases_dir();
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).map_err(Error::io("cannot list", &dir))? {
        let entry = entry.map_err(Error::io("cannot list", &dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        if Jname::new(stem).is_err() || !dir.join(stem).is_dir() {
            continue;
        }
        let text = fs::read(entry.path()).map_err(Error::io("cannot read", entry.path()))?;
        let info: BaseInfo = serde_json::from_slice(&text)
            .map_err(|e| Error::bad_value("base metadata", &name, e.to_string()))?;
        out.push(info);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Remove a base; refused while a registered jail uses it.
pub fn remove(wd: &Workdir, reg: &Registry, name: &Jname) -> Result<()> {
    let dir = wd.base_dir(name);
    if !dir.is_dir() {
        return Err(Error::BaseNotFound(name.to_string()));
    }
    let users = reg.users_of_base(name.as_str())?;
    if !users.is_empty() {
        return Err(Error::BaseInUse {
            base: name.to_string(),
            users: users.join(", "),
        });
    }
    // Rename first: a crash mid-delete leaves a hidden dir, never a broken base.
    let trash = wd
        .bases_dir()
        .join(format!(".trash-{name}-{}", uuid::Uuid::new_v4().simple()));
    atomic::rename_durable(&dir, &trash).map_err(Error::io("cannot remove", &dir))?;
    let meta = meta_path(wd, name.as_str());
    fs::remove_file(&meta).map_err(Error::io("cannot remove", &meta))?;
    fs::remove_dir_all(&trash).map_err(Error::io("cannot remove", &trash))
}

/// Whether a base exists.
pub fn exists(wd: &Workdir, name: &Jname) -> bool {
    wd.base_dir(name).is_dir() && meta_path(wd, name.as_str()).is_file()
}

fn meta_path(wd: &Workdir, name: &str) -> PathBuf {
    wd.bases_dir().join(format!("{name}.json"))
}

/// Find the busybox binary to build from.
pub fn find_busybox() -> Result<PathBuf> {
    BUSYBOX_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Refused("busybox not found; install the Debian package busybox-static".into())
        })
}

fn populate_busybox(root: &Path, binary: &Path) -> Result<()> {
    let bytes = fs::read(binary).map_err(Error::io("cannot read busybox", binary))?;
    if !is_static_elf(&bytes) {
        return Err(Error::Refused(format!(
            "{} is not a statically linked ELF binary; install the Debian package busybox-static",
            binary.display()
        )));
    }
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "etc"] {
        fs::create_dir_all(root.join(d)).map_err(Error::io("cannot create", root.join(d)))?;
    }
    let target = root.join("bin/busybox");
    fs::write(&target, &bytes).map_err(Error::io("cannot write", &target))?;
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755))
        .map_err(Error::io("cannot set mode", &target))?;
    let out = Command::new(binary)
        .arg("--list-full")
        .output()
        .map_err(Error::io("cannot run", binary))?;
    if !out.status.success() {
        return Err(Error::Failed(format!(
            "{} --list-full failed",
            binary.display()
        )));
    }
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        // Lines look like "usr/bin/awk"; refuse anything that is not a plain relative path.
        let rel = Path::new(applet.trim());
        if rel.as_os_str().is_empty()
            || !rel
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
            || rel == Path::new("bin/busybox")
        {
            continue;
        }
        let link = root.join(rel);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).map_err(Error::io("cannot create", parent))?;
        }
        if fs::symlink_metadata(&link).is_err() {
            symlink("/bin/busybox", &link).map_err(Error::io("cannot link", &link))?;
        }
    }
    let files: [(&str, &str, u32); 6] = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
            0o644,
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644),
        ("etc/hostname", "localhost\n", 0o644),
        ("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n", 0o644),
        ("etc/resolv.conf", "", 0o644),
        ("etc/rc", BUSYBOX_RC, 0o755),
    ];
    for (rel, text, mode) in files {
        let p = root.join(rel);
        fs::write(&p, text).map_err(Error::io("cannot write", &p))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .map_err(Error::io("cannot set mode", &p))?;
    }
    Ok(())
}

fn populate_from_dir(root: &Path, src: &Path) -> Result<()> {
    if !src.is_absolute() {
        return Err(Error::bad_value(
            "path",
            &src.to_string_lossy(),
            "must be an absolute path",
        ));
    }
    if !src.is_dir() {
        return Err(Error::bad_value(
            "path",
            &src.to_string_lossy(),
            "is not a directory",
        ));
    }
    copy_tree(src, root)
}

/// Copy the contents of directory `src` into directory `dst` (which may
/// exist), keeping owners, modes, links, device nodes and xattrs. `cp -a`
/// does all of that; a hand-written copy would have to re-implement it.
/// Arguments are passed as a vector, never through a shell.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let mut from = src.as_os_str().to_owned();
    from.push("/.");
    // --sparse=always: runs of zeros become holes, and cp reads and writes
    // in user space, which on the file systems measured here is faster
    // than its copy_file_range path (docs/decisions.md, clones).
    let status = Command::new("cp")
        .args(["-a", "--reflink=auto", "--sparse=always"])
        .arg("--")
        .arg(&from)
        .arg(dst)
        .status()
        .map_err(Error::io("cannot run cp", src))?;
    if !status.success() {
        return Err(Error::Failed(format!(
            "copying {} to {} failed ({status})",
            src.display(),
            dst.display()
        )));
    }
    Ok(())
}

/// An ELF file without a PT_INTERP program header is statically linked.
fn is_static_elf(b: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
    };
    // 64-bit little-endian ELF only (the architectures ferry runs on).
    if b.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..usize::from(phnum))
        .all(|i| u32_at(phoff + i * usize::from(phentsize)).is_some_and(|t| t != PT_INTERP))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_elf_detection() {
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        let sh = fs::read("/bin/sh").unwrap();
        assert!(!is_static_elf(&sh), "/bin/sh is dynamic on Debian");
        if let Ok(bb) = find_busybox() {
            assert!(is_static_elf(&fs::read(bb).unwrap()));
        }
    }

    #[test]
    fn busybox_base_lifecycle() {
        let Ok(bb) = find_busybox() else {
            panic!("busybox-static is required for the tests (apt-get install busybox-static)");
        };
        let t = tempfile::tempdir().unwrap();
        let wd = Workdir::init(t.path(), Some("n1")).unwrap();
        let reg = Registry::open(&wd.db_dir()).unwrap();
        let name = Jname::new("bb").unwrap();
        create(&wd, &name, &BaseSource::Busybox { binary: bb.clone() }).unwrap();
        assert!(exists(&wd, &name));
        assert!(wd.base_dir(&name).join("bin/sh").exists());
        assert!(matches!(
            create(&wd, &name, &BaseSource::Busybox { binary: bb }),
            Err(Error::BaseExists(_))
        ));
        // A base copied from a directory tree.
        let copy = Jname::new("copy").unwrap();
        create(
            &wd,
            &copy,
            &BaseSource::Dir {
                path: wd.base_dir(&name),
            },
        )
        .unwrap();
        assert!(wd.base_dir(&copy).join("etc/rc").is_file());
        let names: Vec<_> = list(&wd).unwrap().into_iter().map(|b| b.name).collect();
        assert_eq!(names, ["bb", "copy"]);
        remove(&wd, &reg, &copy).unwrap();
        assert!(!wd.base_dir(&copy).exists());
        assert!(matches!(
            remove(&wd, &reg, &copy),
            Err(Error::BaseNotFound(_))
        ));
        // Nothing hidden is left behind.
        let left: Vec<_> = fs::read_dir(wd.bases_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }
}
