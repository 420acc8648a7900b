//! One connection to beanstalkd, speaking its text protocol.
//!
//! Why our own client: the crates on crates.io (`beanstalkc` 1.0, `bsc` 0.2,
//! `beanstalkd` 0.4) allocate whatever body length the server announces,
//! read reply lines without a bound, set no read timeout, and are no longer
//! maintained (see docs/decisions.md). This one never trusts a length beyond
//! [`ConnectOptions::max_job_size`], checks every field of every reply, and
//! gives a connection up after any I/O error, timeout or protocol violation,
//! since a late or partial reply would otherwise be taken for the next one.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};

use crate::proto::{self, check_tube, parse_reply, secs, Reply, MAX_LINE, MAX_STATS};
use crate::{Broker, BrokerUri, Error, Job, JobId, JobStats, Peek, Result, ServerError, TubeStats};

/// Bodies up to this size are sent in the same write as their command.
const INLINE_BODY: usize = 16 * 1024;
/// beanstalkd refuses `-z` above this, so no honest server announces more.
const SERVER_MAX_JOB: u64 = 1 << 30;
/// The slowest transfer of a body we wait for, in bytes per second, beyond
/// the read timeout.
const MIN_RATE: u64 = 1 << 20;

/// Limits and timeouts of a [`Connection`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// How long one TCP connect may take (per resolved address).
    pub connect_timeout: Duration,
    /// How long the server may take to accept a command or to answer it
    /// (a reserve may take its own timeout longer).
    pub io_timeout: Duration,
    /// The largest job body this client reads; larger ones are dropped
    /// with [`Error::BodyTooLarge`]. Default 65,535, beanstalkd's default
    /// `-z`.
    pub max_job_size: usize,
    /// Over JetStream: how long a reserved job stays with its worker
    /// without a touch before it is handed out again, one time for every
    /// job of a tube, set when the tube's consumer is created (beanstalkd
    /// takes each job's TTR from its put instead). Default 60 s.
    pub ack_wait: Duration,
}

impl Default for ConnectOptions {
    fn default() -> ConnectOptions {
        ConnectOptions {
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(10),
            max_job_size: 65_535,
            ack_wait: Duration::from_secs(60),
        }
    }
}

/// One beanstalkd connection (`TCP_NODELAY`, timeouts on connect, read and
/// write). After it is lost, every operation fails with
/// [`Error::Disconnected`]; [`Reconnecting`](crate::Reconnecting) replaces
/// it.
#[derive(Debug)]
pub struct Connection {
    stream: BufReader<TcpStream>,
    opts: ConnectOptions,
    /// The command being sent; kept to reuse its allocation.
    wbuf: Vec<u8>,
    /// The reply line being read, without `\r\n`.
    line: Vec<u8>,
    read_timeout: Duration,
    lost: bool,
}

impl Connection {
    /// Connects to the broker at `uri`.
    pub fn connect(uri: &BrokerUri, opts: ConnectOptions) -> Result<Connection> {
        let connect_err = |source| Error::Connect {
            addr: uri.to_string(),
            source,
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
        let timeout = opts.connect_timeout.max(Duration::from_millis(1));
        for addr in uri.host_port().to_socket_addrs().map_err(connect_err)? {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(stream) => return Connection::from_stream(stream, opts).map_err(connect_err),
                Err(e) => last = e,
            }
        }
        Err(connect_err(last))
    }

