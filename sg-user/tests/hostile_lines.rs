//! Hostile log text, by property: (1) client text never moves the blame, in any format; (2) no
//! line, however broken, panics a parser or a header reader, and every line is read in bounded
//! time. `cargo xtask test` runs a few hundred cases of each; `cargo xtask fuzz` runs many more
//! (PROPTEST_CASES).

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use proptest::prelude::*;
use slowgate::parsers::{Format, Outcome, Parsers, syslog};

/// The client every template is about.
const HONEST: &str = "203.0.113.9";

/// Honest lines of every format with `{}` wherever the client chooses the text: HELO names,
/// envelope addresses, user names, command text, Message-IDs, header text. Lines of one
/// template are parsed in order by one set of parsers (queue ids tie them together).
const TEMPLATES: &[(Format, &str)] = &[
    (
        Format::Postfix,
        "Nov 22 07:53:41 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[203.0.113.9]: 550 5.1.1 <{}>: Recipient address rejected: User unknown in local recipient table; from=<{}> to=<{}> proto=ESMTP helo=<{}>",
    ),
    (
        Format::Postfix,
        "Nov 22 07:53:41 mx postfix/smtpd[1]: warning: unknown[203.0.113.9]: SASL LOGIN authentication failed: UGFzc3dvcmQ6, sasl_username={}",
    ),
    (
        Format::Postfix,
        "Nov 22 07:53:41 mx postfix/smtpd[1]: 4BCD1234AB: client=unknown[203.0.113.9], sasl_method=PLAIN, sasl_username={}\n\
         Nov 22 07:53:41 mx postfix/cleanup[2]: 4BCD1234AB: message-id=<{}>\n\
         Nov 22 07:53:41 mx postfix/cleanup[2]: 4BCD1234AB: reject: header Subject: {} from unknown[203.0.113.9]; from=<{}> to=<{}> proto=ESMTP helo=<{}>: 5.7.1 no\n\
         Nov 22 07:53:41 mx postfix/qmgr[3]: 4BCD1234AB: from=<{}>, size=100, nrcpt=1 (queue active)",
    ),
    (
        Format::Postfix,
        "Nov 22 07:53:46 mx postfix/postscreen[5]: NON-SMTP COMMAND from [203.0.113.9]:40000 {} {}",
    ),
    (
        Format::Postfix,
        "Nov 22 07:53:46 mx postfix/postscreen[5]: COMMAND PIPELINING from [203.0.113.9]:40000 after EHLO: {}",
    ),
    (
        Format::Postfix,
        "Nov 22 07:53:46 mx postfix/postscreen[5]: PREGREET 11 after 0.1 from [203.0.113.9]:40000: {}",
    ),
    (
        Format::Postfix,
        "Nov 22 07:53:46 mx postfix/postscreen[5]: NOQUEUE: reject: RCPT from [203.0.113.9]:40000: 550 5.7.1 Service unavailable; client [203.0.113.9] blocked using zen.spamhaus.org; from=<{}>, to=<{}>, proto=ESMTP, helo=<{}>",
    ),
    (
        Format::Postfix,
        "Nov 22 07:53:45 mx postfix/smtpd[1]: too many errors after RCPT from unknown[203.0.113.9]\n\
         Nov 22 07:53:45 mx postfix/smtpd[1]: lost connection after AUTH from unknown[203.0.113.9]",
    ),
    (
        Format::Sendmail,
        "Nov 22 07:53:40 mx2 sm-mta[4100]: 5AM7rePq004100: from=<{}>, size=4321, class=0, nrcpts=3, msgid=<{}>, proto=ESMTP, daemon=MTA-v4, relay=mx.example.com [203.0.113.9]",
    ),
    (
        Format::Sendmail,
        "Nov 22 07:53:41 mx2 sm-mta[4101]: 5AM7rePq004101: ruleset=check_rcpt, arg1=<{}>, relay=unknown [203.0.113.9], reject=550 5.1.1 <{}>... User unknown",
    ),
    (
        Format::Sendmail,
        "Nov 22 07:53:43 mx2 sm-mta[4103]: AUTH failure (LOGIN): authentication failure (-13) SASL(-13): authentication failure: checkpass failed, user={}, relay=unknown [203.0.113.9]",
    ),
    (
        Format::Exim,
        "2026-11-22 07:53:41 1vXyZa-000123-AB <= {} H=mx.example.com ({}) [203.0.113.9]:41234 P=esmtps S=5120 id={} for {}",
    ),
    (
        Format::Exim,
        "2026-11-22 07:53:42 H=({}) [203.0.113.9]:5000 F=<{}> rejected RCPT <{}>: Unknown user",
    ),
    (
        Format::Exim,
        "2026-11-22 07:53:43 dovecot_plain authenticator failed for ({}) [203.0.113.9]:50000: 535 Incorrect authentication data (set_id={})",
    ),
    (
        Format::Exim,
        "2026-11-22 07:53:44 SMTP call from ({}) [203.0.113.9]:5001 dropped: too many syntax or protocol errors (last command was \"{}\")",
    ),
    (
        Format::Exim,
        "2026-11-22 07:53:44 SMTP syntax error in \"{}\" H=({}) [203.0.113.9]:5000 unrecognized command",
    ),
    (
        Format::Exim,
        "2026-11-22 07:53:44 SMTP protocol synchronization error (input sent without waiting for greeting): rejected connection from H=[203.0.113.9]:5000 input=\"{}\"",
    ),
    (
        Format::Exim,
        "2026-11-22 07:53:41 1vXyZa-000123-AB => {} <{}> R=local_user T=mail_spool\n\
         2026-11-22 07:53:41 1vXyZa-000123-AB ** {} <{}>: Unrouteable address",
    ),
    (
        Format::Qmail,
        "@4000000069216ed40a3f4c2f CHKUSER rejected rcpt: from <{}::> remote <{}:unknown:203.0.113.9> rcpt <{}> : not existing recipient",
    ),
    (
        Format::Dovecot,
        "Nov 22 07:53:43 imap-login: Info: Disconnected (auth failed, 1 attempts in 2 secs): user=<{}>, method=PLAIN, rip=203.0.113.9, lip=198.51.100.1, session=<abc>",
    ),
    (
        Format::Dovecot,
        "Nov 22 07:53:43 mx1 dovecot[7]: pop3-login: Login: user=<{}>, method=PLAIN, rip=203.0.113.9, lip=198.51.100.1, mpid=1, session=<x>",
    ),
    (
        Format::Postfix,
        "Nov 22 07:53:45 mx postfix/smtpd[1]: improper command pipelining after DATA from unknown[203.0.113.9]: {}",
    ),
    (
        Format::Postfix,
        "Nov 22 07:53:45 mx postfix/smtpd[1]: warning: unknown[203.0.113.9]:41234: SASL LOGIN authentication failed: authentication failure, sasl_username={}\n\
         Nov 22 07:53:45 mx postfix/smtpd[1]: disconnect from unknown[203.0.113.9] ehlo=1 auth=0/2 commands=1/3",
    ),
    (
        Format::Postfix,
        "Nov 22 07:53:45 mx postfix/smtpd[1]: 4BCD1234AB: milter-reject: END-OF-MESSAGE from unknown[203.0.113.9]: 5.7.1 {}; from=<{}> to=<{}> proto=ESMTP helo=<{}>",
    ),
    (
        Format::Postfix,
        "Nov 22 07:53:45 mx postfix/smtpd[1]: warning: non-SMTP command from unknown[203.0.113.9]: {}",
    ),
    (
        Format::Sendmail,
        "Nov 22 07:53:44 mx2 sm-mta[4104]: 5AM7rePq004104: {} [203.0.113.9]: possible SMTP attack: command=AUTH, count=5",
    ),
    (
        Format::Sendmail,
        "Nov 22 07:53:44 mx2 sm-mta[4104]: 5AM7rePq004104: [203.0.113.9]: EXPN {} [rejected]",
    ),
    (
        Format::Sendmail,
        "Nov 22 07:53:44 mx2 sm-mta[4104]: 5AM7rePq004104: rejecting commands from {} [203.0.113.9] due to pre-greeting traffic after 0 seconds",
    ),
    (
        Format::Sendmail,
        "Nov 22 07:53:44 mx2 sm-mta[4104]: 5AM7rePq004104: {} [203.0.113.9] (may be forged) did not issue MAIL/EXPN/VRFY/ETRN during connection to MTA",
    ),
    (
        Format::Sendmail,
        "Nov 22 07:53:44 mx2 sm-mta[4105]: 5AM7rePq004105: <{}>... No such user here\n\
         Nov 22 07:53:44 mx2 sm-mta[4105]: 5AM7rePq004105: from=<{}>, size=0, class=0, nrcpts=0, proto=ESMTP, daemon=MTA, relay={} [203.0.113.9]",
    ),
    (
        Format::Sendmail,
        "Nov 22 07:53:41 mx2 sm-mta[4101]: 5AM7rePq004101: ruleset=check_rcpt, arg1=<{}>, relay={} [203.0.113.9], reject=550 5.7.1 <{}>... Relaying denied",
    ),
    (
        Format::Exim,
        "2026-11-22 07:53:44 SMTP protocol synchronization error (next input sent too soon: pipelining was not advertised): rejected \"{}\" H=({}) [203.0.113.9]:5000 I=[198.51.100.1]:25 next input=\"{}\"",
    ),
    (
        Format::Exim,
        "2026-11-22 07:53:44 SMTP protocol error in \"{}\" H=({}) [203.0.113.9]:5000 I=[198.51.100.1]:587 AUTH command used when not advertised",
    ),
    (
        Format::Exim,
        "2026-11-22 07:53:44 no MAIL in SMTP connection from ({}) [203.0.113.9]:5000 I=[198.51.100.1]:25 D=2s C=EHLO",
    ),
    (
        Format::Exim,
        "2026-11-22 07:53:44 SMTP connection from ({}) [203.0.113.9]:5000 I=[198.51.100.1]:25 closed by DROP in ACL",
    ),
    (
        Format::Exim,
        "2026-11-22 07:53:44 1vXyZa-000123-AB F=<{}> H=({}) [203.0.113.9]:5000 I=[198.51.100.1]:25 P=esmtp rejected by local_scan(): Rejected",
    ),
    (
        Format::Exim,
        "2026-11-22 07:53:44 H=({}) [203.0.113.9] sender verify fail for <{}>: Unrouteable address",
    ),
    (
        Format::Exim,
        "2026-11-22 07:53:44 1VxHWD-000NuW-83 SA: Action: silently tossed message: score=35.8 required=5.0 trigger=30.0 (scanned in 6/6 secs | Message-Id: {}). From <{}> (host={} [203.0.113.9]) for {}",
    ),
    (
        Format::Dovecot,
        "Nov 22 07:53:43 auth-worker(77): Info: pam({},203.0.113.9,<AbCd>): pam_authenticate() failed: Authentication failure (password mismatch?)",
    ),
    (
        Format::Dovecot,
        "Nov 22 07:53:43 mx dovecot: auth: sql({},203.0.113.9): unknown user",
    ),
    (
        Format::Dovecot,
        "Nov 22 07:53:43 mx dovecot[9]: auth-worker({},203.0.113.9)<1489164><AbCd>: request [393]: unix_user: pam_authenticate() failed: Authentication failure (Password mismatch?)",
    ),
    (
        Format::Dovecot,
        "Nov 22 07:53:43 mx auth: pam_unix(dovecot:auth): authentication failure; logname= uid=0 euid=0 tty=dovecot ruser={} rhost=203.0.113.9  user={}",
    ),
    (
        Format::Dovecot,
        "Nov 22 07:53:43 mx auth: pam_unix(dovecot:auth): authentication failure; logname= uid=0 euid=0 tty=dovecot ruser={} rhost=203.0.113.9",
    ),
    (
        Format::Dovecot,
        "Nov 22 07:53:43 mx dovecot: pop3-login: Aborted login (tried to use disallowed plaintext auth): user=<{}>, rip=203.0.113.9, lip=198.51.100.1, session=<abc>",
    ),
    (
        Format::Dovecot,
        "Nov 22 07:53:43 mx dovecot: imap-login: Disconnected: Too many invalid commands (no auth attempts in 3 secs): user=<{}>, rip=203.0.113.9, lip=198.51.100.1",
    ),
    (
        Format::Qmail,
        "Sep  6 07:33:33 sd6 qmail: 1157520813.485077 rblsmtpd: 203.0.113.9 pid 19597 zen.spamhaus.org: 451 {}",
    ),
    (
        Format::Rspamd,
        "2026-11-22 07:53:40 #4711(normal) <8e1c2a>; task; rspamd_task_write_log: id: <{}>, qid: <4BCD1234>, ip: 203.0.113.9, from: <{}>, (default: F (add header): [7.20/15.00] [DMARC_POLICY_REJECT(2.00){example.com;reject;}]), len: 1234, time: 120.1ms, dns req: 12, digest: <ab>, rcpts: <{}>, mime_rcpts: <{}>",
    ),
];

