//! runc, driven with argument vectors (never a shell), one state root per
//! workdir so two workdirs on a node never see each other's containers.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::JailError;
use ferry_core::{Error, Jname, Result, Workdir};

#[derive(Debug)]
pub struct Runc {
    root: PathBuf,
}

impl Runc {
    pub fn new(wd: &Workdir) -> Runc {
        Runc {
            root: wd.runc_root(),
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("runc");
        c.arg("--root").arg(&self.root);
        c
    }

    /// `runc run -d`: the container's stdout and stderr (and runc's own
    /// messages) go to `console`, so nothing holds a pipe of ours open.
    pub fn run_detached(
        &self,
        id: &Jname,
        bundle: &Path,
        pid_file: &Path,
        console: &Path,
    ) -> Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(console)
            .map_err(Error::io("cannot open console log", console))?;
        let offset = log
            .seek(SeekFrom::End(0))
            .map_err(Error::io("cannot open console log", console))?;
        let err = log
            .try_clone()
            .map_err(Error::io("cannot open console log", console))?;
        let status = self
            .cmd()
            .args(["run", "-d", "--pid-file"])
            .arg(pid_file)
            .arg("--bundle")
            .arg(bundle)
            .arg(id.as_str())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .status()
            .map_err(Error::io(
                "cannot run runc (install the Debian package runc)",
                "runc",
            ))?;
        if status.success() {
            return Ok(());
        }
        let mut tail = String::new();
        if let Ok(mut f) = File::open(console) {
            let _ = f.seek(SeekFrom::Start(offset));
            let _ = f.take(4096).read_to_string(&mut tail);
        }
        Err(JailError::Runc {
            what: format!("run {id}"),
            status: status.to_string(),
            said: tail.trim().to_owned(),
        }
        .into())
    }

    /// Send a signal to the container's init (errors are returned, not logged).
    pub fn kill(&self, id: &Jname, signal: &str) -> Result<()> {
        self.quiet(&["kill", id.as_str(), signal])
    }

    /// Delete the container whatever its state; a container that does not
    /// exist is not an error.
    pub fn delete(&self, id: &Jname) -> Result<()> {
        if !self.root.join(id.as_str()).exists() {
            return Ok(());
        }
        self.quiet(&["delete", "--force", id.as_str()])
    }

    /// `runc exec` with the caller's stdio; returns the command's status.
    pub fn exec(&self, id: &Jname, argv: &[String], tty: bool) -> Result<i32> {
        let mut c = self.cmd();
        c.arg("exec");
        if tty {
            c.arg("--tty");
        }
        c.args([
            "--env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ]);
        c.arg("--").arg(id.as_str()).args(argv);
        let status = c.status().map_err(Error::io("cannot run runc", "runc"))?;
        use std::os::unix::process::ExitStatusExt;
        Ok(status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    }

    fn quiet(&self, args: &[&str]) -> Result<()> {
        let out = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(Error::io("cannot run runc", "runc"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(JailError::Runc {
            what: args.join(" "),
            status: out.status.to_string(),
            said: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }
        .into())
    }
}
