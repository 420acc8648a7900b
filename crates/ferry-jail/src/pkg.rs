//! Packages installed into a new jail at create time (CBSD's `pkglist=`),
//! with the package manager of its base: Debian's apt, run by runc in a
//! one-shot container on the jail's own root (a jail with `pkglist` has
//! its own copy of the base, `baserw=1`, since packages write `/usr`).
//!
//! Where packages come from is the node's setting `pkg_mirror=` in
//! `etc/pkg.conf` (`ferry initenv pkg_mirror=`):
//!
//! - unset: the base's own apt sources, fetched over the host's network;
//! - `http://...` or `https://...`: that Debian mirror (the base's suite,
//!   `main`), signatures checked with the base's keyring, over the host's
//!   network;
//! - an absolute directory: a flat repository (`Packages` beside the
//!   `.deb` files) of the operator's own, bound read-only into the
//!   container, which then has no network at all; trusted as the
//!   operator's (apt does not check signatures there).
//!
//! Package names are CBSD's (`misc/mc devel/git`: the category before `/`
//! is dropped) or Debian's (`mc git`), checked against Debian's grammar,
//! and passed to apt as arguments, never through a shell.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxNamespaceType;

use ferry_core::{atomic, Error, Result, Workdir};

use crate::config::JailConfig;
use crate::{spec, JailError};

/// How long apt may take for one step before it is killed.
const STEP_TIMEOUT: Duration = Duration::from_secs(1800);

const PKG_CONF: &str = "pkg.conf";
/// Where a directory mirror appears inside the container.
const MIRROR_IN_JAIL: &str = "/run/ferry-pkg";
/// The apt source list ferry writes for the install, inside the jail.
const LIST_IN_JAIL: &str = "run/ferry-pkg.list";

/// Where this node's packages come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mirror {
    /// The base's own apt sources.
    Base,
    Url(String),
    Dir(PathBuf),
}

impl Mirror {
    /// Read `pkg_mirror=` as given to `initenv`.
    pub fn parse(v: &str) -> Result<Mirror> {
        if v.is_empty() || v == "0" {
            return Ok(Mirror::Base);
        }
        let bad = |why: &str| Error::bad_value("pkg_mirror", v, why.to_owned());
        if let Some(rest) = v
            .strip_prefix("http://")
            .or_else(|| v.strip_prefix("https://"))
        {
            let ok = !rest.is_empty()
                && rest
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._~/:%".contains(c));
            return if ok {
                Ok(Mirror::Url(v.trim_end_matches('/').to_owned()))
            } else {
                Err(bad("not a plain http(s) URL"))
            };
        }
        let p = Path::new(v);
        if !p.is_absolute()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(bad(
                "must be an http(s) URL or an absolute dir without '..'",
            ));
        }
        if !p.join("Packages").is_file() {
            return Err(bad(
                "has no Packages file (a flat repository: dpkg-scanpackages . > Packages)",
            ));
        }
        Ok(Mirror::Dir(p.to_path_buf()))
    }

    /// This node's mirror.
    pub fn of(wd: &Workdir) -> Result<Mirror> {
        Mirror::parse(&wd.setting(PKG_CONF, "mirror")?.unwrap_or_default())
    }

    /// Make it this node's mirror.
    pub fn set(&self, wd: &Workdir) -> Result<()> {
        let v = match self {
            Mirror::Base => String::new(),
            Mirror::Url(u) => u.clone(),
            Mirror::Dir(d) => d.to_string_lossy().into_owned(),
        };
        wd.set_setting(
            PKG_CONF,
            "mirror",
            &v,
            "where jcreate pkglist= takes packages from (ferry initenv pkg_mirror=)",
        )
    }
}

/// The Debian package names of a `pkglist` (CBSD's `category/name` or
/// plain names, separated by spaces or commas).
pub fn names(pkglist: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for item in pkglist.split([' ', ',', '\t']).filter(|s| !s.is_empty()) {
        let name = match item.split_once('/') {
            Some((cat, name))
                if !cat.is_empty()
                    && cat
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) =>
            {
                name
            }
            Some(_) => "",
            None => item,
        };
        let ok = name.len() >= 2
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c));
        if !ok {
            return Err(Error::bad_value(
                "pkglist",
                item,
                "not a package name (Debian's: a-z 0-9 + . -, or CBSD's category/name)",
            ));
        }
        if !out.iter().any(|n| n == name) {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

/// Whether a base can install packages: it has apt and dpkg.
pub fn has_package_manager(base_root: &Path) -> bool {
    ["usr/bin/apt-get", "usr/bin/dpkg"]
        .iter()
        .all(|p| base_root.join(p).is_file())
}

/// Install `pkgs` into the new jail (its data dir a copy of its base),
/// logging apt's output to `jails-system/<jname>/pkg.log`.
pub fn install(wd: &Workdir, cfg: &JailConfig, pkgs: &[String]) -> Result<()> {
    let j = cfg.jname();
    let root = wd.data_dir(j);
    let mirror = Mirror::of(wd)?;
    let mut apt: Vec<String> = vec!["apt-get".into(), "-q".into()];
    let list = root.join(LIST_IN_JAIL);
    let line = match &mirror {
        Mirror::Base => None,
        Mirror::Dir(_) => Some(format!("deb [trusted=yes] file:{MIRROR_IN_JAIL} ./\n")),
        Mirror::Url(u) => Some(format!("deb {u} {} main\n", codename(&root)?)),
    };
    if let Some(line) = &line {
        if let Some(d) = list.parent() {
            fs::create_dir_all(d).map_err(Error::io("cannot create", d))?;
        }
        atomic::write_atomic(&list, line.as_bytes(), 0o644)
            .map_err(Error::io("cannot write", &list))?;
        apt.extend([
            format!("-oDir::Etc::SourceList=/{LIST_IN_JAIL}"),
            "-oDir::Etc::SourceParts=/nonexistent".into(),
        ]);
    }
    let log = wd.system_dir(j).join("pkg.log");
    let steps: [(&str, Vec<String>); 2] = [
        (
            "update",
            apt.iter().cloned().chain(["update".to_owned()]).collect(),
        ),
        (
            "install",
            apt.iter()
                .cloned()
                .chain(
                    ["install", "-y", "--no-install-recommends", "--"]
                        .map(String::from)
                        .into_iter()
                        .chain(pkgs.iter().cloned()),
                )
                .collect(),
        ),
    ];
    let r = steps
        .iter()
        .try_for_each(|(step, argv)| run_step(wd, cfg, &mirror, step, argv, &log, pkgs));
    let _ = fs::remove_file(&list);
    let _ = fs::remove_dir(root.join(MIRROR_IN_JAIL.trim_start_matches('/')));
    r
}

/// The base's Debian suite (`VERSION_CODENAME` of its os-release).
fn codename(root: &Path) -> Result<String> {
    let p = root.join("etc/os-release");
    let text = fs::read_to_string(&p).map_err(Error::io("cannot read", &p))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_lowercase()))
        .ok_or_else(|| Error::Failed(format!("{} names no VERSION_CODENAME", p.display())))
}

