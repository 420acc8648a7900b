//! A small blocking QMP client: one Unix socket, newline-delimited JSON,
//! commands matched to replies by `id`, events queued until asked for.
//!
//! Why not the `qapi` crate (0.15): its sync client writes through
//! `io::Write`, so it cannot attach a descriptor with `SCM_RIGHTS`, which
//! ferry's checkpoints need (`getfd` + `migrate fd:NAME`); it sends no `id`
//! and takes the first reply it sees; its handshake panics on EOF
//! (`expect("unexpected eof")`); and `qapi-qmp`'s types are generated from
//! QEMU 9.1's schema with closed enums, so a status or field that 7.2 (or a
//! later QEMU) spells differently fails to decode the whole reply. It also
//! builds a 26,000-line generated module (about 20 s and 1.3 GB of memory
//! here) for the dozen commands we use. Our own client reads the few fields
//! it needs from `serde_json::Value` and ignores the rest.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, IoSlice, Read};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How long [`Qmp::execute`] waits for a reply unless [`Qmp::set_timeout`]
/// says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest message accepted; `query-qmp-schema` is well under 1 MiB.
const MAX_LINE: usize = 16 << 20;
/// Events kept for [`Qmp::wait_event`] and [`Qmp::events`]; older ones are
/// dropped so a long-lived connection nobody drains stays bounded.
const MAX_EVENTS: usize = 1024;
/// Pause between attempts in [`Qmp::connect_retry`].
const RETRY_INTERVAL: Duration = Duration::from_millis(5);
/// Shortest socket timeout used, so a nearly spent deadline is still one try.
const MIN_WAIT: Duration = Duration::from_millis(1);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("QMP socket I/O failed")]
    Io(#[source] io::Error),
    /// What was being waited for, e.g. "the reply to query-migrate".
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// Malformed JSON or a message that fits no QMP shape.
    #[error("QMP protocol violation: {0}")]
    Protocol(String),
    /// QEMU answered the command with an `error` reply.
    #[error("QMP command {command} failed: {desc} ({class})")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QEMU closed the QMP connection")]
    Closed,
}

/// QEMU's version from the QMP greeting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QemuVersion {
    pub major: u64,
    pub minor: u64,
    pub micro: u64,
    /// Distribution build string, e.g. "Debian 1:7.2+dfsg-7".
    pub package: String,
}

/// The reply to `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub running: bool,
    /// QEMU's RunState: "prelaunch", "running", "paused", "inmigrate",
    /// "postmigrate", "shutdown", ...
    pub status: String,
}

/// The parts of `query-migrate` ferry uses. Absent fields are `None`; the
/// reply before any migration is `{}`, read as status "none".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MigrationInfo {
    /// "none", "setup", "active", "completed", "failed", "cancelled", ...
    pub status: String,
    pub total_time_ms: Option<u64>,
    pub downtime_ms: Option<u64>,
    pub expected_downtime_ms: Option<u64>,
    /// Bytes of RAM sent so far (`ram.transferred`).
    pub transferred: Option<u64>,
    pub remaining: Option<u64>,
    pub total: Option<u64>,
    pub dirty_pages_rate: Option<u64>,
    pub error_desc: Option<String>,
}

impl MigrationInfo {
    fn from_reply(v: &Value) -> MigrationInfo {
        let int = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64);
        let ram = v.get("ram").unwrap_or(&Value::Null);
        MigrationInfo {
            status: v
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("none")
                .to_owned(),
            total_time_ms: int(v, "total-time"),
            downtime_ms: int(v, "downtime"),
            expected_downtime_ms: int(v, "expected-downtime"),
            transferred: int(ram, "transferred"),
            remaining: int(ram, "remaining"),
            total: int(ram, "total"),
            dirty_pages_rate: int(ram, "dirty-pages-rate"),
            error_desc: v
                .get("error-desc")
                .and_then(Value::as_str)
                .map(str::to_owned),
        }
    }

    /// True once the migration can make no more progress.
    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "cancelled")
    }
}

/// One QMP connection.
#[derive(Debug)]
pub struct Qmp {
    /// Written with `sendmsg` so a descriptor can ride along.
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    /// A message read in part when a read timed out, finished by the next.
    line: Vec<u8>,
    events: VecDeque<Value>,
    next_id: u64,
    timeout: Duration,
    version: QemuVersion,
}

