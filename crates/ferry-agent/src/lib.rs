//! ferry's broker front door, compatible with CBSD's bs_router: the agent
//! ([`agent::serve`], `ferry agent -config FILE`) runs jobs from a tube
//! through the same dispatcher as the command line and replies on
//! `<reply_tube_prefix><job id>`; the client ([`client::Client`], `ferry
//! client -config FILE -body JSON`) puts a job and waits for its reply.
//! The message format, the delivery guarantees and signing are described
//! in `docs/broker.md`.

pub mod agent;
pub mod client;
pub mod config;
pub mod job;
pub mod journal;

pub use client::{Client, ClientError};
pub use config::{Config, ConfigError};
pub use job::Reply;

/// Exit codes of `ferry client` beyond the job's own `ErrCode` (0–6).
pub mod exit {
    /// No final reply came within `-timeout`; the job may still run.
    pub const TIMED_OUT: i32 = 124;
    /// The broker could not be reached, or lost the job's put (it may or
    /// may not have been queued).
    pub const BROKER: i32 = 125;
}

#[doc(hidden)]
/// Entry point for the fuzz target; not part of the API.
pub mod fuzzing {
    /// Decode a job body without and with a key; never panics.
    pub fn decode(body: &[u8]) {
        let _ = crate::job::decode(body, None, 0);
        let _ = crate::job::decode(body, Some(b"fuzzing key, 16+ bytes"), 1_800_000_000);
    }
}
