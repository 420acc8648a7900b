//! One process named for good: its pid and its start time (a recycled pid
//! has another start time, so it is never taken for ours, nor signalled).
//! How every part of ferry ends a process: jails, VMs, task runners.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::sys;

/// How long a process (or group) that got SIGKILL may take to be gone
/// before ferry gives up on it (one stuck in uninterruptible sleep cannot
/// die; ferry must not hang with it).
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

/// A process group, named by its leader's pid. The caller keeps the
/// leader unreaped while it uses this, so that the pid stays reserved as
/// the group's id and no signal reaches a stranger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessGroup(pub i32);

/// How [`ProcessGroup::terminate`] ended a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupEnd {
    /// Gone within the grace after SIGTERM.
    Terminated,
    /// Gone after SIGKILL.
    Killed,
    /// Still alive after SIGKILL (a process in uninterruptible sleep).
    Stuck,
}

impl ProcessGroup {
    /// Send `sig` to every process of the group.
    pub fn signal(&self, sig: Signal) {
        match nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.0), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => {
                tracing::warn!(pgid = self.0, %sig, error = %e, "cannot signal the process group")
            }
        }
    }

    /// Whether any live (not zombie) process is in the group. `kill(-pgid,
    /// 0)` cannot tell, since the unreaped leader counts; so read /proc.
    /// When /proc cannot be read, say "alive": the caller then waits and
    /// SIGKILLs.
    pub fn alive(&self) -> bool {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return true;
        };
        entries.flatten().any(|entry| {
            let name = entry.file_name();
            // A process that vanished between listing and reading is gone.
            name.to_str()
                .and_then(|s| s.parse::<i32>().ok())
                .and_then(sys::proc_stat)
                .is_some_and(|p| p.pgrp == self.0 && p.is_live())
        })
    }

    /// Wait up to `limit` for every process of the group to exit (zombies
    /// count as gone). Returns whether they did.
    pub fn wait_gone(&self, limit: Duration) -> bool {
        let until = std::time::Instant::now() + limit;
        let mut pause = Duration::from_millis(10);
        loop {
            if !self.alive() {
                return true;
            }
            match until.checked_duration_since(std::time::Instant::now()) {
                Some(left) if !left.is_zero() => std::thread::sleep(pause.min(left)),
                _ => return false,
            }
            pause = (pause + Duration::from_millis(10)).min(Duration::from_millis(50));
        }
    }

    /// SIGTERM, `grace` to end, then SIGKILL and [`KILL_WAIT`].
    pub fn terminate(&self, grace: Duration) -> GroupEnd {
        self.signal(Signal::SIGTERM);
        if self.wait_gone(grace) {
            return GroupEnd::Terminated;
        }
        self.signal(Signal::SIGKILL);
        if self.wait_gone(KILL_WAIT) {
            GroupEnd::Killed
        } else {
            GroupEnd::Stuck
        }
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
