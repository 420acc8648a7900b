use super::*;

fn store() -> (tempfile::TempDir, TaskStore) {
    let t = tempfile::tempdir().unwrap();
    let s = TaskStore::open(t.path()).unwrap();
    (t, s)
}

fn task(words: &[&str]) -> NewTask {
    NewTask {
        node: None,
        after: None,
        autoflush: Autoflush::Keep,
        retry: false,
        words: words.iter().map(|w| (*w).to_owned()).collect(),
    }
}

fn me() -> Claimer {
    let pid = std::process::id() as i32;
    Claimer {
        instance: "test".into(),
        pid,
        start: sys::proc_stat(pid).unwrap().starttime,
    }
}

fn state(s: &TaskStore, id: u64) -> TaskState {
    s.get(id).unwrap().unwrap().state
}

#[test]
fn a_claim_takes_each_task_once_in_order() {
    let (_t, mut s) = store();
    let a = s.submit(&task(&["jstart", "jname=a"])).unwrap();
    let b = s.submit(&task(&["jstart", "jname=b"])).unwrap();
    let c1 = s.claim("n1", &me()).unwrap().unwrap();
    assert_eq!((c1.id, c1.run), (a, 1));
    assert_eq!(c1.words, ["jstart", "jname=a"]);
    assert_eq!(s.claim("n1", &me()).unwrap().unwrap().id, b);
    assert_eq!(s.claim("n1", &me()).unwrap(), None);
    assert_eq!(state(&s, a), TaskState::Running);
}

#[test]
fn tasks_of_other_nodes_are_not_claimed_here() {
    let (_t, mut s) = store();
    let mut t = task(&["jstart", "jname=a"]);
    t.node = Some("n2".into());
    s.submit(&t).unwrap();
    assert_eq!(s.claim("n1", &me()).unwrap(), None);
    assert!(s.claim("n2", &me()).unwrap().is_some());
}

#[test]
fn a_dependent_waits_and_is_cancelled_when_its_predecessor_fails() {
    let (_t, mut s) = store();
    let a = s.submit(&task(&["jcreate", "jname=a"])).unwrap();
    let mut t = task(&["jstart", "jname=a"]);
    t.after = Some(a);
    let b = s.submit(&t).unwrap();
    t.after = Some(b);
    let c = s.submit(&t).unwrap();
    let claim = s.claim("n1", &me()).unwrap().unwrap();
    assert_eq!(claim.id, a);
    assert_eq!(s.claim("n1", &me()).unwrap(), None, "b must wait for a");
    assert!(s.begin_run(a, 1, 1, 1).unwrap());
    assert!(s.finish(a, 1, 3).unwrap());
    let row = s.get(a).unwrap().unwrap();
    assert_eq!((row.state, row.exit_code), (TaskState::Failed, Some(3)));
    assert_eq!(state(&s, b), TaskState::Cancelled);
    assert_eq!(state(&s, c), TaskState::Cancelled, "transitively");
    assert!(s
        .get(c)
        .unwrap()
        .unwrap()
        .reason
        .unwrap()
        .contains(&b.to_string()));
    // A task after a failed one is refused.
    t.after = Some(a);
    assert!(matches!(s.submit(&t), Err(Error::TaskState { .. })));
    t.after = Some(999);
    assert!(matches!(s.submit(&t), Err(Error::TaskNotFound(999))));
}

#[test]
fn a_dependent_runs_after_success_even_when_the_record_was_flushed() {
    let (_t, mut s) = store();
    let a = s.submit(&task(&["jcreate", "jname=a"])).unwrap();
    let mut t = task(&["jstart", "jname=a"]);
    t.after = Some(a);
    let b = s.submit(&t).unwrap();
    s.claim("n1", &me()).unwrap();
    assert!(s.finish(a, 1, 0).unwrap());
    assert_eq!(s.flush(None).unwrap(), [a]);
    assert_eq!(s.claim("n1", &me()).unwrap().unwrap().id, b);
}

