//! One archive of a stopped env (`jexport`/`bexport`), and an env made
//! from one (`jimport`/`bimport`), the same for every engine.
//!
//! The archive is a tar stream, zstd-compressed unless `compress=0`:
//!
//! - `ferry-export/header.json` first: format, kind, name, node, time, and
//!   the definition, so an import knows what it makes before it unpacks;
//! - `data/...`, `fstab/...`, `system/...`: the env's data dir, fstab dir
//!   and system dir (checkpoints, logs, hooks; not its lease, its pool id
//!   or markers, which belong to the pool it lives in);
//! - `ferry-export/manifest.json` last: the size and SHA-256 of the header
//!   and of every regular file.
//!
//! An import checks every file against the manifest as it writes it (and
//! a file the manifest does not name, or one it names and the archive
//! lacks, fails the import, which then leaves nothing). Beside the archive
//! `<name>.img.sha256` holds the SHA-256 of the archive itself, in
//! `sha256sum`'s format. Holes are kept on import (runs of zero blocks are
//! not written), so sparse disks stay sparse.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::atomic;
use crate::error::{Error, Result};
use crate::model::EnvKind;
use crate::name::Jname;
use crate::workdir::Workdir;

/// The format this ferry writes and reads.
pub const FORMAT: u32 = 1;
const HEADER: &str = "ferry-export/header.json";
const MANIFEST: &str = "ferry-export/manifest.json";
/// Files of the system dir that belong to the pool, not to the env.
const NOT_EXPORTED: &[&str] = &["owner", ".owner.lock", "pool.id", ".creating", ".renaming"];
/// zstd's frame magic number, little-endian.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// How often progress is told (bytes).
const PROGRESS_EVERY: u64 = 8 << 20;

/// What an archive says of itself, before its files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    pub format: u32,
    /// `jail` or `vm`.
    pub kind: String,
    pub jname: String,
    pub node: String,
    pub created: String,
    /// The definition file, as `rc.conf_<jname>` held it.
    pub definition: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FileSum {
    size: u64,
    sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct Manifest {
    files: BTreeMap<String, FileSum>,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub path: PathBuf,
    /// Size of the archive.
    pub bytes: u64,
    /// Bytes of the env's files in it.
    pub content: u64,
    pub files: usize,
    pub sha256: String,
}

/// Told bytes done and bytes in all.
pub type OnProgress<'a> = &'a dyn Fn(u64, u64);

/// The three trees of an env an archive holds, by their archive prefix.
fn trees(wd: &Workdir, j: &Jname) -> [(&'static str, PathBuf); 3] {
    [
        ("data", wd.data_dir(j)),
        ("fstab", wd.fstab_dir(j)),
        ("system", wd.system_dir(j)),
    ]
}

/// Every entry under `root` (not `root`), parents before children, in
/// name order; the system dir's pool files left out.
fn walk(root: &Path, prefix: &str, out: &mut Vec<(PathBuf, String, fs::Metadata)>) -> Result<()> {
    let mut entries: Vec<fs::DirEntry> = match fs::read_dir(root) {
        Ok(e) => e
            .collect::<io::Result<_>>()
            .map_err(Error::io("cannot list", root))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("cannot list", root)(e)),
    };
    entries.sort_by_key(fs::DirEntry::file_name);
    for e in entries {
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            return Err(Error::Refused(format!(
                "{} has a file name that is not UTF-8; ferry archives only UTF-8 names",
                e.path().display()
            )));
        };
        // The definition travels in the header, under its own name.
        if prefix == "system" && (NOT_EXPORTED.contains(&name) || name.starts_with("rc.conf_")) {
            continue;
        }
        let path = e.path();
        let meta = fs::symlink_metadata(&path).map_err(Error::io("cannot stat", &path))?;
        let rel = format!("{prefix}/{name}");
        let is_dir = meta.is_dir();
        out.push((path.clone(), rel.clone(), meta));
        if is_dir {
            walk(&path, &rel, out)?;
        }
    }
    Ok(())
}

/// A reader that hashes what it reads and tells progress.
struct Counting<'a, R> {
    inner: R,
    hash: Sha256,
    done: &'a mut u64,
    told: &'a mut u64,
    total: u64,
    progress: OnProgress<'a>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        *self.done += n as u64;
        if *self.done >= *self.told + PROGRESS_EVERY {
            *self.told = *self.done;
            (self.progress)(*self.done, self.total);
        }
        Ok(n)
    }
}

