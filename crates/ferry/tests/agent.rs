//! `ferry agent` and `ferry client` over a real broker, beanstalkd and a
//! NATS JetStream cluster: bs_router's sample jobs for jails and VMs, two
//! pools on one host, an agent killed mid-job, a broker crashed and
//! restarted, hostile and unsigned jobs.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_agent::job::{self, Reply};
use ferry_broker::{Broker, JobId, Reconnecting};
use ferry_testkit::beanstalkd::Beanstalkd;
use ferry_testkit::broker::{TestBroker, Transport};
use ferry_testkit::TestWorkdir;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

/// One pool: a workdir, its config file and (when started) its agent.
struct Pool {
    t: TestWorkdir,
    config: PathBuf,
    tube: String,
    agent: Option<Child>,
}

impl Pool {
    /// A workdir with a busybox base, served on tube `tube` of `b`; `extra`
    /// are more top-level config keys (`"job_ttr": 2, ...`).
    fn new(b: &TestBroker, tube: &str, extra: &str) -> Pool {
        let t = TestWorkdir::with_base(BIN);
        let config = t.root().join("agent.json");
        fs::write(&config, b.agent_config(t.root(), tube, extra)).expect("config");
        Pool {
            t,
            config,
            tube: tube.to_owned(),
            agent: None,
        }
    }

    fn start_agent(&mut self) {
        self.start_agent_env(&[]);
    }