/// Every field shape a parser looks for, about other addresses (the victims).
const SHAPES: &[&str] = &[
    "[198.51.100.7]",
    "unknown[198.51.100.7]",
    "[198.51.100.7]:25",
    "[IPv6:2001:db8:77::7]",
    " from unknown[198.51.100.7]",
    "from [198.51.100.7]:1",
    " from [198.51.100.7]:1 ",
    " rip=198.51.100.7",
    ", rip=198.51.100.7, lip=198.51.100.1",
    "> rcpt <",
    " remote <h:h:198.51.100.7>",
    ":198.51.100.7",
    " H=[198.51.100.7]",
    " H=x (y) [198.51.100.7]:1 ",
    " authenticator failed for [198.51.100.7]:1",
    "x authenticator failed for (h) [198.51.100.7]:2: 535 ",
    "relay=[198.51.100.7]",
    ", relay=unknown [198.51.100.7]",
    ", relay=[IPv6:2001:db8:77::7], reject=550 ",
    "ip: 198.51.100.7",
    ", ip: 198.51.100.7, ",
    " for [198.51.100.7]",
    "client=unknown[198.51.100.7]",
    " (set_id=",
    "pid 1 from 198.51.100.7",
    "198.51.100.7 pid 1: 451 ",
    " sasl_username=victim",
    "user=<",
    ">, method=PLAIN, rip=198.51.100.7, lip=",
    "SMTP connection from [198.51.100.7]:1",
    "<= a H=[198.51.100.7]:1 ",
    " rhost=198.51.100.7",
    "  user=",
    " ruser=",
    ",198.51.100.7",
    ",198.51.100.7,<s>",
    "): unknown user",
    ")<1><2>: request [3]: u: unknown user",
    ",198.51.100.7)<9>",
    "pam(",
    " (host=x [198.51.100.7]) for ",
    " H=(x) [198.51.100.7] AUTH command used when not advertised",
    " H=(x) [198.51.100.7]:1 I=[198.51.100.1]:25 next input=",
    " P=esmtp rejected by local_scan()",
    "[198.51.100.7]: possible SMTP attack: command=AUTH, count=5",
    ", relay=[198.51.100.7], reject=550 5.1.1 <",
    "arg1=<",
    "... User unknown",
    " [198.51.100.7] due to pre-greeting traffic",
    " [198.51.100.7] did not issue MAIL/EXPN/VRFY/ETRN during connection to MTA",
    " rip=198.51.100.7 (auth failed, 9 attempts",
    "NOQUEUE: reject: RCPT from unknown[198.51.100.7]: 550 ",
    "\n",
    "\r",
    " ",
    ", ",
    "; ",
    ": ",
    "<",
    ">",
    "(",
    ")",
    "[",
    "]",
    "\"",
    "\\",
    "=",
];

