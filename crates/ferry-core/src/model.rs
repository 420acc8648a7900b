//! The env model: kinds, lifecycle states and the transitions between them.
//!
//! Every lifecycle decision is made here, in one exhaustive `match`, so the
//! backends never decide on their own whether an action is allowed.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::name::Jname;

/// What an env is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvKind {
    Jail,
    Vm,
}

impl EnvKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EnvKind::Jail => "jail",
            EnvKind::Vm => "vm",
        }
    }

    pub fn parse(s: &str) -> Option<EnvKind> {
        match s {
            "jail" => Some(EnvKind::Jail),
            "vm" => Some(EnvKind::Vm),
            _ => None,
        }
    }
}

/// The live state of a registered env on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvState {
    /// Not running, nothing left behind.
    Stopped,
    /// Its process is alive.
    Running,
    /// A runtime record is left but the process is gone (it died, or ferry
    /// was killed mid-start): shown as stopped; start, stop and remove clean
    /// up what is left first.
    Crashed,
    /// A VM arriving by live migration, paused: not this node's to run
    /// until the lease names it; only the migration ends this state.
    Incoming,
}

impl EnvState {
    /// What a listing shows: an env whose processes died is stopped.
    pub fn display(self) -> &'static str {
        match self {
            EnvState::Running => "running",
            EnvState::Stopped | EnvState::Crashed => "stopped",
            EnvState::Incoming => "incoming",
        }
    }
}

/// The columns a listing has: all it can show (by CBSD's names), and
/// those it shows when no `display=` is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Columns {
    /// Shown when no `display=` is given.
    pub default: &'static [&'static str],
    /// Shown only when `display=` names them.
    pub more: &'static [&'static str],
}

impl Columns {
    /// Columns that are all shown by default.
    pub const fn all(all: &'static [&'static str]) -> Columns {
        Columns {
            default: all,
            more: &[],
        }
    }

    /// Every column, the default ones first.
    pub fn every(&self) -> impl Iterator<Item = &'static str> {
        self.default.iter().chain(self.more).copied()
    }
}

/// Operations whose permission depends on the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
    Remove,
    Exec,
    Checkpoint,
    Unregister,
    /// Copy into a new env.
    Clone,
    /// Give the env another name.
    Rename,
    /// Write it into an archive.
    Export,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
            Action::Remove => "remove",
            Action::Exec => "exec",
            Action::Checkpoint => "checkpoint",
            Action::Unregister => "unregister",
            Action::Clone => "clone",
            Action::Rename => "rename",
            Action::Export => "export",
        }
    }
}

/// Whether `action` is allowed on `jname` in `state`.
pub fn check(jname: &Jname, state: EnvState, action: Action) -> Result<()> {
    use Action::*;
    use EnvState::*;
    let needs = match (state, action) {
        // Arriving by live migration: the migration alone ends it.
        (Incoming, Start | Remove | Unregister | Restart | Clone | Rename | Export) => "stopped",
        (Incoming, Stop | Exec | Checkpoint) => "running",
        (Stopped | Crashed, Start | Remove)
        | (Stopped, Unregister | Clone | Rename | Export)
        | (Running, Stop | Exec | Checkpoint)
        | (_, Restart) => return Ok(()),
        (Crashed, Stop) => return Ok(()),
        (Running, Start | Remove) | (Running | Crashed, Unregister | Clone | Rename | Export) => {
            "stopped"
        }
        (Stopped | Crashed, Exec | Checkpoint) | (Stopped, Stop) => "running",
    };
    Err(Error::WrongState {
        jname: jname.clone(),
        state: state.display(),
        action: action.as_str(),
        needs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        let j = Jname::new("j").unwrap();
        assert!(check(&j, EnvState::Stopped, Action::Start).is_ok());
        assert!(check(&j, EnvState::Running, Action::Start).is_err());
        assert!(check(&j, EnvState::Running, Action::Remove).is_err());
        assert!(check(&j, EnvState::Stopped, Action::Stop).is_err());
        assert!(check(&j, EnvState::Crashed, Action::Stop).is_ok());
        assert!(check(&j, EnvState::Crashed, Action::Exec).is_err());
        assert!(check(&j, EnvState::Running, Action::Restart).is_ok());
        for a in [Action::Start, Action::Stop, Action::Restart, Action::Remove] {
            assert!(check(&j, EnvState::Incoming, a).is_err(), "{a:?}");
        }
        let msg = check(&j, EnvState::Running, Action::Remove)
            .unwrap_err()
            .to_string();
        assert_eq!(msg, "j is running; remove needs it stopped");
    }
}
