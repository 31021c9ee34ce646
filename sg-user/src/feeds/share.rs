//! Feeds in a fleet: one host fetches each feed (it holds a lock in the shared store while it
//! does), and the others take the copy it stored instead of fetching it themselves. When the
//! store cannot be reached, every host fetches for itself: the store never stops a feed.

use std::time::{Duration, Instant};

use super::{Fetcher, formats, unix_now};

/// Where a fleet keeps feed copies (Redis, in the fleet module).
pub trait Share: Send {
    /// Tries to become the host that fetches `feed` for `hold`; Ok(false) when another is.
    fn lock(&mut self, feed: &str, hold: Duration) -> anyhow::Result<bool>;
    fn unlock(&mut self, feed: &str);
    /// Stores a good copy (one network a line) checked at `checked_unix`.
    fn put(&mut self, feed: &str, text: &str, checked_unix: u64) -> anyhow::Result<()>;
    /// The stored copy and when it was checked, if any.
    fn get(&mut self, feed: &str) -> anyhow::Result<Option<(String, u64)>>;
}

/// How soon a host that found another fetching looks again for its copy.
const FOLLOW: Duration = Duration::from_secs(30);

impl Fetcher {
    /// A check in a fleet: fetch under the lock and store the copy, or take the fetcher's.
    pub(super) fn check_shared(&mut self, i: usize) -> anyhow::Result<String> {
        let feed = self.feeds[i].clone();
        // The lock holder is the fleet's fetcher until its next look: it keeps the lock after
        // a success, and gives it up after a failure so that another host tries.
        let hold = feed
            .refresh
            .saturating_sub(Duration::from_secs(1))
            .max(feed.timeout + Duration::from_secs(30));
        let Some(share) = self.share.as_mut() else {
            return self.fetch_and_apply(i);
        };
        match share.lock(&feed.name, hold) {
            Ok(true) => {
                let result = self.fetch_and_apply(i);
                let copy = self.copies[i].as_ref().filter(|_| result.is_ok());
                let text: Option<String> =
                    copy.map(|c| c.iter().map(|n| format!("{n}\n")).collect());
                let checked = self.metas[i].checked_unix;
                if let Some(share) = self.share.as_mut() {
                    match text {
                        Some(text) => {
                            if let Err(e) = share.put(&feed.name, &text, checked) {
                                tracing::warn!(
                                    "feed {}: could not share the copy: {e:#}",
                                    feed.name
                                );
                            }
                        }
                        None => share.unlock(&feed.name),
                    }
                }
                result
            }
            Ok(false) => self.take_shared(i),
            Err(e) => {
                tracing::info!(
                    "feed {}: fleet store unreachable ({e:#}); fetching",
                    feed.name
                );
                self.fetch_and_apply(i)
            }
        }
    }

    /// Another host fetches: its stored copy, when newer than ours, goes through the same
    /// checks as a fetched one.
    fn take_shared(&mut self, i: usize) -> anyhow::Result<String> {
        let feed = self.feeds[i].clone();
        let stored = match self.share.as_mut().map(|s| s.get(&feed.name)) {
            Some(Ok(stored)) => stored,
            Some(Err(e)) => {
                tracing::info!(
                    "feed {}: fleet store unreachable ({e:#}); fetching",
                    feed.name
                );
                return self.fetch_and_apply(i);
            }
            None => None,
        };
        match stored {
            Some((text, checked)) if checked > self.metas[i].checked_unix => {
                if checked > unix_now() + 300 {
                    anyhow::bail!("the fleet's copy is dated in the future");
                }
                let copy = formats::parse(formats::Format::Plain, &text, unix_now())
                    .map_err(|e| e.context("the fleet's copy refused"))?;
                let said = self.accept(i, copy, (None, None), checked)?;
                Ok(format!("{said}, from the host that fetches it"))
            }
            Some(_) => {
                // Not newer yet: the fetcher is at it; look again soon.
                self.next[i] = Instant::now() + FOLLOW.min(feed.refresh);
                Ok("another host is fetching it".into())
            }
            None => {
                self.next[i] = Instant::now() + FOLLOW.min(feed.refresh);
                Ok("another host is fetching it".into())
            }
        }
    }
}
