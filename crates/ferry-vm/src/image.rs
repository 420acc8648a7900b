//! The node's image store (`ferry image`, CBSD's `fetch_iso` idea): disk
//! images VMs are made from, such as a distribution's cloud image.
//!
//! Images are local, as bases are: `$workdir/images/<name>.img` (read-only
//! once added) and `<name>.json` (its SHA-256, format, sizes, source).
//! An image is added from a local file or an http(s) URL, its SHA-256
//! computed as it is copied and checked against the one given; its format
//! is read once, at add time (the operator's own file), and recorded, never
//! probed again.
//!
//! A VM made from an image gets a qcow2 overlay as `dsk1` in its data dir
//! on shared storage; the overlay's backing file must open on every node
//! the VM may run on. So the image is copied once into the pool's shared
//! area `jails-data/images/<sha256>.<format>`, keyed by its checksum (two
//! names of one image share one copy; a new version of a name is another
//! file), and the overlay names it by a path relative to itself
//! (`../images/<sha256>.<format>`), which is the same on every node
//! whatever the workdir's path.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use ferry_core::{atomic, Error, Jname, Result, Workdir};

use crate::qemu;

/// Told bytes done and bytes in all (0 when unknown).
pub type OnProgress<'a> = &'a dyn Fn(u64, u64);

/// How often progress is told.
const PROGRESS_EVERY: u64 = 8 << 20;

/// One image of the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageInfo {
    pub name: String,
    pub sha256: String,
    /// `qcow2` or `raw`.
    pub format: String,
    /// The disk size a guest sees.
    pub virtual_size: u64,
    /// Bytes of the file.
    pub bytes: u64,
    /// The file or URL it was added from.
    pub source: String,
    pub added: String,
}

/// Where an image comes from.
#[derive(Debug, Clone)]
pub enum Source {
    Path(PathBuf),
    Url(String),
}

fn store(wd: &Workdir) -> PathBuf {
    wd.root().join("images")
}

fn file(wd: &Workdir, name: &Jname) -> PathBuf {
    store(wd).join(format!("{name}.img"))
}

fn meta(wd: &Workdir, name: &Jname) -> PathBuf {
    store(wd).join(format!("{name}.json"))
}

/// The pool's shared copy of an image, keyed by its checksum.
pub fn shared_path(wd: &Workdir, info: &ImageInfo) -> PathBuf {
    wd.root()
        .join("jails-data/images")
        .join(format!("{}.{}", info.sha256, info.format))
}

/// The images of this node, by name.
pub fn list(wd: &Workdir) -> Result<Vec<ImageInfo>> {
    let dir = store(wd);
    let mut out = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io("cannot list", &dir)(e)),
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            let text = fs::read(&p).map_err(Error::io("cannot read", &p))?;
            let info: ImageInfo =
                serde_json::from_slice(&text).map_err(|err| Error::BadDefinition {
                    path: p.clone(),
                    reason: err.to_string(),
                })?;
            out.push(info);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The image `name` of this node.
pub fn get(wd: &Workdir, name: &Jname) -> Result<ImageInfo> {
    let p = meta(wd, name);
    let text = match fs::read(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Error::bad_value(
            "image",
            name.as_str(),
            "no such image on this node (ferry image mode=list; add one with ferry image mode=add)",
        )),
        Err(e) => return Err(Error::io("cannot read", &p)(e)),
    };
    serde_json::from_slice(&text).map_err(|e| Error::BadDefinition {
        path: p,
        reason: e.to_string(),
    })
}

/// A SHA-256 as given: 64 hex digits (case ignored).
pub fn parse_sha256(v: &str) -> Result<String> {
    let v = v.trim().to_ascii_lowercase();
    if v.len() == 64 && v.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(v)
    } else {
        Err(Error::bad_value("sha256", &v, "not 64 hex digits"))
    }
}

