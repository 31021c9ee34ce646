//! The types that cross the kernel boundary: map keys and values, reason codes, counters.
//!
//! Every address is kept in one 16-byte form so that one map serves both families: IPv6 as it
//! sits in the packet, IPv4 as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, RFC 4291 2.5.5.2).
//! Prefix lengths are therefore counted over 128 bits: an IPv4 /24 is a mapped /120.
//! All structs are `#[repr(C)]` with padding spelled out, because padding bytes are hashed as
//! part of a key.
#![no_std]

/// A source address in the mapped 16-byte form, network byte order.
pub type Addr = [u8; 16];

/// The first 12 bytes of an IPv4-mapped IPv6 address.
pub const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// Bits taken by [`V4_MAPPED_PREFIX`]: an IPv4 prefix length `n` is stored as `96 + n`.
pub const V4_MAPPED_BITS: u32 = 96;

/// Map names, as pinned under the pin directory (15 characters at most: they are the kernel's
/// map names and the file names operators pass to `bpftool map dump pinned`).
pub mod map_name {
    pub const CONFIG: &str = "CONFIG";
    pub const PORTS: &str = "PORTS";
    pub const ALLOW: &str = "ALLOW";
    pub const DENY: &str = "DENY";
    pub const POLICY: &str = "POLICY";
    pub const SOURCES: &str = "SOURCES";
    pub const PREFIXES: &str = "PREFIXES";
    pub const GENERATION: &str = "GENERATION";
    pub const COUNTERS: &str = "COUNTERS";
    pub const DROP_EVENTS: &str = "DROP_EVENTS";
    pub const ATTACHMENTS: &str = "ATTACHMENTS";
    pub const FILTER: &str = "FILTER";
    pub const SHORT_KEYS: &str = "SHORT_KEYS";
    pub const LIST_LENGTHS: &str = "LIST_LENGTHS";
    pub const CONNECTIONS: &str = "CONNECTIONS";
    pub const COUNTED: &str = "COUNTED";
}

/// Default capacities. Userspace may change them at load time (see `[capacity]` in the config).
pub mod capacity {
    /// ALLOW and DENY, each (LPM tries; an insert into a full trie fails with E2BIG, which
    /// userspace reports; the kernel never evicts a list entry).
    pub const LIST: u32 = 131_072;
    /// POLICY (hash; userspace owns it; a full map refuses new entries with E2BIG).
    pub const POLICY: u32 = 262_144;
    /// SOURCES slots (a power of two). The table never fills up: a source takes the slot its
    /// keyed hash picks, replacing whatever source was there, which starts again with a full
    /// bucket when it comes back (counted as SOURCE_SLOT_REPLACED).
    pub const SOURCES: u32 = 262_144;
    /// PREFIXES slots (a power of two), same behaviour as SOURCES.
    pub const PREFIXES: u32 = 65_536;
    /// DROP_EVENTS ring buffer size in bytes (a full ring drops new events and counts them).
    pub const DROP_EVENTS_BYTES: u32 = 256 * 1024;
    /// ATTACHMENTS slots (interfaces one daemon can attach to).
    pub const ATTACHMENTS: u32 = 64;
    /// CONNECTIONS: sources and prefixes with established connections counted (hash). Full:
    /// a new source's connection is not counted (it is admitted, and counted as
    /// CONCURRENT_UNTRACKED); entries at zero are removed by userspace's sweep.
    pub const CONNECTIONS: u32 = 65_536;
    /// COUNTED: established connections counted, by socket cookie (hash). Full: the
    /// connection is not counted (admitted, CONCURRENT_UNTRACKED).
    pub const COUNTED: u32 = 262_144;
}

/// Value of the ALLOW and DENY LPM tries (keyed by `Key<Addr>`: prefix length, then address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListEntry {
    /// CLOCK_BOOTTIME nanoseconds after which the kernel ignores the entry; 0 = never.
    pub expires_ns: u64,
}

/// Key of POLICY: an exact source (`prefix_len` 128) or a prefix (the configured length).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyKey {
    /// Masked to `prefix_len` bits.
    pub addr: Addr,
    /// Prefix length in bits over the mapped 16-byte form.
    pub prefix_len: u32,
}

