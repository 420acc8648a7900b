//! `junregister jname='*'` then `jregister jname='*'` of 1,000 jails
//! between two nodes, on a plain shared directory and on GlusterFS,
//! against the floor
//! measured in the same run on the same file system: 1,000 × (write a file
//! of the definition's size, fsync, rename).
//!
//! Each round times the floor right before each operation and keeps the
//! ratio of that pair, so that a disk that slows down or speeds up during
//! the run (other work on the machine) shifts both sides alike; the
//! figures are the medians over the rounds. The jails go n1 → n2 and back,
//! so every round moves all of them twice.
//!
//! Run as root: `cargo bench -p ferry --bench register` (count:
//! `FERRY_BENCH_ENVS`, default 1000; rounds: `FERRY_BENCH_ROUNDS`, default 3).

use std::fs;
use std::io::Write;

use ferry_api::{Command as FerryCommand, RawArgs};
use ferry_core::envdef::Hooks;
use ferry_core::registry::Registry;
use ferry_testkit::bench::{ms, setting, timed};
use ferry_testkit::TestCluster;
use ferry_testkit::TestWorkdir;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

fn main() {
    let n = setting("FERRY_BENCH_ENVS", 1000);
    let rounds = setting("FERRY_BENCH_ROUNDS", 3);
    measure(
        "plain shared directory",
        &TestCluster::plain(BIN, 2),
        n,
        rounds,
    );
    measure("GlusterFS", &TestCluster::glusterfs(BIN, 2), n, rounds);
}

fn measure(what: &str, c: &TestCluster, n: usize, rounds: usize) {
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let wd = n1.workdir();
    let reg = Registry::open(&wd.db_dir()).expect("registry");
    let mut def_len = 0;
    for i in 0..n {
        let raw = RawArgs::from_words([format!("jname=r{i:04}")]).expect("words");
        let FerryCommand::Jcreate(args) = FerryCommand::parse("jcreate", raw).expect("args") else {
            unreachable!()
        };
        let cfg = ferry_jail::JailConfig::from_args(args, wd.root()).expect("config");
        let def = ferry_jail::config::to_definition(&cfg.args, wd.root()).expect("definition");
        def_len = def.render(wd.root()).len();
        // A registered jail with an empty data dir: registration never touches data.
        ferry_core::envfs::create(
            &wd,
            &reg,
            &ferry_jail::row(&cfg),
            &Hooks::default(),
            &def,
            || Ok(()),
        )
        .expect("create");
    }
    drop(reg);

    let floor_dir = c.shared().join("jails-system/.floor");
    fs::create_dir_all(&floor_dir).expect("floor dir");
    let payload = vec![b'x'; def_len];
    let floor = || {
        timed(|| {
            for i in 0..n {
                let tmp = floor_dir.join(format!(".f{i}.tmp"));
                let mut f = fs::File::create(&tmp).expect("create");
                f.write_all(&payload).expect("write");
                f.sync_all().expect("fsync");
                fs::rename(&tmp, floor_dir.join(format!("f{i}"))).expect("rename");
            }
        })
    };
    // (floor, operation) pairs.
    let (mut unreg, mut reg) = (Vec::new(), Vec::new());
    let mut pair = |from: &TestWorkdir, to: &TestWorkdir| {
        unreg.push((
            floor(),
            timed(|| drop(from.ok(&["junregister", "jname=*"]))),
        ));
        reg.push((floor(), timed(|| drop(to.ok(&["jregister", "jname=*"])))));
        assert_eq!(to.jls().len(), n);
    };
    for _ in 0..rounds {
        pair(n1, n2);
        pair(n2, n1);
    }
    println!(
        "{n} jails, definitions of {def_len} bytes, {what}, {} moves:",
        unreg.len()
    );
    report("junregister jname='*'", unreg);
    report("jregister jname='*'", reg);
}

/// The median ratio of the pairs, with the medians of both sides.
fn report(what: &str, pairs: Vec<(std::time::Duration, std::time::Duration)>) {
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratios: Vec<f64> = pairs.iter().map(|(f, o)| ms(*o) / ms(*f)).collect();
    let (lo, hi) = ratios
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    println!(
        "  {what:24} {:8.1} ms, floor {:8.1} ms: {:.2}x the floor (range {lo:.2}-{hi:.2})",
        med(pairs.iter().map(|p| ms(p.1)).collect()),
        med(pairs.iter().map(|p| ms(p.0)).collect()),
        med(ratios),
    );
}
