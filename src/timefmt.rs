//! Timestamps as the logs write them, to Unix nanoseconds. Pure and allocation free.
//!
//! Hand-written rather than a date crate: the three layouts logmill meets are fixed,
//! they sit on the per-line hot path, and none of them needs a time-zone database
//! (every one carries its own UTC offset).

/// Why a timestamp was not understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum TimeError {
    #[error("timestamp has an unexpected layout")]
    Layout,
    #[error("timestamp has a field out of range")]
    Range,
}

const NANOS_PER_SEC: i64 = 1_000_000_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The calendar date of a day count since 1970-01-01 (inverse of [`days_from_civil`]).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn digits(b: &[u8]) -> Result<u32, TimeError> {
    if b.is_empty() {
        return Err(TimeError::Layout);
    }
    b.iter().try_fold(0u32, |acc, &c| {
        if c.is_ascii_digit() {
            Ok(acc * 10 + u32::from(c - b'0'))
        } else {
            Err(TimeError::Layout)
        }
    })
}

fn expect(b: &[u8], at: usize, c: u8) -> Result<(), TimeError> {
    if b.get(at) == Some(&c) {
        Ok(())
    } else {
        Err(TimeError::Layout)
    }
}

fn to_nanos(
    year: u32,
    month: u32,
    day: u32,
    hms: (u32, u32, u32),
    nanos: u32,
    offset_secs: i64,
) -> Result<i64, TimeError> {
    let (hour, minute, second) = hms;
    // Logs are from after 1970, and before 2200 every later sum (windows, offsets, sequence
    // numbers) stays far inside i64 nanoseconds; a time outside is a broken line, not a date.
    if !(1970..=2200).contains(&year) {
        return Err(TimeError::Range);
    }
    // Second 60 is a leap second; it is folded onto the next second as most tools do.
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return Err(TimeError::Range);
    }
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
    secs.checked_mul(NANOS_PER_SEC).and_then(|n| n.checked_add(i64::from(nanos))).ok_or(TimeError::Range)
}

/// A UTC offset `Z`, `+hh:mm`, `-hh:mm`, `+hhmm`, in seconds east of UTC.
fn offset(b: &[u8]) -> Result<i64, TimeError> {
    match b {
        b"Z" | b"z" => Ok(0),
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (h, m) = match rest {
                [h1, h2, b':', m1, m2] | [h1, h2, m1, m2] => (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?),
                _ => return Err(TimeError::Layout),
            };
            if h > 23 || m > 59 {
                return Err(TimeError::Range);
            }
            let secs = i64::from(h * 3600 + m * 60);
            Ok(if *sign == b'-' { -secs } else { secs })
        }
        _ => Err(TimeError::Layout),
    }
}

/// RFC 3339 / ISO 8601 as nginx's `$time_iso8601`, Docker and CRI write it:
/// `2016-10-06T00:17:09.669794202Z`, `2026-11-21T04:22:21+00:00`. The fraction may have any
/// number of digits (beyond nine they are truncated) or be absent.
pub(crate) fn parse_rfc3339(b: &[u8]) -> Result<i64, TimeError> {
    if b.len() < 20 {
        return Err(TimeError::Layout);
    }
    expect(b, 4, b'-')?;
    expect(b, 7, b'-')?;
    if !matches!(b[10], b'T' | b't' | b' ') {
        return Err(TimeError::Layout);
    }
    expect(b, 13, b':')?;
    expect(b, 16, b':')?;
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hms = (digits(&b[11..13])?, digits(&b[14..16])?, digits(&b[17..19])?);
    let mut rest = &b[19..];
    let mut nanos = 0u32;
    if let [b'.', frac @ ..] = rest {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return Err(TimeError::Layout);
        }
        for (i, &c) in frac[..n.min(9)].iter().enumerate() {
            nanos += u32::from(c - b'0') * 10u32.pow(8 - i as u32);
        }
        rest = &frac[n..];
    }
    to_nanos(year, month, day, hms, nanos, offset(rest)?)
}

fn month_abbrev(b: &[u8]) -> Result<u32, TimeError> {
    const MONTHS: [&[u8; 3]; 12] =
        [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];
    MONTHS.iter().position(|m| m.as_slice() == b).map(|i| i as u32 + 1).ok_or(TimeError::Layout)
}

