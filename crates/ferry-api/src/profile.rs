//! Profiles (CBSD's `jail_profile=`, `vm_os_profile=`): definition files
//! whose keys fill in what a create command was not given. A profile is
//! data in the definition format, read with the command's grammar, never
//! sourced. The operator's `$workdir/etc/profiles/<file>` comes first;
//! else one ferry ships (built into the binary).

use std::path::{Path, PathBuf};

use ferry_core::rcconf::Definition;
use ferry_core::{Error, Result};

use crate::args::Given;
use crate::command::{Command, CommandSpec};

/// What kind of profile, and what it may hold.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// The key that names it (`jail_profile`, `vm_os_profile`).
    pub key: &'static str,
    /// The command whose keys it holds.
    pub command: &'static str,
    /// Keys of its own beside the command's.
    pub own_keys: &'static [&'static str],
    /// Command keys it may not set (they name one env).
    pub forbidden: &'static [&'static str],
    /// The profiles ferry ships: (file name, text).
    pub shipped: &'static [(&'static str, &'static str)],
}

/// A profile, read and checked.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    /// Where it was read from (`shipped` for a built-in one).
    pub source: String,
    file: String,
    def: Definition,
}

/// Where an operator's profile file lives.
pub fn path(root: &Path, file: &str) -> PathBuf {
    root.join("etc/profiles").join(file)
}

impl Profile {
    /// The profile `name` in file `file`: the workdir's own, else a shipped one.
    pub fn load(root: &Path, kind: &Kind, name: &str, file: &str) -> Result<Profile> {
        let own = path(root, file);
        let (text, source) = match std::fs::read_to_string(&own) {
            Ok(text) => (text, own.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let shipped = kind
                    .shipped
                    .iter()
                    .find(|(f, _)| *f == file)
                    .ok_or_else(|| {
                        let names: Vec<&str> = kind.shipped.iter().map(|(f, _)| *f).collect();
                        Error::bad_value(
                            kind.key,
                            name,
                            format!(
                                "no such profile: ferry ships {}, and {} does not exist",
                                names.join(", "),
                                own.display()
                            ),
                        )
                    })?;
                (shipped.1.to_owned(), "shipped".to_owned())
            }
            Err(e) => return Err(Error::io("cannot read the profile", &own)(e)),
        };
        let p = Profile {
            name: name.to_owned(),
            file: file.to_owned(),
            source,
            def: Definition::new(),
        };
        let def = Definition::parse(&text, root).map_err(|e| Error::Definition {
            path: PathBuf::from(p.shown()),
            source: e,
        })?;
        let p = Profile { def, ..p };
        p.check(kind)?;
        Ok(p)
    }

    /// Where it came from, for messages.
    fn shown(&self) -> String {
        if self.source == "shipped" {
            format!("share/profiles/{} (shipped)", self.file)
        } else {
            self.source.clone()
        }
    }

    /// A value it holds (its own keys too).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.def.get(key)
    }

    fn bad(&self, reason: String) -> Error {
        Error::BadDefinition {
            path: PathBuf::from(self.shown()),
            reason,
        }
    }

    /// Every key is one the command takes (or the profile's own), and not
    /// one that names a single env.
    fn check(&self, kind: &Kind) -> Result<()> {
        let spec = CommandSpec::find(kind.command)
            .map(|s| (s.args)())
            .unwrap_or_default();
        for (k, _) in self.def.iter() {
            let known = spec.iter().any(|a| {
                a.key == k
                    || (a.key.ends_with('_') && k.starts_with(a.key) && k.len() > a.key.len())
            }) || kind.own_keys.contains(&k);
            if !known || kind.forbidden.contains(&k) {
                return Err(self.bad(format!("{k:?} is not a key a profile sets")));
            }
        }
        Ok(())
    }

    /// `cmd` with this profile's settings for the keys it was not `given`
    /// (nor `skip`ped), then `extra` words; read again with the command's
    /// grammar, so a bad value in a profile is refused with its key named.
    pub fn fill(
        &self,
        kind: &Kind,
        cmd: Command,
        given: &Given,
        skip: &dyn Fn(&str) -> bool,
        extra: Vec<String>,
    ) -> Result<Command> {
        let name = cmd.name();
        let mut words = vec![name.to_owned()];
        for w in cmd.to_words().into_iter().skip(1) {
            let key = w.split_once('=').map_or(w.as_str(), |(k, _)| k);
            if given.contains(key) {
                words.push(w);
            }
        }
        for (k, v) in self.def.iter() {
            if !given.contains(k) && !kind.own_keys.contains(&k) && !skip(k) {
                words.push(format!("{k}={v}"));
            }
        }
        words.extend(extra);
        Command::parse_words(&words).map_err(|e| self.bad(e.to_string()))
    }
}
