//! The messages: a job body as bs_router's clients write it (optionally in
//! a signed envelope), decoded into a typed [`Command`]; and the reply.
//!
//! A plain job is `{"Command": "jstart", "CommandArgs": {"jname": "j1"}}`.
//! A signed job wraps the job's exact text:
//! `{"Signed": "<job JSON as a string>", "Signature": "<hex HMAC-SHA256 of
//! that string's UTF-8 bytes>"}`, and the wrapped job also carries `"Nonce"`
//! (a unique string) and `"Time"` (Unix seconds), so a captured job cannot
//! be put again later.

use std::time::{SystemTime, UNIX_EPOCH};

use ferry_api::{exit, ArgError, Command, RawArgs};
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// How far a signed job's `Time` may be from the agent's clock, in seconds.
pub const MAX_SKEW: u64 = 300;
/// The longest `Nonce` accepted.
const MAX_NONCE: usize = 128;

/// A job that can run.
#[derive(Debug, Clone)]
pub struct Request {
    /// The typed command.
    pub command: Command,
    /// Whether the command only reads (a listing): running it again is
    /// harmless, so it needs no journal.
    pub read_only: bool,
    /// The signed job's nonce.
    pub nonce: Option<String>,
}

/// Why a job is not run. Every case is answered with an error reply and
/// the job is buried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the job body is {size} bytes, more than this agent's max_job_size of {max}")]
    TooLarge { size: u64, max: usize },
    #[error("the job body is not UTF-8")]
    NotUtf8,
    #[error("the job body is not JSON: {0}")]
    NotJson(String),
    #[error("the job body must be a JSON object")]
    NotAnObject,
    #[error("unknown field {0:?} in the job (expected Command and CommandArgs)")]
    UnknownField(String),
    #[error("the job has no Command")]
    NoCommand,
    #[error("Command must be a string")]
    CommandNotString,
    #[error("{0}")]
    Args(#[from] ArgError),
    #[error("{0} is not run through the broker ({1})")]
    NotOverBroker(&'static str, &'static str),
    #[error("this agent only runs signed jobs, and this one is not signed")]
    Unsigned,
    #[error("the job is signed, but this agent has no key (hmac_key_file) to check it")]
    NoKey,
    #[error("the signed envelope must be exactly {{\"Signed\": string, \"Signature\": hex}}")]
    BadEnvelope,
    #[error("the signature does not match the job")]
    BadSignature,
    #[error("a signed job needs a Nonce (1 to {MAX_NONCE} characters) and a Time (Unix seconds)")]
    NoNonce,
    #[error("the signed job's Time is {0} s away from this agent's clock (at most {MAX_SKEW})")]
    Expired(u64),
    #[error("this signed job was already put as job {0}: a replay")]
    Replayed(String),
}

impl Rejection {
    /// The reply's `ErrCode`: signature failures are refusals (6), the rest
    /// bad input (2).
    pub fn code(&self) -> i32 {
        match self {
            Rejection::NotOverBroker(..)
            | Rejection::Unsigned
            | Rejection::NoKey
            | Rejection::BadEnvelope
            | Rejection::BadSignature
            | Rejection::NoNonce
            | Rejection::Expired(_)
            | Rejection::Replayed(_) => exit::REFUSED,
            _ => exit::USAGE,
        }
    }
}

/// Decode a job body. With a `key`, only a signed job whose signature,
/// nonce and time check out is accepted; `now` is Unix seconds.
pub fn decode(body: &[u8], key: Option<&[u8]>, now: u64) -> Result<Request, Rejection> {
    let text = std::str::from_utf8(body).map_err(|_| Rejection::NotUtf8)?;
    let value: Value = serde_json::from_str(text).map_err(|e| Rejection::NotJson(e.to_string()))?;
    let Value::Object(outer) = value else {
        return Err(Rejection::NotAnObject);
    };
    let (job, nonce) = if outer.contains_key("Signature") || outer.contains_key("Signed") {
        let key = key.ok_or(Rejection::NoKey)?;
        let (job, nonce) = open_envelope(&outer, key, now)?;
        (job, Some(nonce))
    } else if key.is_some() {
        return Err(Rejection::Unsigned);
    } else {
        (outer, None)
    };
    let mut name = None;
    let mut args = Value::Null;
    for (k, v) in job {
        match k.as_str() {
            "Command" => name = Some(v),
            "CommandArgs" => args = v,
            "Nonce" | "Time" if nonce.is_some() => {}
            _ => return Err(Rejection::UnknownField(k.chars().take(64).collect())),
        }
    }
    let name = match name {
        None => return Err(Rejection::NoCommand),
        Some(Value::String(s)) => s,
        Some(_) => return Err(Rejection::CommandNotString),
    };
    let command = Command::parse(&name, RawArgs::from_json(&args)?)?;
    let policy = command.policy();
    if let Some(why) = policy.not_over_broker {
        return Err(Rejection::NotOverBroker(command.name(), why));
    }
    Ok(Request {
        read_only: policy.read_only,
        command,
        nonce,
    })
}