/// What a POLICY entry does to new connections.
pub mod action {
    /// Token bucket: `burst` connections at once, then one per `interval_ns`.
    pub const LIMIT: u32 = 1;
    /// Every new connection is dropped.
    pub const BLOCK: u32 = 2;
}

/// Value of POLICY. The bucket of a source's or prefix's limit lives in its slot, next to the
/// cached verdict (see [`Slot`]); a network's limit is shared by all its prefixes, so its bucket
/// is here.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Bucket state of a network's limit (GCRA theoretical arrival time, tick clock); unused
    /// for sources and prefixes. Userspace writes 0: the bucket starts full.
    pub tat_ns: u64,
    /// Nanoseconds per connection at the sustained rate.
    pub interval_ns: u64,
    /// CLOCK_BOOTTIME nanoseconds after which the kernel ignores the entry; 0 = never.
    pub expires_ns: u64,
    /// Connections allowed at once when the bucket is full (at least 1 for LIMIT).
    pub burst: u32,
    /// One of [`action`].
    pub action: u32,
}

/// What the kernel worked out for one source (or prefix), cached in its [`Slot`].
pub mod verdict {
    /// No rule for the source itself: look at its prefix. For a prefix: the default ceilings.
    pub const NEXT: u32 = 0;
    /// Allow list: pass.
    pub const ALLOW: u32 = 1;
    /// Deny list: drop.
    pub const DENY: u32 = 2;
    /// A POLICY token bucket (the slot's `interval_ns` and `burst`).
    pub const LIMIT: u32 = 3;
    /// A POLICY block.
    pub const BLOCK: u32 = 4;
    /// A POLICY token bucket of the prefix's network, whose bucket is in the POLICY entry.
    pub const NETWORK_LIMIT: u32 = 5;
}

/// One slot of SOURCES (or PREFIXES): the kernel's memory of one source (or prefix).
///
/// The slot index and the fingerprint come from a hash of the address keyed with
/// `Config::seed`, so a sender cannot choose whose slot it takes. A new SYN reads the slot
/// (an array lookup) and, while the verdict is current, decides from it alone; only when the
/// verdict is stale (another source's slot, `GENERATION` moved because userspace changed a list
/// or a policy, or an entry's expiry passed) does it consult ALLOW, DENY and POLICY again.
/// Two CPUs may write one slot at once for different sources; `check` detects the torn result,
/// which is then worked out again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    /// The source's token bucket (GCRA theoretical arrival time, tick clock): its policy's
    /// bucket when one applies, else the default ceiling's. Updated by compare-and-swap.
    pub tat_ns: u64,
    /// Fingerprint (high 32 bits, never 0) and GENERATION (low 32 bits) of the cached verdict;
    /// 0 = never used.
    pub tag: u64,
    /// Tick-clock time at which the verdict must be worked out again (an entry expires).
    pub until_ns: u64,
    /// The policy's interval (verdict LIMIT).
    pub interval_ns: u64,
    /// One of [`verdict`].
    pub verdict: u32,
    /// The policy's burst (verdict LIMIT).
    pub burst: u32,
    /// [`Slot::checksum`] of the fields above.
    pub check: u64,
    /// Tick-clock time until which the slot's source counts as verified: a packet of it
    /// matched an established TCP socket on a protected port, so the address is not spoofed.
    /// A verified source is exempt from the default ceilings (never from lists and policies),
    /// so SYNs spoofed with its address cannot lock it out; 0 = not verified. Cleared when
    /// another source takes the slot.
    pub verified_until_ns: u64,
    /// New connections of this source the program dropped by a list or a policy (deny, a
    /// learned or operator limit or block), and by a default ceiling. Counted without atomics
    /// (two CPUs may lose an increment): for reports, never for decisions. Cleared when another
    /// source takes the slot.
    pub dropped_by_rule: u32,
    pub dropped_by_ceiling: u32,
}

/// How long a source stays verified after its last packet on an established connection.
pub const VERIFIED_FOR_NS: u64 = 600 * 1_000_000_000;

