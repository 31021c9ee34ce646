//! DNSBL scores, postscreen-style: each new client address seen in the logs is looked up in the
//! configured zones, and the answers' weights become points (`[[dnsbl]]`), so a listed spammer is
//! limited after its first logged connection rather than after its tenth reject.
//!
//! One thread owns a UDP socket to the resolver. It never delays anything else: the learning
//! loop hands it addresses through a bounded queue (dropped and counted when full) and picks up
//! the results when they come. Queries are rate-limited (`queries_per_second`), time out
//! (`timeout`), and every answer is cached for its TTL (bounded: 1 minute to 1 day; a fixed
//! 5 minutes for "not listed", which carries no TTL of its own here). The cache and the queue are
//! bounded; an answer is accepted only from the resolver's address, with the query's random id
//! and the queried name.

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError},
    },
    time::{Duration, Instant},
};

/// One DNSBL zone and the points each answer is worth.
#[derive(Clone, Debug, PartialEq)]
pub struct Zone {
    pub name: String,
    /// Answer address -> points; answers not named weigh nothing.
    pub weights: Vec<(Ipv4Addr, f64)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub zones: Vec<Zone>,
    pub resolver: SocketAddr,
    pub timeout: Duration,
    pub queries_per_second: u32,
    /// Addresses whose answers are remembered at most.
    pub cache: usize,
}

/// Addresses waiting for their lookups at most.
const QUEUE: usize = 10_000;
/// How long "not listed" (or no answer) is remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(300);
const MIN_TTL: u32 = 60;
const MAX_TTL: u32 = 86_400;

/// Lookups dropped because the queue was full (a flood of new addresses), for metrics.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Queries sent, and addresses found listed (with points), for metrics.
pub static QUERIES: AtomicU64 = AtomicU64::new(0);
pub static LISTED: AtomicU64 = AtomicU64::new(0);

/// Addresses remembered as asked at most; the set is emptied when full (an address then is
/// asked again, and the resolver thread's cache answers).
const ASKED: usize = 200_000;

/// What the learning loop holds: asks about each client address it has not asked about lately
/// (never waiting), and turns the answers into events. The lookups thread ends with it.
pub struct Dnsbl {
    ask: SyncSender<IpAddr>,
    results: Receiver<(IpAddr, f64)>,
    asked: std::collections::HashSet<IpAddr>,
}

impl Dnsbl {
    pub fn start(settings: Settings) -> io::Result<Dnsbl> {
        let bind: SocketAddr = match settings.resolver {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(bind)?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let (ask, asked) = std::sync::mpsc::sync_channel(QUEUE);
        let (found, results) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("sg-dnsbl".into())
            .spawn(move || Resolver::new(settings, socket).run(&asked, &found))?;
        Ok(Dnsbl {
            ask,
            results,
            asked: Default::default(),
        })
    }

    /// A client address seen in the logs: asked about unless it was lately (a full queue drops
    /// it, counted).
    pub fn seen(&mut self, addr: IpAddr) {
        if self.asked.len() >= ASKED {
            self.asked.clear();
        }
        if self.asked.insert(addr)
            && let Err(TrySendError::Full(_)) = self.ask.try_send(addr)
        {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An event for each listed address answered since the last call.
    pub fn listed(&self) -> impl Iterator<Item = crate::events::Event> + '_ {
        self.results.try_iter().map(|(addr, points)| {
            let centipoints = (points * 100.0).round().clamp(0.0, f64::from(u32::MAX)) as u32;
            crate::events::Event::new(crate::events::EventKind::DnsblListed { centipoints }, addr)
        })
    }
}

/// The name to query for `addr` in `zone`: reversed octets, or reversed nibbles for IPv6.
pub fn query_name(addr: IpAddr, zone: &str) -> String {
    match addr {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.{zone}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(64 + zone.len());
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            name + zone
        }
    }
}

/// A DNS query for the A records of `name` (recursion desired).
pub fn build_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len().min(63) as u8);
        q.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// What a response said: the A records (address, TTL), or that the name does not exist.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub records: Vec<(Ipv4Addr, u32)>,
}

