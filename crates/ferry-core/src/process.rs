//! One process named for good: its pid and its start time (a recycled pid
//! has another start time, so it is never taken for ours, nor signalled).
//! How every part of ferry ends a process: jails, VMs, task runners.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::sys;

/// How long a process that got SIGKILL may take to be gone.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

/// A process: its pid and its start time in clock ticks since boot
/// (`/proc/<pid>/stat` field 22).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Process {
    pub pid: i32,
    pub start: u64,
}

impl Process {
    /// The process `pid` is now, if there is one.
    pub fn of(pid: i32) -> Option<Process> {
        sys::proc_stat(pid)
            .filter(sys::ProcStat::is_live)
            .map(|p| Process {
                pid,
                start: p.starttime,
            })
    }

    /// This process.
    pub fn this() -> Option<Process> {
        Process::of(std::process::id() as i32)
    }

    /// Still alive, and still the process it was.
    pub fn alive(&self) -> bool {
        sys::is_alive(self.pid, self.start)
    }

    /// Send `sig` (through a pidfd); whether it was sent.
    pub fn signal(&self, sig: Signal) -> bool {
        sys::signal(self.pid, self.start, sig)
    }

    /// Wait up to `limit` for it to be gone; whether it is.
    pub fn wait_gone(&self, limit: Duration) -> bool {
        sys::wait_gone(self.pid, Some(self.start), limit)
    }

    /// SIGKILL, and wait [`KILL_WAIT`] for it to be gone; whether it is.
    pub fn kill(&self) -> bool {
        self.signal(Signal::SIGKILL);
        self.wait_gone(KILL_WAIT)
    }

    /// SIGTERM, `grace` to end, then SIGKILL; whether it is gone.
    pub fn terminate(&self, grace: Duration) -> bool {
        self.signal(Signal::SIGTERM);
        self.wait_gone(grace) || self.kill()
    }

    /// Whether it leads its own session.
    pub fn leads_session(&self) -> bool {
        sys::proc_stat(self.pid).is_some_and(|p| p.session == self.pid && p.starttime == self.start)
    }

    /// [`Process::terminate`] for every process of its session (it leads
    /// it: the runner of a task and the hooks it started); whether the
    /// whole session is gone.
    pub fn terminate_session(&self, grace: Duration) -> bool {
        sys::signal_session(self.pid, Signal::SIGTERM);
        if sys::wait_session_gone(self.pid, grace) {
            return true;
        }
        sys::signal_session(self.pid, Signal::SIGKILL);
        sys::wait_session_gone(self.pid, KILL_WAIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_ended_politely_then_for_good_and_a_gone_one_is_never_signalled() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let p = Process::of(child.id() as i32).expect("alive");
        assert!(p.alive());
        let stale = Process {
            start: p.start + 1,
            ..p
        };
        assert!(!stale.alive());
        assert!(
            !stale.signal(Signal::SIGKILL),
            "another start time is another process"
        );
        assert!(p.alive());
        // Reaped by a thread, as a parent would, so it does not linger as a zombie.
        let reaper = std::thread::spawn(move || child.wait());
        assert!(p.terminate(Duration::from_secs(5)));
        assert!(!p.alive());
        reaper.join().expect("join").expect("wait");
        assert!(Process::this().is_some_and(|me| me.alive()));
    }
}
