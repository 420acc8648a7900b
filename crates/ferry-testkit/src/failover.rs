//! Faults to a node that runs an env, and what must hold after each
//! (issue 16): the env never runs on two nodes at once (every node is
//! sampled every 100 ms), and an `ha=1` env runs again elsewhere soon
//! after. Used by `tests/fencing.rs`, `tests/ha.rs` and
//! `benches/failover.rs`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::TestWorkdir;

/// Whether env `j` runs on the node whose workdir is `root`: its runtime
/// record names a live process (checked against its start time).
pub fn runs_at(root: &std::path::Path, j: &str) -> bool {
    let rt: Option<serde_json::Value> = std::fs::read(root.join(format!("jails/{j}/runtime.json")))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    rt.is_some_and(|rt| match (rt["pid"].as_i64(), rt["starttime"].as_u64()) {
        (Some(pid), Some(start)) => ferry_core::sys::is_alive(pid as i32, start),
        _ => false,
    })
}

/// Whether env `j` runs on node `t`.
pub fn runs(t: &TestWorkdir, j: &str) -> bool {
    runs_at(t.root(), j)
}

/// The index of the node that runs `j` now, if exactly one does.
pub fn running_on(nodes: &[TestWorkdir], j: &str) -> Option<usize> {
    let on: Vec<usize> = (0..nodes.len()).filter(|i| runs(&nodes[*i], j)).collect();
    (on.len() == 1).then(|| on[0])
}

/// Samples every node every 100 ms on a thread of its own and counts the
/// samples in which more than one node ran the env.
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    overlaps: Arc<AtomicU32>,
    samples: Arc<AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub fn start(nodes: &[TestWorkdir], j: &str) -> Sampler {
        let roots: Vec<PathBuf> = nodes.iter().map(|n| n.root().to_path_buf()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let overlaps = Arc::new(AtomicU32::new(0));
        let samples = Arc::new(AtomicU32::new(0));
        let (s, o, n, j) = (
            Arc::clone(&stop),
            Arc::clone(&overlaps),
            Arc::clone(&samples),
            j.to_owned(),
        );
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let t = Instant::now();
                if roots.iter().filter(|r| runs_at(r, &j)).count() > 1 {
                    o.fetch_add(1, Ordering::SeqCst);
                }
                n.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
            }
        });
        Sampler {
            stop,
            overlaps,
            samples,
            thread: Some(thread),
        }
    }

    /// Stop sampling: (samples with two copies, samples taken).
    pub fn finish(mut self) -> (u32, u32) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.overlaps.load(Ordering::SeqCst),
            self.samples.load(Ordering::SeqCst),
        )
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
