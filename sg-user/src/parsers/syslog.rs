//! Syslog headers: RFC 3164 (`Nov 22 07:53:40 host prog[pid]: msg`), ISO timestamps
//! (`2026-11-22T07:53:40.123+00:00 host prog[pid]: msg`), RFC 5424
//! (`<22>1 2026-11-22T07:53:40Z host prog pid - - msg`), and Dovecot's own log file
//! (`Nov 22 07:53:40 imap-login: Info: msg`, no host).

/// The parts of a line the parsers need.
#[derive(Debug, PartialEq, Eq)]
pub struct Header<'a> {
    /// The tag without `[pid]`: `postfix/smtpd`, `dovecot`, `imap-login`.
    pub program: &'a str,
    pub message: &'a str,
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
    rest = if MONTHS.contains(&first) {
        // "Nov 22 07:53:40" (the day may be space-padded: "Nov  2").
        let (_day, after) = token(after)?;
        let (_time, after) = token(after)?;
        after
    } else if first.len() >= 19 && first.as_bytes()[4] == b'-' && first.as_bytes()[10] == b'T' {
        after
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
    Some(Header { program, message })
}

/// RFC 5424 section 6: TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG.
fn rfc5424(s: &str) -> Option<Header<'_>> {
    let (_time, s) = token(s)?;
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
    use super::*;

    fn h<'a>(program: &'a str, message: &'a str) -> Option<Header<'a>> {
        Some(Header { program, message })
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
