//! The hooks ferry ships in `share/hooks/`. The NFSv4 one cannot mount here
//! (these kernels have no NFS client): its argument and settings handling
//! and its idempotency are tested, the latter with a tmpfs already mounted
//! where it would mount (it must leave it alone, and unmount it on stop).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ferry_testkit::TestWorkdir;

fn hook(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../share/hooks")
        .join(name)
        .canonicalize()
        .expect("shipped hook")
}

struct Dirs {
    _t: tempfile::TempDir,
    data: PathBuf,
    fstab: PathBuf,
    rcconf: PathBuf,
    system: PathBuf,
    conf: PathBuf,
}

impl Drop for Dirs {
    fn drop(&mut self) {
        for m in [&self.data, &self.fstab, &self.rcconf] {
            let _ = nix::mount::umount2(m.as_path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn dirs(conf: &str) -> Dirs {
    let t = tempfile::tempdir().expect("temp dir");
    let d = |n: &str| {
        let p = t.path().join(n);
        fs::create_dir_all(&p).expect("dir");
        p
    };
    let (data, fstab, rcconf, system) = (d("data"), d("fstab"), d("rcconf"), d("system"));
    let conf_path = t.path().join("nfs.conf");
    fs::write(&conf_path, conf).expect("conf");
    Dirs {
        _t: t,
        data,
        fstab,
        rcconf,
        system,
        conf: conf_path,
    }
}

fn run(d: &Dirs, kind: &str, jname: &str, extra_env: &[(&str, &str)]) -> Output {
    Command::new(hook("nfs4"))
        .args(["-d"])
        .arg(&d.data)
        .arg("-f")
        .arg(&d.fstab)
        .args(["-j", jname, "-r"])
        .arg(&d.rcconf)
        .arg("-s")
        .arg(&d.system)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("FERRY_HOOK", kind)
        .env("FERRY_NFS_CONF", &d.conf)
        .envs(extra_env.iter().copied())
        .output()
        .expect("run the hook")
}

const GOOD: &str = "# CBSD-style settings\nserver=nfs1.example.org\nroot=/export/pool1\nmount_rcconf=1\nmount_fstab=1\noptions=rw,hard\ntimeout=5\n";

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn nfs4_hook_plans_every_mount_from_its_settings() {
    let d = dirs(GOOD);
    let o = run(&d, "mnt_start", "web1", &[("FERRY_DRY_RUN", "1")]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains(&format!(
            "would mount nfs1.example.org:/export/pool1/web1-data on {}",
            d.data.display()
        )),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "nfs1.example.org:/export/pool1/jails-rcconf on {}",
            d.rcconf.display()
        )),
        "{t}"
    );
    assert!(
        t.contains(&format!(
            "nfs1.example.org:/export/pool1/jails-fstab/web1 on {}",
            d.fstab.display()
        )),
        "{t}"
    );
}

#[test]
fn nfs4_hook_refuses_bad_arguments_and_hostile_settings() {
    let d = dirs(GOOD);
    for jname in ["../x", "a;reboot", "-rf", ""] {
        let o = run(&d, "mnt_start", jname, &[("FERRY_DRY_RUN", "1")]);
        assert_eq!(o.status.code(), Some(2), "{jname}: {}", text(&o));
    }
    for bad in [
        "server=$(reboot)\nroot=/x\n",
        "server=a\nroot=relative\n",
        "server=a\nroot=/x/../etc\n",
        "server=a\nroot=/x\noptions=rw;reboot\n",
        "server=a\nroot=/x\ncolour=red\n",
        "server=a\nroot=/x\ntimeout=soon\n",
        "server=a\nroot=/x\nmount_fstab=yes\n",
    ] {
        let d = dirs(bad);
        let o = run(&d, "mnt_start", "web1", &[("FERRY_DRY_RUN", "1")]);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", text(&o));
    }
    let o = Command::new(hook("nfs4")).arg("-x").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn nfs4_hook_is_idempotent_around_existing_mounts() {
    let d = dirs(GOOD);
    for m in [&d.data, &d.fstab, &d.rcconf] {
        nix::mount::mount(
            Some("tmpfs"),
            m.as_path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
    }
    // Everything is mounted already: nothing is mounted again (an NFS mount
    // would fail here, there is no NFS client).
    for _ in 0..2 {
        let o = run(&d, "mnt_start", "web1", &[]);
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(
            text(&o).matches("already mounted").count(),
            3,
            "{}",
            text(&o)
        );
    }
    for _ in 0..2 {
        let o = run(&d, "mnt_stop", "web1", &[]);
        assert!(o.status.success(), "{}", text(&o));
    }
    for m in [&d.data, &d.fstab, &d.rcconf] {
        assert!(
            !TestWorkdir::mounts_under(m).iter().any(|x| x == m),
            "{} still mounted",
            m.display()
        );
    }
}

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

#[test]
fn glusterfs_hook_mounts_a_jails_data_from_the_volume_while_it_runs() {
    let vol = ferry_testkit::gluster::GlusterVolume::create().expect("GlusterFS volume");
    let t = TestWorkdir::with_base(BIN);
    fs::create_dir_all(t.root().join("etc")).unwrap();
    fs::write(
        t.root().join("etc/glusterfs.conf"),
        format!(
            "server={}\nvolume={}\nroot=envs\n",
            vol.server(),
            vol.name()
        ),
    )
    .unwrap();
    let h = format!("{}", hook("glusterfs").display());
    t.ok(&[
        "jcreate",
        "jname=gh",
        &format!("mnt_start={h}"),
        &format!("mnt_stop={h}"),
    ]);
    let top = tempfile::tempdir().unwrap();
    vol.mount(top.path()).unwrap();
    let on_volume = top.path().join("envs/gh-data");
    assert!(
        on_volume.join("etc/hostname").is_file(),
        "jcreate did not write the jail's files to the volume"
    );
    let data = t.root().join("jails-data/gh-data");
    let mounted = || TestWorkdir::mounts_under(&data).iter().any(|m| m == &data);
    assert!(!mounted(), "still mounted after create");
    for round in 0..2 {
        t.ok(&["jstart", "jname=gh"]);
        assert!(mounted(), "round {round}: not mounted while running");
        t.ok(&[
            "jexec",
            "jname=gh",
            "sh",
            "-c",
            &format!("echo {round} > /root/round{round}"),
        ]);
        assert_eq!(
            fs::read_to_string(on_volume.join(format!("root/round{round}"))).unwrap(),
            format!("{round}\n")
        );
        t.ok(&["jstop", "jname=gh"]);
        assert!(!mounted(), "round {round}: still mounted after stop");
    }
    let log = fs::read_to_string(t.root().join("jails-system/gh/hook.log")).unwrap();
    assert!(
        log.contains(&format!("mounted {}", vol.spec(Some("envs/gh-data")))),
        "{log}"
    );
    t.ok(&["jremove", "jname=gh"]);
    assert!(!mounted());
    assert!(
        fs::read_dir(&on_volume)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true),
        "jremove left data on the volume"
    );
    vol.unmount(top.path()).unwrap();
}
