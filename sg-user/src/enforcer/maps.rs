//! The program's maps, typed: the lists, the limits, the slots, the counters and the
//! configuration, with domain verbs (callers never say "insert into map X").

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key},
};
use sg_common::{
    Addr, Attachment, Config as KernelConfig, FilterLine, ListEntry, ListLengths, Policy,
    PolicyKey, Slot, action, capacity, counter, map_name, service,
};

use super::{
    filter::{FILTER_LOCK, FILTER_REBUILD_EVERY, Keying, seen_epoch_shift},
    program::expiry,
};
use crate::{
    decisions::ListKind,
    domain::{Limit, Network, Rate, boot_time_ns},
};

/// A list or limit entry read back from the kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry<T> {
    pub network: Network,
    pub value: T,
    /// Time left before the kernel ignores it; None = never expires.
    pub remaining: Option<Duration>,
}

/// The program's maps, typed.
pub struct Maps {
    pub config: Array<MapData, KernelConfig>,
    pub ports: Array<MapData, u8>,
    pub allow: LpmTrie<MapData, Addr, ListEntry>,
    pub deny: LpmTrie<MapData, Addr, ListEntry>,
    pub policy: HashMap<MapData, PolicyKey, Policy>,
    pub sources: Array<MapData, Slot>,
    pub prefixes: Array<MapData, Slot>,
    pub generation: Array<MapData, u32>,
    pub counters: PerCpuArray<MapData, u64>,
    pub attachments: Array<MapData, Attachment>,
    pub(super) filter: Array<MapData, FilterLine>,
    pub(super) short_keys: Array<MapData, u64>,
    pub(super) list_lengths: Array<MapData, ListLengths>,
    /// Established connections per source and prefix (the concurrent caps).
    pub(super) connections: HashMap<MapData, PolicyKey, u64>,
    /// max_entries of each bounded map, read from the kernel.
    capacities: Vec<(&'static str, u32)>,
    /// When this handle last rebuilt the present bits (None: not yet, so the first
    /// `write_config` does).
    pub(super) filter_rebuilt: Option<std::time::Instant>,
}

impl Maps {
    /// Takes the maps out of a loaded object (call after attaching).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> anyhow::Result<Maps> {
        Maps::build(|name| {
            ebpf.take_map(name)
                .with_context(|| format!("the object has no map {name}"))
        })
    }

    /// Opens the maps pinned under `pin_dir` by a daemon (running or not).
    pub fn open_pinned(pin_dir: &Path) -> anyhow::Result<Maps> {
        if !pin_dir.join(map_name::CONFIG).exists() {
            bail!(
                "slowgate is not running here: no pinned maps under {} \
                 (start it with `slowgate run --config FILE`, or pass --pin-dir)",
                pin_dir.display()
            );
        }
        Maps::build(|name| {
            let path = pin_dir.join(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("open pinned map {}", path.display()))?;
            Ok(Map::from_map_data(data)?)
        })
    }

