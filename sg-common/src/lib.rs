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
    pub const CEIL_SRC: &str = "CEIL_SRC";
    pub const CEIL_PFX: &str = "CEIL_PFX";
    pub const COUNTERS: &str = "COUNTERS";
    pub const DROP_EVENTS: &str = "DROP_EVENTS";
    pub const ATTACHMENTS: &str = "ATTACHMENTS";
}

/// Default capacities. Userspace may change them at load time (see `[capacity]` in the config).
pub mod capacity {
    /// ALLOW and DENY, each (LPM tries; an insert into a full trie fails with E2BIG, which
    /// userspace reports; the kernel never evicts a list entry).
    pub const LIST: u32 = 131_072;
    /// POLICY (hash; userspace owns it; a full map refuses new entries with E2BIG).
    pub const POLICY: u32 = 262_144;
    /// CEIL_SRC (LRU hash: when full, the least recently seen source is forgotten and starts
    /// again with a full bucket).
    pub const CEIL_SRC: u32 = 262_144;
    /// CEIL_PFX (LRU hash, same behaviour as CEIL_SRC).
    pub const CEIL_PFX: u32 = 65_536;
    /// DROP_EVENTS ring buffer size in bytes (a full ring drops new events and counts them).
    pub const DROP_EVENTS_BYTES: u32 = 256 * 1024;
    /// ATTACHMENTS slots (interfaces one daemon can attach to).
    pub const ATTACHMENTS: u32 = 64;
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

/// Value of POLICY.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Bucket state owned by the kernel (GCRA "theoretical arrival time", CLOCK_BOOTTIME ns).
    /// Userspace writes 0 on creation: the bucket starts full.
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
    /// [`flag`] bits.
    pub flags: u32,
    /// Emit one drop event in every `event_sample` drops (per CPU); 0 = none.
    pub event_sample: u32,
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
    pub const COUNT: u32 = 6;
    pub const NAMES: [&str; COUNT as usize] = [
        "deny",
        "policy_rate",
        "policy_block",
        "default_source_ceiling",
        "default_prefix_ceiling",
        "blocked_established",
    ];
}

/// Indexes into the per-CPU COUNTERS array.
pub mod counter {
    use super::{reason, service};
    /// Every packet the program saw.
    pub const PACKETS: u32 = 0;
    pub const PASSED: u32 = 1;
    pub const DROPPED: u32 = 2;
    /// Packets that could not be parsed (truncated, bad IHL, too many extension headers); passed.
    pub const PARSE_ERROR: u32 = 3;
    /// New connections (SYN without ACK) to a protected port.
    pub const NEW_CONN: u32 = 4;
    /// New connections passed because the allow list matched.
    pub const ALLOWED: u32 = 5;
    /// A default-ceiling bucket could not be created (map busy); the packet passed.
    pub const CEILING_INSERT_FAILED: u32 = 6;
    /// Drop events lost because the ring buffer was full.
    pub const EVENTS_LOST: u32 = 7;
    /// `DROP_REASON + reason::*`: drops by reason.
    pub const DROP_REASON: u32 = 8;
    /// `SERVICE_NEW_CONN + service::*`: new connections by service.
    pub const SERVICE_NEW_CONN: u32 = DROP_REASON + reason::COUNT;
    /// `SERVICE_DROPPED + service::*`: drops by service.
    pub const SERVICE_DROPPED: u32 = SERVICE_NEW_CONN + service::COUNT;
    /// Number of counters.
    pub const COUNT: u32 = SERVICE_DROPPED + service::COUNT;
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
}

// Counter ranges do not overlap.
const _: () = assert!(counter::EVENTS_LOST < counter::DROP_REASON);
const _: () = assert!(counter::SERVICE_NEW_CONN == counter::DROP_REASON + reason::COUNT);

// No implicit padding anywhere: a key's padding bytes would be hashed.
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 20);
const _: () = assert!(core::mem::size_of::<Policy>() == 32);
const _: () = assert!(core::mem::size_of::<Config>() == 32 + 32 + 16);
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
    let mut out = [0u8; 16];
    // Unrolled by the compiler; the BPF verifier sees constant indexes.
    let mut i = 0;
    while i < 16 {
        out[i] = addr[i] & mask[i];
        i += 1;
    }
    out
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
