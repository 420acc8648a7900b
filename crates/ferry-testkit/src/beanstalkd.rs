//! A real beanstalkd for tests: started on a free port (127.0.0.1 unless
//! told otherwise), ready when `start` returns, killed and reaped on drop,
//! also when the test panicked.
//!
//! ```no_run
//! # use ferry_testkit::beanstalkd::Beanstalkd;
//! # fn main() -> std::io::Result<()> {
//! let mut b = Beanstalkd::builder().binlog().max_job_size(16 << 20).start()?;
//! let uri = b.uri(); // "beanstalk://127.0.0.1:PORT"
//! b.restart()?; // same address, same binlog: ready jobs survive
//! # Ok(()) }
//! ```
//!
//! Needs Debian's `beanstalkd`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where Debian installs beanstalkd.
const DEFAULT_BIN: &str = "/usr/bin/beanstalkd";
/// How long beanstalkd may take to accept connections, or to exit on SIGTERM.
const WAIT: Duration = Duration::from_secs(5);

/// The beanstalkd binary: `$FERRY_BEANSTALKD` if set, else the one on
/// `PATH`, else `/usr/bin/beanstalkd`.
pub fn beanstalkd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_BEANSTALKD") {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("beanstalkd"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BIN))
}

/// How to start a [`Beanstalkd`].
#[derive(Debug, Clone)]
pub struct Builder {
    ip: IpAddr,
    port: Option<u16>,
    binlog: Option<Option<PathBuf>>,
    max_job_size: Option<u32>,
}

impl Builder {
    /// Listen on `ip` (default 127.0.0.1), e.g. a bridge address that test
    /// nodes in network namespaces reach.
    pub fn bind(mut self, ip: IpAddr) -> Builder {
        self.ip = ip;
        self
    }

    /// Listen on this port (default: a free one).
    pub fn port(mut self, port: u16) -> Builder {
        self.port = Some(port);
        self
    }

    /// Keep a binlog (`-b`) in a temp dir owned by the fixture, so jobs
    /// survive [`Beanstalkd::restart`].
    pub fn binlog(mut self) -> Builder {
        self.binlog = Some(None);
        self
    }

    /// Keep the binlog in `dir` (which must exist).
    pub fn binlog_in(mut self, dir: &Path) -> Builder {
        self.binlog = Some(Some(dir.to_owned()));
        self
    }

    /// The largest job body the server takes (`-z`; its default is 65,535).
    pub fn max_job_size(mut self, bytes: u32) -> Builder {
        self.max_job_size = Some(bytes);
        self
    }

    /// Starts it and waits until it accepts connections.
    pub fn start(self) -> io::Result<Beanstalkd> {
        let (binlog, binlog_tmp) = match self.binlog {
            None => (None, None),
            Some(Some(dir)) => (Some(dir), None),
            Some(None) => {
                let tmp = tempfile::Builder::new()
                    .prefix("ferry-bsd-binlog")
                    .tempdir()?;
                (Some(tmp.path().to_owned()), Some(tmp))
            }
        };
        let log = tempfile::NamedTempFile::with_prefix("ferry-bsd-log")?;
        let mut b = Beanstalkd {
            child: None,
            addr: SocketAddr::new(self.ip, self.port.unwrap_or(0)),
            binlog,
            max_job_size: self.max_job_size,
            log,
            _binlog_tmp: binlog_tmp,
        };
        // A free port may be taken between our probe and beanstalkd's bind.
        let tries = if self.port.is_some() { 1 } else { 5 };
        let mut last = None;
        for _ in 0..tries {
            if self.port.is_none() {
                b.addr.set_port(free_port(self.ip)?);
            }
            match b.spawn() {
                Ok(()) => return Ok(b),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("beanstalkd did not start")))
    }
}

/// A running beanstalkd.
#[derive(Debug)]
pub struct Beanstalkd {
    child: Option<Child>,
    addr: SocketAddr,
    binlog: Option<PathBuf>,
    max_job_size: Option<u32>,
    log: tempfile::NamedTempFile,
    _binlog_tmp: Option<tempfile::TempDir>,
}

impl Beanstalkd {
    /// Starts one on 127.0.0.1 at a free port, without binlog.
    pub fn start() -> io::Result<Beanstalkd> {
        Beanstalkd::builder().start()
    }

    /// Options for starting one.
    pub fn builder() -> Builder {
        Builder {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: None,
            binlog: None,
            max_job_size: None,
        }
    }

    /// Its listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its address as ferry's broker URI: `beanstalk://IP:PORT`.
    pub fn uri(&self) -> String {
        format!("beanstalk://{}", self.addr)
    }

    /// A bs_router `config.json` for an agent serving `cbsdenv` on `tube`
    /// of this server (replies on `<tube>_result_id<id>`, log in the
    /// workdir's `var/log/agent.log`); `extra` are more top-level keys,
    /// each followed by a comma (`"job_ttr": 2,`).
    pub fn agent_config(&self, cbsdenv: &Path, tube: &str, extra: &str) -> String {
        crate::agent_config("beanstalkd", &self.addr().to_string(), cbsdenv, tube, extra)
    }

    /// The binlog dir, if it keeps one.
    pub fn binlog_dir(&self) -> Option<&Path> {
        self.binlog.as_deref()
    }

