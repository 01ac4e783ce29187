//! How long a network stream (`http`, `s3`, `nbd`) waits on a silent server before the read
//! fails: the defaults, and `RBDM_STREAM_TIMEOUT_SECS` to change them (Ceph's specs have no
//! such field, so it is an environment setting, not part of the spec).
//!
//! What it is for: one place that every network stream asks, so a stalled server (accepts,
//! sends headers, then nothing) fails `execute` with ETIMEDOUT in bounded time instead of
//! hanging it. What it is not: a whole-transfer deadline; a slow but moving server is fine.

use std::time::Duration;

/// Seconds (a decimal number, `0.5` allowed) a stream waits for the next bytes.
pub const STREAM_TIMEOUT_ENV: &str = "RBDM_STREAM_TIMEOUT_SECS";

/// Default wait for the next bytes of a reply.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest wait for a connection (and, for NBD, each step of the handshake).
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A day: anything longer is a typo, not a timeout.
const MAX_SECS: f64 = 86_400.0;

/// The idle timeout: `RBDM_STREAM_TIMEOUT_SECS` when it is a positive number of seconds up to
/// a day, else the default.
pub fn stream_idle_timeout() -> Duration {
    std::env::var(STREAM_TIMEOUT_ENV)
        .ok()
        .and_then(|v| parse_secs(&v))
        .unwrap_or(DEFAULT_IDLE_TIMEOUT)
}

/// The connect timeout: 10 s, or the idle timeout when that is shorter.
pub fn stream_connect_timeout() -> Duration {
    stream_idle_timeout().min(MAX_CONNECT_TIMEOUT)
}

fn parse_secs(v: &str) -> Option<Duration> {
    let secs: f64 = v.trim().parse().ok()?;
    (secs.is_finite() && secs > 0.0 && secs <= MAX_SECS).then(|| Duration::from_secs_f64(secs))
}

/// The error of a read that waited the idle timeout for nothing: ETIMEDOUT, as the kernel
/// reports a dead TCP peer.
pub fn timed_out_error() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::ETIMEDOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sane_values_override() {
        assert_eq!(parse_secs("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_secs(" 0.5 "), Some(Duration::from_millis(500)));
        for bad in ["", "0", "-1", "nan", "inf", "1e9", "x"] {
            assert_eq!(parse_secs(bad), None, "{bad}");
        }
    }
}
