//! A jail's definition, typed. The keys and their grammar are those of
//! `jcreate`: a definition is read by feeding its keys through the same
//! parser as the command line, so a value that `jcreate` refuses is refused
//! in a file too.

use std::path::Path;
use std::time::Duration;

use ferry_api::args::HookPath;
use ferry_api::command::JcreateArgs;
use ferry_api::Command;
use ferry_core::envdef::Hooks;
use ferry_core::rcconf::Definition;
use ferry_core::{Error, Jname, Result, Workdir};

/// A jail's settings.
#[derive(Debug, Clone)]
pub struct JailConfig {
    pub args: JcreateArgs,
    /// `exec_start` split into words.
    pub exec: Vec<String>,
    pub hooks: Hooks,
}

impl JailConfig {
    pub fn jname(&self) -> &Jname {
        &self.args.jname
    }

    pub fn host_hostname(&self) -> &str {
        self.args
            .host_hostname
            .as_deref()
            .unwrap_or(self.args.jname.as_str())
    }

    pub fn stop_timeout(&self) -> Duration {
        Duration::from_secs(self.args.stop_timeout)
    }

    /// Type the settings given to `jcreate`. A `pkglist` needs the jail's
    /// own copy of its base (packages write `/usr`): `baserw=1` unless
    /// `baserw=0` was said, which is refused.
    pub fn from_args(mut args: JcreateArgs, workdir: &Path) -> Result<JailConfig> {
        if args
            .pkglist
            .as_deref()
            .is_some_and(|p| !p.trim().is_empty())
        {
            if args.given.contains("baserw") && !args.baserw {
                return Err(Error::bad_value(
                    "baserw",
                    "0",
                    "pkglist installs into /usr, which only a jail with its own copy of the base (baserw=1) can write",
                ));
            }
            args.baserw = true;
        }
        let def = to_definition(&args, workdir)?;
        let exec = split_exec(&args.exec_start)?;
        let hooks = Hooks::from_definition(&def, workdir)?;
        Ok(JailConfig { args, exec, hooks })
    }

    /// Read a jail's definition (as stored by [`to_definition`]).
    pub fn from_definition(def: &Definition, wd: &Workdir, path: &Path) -> Result<JailConfig> {
        if let Some(e) = def.get("emulator").filter(|e| *e != "jail") {
            return Err(Error::bad_value("emulator", e, "this env is not a jail"));
        }
        let bad = |e: ferry_api::ArgError| Error::BadDefinition {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let Command::Jcreate(args) =
            ferry_api::definition::typed(def, wd.root(), "jcreate").map_err(bad)?
        else {
            return Err(Error::Failed("jcreate parsed into another command".into()));
        };
        let exec = split_exec(&args.exec_start)?;
        let hooks = Hooks::from_definition(def, wd.root())?;
        Ok(JailConfig { args, exec, hooks })
    }
}

fn split_exec(s: &str) -> Result<Vec<String>> {
    let words =
        shell_words::split(s).map_err(|e| Error::bad_value("exec_start", s, e.to_string()))?;
    match words.first() {
        None => Err(Error::bad_value("exec_start", s, "is empty")),
        Some(w) if !w.starts_with('/') => Err(Error::bad_value(
            "exec_start",
            s,
            "must start with an absolute path",
        )),
        Some(_) => Ok(words),
    }
}

/// The definition file of a jail with these settings.
pub fn to_definition(a: &JcreateArgs, workdir: &Path) -> Result<Definition> {
    let j = a.jname.as_str();
    let hook = |h: &HookPath| {
        h.0.as_ref()
            .map_or_else(|| "0".to_owned(), |p| p.to_string_lossy().into_owned())
    };
    let flag = |b: bool| if b { "1" } else { "0" };
    let root = workdir.to_string_lossy();
    let mut pairs: Vec<(&str, String)> = vec![
        ("jname", j.to_owned()),
        ("emulator", "jail".to_owned()),
        ("path", format!("{root}/jails/{j}")),
        ("data", format!("{root}/jails-data/{j}-data")),
        ("mount_fstab", format!("{root}/jails-fstab/{j}/fstab")),
        (
            "host_hostname",
            a.host_hostname.clone().unwrap_or_else(|| j.to_owned()),
        ),
        ("jail_profile", a.jail_profile.0.clone()),
        ("base", a.base.to_string()),
        ("baserw", flag(a.baserw).to_owned()),
        ("ip4_addr", a.ip4_addr.render()),
        ("interface", a.interface.0.clone()),
        ("exec_start", a.exec_start.clone()),
        ("astart", flag(a.astart).to_owned()),
        ("mnt_start", hook(&a.mnt_start)),
        ("mnt_stop", hook(&a.mnt_stop)),
        ("mnt_timeout", a.mnt_timeout.to_string()),
        ("stop_timeout", a.stop_timeout.to_string()),
    ];
    if let Some(gw) = a.defaultrouter {
        pairs.push(("defaultrouter", gw.to_string()));
    }
    pairs.extend(ferry_api::values::ha_definition(
        a.ha,
        &a.ha_nodes,
        a.ha_max_restart,
    ));
    let mut def = Definition::new();
    for (k, v) in pairs {
        def.set(k, v)
            .map_err(|e| Error::bad_value(k, "", e.to_string()))?;
    }
    Ok(def)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::args::RawArgs;

    #[test]
    fn definition_round_trips_through_the_jcreate_grammar() {
        let t = tempfile::tempdir().unwrap();
        let wd = Workdir::init(t.path(), Some("n1")).unwrap();
        let raw = RawArgs::from_words([
            "jname=j1",
            "ip4_addr=10.1.2.3/24",
            "exec_start=/bin/sleep 100",
            "astart=1",
            "mnt_start=/usr/local/bin/h",
        ])
        .unwrap();
        let Command::Jcreate(args) = Command::parse("jcreate", raw).unwrap() else {
            panic!()
        };
        let cfg = JailConfig::from_args(args.clone(), wd.root()).unwrap();
        assert_eq!(cfg.exec, ["/bin/sleep", "100"]);
        let def = to_definition(&args, wd.root()).unwrap();
        let text = def.render(wd.root());
        assert!(text.contains("path=\"jails/j1\";"), "{text}");
        let back = Definition::parse(&text, wd.root()).unwrap();
        let cfg2 = JailConfig::from_definition(&back, &wd, Path::new("x")).unwrap();
        assert_eq!(cfg2.args.ip4_addr, args.ip4_addr);
        assert!(cfg2.args.astart);
        assert_eq!(cfg2.hooks, cfg.hooks);
    }

    #[test]
    fn bad_values_in_a_file_are_refused_naming_the_key() {
        let t = tempfile::tempdir().unwrap();
        let wd = Workdir::init(t.path(), Some("n1")).unwrap();
        let def = Definition::parse("jname=\"j1\";\nip4_addr=\"999.1.1.1\";\n", wd.root()).unwrap();
        let e = JailConfig::from_definition(&def, &wd, Path::new("f")).unwrap_err();
        assert!(e.to_string().contains("ip4_addr"), "{e}");
        let def =
            Definition::parse("jname=\"j1\";\nexec_start=\"sh -c 'x\";\n", wd.root()).unwrap();
        assert!(JailConfig::from_definition(&def, &wd, Path::new("f")).is_err());
    }
}
