//! Jail profiles (CBSD's `jail_profile=`): `jail-<name>.conf`, whose
//! `jcreate` keys fill in what `jcreate` was not given
//! ([`ferry_api::profile`]); `default` ships (`share/profiles/`).

use std::path::PathBuf;

use ferry_api::command::JcreateArgs;
use ferry_api::profile::{self, Kind, Profile};
use ferry_api::Command;
use ferry_core::{Error, Result, Workdir};

/// Jail profiles: `jcreate`'s keys, and two of their own.
const KIND: Kind = Kind {
    key: "jail_profile",
    command: "jcreate",
    own_keys: &["long_description", "default_domain"],
    forbidden: &["jname", "jail_profile", "runasap"],
    shipped: &[(
        "jail-default.conf",
        include_str!("../../../share/profiles/jail-default.conf"),
    )],
};

/// A jail profile, read and checked.
#[derive(Debug, Clone)]
pub struct JailProfile(Profile);

impl JailProfile {
    /// The profile `name`: the workdir's own, else a shipped one.
    pub fn load(wd: &Workdir, name: &str) -> Result<JailProfile> {
        Profile::load(wd.root(), &KIND, name, &file(name)).map(JailProfile)
    }

    /// Where it was read from (`shipped` for a built-in one).
    pub fn source(&self) -> &str {
        &self.0.source
    }

    /// `args` with this profile's settings for what they were not given
    /// (CBSD's `default_domain` makes the host name `<jname>.<domain>`).
    pub fn apply(&self, args: JcreateArgs) -> Result<JcreateArgs> {
        let given = args.given.clone();
        let jname = args.jname.clone();
        // A pkglist needs baserw=1 (JailConfig::from_args): the profile's
        // baserw does not speak for the user then.
        let pkglist = args
            .pkglist
            .as_deref()
            .is_some_and(|p| !p.trim().is_empty());
        let extra = match (
            given.contains("host_hostname"),
            self.0.get("default_domain"),
        ) {
            (false, Some(domain)) => vec![format!("host_hostname={jname}.{domain}")],
            _ => Vec::new(),
        };
        let skip = |k: &str| pkglist && k == "baserw";
        match self
            .0
            .fill(&KIND, Command::Jcreate(args), &given, &skip, extra)?
        {
            Command::Jcreate(a) => Ok(a),
            _ => Err(Error::Failed("a profile made another command".into())),
        }
    }
}

fn file(name: &str) -> String {
    format!("jail-{name}.conf")
}

/// Where an operator's profile `name` lives.
pub fn path(wd: &Workdir, name: &str) -> PathBuf {
    profile::path(wd.root(), &file(name))
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
        assert_eq!(shipped.source(), "shipped");
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
