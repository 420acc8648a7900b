//! `jexport`/`jimport` and `bexport`/`bimport` (CBSD's words) on real runc
//! and QEMU: an env goes into one checksummed archive and comes back whole
//! (symlinks, dirs, holes), under its name or a new one; a damaged archive
//! is refused and leaves nothing; bad input is refused with nothing changed.

use std::os::unix::fs::MetadataExt;

use ferry_testkit::{assert_same, wait_counter, wait_guest_disks, TestWorkdir};

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

#[test]
fn a_jail_exported_and_imported_comes_back_whole_with_its_holes() {
    let t = TestWorkdir::with_base(BIN);
    t.ok(&["jcreate", "jname=e1", "host_hostname=e1.example.org"]);
    t.ok(&["jstart", "jname=e1"]);
    t.ok(&[
        "jexec",
        "jname=e1",
        "sh",
        "-c",
        "echo kept > /root/note; ln -s /etc/passwd /root/link; mkdir /root/dir; \
         dd if=/dev/zero of=/root/zeros bs=1M count=8 2>/dev/null",
    ]);
    // Running: refused, nothing written.
    let e = t.fails(4, &["jexport", "jname=e1"]);
    assert!(e.contains("stopped"), "{e}");
    t.ok(&["jstop", "jname=e1"]);
    let out = t.ok(&["jexport", "jname=e1"]);
    let img = t.root().join("export/e1.img");
    assert!(out.contains(&img.display().to_string()), "{out}");
    // The sidecar holds the archive's SHA-256 in sha256sum's format.
    let check = std::process::Command::new("sha256sum")
        .arg("-c")
        .arg("e1.img.sha256")
        .current_dir(t.root().join("export"))
        .output()
        .expect("sha256sum");
    assert!(check.status.success(), "{check:?}");

    let out = t.ok(&[
        "jimport",
        &format!("jname={}", img.display()),
        "new_jname=e2",
        "new_host_hostname=e2.example.org",
    ]);
    assert!(out.contains("e2 imported"), "{out}");
    t.ok(&["jstart", "jname=e2"]);
    let sh = |cmd: &str| {
        t.ok(&["jexec", "jname=e2", "sh", "-c", cmd])
            .trim()
            .to_owned()
    };
    assert_eq!(sh("cat /root/note"), "kept");
    assert_eq!(sh("readlink /root/link"), "/etc/passwd");
    assert_eq!(sh("test -d /root/dir && echo dir"), "dir");
    assert_eq!(sh("hostname"), "e2.example.org");
    let zeros = t.root().join("jails-data/e2-data/root/zeros");
    let m = std::fs::metadata(&zeros).expect("zeros");
    assert_eq!(m.len(), 8 << 20);
    assert!(
        m.blocks() * 512 < 1 << 20,
        "the holes were written: {} blocks",
        m.blocks()
    );
    t.ok(&["jstop", "jname=e2"]);
    // Under its own name, once the original is gone; by name from import/.
    t.ok(&["jremove", "jname=e1"]);
    std::fs::create_dir_all(t.root().join("import")).expect("import dir");
    std::fs::copy(&img, t.root().join("import/e1.img")).expect("copy");
    t.ok(&["jimport", "jname=e1"]);
    assert!(t.jls().contains_key("e1"));
}

