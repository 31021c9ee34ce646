//! Log line headers: syslog RFC 3164 (`Nov 22 07:53:40 host prog[pid]: msg`), ISO timestamps
//! (`2026-11-22T07:53:40.123+00:00 host prog[pid]: msg`), RFC 5424
//! (`<22>1 2026-11-22T07:53:40Z host prog pid - - msg`), Dovecot's own log file
//! (`Nov 22 07:53:40 imap-login: Info: msg`, no host), daemontools' multilog with TAI64N
//! stamps (qmail: `@4000000069216ed40a3f4c2c tcpserver: msg`), Exim's mainlog
//! (`2026-11-22 07:53:40 [pid] msg`) and Rspamd's log (`2026-11-22 07:53:40 #pid(proc) msg`).
//!
//! Times are read as UTC (a replay needs them consistent, not zoned); RFC 3164 has no year, so
//! the current one is assumed, or the previous one for a date more than a day ahead.

/// The parts of a line the parsers need.
#[derive(Debug, PartialEq, Eq)]
pub struct Header<'a> {
    /// The tag without `[pid]`: `postfix/smtpd`, `dovecot`, `imap-login`; `exim` and `rspamd`
    /// for their own log files.
    pub program: &'a str,
    pub message: &'a str,
    /// When the line was written, as the header wrote it; [`Header::time_ns`] reads it (only
    /// replays need it, so the daemon never pays for it).
    pub stamp: Stamp<'a>,
}

/// A header's timestamp, not yet converted.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Stamp<'a> {
    None,
    /// `Nov 22 07:53:40`: month (1-12), day, time.
    Rfc3164(u32, &'a str, &'a str),
    /// `2026-11-22T07:53:40.123+01:00`
    Iso(&'a str),
    /// `2026-11-22`, `07:53:40`
    DateTime(&'a str, &'a str),
    /// Unix nanoseconds already (TAI64N is cheap to read, and was checked while splitting).
    Unix(u64),
}

impl Header<'_> {
    /// When the line was written, in nanoseconds since the Unix epoch, when the header says.
    pub fn time_ns(&self) -> Option<u64> {
        match self.stamp {
            Stamp::None => None,
            Stamp::Rfc3164(month, day, time) => rfc3164_time(month, day, time),
            Stamp::Iso(stamp) => iso_time_checked(stamp),
            Stamp::DateTime(date, time) => date_time(date, time),
            Stamp::Unix(ns) => Some(ns),
        }
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Skips one whitespace-separated token; returns (token, rest after the following spaces).
fn token(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start_matches(' ');
    if s.is_empty() {
        return None;
    }
    let end = s.find(' ').unwrap_or(s.len());
    Some((&s[..end], s[end..].trim_start_matches(' ')))
}

pub fn split(line: &str) -> Option<Header<'_>> {
    let line = line.trim_end_matches(['\r', '\n']);
    if let Some(stamp) = line.strip_prefix('@') {
        return multilog(stamp);
    }
    if let Some(header) = mainlog(line) {
        return Some(header);
    }
    let mut rest = line;
    // <PRI> (RFC 3164 section 4.1.1, RFC 5424 section 6.2.1)
    if let Some(after) = rest.strip_prefix('<') {
        let close = after.find('>')?;
        if close == 0 || close > 3 || !after[..close].bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        rest = &after[close + 1..];
        if let Some(v5424) = rest.strip_prefix("1 ") {
            return rfc5424(v5424);
        }
    }
    let (first, after) = token(rest)?;
    let stamp;
    (rest, stamp) = if let Some(month) = MONTHS.iter().position(|m| *m == first) {
        // "Nov 22 07:53:40" (the day may be space-padded: "Nov  2").
        let (day, after) = token(after)?;
        let (time, after) = token(after)?;
        (after, Stamp::Rfc3164(month as u32 + 1, day, time))
    } else if first.len() >= 19 && first.as_bytes()[4] == b'-' && first.as_bytes()[10] == b'T' {
        (after, Stamp::Iso(first))
    } else {
        return None;
    };
    let (word, after) = token(rest)?;
    let (tag, message) = if word.ends_with(':') {
        // Dovecot's own log: no host.
        (word, after)
    } else {
        token(after)?
    };
    let tag = tag.strip_suffix(':')?;
    let program = match tag.find('[') {
        Some(i) if tag.ends_with(']') => &tag[..i],
        Some(_) => return None,
        None => tag,
    };
    if program.is_empty() {
        return None;
    }
    Some(Header {
        program,
        message,
        stamp,
    })
}

