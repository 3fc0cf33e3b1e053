//! Pieces of HTTP retrying that every client of an external system shares.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// Returns the delay that a `Retry-After` header requests: a number of
/// seconds, or an HTTP date (RFC 9110, section 10.2.3) measured from
/// `now_ms`. A date in the past gives no delay; a value that is neither
/// gives `None`, so the caller's own backoff applies.
pub fn retry_after(headers: &HeaderMap, now_ms: i64) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    let date_ms = date.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_millis() as i64;
    Some(Duration::from_millis(date_ms.saturating_sub(now_ms).max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        headers
    }

    /// 1994-11-06T08:49:37Z, the date of RFC 9110's example.
    const EXAMPLE_MS: i64 = 784_111_777_000;

    #[test]
    fn retry_after_reads_seconds() {
        assert_eq!(retry_after(&headers("7"), EXAMPLE_MS), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&headers(" 0 "), EXAMPLE_MS), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_reads_http_date() {
        let date = headers("Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(retry_after(&date, EXAMPLE_MS - 120_000), Some(Duration::from_secs(120)));
        assert_eq!(retry_after(&date, EXAMPLE_MS + 5_000), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_ignores_garbage() {
        assert_eq!(retry_after(&headers("soon"), EXAMPLE_MS), None);
        assert_eq!(retry_after(&HeaderMap::new(), EXAMPLE_MS), None);
    }
}
