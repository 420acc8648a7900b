use super::*;
use std::fs::OpenOptions;
use std::io::IoSliceMut;
use std::io::Write;
use std::os::fd::{AsFd, RawFd};
use std::os::unix::net::UnixListener;
use std::thread::{self, JoinHandle};

use nix::sys::socket::{recvmsg, ControlMessageOwned};
use serde_json::json;

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7 "}, "capabilities": ["oob"]}}"#;

/// The QEMU end of a fake QMP connection.
struct Peer {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Peer {
    fn new(stream: UnixStream) -> Peer {
        let reader = BufReader::new(stream.try_clone().unwrap());
        Peer { stream, reader }
    }

    fn line(&mut self, s: &str) {
        self.stream.write_all(format!("{s}\n").as_bytes()).unwrap();
    }

    fn recv(&mut self) -> Value {
        let mut l = String::new();
        self.reader.read_line(&mut l).unwrap();
        serde_json::from_str(&l).unwrap()
    }

    fn expect(&mut self, command: &str) -> Value {
        let req = self.recv();
        assert_eq!(req["execute"], command, "{req}");
        req
    }

    fn reply(&mut self, req: &Value, ret: Value) {
        self.line(&json!({"return": ret, "id": req["id"]}).to_string());
    }
}

/// A fake QEMU on a fresh socket: greets, accepts `qmp_capabilities`,
/// then runs `script`.
fn fake(
    script: impl FnOnce(Peer) + Send + 'static,
) -> (tempfile::TempDir, PathBuf, JoinHandle<()>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let peer = thread::spawn(move || {
        let mut peer = Peer::new(listener.accept().unwrap().0);
        peer.line(GREETING);
        let caps = peer.expect("qmp_capabilities");
        assert!(caps.get("arguments").is_none());
        peer.reply(&caps, json!({}));
        script(peer);
    });
    (dir, path, peer)
}

fn connect(path: &Path) -> Qmp {
    Qmp::connect(path, Duration::from_secs(5)).unwrap()
}

#[test]
fn handshake_reads_version_and_negotiates() {
    let (_dir, path, peer) = fake(|mut p| {
        let req = p.expect("query-status");
        p.reply(
            &req,
            json!({"status": "prelaunch", "singlestep": false, "running": false}),
        );
    });
    let mut qmp = connect(&path);
    assert_eq!(
        (
            qmp.version().major,
            qmp.version().minor,
            qmp.version().micro
        ),
        (7, 2, 22)
    );
    assert_eq!(qmp.version().package, "Debian 1:7.2+dfsg-7");
    let st = qmp.query_status().unwrap();
    assert_eq!(
        st,
        Status {
            running: false,
            status: "prelaunch".into()
        }
    );
    peer.join().unwrap();
}

#[test]
fn reply_is_matched_by_id_past_events_and_stale_replies() {
    let (_dir, path, peer) = fake(|mut p| {
        let req = p.expect("query-migrate");
        assert!(req["id"].is_u64());
        p.line(r#"{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}"#);
        p.line(r#"{"return": {"status": "failed"}, "id": 999999}"#);
        p.reply(
            &req,
            json!({"status": "active", "expected-downtime": 300, "total-time": 12,
            "ram": {"transferred": 10, "remaining": 20, "total": 30, "dirty-pages-rate": 4}}),
        );
    });
    let mut qmp = connect(&path);
    let info = qmp.query_migrate().unwrap();
    assert_eq!(
        info,
        MigrationInfo {
            status: "active".into(),
            total_time_ms: Some(12),
            expected_downtime_ms: Some(300),
            transferred: Some(10),
            remaining: Some(20),
            total: Some(30),
            dirty_pages_rate: Some(4),
            ..MigrationInfo::default()
        }
    );
    assert!(!info.is_finished());
    let events = qmp.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event"], "STOP");
    assert!(qmp.events().is_empty());
    peer.join().unwrap();
}

#[test]
fn query_migrate_before_any_migration_is_none() {
    assert_eq!(MigrationInfo::from_reply(&json!({})).status, "none");
    let failed = json!({"status": "failed", "error-desc": "disk full"});
    let info = MigrationInfo::from_reply(&failed);
    assert!(info.is_finished());
    assert_eq!(info.error_desc.as_deref(), Some("disk full"));
}

#[test]
fn error_reply_is_a_command_error() {
    let (_dir, path, peer) = fake(|mut p| {
        let req = p.expect("migrate");
        assert_eq!(req["arguments"], json!({"uri": "fd:nope"}));
        let err = json!({"error": {"class": "GenericError", "desc": "File descriptor named 'nope' has not been found"}, "id": req["id"]});
        p.line(&err.to_string());
    });
    let mut qmp = connect(&path);
    match qmp.migrate("fd:nope") {
        Err(QmpError::Command {
            command,
            class,
            desc,
        }) => {
            assert_eq!(command, "migrate");
            assert_eq!(class, "GenericError");
            assert!(desc.contains("'nope'"), "{desc}");
        }
        other => panic!("expected a command error, got {other:?}"),
    }
    peer.join().unwrap();
}

#[test]
fn malformed_json_is_a_protocol_error_and_the_connection_recovers() {
    let (_dir, path, peer) = fake(|mut p| {
        let stop = p.expect("stop");
        p.line(r#"{"return": {}, "id": [unterminated"#);
        let first = p.expect("query-status");
        p.line("[1, 2]");
        let second = p.expect("query-status");
        p.reply(&stop, json!({}));
        p.reply(&first, json!({"status": "running", "running": true}));
        p.reply(&second, json!({"status": "paused", "running": false}));
    });
    let mut qmp = connect(&path);
    let err = qmp.stop().unwrap_err();
    assert!(
        matches!(err, QmpError::Protocol(ref m) if m.contains("reply to stop")),
        "{err}"
    );
    let err = qmp.query_status().unwrap_err();
    assert!(
        matches!(err, QmpError::Protocol(ref m) if m.contains("JSON object")),
        "{err}"
    );
    // Late replies to the failed commands are skipped by id.
    assert_eq!(qmp.query_status().unwrap().status, "paused");
    peer.join().unwrap();
}

#[test]
fn messages_of_no_known_shape_are_protocol_errors() {
    for bad in [
        json!({"surprise": true}),
        json!({"error": "no class or desc", "id": 1}),
        json!("just a string"),
    ] {
        assert!(matches!(classify(bad), Err(QmpError::Protocol(_))));
    }
    assert!(matches!(
        classify(json!({"return": 1})),
        Ok(Message::Reply { id: None, .. })
    ));
}

#[test]
fn silent_peer_times_out_and_a_late_reply_is_skipped() {
    let (_dir, path, peer) = fake(|mut p| {
        let slow = p.expect("query-status");
        // Half a reply, then silence past the client's timeout: the
        // client must keep the half and finish it on its next read.
        p.stream
            .write_all(br#"{"return": {"status": "paused", "#)
            .unwrap();
        thread::sleep(Duration::from_millis(400));
        p.line(&format!(r#""running": false}}, "id": {}}}"#, slow["id"]));
        let next = p.expect("query-status");
        p.reply(&next, json!({"status": "running", "running": true}));
    });
    let mut qmp = connect(&path);
    qmp.set_timeout(Duration::from_millis(200));
    match qmp.query_status() {
        Err(QmpError::Timeout(what)) => assert_eq!(what, "the reply to query-status"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    qmp.set_timeout(Duration::from_secs(5));
    assert_eq!(qmp.query_status().unwrap().status, "running");
    peer.join().unwrap();
}

#[test]
fn peer_closing_is_closed() {
    let (_dir, path, peer) = fake(|mut p| {
        p.expect("cont");
    });
    let mut qmp = connect(&path);
    assert!(matches!(qmp.cont(), Err(QmpError::Closed)));
    peer.join().unwrap();
    assert!(matches!(qmp.stop(), Err(QmpError::Closed)));
}

#[test]
fn quit_accepts_eof_before_or_after_the_reply() {
    for reply_first in [false, true] {
        let (_dir, path, peer) = fake(move |mut p| {
            let req = p.expect("quit");
            if reply_first {
                p.reply(&req, json!({}));
            }
        });
        let mut qmp = connect(&path);
        qmp.quit().unwrap();
        peer.join().unwrap();
    }
}

#[test]
fn getfd_passes_the_descriptor() {
    let (_dir, path, peer) = fake(|mut p| {
        let mut buf = vec![0u8; 4096];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            p.stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        let n = msg.bytes;
        let fds: Vec<RawFd> = msg
            .cmsgs()
            .unwrap()
            .flat_map(|c| match c {
                ControlMessageOwned::ScmRights(fds) => fds,
                _ => Vec::new(),
            })
            .collect();
        let req: Value = serde_json::from_slice(&buf[..n]).unwrap();
        assert_eq!(req["execute"], "getfd");
        assert_eq!(req["arguments"], json!({"fdname": "ckpt"}));
        assert_eq!(fds.len(), 1);
        // Write into the pipe through the received descriptor.
        let mut f = OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", fds[0]))
            .unwrap();
        f.write_all(b"through the socket").unwrap();
        drop(f);
        nix::unistd::close(fds[0]).unwrap();
        p.reply(&req, json!({}));
    });
    let mut qmp = connect(&path);
    let (mut rx, tx) = std::io::pipe().unwrap();
    qmp.getfd("ckpt", tx.as_fd()).unwrap();
    drop(tx);
    let mut got = String::new();
    rx.read_to_string(&mut got).unwrap();
    assert_eq!(got, "through the socket");
    peer.join().unwrap();
}

#[test]
fn wait_event_takes_from_the_queue_then_the_socket() {
    let (_dir, path, peer) = fake(|mut p| {
        let req = p.expect("stop");
        p.line(r#"{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 0}}"#);
        p.line(r#"{"event": "MIGRATION", "data": {"status": "setup"}}"#);
        p.reply(&req, json!({}));
        p.line(r#"{"event": "MIGRATION", "data": {"status": "active"}}"#);
        p.line(r#"{"event": "MIGRATION", "data": {"status": "completed"}}"#);
        // Stay open so the last wait times out rather than closes.
        let _ = p.reader.read_line(&mut String::new());
    });
    let mut qmp = connect(&path);
    qmp.stop().unwrap();
    assert_eq!(
        qmp.wait_event("STOP", Duration::ZERO).unwrap()["event"],
        "STOP"
    );
    let done = qmp
        .wait_event_where("MIGRATION", Duration::from_secs(5), |d| {
            d["status"] == "completed"
        })
        .unwrap();
    assert_eq!(done["data"]["status"], "completed");
    let left: Vec<_> = qmp
        .events()
        .iter()
        .map(|e| e["data"]["status"].clone())
        .collect();
    assert_eq!(left, [json!("setup"), json!("active")]);
    match qmp.wait_event("RESUME", Duration::from_millis(100)) {
        Err(QmpError::Timeout(what)) => assert_eq!(what, "event RESUME"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    drop(qmp);
    peer.join().unwrap();
}

#[test]
fn long_lines_are_read_whole() {
    let big = "x".repeat(3 << 20);
    let sent = big.clone();
    let (_dir, path, peer) = fake(move |mut p| {
        let req = p.expect("query-qmp-schema");
        p.reply(&req, json!([{"name": sent}]));
    });
    let mut qmp = connect(&path);
    let v = qmp.execute("query-qmp-schema", None).unwrap();
    assert_eq!(v[0]["name"].as_str().map(str::len), Some(big.len()));
    peer.join().unwrap();
}

#[test]
fn missing_greeting_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let listener = UnixListener::bind(&path).unwrap();
    match Qmp::connect(&path, Duration::from_millis(200)) {
        Err(QmpError::Timeout(what)) => assert_eq!(what, "the QMP greeting"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    drop(listener);
}

#[test]
fn wrong_greeting_is_a_protocol_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let peer = thread::spawn(move || {
        let mut p = Peer::new(listener.accept().unwrap().0);
        p.line(r#"{"event": "RESUME"}"#);
    });
    let err = Qmp::connect(&path, Duration::from_secs(5)).unwrap_err();
    assert!(
        matches!(err, QmpError::Protocol(ref m) if m.contains("greeting")),
        "{err}"
    );
    peer.join().unwrap();
}

#[test]
fn connect_retry_waits_for_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let bind_path = path.clone();
    let peer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        let listener = UnixListener::bind(&bind_path).unwrap();
        let mut p = Peer::new(listener.accept().unwrap().0);
        p.line(GREETING);
        let caps = p.expect("qmp_capabilities");
        p.reply(&caps, json!({}));
    });
    Qmp::connect_retry(&path, Instant::now() + Duration::from_secs(10)).unwrap();
    peer.join().unwrap();

    let started = Instant::now();
    let missing = dir.path().join("missing.sock");
    let err = Qmp::connect_retry(&missing, started + Duration::from_millis(200)).unwrap_err();
    assert!(
        matches!(err, QmpError::Connect { ref path, .. } if *path == missing),
        "{err}"
    );
    assert!(started.elapsed() >= Duration::from_millis(150));
}
