//! `ferry client`: puts one job on a config's tube (signed when the config
//! has a key), then reads its reply tube until the final reply comes or
//! the time is up. [`Client`] keeps its connection, so a program (or the
//! benchmark) can send many jobs over one.

use std::time::{Duration, Instant};

use ferry_broker::{Broker, Error as BrokerError, Reconnecting};
use serde_json::Value;

use crate::config::Config;
use crate::job::{self, Reply};

/// Priority of jobs (beanstalkd's "urgent" bound; bs_router uses 1 for
/// replies).
const JOB_PRIORITY: u32 = 1024;

/// Why no final reply came.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the body must be a JSON object to be signed")]
    NotAnObject,
    #[error("no final reply to job {job} on {tube} within {after:?}")]
    TimedOut {
        job: u64,
        tube: String,
        after: Duration,
    },
    #[error("broker")]
    Broker(#[from] BrokerError),
}

/// A connection to a config's broker, sending jobs to its tube.
#[derive(Debug)]
pub struct Client {
    cfg: Config,
    broker: Reconnecting,
    /// The tube watched now (only one at a time).
    watching: String,
}

impl Client {
    /// Connect to the config's broker and use its tube.
    pub fn connect(cfg: &Config) -> Result<Client, ClientError> {
        let (opts, policy) = crate::agent::connect_options(cfg);
        let mut broker = Reconnecting::connect(cfg.uri.clone(), opts, policy)?;
        broker.use_tube(&cfg.tube)?;
        Ok(Client {
            cfg: cfg.clone(),
            broker,
            watching: "default".to_owned(),
        })
    }

    /// Put `body` (signed when the config has a key) and wait up to
    /// `timeout` for its final reply; `progress` sees each progress reply.
    pub fn call(
        &mut self,
        body: &[u8],
        timeout: Duration,
        mut progress: impl FnMut(&Reply),
    ) -> Result<Reply, ClientError> {
        let deadline = Instant::now() + timeout;
        let signed;
        let body = match &self.cfg.key {
            None => body,
            Some(key) => {
                let Ok(Value::Object(job)) = serde_json::from_slice(body) else {
                    return Err(ClientError::NotAnObject);
                };
                signed = job::sign(job, key, job::unix_now());
                &signed
            }
        };
        let id = self
            .broker
            .put(body, JOB_PRIORITY, Duration::ZERO, self.cfg.job_ttr)?;
        let tube = self.cfg.reply_tube(id);
        self.broker.watch_own(&tube)?;
        let previous = std::mem::replace(&mut self.watching, tube.clone());
        self.broker.ignore(&previous)?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::TimedOut {
                    job: id.0,
                    tube,
                    after: timeout,
                });
            }
            let Some(r) = self.broker.reserve(left)? else {
                continue;
            };
            self.broker.delete(r.id)?;
            match Reply::parse(&r.body) {
                Some(reply) if reply.progress >= 100 => return Ok(reply),
                Some(reply) => progress(&reply),
                None => tracing::warn!(tube, "not a reply: {}", String::from_utf8_lossy(&r.body)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_names_the_job_and_its_reply_tube() {
        let e = ClientError::TimedOut {
            job: 9,
            tube: "p_result_id9".into(),
            after: Duration::from_secs(3),
        };
        assert_eq!(
            e.to_string(),
            "no final reply to job 9 on p_result_id9 within 3s"
        );
    }
}
