//! `junregister jname='*'` then `jregister jname='*'` of 1,000 jails
//! between two nodes, on a plain shared directory and on GlusterFS,
//! against the floor
//! measured in the same run on the same file system: 1,000 × (write a file
//! of the definition's size, fsync, rename).
//!
//! Run as root: `cargo bench -p ferry --bench register` (count:
//! `FERRY_BENCH_ENVS`, default 1000).

use std::fs;
use std::io::Write;

use ferry_api::{Command as FerryCommand, RawArgs};
use ferry_core::envdef::Hooks;
use ferry_core::registry::Registry;
use ferry_testkit::bench::{ms, timed};
use ferry_testkit::TestCluster;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");

fn main() {
    let n: usize = std::env::var("FERRY_BENCH_ENVS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1000);
    measure("plain shared directory", &TestCluster::plain(BIN, 2), n);
    measure("GlusterFS", &TestCluster::glusterfs(BIN, 2), n);
}

fn measure(what: &str, c: &TestCluster, n: usize) {
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
    let floor = timed(|| {
        for i in 0..n {
            let tmp = floor_dir.join(format!(".f{i}.tmp"));
            let mut f = fs::File::create(&tmp).expect("create");
            f.write_all(&payload).expect("write");
            f.sync_all().expect("fsync");
            fs::rename(&tmp, floor_dir.join(format!("f{i}"))).expect("rename");
        }
    });
    let unregister = timed(|| {
        n1.ok(&["junregister", "jname=*"]);
    });
    let register = timed(|| {
        n2.ok(&["jregister", "jname=*"]);
    });
    assert_eq!(n2.jls().len(), n);
    println!("{n} jails, definitions of {def_len} bytes, {what}:");
    println!("  floor (write, fsync, rename) x {n}: {:8.1} ms", ms(floor));
    println!(
        "  junregister jname='*':            {:8.1} ms   {:.2}x the floor",
        ms(unregister),
        ms(unregister) / ms(floor)
    );
    println!(
        "  jregister jname='*':              {:8.1} ms   {:.2}x the floor",
        ms(register),
        ms(register) / ms(floor)
    );
}
