//! The state that must outlive the daemon and the machine, under `state_dir`
//! (default `/var/lib/slowgate`):
//!
//! - `lists.journal`: every allow/deny/limit entry added or removed with the CLI, one JSON line
//!   each, appended and fsync'ed *before* the command reports success; replayed at start (a
//!   line cut by a crash is skipped). Rewritten compactly when it grows.
//! - `senders.json`: the engine's senders (points, level), written every second at most,
//!   to a temporary file that is fsync'ed and renamed over the old one, so a crash at any
//!   moment leaves either the old or the new snapshot, never a torn one. Times are stored on the
//!   wall clock, so points keep decaying across a reboot. With the senders, how far each log
//!   source had been read when the snapshot was taken: a restart resumes right there, so every
//!   line is counted exactly once in the points that survive.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
};

use anyhow::Context;

use crate::{domain::unix_now, sources::ReadTo};

/// Journal lines beyond which the journal is rewritten with only the live entries.
const COMPACT_AFTER: usize = 10_000;

pub use crate::decisions::ListOp;
pub use crate::engine::SavedSender;

pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating, mode 0700) the state directory.
    pub fn open(dir: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("create the state directory {}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    fn journal(&self) -> PathBuf {
        self.dir.join("lists.journal")
    }

    /// Appends one change and makes it durable before returning.
    pub fn record(&self, op: &ListOp) -> anyhow::Result<()> {
        self.record_all(std::slice::from_ref(op))
    }

    /// Appends many changes with one write and one fsync (a bulk import): all of them are
    /// durable when this returns.
    pub fn record_all(&self, ops: &[ListOp]) -> anyhow::Result<()> {
        let mut text = Vec::with_capacity(ops.len() * 80);
        for op in ops {
            serde_json::to_writer(&mut text, op)?;
            text.push(b'\n');
        }
        let mut file = open_for_append(&self.journal())?;
        file.write_all(&text)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("write {}", self.journal().display()))?;
        sync_dir(&self.dir);
        Ok(())
    }

    /// The live entries: the last change of each (list, network) that left it present and not
    /// expired. A line a crash cut short is skipped.
    pub fn list_entries(&self) -> anyhow::Result<Vec<ListOp>> {
        let file = match File::open(self.journal()) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).context("open the lists journal"),
        };
        let mut latest: BTreeMap<(String, String), ListOp> = BTreeMap::new();
        let (ops, _lines, bad) =
            read_json_lines::<ListOp>(file).context("read the lists journal")?;
        if bad > 0 {
            tracing::info!(
                "{}: skipped {bad} damaged line(s), kept every other entry",
                self.journal().display()
            );
        }
        // Changes, counting each network of an import's line.
        let mut changes = 0;
        for op in ops.into_iter().flat_map(ListOp::expand) {
            changes += 1;
            latest.insert((op.list.clone(), op.network.clone()), op);
        }
        let now = unix_now();
        let live: Vec<ListOp> = latest
            .into_values()
            .filter(|op| op.present && op.expires_unix.is_none_or(|at| at > now))
            .collect();
        // Compacted once dead changes are many: never on every read of a journal whose live
        // entries alone are many (a million imported entries).
        if changes > COMPACT_AFTER.max(2 * live.len()) {
            self.rewrite_journal(&live)?;
        }
        Ok(live)
    }

    fn rewrite_journal(&self, live: &[ListOp]) -> anyhow::Result<()> {
        let text: String = live
            .iter()
            .filter_map(|op| serde_json::to_string(op).ok())
            .map(|l| l + "\n")
            .collect();
        replace_file(&self.journal(), text.as_bytes())
    }

    fn senders(&self) -> PathBuf {
        self.dir.join("senders.json")
    }

    /// Replaces the senders snapshot, crash-safely, with how far each source had been read
    /// when it was taken (one file: a restart resumes exactly after the lines it includes).
    pub fn save_senders(
        &self,
        senders: &[SavedSender],
        read: &BTreeMap<String, ReadTo>,
    ) -> anyhow::Result<()> {
        let text = serde_json::to_vec(&SavedState {
            senders: senders.to_vec(),
            read: read.clone(),
        })?;
        replace_file(&self.senders(), &text)
    }

    pub fn load_senders(&self) -> anyhow::Result<Vec<SavedSender>> {
        Ok(self.load_state()?.senders)
    }

    /// How far each source had been read when the snapshot was taken.
    pub fn load_read(&self) -> anyhow::Result<BTreeMap<String, ReadTo>> {
        Ok(self.load_state()?.read)
    }

    fn load_state(&self) -> anyhow::Result<SavedState> {
        let bytes = match std::fs::read(self.senders()) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SavedState::default()),
            Err(e) => return Err(e).context("read the senders snapshot"),
        };
        let not_one = || format!("{} is not a senders snapshot", self.senders().display());
        // Before read positions were saved with it, the file was the list of senders alone.
        match serde_json::from_slice::<Vec<SavedSender>>(&bytes) {
            Ok(senders) => Ok(SavedState {
                senders,
                read: BTreeMap::new(),
            }),
            Err(_) => serde_json::from_slice(&bytes).with_context(not_one),
        }
    }
}

/// `senders.json`: the senders' points and levels, and how far each source had been read.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct SavedState {
    senders: Vec<SavedSender>,
    #[serde(default)]
    read: BTreeMap<String, ReadTo>,
}

