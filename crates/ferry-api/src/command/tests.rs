use super::*;

fn parse(words: &[&str]) -> Result<Command, ArgError> {
    Command::parse(words[0], RawArgs::from_words(words[1..].iter().copied())?)
}

#[test]
fn parses_cbsd_grammar() {
    let Command::Jstart(a) = parse(&["jstart", "jname=jail*"]).unwrap() else {
        panic!()
    };
    assert!(a.jname.is_glob());
    let Command::Jcreate(c) = parse(&["jcreate", "jname=j1", "ip4_addr=10.0.0.2/24"]).unwrap()
    else {
        panic!()
    };
    assert_eq!(c.base.as_str(), "busybox");
    assert_eq!(c.mnt_timeout, 60);
    assert_eq!(c.ip4_addr.render(), "10.0.0.2/24");
    let Command::Jexec(e) = parse(&["jexec", "jname=j1", "ls", "-la"]).unwrap() else {
        panic!()
    };
    assert_eq!(e.cmd, ["ls", "-la"]);
}

#[test]
fn errors_name_the_key() {
    let e = parse(&["jstart", "jname=j1", "colour=red"]).unwrap_err();
    assert_eq!(
        e,
        ArgError::UnknownKey {
            command: "jstart",
            key: "colour".into()
        }
    );
    assert!(e.to_string().contains("colour"));
    let e = parse(&["jcreate", "jname=j1", "mnt_timeout=abc"]).unwrap_err();
    assert!(e.to_string().contains("mnt_timeout"), "{e}");
    let e = parse(&["jcreate", "jname=../x"]).unwrap_err();
    assert!(e.to_string().contains("jname"), "{e}");
    assert_eq!(
        parse(&["jstart"]).unwrap_err(),
        ArgError::Missing { key: "jname" }
    );
    assert!(matches!(
        parse(&["jstrat"]),
        Err(ArgError::UnknownCommand(_))
    ));
    assert!(matches!(
        parse(&["jstart", "jname=a", "oops"]),
        Err(ArgError::UnexpectedWords { .. })
    ));
}

#[test]
fn every_command_has_docs_and_unique_keys() {
    for spec in COMMANDS {
        assert!(!spec.summary().is_empty(), "{}", spec.name);
        let args = (spec.args)();
        for a in &args {
            assert!(!a.doc.is_empty(), "{}.{}", spec.name, a.key);
        }
        let mut keys: Vec<_> = args.iter().map(|a| a.key).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), args.len(), "{}", spec.name);
    }
}

#[test]
fn a_task_carries_a_whole_command_line() {
    let Command::Task(t) = parse(&["task", "mode=new", "after=3", "jstart", "jname=web1"]).unwrap()
    else {
        panic!()
    };
    assert_eq!((t.mode, t.after), (TaskMode::New, Some(3)));
    assert_eq!(t.cmd, ["jstart", "jname=web1"]);
    assert!(matches!(
        Command::parse_words(&t.cmd).unwrap(),
        Command::Jstart(_)
    ));
    assert!(Command::parse_words(&[]).is_err());
    assert!(parse(&["task", "mode=cancel", "id=abc"]).is_err());
    assert!(parse(&["task", "autoflush=3"]).is_err());
    let raw = RawArgs::from_json(&serde_json::json!({"mode": "new", "cmd": ["jls"]})).unwrap();
    let Command::Task(t) = Command::parse("task", raw).unwrap() else {
        panic!()
    };
    assert_eq!(t.cmd, ["jls"]);
}

#[test]
fn policies_are_declared_beside_the_commands() {
    let policy = |w: &[&str]| parse(w).unwrap().policy();
    assert!(policy(&["jls"]).read_only);
    assert!(!policy(&["jstart", "jname=a"]).read_only);
    assert!(policy(&["base", "mode=list"]).read_only);
    assert!(!policy(&["base", "mode=remove", "name=b"]).read_only);
    assert!(policy(&["daemon"]).not_queueable.is_some());
    assert!(policy(&["daemon"]).not_over_broker.is_some());
    assert!(policy(&["jexec", "jname=a"]).not_over_broker.is_some());
    assert!(policy(&["jexec", "jname=a"]).not_queueable.is_none());
    assert!(policy(&["taskls"]).not_queueable.is_some());
    assert!(policy(&["task", "mode=list"]).not_queueable.is_some());
    let run = policy(&["task", "mode=run", "id=1", "run=1"]);
    assert!(run.not_over_broker.is_some() && run.not_queueable.is_some());
    assert!(policy(&["task", "mode=new", "jls"])
        .not_over_broker
        .is_none());
    // A broker job reads no file of the node's by path.
    assert!(policy(&["image", "mode=add", "name=i", "path=/etc/shadow"])
        .not_over_broker
        .is_some());
    assert!(
        policy(&["image", "mode=add", "name=i", "url=https://x/i.qcow2"])
            .not_over_broker
            .is_none()
    );
    assert!(policy(&["jimport", "jname=/etc/shadow"])
        .not_over_broker
        .is_some());
    assert!(policy(&["bimport", "jname=/tmp/x.img"])
        .not_over_broker
        .is_some());
    assert!(policy(&["jimport", "jname=web1"]).not_over_broker.is_none());
}

#[test]
fn broker_json_reaches_the_same_commands() {
    let raw = RawArgs::from_json(&serde_json::json!({"jname": "j1", "mnt_timeout": 5})).unwrap();
    let Command::Jcreate(c) = Command::parse("jcreate", raw).unwrap() else {
        panic!()
    };
    assert_eq!(c.mnt_timeout, 5);
}

#[test]
fn a_command_built_in_code_reads_back_from_its_words() {
    for words in [
        &["jregister", "jname=web1", "force=1"][..],
        &["jstart", "jname=web*"],
        &[
            "jcreate",
            "jname=j1",
            "ip4_addr=10.0.0.2/24,10.0.1.3/16",
            "mnt_start=/x/h",
        ],
        &[
            "bcreate",
            "jname=v1",
            "vm_ram=512m",
            "vm_kernel=/k",
            "imgtype=raw",
        ],
        &[
            "task", "mode=new", "node=n2", "jexec", "jname=a", "echo", "a b",
        ],
        &["bmigrate", "jname=v1", "node=n2", "bandwidth=40"],
        &["initenv"],
    ] {
        let cmd = parse(words).unwrap();
        let again = Command::parse_words(&cmd.to_words()).unwrap();
        // The same values (every key is given explicitly the second time).
        assert_eq!(again.to_words(), cmd.to_words(), "{words:?}");
    }
    let built = Command::Jregister(JregisterArgs {
        jname: NameSelector::One(Jname::new("web1").unwrap()),
        force: false,
        lease_time: 30,
        given: Given::default(),
    });
    assert_eq!(
        built.to_words(),
        ["jregister", "jname=web1", "force=0", "lease_time=30"]
    );
}

#[test]
fn a_command_knows_which_keys_it_was_given() {
    let Command::Jcreate(a) = parse(&["jcreate", "jname=j1", "base=deb"]).unwrap() else {
        panic!()
    };
    assert!(a.given.contains("jname") && a.given.contains("base"));
    assert!(!a.given.contains("baserw") && !a.given.contains("jail_profile"));
    let Command::Task(t) = parse(&["task", "mode=new", "jls"]).unwrap() else {
        panic!()
    };
    assert!(t.given.contains("cmd") && !t.given.contains("node"));
}