/// Write the archive of the stopped env `j` (of `kind`, with definition
/// text `definition`) to `dst`, compressed at zstd level `compress` (0:
/// none). `dst` must not exist; it appears whole or not at all.
pub fn export(
    wd: &Workdir,
    j: &Jname,
    kind: EnvKind,
    definition: String,
    dst: &Path,
    compress: i32,
    progress: OnProgress<'_>,
) -> Result<Exported> {
    if dst.exists() {
        return Err(Error::Refused(format!(
            "{} exists; remove it or export into another dstdir",
            dst.display()
        )));
    }
    let mut entries = Vec::new();
    for (prefix, root) in trees(wd, j) {
        walk(&root, prefix, &mut entries)?;
    }
    let total: u64 = entries
        .iter()
        .filter(|(_, _, m)| m.is_file())
        .map(|(_, _, m)| m.len())
        .sum();
    let header = Header {
        format: FORMAT,
        kind: kind.as_str().to_owned(),
        jname: j.to_string(),
        node: wd.nodename().to_owned(),
        created: crate::sys::utc_timestamp(std::time::SystemTime::now()),
        definition,
    };
    let partial = dst.with_extension("img.partial");
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(Error::io("cannot create", &partial))?;
    let io_err = |e: io::Error| Error::io("cannot write", &partial)(e);
    let written = (|| {
        let out = BufWriter::with_capacity(1 << 20, file);
        let (out, files) = if compress > 0 {
            let mut z = zstd::Encoder::new(out, compress).map_err(io_err)?;
            z.include_checksum(true).map_err(io_err)?;
            let (z, files) = write_tar(z, &header, &entries, total, progress)?;
            (z.finish().map_err(io_err)?, files)
        } else {
            write_tar(out, &header, &entries, total, progress)?
        };
        let file = out.into_inner().map_err(|e| io_err(e.into_error()))?;
        file.sync_all().map_err(io_err)?;
        Ok::<usize, Error>(files)
    })();
    let files = match written {
        Ok(n) => n,
        Err(e) => {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
    };
    // The archive's own sum, read back from storage (what the sidecar
    // promises is what is on disk).
    let sha256 = file_sha256(&partial)?;
    atomic::rename_durable(&partial, dst).map_err(Error::io("cannot write", dst))?;
    let name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let side = sidecar(dst);
    atomic::write_atomic(&side, format!("{sha256}  {name}\n").as_bytes(), 0o644)
        .map_err(Error::io("cannot write", &side))?;
    progress(total, total);
    Ok(Exported {
        path: dst.to_path_buf(),
        bytes: fs::metadata(dst).map(|m| m.len()).unwrap_or(0),
        content: total,
        files,
        sha256,
    })
}

/// `<archive>.sha256`.
pub fn sidecar(archive: &Path) -> PathBuf {
    let mut s = archive.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

fn file_sha256(p: &Path) -> Result<String> {
    let mut f = BufReader::new(File::open(p).map_err(Error::io("cannot open", p))?);
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).map_err(Error::io("cannot read", p))?;
    Ok(hex::encode(h.finalize()))
}

/// The whole tar stream into `out`; `out` back, and the number of regular
/// files.
fn write_tar<W: Write>(
    out: W,
    header: &Header,
    entries: &[(PathBuf, String, fs::Metadata)],
    total: u64,
    progress: OnProgress<'_>,
) -> Result<(W, usize)> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let files = append_all(&mut tar, header, entries, total, progress)?;
    let out = tar
        .into_inner()
        .map_err(Error::io("cannot write the archive", "tar"))?;
    Ok((out, files))
}

