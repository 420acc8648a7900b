//! The agent's and the client's config: bs_router's `config.json` keys, plus
//! a few of ferry's own (all optional). Keys bs_router's tools read that
//! ferry has no use for (`cbsdcolor`, `recomendation`, `server_url` ...)
//! are accepted and ignored, so one file serves both.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_broker::{check_tube, BrokerUri};
use serde::Deserialize;

/// Why a config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid config")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {key}: {reason}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
}

/// The `beanstalkd` object, as bs_router spells it.
#[derive(Debug, Deserialize)]
struct RawBeanstalkd {
    uri: String,
    tube: String,
    reply_tube_prefix: String,
    reconnect_timeout: Option<u64>,
    reserve_timeout: Option<u64>,
    publish_timeout: Option<u64>,
    #[allow(dead_code)]
    logdir: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Raw {
    cbsdenv: PathBuf,
    broker: Option<String>,
    logfile: Option<PathBuf>,
    beanstalkd: RawBeanstalkd,
    concurrency: Option<usize>,
    hmac_key_file: Option<PathBuf>,
    job_ttr: Option<u64>,
    max_job_size: Option<usize>,
}

/// A checked config.
#[derive(Clone)]
pub struct Config {
    /// The workdir the agent serves (`cbsdenv`).
    pub workdir: PathBuf,
    /// Where the agent logs (`logfile`); stderr when absent or
    /// `/dev/stdout`/`/dev/stderr`.
    pub logfile: Option<PathBuf>,
    /// The broker (`beanstalkd.uri`: `host:port` or `beanstalk://`, or
    /// `nats://host:port,...` with `"broker": "nats"`).
    pub uri: BrokerUri,
    /// The tube jobs arrive on (`beanstalkd.tube`).
    pub tube: String,
    /// Replies go to this prefix followed by the job id.
    pub reply_tube_prefix: String,
    /// How long to keep reconnecting before logging a give-up and starting
    /// over (`beanstalkd.reconnect_timeout`, default 5 s).
    pub reconnect_timeout: Duration,
    /// One reserve waits this long (`beanstalkd.reserve_timeout`, default
    /// 5 s); it also bounds how long a stop signal waits.
    pub reserve_timeout: Duration,
    /// The TTR of reply jobs (`beanstalkd.publish_timeout`, default 5 s, as
    /// bs_router puts them).
    pub publish_timeout: Duration,
    /// ferry's own: jobs run at once by one agent (default 4, at most 64).
    pub concurrency: usize,
    /// ferry's own: the shared key jobs are signed with, if any.
    pub key: Option<Vec<u8>>,
    /// ferry's own: the TTR the client puts jobs with (default 60 s); an
    /// agent that dies mid-job gives the job back after it.
    pub job_ttr: Duration,
    /// ferry's own: the largest job body the agent reads and the largest
    /// reply it puts (default 65,535, beanstalkd's default `-z`); larger
    /// jobs are answered with an error and buried, longer replies cut.
    pub max_job_size: usize,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("workdir", &self.workdir)
            .field("uri", &self.uri.to_string())
            .field("tube", &self.tube)
            .field("reply_tube_prefix", &self.reply_tube_prefix)
            .field("concurrency", &self.concurrency)
            .field("signed", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

/// The shortest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 16;

impl Config {
    /// Read and check a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Check a config's text; `path` names it in errors and anchors a
    /// relative `hmac_key_file`.
    pub fn parse(path: &Path, text: &[u8]) -> Result<Config, ConfigError> {
        let raw: Raw = serde_json::from_slice(text).map_err(|source| ConfigError::Json {
            path: path.to_owned(),
            source,
        })?;
        let bad = |key, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            reason,
        };
        if let Some(b) = raw
            .broker
            .as_deref()
            .filter(|b| !matches!(*b, "beanstalkd" | "nats"))
        {
            return Err(bad(
                "broker",
                format!("{b:?} is not supported (beanstalkd, or nats with a nats:// uri)"),
            ));
        }
        if !raw.cbsdenv.is_absolute() {
            return Err(bad("cbsdenv", "must be an absolute path".into()));
        }
        let b = raw.beanstalkd;
        let uri: BrokerUri = b
            .uri
            .parse()
            .map_err(|e: ferry_broker::Error| bad("beanstalkd.uri", e.to_string()))?;
        let nats = raw.broker.as_deref() == Some("nats");
        if nats != (uri.scheme == ferry_broker::Scheme::Nats) {
            return Err(bad(
                "beanstalkd.uri",
                "\"broker\": \"nats\" goes with a nats:// uri, and a nats:// uri with it".into(),
            ));
        }
        check_tube(&b.tube).map_err(|e| bad("beanstalkd.tube", e.to_string()))?;
        // The longest reply tube: the prefix and the largest job id.
        check_tube(&format!("{}{}", b.reply_tube_prefix, u64::MAX))
            .map_err(|e| bad("beanstalkd.reply_tube_prefix", e.to_string()))?;
        let secs = |key, v: Option<u64>, default: u64| match v.unwrap_or(default) {
            0 => Err(bad(key, "must be at least 1 (seconds)".into())),
            n if n > u64::from(u32::MAX) => Err(bad(key, "too large".into())),
            n => Ok(Duration::from_secs(n)),
        };
        let concurrency = raw.concurrency.unwrap_or(4);
        if !(1..=64).contains(&concurrency) {
            return Err(bad("concurrency", "must be 1 to 64".into()));
        }
        let max_job_size = raw.max_job_size.unwrap_or(65_535);
        if !(1024..=1 << 30).contains(&max_job_size) {
            return Err(bad("max_job_size", "must be 1 KiB to 1 GiB".into()));
        }
        let key = match raw.hmac_key_file {
            None => None,
            Some(f) => Some(read_key(&path.parent().unwrap_or(Path::new("/")).join(f))?),
        };
        Ok(Config {
            workdir: raw.cbsdenv,
            logfile: raw
                .logfile
                .filter(|f| f != Path::new("/dev/stdout") && f != Path::new("/dev/stderr")),
            uri,
            tube: b.tube,
            reply_tube_prefix: b.reply_tube_prefix,
            reconnect_timeout: secs("beanstalkd.reconnect_timeout", b.reconnect_timeout, 5)?,
            reserve_timeout: secs("beanstalkd.reserve_timeout", b.reserve_timeout, 5)?,
            publish_timeout: secs("beanstalkd.publish_timeout", b.publish_timeout, 5)?,
            concurrency,
            key,
            job_ttr: secs("job_ttr", raw.job_ttr, 60)?,
            max_job_size,
        })
    }

    /// The tube the replies to job `id` go to.
    pub fn reply_tube(&self, id: ferry_broker::JobId) -> String {
        format!("{}{}", self.reply_tube_prefix, id)
    }
}

/// A key file: its bytes, less one trailing newline; at least
/// [`MIN_KEY_LEN`] bytes, and not readable by others.
fn read_key(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let bad = |reason: String| ConfigError::Invalid {
        path: path.to_owned(),
        key: "hmac_key_file",
        reason,
    };
    let read = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(bad("the key file is readable by everyone".into()));
    }
    let mut key = std::fs::read(path).map_err(read)?;
    if key.last() == Some(&b'\n') {
        key.pop();
    }
    if key.len() < MIN_KEY_LEN {
        return Err(bad(format!("the key is shorter than {MIN_KEY_LEN} bytes")));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"cbsdenv": "/usr/jails", "cbsdcolor": false, "broker": "beanstalkd",
        "logfile": "/dev/stdout",
        "beanstalkd": {"uri": "127.0.0.1:11300", "tube": "cbsd_pool1",
          "reply_tube_prefix": "cbsd_pool1_result_id", "reconnect_timeout": 5,
          "reserve_timeout": 5, "publish_timeout": 5, "logdir": "/var/log/cbsdmq"}}"#;

