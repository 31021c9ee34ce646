//! The first contact path's filters, as userspace keeps them (see `sg_common::filter`): a
//! key's present bits are set before its entry is inserted, and rebuilt from the maps when
//! entries go, so a key absent from the filters is absent from the maps.

use std::time::Duration;

use anyhow::Context;
use sg_common::{Addr, Config as KernelConfig, FilterLine, ListLengths, filter};

use super::maps::Maps;

/// Serialises every change to the present bits of FILTER, SHORT_KEYS and LIST_LENGTHS in this
/// process (the learning loop and
/// the daemon task each hold a `Maps`): setting a key's bits is a read-modify-write of a word,
/// and a rebuild must not overwrite bits set by an insert it did not see. Other processes only
/// write the maps while no daemon runs (the CLI's offline path; the daemon holds the pin
/// directory's lock).
pub(super) static FILTER_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How often a sweep rebuilds the present bits from the maps (dropping those of entries gone).
pub(super) const FILTER_REBUILD_EVERY: Duration = Duration::from_secs(600);

impl Maps {
    /// Rebuilds the present bits from the maps now (a sweep does it every ten minutes).
    pub fn rebuild_present(&mut self) -> anyhow::Result<()> {
        let _filter = FILTER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let keying = Keying::of(&self.read_config()?);
        self.rebuild_filter(&[keying])
    }

    /// Sets the present bits of a key about to be inserted into ALLOW, DENY or POLICY (and,
    /// for a list, makes its length one the program probes). Call with FILTER_LOCK held,
    /// before the insert: the program must never see an entry whose key the filter lacks.
    pub(super) fn mark_present(
        &mut self,
        addr: &Addr,
        prefix_len: u32,
        list: bool,
    ) -> anyhow::Result<()> {
        self.mark_all_present(&[(*addr, prefix_len)], list)
    }

    /// [`Maps::mark_present`] for many keys at once (a bulk import): the config, the lengths
    /// and each touched word are read and written once; LIST_LENGTHS only for list keys or
    /// short ones (most POLICY keys are neither).
    pub(super) fn mark_all_present(
        &mut self,
        keys: &[(Addr, u32)],
        list: bool,
    ) -> anyhow::Result<()> {
        let keying = Keying::of(&self.read_config()?);
        // Each touched line, read once, with the bits to set ORed in memory.
        let mut lines: std::collections::HashMap<u32, (FilterLine, bool)> = Default::default();
        let mut short: std::collections::BTreeMap<u32, u64> = Default::default();
        let mut lengths = None;
        let mut lengths_changed = false;
        for (addr, prefix_len) in keys {
            if list {
                let lengths = match &mut lengths {
                    Some(l) => l,
                    None => lengths.insert(self.read_list_lengths()?),
                };
                lengths_changed |= add_length(lengths, *prefix_len);
            }
            for place in keying.places(addr, *prefix_len) {
                match place {
                    Place::Line(index, bits) => {
                        let (line, changed) = match lines.entry(index) {
                            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                            std::collections::hash_map::Entry::Vacant(v) => {
                                let line = self.filter.get(&index, 0).context("read FILTER")?;
                                v.insert((line, false))
                            }
                        };
                        if !filter::holds(line, bits) {
                            filter::set(line, bits);
                            *changed = true;
                        }
                    }
                    Place::Short(index, bits) => *short.entry(index).or_default() |= bits,
                }
            }
        }
        for (index, (line, changed)) in lines {
            if changed {
                self.filter.set(index, line, 0).context("write FILTER")?;
            }
        }
        if !short.is_empty() {
            let lengths = match &mut lengths {
                Some(l) => l,
                None => lengths.insert(self.read_list_lengths()?),
            };
            if lengths.short_keys == 0 {
                lengths.short_keys = 1;
                lengths_changed = true;
            }
        }
        for (index, bits) in short {
            let word = self.short_keys.get(&index, 0).context("read SHORT_KEYS")?;
            if word & bits != bits {
                self.short_keys
                    .set(index, word | bits, 0)
                    .context("write SHORT_KEYS")?;
            }
        }
        // After the bits: the program skips SHORT_KEYS while `short_keys` is 0.
        if let (true, Some(lengths)) = (lengths_changed, lengths) {
            self.list_lengths
                .set(0, lengths, 0)
                .context("write LIST_LENGTHS")?;
        }
        Ok(())
    }

    fn read_list_lengths(&self) -> anyhow::Result<ListLengths> {
        self.list_lengths.get(&0, 0).context("read LIST_LENGTHS")
    }

