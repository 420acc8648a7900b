//! Where a command may run: declared once beside each command in the
//! `commands!` declaration (command.rs), read by the task queue and the
//! broker agent.

/// Where a command may run, declared beside it and read by the task queue and the broker agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Why a queued task may not run it (`None`: it may).
    pub not_queueable: Option<&'static str>,
    /// Why the broker agent does not run it (`None`: it does).
    pub not_over_broker: Option<&'static str>,
    /// It changes nothing, so running it twice is harmless (a redelivered
    /// job is run again rather than waited for).
    pub read_only: bool,
}

impl Policy {
    /// A command that changes something, allowed everywhere.
    pub const ACTS: Policy = Policy {
        not_queueable: None,
        not_over_broker: None,
        read_only: false,
    };
    /// A listing: changes nothing, allowed everywhere.
    pub const READS: Policy = Policy {
        read_only: true,
        ..Policy::ACTS
    };

    /// The same, refused to queued tasks because of `why`.
    pub const fn not_queueable(self, why: &'static str) -> Policy {
        Policy {
            not_queueable: Some(why),
            ..self
        }
    }

    /// The same, refused over the broker because of `why`.
    pub const fn not_over_broker(self, why: &'static str) -> Policy {
        Policy {
            not_over_broker: Some(why),
            ..self
        }
    }

    /// [`Policy::READS`] when `listing`, else [`Policy::ACTS`].
    pub const fn reads_if(listing: bool) -> Policy {
        if listing {
            Policy::READS
        } else {
            Policy::ACTS
        }
    }
}
