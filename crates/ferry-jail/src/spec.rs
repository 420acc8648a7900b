//! The OCI runtime spec (`config.json`) of a jail.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxNamespace, LinuxNamespaceType, Mount, Root, Spec,
};

use ferry_core::base::WRITABLE_DIRS;
use ferry_core::{Error, Result, Workdir};

use crate::config::JailConfig;
use crate::fstab::{FstabEntry, MountKind};

/// Capabilities of a jail's processes: what a system container needs to
/// run ordinary services, without the ones that reach the host.
const CAPS: [Capability; 14] = [
    Capability::AuditWrite,
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Mknod,
    Capability::NetBindService,
    Capability::NetRaw,
    Capability::Setfcap,
    Capability::Setgid,
    Capability::Setpcap,
    Capability::Setuid,
    Capability::SysChroot,
];

/// Everything the spec is built from.
#[derive(Debug)]
pub struct SpecInput<'a> {
    pub wd: &'a Workdir,
    pub cfg: &'a JailConfig,
    pub fstab: &'a [FstabEntry],
    /// Path of the named network namespace, or None for a private one.
    pub netns: Option<PathBuf>,
}

/// The root the jail sees: the read-only base, or its own data dir.
pub fn root_dir(wd: &Workdir, cfg: &JailConfig) -> PathBuf {
    if cfg.args.baserw {
        wd.data_dir(cfg.jname())
    } else {
        wd.base_dir(&cfg.args.base)
    }
}

/// A bind mount of `source` at `target`.
pub fn bind(source: &Path, target: &Path, ro: bool) -> Mount {
    let mut m = Mount::default();
    m.set_destination(target.to_path_buf())
        .set_typ(Some("bind".into()))
        .set_source(Some(source.to_path_buf()))
        .set_options(Some(vec![
            "rbind".into(),
            if ro { "ro" } else { "rw" }.into(),
        ]));
    m
}

pub fn build(input: &SpecInput<'_>) -> Result<Spec> {
    let SpecInput {
        wd,
        cfg,
        fstab,
        netns,
    } = input;
    let j = cfg.jname();
    let data = wd.data_dir(j);
    let mut spec = Spec::default();

    let mut root = Root::default();
    root.set_path(root_dir(wd, cfg))
        .set_readonly(Some(!cfg.args.baserw));
    spec.set_root(Some(root));
    spec.set_hostname(Some(cfg.host_hostname().to_owned()));

    let process = spec
        .process_mut()
        .as_mut()
        .ok_or_else(|| Error::Failed("default OCI spec has no process".into()))?;
    process
        .set_args(Some(cfg.exec.clone()))
        .set_terminal(Some(false));
    process.set_env(Some(vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        format!("JNAME={j}"),
    ]));
    let caps: oci_spec::runtime::Capabilities = CAPS.into_iter().collect();
    let mut c = LinuxCapabilities::default();
    c.set_bounding(Some(caps.clone()))
        .set_effective(Some(caps.clone()))
        .set_permitted(Some(caps))
        .set_inheritable(None)
        .set_ambient(None);
    process.set_capabilities(Some(c));

    let mut mounts = spec.mounts().clone().unwrap_or_default();
    if !cfg.args.baserw {
        for d in WRITABLE_DIRS {
            mounts.push(bind(&data.join(d), &Path::new("/").join(d), false));
        }
    }
    for e in fstab.iter() {
        let ro = e.options.iter().any(|o| o == "ro");
        match e.kind {
            MountKind::Bind => mounts.push(bind(&e.source, &e.target, ro)),
            MountKind::Tmpfs => {
                let mut m = Mount::default();
                m.set_destination(e.target.clone())
                    .set_typ(Some("tmpfs".into()))
                    .set_source(Some("tmpfs".into()))
                    .set_options(Some(e.options.clone()));
                mounts.push(m);
            }
        }
    }
    spec.set_mounts(Some(mounts));

    let linux = spec
        .linux_mut()
        .as_mut()
        .ok_or_else(|| Error::Failed("default OCI spec has no linux section".into()))?;
    linux.set_cgroups_path(Some(PathBuf::from(format!("/ferry-{}/{j}", wd.pool_tag()))));
    if let Some(ns) = netns {
        let mut namespaces = linux.namespaces().clone().unwrap_or_default();
        for n in namespaces
            .iter_mut()
            .filter(|n| n.typ() == LinuxNamespaceType::Network)
        {
            let mut with_path = LinuxNamespace::default();
            with_path
                .set_typ(LinuxNamespaceType::Network)
                .set_path(Some(ns.clone()));
            *n = with_path;
        }
        linux.set_namespaces(Some(namespaces));
    }
    Ok(spec)
}
