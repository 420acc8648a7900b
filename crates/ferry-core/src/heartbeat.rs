//! Node heartbeats (DESIGN §5): `jails-system/.nodes/<node>` holds a
//! counter the node daemon increments every few seconds. A node is judged
//! dead when its counter stays still for the lease time, watched from here
//! — clocks of different nodes are never compared.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::atomic;
use crate::error::{Error, Result};
use crate::workdir::Workdir;

fn path(wd: &Workdir, node: &str) -> PathBuf {
    wd.root().join("jails-system/.nodes").join(node)
}

/// The current counter of `node` (`None`: it never beat).
pub fn read(wd: &Workdir, node: &str) -> Result<Option<u64>> {
    let p = path(wd, node);
    match std::fs::read_to_string(&p) {
        Ok(t) => t
            .trim()
            .strip_prefix("counter=")
            .and_then(|n| n.parse().ok())
            .map(Some)
            .ok_or_else(|| Error::bad_value("heartbeat", &p.to_string_lossy(), "garbled")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot read heartbeat", &p)(e)),
    }
}

/// Increment this node's counter; returns the new value.
pub fn beat(wd: &Workdir) -> Result<u64> {
    let next = read(wd, wd.nodename())?.unwrap_or(0) + 1;
    let p = path(wd, wd.nodename());
    atomic::write_atomic(&p, format!("counter={next}\n").as_bytes(), 0o644)
        .map_err(Error::io("cannot write heartbeat", &p))?;
    Ok(next)
}

/// Watch `node`'s counter for `lease_time`: true when it did not move (the
/// node is dead), false as soon as it moves.
pub fn still_for(wd: &Workdir, node: &str, lease_time: Duration) -> Result<bool> {
    let first = read(wd, node)?;
    let deadline = Instant::now() + lease_time;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100).min(lease_time));
        if read(wd, node)? != first {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moving_counter_is_alive_and_a_still_one_dead() {
        let t = tempfile::tempdir().unwrap();
        let wd = Workdir::init(t.path(), Some("n1")).unwrap();
        assert_eq!(read(&wd, "n1").unwrap(), None);
        assert_eq!(beat(&wd).unwrap(), 1);
        assert_eq!(beat(&wd).unwrap(), 2);
        assert!(still_for(&wd, "n1", Duration::from_millis(300)).unwrap());
        let wd2 = wd.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            beat(&wd2).unwrap();
        });
        assert!(!still_for(&wd, "n1", Duration::from_secs(5)).unwrap());
        h.join().unwrap();
    }
}
