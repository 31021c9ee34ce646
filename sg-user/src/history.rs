//! What happened over time, for `slowgate report`: one JSON line per level change and one per
//! minute (drops, events per kind, limited senders), in `history.jsonl` under the state
//! directory. The daemon writes it on the wall clock; `slowgate replay --state-dir DIR` writes
//! the same records on the log's clock. Bounded: past `MAX_BYTES` the file is moved to
//! `history.jsonl.1` (replacing the older one) and a new one starts.

use std::{
    collections::BTreeMap,
    fs::File,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::engine::{Change, KIND_NAMES};

const MAX_BYTES: u64 = 64 << 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Change {
        t: u64,
        sender: String,
        /// `source`, `prefix`, `network`, `user`.
        sender_kind: String,
        from: usize,
        to: usize,
        points: f64,
        #[serde(default)]
        country: Option<String>,
    },
    Minute {
        t: u64,
        drops: u64,
        events: BTreeMap<String, u64>,
        limited: u64,
    },
}

impl Record {
    pub fn time(&self) -> u64 {
        match self {
            Record::Change { t, .. } | Record::Minute { t, .. } => *t,
        }
    }

    pub fn change(t: u64, c: &Change) -> Record {
        let kind = c.sender.kind();
        Record::Change {
            t,
            sender: c.sender.to_string(),
            sender_kind: kind.into(),
            from: c.from,
            to: c.to,
            points: c.points,
            country: c.country.map(crate::domain::country_name),
        }
    }
}

/// Per-minute counts being gathered.
#[derive(Default)]
pub struct Minute {
    pub start: u64,
    pub drops: u64,
    pub events: [u64; KIND_NAMES.len()],
}

impl Minute {
    pub fn record(&self, limited: u64) -> Record {
        Record::Minute {
            t: self.start,
            drops: self.drops,
            events: KIND_NAMES
                .iter()
                .zip(self.events)
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| (k.to_string(), n))
                .collect(),
            limited,
        }
    }
}

pub struct History {
    path: PathBuf,
    file: File,
}

impl History {
    pub fn open(state_dir: &Path) -> anyhow::Result<History> {
        std::fs::create_dir_all(state_dir)?;
        let path = state_dir.join("history.jsonl");
        let file = crate::store::open_for_append(&path)?;
        Ok(History { path, file })
    }

    pub fn write(&mut self, records: &[Record]) -> anyhow::Result<()> {
        let mut text = String::new();
        for r in records {
            text += &serde_json::to_string(r)?;
            text.push('\n');
        }
        if let Err(e) = self.file.write_all(text.as_bytes()) {
            // Part of a line may be on disk (a full disk): reopening ends it with a newline
            // before the next write, so that only the torn line is lost.
            self.file = crate::store::open_for_append(&self.path)?;
            return Err(e).with_context(|| format!("write {}", self.path.display()));
        }
        if self.file.metadata().map_or(0, |m| m.len()) > MAX_BYTES {
            std::fs::rename(&self.path, self.path.with_extension("jsonl.1"))?;
            self.file = crate::store::open_for_append(&self.path)?;
        }
        Ok(())
    }
}

/// Every record at or after `since` (Unix seconds), oldest first, from both files.
pub fn read(state_dir: &Path, since: u64) -> anyhow::Result<Vec<Record>> {
    let mut out = Vec::new();
    for name in ["history.jsonl.1", "history.jsonl"] {
        let path = state_dir.join(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
        };
        // A line a crash cut short, or damaged, is skipped alone.
        let (records, _, _) = crate::store::read_json_lines::<Record>(file)
            .with_context(|| format!("read {}", path.display()))?;
        out.extend(records.into_iter().filter(|r| r.time() >= since));
    }
    out.sort_by_key(Record::time);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_costs_only_itself() {
        let dir = std::env::temp_dir().join(format!("sg-history-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let minute = |t: u64| Minute {
            start: t,
            ..Default::default()
        };
        let mut h = History::open(&dir).unwrap();
        h.write(&[minute(60).record(1)]).unwrap();
        drop(h);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("history.jsonl"))
            .unwrap();
        f.write_all(b"{\"Minute\":{\"t\":12").unwrap();
        let mut h = History::open(&dir).unwrap();
        h.write(&[minute(120).record(2)]).unwrap();
        let times: Vec<u64> = read(&dir, 0).unwrap().iter().map(Record::time).collect();
        assert_eq!(times, [60, 120]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
