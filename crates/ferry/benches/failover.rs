//! Fencing and failover under faults at random moments
//! (ferry_testkit::failover, issue 16): three nodes on GlusterFS, each
//! reaching it through its own network namespace, daemons at `heartbeat=1
//! lease_time=10` (the watchdog's `fence_time` at its default, 6 s), one
//! `ha=1` jail; `FERRY_TRIALS` trials (default 50) of each fault kind on
//! the node that runs it, every node sampled every 100 ms. Prints each
//! trial, then the table of the README. `FERRY_TRIAL_SEED` replays the
//! moments of a run (each run prints its seed); `FERRY_LEASE_TIME` sets
//! another lease time.
//!
//! Run as root: `cargo bench -p ferry --bench failover`.

use ferry_testkit::failover::{table, Fault, Rig};
use ferry_testkit::trials::{self, Rng};

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

fn main() {
    let per_kind = trials::per_kind(50);
    let lease_time = ferry_testkit::bench::setting("FERRY_LEASE_TIME", 10) as u64;
    let mut rng = Rng::from_env();
    let mut all = Vec::new();
    for fault in Fault::ALL {
        // A fresh cluster per kind: one kind's leftovers never bias the next.
        let mut rig = Rig::new(BIN, lease_time);
        for n in 0..per_kind {
            let t = rig.trial(fault, &mut rng);
            println!("#{n} {t}");
            all.push(t);
        }
    }
    println!("{per_kind} trials of each fault, lease_time={lease_time}:");
    print!("{}", table(&all));
}
