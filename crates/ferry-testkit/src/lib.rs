//! A throw-away ferry workdir driven through the real `ferry` binary, with
//! real runc, iproute2 and mounts underneath. Dropping it tears down all it
//! may have left (containers, network namespaces, bridges, mounts, files),
//! also when the test panicked.

pub mod beanstalkd;
pub mod broker;
pub mod failover;
pub mod gluster;
mod guest;
pub mod nats;
pub mod net;
pub mod trials;
pub mod view;

pub use guest::*;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use ferry_core::workdir::fnv1a;
use ferry_core::Workdir;
use serde_json::Value;

/// One test workdir.
#[derive(Debug)]
pub struct TestWorkdir {
    bin: PathBuf,
    dir: tempfile::TempDir,
    bridges: Mutex<Vec<String>>,
    /// The network namespace this node's commands run in, if any.
    netns: Option<String>,
}

/// Several nodes on one machine sharing their shared dirs.
#[derive(Debug)]
pub struct TestCluster {
    /// Dropped first: each node unmounts its view of the shared dirs.
    pub nodes: Vec<TestWorkdir>,
    /// Then the volume, which unmounts its FUSE mounts.
    gluster: Option<gluster::GlusterVolume>,
    /// Then the nodes' network namespaces.
    net: Option<net::TestNet>,
    shared: tempfile::TempDir,
    /// Whether the nodes' FUSE clients run in their namespaces.
    over_net: bool,
}

/// What a [`TestCluster`]'s shared dirs are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// One plain directory, bind-mounted into every node (the embedded default).
    Plain,
    /// One GlusterFS volume, FUSE-mounted once per node.
    GlusterFS,
    /// One GlusterFS volume served on the host's bridge address, each
    /// node's FUSE client in the node's network namespace: cutting a node's
    /// link cuts its storage too (needs `netns`).
    GlusterFSOverNet,
}

impl TestCluster {
    /// `n` nodes (`n1`, `n2` ...) on a plain shared directory.
    pub fn plain(bin: &str, n: usize) -> TestCluster {
        TestCluster::new(bin, n, Storage::Plain, false)
    }

    /// `n` nodes on one GlusterFS volume: each node FUSE-mounts the volume
    /// once and binds its four shared dirs from that mount.
    pub fn glusterfs(bin: &str, n: usize) -> TestCluster {
        TestCluster::new(bin, n, Storage::GlusterFS, false)
    }

    /// `n` nodes on `storage`; with `netns`, each node runs its commands in
    /// its own network namespace with its own address (see [`net::TestNet`];
    /// the storage mounts stay in the host's namespace).
    pub fn new(bin: &str, n: usize, storage: Storage, netns: bool) -> TestCluster {
        let net = netns.then(|| net::TestNet::new(n));
        let volume = match (storage, &net) {
            (Storage::Plain, _) => None,
            (Storage::GlusterFS, _) => {
                Some(gluster::GlusterVolume::create().expect("GlusterFS volume"))
            }
            (Storage::GlusterFSOverNet, Some(net)) => {
                Some(gluster::GlusterVolume::create_at(net.host_addr()).expect("GlusterFS volume"))
            }
            (Storage::GlusterFSOverNet, None) => panic!("GlusterFSOverNet needs netns"),
        };
        let shared = tempfile::Builder::new()
            .prefix("ferry-s")
            .tempdir_in("/tmp")
            .expect("shared dir");
        let nodes = (1..=n)
            .map(|i| {
                let ns = net.as_ref().map(|t| t.node(i - 1).ns.clone());
                let dir = match &volume {
                    Some(v) => {
                        let mnt = shared.path().join(format!("n{i}"));
                        fs::create_dir_all(&mnt).expect("mount point");
                        match (storage, &ns) {
                            (Storage::GlusterFSOverNet, Some(ns)) => v.mount_in_netns(ns, &mnt),
                            _ => v.mount(&mnt),
                        }
                        .expect("mount the volume");
                        mnt
                    }
                    None => shared.path().to_path_buf(),
                };
                TestWorkdir::node_in(bin, &format!("n{i}"), &dir, ns)
            })
            .collect();
        TestCluster {
            nodes,
            gluster: volume,
            net,
            shared,
            over_net: storage == Storage::GlusterFSOverNet,
        }
    }

