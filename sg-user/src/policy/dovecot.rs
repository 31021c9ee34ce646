//! Dovecot's authentication policy (`auth_policy_server_url`, Dovecot 2.3): HTTP POSTs of a
//! JSON object, `command=allow` before (and after) a login, `command=report` after it. The
//! answer is `{"status": N, "msg": "..."}`: 0 lets the login go on, N > 0 delays it N seconds
//! (a tarpit), N < 0 refuses it. Everything in a request is what a client typed (`login`) or
//! what Dovecot saw (`remote`), so it is read defensively: bounded body, JSON object only,
//! known fields only taken, the address parsed strictly.
//!
//! A source the kernel limits is tarpitted, a blocked one refused. A login name whose failed
//! attempts overflow its bucket is tarpitted too, never refused: anyone can type a name, and
//! the real user must still get in (and its sending is never narrowed by failures it did not
//! make). Reports become events at once, before Dovecot's log line says the same.

use std::{net::IpAddr, time::Duration};

use super::bucket::{Buckets, Shape};
use crate::{
    domain::Limit,
    events::{Event, EventKind, Service},
};

/// The front end's name in metrics and logs.
pub const FRONT: &str = "dovecot";

/// The largest request body read.
pub const MAX_BODY: usize = 16 * 1024;
/// The longest login name kept (longer ones are cut: they are keys, not identities).
const MAX_LOGIN: usize = 256;

/// `[policy] dovecot...`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub listen: std::net::SocketAddr,
    /// The header Dovecot sends (`auth_policy_server_api_header`), name in lower case, and
    /// its value; None: no header asked for.
    pub api_header: Option<(String, String)>,
    /// How long a limited source, or a name that keeps failing, waits.
    pub tarpit: Duration,
    /// Failed logins a name may have before it is tarpitted (a bucket).
    pub failures: Shape,
}

/// What Dovecot asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Allow,
    Report,
}

/// `command=` from the URL's query.
pub fn command(query: Option<&str>) -> Option<Command> {
    let query = query?;
    query.split('&').find_map(|pair| match pair {
        "command=allow" => Some(Command::Allow),
        "command=report" => Some(Command::Report),
        _ => None,
    })
}

/// One request's fields that matter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Request {
    /// As typed (or hashed, with `auth_policy_hash_nonce`), normalised.
    pub login: Option<String>,
    pub remote: Option<IpAddr>,
    pub protocol: Option<String>,
    /// Reports (and checks after the login): whether it succeeded.
    pub success: Option<bool>,
    pub tried_password: Option<bool>,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Malformed {
    #[error("not a JSON object: {0}")]
    NotJson(String),
    #[error("`remote` is not an address")]
    BadRemote,
}

/// Reads a request body (at most [`MAX_BODY`] bytes, which the listener enforces).
pub fn parse(body: &[u8]) -> Result<Request, Malformed> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| Malformed::NotJson(e.to_string()))?;
    let object = value
        .as_object()
        .ok_or_else(|| Malformed::NotJson("not an object".into()))?;
    let text = |name: &str| {
        object
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let remote = match text("remote") {
        Some(r) => Some(r.parse::<IpAddr>().map_err(|_| Malformed::BadRemote)?),
        None => None,
    };
    let login = text("login").map(|l| {
        let l: String = l
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_LOGIN)
            .collect();
        l.to_lowercase()
    });
    Ok(Request {
        login: login.filter(|l| !l.is_empty()),
        remote,
        protocol: text("protocol").map(|p| p.to_ascii_lowercase()),
        success: object.get("success").and_then(|v| v.as_bool()),
        tried_password: object.get("tried_password").and_then(|v| v.as_bool()),
    })
}

