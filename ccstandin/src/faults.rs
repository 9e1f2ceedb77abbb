//! The faults a test can ask for through `/_standin/faults`: counters of the next requests
//! (or jobs) to fail one way or another, and a pace for blobstore downloads.
//!
//! Owns the fault set and its merge rules. Must never decide on its own to fail anything: a
//! counter only goes down when a handler [`take`](Faults::take)s from it.

use serde_json::{Value, json};

/// What to break, and how often.
#[derive(Debug, Default, Clone)]
pub(crate) struct Faults {
    /// The next N droplet uploads answer 500 and store nothing.
    pub(crate) upload_500: u64,
    /// The next N upload jobs end FAILED.
    pub(crate) job_failed: u64,
    /// The next N `/v3` requests answer 200 `text/html` garbage.
    pub(crate) garbage: u64,
    /// The next N `/v3` requests answer 401 CF-InvalidAuthToken.
    pub(crate) token_401: u64,
    /// Blobstore downloads paced to this many bytes a second.
    pub(crate) slow_download_bytes_per_s: Option<u64>,
}

/// Which counter to take from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    Upload500,
    JobFailed,
    Garbage,
    Token401,
}

impl Faults {
    /// Take one from `fault`'s counter: true when it was above zero (so this one fails).
    pub(crate) fn take(&mut self, fault: Fault) -> bool {
        let n = match fault {
            Fault::Upload500 => &mut self.upload_500,
            Fault::JobFailed => &mut self.job_failed,
            Fault::Garbage => &mut self.garbage,
            Fault::Token401 => &mut self.token_401,
        };
        if *n > 0 {
            *n -= 1;
            true
        } else {
            false
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "upload_500": self.upload_500,
            "job_failed": self.job_failed,
            "garbage": self.garbage,
            "token_401": self.token_401,
            "slow_download_bytes_per_s": self.slow_download_bytes_per_s,
        })
    }

    /// Merge a JSON object: each key set to a non-negative integer, or cleared with null.
    /// Nothing changes unless every key is good.
    pub(crate) fn merge(&mut self, body: &Value) -> Result<(), String> {
        let Some(obj) = body.as_object() else {
            return Err("faults must be a JSON object".into());
        };
        let mut next = self.clone();
        for (key, value) in obj {
            let n = if value.is_null() {
                None
            } else {
                Some(value.as_u64().ok_or_else(|| {
                    format!("{key}: must be a non-negative integer or null, not {value}")
                })?)
            };
            match key.as_str() {
                "upload_500" => next.upload_500 = n.unwrap_or(0),
                "job_failed" => next.job_failed = n.unwrap_or(0),
                "garbage" => next.garbage = n.unwrap_or(0),
                "token_401" => next.token_401 = n.unwrap_or(0),
                "slow_download_bytes_per_s" => {
                    next.slow_download_bytes_per_s = n.filter(|&n| n > 0);
                }
                _ => return Err(format!("{key}: unknown fault")),
            }
        }
        *self = next;
        Ok(())
    }
}
