//! The beanstalkd text protocol: strict parsing of the server's reply lines
//! and stats bodies, and the checks on what we send. Pure functions, so they
//! are unit-tested and fuzzed without a server.

use std::time::Duration;

use crate::{Error, JobId, JobState, JobStats, ServerError, TubeStats};

/// The longest reply line we accept, without `\r\n`. beanstalkd's longest is
/// `USING <200-byte tube>`.
pub const MAX_LINE: usize = 256;
/// The largest stats body we accept (beanstalkd's are a few hundred bytes).
pub const MAX_STATS: u64 = 64 * 1024;
/// The longest tube name beanstalkd accepts.
pub const MAX_TUBE: usize = 200;

/// One reply line, parsed. A body, where one follows, is read by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Inserted(JobId),
    /// After a put (with the new job's id) or a bury (without).
    Buried(Option<JobId>),
    JobTooBig,
    Draining,
    Using(String),
    Reserved {
        id: JobId,
        size: u64,
    },
    Found {
        id: JobId,
        size: u64,
    },
    DeadlineSoon,
    TimedOut,
    Deleted,
    NotFound,
    Released,
    Touched,
    Watching(u32),
    NotIgnored,
    /// After `kick` (with the count) or `kick-job` (without).
    Kicked(Option<u32>),
    /// A YAML body of this many bytes follows.
    Ok(u64),
    Error(ServerError),
}

/// What makes a server's reply not valid protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Violation(pub String);

impl From<String> for Violation {
    fn from(s: String) -> Violation {
        Violation(s)
    }
}

impl From<&str> for Violation {
    fn from(s: &str) -> Violation {
        Violation(s.to_owned())
    }
}

/// Parses one reply line (without its `\r\n`). Every field is checked: the
/// word, the number of fields, digits only, the range of each number.
pub fn parse_reply(line: &[u8]) -> Result<Reply, Violation> {
    let text = std::str::from_utf8(line)
        .map_err(|_| Violation(format!("reply is not ASCII: {}", show(line))))?;
    let mut fields = text.split(' ');
    let word = fields.next().unwrap_or_default();
    let (a, b) = (fields.next(), fields.next());
    let bad = || Violation(format!("unexpected reply {}", show(line)));
    if fields.next().is_some() {
        return Err(bad());
    }
    let reply = match (word, a, b) {
        ("INSERTED", Some(id), None) => Reply::Inserted(JobId(number(id, line)?)),
        ("BURIED", None, None) => Reply::Buried(None),
        ("BURIED", Some(id), None) => Reply::Buried(Some(JobId(number(id, line)?))),
        ("JOB_TOO_BIG", None, None) => Reply::JobTooBig,
        ("DRAINING", None, None) => Reply::Draining,
        ("USING", Some(tube), None) => {
            check_tube(tube).map_err(|_| bad())?;
            Reply::Using((*tube).to_owned())
        }
        ("RESERVED", Some(id), Some(size)) => Reply::Reserved {
            id: JobId(number(id, line)?),
            size: number(size, line)?,
        },
        ("FOUND", Some(id), Some(size)) => Reply::Found {
            id: JobId(number(id, line)?),
            size: number(size, line)?,
        },
        ("DEADLINE_SOON", None, None) => Reply::DeadlineSoon,
        ("TIMED_OUT", None, None) => Reply::TimedOut,
        ("DELETED", None, None) => Reply::Deleted,
        ("NOT_FOUND", None, None) => Reply::NotFound,
        ("RELEASED", None, None) => Reply::Released,
        ("TOUCHED", None, None) => Reply::Touched,
        ("WATCHING", Some(n), None) => Reply::Watching(number_u32(n, line)?),
        ("NOT_IGNORED", None, None) => Reply::NotIgnored,
        ("KICKED", None, None) => Reply::Kicked(None),
        ("KICKED", Some(n), None) => Reply::Kicked(Some(number_u32(n, line)?)),
        ("OK", Some(size), None) => Reply::Ok(number(size, line)?),
        ("BAD_FORMAT", None, None) => Reply::Error(ServerError::BadFormat),
        ("UNKNOWN_COMMAND", None, None) => Reply::Error(ServerError::UnknownCommand),
        ("EXPECTED_CRLF", None, None) => Reply::Error(ServerError::ExpectedCrlf),
        ("OUT_OF_MEMORY", None, None) => Reply::Error(ServerError::OutOfMemory),
        ("INTERNAL_ERROR", None, None) => Reply::Error(ServerError::InternalError),
        _ => return Err(bad()),
    };
    Ok(reply)
}

/// A decimal number of digits only (no sign, no spaces), at most 20 digits.
fn number(s: &str, line: &[u8]) -> Result<u64, Violation> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Violation(format!("bad number in reply {}", show(line))));
    }
    s.parse()
        .map_err(|_| Violation(format!("number out of range in reply {}", show(line))))
}

fn number_u32(s: &str, line: &[u8]) -> Result<u32, Violation> {
    u32::try_from(number(s, line)?)
        .map_err(|_| Violation(format!("number out of range in reply {}", show(line))))
}

