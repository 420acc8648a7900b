//! Extra mounts of a jail, from `jails-fstab/<jname>/fstab` (CBSD format:
//! `source target type options [dump pass]`). Only `nullfs`/`bind` (a host
//! directory) and `tmpfs` are accepted; everything is validated before use.

use std::path::{Component, Path, PathBuf};

use ferry_core::{Error, Result};

/// One validated extra mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FstabEntry {
    pub source: PathBuf,
    /// Absolute, normalized path inside the jail.
    pub target: PathBuf,
    pub kind: MountKind,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Bind,
    Tmpfs,
}

/// Parse an fstab; `file` only names the file in errors.
pub fn parse(text: &str, file: &Path) -> Result<Vec<FstabEntry>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: String| Error::BadDefinition {
            path: file.to_path_buf(),
            reason: format!("line {}: {reason}", n + 1),
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        if !(3..=6).contains(&f.len()) {
            return Err(bad(
                "expected: source target type [options [dump pass]]".into()
            ));
        }
        let kind = match f[2] {
            "nullfs" | "bind" => MountKind::Bind,
            "tmpfs" => MountKind::Tmpfs,
            other => {
                return Err(bad(format!(
                    "mount type {other:?} is not supported (nullfs, bind, tmpfs)"
                )))
            }
        };
        let target = jail_path(f[1]).map_err(|r| bad(format!("target {:?} {r}", f[1])))?;
        let source = match kind {
            MountKind::Tmpfs => PathBuf::from("tmpfs"),
            MountKind::Bind => {
                let s = PathBuf::from(f[0]);
                if !s.is_absolute() || s.components().any(|c| c == Component::ParentDir) {
                    return Err(bad(format!(
                        "source {:?} must be an absolute path without '..'",
                        f[0]
                    )));
                }
                s
            }
        };
        let mut options = Vec::new();
        for o in f.get(3).copied().unwrap_or("rw").split(',') {
            let ok = match o.split_once('=') {
                None => matches!(o, "rw" | "ro" | "nosuid" | "nodev" | "noexec"),
                Some(("size" | "mode" | "nr_inodes", v)) => {
                    kind == MountKind::Tmpfs
                        && !v.is_empty()
                        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '%')
                }
                Some(_) => false,
            };
            if !ok {
                return Err(bad(format!("mount option {o:?} is not supported")));
            }
            options.push(o.to_owned());
        }
        out.push(FstabEntry {
            source,
            target,
            kind,
            options,
        });
    }
    Ok(out)
}

/// Normalize an absolute path inside a jail; refuse `..`, `/` itself and
/// anything under the runtime's own mounts.
fn jail_path(s: &str) -> Result<PathBuf, &'static str> {
    let p = Path::new(s);
    if !p.is_absolute() {
        return Err("must be an absolute path");
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return Err("must not contain '..'"),
        }
    }
    if out == Path::new("/") {
        return Err("must not be /");
    }
    if ["/proc", "/sys", "/dev"].iter().any(|r| out.starts_with(r)) {
        return Err("must not be under /proc, /sys or /dev");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cbsd_lines() {
        let e = parse(
            "# extra\n/srv/www /var/www nullfs ro 0 0\ntmpfs /tmp/x tmpfs rw,size=64m\n",
            Path::new("f"),
        )
        .unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].target, Path::new("/var/www"));
        assert_eq!(e[0].options, ["ro"]);
        assert_eq!(e[1].kind, MountKind::Tmpfs);
    }

    #[test]
    fn refuses_hostile_lines() {
        for bad in [
            "/a ../etc nullfs rw",
            "/a /../../etc nullfs rw",
            "/a / nullfs rw",
            "rel /x nullfs rw",
            "/dev/sda /x ext4 rw",
            "/a /x nullfs rw,exec=1",
            "/a /proc/x nullfs rw",
            "/a",
        ] {
            assert!(parse(bad, Path::new("f")).is_err(), "{bad}");
        }
    }
}
