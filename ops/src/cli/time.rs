//! TIME arguments of the CLI (`tally read --from`, `tally find-time`), as Unix milliseconds:
//! - RFC 3339: `2026-11-21T10:00:00Z`, `2026-11-21 10:00:00.250+01:00` (`T` or a space; a
//!   fraction is cut to milliseconds; an offset or `Z` is required);
//! - relative to now: `-1h`, `-90s`, `-1h30m`, `-500ms` (units `ms s m h d`);
//! - `now`;
//! - Unix milliseconds: `@1763719200000`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Parses a TIME (see the module documentation) into Unix milliseconds, `now_ms` being now.
pub fn parse_time(s: &str, now_ms: u64) -> Result<u64, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("now") {
        return Ok(now_ms);
    }
    if let Some(ms) = t.strip_prefix('@') {
        return ms
            .parse::<u64>()
            .map_err(|_| format!("{s:?}: expected @<unix milliseconds>"));
    }
    if let Some(rel) = t.strip_prefix('-') {
        let back = parse_duration_ms(rel).ok_or_else(|| {
            format!("{s:?}: expected a relative time like -1h, -90s, -1h30m (units ms s m h d)")
        })?;
        return Ok(now_ms.saturating_sub(back));
    }
    parse_rfc3339(t).ok_or_else(|| {
        format!(
            "{s:?} is not a time: use RFC 3339 (2026-11-21T10:00:00Z), a relative time (-1h), \
             `now`, or @<unix milliseconds>"
        )
    })
}

/// `1h30m`, `90s`, `500ms`: milliseconds. One or more number–unit pairs.
pub(crate) fn parse_duration_ms(s: &str) -> Option<u64> {
    let mut rest = s;
    let mut total: u64 = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(n.checked_mul(unit_ms)?)?;
    }
    Some(total)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` (`T` may be a space; case-insensitive) as Unix
/// milliseconds. `None` if malformed or before 1970.
fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let sep = |at: usize, c: &[u8]| b.get(at).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if sep(i, b".") {
        i += 1;
        let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        // Milliseconds: the first three digits, the rest truncated.
        for k in 0..3 {
            millis = millis * 10
                + b.get(i + k)
                    .filter(|_| k < digits)
                    .map_or(0, |d| i64::from(d - b'0'));
        }
        i += digits;
    }
    let offset_min = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && sep(i + 3, b":") => {
            let (h, m) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let off = h * 60 + m;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_min * 60;
    let ms = secs.checked_mul(1_000)?.checked_add(millis)?;
    u64::try_from(ms).ok()
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix milliseconds as RFC 3339 in UTC with milliseconds: `2025-11-21T10:00:00.250Z`
/// (what `--format time` prints; [`parse_time`] reads it back).
pub fn format_rfc3339(ms: u64) -> String {
    let secs = ms / 1_000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        ms % 1_000
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (inverse of
/// [`days_from_civil`], same algorithm family).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_763_719_200_000; // 2025-11-21T10:00:00Z

    #[test]
    fn times_parse() {
        assert_eq!(parse_time("2025-11-21T10:00:00Z", 0), Ok(NOW));
        assert_eq!(parse_time("2025-11-21t10:00:00z", 0), Ok(NOW));
        assert_eq!(parse_time("2025-11-21 11:00:00+01:00", 0), Ok(NOW));
        assert_eq!(parse_time("2025-11-21T09:30:00-00:30", 0), Ok(NOW));
        assert_eq!(parse_time("2025-11-21T10:00:00.25Z", 0), Ok(NOW + 250));
        assert_eq!(parse_time("2025-11-21T10:00:00.123456Z", 0), Ok(NOW + 123));
        assert_eq!(parse_time("1970-01-01T00:00:00Z", 0), Ok(0));
        assert_eq!(parse_time("2024-02-29T00:00:00Z", 0), Ok(1_709_164_800_000));
        assert_eq!(parse_time("now", NOW), Ok(NOW));
        assert_eq!(parse_time("-1h", NOW), Ok(NOW - 3_600_000));
        assert_eq!(parse_time("-1h30m", NOW), Ok(NOW - 5_400_000));
        assert_eq!(parse_time("-500ms", NOW), Ok(NOW - 500));
        assert_eq!(parse_time("-2d", 1000), Ok(0));
        assert_eq!(parse_time("@1234", NOW), Ok(1234));
        for bad in [
            "2025-02-29T00:00:00Z",
            "2025-11-21T10:00:00",
            "2025-11-21T24:00:00Z",
            "2025-11-21T10:00:00.Z",
            "2025-11-21T10:00:00+1:00",
            "1969-12-31T23:59:59Z",
            "-1x",
            "-",
            "-h",
            "@x",
            "yesterday",
        ] {
            assert!(parse_time(bad, NOW).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn times_format_and_parse_back() {
        assert_eq!(format_rfc3339(NOW), "2025-11-21T10:00:00.000Z");
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339(1_709_164_800_250),
            "2024-02-29T00:00:00.250Z"
        );
        for ms in [0, 1, 999, NOW + 17, 951_782_400_000, 4_102_444_799_999] {
            assert_eq!(parse_time(&format_rfc3339(ms), 0), Ok(ms), "{ms}");
        }
    }
}
