//! The task that talks to Redis: publishes what the host hands it, subscribes to the others'
//! changes, reads everything in full on (re)connect and every [`RECONCILE`], and beats.
//! Every call is wrapped in the configured timeout; on any failure the connection is dropped
//! and made again (at most once a second), while publications wait in a bounded buffer.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::SyncSender,
    },
    time::Duration,
};

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;

use super::{BUFFER, HEARTBEAT, Incoming, Outgoing, RECONCILE, Settings, now_ms, status, wire};
use crate::decisions::ListChange;

/// Where what is read goes.
pub(super) struct Deliver {
    pub(super) to_learning: SyncSender<Incoming>,
    pub(super) wake: Box<dyn Fn() + Send + Sync>,
    pub(super) lists: tokio::sync::mpsc::Sender<ListChange>,
    pub(super) spent: tokio::sync::mpsc::Sender<super::Spent>,
    pub(super) republish: Arc<AtomicBool>,
}

impl Deliver {
    /// An operator's entry from another host, to the daemon's main task (a full queue drops
    /// it, counted; the next full read brings it again).
    fn list(&self, change: ListChange) {
        if self.lists.try_send(change).is_err() {
            status(|s| s.dropped += 1);
        }
    }
}

/// Publications per pipeline.
const BATCH: usize = 512;
/// Points keys read per full reconcile, at most (a bound on work and memory).
const MAX_KEYS: usize = 1_000_000;
/// Peers remembered in the status, at most.
const MAX_PEERS: usize = 1000;

type Failed = String;

pub(super) async fn run(
    settings: Settings,
    mut out: tokio::sync::mpsc::Receiver<Outgoing>,
    deliver: Deliver,
) {
    let client = match redis::Client::open(settings.info.clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("fleet: {}: {}", settings.shown(), e.kind_str_safe());
            return;
        }
    };
    let mut pending: VecDeque<Outgoing> = VecDeque::new();
    let mut was_up = true;
    loop {
        match session(&settings, &client, &mut out, &mut pending, &deliver).await {
            Ok(()) => return, // the host is stopping
            Err(why) => {
                if was_up {
                    tracing::warn!(
                        "fleet: {} unreachable ({why}); working alone, {} publications waiting",
                        settings.shown(),
                        pending.len()
                    );
                }
                was_up = false;
                status(|s| s.up = false);
            }
        }
        // Keep taking publications while waiting to reconnect.
        let retry = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(retry);
        loop {
            tokio::select! {
                _ = &mut retry => break,
                o = out.recv() => match o {
                    Some(o) => push(&mut pending, o),
                    None => return,
                },
            }
        }
    }
}

trait SafeKind {
    /// The error's kind and code, never its text (which may name the URL or a credential).
    fn kind_str_safe(&self) -> String;
}

impl SafeKind for redis::RedisError {
    fn kind_str_safe(&self) -> String {
        match self.code() {
            Some(code) => format!("{:?} ({code})", self.kind()),
            None => format!("{:?}", self.kind()),
        }
    }
}

fn push(pending: &mut VecDeque<Outgoing>, o: Outgoing) {
    if pending.len() >= BUFFER {
        pending.pop_front();
        status(|s| s.dropped += 1);
    }
    pending.push_back(o);
    status(|s| s.buffered = pending.len() as u64);
}