    /// `n` nodes on `storage`, each in its own network namespace, and a
    /// broker of `transport` on the host's bridge address that every node
    /// uses (`initenv broker=`). `durable`: see [`broker::TestBroker::start_at`].
    pub fn with_broker(
        bin: &str,
        n: usize,
        storage: Storage,
        transport: broker::Transport,
        durable: bool,
    ) -> (TestCluster, broker::TestBroker) {
        let c = TestCluster::new(bin, n, storage, true);
        let b = broker::TestBroker::start_at(transport, c.host_ip(), durable).expect("broker");
        for node in &c.nodes {
            node.ok(&["initenv", &format!("broker={}", b.uri())]);
        }
        (c, b)
    }

    /// The host's address on the nodes' bridge (a cluster in namespaces).
    fn host_ip(&self) -> std::net::Ipv4Addr {
        self.net()
            .expect("namespaces")
            .host_addr()
            .parse()
            .expect("host address")
    }

    /// The nodes' network namespaces, if they have their own.
    pub fn net(&self) -> Option<&net::TestNet> {
        self.net.as_ref()
    }

    /// The volume of a GlusterFS cluster.
    pub fn volume(&self) -> Option<&gluster::GlusterVolume> {
        self.gluster.as_ref()
    }

    /// Cut node `i` (0-based) off its storage: `kill -9` of the FUSE client
    /// of its mount of the volume, so that every call there fails
    /// (ENOTCONN) until [`TestCluster::restore_storage`].
    pub fn cut_storage(&self, i: usize) {
        let mnt = self.shared.path().join(format!("n{}", i + 1));
        let needle = mnt.as_os_str().as_encoded_bytes().to_vec();
        let clients: Vec<i32> = fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                cmdline.starts_with(b"/usr/sbin/glusterfs")
                    && cmdline.split(|b| *b == 0).any(|w| w == needle.as_slice())
            })
            .collect();
        assert!(
            !clients.is_empty(),
            "no FUSE client serves {}",
            mnt.display()
        );
        for pid in clients {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Mount node `i`'s storage again after [`TestCluster::cut_storage`]:
    /// its shared dirs and the dead mount unmounted, the volume mounted
    /// anew (in the node's namespace if it had it there), the dirs bound.
    pub fn restore_storage(&self, i: usize) {
        let v = self.gluster.as_ref().expect("a GlusterFS cluster");
        let mnt = self.shared.path().join(format!("n{}", i + 1));
        let node = &self.nodes[i];
        for d in ferry_core::workdir::SHARED_DIRS {
            let _ = nix::mount::umount2(&node.root().join(d), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
        match node.netns() {
            Some(ns) if self.over_net => v.mount_in_netns(ns, &mnt),
            _ => v.mount(&mnt),
        }
        .expect("mount the volume again");
        for d in ferry_core::workdir::SHARED_DIRS {
            nix::mount::mount(
                Some(&mnt.join(d)),
                &node.root().join(d),
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .expect("bind mount");
        }
    }

    /// Where the shared dirs are: the plain shared directory, or the first
    /// node's mount of the volume.
    pub fn shared(&self) -> PathBuf {
        match self.gluster {
            Some(_) => self.shared.path().join("n1"),
            None => self.shared.path().to_path_buf(),
        }
    }
}

/// A running `ferry daemon`, killed on drop.
#[derive(Debug)]
pub struct Daemon(std::process::Child);

impl Daemon {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, and it must exit cleanly.
    #[track_caller]
    pub fn terminate(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let status = self.0.wait().expect("wait");
        assert!(
            status.success(),
            "the daemon did not stop cleanly: {status}"
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one `ferry` run gave.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl TestWorkdir {
    /// An initialized workdir (node `t1`), without bases.
    pub fn new(bin: &str) -> TestWorkdir {
        preflight();
        let dir = tempfile::Builder::new()
            .prefix("ferry-t")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let t = TestWorkdir {
            bin: PathBuf::from(bin),
            dir,
            bridges: Mutex::new(Vec::new()),
            netns: None,
        };
        t.ok(&["initenv", "nodename=t1"]);
        t
    }

    /// A node of a cluster: its own workdir whose four shared dirs are bind
    /// mounts of the dirs in `shared` (a plain shared directory, the
    /// embedded default), initialized as `nodename`, with a busybox base.
    pub fn node(bin: &str, nodename: &str, shared: &Path) -> TestWorkdir {
        TestWorkdir::node_in(bin, nodename, shared, None)
    }

    /// A node whose commands run in the network namespace `netns`.
    pub fn node_in(bin: &str, nodename: &str, shared: &Path, netns: Option<String>) -> TestWorkdir {
        preflight();
        let dir = tempfile::Builder::new()
            .prefix("ferry-n")
            .tempdir_in("/tmp")
            .expect("temp dir");
        for d in ferry_core::workdir::SHARED_DIRS {
            let (src, dst) = (shared.join(d), dir.path().join(d));
            fs::create_dir_all(&src).expect("shared dir");
            fs::create_dir_all(&dst).expect("mount point");
            nix::mount::mount(
                Some(&src),
                &dst,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .expect("bind mount");
        }
        let t = TestWorkdir {
            bin: PathBuf::from(bin),
            dir,
            bridges: Mutex::new(Vec::new()),
            netns,
        };
        t.ok(&["initenv", &format!("nodename={nodename}")]);
        t.ok(&["base", "mode=create", "name=busybox"]);
        t
    }

    /// An initialized workdir with a busybox base named `busybox`.
    pub fn with_base(bin: &str) -> TestWorkdir {
        let t = TestWorkdir::new(bin);
        t.ok(&["base", "mode=create", "name=busybox"]);
        t
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn workdir(&self) -> Workdir {
        Workdir::open(self.root()).expect("open workdir")
    }

    /// A bridge name unique to this workdir, removed on drop.
    pub fn bridge(&self) -> String {
        let name = format!(
            "ftb{:08x}",
            fnv1a(self.root().as_os_str().as_encoded_bytes()) as u32
        );
        self.bridges.lock().expect("lock").push(name.clone());
        name
    }

    /// Run `ferry --workdir <root> args...`.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_env(args, &[])
    }

    /// Run with extra environment variables (e.g. `FERRY_CRASH_AT`).
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let out = self
            .command(args)
            .envs(env.iter().copied())
            .output()
            .expect("run ferry");
        Run::from(out)
    }

    /// `ferry --workdir <root> args...` as a command to spawn, in this
    /// node's network namespace if it has one.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = self.bare_command(&["--workdir"]);
        c.arg(self.root()).args(args);
        c
    }

    /// `ferry args...` in this node's network namespace, without a
    /// workdir (`ferry agent` and `ferry client` take theirs from a config).
    pub fn bare_command(&self, args: &[&str]) -> Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        c.args(args).env_remove("workdir");
        c
    }

    /// Start `ferry daemon args...` for this node; it is killed on drop.
    pub fn daemon(&self, args: &[&str]) -> Daemon {
        let mut all = vec!["daemon"];
        all.extend_from_slice(args);
        // Its log (and its watchdog's) goes to var/log/daemon.log, kept
        // with the workdir for as long as the test runs.
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root().join("var/log/daemon.log"))
            .map(std::process::Stdio::from)
            .unwrap_or_else(|_| std::process::Stdio::null());
        // A process group of its own, with its parent in another: a test
        // that stops it (SIGSTOP) must not be undone by the kernel's
        // SIGCONT to stopped members of an orphaned group (a benchmark run
        // in the background is one).
        let child = self
            .command(&all)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start the daemon");
        Daemon(child)
    }

    /// The network namespace this node runs in, if it has its own.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// Run and require exit 0; returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(r.code, 0, "ferry {args:?} failed: {}{}", r.stdout, r.stderr);
        r.stdout
    }

    /// Run and require this exit code; returns stderr.
    #[track_caller]
    pub fn fails(&self, code: i32, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(r.code, code, "ferry {args:?}: {}{}", r.stdout, r.stderr);
        r.stderr
    }

    /// `bcreate` a small VM that boots the test guest (no NIC), with extra
    /// `key=value` arguments.
    #[track_caller]
    pub fn bcreate_guest(&self, jname: &str, extra: &[&str]) {
        let g = test_guest();
        let mut args: Vec<String> = vec![
            "bcreate".into(),
            format!("jname={jname}"),
            "vm_ram=128m".into(),
            "imgsize=16m".into(),
            format!("vm_kernel={}", g.join("vmlinuz").display()),
            format!("vm_initrd={}", g.join("initrd.img").display()),
            "vm_cmdline=console=ttyS0 panic=-1 quiet".into(),
            "vm_nic=none".into(),
        ];
        // A key in `extra` replaces the default one.
        let key = |a: &str| a.split('=').next().unwrap_or_default().to_owned();
        let given: Vec<String> = extra.iter().map(|e| key(e)).collect();
        args.retain(|a| !given.contains(&key(a)));
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(&refs);
    }

    /// Queue a task (`task mode=new ARGS...`); its id.
    #[track_caller]
    pub fn submit_task(&self, args: &[&str]) -> u64 {
        let mut all = vec!["task", "mode=new"];
        all.extend_from_slice(args);
        self.ok(&all)
            .trim()
            .parse()
            .expect("task mode=new prints the id")
    }

    /// `jls --json`, keyed by name.
    pub fn jls(&self) -> BTreeMap<String, Value> {
        let out = self.ok(&["jls", "--json"]);
        let v: Value = serde_json::from_str(&out).expect("jls --json is JSON");
        v.as_array()
            .expect("array")
            .iter()
            .map(|r| (r["jname"].as_str().expect("jname").to_owned(), r.clone()))
            .collect()
    }

    /// The live status `jls` shows for a jail.
    pub fn status(&self, jname: &str) -> String {
        self.jls()[jname]["status"]
            .as_str()
            .expect("status")
            .to_owned()
    }

    /// Every file under the workdir with its type, mode and content digest.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        snapshot(self.root())
    }

    /// Mount points at or below `path`, from this process's mountinfo.
    pub fn mounts_under(path: &Path) -> Vec<PathBuf> {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        info.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|m| PathBuf::from(m.replace("\\040", " ")))
            .filter(|m| m.starts_with(path))
            .collect()
    }

    /// Write an executable hook script (root-owned, mode 0755) into the test dir.
    pub fn hook(&self, name: &str, body: &str) -> PathBuf {
        let dir = self.root().join("hooks");
        fs::create_dir_all(&dir).expect("hooks dir");
        let p = dir.join(name);
        fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write hook");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod hook");
        p
    }
}