    fn build(mut get: impl FnMut(&str) -> anyhow::Result<Map>) -> anyhow::Result<Maps> {
        let mut capacities = Vec::new();
        let mut bounded = |name: &'static str| -> anyhow::Result<Map> {
            let map = get(name)?;
            let max = match &map {
                Map::HashMap(m) | Map::LpmTrie(m) | Map::Array(m) => m.info()?.max_entries(),
                _ => 0,
            };
            capacities.push((name, max));
            Ok(map)
        };
        let allow = bounded(map_name::ALLOW)?.try_into()?;
        let deny = bounded(map_name::DENY)?.try_into()?;
        let policy = bounded(map_name::POLICY)?.try_into()?;
        let sources = bounded(map_name::SOURCES)?.try_into()?;
        let prefixes = bounded(map_name::PREFIXES)?.try_into()?;
        let connections = bounded(map_name::CONNECTIONS)?.try_into()?;
        Ok(Maps {
            config: get(map_name::CONFIG)?.try_into()?,
            ports: get(map_name::PORTS)?.try_into()?,
            allow,
            deny,
            policy,
            sources,
            prefixes,
            generation: get(map_name::GENERATION)?.try_into()?,
            counters: get(map_name::COUNTERS)?.try_into()?,
            attachments: get(map_name::ATTACHMENTS)?.try_into()?,
            filter: get(map_name::FILTER)?.try_into()?,
            short_keys: get(map_name::SHORT_KEYS)?.try_into()?,
            list_lengths: get(map_name::LIST_LENGTHS)?.try_into()?,
            connections,
            capacities,
            filter_rebuilt: None,
        })
    }

    /// Writes the kernel's settings, completed with what only this side knows: the tick length
    /// (see [`tick_ns`]), the slot tables' sizes, and the slot hash's seed (the one already in
    /// force when there is one, so that a restart keeps every source in its slot). The first
    /// call of a handle, and any call that changes the seed or the prefix lengths, rebuilds the
    /// present bits first: the
    /// filter is keyed with the seed, and maps pinned by an older version may lack it.
    pub fn write_config(
        &mut self,
        config: &KernelConfig,
        tick_ns: u64,
        boot_offset_ns: u64,
    ) -> anyhow::Result<()> {
        let _filter = FILTER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.read_config()?;
        let seed = if old.seed != [0, 0] {
            old.seed
        } else {
            random_seed()?
        };
        let capacity = |name| {
            self.capacities
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(1, |&(_, max)| max)
        };
        let config = KernelConfig {
            tick_ns,
            boot_offset_ns,
            seed,
            source_slots_mask: capacity(map_name::SOURCES) - 1,
            prefix_slots_mask: capacity(map_name::PREFIXES) - 1,
            seen_epoch_shift: seen_epoch_shift(config, tick_ns),
            netns_cookie: super::netns_cookie()?,
            ..*config
        };
        let keying = [Keying::of(&old), Keying::of(&config)];
        if self.filter_rebuilt.is_none() || keying[0] != keying[1] {
            // Under both keyings, for the moment between this write and the config's.
            self.rebuild_filter(&keying)?;
        }
        self.config.set(0, config, 0).context("write CONFIG")
    }
    /// their change, which is all the kernel needs.
    fn changed(&mut self) -> anyhow::Result<()> {
        let generation = self.generation.get(&0, 0).context("read GENERATION")?;
        self.generation
            .set(0, generation.wrapping_add(1), 0)
            .context("write GENERATION")
    }

    /// The current GENERATION (bumped after every change to ALLOW, DENY or POLICY).
    pub fn generation(&self) -> anyhow::Result<u32> {
        self.generation.get(&0, 0).context("read GENERATION")
    }

    pub fn read_config(&self) -> anyhow::Result<KernelConfig> {
        self.config.get(&0, 0).context("read CONFIG")
    }

    /// Makes exactly `ports` protected (port -> service).
    pub fn write_ports(&mut self, ports: &BTreeMap<u16, u8>) -> anyhow::Result<()> {
        for port in 0..=u16::MAX {
            let want = ports.get(&port).copied().unwrap_or(0);
            let index = u32::from(port);
            if self.ports.get(&index, 0)? != want {
                self.ports.set(index, want, 0).context("write PORTS")?;
            }
        }
        Ok(())
    }

    pub fn protected_ports(&self) -> anyhow::Result<BTreeMap<u16, u8>> {
        let mut out = BTreeMap::new();
        for (port, svc) in self.ports.iter().enumerate() {
            let svc = svc?;
            if svc != 0 {
                out.insert(port as u16, svc);
            }
        }
        Ok(out)
    }

    /// Records where the program is attached (for `slowgate status`).
    pub fn record_attachments(&mut self, attached: &[Attachment]) -> anyhow::Result<()> {
        if attached.len() > capacity::ATTACHMENTS as usize {
            bail!(
                "slowgate attaches to {} interfaces at most",
                capacity::ATTACHMENTS
            );
        }
        for slot in 0..capacity::ATTACHMENTS {
            let a = attached.get(slot as usize).copied().unwrap_or_default();
            self.attachments.set(slot, a, 0)?;
        }
        Ok(())
    }

    pub fn attachments(&self) -> anyhow::Result<Vec<Attachment>> {
        let mut out = Vec::new();
        for a in self.attachments.iter() {
            let a = a?;
            if a.ifindex != 0 {
                out.push(a);
            }
        }
        Ok(out)
    }

    fn list(&mut self, kind: ListKind) -> &mut LpmTrie<MapData, Addr, ListEntry> {
        match kind {
            ListKind::Allow => &mut self.allow,
            ListKind::Deny => &mut self.deny,
        }
    }

    pub fn list_add(
        &mut self,
        kind: ListKind,
        net: Network,
        ttl: Option<Duration>,
    ) -> anyhow::Result<()> {
        self.write_list_entry(kind, net, ttl)?;
        self.changed()
    }

    /// Removes `net`; false when it was not listed.
    pub fn list_del(&mut self, kind: ListKind, net: Network) -> anyhow::Result<bool> {
        let removed = self.remove_list_entry(kind, net)?;
        self.changed()?;
        Ok(removed)
    }

    /// Adds `net` to a list without telling the kernel (see [`Maps::publish`]).
    pub fn write_list_entry(
        &mut self,
        kind: ListKind,
        net: Network,
        ttl: Option<Duration>,
    ) -> anyhow::Result<()> {
        let key = Key::new(net.prefix_len, net.addr);
        let entry = ListEntry {
            expires_ns: expiry(ttl),
        };
        let _filter = FILTER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        self.mark_present(&net.addr, net.prefix_len, true)?;
        self.list(kind)
            .insert(&key, entry, 0)
            .map_err(|e| full_or(e, kind.name()))
            .with_context(|| format!("add {net} to the {} list", kind.name()))
    }

    /// Adds many networks to a list without telling the kernel (a bulk import): the present
    /// bits of all of them first, then the entries. Stops at the first that does not fit.
    pub fn write_list_entries(
        &mut self,
        kind: ListKind,
        nets: &[Network],
        ttl: Option<Duration>,
    ) -> anyhow::Result<()> {
        let entry = ListEntry {
            expires_ns: expiry(ttl),
        };
        let keys: Vec<(sg_common::Addr, u32)> =
            nets.iter().map(|n| (n.addr, n.prefix_len)).collect();
        let _filter = FILTER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        self.mark_all_present(&keys, true)?;
        let keys: Vec<Key<Addr>> = nets
            .iter()
            .map(|n| Key::new(n.prefix_len, n.addr))
            .collect();
        let values = vec![entry; keys.len()];
        // One system call per chunk; a kernel without batch updates gets them one by one.
        let written = match super::batch::update(self.list(kind), &keys, &values) {
            Ok(()) => return Ok(()),
            Err((written, e)) if e.kind() == std::io::ErrorKind::Unsupported => written,
            Err((written, e)) => {
                let net = nets[written.min(nets.len() - 1)];
                return Err(full_or(
                    aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                        call: "bpf_map_update_batch",
                        io_error: e,
                    }),
                    kind.name(),
                ))
                .with_context(|| format!("add {net} to the {} list", kind.name()));
            }
        };
        for (key, net) in keys.iter().zip(nets).skip(written) {
            self.list(kind)
                .insert(key, entry, 0)
                .map_err(|e| full_or(e, kind.name()))
                .with_context(|| format!("add {net} to the {} list", kind.name()))?;
        }
        Ok(())
    }

    /// Removes `net` from a list without telling the kernel; false when it was not listed.
    pub fn remove_list_entry(&mut self, kind: ListKind, net: Network) -> anyhow::Result<bool> {
        let key = Key::new(net.prefix_len, net.addr);
        removed(self.list(kind).remove(&key))
    }

    pub fn list_entries(&self, kind: ListKind) -> anyhow::Result<Vec<Entry<ListEntry>>> {
        let list = match kind {
            ListKind::Allow => &self.allow,
            ListKind::Deny => &self.deny,
        };
        let now = boot_time_ns();
        let mut out = Vec::new();
        for item in list.iter() {
            let (key, value) = item?;
            out.push(Entry {
                network: Network {
                    addr: key.data(),
                    prefix_len: key.prefix_len(),
                },
                value,
                remaining: remaining(value.expires_ns, now),
            });
        }
        out.sort_by_key(|e| e.network);
        Ok(out)
    }

    /// The POLICY key for `net`: an exact address, or a prefix or network of the configured
    /// lengths.
    pub fn policy_key(&self, net: Network) -> anyhow::Result<PolicyKey> {
        let config = self.read_config()?;
        let (prefix_len, network_len) = if net.is_v4() {
            (config.prefix_len_v4, config.network_len_v4)
        } else {
            (config.prefix_len_v6, config.network_len_v6)
        };
        if !net.is_host() && net.prefix_len != prefix_len && net.prefix_len != network_len {
            let shown = |len: u32| {
                if net.is_v4() {
                    len - sg_common::V4_MAPPED_BITS
                } else {
                    len
                }
            };
            bail!(
                "{net}: a limit applies to one address, a /{} prefix or a /{} network (the \
                 configured lengths); use `deny` for other networks",
                shown(prefix_len),
                shown(network_len)
            );
        }
        Ok(PolicyKey {
            addr: net.addr,
            prefix_len: net.prefix_len,
        })
    }

    pub fn limit_set(
        &mut self,
        net: Network,
        limit: Limit,
        ttl: Option<Duration>,
    ) -> anyhow::Result<()> {
        self.write_limit(net, limit, ttl)?;
        self.changed()
    }

    /// Writes a batch of limits (None removes one) and tells the kernel once. Returns the
    /// entries that could not be written, with the reason.
    pub fn limits_apply(
        &mut self,
        batch: &[(Network, Option<Limit>)],
        ttl: Option<Duration>,
    ) -> Vec<(Network, anyhow::Error)> {
        let mut failed = Vec::new();
        for &(net, limit) in batch {
            let result = match limit {
                Some(limit) => self.write_limit(net, limit, ttl),
                None => self.remove_limit(net).map(|_| ()),
            };
            if let Err(e) = result {
                failed.push((net, e));
            }
        }
        if batch.len() > failed.len()
            && let Err(e) = self.changed()
        {
            failed.push((batch[0].0, e));
        }
        failed
    }

    /// Writes the limit of `net` without telling the kernel (see [`Maps::publish`]). A
    /// refresh of the same limit keeps a network bucket's state (its tokens are spent).
    pub fn write_limit(
        &mut self,
        net: Network,
        limit: Limit,
        ttl: Option<Duration>,
    ) -> anyhow::Result<()> {
        let key = self.policy_key(net)?;
        let mut policy = policy_of(limit, ttl);
        if let Ok(old) = self.policy.get(&key, 0)
            && (old.action, old.interval_ns, old.burst)
                == (policy.action, policy.interval_ns, policy.burst)
        {
            policy.tat_ns = old.tat_ns;
        }
        let _filter = FILTER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        self.mark_present(&key.addr, key.prefix_len, false)?;
        self.policy
            .insert(key, policy, 0)
            .map_err(|e| full_or(e, "policy"))
            .with_context(|| format!("set the limit of {net}"))
    }

    /// Removes the limit of `net` without telling the kernel; false when it had none.
    pub fn remove_limit(&mut self, net: Network) -> anyhow::Result<bool> {
        let key = self.policy_key(net)?;
        removed(self.policy.remove(&key))
    }

    /// Tells the kernel that entries changed (one GENERATION bump for any number of writes).
    pub fn publish(&mut self) -> anyhow::Result<()> {
        self.changed()
    }

    /// Whether a limit entry exists for `net` (expired or not).
    pub fn limit_exists(&self, net: Network) -> anyhow::Result<bool> {
        let key = self.policy_key(net)?;
        Ok(self.policy.get(&key, 0).is_ok())
    }

    pub fn limit_del(&mut self, net: Network) -> anyhow::Result<bool> {
        let removed = self.remove_limit(net)?;
        self.changed()?;
        Ok(removed)
    }

    pub fn limit_entries(&self) -> anyhow::Result<Vec<Entry<Limit>>> {
        let now = boot_time_ns();
        let mut out = Vec::new();
        for item in self.policy.iter() {
            let (key, p) = item?;
            let limit = if p.action == action::BLOCK {
                Limit::Block
            } else {
                Limit::Rate {
                    rate: Rate {
                        interval: Duration::from_nanos(p.interval_ns),
                    },
                    burst: p.burst,
                }
            };
            out.push(Entry {
                network: Network {
                    addr: key.addr,
                    prefix_len: key.prefix_len,
                },
                value: limit,
                remaining: remaining(p.expires_ns, now),
            });
        }
        out.sort_by_key(|e| e.network);
        Ok(out)
    }

    /// Deletes expired list and policy entries (the kernel already ignores them; this frees
    /// their room). Returns how many went.
    pub fn sweep(&mut self) -> anyhow::Result<usize> {
        let now = boot_time_ns();
        let mut swept = 0;
        for kind in [ListKind::Allow, ListKind::Deny] {
            let expired = expired_keys(self.list(kind).iter(), |v| v.expires_ns, now);
            for key in expired {
                swept += usize::from(self.list(kind).remove(&key).is_ok());
            }
        }
        let expired = expired_keys(self.policy.iter(), |v| v.expires_ns, now);
        for key in expired {
            swept += usize::from(self.policy.remove(&key).is_ok());
        }
        if self
            .filter_rebuilt
            .is_none_or(|at| at.elapsed() >= FILTER_REBUILD_EVERY)
        {
            self.rebuild_present()?;
        }
        if swept > 0 {
            self.changed()?;
        }
        Ok(swept)
    }

    /// Every counter summed over CPUs, indexed by `sg_common::counter`.
    /// PACKETS and NEW_CONN are sums of other counters, worked out here to spare the program
    /// two increments per packet.
    pub fn counters(&self) -> anyhow::Result<Vec<u64>> {
        let mut all = (0..counter::COUNT)
            .map(|i| Ok(self.counters.get(&i, 0)?.iter().sum()))
            .collect::<anyhow::Result<Vec<u64>>>()?;
        let at = |c: u32| c as usize;
        all[at(counter::PACKETS)] = all[at(counter::PASSED)] + all[at(counter::DROPPED)];
        all[at(counter::NEW_CONN)] = (0..service::COUNT)
            .map(|s| all[at(counter::SERVICE_NEW_CONN + s)])
            .sum();
        Ok(all)
    }

    /// What the program counted of one source in its slot: (drops by a list or policy, drops
    /// by a default ceiling); None when the source has no slot (never seen, or displaced).
    pub fn source_drops(&self, net: Network) -> anyhow::Result<Option<(u32, u32)>> {
        let config = self.read_config()?;
        let (index, fingerprint) =
            sg_common::slot_hash(&net.addr, &config.seed, config.source_slots_mask);
        let slot = self.sources.get(&index, 0).context("read SOURCES")?;
        Ok((slot.tag >> 32 == fingerprint >> 32)
            .then_some((slot.dropped_by_rule, slot.dropped_by_ceiling)))
    }

    /// Drops by a list or policy the program counted in the slot of `net`: a source (its own
    /// slot) or a prefix of the configured length (the prefix's slot); None when it has no slot.
    pub fn rule_drops(&self, net: Network) -> anyhow::Result<Option<u32>> {
        if net.is_host() {
            return Ok(self.source_drops(net)?.map(|(rule, _)| rule));
        }
        let config = self.read_config()?;
        let (index, fingerprint) =
            sg_common::slot_hash(&net.addr, &config.seed, config.prefix_slots_mask);
        let slot = self.prefixes.get(&index, 0).context("read PREFIXES")?;
        Ok((slot.tag >> 32 == fingerprint >> 32).then_some(slot.dropped_by_rule))
    }

    /// One counter, CPU by CPU.
    pub fn counter_per_cpu(&self, index: u32) -> anyhow::Result<Vec<u64>> {
        Ok(self.counters.get(&index, 0)?.iter().copied().collect())
    }

    /// (name, entries, capacity) of each bounded map.
    pub fn fill(&self) -> Vec<(&'static str, usize, u32)> {
        let lpm = |m: &LpmTrie<MapData, Addr, ListEntry>| m.keys().filter(Result::is_ok).count();
        // Slots are never freed, so the tables' fill is the count of first claims.
        let claimed = self.counters().unwrap_or_default();
        let claimed = |c: u32| claimed.get(c as usize).copied().unwrap_or(0) as usize;
        let counts = [
            lpm(&self.allow),
            lpm(&self.deny),
            self.policy.keys().filter(Result::is_ok).count(),
            claimed(counter::SOURCE_SLOT_CLAIMED),
            claimed(counter::PREFIX_SLOT_CLAIMED),
        ];
        self.capacities
            .iter()
            .zip(counts)
            .map(|(&(name, max), n)| (name, n, max))
            .collect()
    }
}