/// Append the header, every entry and the manifest; the number of regular
/// files.
fn append_all<W: Write>(
    tar: &mut tar::Builder<W>,
    header: &Header,
    entries: &[(PathBuf, String, fs::Metadata)],
    total: u64,
    progress: OnProgress<'_>,
) -> Result<usize> {
    let mut manifest = Manifest::default();
    let head = serde_json::to_vec_pretty(header).map_err(Error::encode("the archive header"))?;
    append_bytes(tar, HEADER, &head)?;
    manifest.files.insert(
        HEADER.to_owned(),
        FileSum {
            size: head.len() as u64,
            sha256: hex::encode(Sha256::digest(&head)),
        },
    );
    let (mut done, mut told) = (0u64, 0u64);
    for (path, rel, meta) in entries {
        let ft = meta.file_type();
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
        let failed = Error::io("cannot archive", path);
        if ft.is_file() {
            let file = File::open(path).map_err(Error::io("cannot open", path))?;
            let mut r = Counting {
                inner: BufReader::with_capacity(1 << 20, file),
                hash: Sha256::new(),
                done: &mut done,
                told: &mut told,
                total,
                progress,
            };
            tar.append_data(&mut h, rel, &mut r).map_err(failed)?;
            let sha256 = hex::encode(r.hash.finalize());
            manifest.files.insert(
                rel.clone(),
                FileSum {
                    size: meta.len(),
                    sha256,
                },
            );
        } else if ft.is_dir() || ft.is_symlink() || is_device(&ft) {
            if ft.is_symlink() {
                let target = fs::read_link(path).map_err(Error::io("cannot read link", path))?;
                tar.append_link(&mut h, rel, &target).map_err(failed)?;
            } else {
                h.set_size(0);
                tar.append_data(&mut h, rel, io::empty()).map_err(failed)?;
            }
        } else {
            tracing::debug!(path = %path.display(), "not archived (a socket or fifo)");
        }
    }
    let m = serde_json::to_vec_pretty(&manifest).map_err(Error::encode("the archive manifest"))?;
    append_bytes(tar, MANIFEST, &m)?;
    Ok(manifest.files.len() - 1)
}

fn is_device(ft: &fs::FileType) -> bool {
    use std::os::unix::fs::FileTypeExt;
    ft.is_char_device() || ft.is_block_device()
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, name, bytes)
        .map_err(Error::io("cannot write the archive entry", name))
}

/// The archive at `p` as a tar stream (decompressed when it is zstd).
fn open(p: &Path) -> Result<tar::Archive<Box<dyn Read>>> {
    let mut f = File::open(p).map_err(Error::io("cannot open", p))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(Error::io("cannot read", p))?;
    let f = File::open(p).map_err(Error::io("cannot open", p))?;
    let r: Box<dyn Read> = if n == 4 && magic == ZSTD_MAGIC {
        Box::new(zstd::Decoder::new(f).map_err(Error::io("cannot read", p))?)
    } else {
        Box::new(BufReader::new(f))
    };
    let mut a = tar::Archive::new(r);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_unpack_xattrs(false);
    a.set_overwrite(false);
    Ok(a)
}

fn not_ours(p: &Path, why: impl std::fmt::Display) -> Error {
    Error::bad_value(
        "jname",
        &p.to_string_lossy(),
        format!("not a ferry export: {why}"),
    )
}

/// The header of the archive at `p`: its first entry.
pub fn read_header(p: &Path) -> Result<Header> {
    let mut a = open(p)?;
    let mut entries = a.entries().map_err(|e| not_ours(p, e))?;
    let mut first = entries
        .next()
        .ok_or_else(|| not_ours(p, "it is empty"))?
        .map_err(|e| not_ours(p, e))?;
    let name = first.path().map_err(|e| not_ours(p, e))?.into_owned();
    if name != Path::new(HEADER) {
        return Err(not_ours(
            p,
            format!("its first entry is {}", name.display()),
        ));
    }
    let mut text = Vec::new();
    first
        .by_ref()
        .take(1 << 20)
        .read_to_end(&mut text)
        .map_err(|e| not_ours(p, e))?;
    let h: Header = serde_json::from_slice(&text).map_err(|e| not_ours(p, e))?;
    if h.format != FORMAT {
        return Err(Error::Refused(format!(
            "{} is an export of format {}; this ferry reads format {FORMAT}",
            p.display(),
            h.format
        )));
    }
    Ok(h)
}