#[test]
fn a_runner_that_vanished_is_interrupted_or_queued_again_when_retryable() {
    let (_t, mut s) = store();
    let a = s.submit(&task(&["jstart", "jname=a"])).unwrap();
    let mut t = task(&["jstart", "jname=b"]);
    t.retry = true;
    let b = s.submit(&t).unwrap();
    for _ in 0..2 {
        s.claim("n1", &me()).unwrap().unwrap();
    }
    // Runners that are certainly gone: pid 1 with a wrong start time.
    assert!(s.begin_run(a, 1, 1, u64::MAX).unwrap());
    assert!(s.begin_run(b, 1, 1, u64::MAX).unwrap());
    let mut got = s.recover("n1").unwrap();
    got.sort_unstable_by_key(|(id, _)| *id);
    assert_eq!(got, [(a, TaskState::Interrupted), (b, TaskState::Pending)]);
    // The retried run is run 2; the late first runner cannot record.
    let c = s.claim("n1", &me()).unwrap().unwrap();
    assert_eq!((c.id, c.run), (b, 2));
    assert!(!s.finish(b, 1, 0).unwrap());
    assert!(!s.begin_run(b, 1, 7, 7).unwrap());
    assert!(s.begin_run(b, 2, 7, 7).unwrap());
    assert!(s.finish(b, 2, 0).unwrap());
    assert_eq!(state(&s, b), TaskState::Done);
}

#[test]
fn a_claim_whose_daemon_lives_is_left_alone_by_recovery() {
    let (_t, mut s) = store();
    s.submit(&task(&["jstart", "jname=a"])).unwrap();
    s.claim("n1", &me()).unwrap().unwrap();
    assert_eq!(s.recover("n1").unwrap(), []);
}

#[test]
fn cancel_of_pending_and_running_tasks() {
    let (_t, mut s) = store();
    let a = s.submit(&task(&["jstart", "jname=a"])).unwrap();
    let b = s.submit(&task(&["jstart", "jname=b"])).unwrap();
    s.claim("n1", &me()).unwrap().unwrap();
    assert_eq!(s.request_cancel(b).unwrap(), CancelStep::Cancelled);
    assert_eq!(
        s.request_cancel(a).unwrap(),
        CancelStep::Running {
            run: 1,
            runner: None
        }
    );
    // Asked before the runner started: the command never runs.
    assert!(!s.begin_run(a, 1, 5, 5).unwrap());
    assert_eq!(state(&s, a), TaskState::Cancelled);
    assert!(matches!(s.request_cancel(a), Err(Error::TaskState { .. })));
    assert!(matches!(s.request_cancel(9), Err(Error::TaskNotFound(9))));
}

#[test]
fn autoflush_removes_records_as_declared() {
    let (_t, mut s) = store();
    let mut ids = Vec::new();
    for (flush, code) in [
        (Autoflush::OnSuccess, 0),
        (Autoflush::OnSuccess, 1),
        (Autoflush::Always, 1),
        (Autoflush::Keep, 0),
    ] {
        let mut t = task(&["jstart", "jname=a"]);
        t.autoflush = flush;
        let id = s.submit(&t).unwrap();
        let c = s.claim("n1", &me()).unwrap().unwrap();
        assert!(s.finish(id, c.run, code).unwrap());
        ids.push(id);
    }
    let left: Vec<u64> = s.list().unwrap().iter().map(|r| r.id).collect();
    assert_eq!(left, [ids[1], ids[3]]);
    // Ids are never reused after a removal.
    let next = s.submit(&task(&["jstart", "jname=a"])).unwrap();
    assert!(next > ids[3]);
    assert!(matches!(s.flush(Some(next)), Err(Error::TaskState { .. })));
    assert_eq!(s.flush(None).unwrap(), [ids[1], ids[3]]);
}

fn for_node(node: &str, words: &[&str]) -> NewTask {
    NewTask {
        node: Some(node.into()),
        ..task(words)
    }
}