impl Drop for TestWorkdir {
    fn drop(&mut self) {
        let root = self.dir.path().to_path_buf();
        let runc_root = root.join("var/run/runc");
        if let Ok(out) = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["list", "-q"])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&runc_root)
                    .args(["delete", "-f", id])
                    .output();
            }
        }
        if let Ok(wd) = Workdir::open(&root) {
            let prefix = format!("ferry-{}-", wd.pool_tag());
            for e in fs::read_dir("/run/netns").into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) {
                    let _ = Command::new("ip").args(["netns", "del", &name]).output();
                }
            }
        }
        // QEMUs of this workdir: their pid files are under var/run.
        for e in fs::read_dir(root.join("var/run"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "pid") {
                if let Some(pid) = fs::read_to_string(&p)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                {
                    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    let needle = root.as_os_str().as_encoded_bytes();
                    if cmdline.windows(needle.len()).any(|w| w == needle) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
        let mut mounts = TestWorkdir::mounts_under(&root);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        for b in self.bridges.lock().map(|b| b.clone()).unwrap_or_default() {
            let _ = Command::new("ip").args(["link", "del", &b]).output();
        }
    }
}

/// A bs_router `config.json` for an agent serving `cbsdenv` on `tube` of
/// the broker `uri` (`broker`: `beanstalkd` or `nats`; replies on
/// `<tube>_result_id<id>`, log in the workdir's `var/log/agent.log`);
/// `extra` are more top-level keys, each followed by a comma.
pub fn agent_config(broker: &str, uri: &str, cbsdenv: &Path, tube: &str, extra: &str) -> String {
    format!(
        r#"{{"cbsdenv": "{}", "cbsdcolor": false, "broker": "{broker}",
        "logfile": "{}", {extra}
        "beanstalkd": {{"uri": "{uri}", "tube": "{tube}",
          "reply_tube_prefix": "{tube}_result_id", "reconnect_timeout": 10,
          "reserve_timeout": 1, "publish_timeout": 5, "logdir": "/tmp"}}}}"#,
        cbsdenv.display(),
        cbsdenv.join("var/log/agent.log").display(),
    )
}