/// Reads the response to query `id` for `name`; None when it is not that response or is
/// malformed (never panics on any input).
pub fn parse_response(id: u16, name: &str, packet: &[u8]) -> Option<Answer> {
    if packet.len() < 12 || u16::from_be_bytes([packet[0], packet[1]]) != id {
        return None;
    }
    let flags = u16::from_be_bytes([packet[2], packet[3]]);
    if flags & 0x8000 == 0 {
        return None;
    }
    let rcode = flags & 0xf;
    let qdcount = u16::from_be_bytes([packet[4], packet[5]]);
    let ancount = u16::from_be_bytes([packet[6], packet[7]]);
    if qdcount != 1 {
        return None;
    }
    let (qname, mut at) = read_name(packet, 12)?;
    if !qname.eq_ignore_ascii_case(name.trim_end_matches('.')) {
        return None;
    }
    at = at.checked_add(4)?;
    if rcode == 3 {
        return Some(Answer {
            records: Vec::new(),
        });
    }
    if rcode != 0 {
        return None;
    }
    let mut records = Vec::new();
    for _ in 0..ancount.min(64) {
        let (_, after) = read_name(packet, at)?;
        let fixed = packet.get(after..after.checked_add(10)?)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let data = packet.get(after + 10..after.checked_add(10 + len)?)?;
        if rtype == 1 && len == 4 {
            records.push((Ipv4Addr::new(data[0], data[1], data[2], data[3]), ttl));
        }
        at = after + 10 + len;
    }
    Some(Answer { records })
}

/// A domain name at `at` (following compression pointers, at most 16 of them); the name and the
/// offset after it in the record.
fn read_name(packet: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *packet.get(at)?;
        match len {
            0 => {
                return Some((name, end.unwrap_or(at + 1)));
            }
            l if l & 0xc0 == 0xc0 => {
                let target = usize::from(u16::from_be_bytes([l & 0x3f, *packet.get(at + 1)?]));
                end.get_or_insert(at + 2);
                if target >= at {
                    return None;
                }
                at = target;
            }
            l if l & 0xc0 == 0 => {
                let label = packet.get(at + 1..at + 1 + usize::from(l))?;
                if !name.is_empty() {
                    name.push('.');
                }
                name.push_str(std::str::from_utf8(label).ok()?);
                at += 1 + usize::from(l);
                if name.len() > 255 {
                    return None;
                }
            }
            _ => return None,
        }
    }
    None
}

struct Pending {
    addr: IpAddr,
    zone: usize,
    name: String,
    sent: Instant,
}

/// An address's lookups in progress: zones left, points so far, shortest TTL.
struct Progress {
    left: usize,
    points: f64,
    ttl: u32,
}

struct Resolver {
    settings: Settings,
    socket: UdpSocket,
    cache: HashMap<IpAddr, Instant>,
    cache_order: VecDeque<IpAddr>,
    queue: VecDeque<IpAddr>,
    pending: HashMap<u16, Pending>,
    progress: HashMap<IpAddr, Progress>,
    tokens: f64,
    refilled: Instant,
    ids: u64,
}

impl Resolver {
    fn new(settings: Settings, socket: UdpSocket) -> Resolver {
        use std::hash::{BuildHasher, RandomState};
        let seed = RandomState::new().hash_one(Instant::now());
        Resolver {
            settings,
            socket,
            cache: HashMap::new(),
            cache_order: VecDeque::new(),
            queue: VecDeque::new(),
            pending: HashMap::new(),
            progress: HashMap::new(),
            tokens: 0.0,
            refilled: Instant::now(),
            ids: seed | 1,
        }
    }