impl Slot {
    /// What `check` must hold for a slot whose fields were written by one writer. A torn slot
    /// mixes fields of two writers, whose tags always differ, so the xor differs too.
    #[inline(always)]
    pub fn checksum(&self) -> u64 {
        let packed = (u64::from(self.verdict) << 32) | u64::from(self.burst);
        self.tag ^ self.until_ns ^ self.interval_ns ^ packed ^ 0x5a5a_5a5a_5a5a_5a5a
    }
}

/// Slot index (masked with `mask`) and fingerprint (high 32 bits set, never 0) of `addr`,
/// from a multiply-xor hash keyed with `seed`. Not a cryptographic MAC: the seed is random per
/// installation and never leaves the machine; the worst a guessed seed allows is to evict
/// chosen sources from their slots (they start again with a full bucket).
#[inline(always)]
pub fn slot_hash(addr: &Addr, seed: &[u64; 2], mask: u32) -> (u32, u64) {
    let [a, b] = words(addr);
    let mut h = (a ^ seed[0]).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h = (h.rotate_left(31) ^ b ^ seed[1]).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 29;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 32;
    let index = (h as u32) & mask;
    let fingerprint = (h & 0xffff_ffff_0000_0000) | (1 << 63);
    (index, fingerprint)
}

/// The first contact path: Bloom filters that let a new connection from a prefix nobody has
/// seen lately pass without reading a slot (a random-source SYN flood would otherwise cost
/// two cache misses in tables of many megabytes per packet). What the program asks about one
/// source lives in one cache line, the [`FilterLine`] its prefix hashes to:
///
/// - **seen**: three generations of `1 << Config::seen_epoch_shift` ns each, one word each.
///   The program sets the prefix's bits in the current generation, reads the current and the
///   previous one, and clears the next one in every line it visits: a prefix stays seen for
///   at least one epoch. Next to them, the slot fingerprint of the source that last passed on
///   first contact. A lost or cleared bit costs at most one connection that the buckets do
///   not see; a bit left by someone else only sends a packet down the slot path.
/// - **present**: every key of ALLOW, DENY and POLICY at least as long as its family's prefix
///   length (exact sources, prefixes, longer list entries), in the line of the prefix it is
///   in. Shorter keys (networks, short list entries) go to SHORT_KEYS, a small filter that
///   stays in cache. Userspace sets a key's bits before it inserts the entry and rebuilds the
///   filters from the maps when entries go: a key absent from the filters is absent from the
///   maps, a negative answer is exact, a positive one is checked in the maps as before.
///   LIST_LENGTHS names the list lengths present, so the program probes only those.
pub mod filter {
    use super::Addr;
    /// FILTER lines (64 bytes each; 1 MiB: 1 Mi seen bits per generation, 4 Mi present bits).
    pub const LINES: u32 = 1 << 14;
    /// SHORT_KEYS words (32 KiB: the kernel allocates a map this small from its linear
    /// mapping, which costs no TLB entries of its own).
    pub const SHORT_WORDS: u32 = 1 << 12;
    pub const SEEN_GENERATIONS: u64 = 3;
    /// The word of a [`super::FilterLine`] that holds the first-contact source's fingerprint.
    pub const FIRST_SOURCE: usize = 3;
    /// The words of a [`super::FilterLine`] that hold present bits.
    pub const PRESENT_FROM: usize = 4;
    /// Distinct list prefix lengths the program probes; more and it looks every source up.
    pub const MAX_LIST_LENGTHS: usize = 16;
    /// `ListLengths::count` when the lists hold more lengths than the program probes.
    pub const TOO_MANY_LENGTHS: u32 = u32::MAX;

    /// `addr` masked to `prefix_len` leading bits, as the two native words of [`super::words`].
    #[inline(always)]
    pub fn masked_words(addr: &Addr, prefix_len: u32) -> [u64; 2] {
        let [a0, a1] = super::words(addr);
        let high = |bits: u32| -> u64 {
            if bits >= 64 {
                u64::MAX
            } else if bits == 0 {
                0
            } else {
                u64::MAX << (64 - bits)
            }
        };
        let m0 = high(prefix_len).to_be();
        let m1 = high(prefix_len.saturating_sub(64)).to_be();
        [a0 & m0, a1 & m1]
    }