async fn within<T>(
    settings: &Settings,
    what: &str,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, Failed> {
    match tokio::time::timeout(settings.timeout, f).await {
        Ok(Ok(v)) => {
            status(|s| s.last_success_ms = now_ms());
            Ok(v)
        }
        Ok(Err(e)) => Err(format!("{what}: {}", e.kind_str_safe())),
        Err(_) => Err(format!("{what}: no answer within {:?}", settings.timeout)),
    }
}

/// One connection's life: Ok when the host stops, Err when Redis failed.
async fn session(
    settings: &Settings,
    client: &redis::Client,
    out: &mut tokio::sync::mpsc::Receiver<Outgoing>,
    pending: &mut VecDeque<Outgoing>,
    deliver: &Deliver,
) -> Result<(), Failed> {
    let mut conn = within(
        settings,
        "connect",
        client.get_multiplexed_async_connection(),
    )
    .await?;
    let mut pubsub = within(settings, "connect (subscriber)", client.get_async_pubsub()).await?;
    within(
        settings,
        "subscribe",
        pubsub.subscribe(wire::channel(&settings.key_prefix)),
    )
    .await?;
    let mut messages = pubsub.into_on_message();
    status(|s| s.up = true);
    tracing::info!(
        "fleet: connected to {} as {}",
        settings.shown(),
        settings.name
    );
    // A Redis that restarted empty is refilled: every host publishes all it has again.
    deliver.republish.store(true, Ordering::Relaxed);
    (deliver.wake)();
    beat(settings, &mut conn).await?;
    reconcile(settings, &mut conn, deliver).await?;
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let mut full = tokio::time::interval(RECONCILE);
    full.tick().await;
    loop {
        tokio::select! {
            o = out.recv() => match o {
                Some(o) => {
                    push(pending, o);
                    // Take whatever else is queued, then publish it all at once.
                    while pending.len() < BATCH {
                        match out.try_recv() {
                            Ok(o) => push(pending, o),
                            Err(_) => break,
                        }
                    }
                    flush(settings, &mut conn, pending).await?;
                }
                None => return Ok(()),
            },
            m = messages.next() => match m {
                Some(m) => take(settings, m.get_payload_bytes(), deliver),
                None => return Err("the subscription ended".into()),
            },
            _ = heartbeat.tick() => {
                beat(settings, &mut conn).await?;
                flush(settings, &mut conn, pending).await?;
            }
            _ = full.tick() => reconcile(settings, &mut conn, deliver).await?,
        }
    }
}

/// Publishes what is pending, a pipeline at a time; what fails stays pending.
async fn flush(
    settings: &Settings,
    conn: &mut MultiplexedConnection,
    pending: &mut VecDeque<Outgoing>,
) -> Result<(), Failed> {
    while !pending.is_empty() {
        let n = pending.len().min(BATCH);
        let mut pipe = redis::pipe();
        for o in pending.iter().take(n) {
            add_to(settings, &mut pipe, o);
        }
        within(settings, "publish", pipe.query_async::<()>(conn)).await?;
        pending.drain(..n);
        status(|s| s.buffered = pending.len() as u64);
    }
    Ok(())
}

/// The commands of one publication.
fn add_to(settings: &Settings, pipe: &mut redis::Pipeline, o: &Outgoing) {
    let prefix = &settings.key_prefix;
    let host = &settings.name;
    let channel = wire::channel(prefix);
    match o {
        Outgoing::Points {
            sender,
            points,
            at_ms,
        } => {
            let key = wire::points_key(prefix, sender);
            if *points >= wire::NEGLIGIBLE {
                // The key lives until this contribution decays to nothing, or longer if
                // another host's lives longer (NX sets a first TTL, GT only lengthens it).
                let ttl = (settings.half_life.as_secs_f64() * (points / wire::NEGLIGIBLE).log2())
                    .ceil() as u64
                    + 60;
                pipe.cmd("HSET")
                    .arg(&key)
                    .arg(host)
                    .arg(wire::points_value(*points, *at_ms))
                    .ignore();
                pipe.cmd("EXPIRE").arg(&key).arg(ttl).arg("NX").ignore();
                pipe.cmd("EXPIRE").arg(&key).arg(ttl).arg("GT").ignore();
            } else {
                pipe.cmd("HDEL").arg(&key).arg(host).ignore();
            }
            pipe.cmd("PUBLISH")
                .arg(&channel)
                .arg(wire::points_message(host, sender, *points, *at_ms))
                .ignore();
        }
        Outgoing::Release(sender) => {
            pipe.cmd("DEL")
                .arg(wire::points_key(prefix, sender))
                .ignore();
            pipe.cmd("PUBLISH")
                .arg(&channel)
                .arg(wire::release_message(host, sender))
                .ignore();
        }
        Outgoing::List(change) => {
            let field = wire::list_field(change);
            let present = matches!(change, ListChange::Add { .. } | ListChange::LimitSet { .. });
            if present {
                pipe.cmd("HSET")
                    .arg(wire::lists_key(prefix))
                    .arg(&field)
                    .arg(wire::list_value(change, now_ms() / 1000))
                    .ignore();
            } else {
                pipe.cmd("HDEL")
                    .arg(wire::lists_key(prefix))
                    .arg(&field)
                    .ignore();
            }
            pipe.cmd("PUBLISH")
                .arg(&channel)
                .arg(wire::list_message(host, change))
                .ignore();
        }
        // Only published: a bucket's debit matters now or never.
        Outgoing::Spent(spent) => {
            pipe.cmd("PUBLISH")
                .arg(&channel)
                .arg(wire::spent_message(host, spent, now_ms()))
                .ignore();
        }
    }
}

/// One message from the channel: checked, then handed on.
fn take(settings: &Settings, bytes: &[u8], deliver: &Deliver) {
    let now = now_ms();
    match wire::parse_message(bytes, &settings.name, settings.lengths, now) {
        Ok(Some(Incoming::List { change, .. })) => deliver.list(change),
        // A full queue drops it, counted (a host without the policy service has no queue).
        Ok(Some(Incoming::Spent { spent, .. })) => {
            if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) =
                deliver.spent.try_send(spent)
            {
                status(|s| s.dropped += 1);
            }
        }
        Ok(Some(incoming)) => {
            if let Incoming::Points { at_ms, .. } = &incoming {
                status(|s| s.lag_ms = now.saturating_sub(*at_ms));
            }
            if deliver.to_learning.try_send(incoming).is_ok() {
                (deliver.wake)();
            } else {
                status(|s| s.dropped += 1);
            }
        }
        Ok(None) => {}
        Err(why) => refused(&why),
    }
}

