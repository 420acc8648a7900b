//! ferry's command vocabulary, shared by every front door: the typed
//! [`Command`] enum and its parser (from `key=value` words or a broker job's
//! `CommandArgs`), the help text generated from the same declarations, the
//! [`Outcome`] a command returns, and the documented exit codes.

pub mod args;
pub mod command;
pub mod definition;
pub mod exit;
pub mod help;
pub mod output;
pub mod policy;
pub mod profile;
pub mod progress;
pub mod values;

pub use args::{ArgError, FromArg, RawArgs};
pub use command::{Command, CommandSpec, Policy, COMMANDS};
pub use output::{Columns, EnvResult, Format, Listing, Outcome, Rendered, View};
pub use progress::Progress;
