//! What a fleet writes to Redis and reads back, and the checks on what it reads: data from
//! Redis is treated like any other input an attacker might control (a bad or compromised Redis
//! must not deny 0.0.0.0/0, crash a host, or blow up its memory).
//!
//! Keys (every key carries a hash tag, so the layout works on Redis Cluster):
//! - `PREFIX:{SENDER}:points`: a hash, host name -> "POINTS AT_MS", each host's own decayed
//!   contribution at AT_MS (Unix milliseconds); the key expires when the largest decays to
//!   nothing;
//! - `PREFIX:{lists}`: a hash, "LIST NETWORK" -> an operator's entry (JSON);
//! - `PREFIX:{hosts}`: a hash, host name -> its last heartbeat (Unix milliseconds);
//! - channel `PREFIX:events`: every change as it happens, JSON.

use serde_json::{Value, json};

use super::Spent;
use crate::{
    decisions::ListChange,
    domain::{PrefixLengths, Sender},
};

/// The longest message or hash value read.
pub const MAX_VALUE: usize = 4096;
/// The most points one host may contribute for one sender.
pub const MAX_POINTS: f64 = 1_000_000.0;
/// Contributions below this are removed, not written.
pub const NEGLIGIBLE: f64 = 0.01;
/// How far a contribution's time may be off this host's clock (a peer's clock skew).
const SKEW_MS: u64 = 5 * 60 * 1000;
/// The oldest contribution taken (older ones have decayed to nothing anyway).
const OLDEST_MS: u64 = 7 * 86_400 * 1000;
/// The longest user name taken.
const MAX_USER: usize = 256;

/// One thing read from the fleet.
#[derive(Clone, Debug, PartialEq)]
pub enum Incoming {
    /// A host's own contribution for a sender, at `at_ms`.
    Points {
        host: String,
        sender: Sender,
        points: f64,
        at_ms: u64,
    },
    /// A sender released fleet-wide.
    Release { host: String, sender: Sender },
    /// An operator's change made on another host.
    List { host: String, change: ListChange },
    /// Tokens another host took from a user's buckets.
    Spent { host: String, spent: Spent },
}

/// The longest user name taken from another host.
const MAX_SPENT_USER: usize = 256;
/// The most tokens one message may say were taken.
const MAX_SPENT: u64 = 1_000_000;
/// A debit older than this (it waited while Redis was away) is not applied.
const SPENT_FRESH_MS: u64 = 60_000;