/// Writes `path` through a temporary file, fsync'ed and renamed over it.
/// Opens a JSON-lines file for appending so that the next line starts on a line boundary:
/// when a crash or a full disk left a torn last line, a newline ends it first, so the torn
/// line stays the only damaged one and never swallows the next acknowledged entry.
pub fn open_for_append(path: &Path) -> anyhow::Result<File> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    let len = file.metadata()?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1))?;
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")
                .with_context(|| format!("end the torn last line of {}", path.display()))?;
        }
    }
    Ok(file)
}

/// Every line of a JSON-lines file that parses as `T`: (records, lines, damaged lines). A
/// damaged line (torn, invalid UTF-8, not JSON) is skipped alone; the rest are kept.
pub fn read_json_lines<T: serde::de::DeserializeOwned>(
    file: File,
) -> std::io::Result<(Vec<T>, usize, usize)> {
    let mut out = Vec::new();
    let (mut lines, mut bad) = (0, 0);
    for line in BufReader::new(file).split(b'\n') {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        lines += 1;
        match serde_json::from_slice::<T>(&line) {
            Ok(record) => out.push(record),
            Err(_) => bad += 1,
        }
    }
    Ok((out, lines, bad))
}

fn replace_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

/// Makes a rename or a file creation in `dir` durable.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(network: &str, present: bool, expires_unix: Option<u64>) -> ListOp {
        ListOp {
            list: "deny".into(),
            network: network.into(),
            present,
            expires_unix,
            limit: None,
            comment: Some("test".into()),
            networks: Vec::new(),
        }
    }

    #[test]
    fn an_import_is_one_line_per_change_and_replays_as_its_entries() {
        use crate::decisions::{Import, ListKind};
        let dir = std::env::temp_dir().join(format!("sg-store-i-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        let net = |s: &str| s.parse::<crate::domain::Network>().unwrap();
        store.record(&op("198.51.100.7/32", true, None)).unwrap();
        let import = Import {
            kind: ListKind::Deny,
            networks: vec![net("203.0.113.0/24"), net("2001:db8::/48")],
            replace: true,
            comment: Some("feed".into()),
        };
        let ops = import.ops(&[net("198.51.100.7")]);
        assert_eq!(ops.len(), 2, "removals, then additions");
        store.record_all(&ops).unwrap();
        let text = std::fs::read_to_string(store.journal()).unwrap();
        assert_eq!(text.lines().count(), 3);
        let live: Vec<String> = store
            .list_entries()
            .unwrap()
            .into_iter()
            .map(|op| op.network)
            .collect();
        assert_eq!(live, ["2001:db8::/48", "203.0.113.0/24"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_journal_replays_the_last_word_on_each_entry_and_skips_a_torn_line() {
        let dir = std::env::temp_dir().join(format!("sg-store-{}", std::process::id()));
        let store = Store::open(&dir).unwrap();
        store.record(&op("203.0.113.0/24", true, None)).unwrap();
        store.record(&op("198.51.100.7/32", true, None)).unwrap();
        store.record(&op("198.51.100.7/32", false, None)).unwrap();
        store.record(&op("2001:db8::/64", true, Some(1))).unwrap();
        // A crash in the middle of an append.
        let mut f = OpenOptions::new()
            .append(true)
            .open(store.journal())
            .unwrap();
        f.write_all(b"{\"list\":\"deny\",\"netw").unwrap();
        let live = store.list_entries().unwrap();
        assert_eq!(live, [op("203.0.113.0/24", true, None)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_or_invalid_line_never_costs_another_entry() {
        let dir = std::env::temp_dir().join(format!("sg-store-torn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        store.record(&op("203.0.113.0/24", true, None)).unwrap();
        // A crash mid-append, then the next acknowledged entry.
        let mut f = OpenOptions::new()
            .append(true)
            .open(store.journal())
            .unwrap();
        f.write_all(b"{\"list\":\"deny\",\"netw").unwrap();
        store.record(&op("198.51.100.7/32", true, None)).unwrap();
        // One invalid byte in a line of its own, then another entry.
        f.write_all(b"\xff\xfe{not json\n").unwrap();
        store.record(&op("2001:db8::/64", true, None)).unwrap();
        let live = store.list_entries().unwrap();
        assert_eq!(
            live,
            [
                op("198.51.100.7/32", true, None),
                op("2001:db8::/64", true, None),
                op("203.0.113.0/24", true, None),
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_snapshot_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("sg-store-s-{}", std::process::id()));
        let store = Store::open(&dir).unwrap();
        assert!(store.load_senders().unwrap().is_empty());
        let s = SavedSender {
            kind: "source".into(),
            id: "203.0.113.9".into(),
            points: 12.5,
            at_unix: 1,
            level: 1,
            level_since_unix: 1,
            country: None,
        };
        let none = BTreeMap::new();
        store.save_senders(std::slice::from_ref(&s), &none).unwrap();
        let read = BTreeMap::from([(
            "/var/log/mail.log".to_string(),
            ReadTo::Journal("s=1".into()),
        )]);
        store.save_senders(&[s.clone(), s.clone()], &read).unwrap();
        assert_eq!(store.load_senders().unwrap().len(), 2);
        assert_eq!(store.load_read().unwrap(), read);
        // A snapshot of the earlier form (the senders alone) still loads.
        std::fs::write(
            store.senders(),
            serde_json::to_vec(std::slice::from_ref(&s)).unwrap(),
        )
        .unwrap();
        assert_eq!(store.load_senders().unwrap().len(), 1);
        assert!(store.load_read().unwrap().is_empty());
        assert!(!store.senders().with_extension("tmp").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
