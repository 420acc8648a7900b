//! The engines this node runs envs with, by kind.

use ferry_core::rcconf::Definition;
use ferry_core::registry::EnvRow;
use ferry_core::{EnvKind, Result, Workdir};

/// The kind a definition declares (CBSD's `emulator`).
pub(crate) fn kind_of(def: &Definition) -> EnvKind {
    match def.get("emulator") {
        None | Some("jail") => EnvKind::Jail,
        Some(_) => EnvKind::Vm,
    }
}

/// The row of a definition of either kind.
pub(crate) fn row_any(wd: &Workdir, def: &Definition) -> Result<EnvRow> {
    match kind_of(def) {
        EnvKind::Jail => ferry_jail::row_of(wd, def),
        EnvKind::Vm => ferry_vm::row_of(wd, def),
    }
}
