//! The router of node messages, against a broker that records what is put
//! (the real beanstalkd is in the integration tests, tests/cluster.rs).

use std::sync::mpsc;
use std::time::Duration;

use ferry_api::exit;
use ferry_broker::{Broker, BrokerUri, Job, JobId, JobStats, Peek, TubeStats};
use ferry_core::inventory::Inventory;
use ferry_core::registry::Registry;
use ferry_core::task::TaskStore;
use ferry_core::Workdir;

use super::route;
use crate::rpc::{self, MigrateAbort, MigrateCommit, NodeReply, NodeRequest, Reply, TaskRequest};

/// Records every put with the tube it went to; does nothing else.
#[derive(Debug, Default)]
struct Recorder {
    tube: String,
    puts: Vec<(String, Vec<u8>)>,
}

type Res<T> = ferry_broker::Result<T>;

impl Broker for Recorder {
    fn use_tube(&mut self, tube: &str) -> Res<()> {
        self.tube = tube.to_owned();
        Ok(())
    }
    fn watch(&mut self, _: &str) -> Res<u32> {
        Ok(1)
    }
    fn ignore(&mut self, _: &str) -> Res<u32> {
        Ok(1)
    }
    fn put(&mut self, body: &[u8], _: u32, _: Duration, _: Duration) -> Res<JobId> {
        self.puts.push((self.tube.clone(), body.to_vec()));
        Ok(JobId(self.puts.len() as u64))
    }
    fn reserve(&mut self, _: Duration) -> Res<Option<Job>> {
        Ok(None)
    }
    fn delete(&mut self, _: JobId) -> Res<()> {
        Ok(())
    }
    fn release(&mut self, _: JobId, _: u32, _: Duration) -> Res<()> {
        Ok(())
    }
    fn bury(&mut self, _: JobId, _: u32) -> Res<()> {
        Ok(())
    }
    fn touch(&mut self, _: JobId) -> Res<()> {
        Ok(())
    }
    fn peek(&mut self, _: Peek) -> Res<Option<Job>> {
        Ok(None)
    }
    fn kick(&mut self, _: u32) -> Res<u32> {
        Ok(0)
    }
    fn kick_job(&mut self, _: JobId) -> Res<()> {
        Ok(())
    }
    fn stats_job(&mut self, _: JobId) -> Res<JobStats> {
        Err(ferry_broker::Error::NotIgnored)
    }
    fn stats_tube(&mut self, _: &str) -> Res<TubeStats> {
        Err(ferry_broker::Error::NotIgnored)
    }
}

struct Node {
    _dir: tempfile::TempDir,
    wd: Workdir,
    uri: BrokerUri,
}

fn node() -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let wd = Workdir::init(dir.path(), Some("n2")).expect("workdir");
    Node {
        _dir: dir,
        wd,
        uri: "127.0.0.1:11300".parse().expect("uri"),
    }
}

/// Route one request; the replies put, read back.
fn ask(n: &Node, body: NodeRequest) -> (Vec<(String, Reply)>, mpsc::Receiver<()>) {
    let (wake, woken) = mpsc::channel();
    let req = rpc::Request {
        v: rpc::VERSION,
        id: "r1".into(),
        from: "n1".into(),
        reply: "ferry.reply.n1.x".into(),
        body,
    };
    let mut b = Recorder::default();
    route(&n.wd, &n.uri, &mut b, &req, &wake).expect("routed");
    let replies = b
        .puts
        .into_iter()
        .map(|(tube, body)| (tube, rpc::decode_reply(&body).expect("a reply")))
        .collect();
    (replies, woken)
}

fn only(replies: Vec<(String, Reply)>) -> NodeReply {
    assert_eq!(replies.len(), 1, "{replies:?}");
    let (tube, reply) = replies.into_iter().next().expect("one");
    assert_eq!(tube, "ferry.reply.n1.x");
    assert_eq!(reply.id, "r1");
    reply.body
}

#[test]
fn an_inventory_request_is_answered_with_the_recorded_inventory_or_why_not() {
    let n = node();
    let (replies, _) = ask(&n, NodeRequest::Inventory);
    match only(replies) {
        NodeReply::Error { code, message } => {
            assert_eq!(code, exit::FAILED);
            assert!(message.contains("initenv"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let inv = Inventory::collect("n2", "test", None);
    Registry::open(&n.wd.db_dir())
        .and_then(|r| r.set_inventory("node", &serde_json::to_string(&inv).expect("JSON")))
        .expect("inventory");
    let (replies, _) = ask(&n, NodeRequest::Inventory);
    assert_eq!(only(replies), NodeReply::Inventory(Box::new(inv)));
}

#[test]
fn a_task_is_stored_once_and_wakes_the_queue_and_one_it_cannot_run_is_refused() {
    let n = node();
    let task = |words: &[&str]| {
        NodeRequest::Task(TaskRequest {
            words: words.iter().map(|w| (*w).to_owned()).collect(),
            retry: false,
        })
    };
    let (replies, woken) = ask(&n, task(&["daemon"]));
    match only(replies) {
        NodeReply::Error { code, message } => {
            assert_eq!(code, exit::USAGE);
            assert!(message.contains("cannot run"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(woken.try_recv().is_err());
    let store = TaskStore::open(&n.wd.db_dir()).expect("store");
    assert!(store.list().expect("list").is_empty());

    let (replies, woken) = ask(&n, task(&["jls"]));
    assert!(replies.is_empty(), "a stored task is answered when it ends");
    assert!(woken.try_recv().is_ok());
    // The same request again (a redelivery): stored once.
    let (replies, _) = ask(&n, task(&["jls"]));
    assert!(replies.is_empty());
    assert_eq!(store.list().expect("list").len(), 1);
}

#[test]
fn migration_requests_reach_the_destination_s_code_and_its_refusals_come_back_typed() {
    let n = node();
    let (replies, _) = ask(
        &n,
        NodeRequest::MigrateAbort(MigrateAbort {
            jname: "vm1".into(),
        }),
    );
    assert_eq!(only(replies), NodeReply::MigrateAbort { aborted: false });
    let (replies, _) = ask(
        &n,
        NodeRequest::MigrateCommit(MigrateCommit {
            jname: "vm1".into(),
            verify_ms: 0,
        }),
    );
    match only(replies) {
        NodeReply::Error { code, message } => {
            assert_eq!(code, exit::REFUSED);
            assert!(message.contains("not waiting for a migration"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let (replies, _) = ask(
        &n,
        NodeRequest::MigrateAbort(MigrateAbort {
            jname: "../etc".into(),
        }),
    );
    match only(replies) {
        NodeReply::Error { code, .. } => assert_eq!(code, exit::USAGE),
        other => panic!("{other:?}"),
    }
}