/// Check a signed envelope; returns the wrapped job and its nonce.
fn open_envelope(
    outer: &Map<String, Value>,
    key: &[u8],
    now: u64,
) -> Result<(Map<String, Value>, String), Rejection> {
    let (Some(Value::String(signed)), Some(Value::String(sig)), 2) =
        (outer.get("Signed"), outer.get("Signature"), outer.len())
    else {
        return Err(Rejection::BadEnvelope);
    };
    let sig = hex::decode(sig).map_err(|_| Rejection::BadSignature)?;
    let mut mac = HmacSha256::new_from_slice(key).map_err(|_| Rejection::NoKey)?;
    mac.update(signed.as_bytes());
    // Constant time.
    mac.verify_slice(&sig)
        .map_err(|_| Rejection::BadSignature)?;
    let inner: Value =
        serde_json::from_str(signed).map_err(|e| Rejection::NotJson(e.to_string()))?;
    let Value::Object(job) = inner else {
        return Err(Rejection::NotAnObject);
    };
    let nonce = match job.get("Nonce") {
        Some(Value::String(n)) if !n.is_empty() && n.chars().count() <= MAX_NONCE => n.clone(),
        _ => return Err(Rejection::NoNonce),
    };
    let time = job
        .get("Time")
        .and_then(Value::as_u64)
        .ok_or(Rejection::NoNonce)?;
    let skew = now.abs_diff(time);
    if skew > MAX_SKEW {
        return Err(Rejection::Expired(skew));
    }
    Ok((job, nonce))
}