    #[test]
    fn reads_bs_routers_sample_config() {
        let c = Config::parse(Path::new("c.json"), SAMPLE.as_bytes()).unwrap();
        assert_eq!(c.workdir, Path::new("/usr/jails"));
        assert_eq!(c.tube, "cbsd_pool1");
        assert_eq!(
            c.reply_tube(ferry_broker::JobId(7)),
            "cbsd_pool1_result_id7"
        );
        assert_eq!(c.reserve_timeout, Duration::from_secs(5));
        assert_eq!((c.concurrency, c.key.is_none()), (4, true));
        assert!(c.logfile.is_none());
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for (from, to, key) in [
            ("\"beanstalkd\",", "\"amqp\",", "broker"),
            ("\"/usr/jails\"", "\"usr/jails\"", "cbsdenv"),
            ("\"cbsd_pool1\"", "\"-pool\"", "beanstalkd.tube"),
            (
                "\"reserve_timeout\": 5",
                "\"reserve_timeout\": 0",
                "reserve_timeout",
            ),
            ("\"127.0.0.1:11300\"", "\"http://x\"", "beanstalkd.uri"),
        ] {
            let text = SAMPLE.replacen(from, to, 1);
            let e = Config::parse(Path::new("c.json"), text.as_bytes()).unwrap_err();
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
        let text = SAMPLE.replace("\"tube\": \"cbsd_pool1\"", "\"tube\": 5");
        assert!(Config::parse(Path::new("c.json"), text.as_bytes()).is_err());
    }

    #[test]
    fn a_key_file_must_be_private_and_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        let cfg = SAMPLE.replacen('{', r#"{"hmac_key_file": "key","#, 1);
        let path = dir.path().join("c.json");
        std::fs::write(&key, "0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Config::parse(&path, cfg.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("readable by everyone"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::parse(&path, cfg.as_bytes()).unwrap();
        assert_eq!(c.key.as_deref(), Some(&b"0123456789abcdef"[..]));
        std::fs::write(&key, "short").unwrap();
        assert!(Config::parse(&path, cfg.as_bytes()).is_err());
    }
}