/// Copy `r` into `w`, hashing and telling progress; the SHA-256 and bytes.
fn copy_hashed(
    r: &mut dyn Read,
    w: &mut dyn Write,
    total: u64,
    progress: OnProgress<'_>,
) -> io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let (mut done, mut told) = (0u64, 0u64);
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        done += n as u64;
        if done >= told + PROGRESS_EVERY {
            told = done;
            progress(done, total);
        }
    }
    Ok((hex::encode(h.finalize()), done))
}

/// `qemu-img info` of a new image, read once: format and virtual size.
#[derive(Debug, Deserialize)]
struct Probe {
    format: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    #[serde(rename = "backing-filename", default)]
    backing: Option<String>,
}

/// Add image `name` from `source`, checked against `sha256` when given.
/// Nothing is left of a failed add.
pub fn add(
    wd: &Workdir,
    name: &Jname,
    source: &Source,
    sha256: Option<&str>,
    progress: OnProgress<'_>,
) -> Result<ImageInfo> {
    let want = sha256.map(parse_sha256).transpose()?;
    if meta(wd, name).exists() {
        return Err(Error::Refused(format!(
            "an image named {name} exists on this node; remove it first"
        )));
    }
    let dir = store(wd);
    fs::create_dir_all(&dir).map_err(Error::io("cannot create", &dir))?;
    let partial = dir.join(format!(".{name}.partial"));
    let result = (|| {
        let mut out = File::create(&partial).map_err(Error::io("cannot create", &partial))?;
        let (shown, (got, bytes)) = match source {
            Source::Path(p) => {
                let f = File::open(p).map_err(Error::io("cannot open", p))?;
                let total = f.metadata().map(|m| m.len()).unwrap_or(0);
                let mut r = BufReader::new(f);
                let copied = copy_hashed(&mut r, &mut out, total, progress)
                    .map_err(Error::io("cannot copy", p))?;
                (p.display().to_string(), copied)
            }
            Source::Url(u) => {
                let resp = ureq::get(u)
                    .timeout(std::time::Duration::from_secs(3600))
                    .call()
                    .map_err(|e| Error::Failed(format!("cannot fetch {u}: {e}")))?;
                let total = resp
                    .header("Content-Length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut r = resp.into_reader();
                let copied = copy_hashed(&mut r, &mut out, total, progress)
                    .map_err(|e| Error::Failed(format!("cannot fetch {u}: {e}")))?;
                (u.clone(), copied)
            }
        };
        out.sync_all().map_err(Error::io("cannot sync", &partial))?;
        drop(out);
        if let Some(w) = &want {
            if *w != got {
                return Err(Error::Refused(format!(
                    "{shown} has SHA-256 {got}, not the {w} given: not added"
                )));
            }
        }
        let text = qemu::img_output(&[
            "info".as_ref(),
            "--output=json".as_ref(),
            partial.as_os_str(),
        ])?;
        let probe: Probe = serde_json::from_slice(&text)
            .map_err(|e| Error::Failed(format!("qemu-img info does not read: {e}")))?;
        if !matches!(probe.format.as_str(), "qcow2" | "raw") {
            return Err(Error::Refused(format!(
                "{shown} is a {} image; ferry takes qcow2 or raw (convert it with qemu-img convert)",
                probe.format
            )));
        }
        if let Some(b) = probe.backing {
            return Err(Error::Refused(format!(
                "{shown} has a backing file ({b}); an image must stand alone (qemu-img convert makes one)"
            )));
        }
        Ok(ImageInfo {
            name: name.to_string(),
            sha256: got,
            format: probe.format,
            virtual_size: probe.virtual_size,
            bytes,
            source: shown,
            added: ferry_core::sys::utc_timestamp(std::time::SystemTime::now()),
        })
    })();
    let info = match result {
        Ok(i) => i,
        Err(e) => {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
    };
    fs::set_permissions(&partial, fs::Permissions::from_mode(0o444))
        .map_err(Error::io("cannot set mode", &partial))?;
    let img = file(wd, name);
    atomic::rename_durable(&partial, &img).map_err(Error::io("cannot write", &img))?;
    let json = serde_json::to_vec_pretty(&info).map_err(Error::encode("the image record"))?;
    let m = meta(wd, name);
    atomic::write_atomic(&m, &json, 0o644).map_err(Error::io("cannot write", &m))?;
    progress(info.bytes, info.bytes);
    Ok(info)
}

/// Remove image `name` from this node's store. The pool's shared copy
/// stays: VMs on any node may stand on it.
pub fn remove(wd: &Workdir, name: &Jname) -> Result<ImageInfo> {
    let info = get(wd, name)?;
    let m = meta(wd, name);
    fs::remove_file(&m).map_err(Error::io("cannot remove", &m))?;
    let img = file(wd, name);
    match fs::remove_file(&img) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(Error::io("cannot remove", &img)(e))
        }
        _ => {}
    }
    Ok(info)
}

