use super::*;

fn request(body: NodeRequest) -> Request {
    Request {
        v: VERSION,
        id: "r1".into(),
        from: "n1".into(),
        reply: "ferry.reply.n1.x".into(),
        body,
    }
}

fn round_trip(body: NodeRequest) {
    let req = request(body);
    // The kind it names in logs is the kind it travels as.
    let tagged = serde_json::to_value(&req.body).expect("JSON");
    assert_eq!(tagged["kind"], req.body.kind(), "{tagged}");
    let text = serde_json::to_vec(&req).expect("JSON");
    assert_eq!(decode_request(&text).expect("decoded"), req);
}

#[test]
fn every_request_reads_back_as_itself() {
    round_trip(NodeRequest::Inventory);
    round_trip(NodeRequest::Cancel);
    round_trip(NodeRequest::Task(TaskRequest {
        words: vec!["jstart".into(), "jname=web1".into()],
        retry: true,
    }));
    round_trip(NodeRequest::MigrateCheck(MigrateCheck {
        jname: "vm1".into(),
        arch: "x86_64".into(),
        accel: "tcg".into(),
        ram_mib: 256,
        dir_ids: vec![("jails-data".into(), "abc".into())],
        cpu: Some(GuestCpu::default()),
        force: true,
    }));
    round_trip(NodeRequest::MigratePrepare(MigratePrepare {
        jname: "vm1".into(),
        cpu: GuestCpu::default(),
    }));
    round_trip(NodeRequest::MigrateCommit(MigrateCommit {
        jname: "vm1".into(),
        verify_ms: 1000,
    }));
    round_trip(NodeRequest::MigrateAbort(MigrateAbort {
        jname: "vm1".into(),
    }));
}

#[test]
fn a_request_travels_with_its_kind_named() {
    let text = serde_json::to_string(&request(NodeRequest::MigrateAbort(MigrateAbort {
        jname: "vm1".into(),
    })))
    .expect("JSON");
    assert_eq!(
        text,
        r#"{"v":1,"id":"r1","from":"n1","reply":"ferry.reply.n1.x","body":{"kind":"migrate-abort","jname":"vm1"}}"#
    );
}

fn refused(body: &str) -> String {
    match decode_request(body.as_bytes()) {
        Err(Undecodable::Refused { id, reply, why }) => {
            assert_eq!((id.as_str(), reply.as_str()), ("r1", "t1"));
            why
        }
        other => panic!("{body}: {other:?}"),
    }
}

#[test]
fn a_request_whose_envelope_reads_is_refused_by_name_not_buried() {
    let why = refused(r#"{"v":1,"id":"r1","from":"n","reply":"t1","body":{"kind":"reboot"}}"#);
    assert!(why.contains("reboot"), "{why}");
    let why = refused(r#"{"v":2,"id":"r1","from":"n","reply":"t1","body":{"kind":"inventory"}}"#);
    assert!(why.contains("protocol version 2"), "{why}");
    let why = refused(r#"{"id":"r1","reply":"t1","kind":"inventory"}"#);
    assert!(why.contains("protocol version none"), "{why}");
    // A field the kind does not have.
    let why = refused(
        r#"{"v":1,"id":"r1","from":"n","reply":"t1","body":{"kind":"migrate-abort","jname":"a","force":true}}"#,
    );
    assert!(why.contains("force"), "{why}");
    // A task without its words.
    refused(r#"{"v":1,"id":"r1","from":"n","reply":"t1","body":{"kind":"task"}}"#);
}

#[test]
fn a_message_without_an_envelope_or_a_safe_reply_tube_is_unreadable() {
    for body in [
        &b"not json"[..],
        br#"{"v":1}"#,
        br#"{"v":1,"id":"r1","from":"n","reply":"bad tube!","body":{"kind":"inventory"}}"#,
        br#"[1,2]"#,
    ] {
        assert!(
            matches!(decode_request(body), Err(Undecodable::Unreadable(_))),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let huge = vec![b' '; MAX_REQUEST + 1];
    assert!(matches!(
        decode_request(&huge),
        Err(Undecodable::Unreadable(_))
    ));
}

#[test]
fn replies_read_back_and_a_refusal_keeps_its_exit_code_kind() {
    let replies = [
        NodeReply::MigrateCommit {
            fault: None,
            resumed_us_ago: Some(1234),
        },
        NodeReply::MigrateCommit {
            fault: Some("BUG: x".into()),
            resumed_us_ago: None,
        },
        NodeReply::MigrateCheck {
            problems: vec!["no".into()],
        },
        NodeReply::MigratePrepare {
            uri: "tcp:10.0.0.2:4444".into(),
        },
        NodeReply::MigrateAbort { aborted: true },
        NodeReply::TaskResult(TaskResult {
            task: 7,
            state: "done".into(),
            exit_code: Some(0),
            reason: None,
            output: "ok\n".into(),
        }),
    ];
    for body in replies {
        let tagged = serde_json::to_value(&body).expect("JSON");
        assert_eq!(tagged["kind"], body.kind(), "{tagged}");
        let r = Reply::to("r1", body);
        let text = serde_json::to_vec(&r).expect("JSON");
        assert_eq!(decode_reply(&text).expect("decoded"), r);
    }
    let refusal = Reply::error("r1", exit::REFUSED, "not here");
    let e = refusal.body.into_result("n2").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused);
    assert_eq!(e.to_string(), "node n2: not here");
    let other = Reply {
        v: 9,
        ..Reply::to("r1", NodeReply::MigrateAbort { aborted: false })
    };
    let text = serde_json::to_vec(&other).expect("JSON");
    assert!(matches!(decode_reply(&text), Err(RpcError::Version(9))));
}

#[test]
fn exit_codes_map_back_to_their_kinds() {
    for kind in [
        ErrorKind::Failed,
        ErrorKind::BadInput,
        ErrorKind::NotFound,
        ErrorKind::WrongState,
        ErrorKind::NotOwner,
        ErrorKind::Refused,
    ] {
        assert_eq!(kind_of_code(exit::for_kind(kind)), kind);
    }
}