    /// A keyed multiply-xor hash of a key (masked words and length).
    #[inline(always)]
    pub fn hash(words: [u64; 2], prefix_len: u32, seed: &[u64; 2]) -> u64 {
        let [a, b] = words;
        let mut h = (a ^ seed[0] ^ u64::from(prefix_len).wrapping_mul(0xd6e8_feb8_6659_fd93))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h = (h.rotate_left(29) ^ b ^ seed[1]).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 31;
        h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^ (h >> 29)
    }

    /// Three bits of a 64-bit word, from bits 32.. of a hash.
    #[inline(always)]
    fn word_bits(h: u64) -> u64 {
        (1u64 << ((h >> 32) & 63)) | (1u64 << ((h >> 40) & 63)) | (1u64 << ((h >> 48) & 63))
    }

    /// The FILTER line of a prefix, from its [`hash`].
    #[inline(always)]
    pub fn line(prefix_hash: u64) -> u32 {
        prefix_hash as u32 & (LINES - 1)
    }

    /// A prefix's seen bits, from its [`hash`].
    #[inline(always)]
    pub fn seen_bits(prefix_hash: u64) -> u64 {
        word_bits(prefix_hash)
    }

    /// A key's present bits, three positions among a line's 256, from its [`hash`] (bits
    /// 40..64, apart from those that pick the line and the seen bits' first two).
    #[inline(always)]
    pub fn present_bits(key_hash: u64) -> [u32; 3] {
        [
            (key_hash >> 40) as u32 & 255,
            (key_hash >> 48) as u32 & 255,
            (key_hash >> 56) as u32 & 255,
        ]
    }

    /// Whether a line holds all of a key's present bits.
    #[inline(always)]
    pub fn holds(line: &super::FilterLine, bits: [u32; 3]) -> bool {
        bits.iter()
            .all(|&b| line.words[PRESENT_FROM + ((b >> 6) as usize & 3)] & (1u64 << (b & 63)) != 0)
    }

    /// Sets a key's present bits in a line.
    #[inline(always)]
    pub fn set(line: &mut super::FilterLine, bits: [u32; 3]) {
        for b in bits {
            line.words[PRESENT_FROM + ((b >> 6) as usize & 3)] |= 1u64 << (b & 63);
        }
    }

    /// The SHORT_KEYS word of a key shorter than its family's prefix, and its three bits,
    /// from its [`hash`].
    #[inline(always)]
    pub fn short(key_hash: u64) -> (u32, u64) {
        (key_hash as u32 & (SHORT_WORDS - 1), word_bits(key_hash))
    }
}

/// One line of FILTER (see [`filter`]). Words 0..3 are the seen generations (indexed with
/// `& 3` so the verifier sees the bound; a generation is never 3), word 3 the first-contact
/// source's fingerprint, words 4..8 present bits. The program writes words 0..4, userspace
/// words 4..8 (its read-modify-write of a line may lose a seen bit: one connection more).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterLine {
    pub words: [u64; 8],
}

/// The prefix lengths present in ALLOW and DENY, and whether SHORT_KEYS holds any key (the
/// single entry of LIST_LENGTHS; the program skips what is empty).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListLengths {
    /// The first `count` are in use, over the mapped 128-bit form.
    pub lengths: [u8; filter::MAX_LIST_LENGTHS],
    /// Lengths in use, or [`filter::TOO_MANY_LENGTHS`].
    pub count: u32,
    /// Non-zero once a key went to SHORT_KEYS (since the last rebuild).
    pub short_keys: u32,
}

/// GCRA token buckets (the "generic cell rate algorithm", ITU-T I.371): the whole state is one
/// u64, the theoretical arrival time (TAT). The XDP program updates it with compare-and-swap
/// (sg-ebpf `bucket.rs`); `slowgate replay` runs the same arithmetic on a log's clock.
pub mod gcra {
    /// Longest interval between connections (about 39 hours): a slower rate is a block.
    pub const MAX_INTERVAL_NS: u64 = 1 << 47;
    /// Largest burst.
    pub const MAX_BURST: u64 = 65_535;

