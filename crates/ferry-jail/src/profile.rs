//! Jail profiles (CBSD's `jail_profile=`): definition files whose keys fill
//! in what `jcreate` was not given. A profile is data in the definition
//! format, read with the `jcreate` grammar, never sourced. The operator's
//! `$workdir/etc/profiles/jail-<name>.conf` comes first; else the ones
//! ferry ships (`share/profiles/`, built into the binary).

use std::path::PathBuf;

use ferry_api::command::JcreateArgs;
use ferry_api::{Command, CommandSpec};
use ferry_core::rcconf::Definition;
use ferry_core::{Error, Result, Workdir};

/// The profiles ferry ships, by name.
const SHIPPED: &[(&str, &str)] = &[(
    "default",
    include_str!("../../../share/profiles/jail-default.conf"),
)];

/// Keys a profile may hold that are not `jcreate`'s own.
const PROFILE_KEYS: &[&str] = &["long_description", "default_domain"];

/// A jail profile, read and checked.
#[derive(Debug, Clone)]
pub struct JailProfile {
    pub name: String,
    /// Where it was read from (`shipped` for a built-in one).
    pub source: String,
    def: Definition,
}

impl JailProfile {
    /// The profile `name`: the workdir's own, else a shipped one.
    pub fn load(wd: &Workdir, name: &str) -> Result<JailProfile> {
        let own = path(wd, name);
        let (text, source) = match std::fs::read_to_string(&own) {
            Ok(text) => (text, own.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let shipped = SHIPPED.iter().find(|(n, _)| *n == name).ok_or_else(|| {
                    Error::bad_value(
                        "jail_profile",
                        name,
                        format!(
                            "no such profile: ferry ships {}, and {} does not exist",
                            SHIPPED
                                .iter()
                                .map(|(n, _)| *n)
                                .collect::<Vec<_>>()
                                .join(", "),
                            own.display()
                        ),
                    )
                })?;
                (shipped.1.to_owned(), "shipped".to_owned())
            }
            Err(e) => return Err(Error::io("cannot read the jail profile", &own)(e)),
        };
        let def = Definition::parse(&text, wd.root()).map_err(|e| Error::Definition {
            path: PathBuf::from(source_path(&source, name)),
            source: e,
        })?;
        let profile = JailProfile {
            name: name.to_owned(),
            source,
            def,
        };
        profile.check()?;
        Ok(profile)
    }

    /// Every key is one `jcreate` takes (or a profile's own), and not one
    /// that names a single jail.
    fn check(&self) -> Result<()> {
        let spec = CommandSpec::find("jcreate")
            .map(|s| (s.args)())
            .unwrap_or_default();
        for (k, _) in self.def.iter() {
            let known = spec.iter().any(|a| a.key == k) || PROFILE_KEYS.contains(&k);
            if !known || matches!(k, "jname" | "jail_profile" | "runasap") {
                return Err(Error::BadDefinition {
                    path: PathBuf::from(source_path(&self.source, &self.name)),
                    reason: format!("{k:?} is not a key a jail profile sets"),
                });
            }
        }
        Ok(())
    }

    /// `args` with this profile's settings for what they were not given
    /// (CBSD's `default_domain` makes the host name `<jname>.<domain>`).
    /// Read with `jcreate`'s grammar: a bad value in a profile is refused
    /// with its key named.
    pub fn apply(&self, args: JcreateArgs) -> Result<JcreateArgs> {
        let given = args.given.clone();
        let jname = args.jname.clone();
        // A pkglist needs baserw=1 (JailConfig::from_args): the profile's
        // baserw does not speak for the user then.
        let pkglist = args
            .pkglist
            .as_deref()
            .is_some_and(|p| !p.trim().is_empty());
        let mut words = vec!["jcreate".to_owned()];
        for w in Command::Jcreate(args).to_words().into_iter().skip(1) {
            let key = w.split_once('=').map_or(w.as_str(), |(k, _)| k);
            if given.contains(key) {
                words.push(w);
            }
        }
        for (k, v) in self.def.iter() {
            let users = given.contains(k) || (pkglist && k == "baserw");
            if !users && !PROFILE_KEYS.contains(&k) {
                words.push(format!("{k}={v}"));
            }
        }
        if let (false, Some(domain)) = (
            given.contains("host_hostname"),
            self.def.get("default_domain"),
        ) {
            words.push(format!("host_hostname={jname}.{domain}"));
        }
        match Command::parse_words(&words) {
            Ok(Command::Jcreate(a)) => Ok(a),
            Ok(_) => Err(Error::Failed("a profile made another command".into())),
            Err(e) => Err(Error::BadDefinition {
                path: PathBuf::from(source_path(&self.source, &self.name)),
                reason: e.to_string(),
            }),
        }
    }
}