/// Assert two snapshots are equal, printing only what differs.
#[track_caller]
pub fn assert_same(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    what: &str,
) {
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let diff: Vec<String> = keys
        .into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| format!("{k}: {:?} -> {:?}", before.get(k), after.get(k)))
        .collect();
    assert!(
        diff.is_empty(),
        "{what} changed the workdir:\n{}",
        diff.join("\n")
    );
}

/// Every file under `root` with its type, mode and content digest. An
/// SQLite `-shm` file is left out: it is the WAL's shared-memory index,
/// which every reader writes its read marks into, not stored state (the
/// database and its WAL are compared).
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            let Ok(md) = fs::symlink_metadata(&p) else {
                continue;
            };
            if rel.ends_with(".sqlite-shm") {
                continue;
            }
            let desc = if md.is_dir() {
                stack.push(p.clone());
                format!("dir {:o}", md.mode())
            } else if md.file_type().is_symlink() {
                format!(
                    "link {}",
                    fs::read_link(&p)
                        .map(|t| t.display().to_string())
                        .unwrap_or_default()
                )
            } else {
                let bytes = fs::read(&p).unwrap_or_default();
                format!(
                    "file {:o} {} {:016x}",
                    md.mode(),
                    bytes.len(),
                    fnv1a(&bytes)
                )
            };
            out.insert(rel, desc);
        }
    }
    out
}

