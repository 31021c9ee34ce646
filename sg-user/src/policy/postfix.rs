//! Postfix's SMTPD access policy delegation protocol (SMTPD_POLICY_README): a request is
//! `name=value` lines ending with an empty line; the answer is `action=...` and an empty line.
//! Everything in a request comes from Postfix, but much of it repeats what the client said
//! (`sasl_username` excepted, which Postfix checked), so it is read defensively: bounded line
//! length and count, UTF-8 only, a required `request=smtpd_access_policy`.

use std::collections::HashMap;

use super::quota::{Ask, Stage};

/// The front end's name in metrics and logs.
pub const FRONT: &str = "postfix";

/// The longest line read (Postfix's own limit on attribute values is lower).
pub const MAX_LINE: usize = 4096;
/// The most attributes in one request (Postfix sends about 30).
pub const MAX_ATTRIBUTES: usize = 128;

/// One request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Request {
    attributes: HashMap<String, String>,
}

impl Request {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.attributes
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The SMTP stage: `RCPT`, `DATA`, `END-OF-MESSAGE`, ...
    pub fn state(&self) -> &str {
        self.get("protocol_state").unwrap_or("")
    }

    /// The authenticated user, normalised (trimmed, lower case); None when not authenticated.
    pub fn user(&self) -> Option<String> {
        self.get("sasl_username")
            .map(|u| u.trim().to_lowercase())
            .filter(|u| !u.is_empty())
    }

    pub fn client_address(&self) -> Option<std::net::IpAddr> {
        self.get("client_address")?.parse().ok()
    }

    /// Recipients of the message (`recipient_count`, known from DATA on); at least 1.
    pub fn recipients(&self) -> u32 {
        self.get("recipient_count")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1)
            .max(1)
    }

    /// What ties the requests of one message together.
    pub fn instance(&self) -> Option<&str> {
        self.get("instance")
    }

    /// The question this request asks, for `user` (its [`Request::user`]).
    pub fn ask<'a>(&'a self, user: Option<&'a str>) -> Ask<'a> {
        Ask {
            stage: match self.state() {
                "RCPT" => Stage::Rcpt,
                "DATA" | "END-OF-MESSAGE" => Stage::Data,
                _ => Stage::Other,
            },
            user,
            client: self.client_address(),
            message: self.instance(),
            recipients: self.recipients(),
        }
    }
}

/// Why a request was refused (the connection is then closed, with no verdict).
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Malformed {
    #[error("a line longer than {MAX_LINE} bytes")]
    LongLine,
    #[error("more than {MAX_ATTRIBUTES} attributes")]
    TooMany,
    #[error("a line that is not name=value: {0:.60}")]
    NotAttribute(String),
    #[error("not UTF-8")]
    Binary,
    #[error("no request=smtpd_access_policy")]
    NotPolicy,
    #[error("the request ended before its empty line")]
    Cut,
}

/// Reads one request from `lines` (each without its newline), up to the empty line that ends
/// it. None when the input ends cleanly between requests.
pub fn parse<'a>(mut lines: impl Iterator<Item = &'a [u8]>) -> Result<Option<Request>, Malformed> {
    let mut attributes = HashMap::new();
    let mut seen_any = false;
    loop {
        let Some(line) = lines.next() else {
            return if seen_any {
                Err(Malformed::Cut)
            } else {
                Ok(None)
            };
        };
        if line.len() > MAX_LINE {
            return Err(Malformed::LongLine);
        }
        let line = std::str::from_utf8(line).map_err(|_| Malformed::Binary)?;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            break;
        }
        seen_any = true;
        let (name, value) = line
            .split_once('=')
            .filter(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| Malformed::NotAttribute(line.to_string()))?;
        if attributes.len() >= MAX_ATTRIBUTES {
            return Err(Malformed::TooMany);
        }
        attributes.insert(name.to_string(), value.to_string());
    }
    let request = Request { attributes };
    if request.get("request") != Some("smtpd_access_policy") {
        return Err(Malformed::NotPolicy);
    }
    Ok(Some(request))
}

/// The answer line for `action` (e.g. `DUNNO`, `451 4.7.1 ...`).
pub fn answer(action: &str) -> String {
    // A reply text never carries a newline: it would end the answer early.
    let action: String = action.chars().filter(|c| !c.is_control()).collect();
    format!("action={action}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<&[u8]> {
        text.split('\n').map(str::as_bytes).collect()
    }

    #[test]
    fn a_request_is_read_up_to_its_empty_line() {
        let text = "request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_username= Alice@Example.NET \n\
                    client_address=203.0.113.7\ninstance=123.456.7\nrecipient_count=0\n\nrequest=smtpd";
        let mut it = lines(text).into_iter();
        let r = parse(&mut it).unwrap().unwrap();
        assert_eq!(r.state(), "RCPT");
        assert_eq!(r.user().as_deref(), Some("alice@example.net"));
        assert_eq!(r.client_address(), Some("203.0.113.7".parse().unwrap()));
        assert_eq!(r.recipients(), 1);
        assert_eq!(r.instance(), Some("123.456.7"));
        assert_eq!(
            answer("451 4.7.1 slow\r\ndown"),
            "action=451 4.7.1 slowdown\n\n"
        );
        assert_eq!(parse(std::iter::empty()).unwrap(), None);
    }

    #[test]
    fn malformed_requests_are_refused() {
        let long = format!(
            "request=smtpd_access_policy\nx={}\n\n",
            "y".repeat(MAX_LINE)
        );
        let many: String = std::iter::once("request=smtpd_access_policy\n".to_string())
            .chain((0..200).map(|i| format!("a{i}=b\n")))
            .chain(["\n".to_string()])
            .collect();
        for (text, want) in [
            ("protocol_state=RCPT\n\n", Malformed::NotPolicy),
            ("request=other\n\n", Malformed::NotPolicy),
            (
                "request=smtpd_access_policy\nno equals sign\n\n",
                Malformed::NotAttribute("no equals sign".into()),
            ),
            (
                "request=smtpd_access_policy\n=v\n\n",
                Malformed::NotAttribute("=v".into()),
            ),
            ("request=smtpd_access_policy", Malformed::Cut),
            (long.as_str(), Malformed::LongLine),
            (many.as_str(), Malformed::TooMany),
        ] {
            let got = parse(lines(text).into_iter());
            assert_eq!(got.unwrap_err(), want, "{text:.60}");
        }
        let binary: Vec<&[u8]> = vec![b"request=smtpd_access_policy", b"x=\xff\xfe", b""];
        assert_eq!(parse(binary.into_iter()).unwrap_err(), Malformed::Binary);
    }
}