/// Unpack the archive at `p` into the trees of the new env `j` (made by
/// the caller, which rolls back on failure), checking every file against
/// the manifest.
pub fn unpack(wd: &Workdir, p: &Path, j: &Jname, progress: OnProgress<'_>) -> Result<u64> {
    let bad = |why: String| Error::Failed(format!("{} is damaged: {why}", p.display()));
    let mut a = open(p)?;
    let roots: BTreeMap<&str, PathBuf> = trees(wd, j).into_iter().collect();
    for r in roots.values() {
        fs::create_dir_all(r).map_err(Error::io("cannot create", r))?;
    }
    let mut seen: BTreeMap<String, FileSum> = BTreeMap::new();
    let mut manifest: Option<Manifest> = None;
    let (mut done, mut told) = (0u64, 0u64);
    let total = fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    for entry in a.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let rel = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        let rel_s = rel.to_string_lossy().into_owned();
        if manifest.is_some() {
            return Err(bad(format!("{rel_s} comes after the manifest")));
        }
        if rel_s == HEADER || rel_s == MANIFEST {
            let mut text = Vec::new();
            entry
                .by_ref()
                .take(64 << 20)
                .read_to_end(&mut text)
                .map_err(|e| bad(e.to_string()))?;
            if rel_s == MANIFEST {
                manifest = Some(serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?);
            } else {
                seen.insert(rel_s, sum_of(&text));
            }
            continue;
        }
        // data/..., fstab/..., system/...: plain relative names only.
        let mut comps = rel.components();
        let (Some(Component::Normal(top)), rest) = (comps.next(), comps.as_path()) else {
            return Err(bad(format!("{rel_s} is not a relative path")));
        };
        if rest
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
            || rest.as_os_str().is_empty()
        {
            return Err(bad(format!("{rel_s} is not a plain relative path")));
        }
        let Some(root) = top.to_str().and_then(|t| roots.get(t)) else {
            return Err(bad(format!("{rel_s} is outside data/, fstab/ and system/")));
        };
        let kind = entry.header().entry_type();
        if kind.is_file() {
            let sum = write_file(
                &mut entry, root, rest, &mut done, &mut told, total, progress,
            )
            .map_err(|e| bad(format!("{rel_s}: {e}")))?;
            seen.insert(rel_s, sum);
        } else if kind.is_dir()
            || kind.is_symlink()
            || kind.is_character_special()
            || kind.is_block_special()
        {
            // The link itself is made, never followed; its dir must be ours.
            let dst = inside(root, rest).map_err(|e| bad(format!("{rel_s}: {e}")))?;
            entry
                .unpack(&dst)
                .map_err(|e| bad(format!("{rel_s}: {e}")))?;
        } else {
            return Err(bad(format!(
                "{rel_s} is a {kind:?}, which ferry never exports"
            )));
        }
    }
    let manifest = manifest.ok_or_else(|| bad("it has no manifest (cut short?)".into()))?;
    for (name, want) in &manifest.files {
        match seen.get(name) {
            None => return Err(bad(format!("{name} is missing"))),
            Some(got) if got.sha256 != want.sha256 || got.size != want.size => {
                return Err(bad(format!("{name} does not match its checksum")))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = seen.keys().find(|k| !manifest.files.contains_key(*k)) {
        return Err(bad(format!("{extra} is not in its manifest")));
    }
    progress(total, total);
    Ok(seen.len() as u64 - 1)
}

fn sum_of(bytes: &[u8]) -> FileSum {
    FileSum {
        size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
    }
}

/// Where `rel` lands under `root`, its dir made: refused when that dir
/// resolves outside `root` (through a symlink the archive made earlier).
fn inside(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    let dst = root.join(rel);
    let parent = dst.parent().unwrap_or(root);
    fs::create_dir_all(parent)?;
    let (real_parent, real_root) = (parent.canonicalize()?, root.canonicalize()?);
    if !real_parent.starts_with(&real_root) {
        return Err(io::Error::other("its dir leads outside the env's dir"));
    }
    Ok(dst)
}

/// Write one regular file of the archive under `root`, its holes kept:
/// the parent must resolve inside `root` (no symlink leads out), the file
/// itself is new (never followed through a link).
fn write_file(
    entry: &mut tar::Entry<'_, Box<dyn Read>>,
    root: &Path,
    rel: &Path,
    done: &mut u64,
    told: &mut u64,
    total: u64,
    progress: OnProgress<'_>,
) -> io::Result<FileSum> {
    let dst = inside(root, rel)?;
    let h = entry.header().clone();
    let mode = h.mode()? & 0o7777;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&dst)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = entry.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        size += n as u64;
        if buf[..n].iter().all(|b| *b == 0) {
            io::Seek::seek(&mut f, io::SeekFrom::Current(n as i64))?;
        } else {
            f.write_all(&buf[..n])?;
        }
        let before = *done / PROGRESS_EVERY;
        *done += n as u64;
        if *done / PROGRESS_EVERY != before && *done > *told {
            *told = *done;
            progress((*done).min(total), total);
        }
    }
    f.set_len(size)?;
    let (uid, gid) = (h.uid()?, h.gid()?);
    nix::unistd::fchown(
        &f,
        Some(nix::unistd::Uid::from_raw(uid as u32)),
        Some(nix::unistd::Gid::from_raw(gid as u32)),
    )
    .map_err(io::Error::from)?;
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    if let Ok(mtime) = h.mtime() {
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime))?;
    }
    Ok(FileSum {
        size,
        sha256: hex::encode(hash.finalize()),
    })
}