/// `4000000069216ed40a3f4c2c tcpserver: msg` (the `@` already gone).
fn multilog(s: &str) -> Option<Header<'_>> {
    let (stamp, rest) = token(s)?;
    let time_ns = tai64n(stamp)?;
    // qmail-smtpd's own lines have no tag ("CHKUSER rejected rcpt: ..."): their first word
    // names them, and the message is the whole text.
    let (tag, message) = match token(rest) {
        Some((tag, message)) if tag.ends_with(':') => (tag.trim_end_matches(':'), message),
        Some((word, _)) => (word, rest),
        None => return None,
    };
    Some(Header {
        program: tag,
        message,
        stamp: Stamp::Unix(time_ns),
    })
}

/// TAI64N label (24 hex digits: 2^62 + TAI seconds, then nanoseconds) to Unix nanoseconds.
/// TAI is ahead of UTC by 10 s plus the leap seconds since 1972 (37 since 2017).
pub fn tai64n(hex: &str) -> Option<u64> {
    if hex.len() != 24 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let secs = u64::from_str_radix(hex.get(..16)?, 16).ok()?;
    let nanos = u64::from_str_radix(hex.get(16..)?, 16).ok()?;
    let tai = secs.checked_sub(1 << 62)?;
    const TAI_MINUS_UTC: u64 = 37;
    tai.saturating_sub(TAI_MINUS_UTC)
        .checked_mul(1_000_000_000)?
        .checked_add(nanos.min(999_999_999))
}

/// Exim's mainlog (`2026-11-22 07:53:40 [pid] msg`, pid optional) and Rspamd's log
/// (`2026-11-22 07:53:40 #1234(normal) <uid>; task; msg`): a date, a time, no host, no tag.
fn mainlog(line: &str) -> Option<Header<'_>> {
    let b = line.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b' ' || b[13] != b':' {
        return None;
    }
    let stamp = Stamp::DateTime(line.get(..10)?, line.get(11..19)?);
    let rest = line.get(19..)?.trim_start_matches(' ');
    let rest = match rest.strip_prefix(['.', '+', '-']) {
        // Fractions or a zone (Exim's log_selector +millisec, +timezone): skip to the next space.
        Some(_) => token(rest)?.1,
        None => rest,
    };
    if let Some(header) = tagged_after_date(rest, stamp) {
        return Some(header);
    }
    if rest.starts_with('#') {
        let (_proc, message) = token(rest)?;
        return Some(Header {
            program: "rspamd",
            message,
            stamp,
        });
    }
    let message = match rest.strip_prefix('[') {
        Some(after) => match after.split_once("] ") {
            Some((pid, message)) if pid.bytes().all(|c| c.is_ascii_digit()) => message,
            _ => rest,
        },
        None => rest,
    };
    Some(Header {
        program: "exim",
        message,
        stamp,
    })
}