/// nginx's `$time_local` and Apache's `%t` (Common Log Format): `31/May/2016:16:56:12 +0000`.
pub(crate) fn parse_clf(b: &[u8]) -> Result<i64, TimeError> {
    if b.len() != 26 {
        return Err(TimeError::Layout);
    }
    expect(b, 2, b'/')?;
    expect(b, 6, b'/')?;
    expect(b, 11, b':')?;
    expect(b, 14, b':')?;
    expect(b, 17, b':')?;
    expect(b, 20, b' ')?;
    let day = digits(&b[0..2])?;
    let month = month_abbrev(&b[3..6])?;
    let year = digits(&b[7..11])?;
    let hms = (digits(&b[12..14])?, digits(&b[15..17])?, digits(&b[18..20])?);
    to_nanos(year, month, day, hms, 0, offset(&b[21..])?)
}

/// Either layout of an nginx access time: ISO 8601 or `$time_local`.
pub(crate) fn parse_access_time(b: &[u8]) -> Result<i64, TimeError> {
    if b.get(2) == Some(&b'/') {
        parse_clf(b)
    } else {
        parse_rfc3339(b)
    }
}

/// Writes Unix nanoseconds as RFC 3339 with microseconds and an explicit `+00:00` offset,
/// the layout fluentd put in the `time` of every record on the `logs` topic.
pub fn format_rfc3339_micros(ns: i64, out: &mut String) {
    use std::fmt::Write;
    let secs = ns.div_euclid(NANOS_PER_SEC);
    let micros = ns.rem_euclid(NANOS_PER_SEC) / 1000;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}+00:00",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
}

