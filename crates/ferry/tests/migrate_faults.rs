//! Live migrations interrupted at random moments (ferry_testkit::trials):
//! a few trials of every fault kind, each of which must end with the VM
//! running once, where its lease is, its memory whole. The benchmark
//! `migrate_faults` runs 20 of each and prints the table in the README.
//! `FERRY_TRIALS=N` sets the trials per kind, `FERRY_TRIAL_SEED` the
//! moments.

use ferry_testkit::trials;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

#[test]
fn every_fault_at_a_random_moment_of_a_move_leaves_one_whole_running_guest() {
    let per_kind = trials::per_kind(2);
    let all = trials::run(BIN, "lft", per_kind);
    let table = trials::table(&all);
    eprintln!("{table}");
    let failed: Vec<String> = all
        .iter()
        .filter_map(|t| {
            t.failure.as_ref().map(|f| {
                format!(
                    "{} at {:.2} s ({}): {f}",
                    t.fault,
                    t.at.as_secs_f64(),
                    t.phase
                )
            })
        })
        .collect();
    assert!(failed.is_empty(), "{table}\n{}", failed.join("\n"));
}