/// A valid host name: what `name` in `[fleet]` may be.
pub fn valid_host(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

pub fn points_key(prefix: &str, sender: &Sender) -> String {
    format!("{prefix}:{{{}}}:points", key_safe(&sender.to_string()))
}
pub fn lists_key(prefix: &str) -> String {
    format!("{prefix}:{{lists}}")
}
pub fn hosts_key(prefix: &str) -> String {
    format!("{prefix}:{{hosts}}")
}
pub fn channel(prefix: &str) -> String {
    format!("{prefix}:events")
}
/// The pattern of every points key (for the full reconcile's SCAN).
pub fn points_pattern(prefix: &str) -> String {
    format!("{prefix}:{{*}}:points")
}

/// A sender as a key part: braces (hash tag delimiters) and bytes outside printable ASCII
/// are percent-encoded, so a user name cannot move its key to another slot or break it.
fn key_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_graphic() && b != b'{' && b != b'}' && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The sender a points key names, checked.
pub fn sender_of_key(prefix: &str, key: &str, lengths: PrefixLengths) -> Result<Sender, String> {
    let inner = key
        .strip_prefix(&format!("{prefix}:{{"))
        .and_then(|r| r.strip_suffix("}:points"))
        .ok_or_else(|| format!("not a points key: {key:.80}"))?;
    sender(&unescape(inner)?, lengths)
}

fn unescape(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or("a cut escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "a bad escape")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8".to_string())
}

/// A sender named by the fleet: an address, a prefix or network of this host's lengths, or a
/// user; never a country, never anything wider.
pub fn sender(text: &str, lengths: PrefixLengths) -> Result<Sender, String> {
    let sender = Sender::parse(text, lengths).map_err(|e| e.to_string())?;
    match &sender {
        Sender::Country(_) => Err("countries are not shared".into()),
        Sender::User(u) if u.len() > MAX_USER || u.chars().any(char::is_control) => {
            Err("a user name too long or with control characters".into())
        }
        _ => Ok(sender),
    }
}

/// The value of a host's field in a points key.
pub fn points_value(points: f64, at_ms: u64) -> String {
    format!("{points:.4} {at_ms}")
}

/// Reads a points value, checked: finite, 0 to [`MAX_POINTS`], a time near ours.
pub fn parse_points(value: &str, now_ms: u64) -> Result<(f64, u64), String> {
    let (points, at) = value
        .split_once(' ')
        .ok_or_else(|| format!("not \"POINTS AT_MS\": {value:.80}"))?;
    let points: f64 = points.parse().map_err(|_| "points are not a number")?;
    let at_ms: u64 = at.parse().map_err(|_| "the time is not a number")?;
    check_points(points, at_ms, now_ms)?;
    Ok((points, at_ms))
}

fn check_points(points: f64, at_ms: u64, now_ms: u64) -> Result<(), String> {
    if !(points.is_finite() && (0.0..=MAX_POINTS).contains(&points)) {
        return Err(format!("{points} points is out of range"));
    }
    if at_ms > now_ms + SKEW_MS || at_ms + OLDEST_MS < now_ms {
        return Err(format!("time {at_ms} is too far from now"));
    }
    Ok(())
}

pub fn points_message(host: &str, sender: &Sender, points: f64, at_ms: u64) -> String {
    json!({"t": "p", "h": host, "s": sender.to_string(), "p": points, "at": at_ms}).to_string()
}

pub fn release_message(host: &str, sender: &Sender) -> String {
    json!({"t": "r", "h": host, "s": sender.to_string()}).to_string()
}

pub fn spent_message(host: &str, spent: &Spent, at_ms: u64) -> String {
    json!({"t": "b", "h": host, "u": spent.user, "m": spent.messages, "r": spent.recipients, "at": at_ms})
        .to_string()
}

pub fn list_message(host: &str, change: &ListChange) -> String {
    json!({"t": "l", "h": host, "c": Value::from(change.clone())}).to_string()
}

/// The field and value of an operator's entry in the lists hash; None for a removal.
pub fn list_field(change: &ListChange) -> String {
    let v = Value::from(change.clone());
    format!(
        "{} {}",
        v["list"].as_str().unwrap_or(""),
        v["network"].as_str().unwrap_or("")
    )
}

/// An entry of the lists hash with its expiry as a wall-clock time.
pub fn list_value(change: &ListChange, now_unix: u64) -> String {
    let mut v = Value::from(change.clone());
    if let Some(ttl) = v["ttl_secs"].as_u64() {
        v["expires_unix"] = json!(now_unix + ttl);
    }
    v.to_string()
}

/// Reads an entry of the lists hash back (None when it has expired).
pub fn parse_list_value(
    value: &str,
    lengths: PrefixLengths,
    now_unix: u64,
) -> Result<Option<ListChange>, String> {
    if value.len() > MAX_VALUE {
        return Err("a list entry too large".into());
    }
    let mut v: Value = serde_json::from_str(value).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(at) = v["expires_unix"].as_u64() {
        if at <= now_unix {
            return Ok(None);
        }
        v["ttl_secs"] = json!(at - now_unix);
    }
    change(v, lengths).map(Some)
}

/// A list change from the fleet, checked: a known operation, and no network wider than this
/// host's network lengths (a bad Redis must not deny everyone).
fn change(v: Value, lengths: PrefixLengths) -> Result<ListChange, String> {
    let change = ListChange::try_from(v)?;
    let network = match &change {
        ListChange::Add { network, .. }
        | ListChange::Del { network, .. }
        | ListChange::LimitSet { network, .. }
        | ListChange::LimitDel { network } => *network,
    };
    let (len, widest) = if network.is_v4() {
        (
            network.prefix_len - sg_common::V4_MAPPED_BITS,
            lengths.network_v4,
        )
    } else {
        (network.prefix_len, lengths.network_v6)
    };
    if len < u32::from(widest) {
        return Err(format!(
            "{network} is wider than /{widest}, the widest entry the fleet may share"
        ));
    }
    Ok(change)
}

/// Reads a message from the channel, checked; messages this host sent come back too and are
/// skipped (None).
pub fn parse_message(
    bytes: &[u8],
    own: &str,
    lengths: PrefixLengths,
    now_ms: u64,
) -> Result<Option<Incoming>, String> {
    if bytes.len() > MAX_VALUE {
        return Err(format!("a message of {} bytes", bytes.len()));
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let host = v["h"]
        .as_str()
        .filter(|h| valid_host(h))
        .ok_or("no valid host")?;
    if host == own {
        return Ok(None);
    }
    let host = host.to_string();
    let sender_field =
        || -> Result<Sender, String> { sender(v["s"].as_str().ok_or("no sender")?, lengths) };
    match v["t"].as_str() {
        Some("p") => {
            let points = v["p"].as_f64().ok_or("no points")?;
            let at_ms = v["at"].as_u64().ok_or("no time")?;
            check_points(points, at_ms, now_ms)?;
            Ok(Some(Incoming::Points {
                host,
                sender: sender_field()?,
                points,
                at_ms,
            }))
        }
        Some("r") => Ok(Some(Incoming::Release {
            host,
            sender: sender_field()?,
        })),
        Some("l") => Ok(Some(Incoming::List {
            host,
            change: change(v["c"].clone(), lengths)?,
        })),
        Some("b") => {
            let user = v["u"]
                .as_str()
                .filter(|u| {
                    !u.is_empty() && u.len() <= MAX_SPENT_USER && !u.chars().any(char::is_control)
                })
                .ok_or("no valid user")?;
            let count = |k: &str| {
                v[k].as_u64()
                    .filter(|n| *n <= MAX_SPENT)
                    .map(|n| n as u32)
                    .ok_or(format!("no valid count {k:?}"))
            };
            let at_ms = v["at"].as_u64().ok_or("no time")?;
            if at_ms + SPENT_FRESH_MS < now_ms || at_ms > now_ms + SPENT_FRESH_MS {
                return Ok(None);
            }
            Ok(Some(Incoming::Spent {
                host,
                spent: Spent {
                    user: user.to_lowercase(),
                    messages: count("m")?,
                    recipients: count("r")?,
                },
            }))
        }
        other => Err(format!("unknown message type {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LENGTHS: PrefixLengths = PrefixLengths::DEFAULT;
    const NOW: u64 = 1_763_884_800_000;

    #[test]
    fn a_users_spent_tokens_travel_checked_and_stale_ones_are_dropped() {
        let spent = Spent {
            user: "Alice@Example.net".into(),
            messages: 3,
            recipients: 7,
        };
        let m = spent_message("mx1", &spent, NOW);
        let Some(Incoming::Spent { host, spent: got }) =
            parse_message(m.as_bytes(), "mx2", LENGTHS, NOW).unwrap()
        else {
            panic!("not a debit: {m}");
        };
        assert_eq!(host, "mx1");
        assert_eq!(
            (got.user.as_str(), got.messages, got.recipients),
            ("alice@example.net", 3, 7)
        );
        // Waited too long (Redis was away): not applied; from the future: not applied.
        let old = spent_message("mx1", &spent, NOW - 120_000);
        assert_eq!(
            parse_message(old.as_bytes(), "mx2", LENGTHS, NOW).unwrap(),
            None
        );
        let late = spent_message("mx1", &spent, NOW + 120_000);
        assert_eq!(
            parse_message(late.as_bytes(), "mx2", LENGTHS, NOW).unwrap(),
            None
        );
        for bad in [
            r#"{"t":"b","h":"mx1","u":"","m":1,"r":1,"at":1763884800000}"#.to_string(),
            r#"{"t":"b","h":"mx1","u":"a\u0000b","m":1,"r":1,"at":1763884800000}"#.to_string(),
            r#"{"t":"b","h":"mx1","u":"a","m":-1,"r":1,"at":1763884800000}"#.to_string(),
            r#"{"t":"b","h":"mx1","u":"a","m":1e12,"r":1,"at":1763884800000}"#.to_string(),
            format!(
                r#"{{"t":"b","h":"mx1","u":"{}","m":1,"r":1,"at":1763884800000}}"#,
                "x".repeat(300)
            ),
        ] {
            assert!(
                parse_message(bad.as_bytes(), "mx2", LENGTHS, NOW).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn messages_round_trip_and_our_own_are_skipped() {
        let s = Sender::Source("203.0.113.66".parse().unwrap());
        let m = points_message("mx1", &s, 7.5, NOW);
        assert_eq!(
            parse_message(m.as_bytes(), "mx2", LENGTHS, NOW).unwrap(),
            Some(Incoming::Points {
                host: "mx1".into(),
                sender: s.clone(),
                points: 7.5,
                at_ms: NOW
            })
        );
        assert_eq!(
            parse_message(m.as_bytes(), "mx1", LENGTHS, NOW).unwrap(),
            None
        );
        let user = Sender::User("a{b}%c d".into());
        let key = points_key("sg", &user);
        assert!(!key["sg:{".len()..key.len() - "}:points".len()].contains(['{', '}', ' ']));
        assert_eq!(sender_of_key("sg", &key, LENGTHS).unwrap(), user);
    }

    #[test]
    fn hostile_data_is_refused() {
        let hostile: &[&[u8]] = &[
            br#"{"t":"l","h":"evil","c":{"op":"add","list":"deny","network":"0.0.0.0/0"}}"#,
            br#"{"t":"l","h":"evil","c":{"op":"add","list":"deny","network":"::/0"}}"#,
            br#"{"t":"l","h":"evil","c":{"op":"add","list":"deny","network":"198.0.0.0/8"}}"#,
            br#"{"t":"p","h":"evil","s":"203.0.113.66","p":1e308,"at":1763884800000}"#,
            br#"{"t":"p","h":"evil","s":"203.0.113.66","p":-5,"at":1763884800000}"#,
            br#"{"t":"p","h":"evil","s":"203.0.113.66","p":5,"at":99999999999999}"#,
            br#"{"t":"p","h":"evil","s":"0.0.0.0/0","p":5,"at":1763884800000}"#,
            br#"{"t":"p","h":"evil","s":"203.0.0.0/8","p":5,"at":1763884800000}"#,
            br#"{"t":"p","h":"evil","s":"country:DE","p":5,"at":1763884800000}"#,
            br#"{"t":"p","h":"ev il","s":"203.0.113.66","p":5,"at":1763884800000}"#,
            br#"{"t":"x","h":"evil"}"#,
            b"\xff\xfe not json",
            b"",
        ];
        for bytes in hostile {
            assert!(
                parse_message(bytes, "mx1", LENGTHS, NOW).is_err(),
                "taken: {}",
                String::from_utf8_lossy(bytes)
            );
        }
        let huge = format!(r#"{{"t":"r","h":"evil","s":"user:{}"}}"#, "x".repeat(5000));
        assert!(parse_message(huge.as_bytes(), "mx1", LENGTHS, NOW).is_err());
        for bad in ["nan 1763884800000", "5", "5 x", "-1 1763884800000", "inf 1"] {
            assert!(parse_points(bad, NOW).is_err(), "{bad}");
        }
        assert!(
            parse_list_value(
                r#"{"op":"add","list":"deny","network":"0.0.0.0/1"}"#,
                LENGTHS,
                0
            )
            .is_err()
        );
        // A /16 (the network length) and narrower are fine; an expired entry is dropped.
        assert!(
            parse_list_value(
                r#"{"op":"add","list":"deny","network":"198.51.0.0/16"}"#,
                LENGTHS,
                0
            )
            .unwrap()
            .is_some()
        );
        assert_eq!(
            parse_list_value(
                r#"{"op":"add","list":"deny","network":"198.51.100.0/24","expires_unix":10}"#,
                LENGTHS,
                20
            ),
            Ok(None)
        );
    }
}