fn policy_of(limit: Limit, ttl: Option<Duration>) -> Policy {
    match limit {
        Limit::Block => Policy {
            action: action::BLOCK,
            expires_ns: expiry(ttl),
            ..Policy::default()
        },
        Limit::Rate { rate, burst } => Policy {
            tat_ns: 0,
            interval_ns: rate.interval.as_nanos() as u64,
            expires_ns: expiry(ttl),
            burst,
            action: action::LIMIT,
        },
    }
}

/// 128 random bits from the kernel (getrandom(2)).
fn random_seed() -> anyhow::Result<[u64; 2]> {
    let mut bytes = [0u8; 16];
    // SAFETY: writes at most 16 bytes into `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != 16 {
        return Err(std::io::Error::last_os_error()).context("getrandom");
    }
    let (a, b) = bytes.split_at(8);
    Ok([
        u64::from_ne_bytes(a.try_into()?),
        u64::from_ne_bytes(b.try_into()?) | 1,
    ])
}

/// Keys of the entries whose expiry (0 = never) has passed at `now`.
fn expired_keys<K, V>(
    entries: impl Iterator<Item = Result<(K, V), aya::maps::MapError>>,
    expires_ns: impl Fn(&V) -> u64,
    now: u64,
) -> Vec<K> {
    entries
        .filter_map(Result::ok)
        .filter(|(_, v)| {
            let at = expires_ns(v);
            at != 0 && at <= now
        })
        .map(|(k, _)| k)
        .collect()
}

fn remaining(expires_ns: u64, now: u64) -> Option<Duration> {
    (expires_ns != 0).then(|| Duration::from_nanos(expires_ns.saturating_sub(now)))
}

/// A full map answers E2BIG: say so in words an operator understands.
fn full_or(e: aya::maps::MapError, what: &str) -> anyhow::Error {
    if let aya::maps::MapError::SyscallError(s) = &e
        && s.io_error.raw_os_error() == Some(libc::E2BIG)
    {
        return anyhow::anyhow!(
            "the {what} map is full; raise its size under [capacity] or remove entries"
        );
    }
    e.into()
}

fn removed(result: Result<(), aya::maps::MapError>) -> anyhow::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(aya::maps::MapError::KeyNotFound) => Ok(false),
        Err(aya::maps::MapError::SyscallError(s))
            if s.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}
