//! ferry's NoCloud seeds against real readers: blkid and isoinfo read the
//! image ferry writes, and a real Debian 12
//! cloud image (scripts/build-test-cloud-image), booted from its own disk
//! through the BIOS under QEMU in a network namespace of the test's (no
//! route out), takes its host name, address, user, key and root password
//! from it: SSH with the key logs in.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_testkit::net::{ssh_in, ssh_in_retry};
use ferry_vm::cloudinit::{Network, Seed, User};

/// `openssl passwd -6 -salt ferrytest boo`: root's password in the seed.
const ROOT_HASH: &str =
    "$6$ferrytest$I/bwQbQiA.7h3kMIzuWeGZbkyjLTZRXJ9Nfrl6.UyQLDQjrIW9TSk02SkVFCLVSgM.gJIUvo9yBSVkPn/RKV6.";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn seed(key: &str, mac: &str, addr: &str, gw: &str) -> Seed {
    Seed {
        instance_id: "cloud1-1".into(),
        hostname: "cloud1.my.domain".into(),
        users: vec![User {
            name: "debian".into(),
            ssh_keys: vec![key.trim().to_owned()],
            password_hash: None,
            sudo: true,
        }],
        root_password_hash: Some(ROOT_HASH.into()),
        network: Some(Network {
            mac: mac.into(),
            name: "eth0".into(),
            address: Some(addr.parse().expect("address")),
            gateway: Some(gw.parse::<Ipv4Addr>().expect("gateway")),
            nameservers: vec!["192.0.2.53".parse().expect("ns")],
            search: vec!["my.domain".into()],
        }),
    }
}

#[test]
fn the_kernel_mounts_ferry_s_seed_image_and_reads_its_files_by_their_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = seed(
        "ssh-ed25519 AAAA test",
        "52:54:00:aa:bb:cc",
        "10.9.9.9/24",
        "10.9.9.1",
    );
    let iso = dir.path().join("seed.iso");
    std::fs::write(&iso, s.image().expect("image")).expect("write");
    let id = run(Command::new("blkid").args(["-o", "export"]).arg(&iso));
    assert!(
        id.contains("LABEL=cidata") && id.contains("TYPE=iso9660"),
        "{id}"
    );
    // isoinfo reads the Joliet tree, as Linux does (this host's kernel may
    // have no iso9660 driver to mount it with).
    for (name, want) in s.files() {
        let got = run(Command::new("isoinfo")
            .args(["-J", "-i"])
            .arg(&iso)
            .args(["-x", &format!("/{name}")]));
        assert_eq!(got, want, "{name}");
    }
    let listing = run(Command::new("isoinfo").args(["-J", "-f", "-i"]).arg(&iso));
    assert_eq!(
        listing.lines().collect::<Vec<_>>(),
        ["/meta-data", "/network-config", "/user-data"]
    );
}

/// A network namespace of the test's own, with a bridge (the guest's
/// gateway address) and a tap on it, and no route out; removed on drop
/// with the QEMU running in it.
struct GuestNet {
    ns: String,
    pid_file: PathBuf,
}

impl GuestNet {
    fn new(gw_cidr: &str) -> GuestNet {
        let ns = format!("ftci{}", std::process::id() % 100_000);
        let ip = |args: &[&str]| run(Command::new("ip").args(["-n", &ns]).args(args));
        run(Command::new("ip").args(["netns", "add", &ns]));
        let g = GuestNet {
            ns: ns.clone(),
            pid_file: PathBuf::new(),
        };
        ip(&["link", "set", "lo", "up"]);
        ip(&["link", "add", "br0", "type", "bridge"]);
        ip(&["addr", "add", gw_cidr, "dev", "br0"]);
        ip(&["link", "set", "br0", "up"]);
        ip(&["tuntap", "add", "tap0", "mode", "tap"]);
        ip(&["link", "set", "tap0", "master", "br0", "up"]);
        g
    }

    fn exec(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]);
        c
    }
}

impl Drop for GuestNet {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// SSH as debian@`addr` from the guest's namespace, again for up to 60 s.
fn ssh(net: &GuestNet, key: &Path, addr: &str, cmd: &str) -> Option<String> {
    let target = format!("debian@{addr}");
    ssh_in_retry(&net.ns, key, &target, cmd, Duration::from_secs(60))
}

#[test]
fn a_debian_cloud_image_boots_from_its_disk_and_takes_ferry_s_seed() {
    let image = ferry_testkit::test_cloud_image();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("key");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key));
    let public = std::fs::read_to_string(dir.path().join("key.pub")).expect("key");
    let (addr, mac) = ("10.77.0.99", "52:54:00:0c:10:01");
    let mut net = GuestNet::new("10.77.0.1/24");
    let s = seed(&public, mac, &format!("{addr}/24"), "10.77.0.1");
    let iso = dir.path().join("seed.iso");
    std::fs::write(&iso, s.image().expect("image")).expect("write");
    let disk = dir.path().join("dsk1.vhd");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&image)
        .arg(&disk)
        .arg("4g"));
    net.pid_file = dir.path().join("qemu.pid");
    let console = dir.path().join("console.log");
    let arg = |prefix: &str, p: &Path| format!("{prefix}{}", p.display());
    let t0 = Instant::now();
    run(net.exec().args([
        "qemu-system-x86_64",
        "-machine",
        "q35",
        "-accel",
        "tcg",
        "-cpu",
        "qemu64",
        "-m",
        "512",
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        &arg("file:", &console),
        "-drive",
        &arg("if=none,id=dsk1,format=qcow2,file=", &disk),
        "-device",
        "virtio-blk-pci,drive=dsk1",
        "-drive",
        &arg("if=none,id=cidata,format=raw,readonly=on,file=", &iso),
        "-device",
        "virtio-blk-pci,drive=cidata",
        "-netdev",
        "tap,id=n0,ifname=tap0,script=no,downscript=no",
        "-device",
        &format!("virtio-net-pci,netdev=n0,mac={mac}"),
        "-daemonize",
        "-pidfile",
        &net.pid_file.display().to_string(),
    ]));
    // Under TCG the first boot (systemd, cloud-init, host keys) is slow.
    let limit = Duration::from_secs(300);
    let fqdn = loop {
        if let Some(out) = ssh_in(&net.ns, &key, &format!("debian@{addr}"), "hostname -f") {
            break out;
        }
        assert!(
            t0.elapsed() < limit,
            "no SSH on {addr} within {limit:?}; console ends: {}",
            std::fs::read_to_string(&console)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    eprintln!(
        "SSH answered {:.1} s after QEMU started (TCG)",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(fqdn.trim(), "cloud1.my.domain");
    let addrs = ssh(&net, &key, addr, "ip -4 -o addr show eth0").expect("ip addr");
    assert!(addrs.contains(&format!("{addr}/24")), "{addrs}");
    let shadow = ssh(&net, &key, addr, "sudo grep '^root:' /etc/shadow").expect("shadow");
    assert!(
        shadow.starts_with(&format!("root:{ROOT_HASH}:")),
        "{shadow}"
    );
    let route = ssh(&net, &key, addr, "ip -4 route show default").expect("route");
    assert!(route.contains("via 10.77.0.1"), "{route}");
}