/// A message from QEMU, sorted by shape.
enum Message {
    Event(Value),
    Reply {
        id: Option<Value>,
        result: Result<Value, (String, String)>,
    },
}

impl Qmp {
    /// Connect to a QMP unix socket, read the greeting and leave capability
    /// negotiation mode, all within `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + timeout;
        let connect_err = |source| QmpError::Connect {
            path: path.to_owned(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(connect_err)?;
        let reader = stream.try_clone().map_err(QmpError::Io)?;
        let mut qmp = Qmp {
            stream,
            reader: BufReader::with_capacity(64 * 1024, reader),
            line: Vec::new(),
            events: VecDeque::new(),
            next_id: 1,
            timeout: DEFAULT_TIMEOUT,
            version: QemuVersion::default(),
        };
        let greeting = qmp.read_message(deadline, || "the QMP greeting".to_owned())?;
        let Some(banner) = greeting.get("QMP") else {
            return Err(QmpError::Protocol(format!(
                "expected the QMP greeting, got {}",
                snippet(&greeting)
            )));
        };
        qmp.version = parse_version(banner);
        qmp.run("qmp_capabilities", None, None, deadline)?;
        tracing::debug!(path = %path.display(), version = ?qmp.version, "QMP connected");
        Ok(qmp)
    }

    /// Retry [`Qmp::connect`] while the socket is missing or refuses
    /// connections (QEMU still starting), until `deadline`. Returns the last
    /// connect error if QEMU never listened.
    pub fn connect_retry(path: &Path, deadline: Instant) -> Result<Qmp, QmpError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match Qmp::connect(path, left.max(MIN_WAIT)) {
                Err(QmpError::Connect { source, .. })
                    if is_not_listening(&source) && Instant::now() + RETRY_INTERVAL < deadline =>
                {
                    std::thread::sleep(RETRY_INTERVAL);
                }
                other => return other,
            }
        }
    }

    /// QEMU's version, from the greeting.
    pub fn version(&self) -> &QemuVersion {
        &self.version
    }

    /// How long a command waits for its reply (default [`DEFAULT_TIMEOUT`]).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Run a command and return its `return` value. Events that arrive
    /// meanwhile are queued; replies to other ids (late answers to a command
    /// that timed out) are dropped.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let deadline = Instant::now() + self.timeout;
        self.run(command, arguments, None, deadline)
    }

    pub fn query_status(&mut self) -> Result<Status, QmpError> {
        let v = self.execute("query-status", None)?;
        serde_json::from_value(v)
            .map_err(|e| QmpError::Protocol(format!("unexpected reply to query-status: {e}")))
    }

    /// Pause the vCPUs.
    pub fn stop(&mut self) -> Result<(), QmpError> {
        self.execute("stop", None).map(drop)
    }

    /// Resume the vCPUs (also leaves "prelaunch" under `-S`).
    pub fn cont(&mut self) -> Result<(), QmpError> {
        self.execute("cont", None).map(drop)
    }

    /// Press the ACPI power button; the guest decides what happens.
    pub fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).map(drop)
    }

    /// Make QEMU exit. It may close the socket before or after replying, so
    /// EOF once the command is sent counts as success.
    pub fn quit(&mut self) -> Result<(), QmpError> {
        let deadline = Instant::now() + self.timeout;
        let id = self.send("quit", None, None, deadline)?;
        match self.wait_reply(id, "quit", deadline) {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Hand QEMU a descriptor under `name` (sent with `SCM_RIGHTS` alongside
    /// the command), for `fd:NAME` migration URIs and the like. QEMU keeps
    /// its own duplicate; the caller may close `fd` afterwards.
    pub fn getfd(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), QmpError> {
        let deadline = Instant::now() + self.timeout;
        let args = object([("fdname", name.into())]);
        self.run("getfd", Some(args), Some(fd), deadline).map(drop)
    }

    /// Drop a descriptor given with [`Qmp::getfd`] that no command consumed.
    pub fn closefd(&mut self, name: &str) -> Result<(), QmpError> {
        self.execute("closefd", Some(object([("fdname", name.into())])))
            .map(drop)
    }

    /// Start an outgoing migration; it runs in the background, so follow it
    /// with [`Qmp::query_migrate`] or the MIGRATION event.
    pub fn migrate(&mut self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate", Some(object([("uri", uri.into())])))
            .map(drop)
    }

    /// Start the incoming side of a QEMU started with `-incoming defer`.
    /// The guest ends in the state the source had when it was saved, except
    /// that a saved running guest stays paused under `-S`; a `cont` sent
    /// before the migration completes makes QEMU start it when it does.
    pub fn migrate_incoming(&mut self, uri: &str) -> Result<(), QmpError> {
        self.execute("migrate-incoming", Some(object([("uri", uri.into())])))
            .map(drop)
    }

    /// Set migration capabilities, e.g. `("events", true)` to get MIGRATION
    /// events, which QEMU 7.2 sends only with that capability on.
    pub fn set_migrate_capabilities(&mut self, caps: &[(&str, bool)]) -> Result<(), QmpError> {
        let list = caps
            .iter()
            .map(|&(name, on)| object([("capability", name.into()), ("state", on.into())]))
            .collect();
        let args = object([("capabilities", Value::Array(list))]);
        self.execute("migrate-set-capabilities", Some(args))
            .map(drop)
    }

    /// `migrate-set-parameters` with `params` as its arguments, e.g.
    /// `{"max-bandwidth": 1073741824}`.
    pub fn set_migrate_parameters(&mut self, params: Value) -> Result<(), QmpError> {
        self.execute("migrate-set-parameters", Some(params))
            .map(drop)
    }

    pub fn query_migrate(&mut self) -> Result<MigrationInfo, QmpError> {
        let v = self.execute("query-migrate", None)?;
        Ok(MigrationInfo::from_reply(&v))
    }

    /// Wait up to `timeout` for an event called `name`, taking it from the
    /// queue first. Returns the whole event (`event`, `data`, `timestamp`).
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Value, QmpError> {
        self.wait_event_where(name, timeout, |_| true)
    }

    /// Like [`Qmp::wait_event`], for the first event called `name` whose
    /// `data` satisfies `want` (e.g. MIGRATION with status "completed").
    /// Other events stay queued.
    pub fn wait_event_where(
        &mut self,
        name: &str,
        timeout: Duration,
        mut want: impl FnMut(&Value) -> bool,
    ) -> Result<Value, QmpError> {
        let mut wanted = |ev: &Value| {
            ev.get("event").and_then(Value::as_str) == Some(name)
                && want(ev.get("data").unwrap_or(&Value::Null))
        };
        if let Some(pos) = self.events.iter().position(&mut wanted) {
            if let Some(ev) = self.events.remove(pos) {
                return Ok(ev);
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let msg = self.read_message(deadline, || format!("event {name}"))?;
            match classify(msg)? {
                Message::Event(ev) if wanted(&ev) => return Ok(ev),
                Message::Event(ev) => self.queue_event(ev),
                Message::Reply { id, .. } => {
                    tracing::debug!(?id, "dropping QMP reply nobody waits for");
                }
            }
        }
    }

    /// Take every queued event, oldest first.
    pub fn events(&mut self) -> Vec<Value> {
        self.events.drain(..).collect()
    }

    /// Send one command and wait for its reply.
    fn run(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        fd: Option<BorrowedFd<'_>>,
        deadline: Instant,
    ) -> Result<Value, QmpError> {
        let id = self.send(command, arguments, fd, deadline)?;
        self.wait_reply(id, command, deadline)
    }

    /// Write one command, with `fd` attached to its first byte. Returns its id.
    fn send(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        fd: Option<BorrowedFd<'_>>,
        deadline: Instant,
    ) -> Result<u64, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = object([("execute", command.into()), ("id", id.into())]);
        if let (Value::Object(m), Some(a)) = (&mut msg, arguments) {
            m.insert("arguments".to_owned(), a);
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        tracing::trace!(command, id, "QMP send");

        let fds = fd.map(|fd| [fd.as_raw_fd()]);
        let mut sent = 0;
        while sent < bytes.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            self.stream
                .set_write_timeout(Some(left.max(MIN_WAIT)))
                .map_err(QmpError::Io)?;
            let rights;
            let cmsgs: &[ControlMessage] = match &fds {
                Some(fds) if sent == 0 => {
                    rights = [ControlMessage::ScmRights(fds)];
                    &rights
                }
                _ => &[],
            };
            let iov = [IoSlice::new(&bytes[sent..])];
            // MSG_NOSIGNAL: a closed peer is an error here, not SIGPIPE.
            match sendmsg::<()>(
                self.stream.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(0) => return Err(QmpError::Closed),
                Ok(n) => sent += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    return Err(QmpError::Timeout(format!("QEMU to accept {command}")))
                }
                Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(QmpError::Closed),
                Err(e) => return Err(QmpError::Io(e.into())),
            }
        }
        Ok(id)
    }

    fn wait_reply(&mut self, id: u64, command: &str, deadline: Instant) -> Result<Value, QmpError> {
        let want = Value::from(id);
        loop {
            let msg = self.read_message(deadline, || format!("the reply to {command}"))?;
            match classify(msg)? {
                Message::Event(ev) => self.queue_event(ev),
                // QEMU leaves the id out only when it could not parse the
                // request; with one command in flight, that is this one.
                Message::Reply { id, result } if id.as_ref().is_none_or(|i| *i == want) => {
                    return result.map_err(|(class, desc)| QmpError::Command {
                        command: command.to_owned(),
                        class,
                        desc,
                    });
                }
                Message::Reply { id, .. } => {
                    tracing::debug!(?id, command, "dropping QMP reply to an earlier command");
                }
            }
        }
    }

    fn queue_event(&mut self, ev: Value) {
        tracing::trace!(event = %snippet(&ev), "QMP event");
        if self.events.len() >= MAX_EVENTS {
            if let Some(old) = self.events.pop_front() {
                tracing::warn!(event = %snippet(&old), "QMP event queue full, dropping oldest");
            }
        }
        self.events.push_back(ev);
    }

    /// Read one JSON message, waiting no later than `deadline`. A message cut
    /// by the deadline is kept and finished by the next call.
    fn read_message(
        &mut self,
        deadline: Instant,
        what: impl Fn() -> String,
    ) -> Result<Value, QmpError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QmpError::Timeout(what()));
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(left))
                .map_err(QmpError::Io)?;
            let room = (MAX_LINE + 1).saturating_sub(self.line.len()) as u64;
            let n = match (&mut self.reader)
                .take(room)
                .read_until(b'\n', &mut self.line)
            {
                Ok(n) => n,
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        return Err(QmpError::Timeout(what()))
                    }
                    io::ErrorKind::ConnectionReset => return Err(QmpError::Closed),
                    _ => return Err(QmpError::Io(e)),
                },
            };
            if self.line.last() == Some(&b'\n') {
                let line = std::mem::take(&mut self.line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line).map_err(|e| {
                    QmpError::Protocol(format!("malformed JSON while waiting for {}: {e}", what()))
                });
            }
            if self.line.len() > MAX_LINE {
                self.line.clear();
                return Err(QmpError::Protocol(format!(
                    "message longer than {MAX_LINE} bytes while waiting for {}",
                    what()
                )));
            }
            if n == 0 {
                return Err(QmpError::Closed);
            }
        }
    }
}