/// A byte string for an error message: escaped, at most 80 bytes of it.
pub fn show(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(80)];
    let more = if bytes.len() > cut.len() { "..." } else { "" };
    format!("\"{}{more}\"", cut.escape_ascii())
}

/// Checks a tube name against beanstalkd's rules, which also keep spaces
/// and line breaks out of our commands.
pub fn check_tube(name: &str) -> Result<(), Error> {
    let ok_byte = |b: u8| b.is_ascii_alphanumeric() || b"-+/;.$_()".contains(&b);
    if name.is_empty()
        || name.len() > MAX_TUBE
        || name.starts_with('-')
        || !name.bytes().all(ok_byte)
    {
        return Err(Error::InvalidTube(name.to_owned()));
    }
    Ok(())
}

/// A duration in whole seconds for the protocol: rounded up, capped at
/// `u32::MAX`.
pub fn secs(d: Duration) -> u32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    u32::try_from(s).unwrap_or(u32::MAX)
}

/// The `key: value` lines of a stats body (`---` first).
fn yaml_map(body: &[u8]) -> Result<Vec<(&str, &str)>, Violation> {
    let text = std::str::from_utf8(body).map_err(|_| "stats body is not UTF-8".to_owned())?;
    let mut lines = text.lines();
    if lines.next() != Some("---") {
        return Err(Violation(format!(
            "stats body does not start with ---: {}",
            show(body)
        )));
    }
    lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_once(": ")
                .ok_or_else(|| Violation(format!("bad stats line {}", show(l.as_bytes()))))
        })
        .collect()
}

struct Fields<'a>(Vec<(&'a str, &'a str)>);

impl Fields<'_> {
    fn str(&self, key: &str) -> Result<&str, Violation> {
        let v = self
            .0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .ok_or_else(|| Violation(format!("stats lack {key}")))?;
        // Older servers quote strings.
        Ok(v.strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v))
    }

    fn num(&self, key: &str) -> Result<u64, Violation> {
        let v = self.str(key)?;
        number(v, v.as_bytes()).map_err(|e| Violation(format!("stats {key}: {e}")))
    }

    fn secs(&self, key: &str) -> Result<Duration, Violation> {
        self.num(key).map(Duration::from_secs)
    }

    /// A number of seconds that may be negative (beanstalkd 1.12 reports a
    /// `time-left` of -1 for a job whose TTR ran out); negative is zero.
    fn secs_left(&self, key: &str) -> Result<Duration, Violation> {
        let v = self.str(key)?;
        match v.strip_prefix('-') {
            Some(n) => number(n, v.as_bytes()).map(|_| Duration::ZERO),
            None => number(v, v.as_bytes()).map(Duration::from_secs),
        }
        .map_err(|e| Violation(format!("stats {key}: {e}")))
    }

    fn tube(&self, key: &str) -> Result<String, Violation> {
        let t = self.str(key)?;
        check_tube(t).map_err(|e| Violation(e.to_string()))?;
        Ok(t.to_owned())
    }
}

/// Parses a `stats-job` body.
pub fn parse_job_stats(body: &[u8]) -> Result<JobStats, Violation> {
    let f = Fields(yaml_map(body)?);
    let state = match f.str("state")? {
        "ready" => JobState::Ready,
        "delayed" => JobState::Delayed,
        "reserved" => JobState::Reserved,
        "buried" => JobState::Buried,
        other => {
            return Err(Violation(format!(
                "unknown job state {}",
                show(other.as_bytes())
            )))
        }
    };
    Ok(JobStats {
        id: JobId(f.num("id")?),
        tube: f.tube("tube")?,
        state,
        priority: u32::try_from(f.num("pri")?)
            .map_err(|_| Violation("stats pri out of range".to_owned()))?,
        age: f.secs("age")?,
        delay: f.secs("delay")?,
        ttr: f.secs("ttr")?,
        time_left: f.secs_left("time-left")?,
        reserves: f.num("reserves")?,
        timeouts: f.num("timeouts")?,
        releases: f.num("releases")?,
        buries: f.num("buries")?,
        kicks: f.num("kicks")?,
    })
}

