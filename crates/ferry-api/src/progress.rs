//! How far a long command got, as typed events: the dispatcher emits them,
//! each front door shows them its own way (the command line as a progress
//! bar on a terminal, the broker agent as progress replies). Libraries
//! never draw or print.

/// One report of a long command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A step: percent done (below 100) and what happens now.
    Step { percent: u8, message: String },
    /// A live migration's memory transfer, as QEMU counts it.
    Transfer {
        /// Percent of the whole command done (below 100).
        percent: u8,
        sent: u64,
        remaining: u64,
        total: u64,
        dirty_pages_rate: u64,
        expected_downtime_ms: u64,
    },
}

impl Progress {
    pub fn step(percent: u8, message: impl Into<String>) -> Progress {
        Progress::Step {
            percent: percent.min(99),
            message: message.into(),
        }
    }

    /// Percent of the command done, below 100 (only its end is 100).
    pub fn percent(&self) -> u8 {
        match self {
            Progress::Step { percent, .. } | Progress::Transfer { percent, .. } => {
                (*percent).min(99)
            }
        }
    }

    /// The report as one line of text.
    pub fn message(&self) -> String {
        match self {
            Progress::Step { message, .. } => message.clone(),
            Progress::Transfer {
                sent,
                remaining,
                dirty_pages_rate,
                expected_downtime_ms,
                ..
            } => format!(
                "{} MiB sent, {} MiB left, dirty {dirty_pages_rate} pages/s, expected downtime {expected_downtime_ms} ms",
                sent >> 20,
                remaining >> 20
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_never_says_done_and_a_transfer_reads_in_mib() {
        assert_eq!(Progress::step(100, "x").percent(), 99);
        let t = Progress::Transfer {
            percent: 50,
            sent: 64 << 20,
            remaining: 32 << 20,
            total: 96 << 20,
            dirty_pages_rate: 10,
            expected_downtime_ms: 30,
        };
        assert_eq!(
            t.message(),
            "64 MiB sent, 32 MiB left, dirty 10 pages/s, expected downtime 30 ms"
        );
    }
}
