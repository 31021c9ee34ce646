//! slowgate's XDP program: slows new connections to the mail ports, per source and per prefix.
//!
//! Decision for a new connection (SYN without ACK) to a protected port, in order:
//! allow list -> pass; deny list -> drop; POLICY for the exact source, else for its prefix
//! (token bucket or block); else the default ceilings per source and per prefix.
//! Everything else passes; anything that cannot be parsed passes and is counted.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::{BPF_NOEXIST, xdp_action},
        btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
        helpers::bpf_ktime_get_boot_ns,
        macros::{btf_map, xdp},
        programs::XdpContext,
    };
    use sg_common::{
        Addr, Config, DropEvent, ListEntry, Policy, PolicyKey, V4_MAPPED_PREFIX, action,
        apply_mask, capacity, counter, flag, reason,
    };
    use sg_ebpf::{
        bucket,
        parse::{self, Packet},
    };

    /// Single entry, written by userspace before attaching.
    #[btf_map]
    static CONFIG: Array<Config, 1> = Array::new();

    /// Service of each destination port (host order); 0 = not protected.
    #[btf_map]
    static PORTS: Array<u8, 65536> = Array::new();

    /// Manual allow list. Full: userspace's insert fails (E2BIG); the kernel never evicts.
    #[btf_map]
    static ALLOW: LpmTrie<Addr, ListEntry, { capacity::LIST as usize }> = LpmTrie::new();

    /// Manual deny list, same capacity behaviour as ALLOW.
    #[btf_map]
    static DENY: LpmTrie<Addr, ListEntry, { capacity::LIST as usize }> = LpmTrie::new();

    /// Limits and blocks set by userspace for exact sources and for prefixes.
    /// Full: userspace's insert fails (E2BIG) and it reports it.
    #[btf_map]
    static POLICY: HashMap<PolicyKey, Policy, { capacity::POLICY as usize }> = HashMap::new();

    /// Default-ceiling bucket per source (TAT). Full: the least recently used is evicted.
    #[btf_map]
    static CEIL_SRC: LruHashMap<Addr, u64, { capacity::CEIL_SRC as usize }> = LruHashMap::new();

    /// Default-ceiling bucket per prefix (TAT). Full: the least recently used is evicted.
    #[btf_map]
    static CEIL_PFX: LruHashMap<Addr, u64, { capacity::CEIL_PFX as usize }> = LruHashMap::new();

    #[btf_map]
    static COUNTERS: PerCpuArray<u64, { counter::COUNT as usize }> = PerCpuArray::new();

    /// Sampled drops for userspace. Full: the event is lost and counted (EVENTS_LOST).
    #[btf_map]
    static DROP_EVENTS: RingBuf<DropEvent, { capacity::DROP_EVENTS_BYTES as usize }> =
        RingBuf::new();

    /// Where userspace attached the program; only userspace reads it.
    #[btf_map]
    static ATTACHMENTS: Array<sg_common::Attachment, { capacity::ATTACHMENTS as usize }> =
        Array::new();

    /// The throttle.
    #[xdp]
    pub fn slowgate(ctx: XdpContext) -> u32 {
        count(counter::PACKETS);
        let verdict = match try_slowgate(&ctx) {
            Ok(verdict) => verdict,
            Err(_) => {
                // A throttle fails open.
                count(counter::PARSE_ERROR);
                xdp_action::XDP_PASS
            }
        };
        count(if verdict == xdp_action::XDP_DROP {
            counter::DROPPED
        } else {
            counter::PASSED
        });
        verdict
    }

    /// The baseline for `cargo xtask bench xdp`: the cheapest possible XDP program.
    #[xdp]
    pub fn sg_empty(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    #[inline(always)]
    fn try_slowgate(ctx: &XdpContext) -> Result<u32, parse::ParseError> {
        // SAFETY: data..data_end is the packet, readable for the whole program run.
        let tcp = match unsafe { parse::parse(ctx.data(), ctx.data_end()) }? {
            Packet::Tcp(tcp) => tcp,
            Packet::Other => return Ok(xdp_action::XDP_PASS),
        };
        let service = match PORTS.get(u32::from(tcp.dport)) {
            Some(&s) if s != 0 => s,
            _ => return Ok(xdp_action::XDP_PASS),
        };
        let Some(config) = CONFIG.get(0) else {
            return Ok(xdp_action::XDP_PASS);
        };
        let now = unsafe { bpf_ktime_get_boot_ns() };

        if !tcp.new_connection {
            // A session in progress is never cut, unless the operator asked for it.
            if config.flags & flag::DROP_ESTABLISHED_FROM_BLOCKED != 0
                && is_blocked(&tcp.src, config, now)
            {
                return Ok(refuse(
                    &tcp.src,
                    tcp.dport,
                    service,
                    reason::BLOCKED_ESTABLISHED,
                    config,
                    now,
                ));
            }
            return Ok(xdp_action::XDP_PASS);
        }

        count(counter::NEW_CONN);
        count(counter::SERVICE_NEW_CONN + u32::from(service));
        match decide(&tcp.src, config, now) {
            None => Ok(xdp_action::XDP_PASS),
            Some(why) => Ok(refuse(&tcp.src, tcp.dport, service, why, config, now)),
        }
    }

    /// Returns the drop reason for a new connection from `src`, or None to pass it.
    #[inline(always)]
    fn decide(src: &Addr, config: &Config, now: u64) -> Option<u8> {
        let host = Key::new(128, *src);
        if ALLOW.get(&host).is_some_and(|e| live(e.expires_ns, now)) {
            count(counter::ALLOWED);
            return None;
        }
        if DENY.get(&host).is_some_and(|e| live(e.expires_ns, now)) {
            return Some(reason::DENY);
        }
        let prefix = prefix_of(src, config);
        if let Some(policy) = policy_for(src, &prefix, now) {
            // SAFETY: policy points into a POLICY value, valid for this program run.
            let policy = unsafe { &mut *policy };
            if policy.action == action::BLOCK {
                return Some(reason::POLICY_BLOCK);
            }
            // SAFETY: tat_ns is the first field of an 8-byte aligned map value.
            let ok = unsafe {
                bucket::take(
                    &mut policy.tat_ns,
                    now,
                    policy.interval_ns,
                    u64::from(policy.burst),
                )
            };
            return if ok { None } else { Some(reason::POLICY_RATE) };
        }
        let source = config.source_ceiling;
        if source.interval_ns != 0
            && !ceiling(&CEIL_SRC, src, now, source.interval_ns, source.burst)
        {
            return Some(reason::DEFAULT_SOURCE);
        }
        let net = config.prefix_ceiling;
        if net.interval_ns != 0
            && !ceiling(&CEIL_PFX, &prefix.addr, now, net.interval_ns, net.burst)
        {
            return Some(reason::DEFAULT_PREFIX);
        }
        None
    }

    /// True when `src` is denied or blocked by policy (for the established-packets option).
    #[inline(always)]
    fn is_blocked(src: &Addr, config: &Config, now: u64) -> bool {
        let host = Key::new(128, *src);
        if ALLOW.get(&host).is_some_and(|e| live(e.expires_ns, now)) {
            return false;
        }
        if DENY.get(&host).is_some_and(|e| live(e.expires_ns, now)) {
            return true;
        }
        let prefix = prefix_of(src, config);
        policy_for(src, &prefix, now).is_some_and(|p| unsafe { (*p).action } == action::BLOCK)
    }

    #[inline(always)]
    fn prefix_of(src: &Addr, config: &Config) -> PolicyKey {
        let v4 = src[..12] == V4_MAPPED_PREFIX;
        let (mask, prefix_len) = if v4 {
            (&config.prefix_mask_v4, config.prefix_len_v4)
        } else {
            (&config.prefix_mask_v6, config.prefix_len_v6)
        };
        PolicyKey {
            addr: apply_mask(src, mask),
            prefix_len,
        }
    }

    /// The live POLICY entry for the exact source, else for its prefix.
    #[inline(always)]
    fn policy_for(src: &Addr, prefix: &PolicyKey, now: u64) -> Option<*mut Policy> {
        let exact = PolicyKey {
            addr: *src,
            prefix_len: 128,
        };
        if let Some(p) = POLICY.get_ptr_mut(&exact) {
            if live(unsafe { (*p).expires_ns }, now) {
                return Some(p);
            }
        }
        let p = POLICY.get_ptr_mut(prefix)?;
        if live(unsafe { (*p).expires_ns }, now) {
            Some(p)
        } else {
            None
        }
    }

    /// Takes a token from the default-ceiling bucket of `key`, creating it (full) on first sight.
    /// Returns false when the connection exceeds the ceiling.
    #[inline(always)]
    fn ceiling<const N: usize>(
        map: &LruHashMap<Addr, u64, N>,
        key: &Addr,
        now: u64,
        interval_ns: u64,
        burst: u64,
    ) -> bool {
        let tat = match map.get_ptr_mut(key) {
            Some(p) => p,
            None => {
                // Another CPU may create it between our lookup and insert: NOEXIST keeps its
                // state, and the second lookup finds it.
                let _ = map.insert(key, 0u64, u64::from(BPF_NOEXIST));
                match map.get_ptr_mut(key) {
                    Some(p) => p,
                    None => {
                        count(counter::CEILING_INSERT_FAILED);
                        return true;
                    }
                }
            }
        };
        // SAFETY: tat points to an 8-byte aligned map value, valid for this program run.
        unsafe { bucket::take(tat, now, interval_ns, burst) }
    }

    #[inline(always)]
    fn live(expires_ns: u64, now: u64) -> bool {
        expires_ns == 0 || now < expires_ns
    }

    #[inline(always)]
    fn refuse(src: &Addr, port: u16, service: u8, why: u8, config: &Config, now: u64) -> u32 {
        count(counter::DROP_REASON + u32::from(why));
        count(counter::SERVICE_DROPPED + u32::from(service));
        let sample = u64::from(config.event_sample);
        if sample != 0 && counter_value(counter::DROPPED) % sample == 0 {
            let event = DropEvent {
                time_ns: now,
                addr: *src,
                port,
                reason: why,
                service,
                _pad: [0; 4],
            };
            if DROP_EVENTS.output(&event, 0).is_err() {
                count(counter::EVENTS_LOST);
            }
        }
        xdp_action::XDP_DROP
    }

    #[inline(always)]
    fn count(index: u32) {
        if let Some(c) = COUNTERS.get_ptr_mut(index) {
            // SAFETY: a per-CPU slot: no other CPU writes it, and XDP runs without preemption.
            unsafe { *c += 1 };
        }
    }

    #[inline(always)]
    fn counter_value(index: u32) -> u64 {
        COUNTERS.get(index).copied().unwrap_or(0)
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// The program only exists for the BPF target; host builds (clippy, `cargo test`) get this stub.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