#[test]
fn local_and_remote_claims_take_only_their_own_tasks() {
    let (_t, mut s) = store();
    let local = s.submit(&task(&["jls"])).unwrap();
    let own = s.submit(&for_node("n1", &["bls"])).unwrap();
    let far = s.submit(&for_node("n2", &["jstart", "jname=a"])).unwrap();
    let r = s.claim_remote("n1", &me()).unwrap().unwrap();
    assert_eq!((r.id, r.run, r.node.as_str()), (far, 1, "n2"));
    assert!(s.claim_remote("n1", &me()).unwrap().is_none());
    assert_eq!(s.claim("n1", &me()).unwrap().unwrap().id, local);
    assert_eq!(s.claim("n1", &me()).unwrap().unwrap().id, own);
    assert!(s.claim("n1", &me()).unwrap().is_none());
    // Not sent until marked; a local recovery never settles it.
    assert_eq!(s.unsent("n1").unwrap(), vec![r.clone()]);
    s.mark_sent(r.id, r.run).unwrap();
    assert!(s.unsent("n1").unwrap().is_empty());
    assert!(s.recover("n1").unwrap().is_empty());
    assert_eq!(state(&s, far), TaskState::Running);
}

#[test]
fn a_remote_result_settles_only_the_run_it_answers() {
    let (_t, mut s) = store();
    let far = s
        .submit(&NewTask {
            retry: true,
            ..for_node("n2", &["jstart", "jname=a"])
        })
        .unwrap();
    let first = s.claim_remote("n1", &me()).unwrap().unwrap();
    // The target is judged dead: run 1 ends, the task is queued again.
    assert_eq!(
        s.end_unrecorded(far, 1, "n2 is dead").unwrap(),
        Some(TaskState::Pending)
    );
    let second = s.claim_remote("n1", &me()).unwrap().unwrap();
    assert_ne!(first.request, second.request);
    // A late answer to run 1 changes nothing.
    assert_eq!(
        s.settle_remote(&first.request, TaskState::Done, Some(0), "")
            .unwrap(),
        None
    );
    assert_eq!(state(&s, far), TaskState::Running);
    assert_eq!(
        s.settle_remote(&second.request, TaskState::Failed, Some(4), "exit code 4")
            .unwrap(),
        Some(far)
    );
    let row = s.get(far).unwrap().unwrap();
    assert_eq!((row.state, row.exit_code), (TaskState::Failed, Some(4)));
    // Twice is once.
    assert_eq!(
        s.settle_remote(&second.request, TaskState::Done, Some(0), "")
            .unwrap(),
        None
    );
    assert!(s
        .settle_remote(&second.request, TaskState::Running, None, "")
        .is_err());
}

#[test]
fn a_request_delivered_twice_is_stored_once() {
    let (_t, mut s) = store();
    let words = vec!["jls".to_owned()];
    let Accepted::New(id) = s
        .accept("n2", "req-1", "ferry.tasks.n1", &words, false)
        .unwrap()
    else {
        panic!("not new")
    };
    match s
        .accept("n2", "req-1", "ferry.tasks.n1", &words, false)
        .unwrap()
    {
        Accepted::Again(row) => assert_eq!(row.id, id),
        a => panic!("{a:?}"),
    }
    assert_eq!(s.list().unwrap().len(), 1);
    // It is an ordinary local task of n2.
    let c = s.claim("n2", &me()).unwrap().unwrap();
    assert_eq!(c.id, id);
    assert!(s.unreplied().unwrap().is_empty());
    assert!(s.finish(id, c.run, 0).unwrap());
    let open: Vec<u64> = s.unreplied().unwrap().iter().map(|r| r.id).collect();
    assert_eq!(open, [id]);
    s.mark_replied(id).unwrap();
    assert!(s.unreplied().unwrap().is_empty());
    assert_eq!(s.by_origin("req-1").unwrap().unwrap().id, id);
}

#[test]
fn a_store_of_the_first_schema_is_migrated() {
    let t = tempfile::tempdir().unwrap();
    {
        let c = rusqlite::Connection::open(t.path().join("tasks.sqlite")).unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c.execute(
            "INSERT INTO tasks (command, state, created) VALUES ('[\"jls\"]', 'pending', 'then')",
            [],
        )
        .unwrap();
    }
    let mut s = TaskStore::open(t.path()).unwrap();
    let row = s.get(1).unwrap().unwrap();
    assert_eq!(
        (row.words, row.origin, row.replied),
        (vec!["jls".to_owned()], None, false)
    );
    assert!(s.claim("n1", &me()).unwrap().is_some());
    // Opening again migrates nothing twice.
    drop(s);
    TaskStore::open(t.path()).unwrap();
}
