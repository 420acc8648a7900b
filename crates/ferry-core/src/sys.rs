//! Small facts read from the running system: `/proc/<pid>/stat`, and UTC
//! timestamps for logs and listings.

use std::fs;
use std::time::{SystemTime, UNIX_EPOCH};

/// The fields of `/proc/<pid>/stat` ferry uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// One-letter state (`R`, `S`, `Z` ...).
    pub state: char,
    pub pgrp: i32,
    /// Start time in clock ticks since boot: with the pid, it names one
    /// process for good (a recycled pid has another start time).
    pub starttime: u64,
}

impl ProcStat {
    /// Alive, not a zombie waiting to be reaped.
    pub fn is_live(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

/// Parse "pid (comm) S ppid pgrp ... starttime ...". The command name may
/// hold spaces and parentheses, so fields are counted after the last ')'.
pub fn parse_proc_stat(stat: &str) -> Option<ProcStat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        // Field 22 of the whole line; the state is field 3.
        starttime: fields.get(19)?.parse().ok()?,
    })
}

/// `/proc/<pid>/stat` of a process, if it exists.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    parse_proc_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `2026-11-21T11:40:26Z`. Times before 1970 print as the epoch.
pub fn utc_timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc_timestamps() {
        let at = |s: u64| utc_timestamp(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(1_795_261_226), "2026-11-21T11:40:26Z");
        assert_eq!(at(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn parses_proc_stat_with_awkward_comm() {
        let tail = "1 40 40 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0";
        let p = parse_proc_stat(&format!("42 (a) b (c)) S {tail}")).unwrap();
        assert_eq!((p.state, p.pgrp, p.starttime), ('S', 40, 777));
        assert!(!parse_proc_stat(&format!("42 (sh) Z {tail}"))
            .unwrap()
            .is_live());
        assert_eq!(parse_proc_stat("garbage"), None);
        let me = proc_stat(i32::try_from(std::process::id()).unwrap()).unwrap();
        assert!(me.is_live());
    }
}