/// Now, in nanoseconds since the Unix epoch (0 on a clock before 1970).
pub(crate) fn now_ns() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values computed independently with `date -u -d '…' +%s`.
    #[test]
    fn rfc3339_layouts() {
        assert_eq!(parse_rfc3339(b"2026-11-21T04:22:21+00:00"), Ok(1_795_234_941 * NANOS_PER_SEC));
        assert_eq!(
            parse_rfc3339(b"2016-10-06T00:17:09.669794202Z"),
            Ok(1_475_713_029 * NANOS_PER_SEC + 669_794_202)
        );
        assert_eq!(parse_rfc3339(b"2016-10-06T00:17:09.5Z"), Ok(1_475_713_029 * NANOS_PER_SEC + 500_000_000));
        assert_eq!(
            parse_rfc3339(b"2016-10-06T02:17:09.1234567891+02:00"),
            Ok(1_475_713_029 * NANOS_PER_SEC + 123_456_789)
        );
        assert_eq!(parse_rfc3339(b"1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339(b"2016-10-06T00:17:09"), Err(TimeError::Layout));
        assert_eq!(parse_rfc3339(b"2016-13-06T00:17:09Z"), Err(TimeError::Range));
        assert_eq!(parse_rfc3339(b"2016-10-06T00:17:09.Z"), Err(TimeError::Layout));
        assert_eq!(parse_rfc3339(b"2016-10-06X00:17:09Z"), Err(TimeError::Layout));
    }

    #[test]
    fn clf_layout() {
        // date -u -d '2016-05-31 16:56:12' +%s → 1464713772
        assert_eq!(parse_clf(b"31/May/2016:16:56:12 +0000"), Ok(1_464_713_772 * NANOS_PER_SEC));
        assert_eq!(parse_clf(b"31/May/2016:18:56:12 +0200"), Ok(1_464_713_772 * NANOS_PER_SEC));
        assert_eq!(parse_clf(b"31/Mai/2016:16:56:12 +0000"), Err(TimeError::Layout));
        assert_eq!(parse_access_time(b"31/May/2016:16:56:12 +0000"), Ok(1_464_713_772 * NANOS_PER_SEC));
    }

    #[test]
    fn years_outside_1970_to_2200_are_out_of_range() {
        assert_eq!(parse_rfc3339(b"1677-09-21T00:12:45+00:00"), Err(TimeError::Range));
        assert_eq!(parse_rfc3339(b"2262-04-11T23:47:16Z"), Err(TimeError::Range));
        assert_eq!(parse_clf(b"31/Dec/1969:23:59:59 +0000"), Err(TimeError::Range));
        assert!(parse_rfc3339(b"2200-12-31T23:59:59Z").is_ok());
    }

    #[test]
    fn civil_round_trip() {
        for days in [-800_000i64, -1, 0, 1, 10_957, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn formats_like_fluentd() {
        let mut s = String::new();
        format_rfc3339_micros(1_476_822_578_123_456_789, &mut s);
        // date -u -d @1476822578 → 2016-10-18 20:29:38
        assert_eq!(s, "2016-10-18T20:29:38.123456+00:00");
    }

    /// Property tests against a formatter of their own: a calendar walk day by day from 1970,
    /// not [`civil_from_days`], so that a shared mistake cannot hide.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        const MONTHS: [&str; 12] =
            ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
        /// 2200-01-01T00:00:00Z (`date -u -d 2200-01-01 +%s`): the parsers take 1970 through 2200.
        const Y2200_SECS: i64 = 7_258_118_400;
        const DAY: i64 = 86_400;

        fn year_days(year: i64) -> i64 {
            if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 {
                366
            } else {
                365
            }
        }

        /// Local (year, month, day, hour, minute, second) of `secs` at `offset` seconds east.
        fn civil(secs: i64, offset: i64) -> (i64, usize, i64, i64, i64, i64) {
            let local = secs + offset;
            let (mut days, mut year) = (local.div_euclid(DAY), 1970);
            while days >= year_days(year) {
                days -= year_days(year);
                year += 1;
            }
            let february = if year_days(year) == 366 { 29 } else { 28 };
            let lengths = [31, february, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
            let mut month = 0;
            while days >= lengths[month] {
                days -= lengths[month];
                month += 1;
            }
            let sod = local.rem_euclid(DAY);
            (year, month + 1, days + 1, sod / 3600, sod % 3600 / 60, sod % 60)
        }

        /// `±hh:mm` (`colon`) or `±hhmm`.
        fn offset_text(offset: i64, colon: bool) -> String {
            let sign = if offset < 0 { '-' } else { '+' };
            let (h, m) = (offset.abs() / 3600, offset.abs() % 3600 / 60);
            if colon {
                format!("{sign}{h:02}:{m:02}")
            } else {
                format!("{sign}{h:02}{m:02}")
            }
        }

        /// nginx's `$time_local`: `21/Nov/2026:04:22:21 +0000`.
        fn time_local(secs: i64, offset: i64) -> String {
            let (y, mo, d, h, mi, s) = civil(secs, offset);
            format!("{d:02}/{}/{y:04}:{h:02}:{mi:02}:{s:02} {}", MONTHS[mo - 1], offset_text(offset, false))
        }

        /// An instant two days inside the range, so that any offset keeps its local date in it.
        fn instant() -> impl Strategy<Value = i64> {
            2 * DAY..Y2200_SECS - 2 * DAY
        }

        /// A UTC offset in whole minutes, up to the ±23:59 the layouts can hold.
        fn offset() -> impl Strategy<Value = i64> {
            (-(23 * 60 + 59)..=23 * 60 + 59i64).prop_map(|minutes| minutes * 60)
        }

        /// RFC 3339 as Docker, CRI and nginx write it, and its instant: `T`, `t` or a space; a
        /// fraction of 0 to 12 digits (past nine they are truncated); `Z`, `z`, `±hh:mm`, `±hhmm`.
        fn rfc3339() -> impl Strategy<Value = (String, i64)> {
            let layout = (prop_oneof![Just('T'), Just('t'), Just(' ')], 0usize..=12, 0..4u8);
            (instant(), 0u32..1_000_000_000, "[0-9]{3}", offset(), layout).prop_map(
                |(secs, nanos, extra, offset, (sep, digits, zone))| {
                    let offset = if zone < 2 { 0 } else { offset };
                    let (y, mo, d, h, mi, s) = civil(secs, offset);
                    let mut text = format!("{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}");
                    let all = format!("{nanos:09}{extra}");
                    if digits > 0 {
                        text.push('.');
                        text.push_str(&all[..digits]);
                    }
                    let kept = digits.min(9);
                    let fraction = all[..kept].parse::<i64>().unwrap_or(0) * 10i64.pow(9 - kept as u32);
                    text.push_str(&match zone {
                        0 => "Z".to_owned(),
                        1 => "z".to_owned(),
                        2 => offset_text(offset, true),
                        _ => offset_text(offset, false),
                    });
                    (text, secs * NANOS_PER_SEC + fraction)
                },
            )
        }

        /// A valid time damaged: a byte replaced, a cut, or bytes inserted.
        fn damaged(text: String) -> impl Strategy<Value = Vec<u8>> {
            let len = text.len().max(1);
            (0..len, any::<u8>(), proptest::collection::vec(any::<u8>(), 0..4), 0..3u8).prop_map(
                move |(at, byte, inserted, how)| {
                    let mut bytes = text.clone().into_bytes();
                    match how {
                        0 => bytes[at] = byte,
                        1 => bytes.truncate(at),
                        _ => {
                            bytes.splice(at..at, inserted);
                        }
                    }
                    bytes
                },
            )
        }

        #[test]
        fn the_walk_agrees_with_date() {
            // `date -u -d @SECS '+%F %T'`.
            assert_eq!(civil(0, 0), (1970, 1, 1, 0, 0, 0));
            assert_eq!(civil(951_782_400, 0), (2000, 2, 29, 0, 0, 0));
            assert_eq!(civil(1_795_234_941, 0), (2026, 11, 21, 4, 22, 21));
            assert_eq!(civil(4_107_542_399, 0), (2100, 2, 28, 23, 59, 59));
            assert_eq!(civil(Y2200_SECS - 1, 0), (2199, 12, 31, 23, 59, 59));
        }

        proptest! {
            #[test]
            fn rfc3339_round_trips((text, ns) in rfc3339()) {
                prop_assert_eq!(parse_rfc3339(text.as_bytes()), Ok(ns), "{}", text);
                if !text.contains(' ') {
                    prop_assert_eq!(parse_access_time(text.as_bytes()), Ok(ns), "{}", text);
                }
            }

            #[test]
            fn time_local_round_trips(secs in instant(), offset in offset()) {
                let text = time_local(secs, offset);
                prop_assert_eq!(parse_clf(text.as_bytes()), Ok(secs * NANOS_PER_SEC), "{}", text);
                prop_assert_eq!(parse_access_time(text.as_bytes()), Ok(secs * NANOS_PER_SEC), "{}", text);
            }

            #[test]
            fn fluentd_times_are_what_the_calendar_says(secs in instant(), nanos in 0i64..NANOS_PER_SEC) {
                let ns = secs * NANOS_PER_SEC + nanos;
                let mut text = String::new();
                format_rfc3339_micros(ns, &mut text);
                let (y, mo, d, h, mi, s) = civil(secs, 0);
                let want = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:06}+00:00", nanos / 1000);
                prop_assert_eq!(&text, &want);
                prop_assert_eq!(parse_rfc3339(text.as_bytes()), Ok(ns - nanos % 1000));
            }

            #[test]
            fn years_outside_1970_to_2200_are_refused(
                year in prop_oneof![1000i64..1970, 2201i64..10_000],
                month in 1usize..=12,
                day in 1i64..=28,
            ) {
                let text = format!("{year:04}-{month:02}-{day:02}T12:00:00Z");
                prop_assert_eq!(parse_rfc3339(text.as_bytes()), Err(TimeError::Range), "{}", text);
                let clf = format!("{day:02}/{}/{year:04}:12:00:00 +0000", MONTHS[month - 1]);
                prop_assert_eq!(parse_clf(clf.as_bytes()), Err(TimeError::Range), "{}", clf);
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
                let _ = parse_rfc3339(&bytes);
                let _ = parse_clf(&bytes);
                let _ = parse_access_time(&bytes);
            }

            #[test]
            fn damaged_times_never_panic(
                bytes in (rfc3339(), instant(), offset(), any::<bool>()).prop_flat_map(
                    |((iso, _), secs, offset, local)| damaged(if local { time_local(secs, offset) } else { iso }),
                )
            ) {
                let _ = parse_rfc3339(&bytes);
                let _ = parse_clf(&bytes);
                let _ = parse_access_time(&bytes);
            }
        }
    }
}