    /// Wraps a connected stream.
    fn from_stream(stream: TcpStream, mut opts: ConnectOptions) -> io::Result<Connection> {
        // A zero timeout would mean "none" to us but is an error to the OS.
        opts.io_timeout = opts.io_timeout.max(Duration::from_millis(1));
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(opts.io_timeout))?;
        stream.set_write_timeout(Some(opts.io_timeout))?;
        Ok(Connection {
            stream: BufReader::with_capacity(64 * 1024, stream),
            read_timeout: opts.io_timeout,
            opts,
            wbuf: Vec::with_capacity(256),
            line: Vec::with_capacity(MAX_LINE + 2),
            lost: false,
        })
    }

    /// Whether the connection was given up.
    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// The options it was made with.
    pub fn options(&self) -> &ConnectOptions {
        &self.opts
    }

    /// Starts a command line in the write buffer.
    fn command(&mut self, args: std::fmt::Arguments<'_>) -> Result<()> {
        if self.lost {
            return Err(Error::Disconnected(io::Error::new(
                io::ErrorKind::NotConnected,
                "the connection was given up after an earlier error",
            )));
        }
        self.wbuf.clear();
        self.wbuf
            .write_fmt(args)
            .and_then(|()| self.wbuf.write_all(b"\r\n"))
            .map_err(Error::Disconnected)
    }

    /// Sends the command in the write buffer (and `body` with its `\r\n`).
    fn send(&mut self, body: Option<&[u8]>) -> Result<()> {
        let res = (|| {
            let mut w = self.stream.get_ref();
            match body {
                Some(b) if b.len() <= INLINE_BODY => {
                    self.wbuf.extend_from_slice(b);
                    self.wbuf.extend_from_slice(b"\r\n");
                    w.write_all(&self.wbuf)
                }
                Some(b) => {
                    w.write_all(&self.wbuf)?;
                    w.write_all(b)?;
                    w.write_all(b"\r\n")
                }
                None => w.write_all(&self.wbuf),
            }
        })();
        res.map_err(|e| self.io_error(e, self.opts.io_timeout))
    }

    /// Reads and parses one reply line.
    fn reply(&mut self) -> Result<Reply> {
        self.line.clear();
        // The whole line within the read timeout, not each piece of it.
        let deadline = Instant::now() + self.read_timeout;
        loop {
            // The first byte may wait as long as the server likes to send it.
            self.fill((!self.line.is_empty()).then_some(deadline))?;
            let buf = self.stream.buffer();
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if self.line.len() + take > MAX_LINE + 2 {
                return Err(self.violation(format!("reply line longer than {MAX_LINE} bytes")));
            }
            self.line.extend_from_slice(&buf[..take]);
            self.stream.consume(take);
            if done {
                break;
            }
        }
        let Some(line) = self.line.strip_suffix(b"\r\n") else {
            return Err(self.violation(format!(
                "reply line {} not ended by \\r\\n",
                proto::show(&self.line)
            )));
        };
        match parse_reply(line) {
            Ok(r) => Ok(r),
            Err(msg) => Err(self.violation(msg)),
        }
    }

    /// Waits until the read buffer holds at least one byte, failing once
    /// `deadline` (if any) has passed or the server closed the connection.
    fn fill(&mut self, deadline: Option<Instant>) -> Result<()> {
        loop {
            if deadline.is_some_and(|d| Instant::now() > d) {
                return Err(self.io_error(io::ErrorKind::TimedOut.into(), self.read_timeout));
            }
            let n = match self.stream.fill_buf() {
                Ok(buf) => buf.len(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_error(e, self.read_timeout)),
            };
            return if n == 0 { Err(self.closed()) } else { Ok(()) };
        }
    }

    /// Reads a body of `size` bytes and its `\r\n`; `size` must be within
    /// the caller's bound.
    fn body(&mut self, size: u64) -> Result<Vec<u8>> {
        let n = usize::try_from(size)
            .ok()
            .and_then(|n| n.checked_add(2))
            .ok_or_else(|| self.violation("body size out of range"))?;
        let mut body = Vec::with_capacity(n);
        self.read_bounded(size + 2, |chunk| body.extend_from_slice(chunk))?;
        if body.ends_with(b"\r\n") {
            body.truncate(n - 2);
            Ok(body)
        } else {
            Err(self.violation("job body not followed by \\r\\n"))
        }
    }

    /// Passes the next `n` bytes to `out` in pieces, within the read timeout
    /// plus the time [`MIN_RATE`] needs for them, so a server trickling a
    /// body cannot hold us forever.
    fn read_bounded(&mut self, n: u64, mut out: impl FnMut(&[u8])) -> Result<()> {
        let deadline = Instant::now() + self.read_timeout + Duration::from_secs(n / MIN_RATE);
        let mut left = n;
        while left > 0 {
            self.fill(Some(deadline))?;
            let buf = self.stream.buffer();
            let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            out(&buf[..take]);
            self.stream.consume(take);
            left -= take as u64;
        }
        Ok(())
    }

    /// Reads a job body bounded by `max_job_size`; a larger one (up to what
    /// beanstalkd can hold) is read and dropped.
    fn job_body(&mut self, id: JobId, size: u64) -> Result<Job> {
        let max = self.opts.max_job_size;
        if size <= max as u64 {
            return Ok(Job {
                id,
                body: self.body(size)?,
            });
        }
        if size > SERVER_MAX_JOB {
            return Err(self.violation(format!(
                "job {id} announced with an absurd size of {size} bytes"
            )));
        }
        self.read_bounded(size + 2, |_| {})?;
        Err(Error::BodyTooLarge { id, size, max })
    }

    /// Reads a stats body.
    fn stats_body(&mut self, size: u64) -> Result<Vec<u8>> {
        if size > MAX_STATS {
            return Err(self.violation(format!("stats body of {size} bytes")));
        }
        self.body(size)
    }

    fn set_read_timeout(&mut self, t: Duration) -> Result<()> {
        if t != self.read_timeout {
            if let Err(e) = self.stream.get_ref().set_read_timeout(Some(t)) {
                return Err(self.io_error(e, t));
            }
            self.read_timeout = t;
        }
        Ok(())
    }

    /// A command without body and the reply to it.
    fn call(&mut self, args: std::fmt::Arguments<'_>) -> Result<Reply> {
        self.command(args)?;
        self.send(None)?;
        self.set_read_timeout(self.opts.io_timeout)?;
        self.reply()
    }

    /// Checks, without blocking, that the server has not closed the
    /// connection while it was idle, so that a put is not sent into a dead
    /// connection and reported ambiguous.
    pub(crate) fn probe(&mut self) -> Result<()> {
        if self.lost {
            return Ok(()); // command() reports it
        }
        if !self.stream.buffer().is_empty() {
            return Err(self.violation("the broker sent data nobody asked for"));
        }
        let fd = self.stream.get_ref().as_raw_fd();
        match recv(
            fd,
            &mut [0u8; 1],
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Err(Errno::EAGAIN) => Ok(()),
            Ok(0) => Err(self.closed()),
            Ok(_) => Err(self.violation("the broker sent data nobody asked for")),
            Err(e) => Err(self.io_error(e.into(), self.read_timeout)),
        }
    }

    fn io_error(&mut self, e: io::Error, timeout: Duration) -> Error {
        self.lost = true;
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::TimedOut(timeout),
            _ => Error::Disconnected(e),
        }
    }

    fn closed(&mut self) -> Error {
        self.lost = true;
        Error::Disconnected(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the broker closed the connection",
        ))
    }

    fn violation(&mut self, why: impl Into<proto::Violation>) -> Error {
        self.lost = true;
        Error::Protocol(why.into())
    }

    /// The error for a reply that does not belong to the command.
    fn unexpected(&mut self, reply: Reply) -> Error {
        match reply {
            Reply::Error(e) => Error::Server(e),
            other => self.violation(format!("reply {other:?} does not fit the command")),
        }
    }

    /// The common end of delete, touch, bury, kick-job.
    fn job_op(&mut self, id: JobId, reply: Reply, want: &Reply) -> Result<()> {
        match reply {
            r if &r == want => Ok(()),
            Reply::NotFound => Err(Error::NotFound(id)),
            r => Err(self.unexpected(r)),
        }
    }
}

