//! The engines this node runs envs with: one entry per kind.

use ferry_core::engine::{Engine, EngineSet};
use ferry_core::EnvKind;

/// Jails by runc, VMs by QEMU.
pub static ENGINES: EngineSet = EngineSet {
    jail: &ferry_jail::JAILS,
    vm: &ferry_vm::VMS,
};

/// The engine of `kind`.
pub fn of(kind: EnvKind) -> &'static dyn Engine {
    ENGINES.of(kind)
}