/// After a `2026-11-22 07:53:40` stamp, a syslog tag rather than Exim's text: `HOST exim[12]: msg`
/// (rsyslog with a date template) or, without a host, one of Dovecot's process tags
/// (`auth-worker(7): msg`, `imap-login: msg`, Dovecot's `log_timestamp = "%Y-%m-%d %H:%M:%S "`).
fn tagged_after_date<'a>(rest: &'a str, stamp: Stamp<'a>) -> Option<Header<'a>> {
    let (first, after) = token(rest)?;
    if let Some(tag) = first.strip_suffix(':') {
        let dovecot = [
            "auth",
            "auth-worker",
            "imap-login",
            "pop3-login",
            "submission-login",
        ]
        .iter()
        .any(|p| tag == *p || tag.strip_prefix(p).is_some_and(|t| t.starts_with('(')));
        return dovecot.then_some(Header {
            program: tag,
            message: after,
            stamp,
        });
    }
    let (second, message) = token(after)?;
    let tag = second.strip_suffix("]:")?;
    let (program, pid) = tag.split_once('[')?;
    let host_ok = first
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    let program_ok = !program.is_empty()
        && program
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/' | b'.'));
    (host_ok && program_ok && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(
        Header {
            program,
            message,
            stamp,
        },
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn unix_ns(y: i64, m: u32, d: u32, time: &str) -> Option<u64> {
    let mut parts = time.splitn(3, ':');
    let h: u32 = parts.next()?.parse().ok()?;
    let mi: u32 = parts.next()?.parse().ok()?;
    let sec = parts.next()?;
    let (s, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let s: u32 = s.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    if !(1970..=MAX_YEAR).contains(&y) {
        return None;
    }
    let digits: String = frac
        .chars()
        .take_while(char::is_ascii_digit)
        .take(9)
        .collect();
    let nanos = if digits.is_empty() {
        0
    } else {
        digits.parse::<u64>().ok()? * 10u64.pow(9 - digits.len() as u32)
    };
    let secs = days_from_civil(y, m, d) * 86_400 + i64::from(h * 3600 + mi * 60 + s);
    u64::try_from(secs)
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(nanos)
}

/// The last year whose nanoseconds fit a u64 (2554) is far enough; later stamps are garbage.
const MAX_YEAR: i64 = 2500;

/// `2026-11-22` and `07:53:40`.
fn date_time(date: &str, time: &str) -> Option<u64> {
    let mut parts = date.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    unix_ns(y, m, d, time)
}

/// `2026-11-22T07:53:40.123456+01:00` (the offset is applied; `Z` or none is UTC).
fn iso_time(stamp: &str) -> Option<u64> {
    let date = stamp.get(..10)?;
    let rest = stamp.get(11..)?;
    let zone_at = rest.find(['Z', '+', '-']).unwrap_or(rest.len());
    let utc = date_time(date, &rest[..zone_at])?;
    let zone = &rest[zone_at..];
    let offset_s: i64 = match zone.as_bytes().first() {
        Some(b'+') | Some(b'-') if zone.len() >= 6 => {
            let h: i64 = zone.get(1..3)?.parse().ok()?;
            let m: i64 = zone.get(4..6)?.parse().ok()?;
            if h > 23 || m > 59 {
                return None;
            }
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => 0,
    };
    let utc = i64::try_from(utc).ok()?;
    u64::try_from(utc.checked_sub(offset_s * 1_000_000_000)?).ok()
}

fn iso_time_checked(stamp: &str) -> Option<u64> {
    (stamp.len() >= 19 && stamp.as_bytes()[4] == b'-' && stamp.as_bytes()[10] == b'T')
        .then(|| iso_time(stamp))
        .flatten()
}

/// RFC 3164 `Nov 22 07:53:40`: this year, unless that is more than a day ahead of now.
fn rfc3164_time(month: u32, day: &str, time: &str) -> Option<u64> {
    let day: u32 = day.parse().ok()?;
    let now = now_for_years();
    let year = 1970 + (now / 1_000_000_000 / 86_400 * 400 / 146_097) as i64;
    let this_year = unix_ns(year, month, day, time)?;
    if this_year > now + 86_400 * 1_000_000_000 {
        unix_ns(year - 1, month, day, time)
    } else {
        Some(this_year)
    }
}

/// The wall clock, read once every 1024 calls per thread: RFC 3164 stamps need it only to
/// pick their year, and a clock read per line was 2% of `slowgate replay`.
fn now_for_years() -> u64 {
    thread_local! {
        static CACHED: std::cell::Cell<(u32, u64)> = const { std::cell::Cell::new((0, 0)) };
    }
    CACHED.with(|cached| {
        let (calls, now) = cached.get();
        let now = if calls % 1024 == 0 {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        } else {
            now
        };
        cached.set((calls.wrapping_add(1), now));
        now
    })
}

/// RFC 5424 section 6: TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG.
fn rfc5424(s: &str) -> Option<Header<'_>> {
    let (time, s) = token(s)?;
    let (_host, s) = token(s)?;
    let (app, s) = token(s)?;
    let (_procid, s) = token(s)?;
    let (_msgid, s) = token(s)?;
    let message = if let Some(after) = s.strip_prefix('-') {
        after.trim_start_matches(' ')
    } else {
        skip_structured_data(s)?
    };
    // An optional BOM before the message (section 6.4).
    let message = message.strip_prefix('\u{feff}').unwrap_or(message);
    Some(Header {
        program: app,
        message,
        stamp: Stamp::Iso(time),
    })
}

/// Skips `[id k="v"]...` elements; `\]` and `\"` are escapes inside values (section 6.3.3).
fn skip_structured_data(s: &str) -> Option<&str> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while bytes.get(i) == Some(&b'[') {
        let mut in_value = false;
        i += 1;
        loop {
            match *bytes.get(i)? {
                b'\\' if in_value => i += 1,
                b'"' => in_value = !in_value,
                b']' if !in_value => break,
                _ => {}
            }
            i += 1;
        }
        i += 1;
    }
    Some(s[i..].trim_start_matches(' '))
}

#[cfg(test)]
mod tests {
    fn h<'a>(program: &'a str, message: &'a str) -> Option<(&'a str, &'a str)> {
        Some((program, message))
    }

    fn split(line: &str) -> Option<(&str, &str)> {
        super::split(line).map(|h| (h.program, h.message))
    }

    fn time(line: &str) -> Option<u64> {
        super::split(line).and_then(|h| h.time_ns())
    }

    /// 2026-11-22T07:53:40Z in Unix seconds.
    const T: u64 = 1_795_334_020;

    #[test]
    fn times_of_every_header_agree() {
        let s = |secs: u64| Some(secs * 1_000_000_000);
        assert_eq!(time("2026-11-22T07:53:40Z mx1 postfix/smtpd[1]: x"), s(T));
        assert_eq!(
            time("2026-11-22T08:53:40+01:00 mx1 postfix/smtpd[1]: x"),
            s(T)
        );
        assert_eq!(
            time("2026-11-22T07:53:40.25+00:00 mx1 postfix/smtpd[1]: x"),
            Some(T * 1_000_000_000 + 250_000_000)
        );
        assert_eq!(time("<22>1 2026-11-22T07:53:40Z mx1 app 1 - - x"), s(T));
        assert_eq!(time("2026-11-22 07:53:40 1vXyZa-000123-AB <= a@b"), s(T));
        assert_eq!(
            time("2026-11-22 07:53:40 #77(normal) <ab12>; task; x"),
            s(T)
        );
        // TAI64N: 2^62 + T + 37 leap seconds.
        let label = format!(
            "@{:016x}{:08x} tcpserver: pid 1 from 203.0.113.9",
            (1u64 << 62) + T + 37,
            0
        );
        assert_eq!(time(&label), s(T));
        // RFC 3164 has no year: it reads as a time within the last year.
        let t = time("Nov 22 07:53:40 mx1 postfix/smtpd[1]: x").unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(t <= now + 86_400_000_000_000 && now - t.min(now) < 366 * 86_400_000_000_000);
    }

    #[test]
    fn multilog_exim_and_rspamd_logs_name_their_program() {
        assert_eq!(
            split("@4000000069216ed40a3f4c2c tcpserver: pid 1 from 203.0.113.9"),
            h("tcpserver", "pid 1 from 203.0.113.9")
        );
        assert_eq!(
            split("2026-11-22 07:53:40 [1234] 1vXyZa-000123-AB <= a@b H=x [203.0.113.9]"),
            h("exim", "1vXyZa-000123-AB <= a@b H=x [203.0.113.9]")
        );
        assert_eq!(
            split("2026-11-22 07:53:40 #77(normal) <ab12>; task; hello"),
            h("rspamd", "<ab12>; task; hello")
        );
        assert_eq!(split("@40000000zz tcpserver: x"), None);
    }

    #[test]
    fn rfc3164_with_pid() {
        assert_eq!(
            split("Nov 22 07:53:40 mx1 postfix/smtpd[1234]: connect from x[203.0.113.9]"),
            h("postfix/smtpd", "connect from x[203.0.113.9]")
        );
        assert_eq!(
            split("Nov  2 07:53:40 mx1 postfix-out/smtpd[1]: hello"),
            h("postfix-out/smtpd", "hello")
        );
    }

    #[test]
    fn iso_timestamp() {
        assert_eq!(
            split("2026-11-22T07:53:40.123456+00:00 mx1 dovecot[77]: imap-login: Login: x"),
            h("dovecot", "imap-login: Login: x")
        );
    }

    #[test]
    fn rfc5424_with_and_without_structured_data() {
        assert_eq!(
            split(
                "<22>1 2026-11-22T07:53:40Z mx1 postfix/smtpd 1234 - - connect from a[198.51.100.2]"
            ),
            h("postfix/smtpd", "connect from a[198.51.100.2]")
        );
        assert_eq!(
            split("<22>1 2026-11-22T07:53:40Z mx1 app 1 ID [x a=\"b\\]c\"][y] the message"),
            h("app", "the message")
        );
    }

    #[test]
    fn dovecot_log_file_has_no_host() {
        assert_eq!(
            split("Nov 22 07:53:40 imap-login: Info: Login: user=<a>"),
            h("imap-login", "Info: Login: user=<a>")
        );
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            "",
            "hello world",
            "<999999>x",
            "Nov 22",
            "Nov 22 07:53:40 host",
            "2026 x y: z",
        ] {
            assert_eq!(split(bad), None, "{bad}");
        }
    }
}
