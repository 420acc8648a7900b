//! Broker addresses as bs_router's config writes them.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// beanstalkd's well-known port, used when `beanstalk://host` names none.
pub const DEFAULT_PORT: u16 = 11300;
/// NATS's well-known client port, used when `nats://host` names none.
pub const NATS_PORT: u16 = 4222;

/// Which broker a URI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// One beanstalkd (the default).
    Beanstalk,
    /// A NATS JetStream cluster.
    Nats,
}

/// Where the broker listens: `host:port`, `[v6addr]:port`,
/// `beanstalk://host:port` (port optional there, default 11300), or a
/// NATS JetStream cluster, `nats://host[:port],host[:port],...` (default
/// port 4222).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUri {
    /// Which broker.
    pub scheme: Scheme,
    /// A host name or an IP address (IPv6 without brackets): the first
    /// server.
    pub host: String,
    /// The TCP port of the first server.
    pub port: u16,
    /// The other servers of a NATS cluster.
    pub others: Vec<(String, u16)>,
}

fn show(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl BrokerUri {
    /// The `(host, port)` pair to resolve (the first server).
    pub fn host_port(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    /// Every server, `host:port` (an IPv6 address in brackets).
    pub fn servers(&self) -> Vec<String> {
        std::iter::once((self.host.as_str(), self.port))
            .chain(self.others.iter().map(|(h, p)| (h.as_str(), *p)))
            .map(|(h, p)| show(h, p))
            .collect()
    }
}

impl fmt::Display for BrokerUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scheme {
            Scheme::Beanstalk => write!(f, "beanstalk://{}", show(&self.host, self.port)),
            Scheme::Nats => write!(f, "nats://{}", self.servers().join(",")),
        }
    }
}

/// One `host:port` (or `[v6]:port`), the port defaulting to `default`.
fn host_port(
    item: &str,
    default: Option<u16>,
    bad: &dyn Fn(&'static str) -> Error,
) -> Result<(String, u16), Error> {
    if item.contains(['/', '?', '#', '@']) || item.chars().any(char::is_whitespace) {
        return Err(bad("expected host:port, without user, path or query"));
    }
    let (host, port) = if let Some(v6) = item.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return Err(bad("expected :port after ]")),
        }
    } else {
        match item.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err(bad("write an IPv6 address in brackets: [::1]:11300"))
            }
            Some((h, p)) => (h, Some(p)),
            None => (item, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match (port, default) {
        (Some(p), _) if p.bytes().all(|b| b.is_ascii_digit()) => match p.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(bad("the port is not a number from 1 to 65535")),
        },
        (Some(_), _) => return Err(bad("the port is not a number from 1 to 65535")),
        (None, Some(d)) => d,
        (None, None) => return Err(bad("no port (host:port)")),
    };
    Ok((host.to_owned(), port))
}

impl FromStr for BrokerUri {
    type Err = Error;

    fn from_str(uri: &str) -> Result<BrokerUri, Error> {
        let bad = |reason| Error::InvalidUri {
            uri: uri.to_owned(),
            reason,
        };
        let (scheme, rest, default_port) = match uri.split_once("://") {
            Some(("beanstalk", rest)) => (
                Scheme::Beanstalk,
                rest.strip_suffix('/').unwrap_or(rest),
                Some(DEFAULT_PORT),
            ),
            Some(("nats", rest)) => (
                Scheme::Nats,
                rest.strip_suffix('/').unwrap_or(rest),
                Some(NATS_PORT),
            ),
            Some(_) => return Err(bad("the schemes are beanstalk:// and nats://")),
            None => (Scheme::Beanstalk, uri, None),
        };
        let mut servers = Vec::new();
        for item in rest.split(',') {
            servers.push(host_port(item, default_port, &bad)?);
        }
        if scheme == Scheme::Beanstalk && servers.len() > 1 {
            return Err(bad(
                "beanstalkd is one server; a list of servers is for nats://",
            ));
        }
        let (host, port) = servers.remove(0);
        Ok(BrokerUri {
            scheme,
            host,
            port,
            others: servers,
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
    fn a_nats_cluster_is_a_list_of_servers() {
        let u: BrokerUri = "nats://10.0.0.1:4222,b,[::1]:5".parse().expect("nats");
        assert_eq!(u.scheme, Scheme::Nats);
        assert_eq!(u.servers(), vec!["10.0.0.1:4222", "b:4222", "[::1]:5"]);
        assert_eq!(u.to_string(), "nats://10.0.0.1:4222,b:4222,[::1]:5");
        assert_eq!(u.to_string().parse::<BrokerUri>().expect("again"), u);
        let b: BrokerUri = "127.0.0.1:11300".parse().expect("beanstalk");
        assert_eq!(
            (b.scheme, b.servers()),
            (Scheme::Beanstalk, vec!["127.0.0.1:11300".to_owned()])
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
            "nats://",
            "nats://a:4222,",
            "nats://a:4222,b:x",
            "10.0.0.1:11300,10.0.0.2:11300",
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
