//! The control socket's messages, one set of types for the server and the CLI: a request is
//! one JSON object on a line, `{"version":1,"command":...}` with the command's fields; the
//! answer is `{"version":1,"ok":true,"result":...}` or `{"version":1,"ok":false,"error":"..."}`,
//! `result` being the command's reply type below.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

pub use crate::lists::{Row, Rows};
use crate::{decisions::ListChange, engine::SenderInfo};

/// The protocol version this build speaks; a request of another version gets a clear error.
pub const VERSION: u64 = 1;

/// What the CLI asks the daemon.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The senders with the most points ([`Top`]).
    Top {
        #[serde(default = "default_top")]
        n: usize,
    },
    /// One sender ([`Shown`]).
    Show { who: String },
    /// Forget a sender's points and level ([`Released`]).
    Release { who: String },
    /// Read the config file again ([`Reloaded`]).
    Reload,
    /// An operator's change to a list or a limit ([`Said`]).
    Lists { change: ListChange },
    /// The entries of `allow`, `deny` or `limit` ([`Rows`]).
    Rows { list: String },
    /// A bulk import into `allow` or `deny` ([`Said`]): `bytes` bytes of entries, one a line,
    /// follow the request line.
    Import {
        list: String,
        #[serde(default)]
        replace: bool,
        #[serde(default)]
        comment: Option<String>,
        bytes: usize,
    },
    /// Every feed's status ([`crate::feeds::Status`] list).
    Feeds,
    /// Fetch a feed now ([`Said`]).
    FeedUpdate { name: String },
    /// The fleet's state (`Option<crate::fleet::Status>`).
    Fleet,
}

fn default_top() -> usize {
    20
}

/// The reply to [`Request::Top`].
pub type Top = Vec<SenderInfo>;

/// The reply to [`Request::Show`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Shown {
    pub sender: String,
    /// None when the engine does not track it.
    pub tracked: Option<SenderInfo>,
    /// Its recent level changes, oldest first.
    pub changes: Vec<ShownChange>,
    /// Allow, deny and limit entries of the kernel that cover it, as text.
    pub kernel_entries: Vec<String>,
    /// In a fleet: each host's points for it (this host first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fleet: Vec<(String, f64)>,
    /// A user's buckets in the policy service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<crate::policy::quota::UserBuckets>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShownChange {
    pub unix_time: u64,
    pub from: usize,
    pub to: usize,
    pub points: f64,
    /// (event kind, count), most frequent first.
    pub events: Vec<(String, u32)>,
}

/// The reply to [`Request::Release`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Released {
    pub released: String,
    pub level_was: usize,
}

/// The reply to [`Request::Reload`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reloaded {
    /// The config file read.
    pub reloaded: String,
    /// Settings that changed but only take effect at the next start.
    pub needs_restart: Vec<String>,
}

/// The reply to [`Request::Lists`]: what was done, in words.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Said {
    pub said: String,
}

/// A request line: the version, then the command.
pub fn request_line(request: &Request) -> String {
    let mut value = serde_json::to_value(request).expect("a request serialises");
    value["version"] = VERSION.into();
    value.to_string()
}

/// Reads a request line; a clear error for another version, a bad command or bad fields.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let mut value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    match value.get("version").and_then(Value::as_u64) {
        Some(VERSION) => {}
        other => {
            return Err(format!(
                "protocol version {other:?} not spoken (this is {VERSION})"
            ));
        }
    }
    if let Some(object) = value.as_object_mut() {
        object.remove("version");
    }
    serde_json::from_value(value).map_err(|e| format!("bad request: {e}"))
}

/// The answer line for a result (a reply serialised) or an error.
pub fn answer_line(answer: &Result<Value, String>) -> String {
    match answer {
        Ok(result) => serde_json::json!({"version": VERSION, "ok": true, "result": result}),
        Err(error) => serde_json::json!({"version": VERSION, "ok": false, "error": error}),
    }
    .to_string()
}

/// Reads an answer line into the reply type `T`, or the daemon's error.
pub fn parse_answer<T: DeserializeOwned>(line: &str) -> anyhow::Result<T> {
    #[derive(Deserialize)]
    struct Answer {
        version: u64,
        ok: bool,
        #[serde(default)]
        result: Value,
        #[serde(default)]
        error: Option<String>,
    }
    let answer: Answer = serde_json::from_str(line)
        .map_err(|e| anyhow::anyhow!("the daemon's answer is not an answer: {e}"))?;
    if answer.version != VERSION {
        anyhow::bail!(
            "the daemon speaks protocol version {} (this is {VERSION})",
            answer.version
        );
    }
    if !answer.ok {
        anyhow::bail!(
            "{}",
            answer.error.as_deref().unwrap_or("the daemon refused")
        );
    }
    serde_json::from_value(answer.result)
        .map_err(|e| anyhow::anyhow!("the daemon's answer does not fit: {e}"))
}

/// A reply as the `result` of an answer.
pub fn reply<T: Serialize>(reply: &T) -> Result<Value, String> {
    serde_json::to_value(reply).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decisions::ListKind;

    #[test]
    fn every_request_goes_through_a_line_and_back() {
        let requests = [
            Request::Top { n: 5 },
            Request::Show {
                who: "203.0.113.9".into(),
            },
            Request::Release {
                who: "user:alice".into(),
            },
            Request::Reload,
            Request::Lists {
                change: ListChange::Add {
                    kind: ListKind::Deny,
                    network: "198.51.100.0/24".parse().unwrap(),
                    ttl: Some(std::time::Duration::from_secs(3600)),
                    comment: Some("a spammer".into()),
                },
            },
            Request::Rows {
                list: "limit".into(),
            },
        ];
        for request in requests {
            assert_eq!(parse_request(&request_line(&request)), Ok(request));
        }
    }

    #[test]
    fn other_versions_and_unknown_commands_get_a_clear_error() {
        let e = parse_request(r#"{"version":2,"command":"top"}"#).unwrap_err();
        assert!(e.contains("version Some(2) not spoken (this is 1)"), "{e}");
        let e = parse_request(r#"{"command":"top"}"#).unwrap_err();
        assert!(e.contains("version None"), "{e}");
        let e = parse_request(r#"{"version":1,"command":"explode"}"#).unwrap_err();
        assert!(e.contains("unknown variant `explode`"), "{e}");
        let e = parse_request(r#"{"version":1,"command":"show"}"#).unwrap_err();
        assert!(e.contains("missing field `who`"), "{e}");
        assert_eq!(
            parse_request(r#"{"version":1,"command":"top"}"#),
            Ok(Request::Top { n: 20 })
        );
    }

    #[test]
    fn answers_carry_the_reply_type_or_the_error() {
        let said = Said {
            said: "deny 198.51.100.0/24".into(),
        };
        let line = answer_line(&reply(&said));
        assert_eq!(parse_answer::<Said>(&line).unwrap(), said);
        let line = answer_line(&Err("nope".into()));
        assert_eq!(parse_answer::<Said>(&line).unwrap_err().to_string(), "nope");
    }
}