impl Broker for Connection {
    fn use_tube(&mut self, tube: &str) -> Result<()> {
        check_tube(tube)?;
        match self.call(format_args!("use {tube}"))? {
            Reply::Using(t) if t == tube => Ok(()),
            r => Err(self.unexpected(r)),
        }
    }

    fn watch(&mut self, tube: &str) -> Result<u32> {
        check_tube(tube)?;
        match self.call(format_args!("watch {tube}"))? {
            Reply::Watching(n) => Ok(n),
            r => Err(self.unexpected(r)),
        }
    }

    fn ignore(&mut self, tube: &str) -> Result<u32> {
        check_tube(tube)?;
        match self.call(format_args!("ignore {tube}"))? {
            Reply::Watching(n) => Ok(n),
            Reply::NotIgnored => Err(Error::NotIgnored),
            r => Err(self.unexpected(r)),
        }
    }

    fn put(&mut self, body: &[u8], priority: u32, delay: Duration, ttr: Duration) -> Result<JobId> {
        self.probe()?;
        let (delay, ttr) = (secs(delay), secs(ttr));
        self.command(format_args!("put {priority} {delay} {ttr} {}", body.len()))?;
        // A failed write never delivered the whole command: not ambiguous.
        self.send(Some(body))?;
        let reply = self
            .set_read_timeout(self.opts.io_timeout)
            .and_then(|()| self.reply())
            .map_err(|e| Error::AmbiguousPut(Box::new(e)))?;
        match reply {
            Reply::Inserted(id) => Ok(id),
            Reply::Buried(Some(id)) => Err(Error::PutBuried(id)),
            Reply::JobTooBig => Err(Error::JobTooBig(body.len())),
            Reply::Draining => Err(Error::Draining),
            r => Err(self.unexpected(r)),
        }
    }