/// Fail early and clearly when the machine lacks what the tests drive.
fn preflight() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "ferry's integration tests run as root"
    );
    for (tool, pkg) in [
        ("runc", "runc"),
        ("ip", "iproute2"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
    ] {
        let found = Command::new(tool).arg("--version").output().is_ok()
            || Command::new(tool).arg("-V").output().is_ok();
        assert!(found, "{tool} not found: apt-get install {pkg}");
    }
    assert!(
        ferry_core::base::find_busybox().is_ok(),
        "busybox not found: apt-get install busybox-static"
    );
}

/// Small helpers the benchmarks share.
pub mod bench {
    use std::time::{Duration, Instant};

    /// A count a benchmark reads from the environment (`FERRY_BENCH_ROUNDS`
    /// ...), else `default`.
    pub fn setting(var: &str, default: usize) -> usize {
        std::env::var(var)
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(default)
    }

    /// How long `f` took.
    pub fn timed(f: impl FnOnce()) -> Duration {
        let t = Instant::now();
        f();
        t.elapsed()
    }

    /// The median of some durations (the upper one of an even count).
    pub fn median(mut v: Vec<Duration>) -> Duration {
        v.sort();
        v[v.len() / 2]
    }

    /// The `p`th percentile of some durations (nearest rank).
    pub fn percentile(mut v: Vec<Duration>, p: usize) -> Duration {
        v.sort();
        let rank = (v.len() * p).div_ceil(100).max(1);
        v[rank.min(v.len()) - 1]
    }

    /// Milliseconds, for printing.
    pub fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }
}
