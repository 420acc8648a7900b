//! What help shows of a command: its area, its documentation, its
//! arguments; built by the `commands!` declaration.

use super::COMMANDS;

/// Where a command sits in `ferry help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Setup,
    Jails,
    Vms,
    Shared,
    Cluster,
}

impl Area {
    pub fn title(self) -> &'static str {
        match self {
            Area::Setup => "setup",
            Area::Jails => "jails",
            Area::Vms => "VMs",
            Area::Shared => "shared storage",
            Area::Cluster => "cluster",
        }
    }
}

/// One argument as help shows it.
#[derive(Debug, Clone)]
pub struct ArgSpec {
    pub key: &'static str,
    pub ty: &'static str,
    /// "required", "optional" or "default X".
    pub rule: String,
    pub doc: Vec<&'static str>,
}

/// One command as help shows it.
#[derive(Debug)]
pub struct CommandSpec {
    pub name: &'static str,
    pub area: Area,
    pub doc: &'static [&'static str],
    /// Whether the command prints a listing (and so takes `--json`).
    pub listing: bool,
    pub args: fn() -> Vec<ArgSpec>,
}

impl CommandSpec {
    pub fn summary(&self) -> &'static str {
        self.doc.first().map_or("", |l| l.trim())
    }

    pub fn find(name: &str) -> Option<&'static CommandSpec> {
        COMMANDS.iter().find(|c| c.name == name)
    }
}