/// Where an operator's profile `name` lives.
pub fn path(wd: &Workdir, name: &str) -> PathBuf {
    wd.root()
        .join("etc/profiles")
        .join(format!("jail-{name}.conf"))
}

fn source_path(source: &str, name: &str) -> String {
    if source == "shipped" {
        format!("share/profiles/jail-{name}.conf (shipped)")
    } else {
        source.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jcreate(words: &[&str]) -> JcreateArgs {
        let words: Vec<String> = std::iter::once("jcreate")
            .chain(words.iter().copied())
            .map(str::to_owned)
            .collect();
        match Command::parse_words(&words) {
            Ok(Command::Jcreate(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_profile_fills_in_what_was_not_given_and_the_given_keys_win() {
        let t = tempfile::tempdir().unwrap();
        let wd = Workdir::init(t.path(), Some("n1")).unwrap();
        let shipped = JailProfile::load(&wd, "default").unwrap();
        assert_eq!(shipped.source, "shipped");
        let a = shipped.apply(jcreate(&["jname=j1"])).unwrap();
        assert_eq!((a.base.as_str(), a.stop_timeout), ("busybox", 10));

        std::fs::create_dir_all(wd.root().join("etc/profiles")).unwrap();
        std::fs::write(
            path(&wd, "web"),
            "base=\"deb\"\nstop_timeout=\"30\"\nastart=\"1\"\ndefault_domain=\"my.domain\"\n",
        )
        .unwrap();
        let web = JailProfile::load(&wd, "web").unwrap();
        let a = web
            .apply(jcreate(&["jname=j2", "jail_profile=web", "astart=0"]))
            .unwrap();
        assert_eq!(a.base.as_str(), "deb");
        assert_eq!(a.stop_timeout, 30);
        assert!(!a.astart, "a key given to jcreate wins");
        assert_eq!(a.host_hostname.as_deref(), Some("j2.my.domain"));
        let a = web
            .apply(jcreate(&["jname=j3", "host_hostname=h.example"]))
            .unwrap();
        assert_eq!(a.host_hostname.as_deref(), Some("h.example"));
    }

    #[test]
    fn unknown_profiles_keys_and_values_are_refused_by_name() {
        let t = tempfile::tempdir().unwrap();
        let wd = Workdir::init(t.path(), Some("n1")).unwrap();
        let e = JailProfile::load(&wd, "nosuch").unwrap_err().to_string();
        assert!(
            e.contains("no such profile") && e.contains("default"),
            "{e}"
        );
        std::fs::create_dir_all(wd.root().join("etc/profiles")).unwrap();
        std::fs::write(path(&wd, "bad"), "colour=\"red\"\n").unwrap();
        let e = JailProfile::load(&wd, "bad").unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        std::fs::write(path(&wd, "bad"), "jname=\"x\"\n").unwrap();
        assert!(JailProfile::load(&wd, "bad").is_err());
        std::fs::write(path(&wd, "bad"), "stop_timeout=\"soon\"\n").unwrap();
        let bad = JailProfile::load(&wd, "bad").unwrap();
        let e = bad.apply(jcreate(&["jname=j1"])).unwrap_err().to_string();
        assert!(
            e.contains("stop_timeout") && e.contains("jail-bad.conf"),
            "{e}"
        );
        std::fs::write(path(&wd, "bad"), "base=\"$(reboot)\"\n").unwrap();
        assert!(
            JailProfile::load(&wd, "bad").is_err(),
            "the definition codec refuses $("
        );
    }
}