fn refused(why: &str) {
    status(|s| s.refused += 1);
    tracing::debug!("fleet: refused data from Redis: {why}");
}

/// Writes this host's heartbeat and reads the others'.
async fn beat(settings: &Settings, conn: &mut MultiplexedConnection) -> Result<(), Failed> {
    let key = wire::hosts_key(&settings.key_prefix);
    let now = now_ms();
    let mut pipe = redis::pipe();
    pipe.cmd("HSET")
        .arg(&key)
        .arg(&settings.name)
        .arg(now)
        .ignore();
    pipe.cmd("HGETALL").arg(&key);
    let (hosts,): (Vec<(String, String)>,) =
        within(settings, "heartbeat", pipe.query_async(conn)).await?;
    let peers = hosts
        .into_iter()
        .filter(|(h, _)| wire::valid_host(h) && *h != settings.name)
        .filter_map(|(h, t)| Some((h, t.parse::<u64>().ok()?)))
        .take(MAX_PEERS)
        .collect();
    status(|s| s.peers = peers);
    Ok(())
}

/// Reads every contribution and entry: the safety net under the channel (a message lost while
/// a host was away, a Redis restarted).
async fn reconcile(
    settings: &Settings,
    conn: &mut MultiplexedConnection,
    deliver: &Deliver,
) -> Result<(), Failed> {
    let prefix = &settings.key_prefix;
    let mut cursor: u64 = 0;
    let mut seen = 0usize;
    loop {
        let (next, keys): (u64, Vec<String>) = within(
            settings,
            "scan",
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(wire::points_pattern(prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(conn),
        )
        .await?;
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("HGETALL").arg(key);
            }
            let all: Vec<Vec<(String, String)>> =
                within(settings, "read contributions", pipe.query_async(conn)).await?;
            let now = now_ms();
            for (key, fields) in keys.iter().zip(all) {
                let sender = match wire::sender_of_key(prefix, key, settings.lengths) {
                    Ok(s) => s,
                    Err(why) => {
                        refused(&why);
                        continue;
                    }
                };
                for (host, value) in fields {
                    if host == settings.name {
                        continue;
                    }
                    if !wire::valid_host(&host) || value.len() > wire::MAX_VALUE {
                        refused("a bad host name or value");
                        continue;
                    }
                    match wire::parse_points(&value, now) {
                        Ok((points, at_ms)) => {
                            let incoming = Incoming::Points {
                                host,
                                sender: sender.clone(),
                                points,
                                at_ms,
                            };
                            if deliver.to_learning.try_send(incoming).is_err() {
                                status(|s| s.dropped += 1);
                            }
                        }
                        Err(why) => refused(&why),
                    }
                }
            }
            (deliver.wake)();
        }
        seen += keys.len();
        cursor = next;
        if cursor == 0 || seen >= MAX_KEYS {
            break;
        }
    }
    let entries: Vec<(String, String)> = within(
        settings,
        "read lists",
        redis::cmd("HGETALL")
            .arg(wire::lists_key(prefix))
            .query_async(conn),
    )
    .await?;
    let now_unix = now_ms() / 1000;
    for (_, value) in entries {
        match wire::parse_list_value(&value, settings.lengths, now_unix) {
            Ok(Some(change)) => deliver.list(change),
            Ok(None) => {}
            Err(why) => refused(&why),
        }
    }
    Ok(())
}