    /// Decides one connection at `now` against a bucket of `burst` connections refilled at one per
    /// `interval_ns`, on a clock that advances in steps of `step_ns` (0 for a precise clock).
    /// Returns the new TAT when the connection conforms, `None` when it exceeds the bucket (the
    /// state then stays as it was: refused connections cost nothing).
    ///
    /// A stepped clock stands still between steps; the bucket tolerates one step more so that a
    /// rate faster than one per step is still reached over time. Over any window of T ns it
    /// admits at most `burst + (T + 2 * step_ns) / interval_ns`.
    #[inline(always)]
    pub fn conform(tat: u64, now: u64, interval_ns: u64, burst: u64, step_ns: u64) -> Option<u64> {
        // Clamped so the product below cannot overflow: any overflow check compiles to a 128-bit
        // multiply, which BPF cannot do. Userspace refuses values past these bounds anyway.
        let interval = if interval_ns > MAX_INTERVAL_NS {
            MAX_INTERVAL_NS
        } else {
            interval_ns
        };
        let burst = if burst == 0 {
            1
        } else if burst > MAX_BURST {
            MAX_BURST
        } else {
            burst
        };
        let start = if tat > now { tat } else { now };
        let next = start.saturating_add(interval);
        // Conforms while the bucket is at most `burst` intervals ahead of now.
        if next - now > interval * burst + step_ns {
            None
        } else {
            Some(next)
        }
    }
}

/// A token bucket's parameters. `interval_ns == 0` switches the bucket off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub interval_ns: u64,
    pub burst: u64,
}

/// `Config::flags` bits.
pub mod flag {
    /// Also drop packets of established connections from denied or blocked sources.
    pub const DROP_ESTABLISHED_FROM_BLOCKED: u32 = 1;
    /// Concurrent-connection caps are on (`Config::concurrent_*`): the one bit the hot path
    /// reads when they are off, next to the fields it reads anyway.
    pub const CONCURRENT_CAPS: u32 = 2;
    /// Kernel diagnostics through aya-log (`[log] kernel`): parse errors, unusual packet shapes
    /// and each refusal, read by the daemon into its log. Off, each costs one flag test.
    pub const KERNEL_DEBUG: u32 = 4;
}

/// The single entry of CONFIG, written by userspace before the program is attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Default ceiling per source address (applies when no POLICY entry matches).
    pub source_ceiling: Bucket,
    /// Default ceiling per prefix.
    pub prefix_ceiling: Bucket,
    /// Mask that turns a mapped IPv4 source into its prefix.
    pub prefix_mask_v4: Addr,
    /// Mask that turns an IPv6 source into its prefix.
    pub prefix_mask_v6: Addr,
    /// Prefix length (mapped form) of IPv4 prefixes, the `prefix_len` of their POLICY keys.
    pub prefix_len_v4: u32,
    /// Prefix length of IPv6 prefixes.
    pub prefix_len_v6: u32,
    /// Mask that turns a mapped IPv4 source into its network (several prefixes, limited as
    /// one when userspace says so).
    pub network_mask_v4: Addr,
    pub network_mask_v6: Addr,
    pub network_len_v4: u32,
    pub network_len_v6: u32,
    /// [`flag`] bits.
    pub flags: u32,
    /// Emit one drop event in every `event_sample` drops (per CPU); 0 = none.
    pub event_sample: u32,
    /// Length of one kernel tick (1 s / CONFIG_HZ), measured by userspace. Buckets run on the
    /// tick clock, `jiffies * tick_ns`, because reading it costs a few instructions where a
    /// precise clock costs more than the rest of the program; 0 = use the precise clock.
    pub tick_ns: u64,
    /// CLOCK_BOOTTIME minus the tick clock (wrapping), measured by userspace when it writes
    /// the config (and again every sweep): the program reads the boot time it compares entry
    /// expiries with as `tick clock + boot_offset_ns`, within a tick, instead of calling
    /// `bpf_ktime_get_boot_ns` (about 150 ns a call on a cold path here).
    pub boot_offset_ns: u64,
    /// Key of [`slot_hash`], random per installation, kept across restarts.
    pub seed: [u64; 2],
    /// SOURCES capacity minus one (capacities are powers of two).
    pub source_slots_mask: u32,
    /// PREFIXES capacity minus one.
    pub prefix_slots_mask: u32,
    /// Length of one generation of the SEEN filter, `1 << seen_epoch_shift` ns of the tick
    /// clock: a prefix stays "seen" at least this long after its last new connection.
    /// Userspace makes it at least the longest default-ceiling interval (and a tick), so the
    /// one connection a forgotten prefix gets without its buckets is one they would have
    /// refilled anyway. 0 = no first contact path (every new connection reads its slots).
    pub seen_epoch_shift: u32,
    /// Most established connections to the protected ports one source may hold; 0 = no cap.
    pub concurrent_source: u32,
    /// The same for a prefix.
    pub concurrent_prefix: u32,
    /// The cap of a source or prefix that a POLICY limit (a level) holds, when lower than its
    /// own; 0 = the same caps.
    pub concurrent_limited: u32,
    /// The network namespace whose connections CONNECTIONS counts (its cookie), so daemons in
    /// other namespaces of the host count theirs apart; 0 = every namespace.
    pub netns_cookie: u64,
}

