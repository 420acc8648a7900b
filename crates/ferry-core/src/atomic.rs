//! Crash-safe file replacement: temp file in the same directory, fsync,
//! rename over the target, fsync the directory.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// A temp file beside `path` holding `contents` with `mode`, flushed to
/// disk when `durable`.
fn staged(
    path: &Path,
    contents: &[u8],
    mode: u32,
    durable: bool,
) -> io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    let mut tmp = tempfile::Builder::new()
        .prefix(".ferry-tmp.")
        .tempfile_in(parent_dir(path)?)?;
    tmp.write_all(contents)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    if durable {
        tmp.as_file().sync_all()?;
    }
    Ok(tmp)
}

/// Atomically and durably replace `path` with `contents`, with the given mode.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    staged(path, contents, mode, true)?
        .persist(path)
        .map_err(|e| e.error)?;
    sync_dir(parent_dir(path)?)
}

/// Atomically replace `path` with `contents`, its bytes on disk before the
/// rename, the rename itself not forced (no directory fsync): a crash
/// leaves the old or the new file, whole; a power loss may undo the rename,
/// which journaling file systems (ext4, XFS, GlusterFS bricks on them)
/// only ever do in order, together with every later change.
pub fn write_synced(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    staged(path, contents, mode, true)?
        .persist(path)
        .map_err(|e| e.error)?;
    Ok(())
}

/// Atomically replace `path` with `contents`, without forcing it to disk:
/// a crash of the writing process leaves the old or the new file, never a
/// mix, but a power loss may lose the change. For records that only
/// describe running processes (a power loss ends those too).
pub fn replace(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    staged(path, contents, mode, false)?
        .persist(path)
        .map_err(|e| e.error)?;
    Ok(())
}

/// Create `path` with `contents` only if it does not exist yet. Returns
/// whether it was created. Used for files that must never be overwritten
/// (`dir.id`): the link is atomic, so two racing writers cannot both win.
pub fn create_once(path: &Path, contents: &[u8], mode: u32) -> io::Result<bool> {
    match staged(path, contents, mode, true)?.persist_noclobber(path) {
        Ok(_) => {
            sync_dir(parent_dir(path)?)?;
            Ok(true)
        }
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e.error),
    }
}

/// Move `from` to `to` (same file system) and make the move durable.
pub fn rename_durable(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    sync_dir(parent_dir(to)?)?;
    let from_dir = parent_dir(from)?;
    if from_dir != parent_dir(to)? {
        sync_dir(from_dir)?;
    }
    Ok(())
}

/// Flush the whole file system holding `dir` (`syncfs`).
pub fn sync_fs(dir: &Path) -> io::Result<()> {
    nix::unistd::syncfs(File::open(dir)?).map_err(io::Error::from)
}

/// fsync a directory so that renames and creations in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent_dir(path: &Path) -> io::Result<&Path> {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_never_clobbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one", 0o644).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let id = dir.path().join("id");
        assert!(create_once(&id, b"a", 0o644).unwrap());
        assert!(!create_once(&id, b"b", 0o644).unwrap());
        assert_eq!(fs::read(&id).unwrap(), b"a");
        // No temp files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
