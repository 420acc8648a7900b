//! Recovery of live migrations from faults at random moments
//! (ferry_testkit::trials, issue 13): `FERRY_TRIALS` trials (default 20)
//! of each fault kind on one pair of nodes, the guest rewriting and
//! checking 96 MiB, moved with `bandwidth=40 downtime_ms=50`; prints each
//! trial, then the table of the README. `FERRY_TRIAL_SEED` replays the
//! moments of a run (each run prints its seed).
//!
//! Run as root: `cargo bench -p ferry --bench migrate_faults`.

use ferry_testkit::trials;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

fn main() {
    let per_kind = trials::per_kind(20);
    let all = trials::run(BIN, "bft", per_kind);
    println!(
        "{per_kind} trials of each fault, guest checking {} MiB rewritten at {} MiB/s:",
        trials::MEMCHECK_MIB,
        trials::MEMCHECK_RATE
    );
    print!("{}", trials::table(&all));
    for t in all.iter().filter(|t| t.failure.is_some()) {
        println!(
            "FAILED: {} at {:.2} s ({}): {}",
            t.fault,
            t.at.as_secs_f64(),
            t.phase,
            t.failure.as_deref().unwrap_or("")
        );
    }
}