/// Services, the values of PORTS (indexed by destination port in host order).
pub mod service {
    pub const NONE: u8 = 0;
    pub const SMTP: u8 = 1;
    pub const SUBMISSION: u8 = 2;
    pub const POP3: u8 = 3;
    pub const IMAP: u8 = 4;
    /// Number of service values, NONE included.
    pub const COUNT: u32 = 5;
    pub const NAMES: [&str; COUNT as usize] = ["none", "smtp", "submission", "pop3", "imap"];
}

/// Why a packet was dropped.
pub mod reason {
    pub const DENY: u8 = 0;
    pub const POLICY_RATE: u8 = 1;
    pub const POLICY_BLOCK: u8 = 2;
    pub const DEFAULT_SOURCE: u8 = 3;
    pub const DEFAULT_PREFIX: u8 = 4;
    pub const BLOCKED_ESTABLISHED: u8 = 5;
    /// A frame whose source is out of reach of the program (more VLAN tags than it walks)
    /// but not of the stack.
    pub const UNJUDGEABLE: u8 = 6;
    /// The source or its prefix holds as many established connections as its cap allows.
    pub const CONCURRENT: u8 = 7;
    pub const COUNT: u32 = 8;
    pub const NAMES: [&str; COUNT as usize] = [
        "deny",
        "policy_rate",
        "policy_block",
        "default_source_ceiling",
        "default_prefix_ceiling",
        "blocked_established",
        "unjudgeable",
        "concurrent_cap",
    ];
}