/// One apt run in a one-shot container on the jail's root.
fn run_step(
    wd: &Workdir,
    cfg: &JailConfig,
    mirror: &Mirror,
    step: &str,
    argv: &[String],
    log: &Path,
    pkgs: &[String],
) -> Result<()> {
    let j = cfg.jname();
    let mut spec = spec::build(&spec::SpecInput {
        wd,
        cfg,
        fstab: &[],
        netns: None,
    })?;
    if let Some(p) = spec.process_mut().as_mut() {
        p.set_args(Some(argv.to_vec()));
        let mut env = p.env().clone().unwrap_or_default();
        env.push("DEBIAN_FRONTEND=noninteractive".into());
        p.set_env(Some(env));
    }
    match mirror {
        Mirror::Dir(d) => {
            let mut mounts = spec.mounts().clone().unwrap_or_default();
            mounts.push(spec::bind(d, Path::new(MIRROR_IN_JAIL), true));
            spec.set_mounts(Some(mounts));
        }
        // The host's network, to reach the mirror.
        Mirror::Base | Mirror::Url(_) => {
            if let Some(linux) = spec.linux_mut().as_mut() {
                let ns: Vec<_> = linux
                    .namespaces()
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|n| n.typ() != LinuxNamespaceType::Network)
                    .collect();
                linux.set_namespaces(Some(ns));
            }
        }
    }
    let bundle = wd.runtime_dir(j).join("pkg");
    fs::create_dir_all(&bundle).map_err(Error::io("cannot create", &bundle))?;
    let config = bundle.join("config.json");
    let json = serde_json::to_vec_pretty(&spec).map_err(JailError::Spec)?;
    atomic::replace(&config, &json, 0o600).map_err(Error::io("cannot write", &config))?;
    let id = format!("{j}.pkg");
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(Error::io("cannot open", log))?;
    let err = out.try_clone().map_err(Error::io("cannot open", log))?;
    let runc = || {
        let mut c = Command::new("runc");
        c.arg("--root").arg(wd.runc_root());
        c
    };
    let _ = runc().args(["delete", "--force", &id]).output();
    let mut child = runc()
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(Error::io(
            "cannot run runc (install the Debian package runc)",
            "runc",
        ))?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    let status = loop {
        match child
            .try_wait()
            .map_err(Error::io("cannot wait for", "runc"))?
        {
            Some(s) => break Some(s),
            None if Instant::now() > deadline => break None,
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    if status.is_none() {
        let _ = runc().args(["kill", &id, "KILL"]).output();
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = runc().args(["delete", "--force", &id]).output();
    let _ = fs::remove_dir_all(&bundle);
    match status {
        Some(s) if s.success() => Ok(()),
        other => Err(JailError::Install {
            jname: j.clone(),
            pkgs: pkgs.join(" "),
            step: step.to_owned(),
            how: match other {
                Some(s) => s.to_string(),
                None => format!("killed after {} s", STEP_TIMEOUT.as_secs()),
            },
            log: log.to_path_buf(),
            tail: tail(log),
        }
        .into()),
    }
}

/// The last lines of a log, for an error message.
fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cbsd_s_origins_and_debian_names_are_package_names() {
        assert_eq!(names("misc/mc devel/git").expect("names"), ["mc", "git"]);
        assert_eq!(
            names("mc, git mc libc6 g++").expect("names"),
            ["mc", "git", "libc6", "g++"]
        );
        for bad in [
            "mc;rm", "-oAPT::x", "../x", "/mc", "a", "Mc", "x/y/z", "$(id)",
        ] {
            assert!(names(bad).is_err(), "{bad}");
        }
        assert!(names("").expect("empty").is_empty());
    }

    #[test]
    fn a_mirror_is_a_url_or_an_absolute_repository_dir() {
        assert_eq!(Mirror::parse("").expect("unset"), Mirror::Base);
        assert_eq!(
            Mirror::parse("http://deb.debian.org/debian/").expect("url"),
            Mirror::Url("http://deb.debian.org/debian".into())
        );
        for bad in [
            "ftp://x",
            "http://a b",
            "relative/dir",
            "/nonexistent/repo",
            "/a/../b",
        ] {
            assert!(Mirror::parse(bad).is_err(), "{bad}");
        }
    }
}
