//! Feed copies in the fleet's Redis: a lock per feed (the host holding it fetches) and the
//! last good copy it stored, for the others. Used by the feeds thread, which may wait: a
//! connection of its own, every call bounded by a timeout (at least 2 s: copies are large).

use std::time::Duration;

use anyhow::Context;

use super::Settings;

pub struct FeedStore {
    client: redis::Client,
    conn: Option<redis::Connection>,
    prefix: String,
    name: String,
    timeout: Duration,
}

impl FeedStore {
    pub fn new(settings: &Settings) -> anyhow::Result<FeedStore> {
        Ok(FeedStore {
            client: redis::Client::open(settings.info.clone())
                .map_err(|e| anyhow::anyhow!("fleet: {:?}", e.kind()))?,
            conn: None,
            prefix: settings.key_prefix.clone(),
            name: settings.name.clone(),
            timeout: settings.timeout.max(Duration::from_secs(2)),
        })
    }

    fn key(&self, what: &str, feed: &str) -> String {
        format!("{}:{{feeds}}:{what}:{feed}", self.prefix)
    }

    /// Runs `f` on the connection (made when there is none); a failure drops it.
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> anyhow::Result<T> {
        if self.conn.is_none() {
            let conn = self
                .client
                .get_connection_with_timeout(self.timeout)
                .map_err(|e| anyhow::anyhow!("connect: {:?}", e.kind()))?;
            conn.set_read_timeout(Some(self.timeout))
                .and_then(|()| conn.set_write_timeout(Some(self.timeout)))
                .map_err(|e| anyhow::anyhow!("timeouts: {:?}", e.kind()))?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().context("no connection")?;
        f(conn).map_err(|e| {
            self.conn = None;
            anyhow::anyhow!("{:?}", e.kind())
        })
    }
}

impl crate::feeds::share::Share for FeedStore {
    fn lock(&mut self, feed: &str, hold: Duration) -> anyhow::Result<bool> {
        let key = self.key("lock", feed);
        let name = self.name.clone();
        let set: Option<String> = self.with(|c| {
            redis::cmd("SET")
                .arg(&key)
                .arg(&name)
                .arg("NX")
                .arg("PX")
                .arg(hold.as_millis() as u64)
                .query(c)
        })?;
        Ok(set.is_some())
    }

    fn unlock(&mut self, feed: &str) {
        let key = self.key("lock", feed);
        let name = self.name.clone();
        // Only our own lock (it may have expired and another host taken it).
        let _ = self.with(|c| {
            redis::cmd("EVAL")
                .arg(
                    "if redis.call('get', KEYS[1]) == ARGV[1] then \
                     return redis.call('del', KEYS[1]) else return 0 end",
                )
                .arg(1)
                .arg(&key)
                .arg(&name)
                .query::<i64>(c)
        });
    }

    fn put(&mut self, feed: &str, text: &str, checked_unix: u64) -> anyhow::Result<()> {
        let key = self.key("copy", feed);
        self.with(|c| {
            redis::cmd("HSET")
                .arg(&key)
                .arg("text")
                .arg(text)
                .arg("checked_unix")
                .arg(checked_unix)
                .query::<()>(c)
        })
    }

    fn get(&mut self, feed: &str) -> anyhow::Result<Option<(String, u64)>> {
        let key = self.key("copy", feed);
        let (text, checked): (Option<String>, Option<u64>) = self.with(|c| {
            redis::cmd("HMGET")
                .arg(&key)
                .arg("text")
                .arg("checked_unix")
                .query(c)
        })?;
        Ok(text.zip(checked))
    }
}