/// The SHA-256 of a body, hex: tells a redelivered job from a new job
/// that reuses an id (a broker restarted without its binlog).
pub fn digest(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// Wrap a job (a JSON object) in a signed envelope, adding a fresh nonce
/// and the time.
pub fn sign(mut job: Map<String, Value>, key: &[u8], now: u64) -> Vec<u8> {
    job.insert(
        "Nonce".into(),
        Value::String(uuid::Uuid::new_v4().to_string()),
    );
    job.insert("Time".into(), Value::from(now));
    let signed = Value::Object(job).to_string();
    let sig = hex::encode(mac(key, signed.as_bytes()));
    serde_json::json!({ "Signed": signed, "Signature": sig })
        .to_string()
        .into_bytes()
}

fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length; new_from_slice cannot fail.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A reply, as bs_router writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Reply {
    /// The exit code the command line would give (0 success).
    pub err_code: i32,
    /// What the command line would print (the error, for a failure).
    pub message: String,
    /// Below 100 while the command runs; 100 in the one final reply.
    pub progress: u8,
    /// bs_router's env GUID; ferry envs have none, so empty.
    #[serde(default)]
    pub guid: String,
    /// bs_router's disk GUID; empty, as for `Guid`.
    #[serde(default)]
    pub dsk_guid: String,
    /// `bstart`: the VNC address of each started VM that has one
    /// (`127.0.0.1:PORT`, comma-separated); empty otherwise.
    #[serde(default)]
    pub vnc: String,
}

impl Reply {
    /// A final reply.
    pub fn done(err_code: i32, message: impl Into<String>) -> Reply {
        Reply {
            err_code,
            message: message.into(),
            progress: 100,
            guid: String::new(),
            dsk_guid: String::new(),
            vnc: String::new(),
        }
    }

    /// A progress reply (below 100).
    pub fn progress(percent: u8, message: impl Into<String>) -> Reply {
        Reply {
            progress: percent.min(99),
            ..Reply::done(0, message)
        }
    }

    /// The JSON text put on the reply tube.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The JSON text, at most `max` bytes: a longer `Message` (a listing of
    /// thousands of envs) is cut, and says so, since beanstalkd refuses
    /// jobs above its `-z`.
    pub fn to_json_within(&self, max: usize) -> String {
        let mut text = self.to_json();
        let mut keep = self.message.len();
        while text.len() > max && keep > 0 {
            keep = keep.saturating_sub(text.len() - max + 64);
            let mut cut = keep;
            while !self.message.is_char_boundary(cut) {
                cut -= 1;
            }
            let message = format!(
                "{}\n... (cut: the whole message is {} bytes)",
                &self.message[..cut],
                self.message.len()
            );
            text = Reply {
                message,
                ..self.clone()
            }
            .to_json();
        }
        text
    }

    /// Parse a reply (the client's side); `None` if it is not one.
    pub fn parse(body: &[u8]) -> Option<Reply> {
        serde_json::from_slice(body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123";

    fn job(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn decodes_bs_router_bodies_with_strings_or_numbers() {
        let r = decode(
            br#"{"Command":"bcreate","CommandArgs":{"jname":"vm1","vm_cpus":2,"imgsize":"1g"}}"#,
            None,
            0,
        )
        .unwrap();
        let Command::Bcreate(a) = r.command else {
            panic!()
        };
        assert_eq!(a.vm_cpus, 2);
        assert!(!r.read_only);
        let r = decode(br#"{"Command":"jls"}"#, None, 0).unwrap();
        assert!(r.read_only);
    }

    #[test]
    fn hostile_bodies_are_rejected_with_a_reason() {
        let cases: &[(&[u8], i32)] = &[
            (b"\xff\xfe", exit::USAGE),
            (b"not json", exit::USAGE),
            (b"[1,2]", exit::USAGE),
            (br#"{"Command":"rm -rf /"}"#, exit::USAGE),
            (br#"{"Command":5}"#, exit::USAGE),
            (br#"{"CommandArgs":{}}"#, exit::USAGE),
            (
                br#"{"Command":"jstart","CommandArgs":{"jname":"../x"}}"#,
                exit::USAGE,
            ),
            (
                br#"{"Command":"jstart","CommandArgs":{"jname":"a;reboot"}}"#,
                exit::USAGE,
            ),
            (
                br#"{"Command":"jstart","CommandArgs":{"jname":["a"]}}"#,
                exit::USAGE,
            ),
            (
                br#"{"Command":"jstart","CommandArgs":"jname=a"}"#,
                exit::USAGE,
            ),
            (br#"{"Command":"jls","Extra":1}"#, exit::USAGE),
            (br#"{"Command":"daemon"}"#, exit::REFUSED),
            (
                br#"{"Command":"jexec","CommandArgs":{"jname":"a","cmd":"ls"}}"#,
                exit::REFUSED,
            ),
        ];
        for (body, code) in cases {
            let e = decode(body, None, 0).unwrap_err();
            assert_eq!(e.code(), *code, "{}: {e}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn signed_jobs_are_checked() {
        let now = 1_800_000_000;
        let body = sign(job(serde_json::json!({"Command": "jls"})), KEY, now);
        let r = decode(&body, Some(KEY), now + 10).unwrap();
        assert!(r.nonce.is_some());
        // Unsigned, when a key is set; signed, when none is.
        assert_eq!(
            decode(br#"{"Command":"jls"}"#, Some(KEY), now).unwrap_err(),
            Rejection::Unsigned
        );
        assert_eq!(decode(&body, None, now).unwrap_err(), Rejection::NoKey);
        // Another key, a changed job, an old job.
        assert_eq!(
            decode(&body, Some(b"another key of 16+ bytes"), now).unwrap_err(),
            Rejection::BadSignature
        );
        let text = String::from_utf8(body.clone()).unwrap();
        let forged = text.replace("jls", "bls");
        assert_eq!(
            decode(forged.as_bytes(), Some(KEY), now).unwrap_err(),
            Rejection::BadSignature
        );
        assert!(matches!(
            decode(&body, Some(KEY), now + MAX_SKEW + 1),
            Err(Rejection::Expired(_))
        ));
        // A signed job without a nonce is refused even with a good MAC.
        let signed = r#"{"Command":"jls","Time":1800000000}"#;
        let sig = hex::encode(mac(KEY, signed.as_bytes()));
        let env = serde_json::json!({"Signed": signed, "Signature": sig}).to_string();
        assert_eq!(
            decode(env.as_bytes(), Some(KEY), now).unwrap_err(),
            Rejection::NoNonce
        );
    }

    #[test]
    fn replies_round_trip_with_bs_router_field_names() {
        let r = Reply::progress(120, "half");
        let text = r.to_json();
        assert!(text.contains("\"ErrCode\":0") && text.contains("\"Progress\":99"));
        assert!(text.contains("\"DskGuid\":\"\"") && text.contains("\"Vnc\":\"\""));
        assert_eq!(Reply::parse(text.as_bytes()), Some(r));
        assert_eq!(Reply::parse(b"{}"), None);
    }

    #[test]
    fn a_long_reply_is_cut_to_fit_the_broker() {
        let long = Reply::done(0, "é\"x".repeat(30_000));
        let text = long.to_json_within(65_535);
        assert!(text.len() <= 65_535, "{}", text.len());
        let r = Reply::parse(text.as_bytes()).unwrap();
        assert!(r
            .message
            .ends_with("(cut: the whole message is 120000 bytes)"));
        let short = Reply::done(0, "ok");
        assert_eq!(short.to_json_within(65_535), short.to_json());
    }
}