/// Parses a `stats-tube` body.
pub fn parse_tube_stats(body: &[u8]) -> Result<TubeStats, Violation> {
    let f = Fields(yaml_map(body)?);
    Ok(TubeStats {
        name: f.tube("name")?,
        urgent: f.num("current-jobs-urgent")?,
        ready: f.num("current-jobs-ready")?,
        reserved: f.num("current-jobs-reserved")?,
        delayed: f.num("current-jobs-delayed")?,
        buried: f.num("current-jobs-buried")?,
        total_jobs: f.num("total-jobs")?,
        using: f.num("current-using")?,
        watching: f.num("current-watching")?,
        waiting: f.num("current-waiting")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse() {
        let cases: &[(&[u8], Reply)] = &[
            (b"INSERTED 7", Reply::Inserted(JobId(7))),
            (b"BURIED 9", Reply::Buried(Some(JobId(9)))),
            (b"BURIED", Reply::Buried(None)),
            (b"USING a.b", Reply::Using("a.b".into())),
            (
                b"RESERVED 1 0",
                Reply::Reserved {
                    id: JobId(1),
                    size: 0,
                },
            ),
            (
                b"FOUND 18446744073709551615 5",
                Reply::Found {
                    id: JobId(u64::MAX),
                    size: 5,
                },
            ),
            (b"WATCHING 2", Reply::Watching(2)),
            (b"KICKED 3", Reply::Kicked(Some(3))),
            (b"KICKED", Reply::Kicked(None)),
            (b"OK 139", Reply::Ok(139)),
            (b"TIMED_OUT", Reply::TimedOut),
            (b"DEADLINE_SOON", Reply::DeadlineSoon),
            (b"BAD_FORMAT", Reply::Error(ServerError::BadFormat)),
            (
                b"UNKNOWN_COMMAND",
                Reply::Error(ServerError::UnknownCommand),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(&parse_reply(line).expect("parses"), want, "{}", show(line));
        }
    }

    #[test]
    fn malformed_replies_are_rejected() {
        for line in [
            &b""[..],
            b" ",
            b"inserted 1",
            b"INSERTED",
            b"INSERTED 1 2",
            b"INSERTED -1",
            b"INSERTED +1",
            b"INSERTED 0x10",
            b"INSERTED 1 ",
            b"INSERTED  1",
            b"INSERTED 18446744073709551616",
            b"INSERTED 000000000000000000000001",
            b"RESERVED 1",
            b"RESERVED 1 1e9",
            b"WATCHING 4294967296",
            b"USING bad\ttube",
            b"USING -x",
            b"OK \xff",
            b"\xff\xfe",
            b"HELLO",
        ] {
            assert!(parse_reply(line).is_err(), "accepted {}", show(line));
        }
    }

    #[test]
    fn tube_names() {
        for ok in [
            "default",
            "cbsd_pool1_result_id42",
            "a+b/c;d.e$f_g(h)",
            "x-",
        ] {
            check_tube(ok).expect(ok);
        }
        let long = "t".repeat(201);
        for bad in ["", "-x", "a b", "a\r\nput", "ü", long.as_str()] {
            assert!(check_tube(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn durations_round_up_and_cap() {
        assert_eq!(secs(Duration::ZERO), 0);
        assert_eq!(secs(Duration::from_millis(1)), 1);
        assert_eq!(secs(Duration::from_millis(1500)), 2);
        assert_eq!(secs(Duration::from_secs(u64::MAX)), u32::MAX);
    }

    #[test]
    fn job_stats_parse() {
        let body = b"---\nid: 1\ntube: foo\nstate: reserved\npri: 1\nage: 3\ndelay: 0\nttr: 5\n\
                     time-left: 4\nfile: 0\nreserves: 2\ntimeouts: 1\nreleases: 0\nburies: 0\nkicks: 0\n";
        let s = parse_job_stats(body).expect("parses");
        assert_eq!(s.tube, "foo");
        assert_eq!(s.state, JobState::Reserved);
        assert_eq!((s.reserves, s.timeouts), (2, 1));
        assert_eq!(s.ttr, Duration::from_secs(5));
        let quoted = b"---\nid: 1\ntube: \"foo\"\nstate: ready\npri: 1\nage: 3\ndelay: 0\nttr: 5\n\
                       time-left: 4\nreserves: 2\ntimeouts: 1\nreleases: 0\nburies: 0\nkicks: 0\n";
        assert_eq!(parse_job_stats(quoted).expect("quoted").tube, "foo");
        for bad in [
            &b"id: 1\n"[..],
            b"---\nid: 1\n",
            b"---\nid: x\ntube: foo\n",
            b"---\nnonsense\n",
        ] {
            assert!(parse_job_stats(bad).is_err(), "accepted {}", show(bad));
        }
        let overdue = String::from_utf8(body.to_vec())
            .expect("utf8")
            .replace("time-left: 4", "time-left: -1");
        assert_eq!(
            parse_job_stats(overdue.as_bytes())
                .expect("overdue")
                .time_left,
            Duration::ZERO
        );
        let odd_state = String::from_utf8(body.to_vec())
            .expect("utf8")
            .replace("reserved", "lost");
        assert!(parse_job_stats(odd_state.as_bytes()).is_err());
    }

    #[test]
    fn tube_stats_parse() {
        let body = b"---\nname: foo\ncurrent-jobs-urgent: 1\ncurrent-jobs-ready: 1\n\
                     current-jobs-reserved: 0\ncurrent-jobs-delayed: 0\ncurrent-jobs-buried: 0\n\
                     total-jobs: 1\ncurrent-using: 1\ncurrent-watching: 0\ncurrent-waiting: 0\n\
                     cmd-delete: 0\ncmd-pause-tube: 0\npause: 0\npause-time-left: 0\n";
        let s = parse_tube_stats(body).expect("parses");
        assert_eq!((s.name.as_str(), s.ready, s.using), ("foo", 1, 1));
    }
}