#[test]
fn a_damaged_or_foreign_archive_is_refused_and_leaves_nothing() {
    let t = TestWorkdir::with_base(BIN);
    t.ok(&["jcreate", "jname=d1"]);
    t.ok(&["jstart", "jname=d1"]);
    t.ok(&[
        "jexec",
        "jname=d1",
        "sh",
        "-c",
        "seq 1 20000 > /root/numbers",
    ]);
    t.ok(&["jstop", "jname=d1"]);
    let dir = t.root().join("out");
    t.ok(&[
        "jexport",
        "jname=d1",
        &format!("dstdir={}", dir.display()),
        "compress=0",
    ]);
    let img = std::fs::read(dir.join("d1.img")).expect("archive");
    // One byte of /root/numbers changed: the tar stream still reads.
    let at = img
        .windows(6)
        .position(|w| w == b"\n1000\n")
        .expect("the numbers in the archive");
    let mut flipped = img.clone();
    flipped[at + 1] = b'7';
    let bad = dir.join("flipped.img");
    std::fs::write(&bad, &flipped).expect("write");
    let cut = dir.join("cut.img");
    std::fs::write(&cut, &img[..img.len() / 2]).expect("write");
    let junk = dir.join("junk.img");
    std::fs::write(&junk, b"not an archive at all").expect("write");
    let before = t.snapshot();
    for (file, code, said) in [
        (&bad, 1, "data/root/numbers does not match its checksum"),
        (&cut, 1, "damaged"),
        (&junk, 2, "not a ferry export"),
    ] {
        let e = t.fails(
            code,
            &[
                "jimport",
                &format!("jname={}", file.display()),
                "new_jname=d2",
            ],
        );
        assert!(e.contains(said), "{}: {e}", file.display());
        assert_same(&before, &t.snapshot(), "a refused import");
    }
}

#[test]
fn bad_exports_and_imports_are_refused_and_change_nothing() {
    let t = TestWorkdir::with_base(BIN);
    t.ok(&["jcreate", "jname=b1"]);
    t.bcreate_guest("v1", &[]);
    t.ok(&["jexport", "jname=b1"]);
    let img = t.root().join("export/b1.img");
    let img_arg = format!("jname={}", img.display());
    let before = t.snapshot();
    for (args, code, said) in [
        (&["jexport", "jname=b1"][..], 6, "exists"),
        (&["jexport", "jname=nosuch"], 3, "nosuch"),
        (&["jexport", "jname=v1"], 3, "v1"),
        (&["jexport", "jname=b1", "compress=30"], 2, "compress"),
        (
            &["jexport", "jname=b1", "dstdir=relative/dir"],
            2,
            "absolute",
        ),
        (&["jimport", &img_arg], 4, "b1"),
        (&["bimport", &img_arg, "new_jname=x1"], 2, "use jimport"),
        (&["jimport", &img_arg, "new_jname=../x"], 2, "new_jname"),
        (&["jimport", "jname=nosuch"], 2, "no archive"),
        (&["jimport", "jname=../../etc/passwd"], 2, "no archive"),
        (
            &["jimport", &img_arg, "new_jname=x2", "new_ip4_addr=1.2.3"],
            2,
            "new_ip4_addr",
        ),
    ] {
        let e = t.fails(code, args);
        assert!(e.contains(said), "{args:?}: {e}");
    }
    assert_same(&before, &t.snapshot(), "refused exports and imports");
}

#[test]
fn a_vm_exported_with_its_disks_and_snapshots_boots_when_imported() {
    let t = TestWorkdir::new(BIN);
    t.bcreate_guest("vm1", &["vm_vnc_port=5990"]);
    t.ok(&["bhyve-dsk", "mode=attach", "jname=vm1", "dsk_size=64m"]);
    t.ok(&["bsnapshot", "mode=create", "jname=vm1", "snapname=s1"]);
    t.ok(&["bexport", "jname=vm1"]);
    let img = format!("jname={}", t.root().join("export/vm1.img").display());
    // Its VNC port is vm1's: refused while vm1 is here, nothing made.
    let before = t.snapshot();
    let e = t.fails(6, &["bimport", &img, "new_jname=vm2"]);
    assert!(e.contains("5990"), "{e}");
    assert_same(&before, &t.snapshot(), "a refused bimport");
    t.ok(&["bremove", "jname=vm1"]);
    t.ok(&["bimport", &img, "new_jname=vm2"]);
    let snaps = t.ok(&["bsnapshot", "jname=vm2", "header=0", "display=snapname"]);
    assert_eq!(snaps.trim(), "s1");
    t.ok(&["bstart", "jname=vm2"]);
    wait_counter(&t, "vm2", "the imported VM never counted", |c| {
        !c.is_empty()
    });
    wait_guest_disks(&t, "vm2", "vda:32768 vdb:131072");
    t.ok(&["bstop", "jname=vm2"]);
}
