use super::*;
use std::fs::{self, File};
use std::os::fd::AsFd;
use std::process::{Child, Command, ExitStatus, Stdio};

use serde_json::json;

/// A QEMU process killed on drop, also when the test panicked.
struct Qemu {
    child: Child,
    log: PathBuf,
}

impl Qemu {
    /// A diskless SeaBIOS machine held at prelaunch (`-S`), and a QMP
    /// connection to it.
    fn start(dir: &Path, name: &str, extra: &[&str]) -> (Qemu, Qmp) {
        let sock = dir.join(format!("{name}.qmp"));
        let log = dir.join(format!("{name}.log"));
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-machine",
                "pc",
                "-nodefaults",
                "-no-user-config",
            ])
            .args(["-display", "none", "-S", "-m", "64", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("qemu-system-x86_64 is installed");
        let qemu = Qemu { child, log };
        match Qmp::connect_retry(&sock, Instant::now() + Duration::from_secs(30)) {
            Ok(qmp) => (qemu, qmp),
            Err(e) => panic!("{e}: {}", qemu.log()),
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "QEMU did not exit: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_migration(qmp: &mut Qmp) -> MigrationInfo {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = qmp.query_migrate().unwrap();
        if info.is_finished() || Instant::now() > deadline {
            return info;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn lifecycle_under_tcg() {
    let dir = tempfile::tempdir().unwrap();
    let (mut qemu, mut qmp) = Qemu::start(dir.path(), "vm", &[]);
    // The greeting names the version `--version` prints.
    let line = crate::qemu::version_of("qemu-system-x86_64").unwrap();
    let v = crate::integrity::parse_version_line(&line).unwrap();
    let got = qmp.version();
    assert_eq!(
        (got.major, got.minor, got.micro),
        (v.major, v.minor, v.micro),
        "{line}"
    );
    assert_eq!(got.package, v.package, "{line}");

    let st = qmp.query_status().unwrap();
    assert_eq!((st.running, st.status.as_str()), (false, "prelaunch"));
    qmp.cont().unwrap();
    assert_eq!(
        qmp.query_status().unwrap(),
        Status {
            running: true,
            status: "running".into()
        }
    );
    qmp.wait_event("RESUME", Duration::from_secs(5)).unwrap();
    qmp.stop().unwrap();
    assert_eq!(
        qmp.query_status().unwrap(),
        Status {
            running: false,
            status: "paused".into()
        }
    );
    qmp.wait_event("STOP", Duration::from_secs(5)).unwrap();
    qmp.cont().unwrap();
    qmp.system_powerdown().unwrap();

    match qmp.execute("no-such-command", None) {
        Err(QmpError::Command { class, .. }) => assert_eq!(class, "CommandNotFound"),
        other => panic!("expected CommandNotFound, got {other:?}"),
    }
    assert_eq!(qmp.query_migrate().unwrap().status, "none");

    qmp.quit().unwrap();
    assert!(
        qemu.wait_exit(Duration::from_secs(10)).success(),
        "{}",
        qemu.log()
    );
}

#[test]
fn checkpoint_to_a_file_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");

    let (mut src, mut qmp) = Qemu::start(dir.path(), "src", &[]);
    qmp.cont().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    qmp.stop().unwrap();
    qmp.set_migrate_capabilities(&[("events", true)]).unwrap();
    qmp.set_migrate_parameters(json!({"max-bandwidth": 1u64 << 30}))
        .unwrap();
    let out = File::create(&state).unwrap();
    qmp.getfd("ckpt", out.as_fd()).unwrap();
    drop(out);
    qmp.migrate("fd:ckpt").unwrap();
    let info = wait_migration(&mut qmp);
    assert_eq!(info.status, "completed", "{info:?}");
    assert!(
        info.total_time_ms.is_some() && info.transferred.is_some(),
        "{info:?}"
    );
    let done = qmp
        .wait_event_where("MIGRATION", Duration::from_secs(5), |d| {
            d["status"] == "completed"
        })
        .unwrap();
    assert_eq!(done["data"]["status"], "completed");
    let st = qmp.query_status().unwrap();
    assert_eq!((st.running, st.status.as_str()), (false, "postmigrate"));
    qmp.quit().unwrap();
    assert!(
        src.wait_exit(Duration::from_secs(10)).success(),
        "{}",
        src.log()
    );
    let size = fs::metadata(&state).unwrap().len();
    assert!(size > 0, "empty state file");

    let (mut dst, mut qmp) = Qemu::start(dir.path(), "dst", &["-incoming", "defer"]);
    assert_eq!(qmp.query_status().unwrap().status, "inmigrate");
    qmp.set_migrate_capabilities(&[("events", true)]).unwrap();
    let input = File::open(&state).unwrap();
    qmp.getfd("ckpt", input.as_fd()).unwrap();
    drop(input);
    qmp.migrate_incoming("fd:ckpt").unwrap();
    let end = qmp
        .wait_event_where("MIGRATION", Duration::from_secs(60), |d| {
            matches!(
                d["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            )
        })
        .unwrap();
    assert_eq!(end["data"]["status"], "completed", "{}", dst.log());
    assert_eq!(wait_migration(&mut qmp).status, "completed");
    let st = qmp.query_status().unwrap();
    assert_eq!((st.running, st.status.as_str()), (false, "paused"));
    qmp.cont().unwrap();
    assert!(qmp.query_status().unwrap().running);
    qmp.quit().unwrap();
    assert!(
        dst.wait_exit(Duration::from_secs(10)).success(),
        "{}",
        dst.log()
    );
}