    fn run(mut self, asked: &Receiver<IpAddr>, found: &SyncSender<(IpAddr, f64)>) {
        let mut buf = [0u8; 1500];
        loop {
            loop {
                match asked.try_recv() {
                    Ok(addr) => self.enqueue(addr),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                }
            }
            self.send_queued();
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) if from == self.settings.resolver => {
                    if let Some(done) = self.answer(&buf[..n]) {
                        let _ = found.try_send(done);
                    }
                }
                _ => {}
            }
            self.expire();
            if self.queue.is_empty() && self.pending.is_empty() {
                // Idle: wait for the next address rather than spin.
                match asked.recv_timeout(Duration::from_millis(200)) {
                    Ok(addr) => self.enqueue(addr),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        }
    }

    fn enqueue(&mut self, addr: IpAddr) {
        let now = Instant::now();
        if self.cache.get(&addr).is_some_and(|until| *until > now)
            || self.progress.contains_key(&addr)
            || self.queue.contains(&addr)
        {
            return;
        }
        if self.queue.len() >= QUEUE {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.queue.push_back(addr);
    }

    fn send_queued(&mut self) {
        let rate = f64::from(self.settings.queries_per_second.max(1));
        let elapsed = self.refilled.elapsed().as_secs_f64();
        self.refilled = Instant::now();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        let zones = self.settings.zones.len();
        while self.tokens >= zones as f64 {
            let Some(addr) = self.queue.pop_front() else {
                break;
            };
            self.tokens -= zones as f64;
            self.progress.insert(
                addr,
                Progress {
                    left: zones,
                    points: 0.0,
                    ttl: MAX_TTL,
                },
            );
            for zone in 0..zones {
                let id = self.next_id();
                let name = query_name(addr, &self.settings.zones[zone].name);
                let query = build_query(id, &name);
                if self.socket.send_to(&query, self.settings.resolver).is_ok() {
                    QUERIES.fetch_add(1, Ordering::Relaxed);
                }
                let sent = Instant::now();
                self.pending.insert(
                    id,
                    Pending {
                        addr,
                        zone,
                        name,
                        sent,
                    },
                );
            }
        }
    }

    fn next_id(&mut self) -> u16 {
        loop {
            // xorshift64: unpredictable enough from a random seed, never repeats soon.
            self.ids ^= self.ids << 13;
            self.ids ^= self.ids >> 7;
            self.ids ^= self.ids << 17;
            let id = (self.ids >> 16) as u16;
            if !self.pending.contains_key(&id) {
                return id;
            }
        }
    }

    /// Records one response; returns (address, points) when that address is done and listed.
    fn answer(&mut self, packet: &[u8]) -> Option<(IpAddr, f64)> {
        let id = u16::from_be_bytes([*packet.first()?, *packet.get(1)?]);
        let pending = self.pending.get(&id)?;
        let answer = parse_response(id, &pending.name, packet)?;
        let pending = self.pending.remove(&id)?;
        let weights = &self.settings.zones[pending.zone].weights;
        let mut points = 0.0;
        let mut ttl = MAX_TTL;
        for (addr, record_ttl) in &answer.records {
            if let Some((_, w)) = weights.iter().find(|(a, _)| a == addr) {
                points += w;
            }
            ttl = ttl.min(*record_ttl);
        }
        self.zone_done(
            pending.addr,
            points,
            (!answer.records.is_empty()).then_some(ttl),
        )
    }

    fn zone_done(&mut self, addr: IpAddr, points: f64, ttl: Option<u32>) -> Option<(IpAddr, f64)> {
        let progress = self.progress.get_mut(&addr)?;
        progress.left -= 1;
        progress.points += points;
        if let Some(ttl) = ttl {
            progress.ttl = progress.ttl.min(ttl);
        }
        if progress.left > 0 {
            return None;
        }
        let done = self.progress.remove(&addr)?;
        let keep = if done.points > 0.0 {
            Duration::from_secs(u64::from(done.ttl.clamp(MIN_TTL, MAX_TTL)))
        } else {
            NEGATIVE_TTL
        };
        self.remember(addr, keep);
        if done.points > 0.0 {
            LISTED.fetch_add(1, Ordering::Relaxed);
            Some((addr, done.points))
        } else {
            None
        }
    }

    fn remember(&mut self, addr: IpAddr, keep: Duration) {
        while self.cache.len() >= self.settings.cache.max(1) {
            match self.cache_order.pop_front() {
                Some(old) => {
                    self.cache.remove(&old);
                }
                None => break,
            }
        }
        if self.cache.insert(addr, Instant::now() + keep).is_none() {
            self.cache_order.push_back(addr);
        }
    }

    /// Queries without an answer in time count as "not listed" for their zone.
    fn expire(&mut self) {
        let timeout = self.settings.timeout;
        let late: Vec<u16> = self
            .pending
            .iter()
            .filter(|(_, p)| p.sent.elapsed() > timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(p) = self.pending.remove(&id) {
                self.zone_done(p.addr, 0.0, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names_reverse_octets_and_nibbles() {
        assert_eq!(
            query_name("203.0.113.9".parse().unwrap(), "zen.example"),
            "9.113.0.203.zen.example"
        );
        let v6 = query_name("2001:db8::1".parse().unwrap(), "bl.example");
        assert!(v6.starts_with("1.0.0.0.0.0.0.0."), "{v6}");
        assert!(v6.ends_with("8.b.d.0.1.0.0.2.bl.example"), "{v6}");
    }

    /// A response to `query` with the given answers (names compressed to the question).
    fn response(query: &[u8], rcode: u8, answers: &[([u8; 4], u32)]) -> Vec<u8> {
        let mut r = query.to_vec();
        r[2] = 0x81;
        r[3] = 0x80 | rcode;
        r[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
        for (addr, ttl) in answers {
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
            r.extend_from_slice(&ttl.to_be_bytes());
            r.extend_from_slice(&[0, 4]);
            r.extend_from_slice(addr);
        }
        r
    }

    #[test]
    fn responses_are_read_only_for_their_query() {
        let name = "9.113.0.203.zen.example";
        let q = build_query(0x1234, name);
        let r = response(&q, 0, &[([127, 0, 0, 2], 300), ([127, 0, 0, 4], 60)]);
        let a = parse_response(0x1234, name, &r).unwrap();
        assert_eq!(
            a.records,
            [
                (Ipv4Addr::new(127, 0, 0, 2), 300),
                (Ipv4Addr::new(127, 0, 0, 4), 60)
            ]
        );
        assert!(parse_response(0x4321, name, &r).is_none(), "another id");
        assert!(
            parse_response(0x1234, "1.113.0.203.zen.example", &r).is_none(),
            "another name"
        );
        let nx = response(&q, 3, &[]);
        assert_eq!(parse_response(0x1234, name, &nx).unwrap().records, []);
    }

    #[test]
    fn hostile_responses_never_panic() {
        let name = "9.113.0.203.zen.example";
        let q = build_query(7, name);
        let good = response(&q, 0, &[([127, 0, 0, 2], 300)]);
        for cut in 0..good.len() {
            let _ = parse_response(7, name, &good[..cut]);
        }
        let mut looped = good.clone();
        // A compression pointer to itself, and counts far beyond the packet.
        let at = q.len();
        looped[at] = 0xc0;
        looped[at + 1] = at as u8;
        let _ = parse_response(7, name, &looped);
        let mut counts = good;
        counts[6] = 0xff;
        counts[7] = 0xff;
        let _ = parse_response(7, name, &counts);
        let mut junk: Vec<u8> = (0..512).map(|i| (i * 37 % 251) as u8).collect();
        junk[0] = 0;
        junk[1] = 7;
        let _ = parse_response(7, name, &junk);
    }
}