    /// Rewrites the present bits (FILTER's, SHORT_KEYS) and LIST_LENGTHS from the entries the
    /// maps hold now, under each of `keyings`. Call with FILTER_LOCK held. A word only ever
    /// loses bits of entries gone, so the program never misses one, even in a line half
    /// written. FILTER's seen words are the program's: a line is written back as read.
    pub(super) fn rebuild_filter(&mut self, keyings: &[Keying]) -> anyhow::Result<()> {
        let mut lines = vec![FilterLine::default(); filter::LINES as usize];
        let mut short = vec![0u64; filter::SHORT_WORDS as usize];
        let mut lengths = ListLengths::default();
        let mut any_short = false;
        let mut set = |addr: &Addr, prefix_len: u32| {
            for keying in keyings {
                for place in keying.places(addr, prefix_len) {
                    match place {
                        Place::Line(index, bits) => filter::set(&mut lines[index as usize], bits),
                        Place::Short(index, bits) => {
                            short[index as usize] |= bits;
                            any_short = true;
                        }
                    }
                }
            }
        };
        for list in [&self.allow, &self.deny] {
            for key in list.keys() {
                let key = key.context("read a list key")?;
                set(&key.data(), key.prefix_len());
                add_length(&mut lengths, key.prefix_len());
            }
        }
        for key in self.policy.keys() {
            let key = key.context("read a POLICY key")?;
            set(&key.addr, key.prefix_len);
        }
        lengths.short_keys = u32::from(any_short);
        let present = filter::PRESENT_FROM..;
        for (index, want) in (0..filter::LINES).zip(lines) {
            let mut line = self.filter.get(&index, 0).context("read FILTER")?;
            if line.words[present.clone()] != want.words[present.clone()] {
                line.words[present.clone()].copy_from_slice(&want.words[present.clone()]);
                self.filter.set(index, line, 0).context("write FILTER")?;
            }
        }
        for (index, want) in (0..filter::SHORT_WORDS).zip(short) {
            if self.short_keys.get(&index, 0).context("read SHORT_KEYS")? != want {
                self.short_keys
                    .set(index, want, 0)
                    .context("write SHORT_KEYS")?;
            }
        }
        self.list_lengths
            .set(0, lengths, 0)
            .context("write LIST_LENGTHS")?;
        self.filter_rebuilt = Some(std::time::Instant::now());
        Ok(())
    }
}

/// What places a key in the filters: the seed and each family's prefix length (see
/// `sg_common::filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Keying {
    seed: [u64; 2],
    prefix_lens: [u32; 2],
}

/// Where a key's present bits go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// A FILTER line and the key's bits in it.
    Line(u32, [u32; 3]),
    /// A SHORT_KEYS word and the key's bits in it.
    Short(u32, u64),
}

impl Keying {
    pub(super) fn of(config: &KernelConfig) -> Keying {
        Keying {
            seed: config.seed,
            prefix_lens: [config.prefix_len_v4, config.prefix_len_v6],
        }
    }

    /// Where the program looks for a key: one place for each family whose sources the key
    /// covers (the families' prefix lengths differ; `::/0` covers both).
    fn places(&self, addr: &Addr, prefix_len: u32) -> Vec<Place> {
        let key = filter::masked_words(addr, prefix_len);
        let mapped = sg_common::V4_MAPPED_BITS;
        let v4_space = sg_common::map_v4([0; 4]);
        let covers = [
            // Some IPv4-mapped source: the key agrees with ::ffff:0:0/96 as far as both go.
            filter::masked_words(addr, prefix_len.min(mapped))
                == filter::masked_words(&v4_space, prefix_len.min(mapped)),
            // Some IPv6 source: anything but a key inside ::ffff:0:0/96.
            !(prefix_len >= mapped && addr[..12] == sg_common::V4_MAPPED_PREFIX),
        ];
        let mut places: Vec<Place> = self
            .prefix_lens
            .iter()
            .zip(covers)
            .filter(|&(_, covered)| covered)
            .map(|(&family_prefix, _)| {
                let key_hash = filter::hash(key, prefix_len, &self.seed);
                if prefix_len >= family_prefix {
                    let prefix = filter::masked_words(addr, family_prefix);
                    let line = filter::line(filter::hash(prefix, family_prefix, &self.seed));
                    Place::Line(line, filter::present_bits(key_hash))
                } else {
                    let (word, bits) = filter::short(key_hash);
                    Place::Short(word, bits)
                }
            })
            .collect();
        places.dedup();
        places
    }
}

/// Adds `prefix_len` to the lengths the program probes; true when `lengths` changed.
fn add_length(lengths: &mut ListLengths, prefix_len: u32) -> bool {
    let count = lengths.count as usize;
    if lengths.count == filter::TOO_MANY_LENGTHS
        || lengths.lengths[..count.min(filter::MAX_LIST_LENGTHS)]
            .iter()
            .any(|&l| u32::from(l) == prefix_len)
    {
        return false;
    }
    if count >= filter::MAX_LIST_LENGTHS {
        lengths.count = filter::TOO_MANY_LENGTHS;
    } else {
        lengths.lengths[count] = prefix_len as u8;
        lengths.count += 1;
    }
    true
}

/// The SEEN filter's generation: the longest default-ceiling interval, at least a tick (see
/// `sg_common::Config::seen_epoch_shift`), as a power of two: ilog2, rounded up.
pub(super) fn seen_epoch_shift(config: &KernelConfig, tick_ns: u64) -> u32 {
    let longest = config
        .source_ceiling
        .interval_ns
        .max(config.prefix_ceiling.interval_ns)
        .max(tick_ns)
        .max(1_000_000);
    longest.next_power_of_two().ilog2().min(62)
}
