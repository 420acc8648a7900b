//! Broker addresses as bs_router's config writes them.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// beanstalkd's well-known port, used when `beanstalk://host` names none.
pub const DEFAULT_PORT: u16 = 11300;

/// Where the broker listens: `host:port`, `[v6addr]:port`,
/// `beanstalk://host:port` (port optional there, default 11300).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUri {
    /// A host name or an IP address (IPv6 without brackets).
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

impl BrokerUri {
    /// The `(host, port)` pair to resolve.
    pub fn host_port(&self) -> (&str, u16) {
        (&self.host, self.port)
    }
}

impl fmt::Display for BrokerUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "beanstalk://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "beanstalk://{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for BrokerUri {
    type Err = Error;

    fn from_str(uri: &str) -> Result<BrokerUri, Error> {
        let bad = |reason| Error::InvalidUri {
            uri: uri.to_owned(),
            reason,
        };
        let (rest, default_port) = match uri.split_once("://") {
            Some(("beanstalk", rest)) => {
                (rest.strip_suffix('/').unwrap_or(rest), Some(DEFAULT_PORT))
            }
            Some(_) => return Err(bad("the only scheme is beanstalk://")),
            None => (uri, None),
        };
        if rest.contains(['/', '?', '#', '@']) || rest.chars().any(char::is_whitespace) {
            return Err(bad("expected host:port, without user, path or query"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            match after.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None if after.is_empty() => (host, None),
                None => return Err(bad("expected :port after ]")),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, _)) if h.contains(':') => {
                    return Err(bad("write an IPv6 address in brackets: [::1]:11300"))
                }
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match (port, default_port) {
            (Some(p), _) if p.bytes().all(|b| b.is_ascii_digit()) => match p.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return Err(bad("the port is not a number from 1 to 65535")),
            },
            (Some(_), _) => return Err(bad("the port is not a number from 1 to 65535")),
            (None, Some(d)) => d,
            (None, None) => return Err(bad("no port (host:port)")),
        };
        Ok(BrokerUri {
            host: host.to_owned(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> (String, u16) {
        let u: BrokerUri = s.parse().expect(s);
        (u.host, u.port)
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(ok("127.0.0.1:11300"), ("127.0.0.1".into(), 11300));
        assert_eq!(ok("beanstalk://10.0.0.1:1234"), ("10.0.0.1".into(), 1234));
        assert_eq!(ok("beanstalk://broker/"), ("broker".into(), 11300));
        assert_eq!(ok("[::1]:11300"), ("::1".into(), 11300));
        assert_eq!(ok("beanstalk://[fe80::1]"), ("fe80::1".into(), 11300));
        assert_eq!(
            "beanstalk://[::1]:5"
                .parse::<BrokerUri>()
                .expect("v6")
                .to_string(),
            "beanstalk://[::1]:5"
        );
    }

    #[test]
    fn rejected_forms() {
        for s in [
            "",
            "host",
            "host:",
            "host:0",
            "host:65536",
            "host:+5",
            "host:-1",
            ":11300",
            "amqp://host:5672",
            "redis://host:6379",
            "beanstalk://host:11300/tube",
            "beanstalk://user@host:11300",
            "::1:11300",
            "[::1",
            "[::1]x",
            "host :11300",
        ] {
            let e = s.parse::<BrokerUri>().expect_err(s);
            assert!(matches!(e, Error::InvalidUri { .. }), "{s}: {e}");
        }
    }
}