/// The answer to a check.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Answer {
    Allow,
    /// Delay the login this many seconds; why.
    Tarpit(u64, &'static str),
    Reject(&'static str),
}

impl Answer {
    pub fn verdict(self) -> (&'static str, &'static str) {
        match self {
            Answer::Allow => ("allow", ""),
            Answer::Tarpit(_, why) => ("tarpit", why),
            Answer::Reject(why) => ("reject", why),
        }
    }

    /// The response body.
    pub fn body(self) -> String {
        let (status, msg) = match self {
            Answer::Allow => (0, ""),
            Answer::Tarpit(secs, _) => (secs.clamp(1, 60) as i64, ""),
            Answer::Reject(_) => (-1, "Too many failed logins, try again later"),
        };
        serde_json::json!({ "status": status, "msg": msg }).to_string()
    }
}

/// Failed logins per name.
pub struct Logins {
    failures: Buckets,
    settings: Settings,
}

impl Logins {
    pub fn new(settings: Settings, max_keys: usize) -> Logins {
        Logins {
            failures: Buckets::new(max_keys),
            settings,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// `command=allow`: `address` is the kernel's limit of the source (None below level 1).
    pub fn check(&self, r: &Request, address: Option<Limit>, now: f64) -> Answer {
        let tarpit = self.settings.tarpit.as_secs().max(1);
        match address {
            Some(Limit::Block) => return Answer::Reject("address_blocked"),
            Some(Limit::Rate { .. }) => return Answer::Tarpit(tarpit, "address_limited"),
            None => {}
        }
        // A successful login (the check after it) is never held back by others' failures.
        if r.success == Some(true) {
            return Answer::Allow;
        }
        if let Some(login) = &r.login
            && self.failures.tokens(login, &self.settings.failures, now) < 1.0
        {
            return Answer::Tarpit(tarpit, "login_failures");
        }
        Answer::Allow
    }

    /// `command=report`: the event it makes, if any (a failed password, a success).
    pub fn report(&mut self, r: &Request, now: f64) -> Option<Event> {
        let source = r.remote?;
        let service = match r.protocol.as_deref() {
            Some("imap") => Service::Imap,
            Some("pop3") => Service::Pop3,
            Some("sieve" | "managesieve") => Service::Sieve,
            Some("smtp" | "submission") => Service::Submission,
            _ => Service::Auth,
        };
        match r.success? {
            true => Some(
                Event::new(EventKind::AuthSuccess { service }, source)
                    .with_user(r.login.as_deref()),
            ),
            // A failure without a password tried (an unknown mechanism, a policy refusal) is
            // not a guess.
            false if r.tried_password != Some(false) => {
                if let Some(login) = &r.login {
                    self.failures.take(login, &self.settings.failures, 1, now);
                }
                Some(
                    Event::new(EventKind::AuthFailure { service }, source)
                        .with_user(r.login.as_deref()),
                )
            }
            false => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logins() -> Logins {
        Logins::new(
            Settings {
                listen: "127.0.0.1:10041".parse().unwrap(),
                api_header: None,
                tarpit: Duration::from_secs(3),
                failures: Shape::of("10/h", 3),
            },
            100,
        )
    }

    #[test]
    fn a_request_is_read_from_its_json_and_hostile_ones_are_refused() {
        let r = parse(
            br#"{"login":" Alice@Example.NET ","pwhash":"ab12","remote":"2001:db8::7",
                "device_id":"","protocol":"IMAP","session_id":"x","success":false,
                "tried_password":true,"extra":{"nested":[1,2]}}"#,
        )
        .unwrap();
        assert_eq!(r.login.as_deref(), Some("alice@example.net"));
        assert_eq!(r.remote, Some("2001:db8::7".parse().unwrap()));
        assert_eq!(r.protocol.as_deref(), Some("imap"));
        assert_eq!((r.success, r.tried_password), (Some(false), Some(true)));
        assert_eq!(command(Some("command=allow")), Some(Command::Allow));
        assert_eq!(command(Some("x=1&command=report")), Some(Command::Report));
        assert_eq!(command(Some("command=drop")), None);
        assert_eq!(command(None), None);
        for bad in [
            &b"[1,2]"[..],
            b"",
            b"\xff\xfe",
            b"{\"remote\":\"203.0.113.7, 198.51.100.1\"}",
            b"{\"remote\":\"not an address\"}",
            b"{\"login\":\"a\"",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        // Control characters are dropped from names, long names cut.
        let long = format!(r#"{{"login":"a\u0000b{}"}}"#, "x".repeat(1000));
        let r = parse(long.as_bytes()).unwrap();
        assert_eq!(r.login.as_ref().unwrap().len(), MAX_LOGIN);
        assert!(r.login.unwrap().starts_with("abx"));
    }

    #[test]
    fn limited_sources_are_tarpitted_blocked_ones_refused_and_failing_names_only_slowed() {
        let mut l = logins();
        let guess = |login: &str, success| Request {
            login: Some(login.into()),
            remote: Some("203.0.113.9".parse().unwrap()),
            protocol: Some("imap".into()),
            success,
            tried_password: Some(true),
        };
        let ask = guess("alice@example.net", None);
        assert_eq!(l.check(&ask, None, 0.0), Answer::Allow);
        let limited = Some(Limit::Rate {
            rate: "6/min".parse().unwrap(),
            burst: 6,
        });
        assert_eq!(
            l.check(&ask, limited, 0.0),
            Answer::Tarpit(3, "address_limited")
        );
        assert_eq!(
            l.check(&ask, Some(Limit::Block), 0.0),
            Answer::Reject("address_blocked")
        );
        assert_eq!(
            Answer::Reject("x").body(),
            r#"{"msg":"Too many failed logins, try again later","status":-1}"#
        );
        assert_eq!(Answer::Tarpit(3, "x").body(), r#"{"msg":"","status":3}"#);
        // Three failures typed with alice's name: her name is tarpitted, never refused.
        for _ in 0..3 {
            let e = l
                .report(&guess("alice@example.net", Some(false)), 0.0)
                .unwrap();
            assert_eq!(
                e.kind,
                EventKind::AuthFailure {
                    service: Service::Imap
                }
            );
            assert_eq!(e.user.as_deref(), Some("alice@example.net"));
        }
        assert_eq!(
            l.check(&ask, None, 1.0),
            Answer::Tarpit(3, "login_failures")
        );
        // The check after her own successful login lets her in; bob is not affected.
        assert_eq!(
            l.check(&guess("alice@example.net", Some(true)), None, 1.0),
            Answer::Allow
        );
        assert_eq!(
            l.check(&guess("bob@example.net", None), None, 1.0),
            Answer::Allow
        );
        // A success is an event with the user; a failure without a password tried is none.
        let ok = l
            .report(&guess("bob@example.net", Some(true)), 1.0)
            .unwrap();
        assert_eq!(
            ok.kind,
            EventKind::AuthSuccess {
                service: Service::Imap
            }
        );
        let mut no_password = guess("carol@example.net", Some(false));
        no_password.tried_password = Some(false);
        assert_eq!(l.report(&no_password, 1.0), None);
        // Twenty minutes later alice's name has a token again (3 an hour... 10/h: 6 min each).
        assert_eq!(l.check(&ask, None, 1201.0), Answer::Allow);
    }
}