/// Indexes into the per-CPU COUNTERS array.
pub mod counter {
    use super::{reason, service};
    /// Every packet the program saw (PASSED + DROPPED: userspace adds them up).
    pub const PACKETS: u32 = 0;
    pub const PASSED: u32 = 1;
    pub const DROPPED: u32 = 2;
    /// Packets that could not be parsed before their source was known (a cut link or IP
    /// header, a bad IHL or version); passed.
    pub const PARSE_ERROR: u32 = 3;
    /// New connections (SYN without ACK) to a protected port (userspace adds up
    /// SERVICE_NEW_CONN).
    pub const NEW_CONN: u32 = 4;
    /// New connections passed because the allow list matched.
    pub const ALLOWED: u32 = 5;
    /// Verdicts worked out from ALLOW, DENY and POLICY (the rest came from a slot).
    pub const VERDICT_WORKED_OUT: u32 = 6;
    /// Drop events lost because the ring buffer was full.
    pub const EVENTS_LOST: u32 = 7;
    /// SOURCES slots taken for the first time (the table's fill).
    pub const SOURCE_SLOT_CLAIMED: u32 = 8;
    /// SOURCES slots taken over from another source.
    pub const SOURCE_SLOT_REPLACED: u32 = 9;
    /// PREFIXES slots taken for the first time.
    pub const PREFIX_SLOT_CLAIMED: u32 = 10;
    /// PREFIXES slots taken over from another prefix.
    pub const PREFIX_SLOT_REPLACED: u32 = 11;
    /// `DROP_REASON + reason::*`: drops by reason.
    pub const DROP_REASON: u32 = 12;
    /// `SERVICE_NEW_CONN + service::*`: new connections by service.
    pub const SERVICE_NEW_CONN: u32 = DROP_REASON + reason::COUNT;
    /// `SERVICE_DROPPED + service::*`: drops by service.
    pub const SERVICE_DROPPED: u32 = SERVICE_NEW_CONN + service::COUNT;
    /// IP packets whose transport header the program could not reach (an IPv6 chain past the
    /// walk, a header cut short), judged by their source as new connections.
    pub const OPAQUE: u32 = SERVICE_DROPPED + service::COUNT;
    /// Sources marked verified (a packet of theirs matched an established socket).
    pub const VERIFIED: u32 = OPAQUE + 1;
    /// New connections of verified sources passed over an exhausted default ceiling.
    pub const VERIFIED_OVER_CEILING: u32 = VERIFIED + 1;
    /// New connections refused because every compare-and-swap on their bucket lost a race
    /// with another CPU (the bucket never admits more than it holds).
    pub const BUCKET_CONTENDED: u32 = VERIFIED_OVER_CEILING + 1;
    /// New connections decided on first contact (see `filter`): no list or policy can match
    /// and the prefix was not seen lately; passed without touching a slot.
    pub const FIRST_CONTACT: u32 = BUCKET_CONTENDED + 1;
    /// Established connections that could not be counted for the concurrent caps (CONNECTIONS
    /// or COUNTED full); they were admitted.
    pub const CONCURRENT_UNTRACKED: u32 = FIRST_CONTACT + 1;
    /// Number of counters.
    pub const COUNT: u32 = CONCURRENT_UNTRACKED + 1;
}

/// A sampled drop, sent to userspace through the DROP_EVENTS ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    /// CLOCK_BOOTTIME nanoseconds.
    pub time_ns: u64,
    pub addr: Addr,
    /// Destination port, host byte order.
    pub port: u16,
    /// One of [`reason`].
    pub reason: u8,
    /// One of [`service`].
    pub service: u8,
    pub _pad: [u8; 4],
}

/// Attach modes as recorded in ATTACHMENTS.
pub mod mode {
    pub const NONE: u32 = 0;
    pub const SKB: u32 = 1;
    pub const NATIVE: u32 = 2;
    pub const NAMES: [&str; 3] = ["none", "skb", "native"];
}

/// One slot of ATTACHMENTS: where the daemon attached the program (for `slowgate status`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attachment {
    pub ifindex: u32,
    /// One of [`mode`].
    pub mode: u32,
    /// Interface name, NUL-padded (IFNAMSIZ).
    pub name: [u8; 16],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], contain only integers and byte arrays, and have no
    // implicit padding (checked by the size assertions below).
    unsafe impl aya::Pod for super::ListEntry {}
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::Policy {}
    unsafe impl aya::Pod for super::Bucket {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::DropEvent {}
    unsafe impl aya::Pod for super::Attachment {}
    unsafe impl aya::Pod for super::Slot {}
    unsafe impl aya::Pod for super::ListLengths {}
    unsafe impl aya::Pod for super::FilterLine {}
}

// Counter ranges do not overlap.
const _: () = assert!(counter::EVENTS_LOST < counter::DROP_REASON);
// Every reason and service has its counter: a value added without bumping COUNT fails here.
const _: () = assert!((reason::CONCURRENT as u32) < reason::COUNT);
const _: () = assert!((service::IMAP as u32) < service::COUNT);

// No implicit padding anywhere: a key's padding bytes would be hashed.
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 20);
const _: () = assert!(core::mem::size_of::<Policy>() == 32);
const _: () =
    assert!(core::mem::size_of::<Config>() == 32 + 32 + 8 + 40 + 8 + 8 + 8 + 16 + 8 + 8 + 8 + 8);