/// Sort a message into an event or a reply.
fn classify(msg: Value) -> Result<Message, QmpError> {
    let Value::Object(mut m) = msg else {
        return Err(QmpError::Protocol(format!(
            "expected a JSON object, got {}",
            snippet(&msg)
        )));
    };
    if m.contains_key("event") {
        return Ok(Message::Event(Value::Object(m)));
    }
    let id = m.remove("id");
    if let Some(ret) = m.remove("return") {
        return Ok(Message::Reply {
            id,
            result: Ok(ret),
        });
    }
    if let Some(err) = m.get("error") {
        let text = |k: &str| err.get(k).and_then(Value::as_str).map(str::to_owned);
        if let (Some(class), Some(desc)) = (text("class"), text("desc")) {
            return Ok(Message::Reply {
                id,
                result: Err((class, desc)),
            });
        }
    }
    Err(QmpError::Protocol(format!(
        "unexpected message {}",
        snippet(&Value::Object(m))
    )))
}

fn parse_version(banner: &Value) -> QemuVersion {
    let v = banner.get("version").unwrap_or(&Value::Null);
    let q = v.get("qemu").unwrap_or(&Value::Null);
    let int = |k: &str| q.get(k).and_then(Value::as_u64).unwrap_or(0);
    QemuVersion {
        major: int("major"),
        minor: int("minor"),
        micro: int("micro"),
        package: v
            .get("package")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_owned(),
    }
}

fn is_not_listening(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused | io::ErrorKind::WouldBlock
    )
}

fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<Map<_, _>>(),
    )
}

/// A message cut short for an error text.
fn snippet(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 200 {
        let mut cut = 200;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests;

/// Against a real `qemu-system-x86_64` under TCG; select with
/// `cargo test qmp::qemu_tests`.
#[cfg(test)]
mod qemu_tests;