/// The pool's shared copy of `info`, made once (copied from this node's
/// store and checked against its SHA-256 before it appears).
pub fn shared_copy(wd: &Workdir, info: &ImageInfo) -> Result<PathBuf> {
    let dst = shared_path(wd, info);
    if dst.is_file() {
        return Ok(dst);
    }
    let dir = dst.parent().map(Path::to_path_buf).unwrap_or_default();
    fs::create_dir_all(&dir).map_err(Error::io("cannot create", &dir))?;
    let name =
        Jname::new(&info.name).map_err(|e| Error::bad_value("image", &info.name, e.to_string()))?;
    let src = file(wd, &name);
    let partial = dir.join(format!(".{}.{}.partial", info.sha256, wd.nodename()));
    let r = (|| {
        let mut f = BufReader::new(File::open(&src).map_err(Error::io("cannot open", &src))?);
        let mut out = File::create(&partial).map_err(Error::io("cannot create", &partial))?;
        let (got, _) = copy_hashed(&mut f, &mut out, info.bytes, &|_, _| {})
            .map_err(Error::io("cannot copy", &src))?;
        if got != info.sha256 {
            return Err(Error::Failed(format!(
                "{} no longer has its SHA-256 {} (it has {got}); remove and add it again",
                src.display(),
                info.sha256
            )));
        }
        out.sync_all().map_err(Error::io("cannot sync", &partial))?;
        fs::set_permissions(&partial, fs::Permissions::from_mode(0o444))
            .map_err(Error::io("cannot set mode", &partial))
    })();
    if let Err(e) = r {
        let _ = fs::remove_file(&partial);
        return Err(e);
    }
    // Two nodes copying at once both rename a whole, identical file.
    atomic::rename_durable(&partial, &dst).map_err(Error::io("cannot write", &dst))?;
    Ok(dst)
}

/// Make `disk` a qcow2 overlay of `size` bytes on the pool's copy of
/// `info` (at least the image's own size), its backing file named
/// relative to the disk.
pub fn overlay(wd: &Workdir, info: &ImageInfo, disk: &Path, size: u64) -> Result<()> {
    if size < info.virtual_size {
        return Err(Error::bad_value(
            "imgsize",
            &ferry_api::args::Size(size).render(),
            format!(
                "is smaller than image {} ({})",
                info.name,
                ferry_api::args::Size(info.virtual_size).render()
            ),
        ));
    }
    shared_copy(wd, info)?;
    let backing = format!("../images/{}.{}", info.sha256, info.format);
    qemu::img(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-F".as_ref(),
        info.format.as_str().as_ref(),
        "-b".as_ref(),
        backing.as_ref(),
        disk.as_os_str(),
        size.to_string().as_ref(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sha256_is_64_hex_digits() {
        let ok = "73CB51232c768e9907eb9549f55fae750600438c50dfe51f06a2afbb63609223";
        assert_eq!(parse_sha256(ok).expect("ok"), ok.to_ascii_lowercase());
        assert!(parse_sha256("abc").is_err());
        assert!(parse_sha256(&"g".repeat(64)).is_err());
    }
}