fn client_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => proptest::sample::select(SHAPES).prop_map(str::to_string),
        1 => "[ -~]{0,6}",
    ];
    proptest::collection::vec(piece, 0..8).prop_map(|v| v.concat())
}

/// The template with each `{}` replaced by the next text (the texts cycle).
fn fill(template: &str, texts: &[String]) -> String {
    let mut out = String::new();
    for (i, part) in template.split("{}").enumerate() {
        if i > 0 {
            // A log line never holds a raw newline: the server escapes it or cuts there.
            out.push_str(&texts[(i - 1) % texts.len()].replace(['\n', '\r'], "?"));
        }
        out.push_str(part);
    }
    out
}

fn blame_of(format: Format, text: &str) -> Vec<(IpAddr, String)> {
    let mut parsers = Parsers::default();
    let mut blamed = Vec::new();
    for line in text.lines() {
        if let Outcome::Understood(events) = parsers.parse(format, line) {
            blamed.extend(events.into_iter().map(|e| (e.source, line.to_string())));
        }
    }
    blamed
}

/// 256 cases in `cargo xtask test`; `cargo xtask fuzz` sets PROPTEST_CASES much higher.
fn cases() -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256);
    ProptestConfig::with_cases(n)
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn client_text_never_moves_the_blame(
        template in proptest::sample::select(TEMPLATES),
        texts in proptest::collection::vec(client_text(), 1..5),
    ) {
        let (format, template) = template;
        let text = fill(template, &texts);
        let honest: IpAddr = HONEST.parse().unwrap();
        for f in [format, Format::Auto] {
            for (source, line) in blame_of(f, &text) {
                prop_assert_eq!(source, honest, "{:?} blamed {} for: {}", f, source, line);
            }
        }
    }

    #[test]
    fn no_line_panics_any_parser_or_header_reader(line in any::<String>()) {
        read_everywhere(&line);
    }

    #[test]
    fn no_damaged_honest_line_panics(
        template in proptest::sample::select(TEMPLATES),
        texts in proptest::collection::vec(client_text(), 1..3),
        cut in any::<proptest::sample::Index>(),
        insert in "\\PC{0,4}",
    ) {
        let text = fill(template.1, &texts);
        // Insert arbitrary characters (multi-byte ones included) at any char boundary.
        let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let at = boundaries[cut.index(boundaries.len())];
        let damaged = format!("{}{}{}", &text[..at], insert, &text[at..]);
        for line in damaged.lines() {
            read_everywhere(line);
        }
    }
}