const _: () = assert!(core::mem::size_of::<ListLengths>() == 24);
const _: () = assert!(core::mem::size_of::<Slot>() == 64);
const _: () = assert!(core::mem::size_of::<DropEvent>() == 32);
const _: () = assert!(core::mem::size_of::<Attachment>() == 24);

/// Maps an IPv4 address (network order) into the 16-byte form.
pub const fn map_v4(v4: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// A mask of `bits` leading one bits over 128 bits.
pub const fn prefix_mask(bits: u32) -> Addr {
    let mut mask = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        let start = i as u32 * 8;
        mask[i] = if bits >= start + 8 {
            0xff
        } else if bits <= start {
            0
        } else {
            0xffu8 << (8 - (bits - start))
        };
        i += 1;
    }
    mask
}

/// `addr` with every bit past `mask` cleared.
#[inline(always)]
pub fn apply_mask(addr: &Addr, mask: &Addr) -> Addr {
    let [a0, a1] = words(addr);
    let [m0, m1] = words(mask);
    // SAFETY: 16 bytes either way.
    unsafe { core::mem::transmute::<[u64; 2], Addr>([a0 & m0, a1 & m1]) }
}

/// True for an IPv4-mapped address.
#[inline(always)]
pub fn is_v4_mapped(addr: &Addr) -> bool {
    let [a0, a1] = words(addr);
    a0 == 0 && a1 as u32 == u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

/// The address as two native-endian words, the form the XDP program computes with (LLVM's BPF
/// backend turns byte-wise work on a 16-byte array into 16 loads and as many shifts).
#[inline(always)]
pub fn words(addr: &Addr) -> [u64; 2] {
    // SAFETY: 16 bytes either way; every bit pattern is a valid u64.
    unsafe { core::mem::transmute::<Addr, [u64; 2]>(*addr) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_slash_24_mask_keeps_three_octets_after_mapping() {
        let mask = prefix_mask(V4_MAPPED_BITS + 24);
        let addr = map_v4([198, 51, 100, 77]);
        assert_eq!(apply_mask(&addr, &mask), map_v4([198, 51, 100, 0]));
    }

    #[test]
    fn v4_mapped_is_recognised_by_words() {
        assert!(is_v4_mapped(&map_v4([198, 51, 100, 1])));
        let mut v6 = map_v4([198, 51, 100, 1]);
        v6[0] = 0x20;
        assert!(!is_v4_mapped(&v6));
        v6 = map_v4([198, 51, 100, 1]);
        v6[10] = 0;
        assert!(!is_v4_mapped(&v6));
    }

    #[test]
    fn slot_hash_stays_in_the_table_and_depends_on_the_seed() {
        let mask = (1 << 10) - 1;
        let mut same = 0;
        for i in 0..1000u32 {
            let mut addr = map_v4(i.to_be_bytes());
            addr[0] = 0x20;
            let (index, fingerprint) = slot_hash(&addr, &[1, 2], mask);
            assert!(index <= mask);
            assert!(fingerprint >> 63 == 1 && fingerprint as u32 == 0);
            same += usize::from(slot_hash(&addr, &[3, 4], mask).0 == index);
        }
        // Another seed moves almost every address (1 in 1024 stay by chance).
        assert!(same < 20, "{same} of 1000 addresses kept their slot");
    }

    #[test]
    fn a_slot_written_by_one_writer_checks_and_a_torn_one_does_not() {
        let mut slot = Slot {
            tag: 0x8000_0001_0000_0007,
            until_ns: 99,
            interval_ns: 1000,
            verdict: verdict::LIMIT,
            burst: 5,
            ..Slot::default()
        };
        slot.check = slot.checksum();
        let mut torn = slot;
        torn.verdict = verdict::ALLOW;
        assert_eq!(slot.check, slot.checksum());
        assert_ne!(torn.check, torn.checksum());
    }

    #[test]
    fn odd_prefix_lengths_mask_partial_bytes() {
        let mask = prefix_mask(60);
        assert_eq!(
            &mask[..8],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xf0]
        );
        assert_eq!(&mask[8..], &[0; 8]);
        assert_eq!(prefix_mask(0), [0; 16]);
        assert_eq!(prefix_mask(128), [0xff; 16]);
    }
}