    fn reserve(&mut self, timeout: Duration) -> Result<Option<Job>> {
        let t = secs(timeout);
        self.command(format_args!("reserve-with-timeout {t}"))?;
        self.send(None)?;
        self.set_read_timeout(self.opts.io_timeout + Duration::from_secs(t.into()))?;
        match self.reply()? {
            Reply::Reserved { id, size } => self.job_body(id, size).map(Some),
            Reply::TimedOut => Ok(None),
            Reply::DeadlineSoon => Err(Error::DeadlineSoon),
            r => Err(self.unexpected(r)),
        }
    }

    fn delete(&mut self, id: JobId) -> Result<()> {
        let r = self.call(format_args!("delete {id}"))?;
        self.job_op(id, r, &Reply::Deleted)
    }

    fn release(&mut self, id: JobId, priority: u32, delay: Duration) -> Result<()> {
        let r = self.call(format_args!("release {id} {priority} {}", secs(delay)))?;
        match r {
            Reply::Buried(None) => Err(Error::Server(ServerError::OutOfMemory)),
            r => self.job_op(id, r, &Reply::Released),
        }
    }

    fn bury(&mut self, id: JobId, priority: u32) -> Result<()> {
        let r = self.call(format_args!("bury {id} {priority}"))?;
        self.job_op(id, r, &Reply::Buried(None))
    }

    fn touch(&mut self, id: JobId) -> Result<()> {
        let r = self.call(format_args!("touch {id}"))?;
        self.job_op(id, r, &Reply::Touched)
    }

    fn peek(&mut self, which: Peek) -> Result<Option<Job>> {
        let r = match which {
            Peek::Id(id) => self.call(format_args!("peek {id}"))?,
            Peek::Ready => self.call(format_args!("peek-ready"))?,
            Peek::Delayed => self.call(format_args!("peek-delayed"))?,
            Peek::Buried => self.call(format_args!("peek-buried"))?,
        };
        match r {
            Reply::Found { id, size } => self.job_body(id, size).map(Some),
            Reply::NotFound => Ok(None),
            r => Err(self.unexpected(r)),
        }
    }

    fn kick(&mut self, bound: u32) -> Result<u32> {
        match self.call(format_args!("kick {bound}"))? {
            Reply::Kicked(Some(n)) => Ok(n),
            r => Err(self.unexpected(r)),
        }
    }

    fn kick_job(&mut self, id: JobId) -> Result<()> {
        let r = self.call(format_args!("kick-job {id}"))?;
        self.job_op(id, r, &Reply::Kicked(None))
    }

    fn stats_job(&mut self, id: JobId) -> Result<JobStats> {
        match self.call(format_args!("stats-job {id}"))? {
            Reply::Ok(size) => {
                let body = self.stats_body(size)?;
                proto::parse_job_stats(&body).map_err(|m| self.violation(m))
            }
            Reply::NotFound => Err(Error::NotFound(id)),
            r => Err(self.unexpected(r)),
        }
    }

    fn stats_tube(&mut self, tube: &str) -> Result<TubeStats> {
        check_tube(tube)?;
        match self.call(format_args!("stats-tube {tube}"))? {
            Reply::Ok(size) => {
                let body = self.stats_body(size)?;
                proto::parse_tube_stats(&body).map_err(|m| self.violation(m))
            }
            // beanstalkd drops tubes nobody uses, watches or fills.
            Reply::NotFound => Ok(TubeStats {
                name: tube.to_owned(),
                ..TubeStats::default()
            }),
            r => Err(self.unexpected(r)),
        }
    }
}
