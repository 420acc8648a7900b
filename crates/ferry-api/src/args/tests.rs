use super::*;

#[test]
fn words_split_into_pairs_and_rest() {
    let raw = RawArgs::from_words(["jname=j1", "ls", "-la"]).unwrap();
    assert_eq!(raw.pairs.get("jname").map(String::as_str), Some("j1"));
    assert_eq!(raw.rest, ["ls", "-la"]);
    let raw = RawArgs::from_words(["jname=j1", "--", "a=b"]).unwrap();
    assert_eq!(raw.rest, ["a=b"]);
    assert_eq!(
        RawArgs::from_words(["a=1", "a=2"]),
        Err(ArgError::Duplicate { key: "a".into() })
    );
}

#[test]
fn json_values_may_be_numbers() {
    let v = serde_json::json!({"jname": "j1", "vm_cpus": 2, "astart": true, "cmd": ["ls", "-l"]});
    let raw = RawArgs::from_json(&v).unwrap();
    assert_eq!(raw.pairs["vm_cpus"], "2");
    assert_eq!(raw.pairs["astart"], "1");
    assert_eq!(raw.rest, ["ls", "-l"]);
    assert!(RawArgs::from_json(&serde_json::json!({"a": {"b": 1}})).is_err());
    assert!(RawArgs::from_json(&serde_json::json!([1])).is_err());
    assert!(RawArgs::from_json(&serde_json::json!({"a;b": 1})).is_err());
}

#[test]
fn an_overlong_multibyte_value_is_refused_without_panicking() {
    // Byte 32 falls inside a three-byte character.
    let v = format!("ab{}", "€".repeat(MAX_VALUE_LEN));
    let e = RawArgs::from_json(&serde_json::json!({ "jname": v })).unwrap_err();
    assert!(e.to_string().contains("longer than"), "{e}");
}

#[test]
fn typed_values() {
    assert!(u32::from_arg("vm_cpus", "abc").is_err());
    assert!(u32::from_arg("vm_cpus", "-1").is_err());
    assert!(bool::from_arg("astart", "2").is_err());
    assert_eq!(Ip4List::parse("10.0.0.2").unwrap().render(), "10.0.0.2/24");
    assert!(Ip4List::parse("10.0.0.300/24").is_err());
    assert!(PathBuf::from_arg("path", "rel/x").is_err());
    assert!(PathBuf::from_arg("path", "/a/../b").is_err());
    assert_eq!(
        HookPath::from_arg("mnt_start", "0").unwrap(),
        HookPath(None)
    );
}
