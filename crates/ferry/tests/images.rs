//! The node's image store (`ferry image`): images added from a file or
//! over http (a server of the test's on loopback), checked against their
//! SHA-256, listed and removed; a VM disk made as an overlay on the pool's
//! shared copy opens through a backing path relative to itself.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_testkit::{assert_same, TestWorkdir};

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

fn sha256(p: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(p)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sum")
        .to_owned()
}

/// A small qcow2 image with a known pattern at its start.
fn make_image(p: &Path) {
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(p)
        .arg("32m")
        .status()
        .expect("qemu-img");
    assert!(ok.success());
    let io = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5a 0 64k"])
        .arg(p)
        .output()
        .expect("qemu-io");
    assert!(io.status.success());
}

/// `python3 -m http.server` on 127.0.0.1 serving `dir`; killed on drop.
struct Http(Child, u16);

impl Http {
    fn serve(dir: &Path) -> Http {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 http.server");
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "http.server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Http(child, port)
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn images_are_added_from_a_file_or_a_url_checked_listed_and_removed() {
    let t = TestWorkdir::new(BIN);
    let src = tempfile::tempdir().expect("tempdir");
    let img = src.path().join("tiny.qcow2");
    make_image(&img);
    let sum = sha256(&img);
    let out = t.ok(&[
        "image",
        "mode=add",
        "name=tiny",
        &format!("path={}", img.display()),
        &format!("sha256={}", sum.to_uppercase()),
    ]);
    assert!(out.contains("image tiny added (qcow2, 32m disk"), "{out}");
    let listed = t.ok(&[
        "image",
        "header=0",
        "display=name,format,virtual_size,sha256",
    ]);
    assert_eq!(
        listed.split_whitespace().collect::<Vec<_>>(),
        ["tiny", "qcow2", "32m", &sum]
    );
    let stored = t.root().join("images/tiny.img");
    assert_eq!(sha256(&stored), sum);
    assert!(std::fs::metadata(&stored)
        .expect("stored")
        .permissions()
        .readonly());

    // Over http, from a server of the test's on loopback.
    let http = Http::serve(src.path());
    let url = format!("url=http://127.0.0.1:{}/tiny.qcow2", http.1);
    t.ok(&[
        "image",
        "mode=add",
        "name=fetched",
        &url,
        &format!("sha256={sum}"),
    ]);
    assert_eq!(sha256(&t.root().join("images/fetched.img")), sum);

    // Refused, nothing left: a wrong sum, a taken name, a 404, bad input,
    // an image with a backing file.
    let layered = src.path().join("layered.qcow2");
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&img)
        .arg(&layered)
        .status()
        .expect("qemu-img");
    assert!(ok.success());
    let before = t.snapshot();
    let path = format!("path={}", img.display());
    let wrong = format!("sha256={}", "0".repeat(64));
    let missing = format!("url=http://127.0.0.1:{}/nosuch.qcow2", http.1);
    let layered_arg = format!("path={}", layered.display());
    for (args, code, said) in [
        (
            &["image", "mode=add", "name=x1", &path, &wrong][..],
            6,
            "SHA-256",
        ),
        (&["image", "mode=add", "name=tiny", &path], 6, "exists"),
        (&["image", "mode=add", "name=x2", &missing], 1, "404"),
        (
            &["image", "mode=add", "name=x3", &path, "sha256=abc"],
            2,
            "hex",
        ),
        (
            &["image", "mode=add", "name=x4", "url=ftp://host/x"],
            2,
            "http",
        ),
        (&["image", "mode=add", "name=x5"], 2, "path="),
        (&["image", "mode=add", "name=../x", &path], 2, "name"),
        (
            &["image", "mode=add", "name=x6", &layered_arg],
            6,
            "backing file",
        ),
        (&["image", "mode=remove", "name=nosuch"], 2, "no such image"),
    ] {
        let e = t.fails(code, args);
        assert!(e.contains(said), "{args:?}: {e}");
    }
    assert_same(&before, &t.snapshot(), "refused image adds");
    t.ok(&["image", "mode=remove", "name=fetched"]);
    assert!(!t.root().join("images/fetched.img").exists());
    assert_eq!(t.ok(&["image", "header=0", "display=name"]).trim(), "tiny");
}

#[test]
fn a_disk_on_an_image_opens_through_the_pool_s_copy_by_a_relative_path() {
    let t = TestWorkdir::new(BIN);
    let src = tempfile::tempdir().expect("tempdir");
    let img = src.path().join("tiny.qcow2");
    make_image(&img);
    t.ok(&[
        "image",
        "mode=add",
        "name=tiny",
        &format!("path={}", img.display()),
    ]);
    let wd = t.workdir();
    let info =
        ferry_vm::image::get(&wd, &ferry_core::Jname::new("tiny").expect("name")).expect("image");
    let data = t.root().join("jails-data/v1-data");
    std::fs::create_dir_all(&data).expect("data dir");
    let disk = data.join("dsk1.vhd");
    let small = ferry_vm::image::overlay(&wd, &info, &disk, 16 << 20);
    assert!(
        small.is_err_and(|e| e.to_string().contains("smaller")),
        "a disk smaller than its image"
    );
    ferry_vm::image::overlay(&wd, &info, &disk, 64 << 20).expect("overlay");
    let shared = t
        .root()
        .join(format!("jails-data/images/{}.qcow2", info.sha256));
    assert_eq!(sha256(&shared), info.sha256);
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&disk)
        .output()
        .expect("qemu-img info");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        v["backing-filename"],
        format!("../images/{}.qcow2", info.sha256)
    );
    assert_eq!(v["virtual-size"], 64 << 20);
    // Moved elsewhere with its images dir (another node's mount point), the
    // disk still reads the image's data through its backing file.
    let other = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(other.path().join("v1-data")).expect("mkdir");
    std::fs::create_dir_all(other.path().join("images")).expect("mkdir");
    std::fs::copy(&disk, other.path().join("v1-data/dsk1.vhd")).expect("copy");
    std::fs::copy(
        &shared,
        other
            .path()
            .join("images")
            .join(shared.file_name().expect("name")),
    )
    .expect("copy");
    let read = Command::new("qemu-io")
        .args(["-r", "-f", "qcow2", "-c", "read -P 0x5a 0 64k"])
        .arg(other.path().join("v1-data/dsk1.vhd"))
        .output()
        .expect("qemu-io");
    let said = String::from_utf8_lossy(&read.stdout);
    assert!(
        read.status.success() && !said.contains("verification failed"),
        "{said}"
    );
}
