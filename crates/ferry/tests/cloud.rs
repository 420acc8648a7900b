//! Cloud VMs as CBSD users make them through the broker: bs_router-client's
//! five bin.bhyve jobs (bcreate.sh, bstart.sh, bls.sh, bstop.sh,
//! bremove.sh) sent through `ferry client` to `ferry agent`, with the
//! Debian profile instead of CentOS and the test's key: a real Debian 12
//! cloud image (scripts/build-test-cloud-image) boots from its own disk,
//! cloud-init gives it the job's host name, address and key, SSH logs in
//! from the node's network namespace (the test's own; no route out), and
//! the VM keeps answering after a live move to another node.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_testkit::broker::Transport;
use ferry_testkit::net::{ssh_in, ssh_in_retry};
use ferry_testkit::view::node_alive;
use ferry_testkit::{assert_same, Daemon, Storage, TestCluster, TestWorkdir};

const BIN: &str = env!("CARGO_BIN_EXE_ferry");
const TUBE: &str = "cbsd_cloud";
/// The job's addresses (bin.bhyve/bcreate.sh): the bridge `ferry0` in each
/// node's namespace is the gateway.
const GUEST: &str = "172.16.0.99";
const GATEWAY: &str = "172.16.0.1";

fn ip(ns: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SSH into the guest from node `t`'s namespace as `user`, again for up
/// to 60 s.
fn ssh(t: &TestWorkdir, key: &Path, user: &str, cmd: &str) -> Option<String> {
    let target = format!("{user}@{GUEST}");
    ssh_in_retry(
        t.netns().expect("netns"),
        key,
        &target,
        cmd,
        Duration::from_secs(60),
    )
}

/// Wait until SSH answers; how long it took.
fn wait_ssh(t: &TestWorkdir, key: &Path, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if ssh_in(
            t.netns().expect("netns"),
            key,
            &format!("centos@{GUEST}"),
            "true",
        )
        .is_some()
        {
            return t0.elapsed();
        }
        let console = std::fs::read_to_string(t.root().join("jails-system/cent1/console.log"))
            .unwrap_or_default();
        assert!(
            t0.elapsed() < limit,
            "no SSH on {GUEST} within {limit:?}; the console ends:\n{}",
            console
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ferry client` with one job; its exit code and stdout.
fn client(config: &Path, body: &str) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["client", "-config"])
        .arg(config)
        .args(["-body", body])
        .output()
        .expect("ferry client");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn bs_router_client_s_bhyve_jobs_make_a_cloud_vm_that_answers_and_moves() {
    let image: PathBuf = ferry_testkit::test_cloud_image();
    let (c, b) = TestCluster::with_broker(BIN, 2, Storage::Plain, Transport::Beanstalkd, false);
    let daemons: Vec<Daemon> = c.nodes.iter().map(|n| n.daemon(&["heartbeat=1"])).collect();
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    n1.ok(&["node", "mode=add", "node=n2"]);
    n2.ok(&["node", "mode=add", "node=n1"]);
    for n in &c.nodes {
        // CBSD's default bridge, in the node's own namespace, as the
        // guest's gateway.
        let ns = n.netns().expect("netns");
        ip(ns, &["link", "add", "ferry0", "type", "bridge"]);
        ip(
            ns,
            &["addr", "add", &format!("{GATEWAY}/24"), "dev", "ferry0"],
        );
        ip(ns, &["link", "set", "ferry0", "up"]);
        n.ok(&[
            "image",
            "mode=add",
            "name=debian-12-genericcloud-amd64",
            &format!("path={}", image.display()),
        ]);
    }
    let t0 = Instant::now();
    while !(node_alive(n1, "n2") && node_alive(n2, "n1")) {
        assert!(t0.elapsed() < Duration::from_secs(15), "nodes not alive");
        std::thread::sleep(Duration::from_millis(200));
    }
    let config = n1.root().join("agent.json");
    std::fs::write(&config, b.agent_config(n1.root(), TUBE, "")).expect("config");
    let _agent = Agent(
        n1.bare_command(&["agent", "-config", &config.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("agent"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("key");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen");
    assert!(keygen.success());
    let public = std::fs::read_to_string(dir.path().join("key.pub")).expect("key");

    // bin.bhyve/bcreate.sh as it is, but for the Debian profile and the
    // test's key.
    let body = serde_json::json!({"Command": "bcreate", "CommandArgs": {
        "jname": "cent1", "vm_os_type": "linux", "vm_os_profile": "cloud-Debian-x86-12",
        "host_hostname": "cent1.my.domain", "astart": "1", "ci_gw4": GATEWAY,
        "ci_ip4_addr": GUEST, "ci_user_pw_root": "boo", "imgsize": "30g", "vm_cpus": "1",
        "vm_vnc_port": "30403", "ci_user_pubkey_centos": public.trim()}})
    .to_string();
    let (code, out) = client(&config, &body);
    assert_eq!(code, 0, "bcreate: {out}");
    assert!(
        !out.contains("boo"),
        "the password came back in a reply: {out}"
    );
    let def = std::fs::read_to_string(n1.root().join("jails-system/cent1/rc.conf_cent1"))
        .expect("definition");
    assert!(!def.contains("\"boo\""), "the password is stored in clear");
    // bstart.sh, then the guest answers with the job's name, address and key.
    let (code, out) = client(
        &config,
        r#"{"Command":"bstart","CommandArgs":{"jname":"cent1"}}"#,
    );
    assert_eq!(code, 0, "bstart: {out}");
    let boot = wait_ssh(n1, &key, Duration::from_secs(300));
    eprintln!("bstart to SSH answering: {:.1} s (TCG)", boot.as_secs_f64());
    assert_eq!(
        ssh(n1, &key, "centos", "hostname -f").as_deref(),
        Some("cent1.my.domain")
    );
    let root = ssh(n1, &key, "centos", "sudo grep ^root: /etc/shadow").expect("shadow");
    assert!(root.starts_with("root:$6$"), "{root}");
    // bin.bhyve/bls.sh as it is.
    let (code, out) = client(
        &config,
        r#"{"Command":"bls","CommandArgs":{"header":"0","display":"jname,jid,ip4_addr,status"}}"#,
    );
    assert_eq!(code, 0, "bls: {out}");
    assert!(out.contains(GUEST) && out.contains("running"), "{out}");

    // A live move: the guest keeps its address and answers on n2.
    let out = n1.ok(&["bmigrate", "jname=cent1", "node=n2"]);
    assert!(out.contains("live-migrated"), "{out}");
    assert_eq!(
        ssh(n2, &key, "centos", "hostname").as_deref(),
        Some("cent1")
    );
    let out = n2.ok(&["bmigrate", "jname=cent1", "node=n1"]);
    assert!(out.contains("live-migrated"), "{out}");
    assert_eq!(
        ssh(n1, &key, "centos", "hostname").as_deref(),
        Some("cent1")
    );

    // bstop.sh and bremove.sh as they are.
    let (code, out) = client(
        &config,
        r#"{"Command":"bstop","CommandArgs":{"jname":"cent1"}}"#,
    );
    assert_eq!(code, 0, "bstop: {out}");
    let (code, out) = client(
        &config,
        r#"{"Command":"bremove","CommandArgs":{"jname":"cent1"}}"#,
    );
    assert_eq!(code, 0, "bremove: {out}");
    assert!(!n1.root().join("jails-system/cent1").exists());
    drop(daemons);
}

#[test]
fn bad_cloud_input_is_refused_and_leaves_nothing_and_passwords_stay_hidden() {
    let t = TestWorkdir::new(BIN);
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("tiny.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg("32m")
        .status()
        .expect("qemu-img");
    assert!(made.success());
    let profile = "vm_os_profile=cloud-Debian-x86-12";
    let key = "ci_user_pubkey=ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGc a: b #{c}";
    // Without the profile's image on this node: refused with the command
    // that adds it.
    let e = t.fails(6, &["bcreate", "jname=c1", profile, key]);
    assert!(
        e.contains("ferry image mode=add name=debian-12-genericcloud-amd64"),
        "{e}"
    );
    t.ok(&[
        "image",
        "mode=add",
        "name=debian-12-genericcloud-amd64",
        &format!("path={}", img.display()),
    ]);
    let before = t.snapshot();
    for (args, code, said) in [
        (
            &["bcreate", "jname=c1", "vm_os_profile=cloud-Nosuch-1", key][..],
            2,
            "no such profile",
        ),
        (
            &["bcreate", "jname=c1", profile, key, "imgsize=1g"],
            2,
            "at least 4g",
        ),
        (
            &["bcreate", "jname=c1", profile, key, "ci_ip4_addr=10.1.2"],
            2,
            "ci_ip4_addr",
        ),
        (
            &["bcreate", "jname=c1", profile, key, "ci_gw4=gateway"],
            2,
            "ci_gw4",
        ),
        (
            &[
                "bcreate",
                "jname=c1",
                profile,
                key,
                "ci_nameserver_address=8.8.8",
            ],
            2,
            "ci_nameserver_address",
        ),
        (
            &[
                "bcreate",
                "jname=c1",
                profile,
                key,
                "ci_nameserver_search=a]b",
            ],
            2,
            "ci_nameserver_search",
        ),
        (
            &["bcreate", "jname=c1", profile, "ci_user_pubkey=not a key"],
            2,
            "SSH public key",
        ),
        (
            &[
                "bcreate",
                "jname=c1",
                profile,
                "ci_user_pubkey=ssh-rsa AAA\n- evil: 1",
            ],
            2,
            "SSH public key",
        ),
        (
            &[
                "bcreate",
                "jname=c1",
                profile,
                key,
                "host_hostname=a\n- evil: 1",
            ],
            2,
            "host name",
        ),
        (
            &["bcreate", "jname=c1", profile, key, "ci_user_add=Root!"],
            2,
            "ci_user_add",
        ),
        (
            &[
                "bcreate",
                "jname=c1",
                profile,
                "ci_user_pubkey_Admin=ssh-ed25519 AAAA",
            ],
            2,
            "user name",
        ),
        (
            &["bcreate", "jname=c1", profile, key, "ci_user_pw_root=a\nb"],
            2,
            "ci_user_pw_root",
        ),
        (
            &["bcreate", "jname=c1", profile, key, "ci_colour=red"],
            2,
            "ci_colour",
        ),
    ] {
        let e = t.fails(code, args);
        assert!(e.contains(said), "{args:?}: {e}");
    }
    assert_same(&before, &t.snapshot(), "refused cloud bcreates");
    // Made: the password kept as a hash, which bget does not print; the
    // key's YAML-like comment kept as it is.
    t.ok(&[
        "bcreate",
        "jname=c1",
        profile,
        key,
        "ci_user_pw_root=s3cret: #x",
        "vm_nic=none",
    ]);
    let def = std::fs::read_to_string(t.root().join("jails-system/c1/rc.conf_c1")).expect("def");
    assert!(
        !def.contains("s3cret") && def.contains("ci_user_pw_root=\"\\$6\\$"),
        "{def}"
    );
    let got = t.ok(&["bget", "jname=c1", "ci_user_pw_root", "ci_user_pubkey"]);
    assert!(got.contains("ci_user_pw_root: (set, hidden)"), "{got}");
    assert!(got.contains("a: b #{c}"), "{got}");
    assert!(!got.contains("$6$"), "{got}");
    // Changed with bset, checked the same way, the password hashed again:
    // the seed says the new values at the next start.
    let before = t.snapshot();
    let e = t.fails(2, &["bset", "jname=c1", "ci_ip4_addr=10.1"]);
    assert!(e.contains("ci_ip4_addr"), "{e}");
    assert_same(&before, &t.snapshot(), "a refused bset");
    t.ok(&[
        "bset",
        "jname=c1",
        "ci_user_pw_root=n3w",
        "ci_ip4_addr=10.9.0.5/16",
    ]);
    let after = std::fs::read_to_string(t.root().join("jails-system/c1/rc.conf_c1")).expect("def");
    assert!(
        !after.contains("n3w") && after.contains("ci_ip4_addr=\"10.9.0.5/16\""),
        "{after}"
    );
    assert_ne!(
        after.lines().find(|l| l.starts_with("ci_user_pw_root")),
        def.lines().find(|l| l.starts_with("ci_user_pw_root")),
        "the new password's hash"
    );
}