    /// Its pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops it with SIGTERM and waits (SIGKILL after 5 s).
    pub fn stop(&mut self) -> io::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = kill(pid(&child), Signal::SIGTERM);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            sleep(Duration::from_millis(5));
        }
        child.kill()?;
        child.wait().map(drop)
    }

    /// Kills it with SIGKILL (a crash) and reaps it.
    pub fn kill(&mut self) -> io::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        child.kill()?;
        child.wait().map(drop)
    }

    /// Stops it (if running) and starts it again on the same address with
    /// the same binlog and options; returns once it accepts connections.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop()?;
        self.spawn()
    }

    fn spawn(&mut self) -> io::Result<()> {
        let bin = beanstalkd_bin();
        let mut cmd = Command::new(&bin);
        cmd.arg("-l")
            .arg(self.addr.ip().to_string())
            .arg("-p")
            .arg(self.addr.port().to_string());
        if let Some(dir) = &self.binlog {
            cmd.arg("-b").arg(dir);
        }
        if let Some(z) = self.max_job_size {
            cmd.arg("-z").arg(z.to_string());
        }
        let log = self.log.as_file().try_clone()?;
        log.set_len(0)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot run {}: {e} (install beanstalkd)", bin.display()),
                )
            })?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Waits until the port accepts a connection; on failure kills the
    /// server and says why, with its log.
    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + WAIT;
        let failure = loop {
            let Some(child) = self.child.as_mut() else {
                break "not running".to_owned();
            };
            if let Some(status) = child.try_wait()? {
                self.child = None;
                break format!("exited with {status}");
            }
            // Ours must hold the listening socket: with a port probed free,
            // another server may have won it, and would answer too.
            if listens(child.id(), self.addr.port()) && answers(self.addr) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.kill();
                break format!("did not accept connections within {WAIT:?}");
            }
            sleep(Duration::from_millis(5));
        };
        let mut text = String::new();
        let _ = File::open(self.log.path()).and_then(|mut f| f.read_to_string(&mut text));
        Err(io::Error::other(format!(
            "beanstalkd on {} {failure}: {}",
            self.addr,
            text.trim()
        )))
    }
}

impl Drop for Beanstalkd {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

fn pid(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX))
}

/// Whether process `pid` holds a listening TCP socket on `port`.
fn listens(pid: u32, port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let Some((_, p)) = f.get(1).and_then(|a| a.rsplit_once(':')) else {
                continue;
            };
            if f.get(3) == Some(&"0A") && u16::from_str_radix(p, 16) == Ok(port) {
                if let Some(inode) = f.get(9) {
                    inodes.push(format!("socket:[{inode}]"));
                }
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str()))
    })
}

/// Whether a beanstalkd answers at `addr` (not just anything listening).
fn answers(addr: SocketAddr) -> bool {
    let ask = || -> io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        s.write_all(b"use default\r\n")?;
        let mut reply = [0u8; 15];
        s.read_exact(&mut reply)?;
        Ok(&reply == b"USING default\r\n")
    };
    ask().unwrap_or(false)
}

/// A port nobody listens on right now.
fn free_port(ip: IpAddr) -> io::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    fn ask(addr: SocketAddr, cmd: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(cmd).expect("write");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("read");
        line
    }

    #[test]
    fn starts_stops_restarts_and_drop_reaps() {
        let mut b = Beanstalkd::start().expect("start");
        assert!(b.uri().starts_with("beanstalk://127.0.0.1:"));
        assert_eq!(ask(b.addr(), b"use t\r\n"), "USING t\r\n");
        let pid = b.pid().expect("running");
        b.restart().expect("restart");
        assert_ne!(b.pid(), Some(pid));
        assert_eq!(ask(b.addr(), b"use t\r\n"), "USING t\r\n");
        b.stop().expect("stop");
        assert!(TcpStream::connect(b.addr()).is_err());
        b.restart().expect("start again");
        let pid = b.pid().expect("running");
        drop(b);
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "reaped");
    }

    #[test]
    fn binlog_and_max_job_size_are_passed() {
        let mut b = Beanstalkd::builder()
            .binlog()
            .max_job_size(10)
            .start()
            .expect("start");
        let dir = b.binlog_dir().expect("binlog").to_owned();
        assert_eq!(
            ask(b.addr(), b"put 0 0 5 11\r\nhello world\r\n"),
            "JOB_TOO_BIG\r\n"
        );
        assert_eq!(ask(b.addr(), b"put 0 0 5 5\r\nhello\r\n"), "INSERTED 1\r\n");
        b.kill().expect("kill");
        b.restart().expect("restart");
        assert!(ask(b.addr(), b"peek 1\r\n").starts_with("FOUND 1 5"));
        drop(b);
        assert!(!dir.exists(), "the fixture's binlog dir is removed");
    }

    #[test]
    fn parallel_starts_get_their_own_servers() {
        let servers: Vec<Beanstalkd> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8).map(|_| s.spawn(Beanstalkd::start)).collect();
            hs.into_iter()
                .map(|h| h.join().expect("thread").expect("start"))
                .collect()
        });
        for b in &servers {
            assert!(listens(b.pid().expect("running"), b.addr().port()));
        }
        let mut ports: Vec<u16> = servers.iter().map(|b| b.addr().port()).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), servers.len());
    }

    #[test]
    fn a_taken_port_is_a_clear_error() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let e = Beanstalkd::builder()
            .port(port)
            .start()
            .expect_err("port taken");
        assert!(e.to_string().contains("beanstalkd on 127.0.0.1"), "{e}");
    }
}