/// Every parser, and the header's time (the daemon does not read it, replays do).
fn read_everywhere(line: &str) {
    for format in [
        Format::Auto,
        Format::Postfix,
        Format::Sendmail,
        Format::Qmail,
        Format::Exim,
        Format::Dovecot,
        Format::Rspamd,
    ] {
        let _ = Parsers::default().parse_timed(format, line);
    }
    if let Some(header) = syslog::split(line) {
        let _ = header.time_ns();
    }
    let _ = slowgate::sources::journal_entry(line);
}

/// Lines the audit found to panic or overflow, and stamps at the edges of every clock.
#[test]
fn known_hostile_headers_are_refused_not_panicked_on() {
    // Found by `cargo xtask fuzz`: an Exim HELO with spaces that imitates the host layout.
    let honest: IpAddr = HONEST.parse().unwrap();
    for helo in [
        ") for [198.51.100.7]",
        "x) [198.51.100.7]:1 (y",
        "x) [198.51.100.7]:1 F=<a> rejected RCPT <b>: Unknown user (y",
    ] {
        let line = format!(
            "2026-11-22 07:53:42 H=({helo}) [203.0.113.9]:5000 F=<a@b> rejected RCPT <c@d>: Unknown user"
        );
        for (source, _) in blame_of(Format::Exim, &line) {
            assert_eq!(source, honest, "{line}");
        }
    }
    for line in [
        "2026-11-22 07:53:4é x",
        "2026-11-22 07:5é:40 x",
        "2026-11-22T07:53:40+0é:00 mx postfix/smtpd[1]: x",
        "2026-11-22T07:53:40+01:é0 mx postfix/smtpd[1]: x",
        "9999999999-11-22 07:53:40 [1] x",
        "-9223372036854775808-01-01 00:00:00 x",
        "9999-12-31T23:59:59.999999999+00:00 mx postfix/smtpd[1]: x",
        "0000-01-01T00:00:00-23:59 mx postfix/smtpd[1]: x",
        "@7fffffffffffffffffffffff tcpserver: pid 1 from 203.0.113.9",
        "@ffffffffffffffffffffffff tcpserver: pid 1 from 203.0.113.9",
        "<22>1 99999-01-01T00:00:00Z mx app 1 - - x",
        "Feb 31 25:61:61 mx postfix/smtpd[1]: connect from x[203.0.113.9]",
    ] {
        read_everywhere(line);
    }
    for json in [
        r#"{"__REALTIME_TIMESTAMP":"18446744073709551615","SYSLOG_IDENTIFIER":"postfix/smtpd","MESSAGE":"x"}"#,
        r#"{"__REALTIME_TIMESTAMP":"-1","SYSLOG_IDENTIFIER":"x","MESSAGE":[255,254,256,-1]}"#,
    ] {
        let _ = slowgate::sources::journal_entry(json);
    }
}

/// Long lines full of the shapes parsers search for: each parser reads one in bounded time
/// (linear scans; a generous bound, only a quadratic scan would cross it).
#[test]
fn long_adversarial_lines_are_read_in_bounded_time() {
    for (format, template) in TEMPLATES {
        for shape in SHAPES {
            let filler = shape.repeat(64 * 1024 / shape.len().max(1));
            let text = fill(template, &[filler]);
            let start = Instant::now();
            for line in text.lines() {
                let _ = Parsers::default().parse_timed(*format, line);
                let _ = Parsers::default().parse_timed(Format::Auto, line);
            }
            let took = start.elapsed();
            assert!(
                took < Duration::from_millis(500),
                "{format:?} took {took:?} over a line of {shape:?}"
            );
        }
    }
}
