//! Wall-clock helpers for the API's three time encodings (unix ms, unix s, RFC 3339).

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn now_secs() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// RFC 3339 with second precision (`2023-11-08T01:52:30Z`), as Fly writes machine timestamps.
pub fn rfc3339_ms(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    t.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

/// RFC 3339 keeping the milliseconds (`2023-11-08T01:52:30.123Z`): where a client compares the
/// time with machine events (unix ms), as `secrets list` does with secrets' `updated_at`.
pub fn rfc3339_millis(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&format)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".to_string())
}

pub fn rfc3339_secs(secs: i64) -> String {
    rfc3339_ms(secs.saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    #[test]
    fn millis_are_kept_where_asked() {
        assert_eq!(
            super::rfc3339_millis(1_767_225_610_042),
            "2026-01-01T00:00:10.042Z"
        );
        assert_eq!(super::rfc3339_ms(1_767_225_610_042), "2026-01-01T00:00:10Z");
    }
}