    fn start_agent_env(&mut self, env: &[(&str, &str)]) {
        let child = Command::new(BIN)
            .args(["agent", "-config"])
            .arg(&self.config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the agent");
        self.agent = Some(child);
    }

    /// SIGKILL the agent and reap it.
    fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    /// Whether the agent still runs.
    fn agent_alive(&mut self) -> bool {
        self.agent
            .as_mut()
            .is_some_and(|a| matches!(a.try_wait(), Ok(None)))
    }

    /// `ferry client -config ... -json -body BODY` as a child.
    fn spawn_client(&self, body: &str, timeout: u64) -> ClientRun {
        let child = Command::new(BIN)
            .args(["client", "-config"])
            .arg(&self.config)
            .args(["-json", "-timeout", &timeout.to_string(), "-body", body])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the client");
        ClientRun(Some(child))
    }

    /// Send one job with `ferry client`; its exit code and every reply.
    fn client(&self, body: &str) -> (i32, Vec<Reply>) {
        self.spawn_client(body, 120).finish()
    }

    /// Send a job that must succeed; its final reply.
    #[track_caller]
    fn ok(&self, body: &str) -> Reply {
        let (code, replies) = self.client(body);
        let last = replies.last().cloned();
        assert_eq!(code, 0, "{body}: {replies:?}");
        last.expect("a final reply")
    }

    fn reply_tube(&self, id: JobId) -> String {
        format!("{}_result_id{id}", self.tube)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.kill_agent();
    }
}

/// A running `ferry client`, killed on drop.
struct ClientRun(Option<Child>);

impl ClientRun {
    fn finish(mut self) -> (i32, Vec<Reply>) {
        let out: Output = self
            .0
            .take()
            .expect("child")
            .wait_with_output()
            .expect("client");
        if !out.status.success() {
            // Shown with a failing test's output.
            eprintln!(
                "ferry client exited {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let replies = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| Reply::parse(l.as_bytes()).unwrap_or_else(|| panic!("not a reply: {l}")))
            .collect();
        (out.status.code().unwrap_or(-1), replies)
    }
}

impl Drop for ClientRun {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn broker(b: &TestBroker) -> Reconnecting {
    b.client()
}

/// How many jobs of `tube` are buried.
fn buried(c: &mut impl Broker, tube: &str) -> u64 {
    c.stats_tube(tube).map_or(0, |s| s.buried)
}

/// Put a raw body on `tube` with a TTR of 30 s; its id.
fn put_raw(c: &mut impl Broker, tube: &str, body: &[u8]) -> JobId {
    put_ttr(c, tube, body, Duration::from_secs(30))
}

fn put_ttr(c: &mut impl Broker, tube: &str, body: &[u8], ttr: Duration) -> JobId {
    c.use_tube(tube).expect("use");
    c.put(body, 1024, Duration::ZERO, ttr).expect("put")
}

/// The next job on `tube` within `limit`, deleted.
fn take(c: &mut impl Broker, tube: &str, limit: Duration) -> Option<Vec<u8>> {
    c.watch_own(tube).expect("watch");
    c.ignore("default").ok();
    let job = c.reserve(limit).expect("reserve");
    c.ignore(tube).ok();
    c.watch("default").ok();
    let job = job?;
    c.delete(job.id).expect("delete");
    Some(job.body)
}

/// The final reply to raw job `id`.
#[track_caller]
fn final_reply(c: &mut impl Broker, p: &Pool, id: JobId) -> Reply {
    let tube = p.reply_tube(id);
    loop {
        let body =
            take(c, &tube, Duration::from_secs(20)).unwrap_or_else(|| panic!("no reply on {tube}"));
        let r = Reply::parse(&body).expect("a reply");
        if r.progress == 100 {
            return r;
        }
    }
}

#[track_caller]
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

// Each over both brokers. Over beanstalkd only: pool2's Debian jail (about
// packages), the reply cut to max_job_size (about beanstalkd's -z) and the
// agent killed mid-job (it reads beanstalkd's per-job counters).
ferry_testkit::over_both_brokers!(
    bs_router_client_jail_jobs_round_trip,
    bs_router_client_vm_jobs_round_trip_with_progress_and_vnc,
    two_pools_on_one_host_route_to_their_own_workdirs,
    a_broker_crashed_and_restarted_loses_no_job,
    hostile_jobs_get_error_replies_and_change_nothing,
    with_a_key_only_signed_jobs_run_and_none_twice,
    the_client_times_out_or_fails_with_its_own_exit_codes,
);

fn bs_router_client_jail_jobs_round_trip(t: Transport) {
    let b = TestBroker::start(t, false).expect("broker");
    let mut p = Pool::new(&b, "cbsd_pool1", "");
    p.start_agent();
    // bs_router-client's bin.jail samples as they are. jcreate2.sh asks for
    // packages on the busybox base, which has no package manager: refused
    // with the reason, nothing created.
    let (code, r) = p.client(
        r#"{"Command":"jcreate","CommandArgs":{"jname":"jail2","jail_profile":"default",
        "host_hostname":"jail1.my.domain","astart":"1","pkglist":"misc/mc devel/git"}}"#,
    );
    assert_eq!(code, 6, "{r:?}");
    assert!(r[0].message.contains("package manager"), "{r:?}");
    assert!(p.t.jls().is_empty());
    // An unknown profile is refused by name.
    let (code, r) = p
        .client(r#"{"Command":"jcreate","CommandArgs":{"jname":"jail1","jail_profile":"nosuch"}}"#);
    assert_eq!(code, 2, "{r:?}");
    assert!(r[0].message.contains("nosuch"), "{r:?}");
    // jcreate.sh: CBSD's default profile.
    let r = p.ok(
        r#"{"Command":"jcreate","CommandArgs":{"jname":"jail1","jail_profile":"default",
        "host_hostname":"jail1.my.domain","astart":"1","runasap":"1"}}"#,
    );
    assert_eq!((r.progress, r.err_code), (100, 0));
    assert_eq!(p.t.status("jail1"), "running");
    // bin.jail/jls.sh as it is: CBSD's header=0 and display= columns.
    let r = p.ok(
        r#"{"Command":"jls","CommandArgs":{"header":"0","display":"jname,jid,ip4_addr,status"}}"#,
    );
    let jid = p.t.jls()["jail1"]["jid"]
        .as_i64()
        .expect("a running jail has a jid");
    assert_eq!(r.message, format!("jail1  {jid}  0  running"), "{r:?}");
    let r = p.ok(r#"{"Command":"jls","CommandArgs":{"display":"jname,status"}}"#);
    assert!(
        r.message.starts_with("JNAME  STATUS\njail1  running"),
        "{r:?}"
    );
    p.ok(r#"{"Command":"jstop","CommandArgs":{"jname":"jail1"}}"#);
    assert_eq!(p.t.status("jail1"), "stopped");
    p.ok(r#"{"Command":"jstart","CommandArgs":{"jname":"jail1"}}"#);
    assert_eq!(p.t.status("jail1"), "running");
    // Failures carry the command line's exit code.
    let (code, r) = p.client(r#"{"Command":"jstart","CommandArgs":{"jname":"jail1"}}"#);
    assert_eq!((code, r.last().map(|r| r.err_code)), (4, Some(4)), "{r:?}");
    p.ok(r#"{"Command":"jstop","CommandArgs":{"jname":"jail1"}}"#);
    p.ok(r#"{"Command":"jremove","CommandArgs":{"jname":"jail1"}}"#);
    assert!(p.t.jls().is_empty());
    let (code, _) = p.client(r#"{"Command":"jremove","CommandArgs":{"jname":"jail1"}}"#);
    assert_eq!(code, 3);
    assert!(p.agent_alive());
}

/// What an operator of pool2 has: a Debian base with apt as the default
/// profile's, and a local mirror (the tests reach no network).
fn debian_pool(b: &TestBroker, tube: &str) -> Pool {
    let (base, repo) = ferry_testkit::test_debian();
    let p = Pool::new(b, tube, "");
    p.t.ok(&["initenv", &format!("pkg_mirror={}", repo.display())]);
    p.t.ok(&[
        "base",
        "mode=create",
        "name=debian",
        "from=dir",
        &format!("path={}", base.display()),
    ]);
    let profiles = p.t.root().join("etc/profiles");
    fs::create_dir_all(&profiles).expect("profiles dir");
    fs::write(
        profiles.join("jail-default.conf"),
        "base=\"debian\"\nexec_start=\"/bin/sh -c 'trap exit TERM; while :; do sleep 1 & wait; done'\"\n",
    )
    .expect("profile");
    p
}

#[test]
fn bs_router_client_s_pool2_jobs_install_packages_into_a_debian_jail() {
    let b = TestBroker::start(Transport::Beanstalkd, false).expect("beanstalkd");
    let mut p = debian_pool(&b, "cbsd_pool2");
    p.start_agent();
    // bin.jail/jcreate2.sh, jls2.sh, jstart2.sh, jstop2.sh, jremove2.sh as
    // they are, in the order a user sends them.
    let r = p.ok(
        r#"{"Command":"jcreate","CommandArgs":{"jname":"jail2","jail_profile":"default",
        "host_hostname":"jail1.my.domain","astart":"1","pkglist":"misc/mc devel/git"}}"#,
    );
    assert_eq!((r.progress, r.err_code), (100, 0), "{r:?}");
    let r = p.ok(
        r#"{"Command":"jls","CommandArgs":{"header":"0","display":"jname,jid,ip4_addr,status"}}"#,
    );
    assert_eq!(
        r.message.split_whitespace().collect::<Vec<_>>(),
        ["jail2", "-", "0", "stopped"]
    );
    p.ok(r#"{"Command":"jstart","CommandArgs":{"jname":"jail2"}}"#);
    assert_eq!(p.t.status("jail2"), "running");
    // The packages are really there, from the pool's mirror.
    let git = p.t.ok(&["jexec", "jname=jail2", "git", "--version"]);
    assert!(git.starts_with("git version 2."), "{git}");
    let mc = p.t.ok(&[
        "jexec",
        "jname=jail2",
        "dpkg-query",
        "-W",
        "-f=${Status}",
        "mc",
    ]);
    assert_eq!(mc, "install ok installed");
    assert_eq!(
        p.t.ok(&["jexec", "jname=jail2", "hostname"]).trim(),
        "jail1.my.domain"
    );
    p.ok(r#"{"Command":"jstop","CommandArgs":{"jname":"jail2"}}"#);
    assert_eq!(p.t.status("jail2"), "stopped");
    p.ok(r#"{"Command":"jremove","CommandArgs":{"jname":"jail2"}}"#);
    assert!(p.t.jls().is_empty());
    // A package the mirror lacks: refused by apt, nothing left behind.
    let (code, r) = p.client(
        r#"{"Command":"jcreate","CommandArgs":{"jname":"jail3","pkglist":"no-such-package"}}"#,
    );
    assert_eq!(code, 1, "{r:?}");
    assert!(r[0].message.contains("apt-get install"), "{r:?}");
    assert!(p.t.jls().is_empty());
    assert!(!p.t.root().join("jails-data/jail3-data").exists());
    assert!(p.agent_alive());
}

fn bs_router_client_vm_jobs_round_trip_with_progress_and_vnc(t: Transport) {
    let b = TestBroker::start(t, false).expect("broker");
    let mut p = Pool::new(&b, "cbsd_vms", "");
    p.start_agent();
    let g = ferry_testkit::test_guest();
    let vnc = free_port();
    // bin.bhyve/bcreate.sh, in ferry's keys: the test guest instead of a
    // cloud image profile; numbers where bs_router sends numbers.
    let body = serde_json::json!({"Command": "bcreate", "CommandArgs": {
        "jname": "cent1", "vm_os_type": "linux", "astart": "1", "imgsize": "16m",
        "vm_cpus": 1, "vm_ram": "128m", "vm_vnc_port": vnc, "vm_nic": "none",
        "vm_kernel": g.join("vmlinuz"), "vm_initrd": g.join("initrd.img"),
        "vm_cmdline": "console=ttyS0 panic=-1 quiet"}})
    .to_string();
    let (code, replies) = p.client(&body);
    assert_eq!(code, 0, "{replies:?}");
    let (last, progress) = replies.split_last().expect("replies");
    assert_eq!(last.progress, 100);
    assert!(
        progress
            .iter()
            .any(|r| r.progress < 100 && r.message.contains("creating cent1")),
        "no progress reply: {replies:?}"
    );
    let r = p.ok(r#"{"Command":"bstart","CommandArgs":{"jname":"cent1"}}"#);
    assert_eq!(r.vnc, format!("127.0.0.1:{vnc}"));
    let r = p.ok(r#"{"Command":"bls","CommandArgs":{"display":"jname,status"}}"#);
    assert!(r.message.contains("running"), "{r:?}");
    // bin.bhyve/bls.sh as it is: CBSD's header=0 and display= columns.
    let r = p.ok(
        r#"{"Command":"bls","CommandArgs":{"header":"0","display":"jname,jid,ip4_addr,status"}}"#,
    );
    let fields: Vec<&str> = r.message.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "{r:?}");
    assert_eq!(
        (fields[0], fields[2], fields[3]),
        ("cent1", "0", "running"),
        "{r:?}"
    );
    assert!(
        fields[1].parse::<u32>().is_ok(),
        "the jid is QEMU's pid: {r:?}"
    );
    let r = p.ok(r#"{"Command":"bstop","CommandArgs":{"jname":"cent1"}}"#);
    assert_eq!(r.vnc, "");
    p.ok(r#"{"Command":"bremove","CommandArgs":{"jname":"cent1"}}"#);
    let r = p.ok(r#"{"Command":"bls"}"#);
    assert!(!r.message.contains("cent1"), "{r:?}");
}

#[test]
fn a_reply_longer_than_max_job_size_is_cut_not_lost() {
    let b = TestBroker::start(Transport::Beanstalkd, false).expect("beanstalkd");
    let mut p = Pool::new(&b, "cbsd_small", r#""max_job_size": 1024,"#);
    for i in 0..30 {
        p.t.ok(&["jcreate", &format!("jname=a-rather-long-jail-name-{i:02}")]);
    }
    p.start_agent();
    let r = p.ok(r#"{"Command":"jls"}"#);
    assert!(r.to_json().len() <= 1024);
    assert!(r.message.starts_with("JNAME"), "{r:?}");
    assert!(r.message.contains("(cut: the whole message is"), "{r:?}");
}

fn two_pools_on_one_host_route_to_their_own_workdirs(t: Transport) {
    let b = TestBroker::start(t, false).expect("broker");
    let mut p1 = Pool::new(&b, "cbsd_pool1", "");
    let mut p2 = Pool::new(&b, "cbsd_pool2", "");
    p1.start_agent();
    p2.start_agent();
    p1.ok(r#"{"Command":"jcreate","CommandArgs":{"jname":"in_pool1"}}"#);
    p2.ok(r#"{"Command":"jcreate","CommandArgs":{"jname":"in_pool2"}}"#);
    p2.ok(r#"{"Command":"jcreate","CommandArgs":{"jname":"also2"}}"#);
    let names = |p: &Pool| p.t.jls().into_keys().collect::<Vec<_>>();
    assert_eq!(names(&p1), ["in_pool1"]);
    assert_eq!(names(&p2), ["also2", "in_pool2"]);
    let r = p1.ok(r#"{"Command":"jls"}"#);
    assert!(r.message.contains("in_pool1") && !r.message.contains("in_pool2"));
}

/// A jail whose mnt_start hook counts its runs in `count` and then takes
/// `secs` seconds.
fn slow_jail(p: &Pool, jname: &str, count: &Path, secs: u32) {
    let hook = p.t.hook(
        &format!("slow-{jname}"),
        &format!(
            "[ \"$FERRY_PHASE\" = start ] && {{ echo run >> {}; sleep {secs}; }}\nexit 0",
            count.display()
        ),
    );
    p.ok(&format!(
        r#"{{"Command":"jcreate","CommandArgs":{{"jname":"{jname}","mnt_start":"{}"}}}}"#,
        hook.display()
    ));
}

fn runs(count: &Path) -> usize {
    fs::read_to_string(count).map_or(0, |s| s.lines().count())
}

#[test]
#[cfg_attr(
    not(feature = "crashpoints"),
    ignore = "needs the crash points: cargo test --features ferry/crashpoints"
)]
fn an_agent_killed_mid_job_does_not_run_the_job_twice() {
    let b = TestBroker::start(Transport::Beanstalkd, false).expect("beanstalkd");
    let mut p = Pool::new(&b, "cbsd_kill", r#""job_ttr": 2,"#);
    p.start_agent();
    let count = p.t.root().join("runs");
    slow_jail(&p, "slow1", &count, 3);

    // Killed while the hook runs: after the TTR the job comes back to a new
    // agent, which must not run it again and says so.
    let client = p.spawn_client(
        r#"{"Command":"jstart","CommandArgs":{"jname":"slow1"}}"#,
        60,
    );
    wait_for("the hook ran", Duration::from_secs(20), || {
        runs(&count) == 1
    });
    p.kill_agent();
    p.start_agent();
    let (code, replies) = client.finish();
    let last = replies.last().expect("a final reply");
    assert_eq!(code, 1, "{replies:?}");
    assert!(last.message.contains("not run again"), "{last:?}");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(runs(&count), 1, "the job ran twice");
    // The interrupted start left nothing in the way of a new one, which
    // outlives its 2 s TTR only because the agent touches it.
    let mut c = broker(&b);
    let id = put_ttr(
        &mut c,
        &p.tube,
        br#"{"Command":"jstart","CommandArgs":{"jname":"slow1"}}"#,
        Duration::from_secs(2),
    );
    let mut seen = 0;
    let put = Instant::now();
    while let Ok(st) = c.stats_job(id) {
        // Not reserved yet: the agent takes it within moments of the put.
        if st.reserves == 0 && put.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        assert_eq!((st.reserves, st.timeouts), (1, 0), "{st:?}");
        seen += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(seen > 10, "the job ended too soon to show anything");
    assert_eq!(final_reply(&mut c, &p, id).err_code, 0);
    assert_eq!((runs(&count), p.t.status("slow1").as_str()), (2, "running"));

    // Killed after its final reply was put, before the job was deleted:
    // the job comes back at once and is answered from the journal (the
    // same reply again), not run again (which would answer "not running").
    p.kill_agent();
    p.start_agent_env(&[("FERRY_CRASH_AT", "agent:2")]);
    let id = put_raw(
        &mut c,
        &p.tube,
        br#"{"Command":"jstop","CommandArgs":{"jname":"slow1"}}"#,
    );
    let first = final_reply(&mut c, &p, id);
    assert_eq!(first.err_code, 0, "{first:?}");
    wait_for("the agent crashed", Duration::from_secs(10), || {
        !p.agent_alive()
    });
    p.start_agent();
    let again = final_reply(&mut c, &p, id);
    assert_eq!(again, first);
    wait_for("the job deleted", Duration::from_secs(10), || {
        c.stats_job(id).is_err()
    });
    assert_eq!(p.t.status("slow1"), "stopped");
    assert_eq!(runs(&count), 2);
}

fn a_broker_crashed_and_restarted_loses_no_job(t: Transport) {
    let mut b = TestBroker::start(t, true).expect("broker");
    let mut p = Pool::new(&b, "cbsd_durable", "");
    // Jobs queued while no agent runs, then the broker crashes.
    let clients: Vec<ClientRun> = (0..3)
        .map(|i| {
            p.spawn_client(
                &format!(r#"{{"Command":"jcreate","CommandArgs":{{"jname":"d{i}"}}}}"#),
                60,
            )
        })
        .collect();
    let mut c = broker(&b);
    // Three clients at once on a fresh NATS cluster make its stream
    // together: one may wait for its second try.
    wait_for("three jobs queued", Duration::from_secs(40), || {
        c.stats_tube(&p.tube).is_ok_and(|s| s.ready == 3)
    });
    drop(c);
    b.kill().expect("kill the broker");
    b.start_again().expect("restart the broker");
    p.start_agent();
    for cl in clients {
        let (code, r) = cl.finish();
        assert_eq!(code, 0, "{r:?}");
    }
    assert_eq!(p.t.jls().len(), 3);

    // The broker crashes and restarts under a running agent: it
    // reconnects.
    b.kill().expect("kill the broker");
    b.start_again().expect("restart the broker");
    p.ok(r#"{"Command":"jcreate","CommandArgs":{"jname":"after"}}"#);
    assert_eq!(p.t.jls().len(), 4);
    assert!(p.agent_alive());
}

fn hostile_jobs_get_error_replies_and_change_nothing(t: Transport) {
    // A body far above the agent's max_job_size, within the server's
    // own limit (beanstalkd's -z here, NATS's max_payload of 1 MiB).
    let (b, big_size) = match t {
        Transport::Beanstalkd => (
            TestBroker::Beanstalkd(
                Beanstalkd::builder()
                    .max_job_size(16 << 20)
                    .start()
                    .expect("beanstalkd"),
            ),
            10 << 20,
        ),
        Transport::Nats => (TestBroker::start(t, false).expect("NATS"), 512 << 10),
    };
    let mut p = Pool::new(&b, "cbsd_hostile", "");
    p.start_agent();
    p.ok(r#"{"Command":"jls"}"#);
    let before = p.t.snapshot();
    let marker = p.t.root().join("pwned");
    let m = marker.display();
    let big = format!(
        r#"{{"Command":"jcreate","CommandArgs":{{"jname":"big","host_hostname":"{}"}}}}"#,
        "x".repeat(big_size)
    );
    let bodies: Vec<Vec<u8>> = [
        format!(r#"{{"Command":"jcreate","CommandArgs":{{"jname":"x$(touch {m})"}}}}"#),
        format!(r#"{{"Command":"jcreate","CommandArgs":{{"jname":"x;touch {m}"}}}}"#),
        format!(r#"{{"Command":"jcreate","CommandArgs":{{"jname":"`touch {m}`"}}}}"#),
        format!(r#"{{"Command":"jstart","CommandArgs":{{"jname":"* && touch {m}"}}}}"#),
        r#"{"Command":"jcreate","CommandArgs":{"jname":"../escape"}}"#.into(),
        r#"{"Command":"jcreate","CommandArgs":{"jname":"../../etc"}}"#.into(),
        r#"{"Command":"jremove","CommandArgs":{"jname":"../busybox"}}"#.into(),
        r#"{"Command":"jcreate","CommandArgs":{"jname":-1}}"#.into(),
        r#"{"Command":"jcreate","CommandArgs":{"jname":"n1","mnt_timeout":-5}}"#.into(),
        r#"{"Command":"jcreate","CommandArgs":{"jname":"n2","ip4_addr":10}}"#.into(),
        r#"{"Command":"jcreate","CommandArgs":{"jname":null}}"#.into(),
        r#"{"Command":42}"#.into(),
        r#"[{"Command":"jls"}]"#.into(),
        r#""jls""#.into(),
        "null".into(),
        r#"{"Command":"rm","CommandArgs":{"rf":"/"}}"#.into(),
        r#"{"Command":"daemon"}"#.into(),
        r#"{"Command":"jls","Extra":"x"}"#.into(),
        "not json at all".into(),
        big,
    ]
    .into_iter()
    .map(String::into_bytes)
    .chain([
        b"{\"Command\":\"jls\xff\"}".to_vec(),
        b"\xc3\x28\x00\x00".to_vec(),
        Vec::new(),
    ])
    .collect();
    let mut c = broker(&b);
    for (n, body) in bodies.iter().enumerate() {
        let id = put_raw(&mut c, &p.tube, body);
        let r = final_reply(&mut c, &p, id);
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        assert!(r.err_code == 2 || r.err_code == 6, "{shown}: {r:?}");
        assert!(!r.message.is_empty(), "{shown}");
        // The reply is put first, then the job is buried (the first bury
        // over a loaded NATS cluster may take seconds).
        wait_for(&format!("{shown} buried"), Duration::from_secs(20), || {
            buried(&mut c, &p.tube) == n as u64 + 1
        });
        assert!(p.agent_alive(), "the agent died on {shown}");
    }
    assert!(!marker.exists(), "a value reached a shell");
    let after = p.t.snapshot();
    let changed: Vec<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| *k != "var/log/agent.log" && before.get(*k) != after.get(*k))
        .collect();
    assert!(changed.is_empty(), "hostile jobs changed {changed:?}");
    let r = p.ok(r#"{"Command":"jls"}"#);
    assert_eq!(r.err_code, 0);
}

fn with_a_key_only_signed_jobs_run_and_none_twice(t: Transport) {
    let b = TestBroker::start(t, false).expect("broker");
    let mut p = Pool::new(&b, "cbsd_signed", r#""hmac_key_file": "agent.key","#);
    let key = b"a shared key of thirty-two bytes";
    let key_file = p.t.root().join("agent.key");
    fs::write(&key_file, key).expect("key");
    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).expect("chmod");
    p.start_agent();
    // ferry client signs with the config's key.
    p.ok(r#"{"Command":"jcreate","CommandArgs":{"jname":"signed1"}}"#);

    let mut c = broker(&b);
    let job = |name: &str| {
        serde_json::json!({"Command": "jcreate", "CommandArgs": {"jname": name}})
            .as_object()
            .cloned()
            .expect("object")
    };
    let signed = job::sign(job("replayed"), key, job::unix_now());
    let forged = job::sign(
        job("forged"),
        b"another key, also 32 bytes long!",
        job::unix_now(),
    );
    let stale = job::sign(job("stale"), key, job::unix_now() - 3600);
    let cases: Vec<(Vec<u8>, i32)> = vec![
        (signed.clone(), 0),
        (signed, 6),
        (
            br#"{"Command":"jcreate","CommandArgs":{"jname":"unsigned"}}"#.to_vec(),
            6,
        ),
        (forged, 6),
        (stale, 6),
    ];
    let mut refused = 0;
    for (body, code) in cases {
        let id = put_raw(&mut c, &p.tube, &body);
        let r = final_reply(&mut c, &p, id);
        assert_eq!(r.err_code, code, "{r:?}");
        if code != 0 {
            refused += 1;
            wait_for("the refused job buried", Duration::from_secs(20), || {
                buried(&mut c, &p.tube) == refused
            });
        }
    }
    let names: Vec<String> = p.t.jls().into_keys().collect();
    assert_eq!(names, ["replayed", "signed1"]);
}

fn the_client_times_out_or_fails_with_its_own_exit_codes(t: Transport) {
    let mut b = TestBroker::start(t, false).expect("broker");
    let p = Pool::new(&b, "cbsd_nobody", "");
    // Nobody serves the tube.
    let t0 = Instant::now();
    let (code, _) = p.spawn_client(r#"{"Command":"jls"}"#, 1).finish();
    assert_eq!(code, ferry_agent::exit::TIMED_OUT);
    assert!(t0.elapsed() < Duration::from_secs(10));
    // No broker at all.
    b.kill().expect("kill the broker");
    let (code, _) = p.spawn_client(r#"{"Command":"jls"}"#, 1).finish();
    assert_eq!(code, ferry_agent::exit::BROKER);
}
