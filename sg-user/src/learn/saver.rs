//! The thread that writes the senders' snapshots (with how far each source had been read) and
//! the history, so the learning loop never waits on disk.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::{engine::Engine, sources::ReadTo};

/// Senders saved at most (the most important first).
const SAVE_MAX: usize = 200_000;
/// How often the senders are saved while anything changes: a crash loses about this much.
pub(super) const SAVE_EVERY: Duration = Duration::from_secs(1);

/// The thread that writes the senders' snapshots and the history, so the learning loop never
/// waits on disk.
pub(super) struct Saver {
    jobs: Option<std::sync::mpsc::SyncSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// (saves, errors, Unix time of the last save).
    counts: Arc<Mutex<(u64, u64, u64)>>,
    /// A snapshot is queued or being written: the next one waits.
    snapshot_pending: Arc<AtomicBool>,
    /// History batches dropped because the thread was that far behind.
    history_lost: u64,
}

enum Job {
    /// The points, and how far each source had been read when they were taken.
    Snapshot(crate::engine::Snapshot, BTreeMap<String, ReadTo>),
    History(Vec<crate::history::Record>),
}

/// History batches and a snapshot queued at most (the disk can fall behind this far).
const SAVER_QUEUE: usize = 1024;

impl Saver {
    pub(super) fn start(
        store: Option<crate::store::Store>,
        mut history: Option<crate::history::History>,
    ) -> Saver {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(SAVER_QUEUE);
        let counts = Arc::new(Mutex::new((0, 0, 0)));
        let pending = Arc::new(AtomicBool::new(false));
        let (shared, busy) = (counts.clone(), pending.clone());
        let thread = std::thread::Builder::new()
            .name("sg-saver".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        Job::Snapshot(snapshot, read) => {
                            let Some(store) = &store else { continue };
                            let ok = match store.save_senders(&snapshot.rows(SAVE_MAX), &read) {
                                Ok(()) => true,
                                Err(e) => {
                                    tracing::warn!("saving points failed: {e:#}");
                                    false
                                }
                            };
                            busy.store(false, Ordering::Release);
                            let mut c = shared.lock().unwrap_or_else(|e| e.into_inner());
                            if ok {
                                c.0 += 1;
                                c.2 = crate::domain::unix_now();
                            } else {
                                c.1 += 1;
                            }
                        }
                        Job::History(records) => {
                            if let Some(h) = &mut history
                                && let Err(e) = h.write(&records)
                            {
                                tracing::warn!("writing history failed: {e:#}");
                            }
                        }
                    }
                }
            })
            .expect("spawn the saver thread");
        Saver {
            jobs: Some(tx),
            thread: Some(thread),
            counts,
            snapshot_pending: pending,
            history_lost: 0,
        }
    }

    /// Hands a snapshot to the saver thread; false when it is still busy with the last one.
    pub(super) fn offer(&self, engine: &Engine, read: &BTreeMap<String, ReadTo>) -> bool {
        let Some(tx) = &self.jobs else {
            return false;
        };
        if self.snapshot_pending.swap(true, Ordering::AcqRel) {
            return false;
        }
        let snapshot = engine.snapshot(crate::domain::boot_time_ns(), crate::domain::unix_now());
        match tx.try_send(Job::Snapshot(snapshot, read.clone())) {
            Ok(()) => true,
            Err(std::sync::mpsc::TrySendError::Full(_)) => {
                self.snapshot_pending.store(false, Ordering::Release);
                false
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                panic!("the saver thread is gone")
            }
        }
    }

    /// Queues history records; when the thread is too far behind they are dropped and counted.
    pub(super) fn history(&mut self, records: Vec<crate::history::Record>) {
        let Some(tx) = &self.jobs else { return };
        match tx.try_send(Job::History(records)) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(_)) => {
                self.history_lost += 1;
                if self.history_lost.is_power_of_two() {
                    tracing::warn!(
                        "the disk is behind: {} history batches not written",
                        self.history_lost
                    );
                }
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                panic!("the saver thread is gone")
            }
        }
    }

    pub(super) fn counts(&self) -> (u64, u64, u64) {
        *self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last snapshot, written with everything queued before this returns (at stop).
    pub(super) fn finish(mut self, engine: &Engine, read: &BTreeMap<String, ReadTo>) {
        if let Some(tx) = self.jobs.take() {
            let snapshot =
                engine.snapshot(crate::domain::boot_time_ns(), crate::domain::unix_now());
            let _ = tx.send(Job::Snapshot(snapshot, read.clone()));
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            panic!("the saver thread panicked");
        }
    }
}
