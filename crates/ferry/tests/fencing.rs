//! The fencing watchdog (issue 16): a node whose daemon is frozen or
//! killed has its envs killed within `fence_time` of its last heartbeat,
//! before another node may take them over, so two copies of one env never
//! run at once. Each fault at a random moment, several trials, counted.

use std::time::{Duration, Instant};

use ferry_testkit::failover::{runs, Sampler};
use ferry_testkit::trials::Rng;
use ferry_testkit::view::{wait_for, wait_until};
use ferry_testkit::TestCluster;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_ferry");
const DAEMON: [&str; 3] = ["heartbeat=1", "lease_time=4", "fence_time=2"];
const FENCE_TIME: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
enum Fault {
    Freeze,
    Kill,
}

fn trials(fault: Fault) {
    let c = TestCluster::plain(BIN, 2);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let mut rng = Rng::from_env();
    let j = "fenced1";
    n1.ok(&["jcreate", &format!("jname={j}")]);
    let mut d1 = Some(n1.daemon(&DAEMON));
    for trial in 0..5 {
        n1.ok(&["jstart", &format!("jname={j}")]);
        let sampler = Sampler::start(&c.nodes, j);
        std::thread::sleep(Duration::from_millis(1500) + rng.within(Duration::from_millis(1000)));
        let d = d1.take().expect("n1's daemon");
        let pid = Pid::from_raw(d.pid() as i32);
        let t0 = Instant::now();
        let frozen = match fault {
            Fault::Freeze => {
                kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
                Some(d)
            }
            Fault::Kill => {
                d.kill();
                None
            }
        };
        wait_until(
            "the watchdog kills the env of the frozen node",
            FENCE_TIME + Duration::from_secs(1),
            || !runs(n1, j),
        );
        let killed_after = t0.elapsed();
        let e = n1.fails(6, &["jstart", &format!("jname={j}")]);
        assert!(e.contains("fenced since"), "trial {trial}: {e}");

        // n2 takes it over once n1's heartbeat stood still for lease_time.
        n2.ok(&[
            "jregister",
            &format!("jname={j}"),
            "force=1",
            "lease_time=4",
        ]);
        n2.ok(&["jstart", &format!("jname={j}")]);
        assert!(runs(n2, j));

        // n1 comes back: the fence is lifted, its copy is forgotten.
        d1 = Some(match (fault, frozen) {
            (Fault::Freeze, Some(d)) => {
                kill(pid, Signal::SIGCONT).expect("SIGCONT");
                d
            }
            _ => n1.daemon(&DAEMON),
        });
        wait_until(
            "n1 forgets the env another node took",
            Duration::from_secs(10),
            || !n1.jls().contains_key(j),
        );
        wait_until("the fence is lifted", Duration::from_secs(5), || {
            !n1.root().join("var/run/fenced").exists()
        });
        let (overlaps, _) = sampler.finish();
        eprintln!("{fault:?} trial {trial}: env dead {killed_after:?} after the fault, overlaps {overlaps}");
        assert_eq!(overlaps, 0, "trial {trial}: two copies ran at once");

        // Back to n1 for the next trial.
        n2.ok(&["jstop", &format!("jname={j}")]);
        n2.ok(&["junregister", &format!("jname={j}")]);
        n1.ok(&["jregister", &format!("jname={j}")]);
    }
    if let Some(d) = d1 {
        d.terminate();
    }
    assert!(
        wait_for(Duration::from_secs(5), || !n1
            .root()
            .join("var/run/watchdog.pid")
            .exists()),
        "a clean daemon stop ends its watchdog"
    );
}

#[test]
fn a_frozen_daemon_s_envs_die_within_fence_time_and_never_overlap_a_takeover() {
    trials(Fault::Freeze);
}

#[test]
fn a_killed_daemon_s_envs_die_within_fence_time_and_never_overlap_a_takeover() {
    trials(Fault::Kill);
}
