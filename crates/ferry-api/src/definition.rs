//! Reading a definition file with the grammar of the command that wrote it:
//! a jail's keys are `jcreate`'s, a VM's are `bcreate`'s. A value that the
//! command line refuses is refused in a file too, with the key named.

use std::path::Path;

use ferry_core::rcconf::{self, Definition};

use crate::args::{ArgError, RawArgs};
use crate::command::{Command, CommandSpec};

/// Type `def` as the arguments of `command`. Keys the command does not
/// declare (CBSD's own, or unknown ones) are ignored here and kept in the
/// file; workdir-relative paths are resolved against `workdir`.
pub fn typed(def: &Definition, workdir: &Path, command: &str) -> Result<Command, ArgError> {
    let spec =
        CommandSpec::find(command).ok_or_else(|| ArgError::UnknownCommand(command.to_owned()))?;
    let known: Vec<&str> = (spec.args)().iter().map(|a| a.key).collect();
    // A key ending in `_` names a family (`ci_user_pubkey_<user>`).
    let is_known = |k: &str| {
        known
            .iter()
            .any(|n| *n == k || (n.ends_with('_') && k.len() > n.len() && k.starts_with(n)))
    };
    let pairs = def.iter().filter(|(k, _)| is_known(k)).map(|(k, v)| {
        let v = if rcconf::is_path_key(k) && v != "0" && !v.is_empty() {
            def.resolve_path(k, workdir)
                .map_or_else(String::new, |p| p.to_string_lossy().into_owned())
        } else {
            v.to_owned()
        };
        (k.to_owned(), v)
    });
    Command::parse(command, RawArgs::from_pairs(pairs)?)
}
