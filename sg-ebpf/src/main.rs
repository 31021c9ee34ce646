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
        bindings::{
            bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 as TupleV4,
            bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 as TupleV6, xdp_action,
        },
        btf_maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
        helpers::{bpf_jiffies64, bpf_ktime_get_boot_ns, bpf_sk_release, bpf_skc_lookup_tcp},
        macros::{btf_map, xdp},
        programs::XdpContext,
    };
    /// A kernel diagnostic (aya-log, at debug level), written only while `[log] kernel` is on;
    /// compiled out of the benchmark's baseline object (feature `no-kernel-log`).
    macro_rules! diagnose {
        ($($arg:tt)*) => {
            #[cfg(not(feature = "no-kernel-log"))]
            aya_log_ebpf::debug!($($arg)*);
        };
    }
    use sg_common::{
        Addr, Config, DropEvent, FilterLine, ListEntry, ListLengths, Policy, PolicyKey, Slot,
        VERIFIED_FOR_NS, action, apply_mask, capacity, counter, filter, flag, is_v4_mapped, reason,
        slot_hash, verdict, words,
    };
    use sg_ebpf::{
        bucket,
        parse::{self, Packet},
    };

    /// The concurrent-connection caps' `sock_ops` program and its maps (in a file of its own,
    /// included: it shares this module's maps).
    mod concurrent {
        include!("concurrent.rs");
    }

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

    /// What the kernel remembers of each source: its bucket and its cached verdict
    /// (see `sg_common::Slot`). Never full: a source takes over the slot its hash picks.
    #[btf_map]
    static SOURCES: Array<Slot, { capacity::SOURCES as usize }> = Array::new();

    /// The same for prefixes.
    #[btf_map]
    static PREFIXES: Array<Slot, { capacity::PREFIXES as usize }> = Array::new();

    /// The first contact path's filter: per prefix, whether it was seen lately and which keys
    /// of ALLOW, DENY and POLICY it holds (see `sg_common::filter`). Fixed size: it never
    /// fills, it only answers "maybe" more often, and more packets take the slot path.
    /// Mmapable only for the page-aligned values: each line is one cache line.
    #[btf_map]
    static FILTER: Array<FilterLine, { filter::LINES as usize }, { BPF_F_MMAPABLE }> = Array::new();

    /// Keys of ALLOW, DENY and POLICY shorter than their family's prefix (networks, short
    /// list entries), as a Bloom filter small enough to stay in cache. Userspace writes it.
    #[btf_map]
    static SHORT_KEYS: Array<u64, { filter::SHORT_WORDS as usize }> = Array::new();

    /// The prefix lengths present in ALLOW and DENY. Written by userspace only.
    #[btf_map]
    static LIST_LENGTHS: Array<ListLengths, 1> = Array::new();

    /// `BPF_F_MMAPABLE`.
    const BPF_F_MMAPABLE: usize = 1 << 10;

    /// Bumped by userspace after every change to ALLOW, DENY or POLICY: cached verdicts of
    /// another generation are stale.
    #[btf_map]
    static GENERATION: Array<u32, 1> = Array::new();

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
        let verdict = match try_slowgate(&ctx) {
            Ok(verdict) => verdict,
            Err(parse::ParseError::TooManyVlanTags) => {
                // The stack would dig a SYN out from under them; we cannot judge its source.
                if debugging() {
                    diagnose!(
                        &ctx,
                        "too many VLAN tags: dropped (its source cannot be judged)"
                    );
                }
                count(counter::DROP_REASON + u32::from(reason::UNJUDGEABLE));
                xdp_action::XDP_DROP
            }
            Err(e) => {
                // No source to judge, and no stack reads further either: pass and count.
                if debugging() {
                    let truncated = u8::from(e == parse::ParseError::Truncated);
                    diagnose!(&ctx, "parse error (truncated: {}): passed", truncated);
                }
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

    /// Returns the low 32 bits of jiffies: userspace runs it twice to measure the tick length.
    #[xdp]
    pub fn sg_clock(_ctx: XdpContext) -> u32 {
        // SAFETY: a helper without arguments.
        unsafe { bpf_jiffies64() as u32 }
    }

    /// Whether kernel diagnostics are on (read only off the hot path).
    #[inline(always)]
    fn debugging() -> bool {
        CONFIG.get(0).is_some_and(diagnosing)
    }

    /// Whether `config` switches kernel diagnostics on: one flag test (none without them).
    #[inline(always)]
    fn diagnosing(config: &Config) -> bool {
        !cfg!(feature = "no-kernel-log") && config.flags & flag::KERNEL_DEBUG != 0
    }

    #[inline(always)]
    fn try_slowgate(ctx: &XdpContext) -> Result<u32, parse::ParseError> {
        // SAFETY: data..data_end is the packet, readable for the whole program run.
        let tcp = match unsafe { parse::parse(ctx.data(), ctx.data_end()) }? {
            Packet::Tcp(tcp) => tcp,
            Packet::Other => return Ok(xdp_action::XDP_PASS),
            Packet::Opaque(src) => {
                if debugging() {
                    diagnose!(
                        ctx,
                        "a packet whose TCP header is out of reach: judged by its source"
                    );
                }
                return Ok(judge_opaque(&src));
            }
        };
        let service = match PORTS.get(u32::from(tcp.dport)) {
            Some(&s) if s != 0 => s,
            _ => return Ok(xdp_action::XDP_PASS),
        };
        let Some(config) = CONFIG.get(0) else {
            return Ok(xdp_action::XDP_PASS);
        };

        if !tcp.new_connection {
            let now = tick_clock(config);
            verify(ctx, &tcp, config, now);
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
                ));
            }
            return Ok(xdp_action::XDP_PASS);
        }

        let ahead = Lookahead::of(&tcp.src, config);
        let now = tick_clock(config);
        count(counter::SERVICE_NEW_CONN + u32::from(service));
        match decide(&tcp.src, config, now, &ahead) {
            None => Ok(xdp_action::XDP_PASS),
            Some(why) => {
                if diagnosing(config) {
                    diagnose!(
                        ctx,
                        "refused a new connection to port {}: reason {}",
                        tcp.dport,
                        why
                    );
                }
                Ok(refuse(&tcp.src, tcp.dport, service, why, config))
            }
        }
    }

    /// A packet whose transport header is out of reach may hide a SYN to a mail port (the
    /// stack walks further than we can): it is judged as a new connection from its source, so
    /// no packet shape gets a denied, blocked or limited source through.
    #[inline(always)]
    fn judge_opaque(src: &Addr) -> u32 {
        count(counter::OPAQUE);
        let Some(config) = CONFIG.get(0) else {
            return xdp_action::XDP_PASS;
        };
        let ahead = Lookahead::of(src, config);
        let now = tick_clock(config);
        match decide(src, config, now, &ahead) {
            None => xdp_action::XDP_PASS,
            Some(why) => refuse(src, 0, sg_common::service::NONE, why, config),
        }
    }

    /// The source's prefix and its FILTER line, worked out before anything else so that the
    /// line (the one cache line a first contact reads, cold under a random-source flood) is
    /// on its way while the program reads the clock and counts.
    struct Lookahead {
        prefix: PolicyKey,
        prefix_hash: u64,
        line: *mut FilterLine,
    }

    impl Lookahead {
        #[inline(always)]
        fn of(src: &Addr, config: &Config) -> Self {
            let prefix = prefix_of(src, config);
            let prefix_hash = filter::hash(words(&prefix.addr), prefix.prefix_len, &config.seed);
            let line = FILTER
                .get_ptr_mut(filter::line(prefix_hash))
                .unwrap_or(core::ptr::null_mut());
            if !line.is_null() {
                // SAFETY: a map value for this program run. Only the load matters: its value
                // is read again where it is used.
                let _ = unsafe { core::ptr::read_volatile(&(*line).words[0]) };
            }
            Lookahead {
                prefix,
                prefix_hash,
                line,
            }
        }
    }

    /// Returns the drop reason for a new connection from `src`, or None to pass it.
    #[inline(always)]
    fn decide(src: &Addr, config: &Config, now: u64, ahead: &Lookahead) -> Option<u8> {
        let seen = match first_contact(src, config, now, ahead) {
            Contact::First => {
                count(counter::FIRST_CONTACT);
                // No list nor policy matches; a long-lived connection may outlast the
                // prefix's "seen" mark, so the caps are checked here too.
                return concurrent::over_cap(src, &ahead.prefix, config, false)
                    .then_some(reason::CONCURRENT);
            }
            Contact::Seen(seen) => seen,
        };
        let generation = GENERATION.get(0).copied().unwrap_or(0);
        let source = Remembered::of_source(src, config, generation, now, seen.first_source)?;
        match source.verdict {
            verdict::ALLOW => {
                count(counter::ALLOWED);
                return None;
            }
            verdict::DENY => return Some(reason::DENY),
            verdict::BLOCK => return Some(reason::POLICY_BLOCK),
            _ => {}
        }
        let limited = source.verdict == verdict::LIMIT;
        if concurrent::over_cap(src, &ahead.prefix, config, limited) {
            return Some(reason::CONCURRENT);
        }
        if limited {
            return (!source.take(now, config, source.interval_ns, u64::from(source.burst)))
                .then_some(reason::POLICY_RATE);
        }
        let prefix = Remembered::of_prefix(src, config, generation, now, seen.prefix)?;
        let by_prefix = match prefix.verdict {
            verdict::BLOCK => Some(reason::POLICY_BLOCK),
            verdict::NETWORK_LIMIT => {
                let key = network_of(src, config);
                let policy = POLICY.get_ptr_mut(&key)?;
                // SAFETY: tat_ns is the first field of an 8-byte aligned map value.
                let ok = taken(unsafe {
                    bucket::take(
                        &mut (*policy).tat_ns,
                        now,
                        config.tick_ns,
                        prefix.interval_ns,
                        u64::from(prefix.burst),
                    )
                });
                (!ok).then_some(reason::POLICY_RATE)
            }
            verdict::LIMIT => {
                (!prefix.take(now, config, prefix.interval_ns, u64::from(prefix.burst)))
                    .then_some(reason::POLICY_RATE)
            }
            _ => None,
        };
        if let Some(why) = by_prefix {
            // Counted in the prefix's slot too: userspace reads a limited prefix's refusals.
            prefix.note_rule_drop();
            return Some(why);
        }
        if matches!(
            prefix.verdict,
            verdict::BLOCK | verdict::NETWORK_LIMIT | verdict::LIMIT
        ) {
            return None;
        }
        let ceiling = config.source_ceiling;
        let over = if ceiling.interval_ns != 0
            && !source.take(now, config, ceiling.interval_ns, ceiling.burst)
        {
            Some(reason::DEFAULT_SOURCE)
        } else {
            let ceiling = config.prefix_ceiling;
            (ceiling.interval_ns != 0
                && !prefix.take(now, config, ceiling.interval_ns, ceiling.burst))
            .then_some(reason::DEFAULT_PREFIX)
        };
        if over.is_some() && source.verified(now) {
            // Not spoofed (it completed handshakes): SYNs spoofed with its address, or from
            // its prefix, must not lock it out. The stack's SYN cookies take the rest.
            count(counter::VERIFIED_OVER_CEILING);
            return None;
        }
        over
    }

    /// What the first contact path knows of a new connection that goes on to the slots.
    #[derive(Clone, Copy)]
    struct Seen {
        /// The prefix was seen lately: it passed a connection on first contact, whose token
        /// a freshly claimed prefix slot spends.
        prefix: bool,
        /// Filter hash of the source that passed on first contact in this prefix's line; when
        /// it is this source, its freshly claimed slot spends that token too.
        first_source: u64,
    }

    enum Contact {
        /// The prefix was not seen lately, and no list or policy entry can match: the
        /// connection passes (a full bucket always has a token) without touching a slot.
        First,
        /// Decide from the slots.
        Seen(Seen),
    }

    /// The first contact path (see `sg_common::filter`): reads one FILTER line (and
    /// SHORT_KEYS, which stays in cache), nothing of the size of the slot tables.
    #[inline(always)]
    fn first_contact(src: &Addr, config: &Config, now: u64, ahead: &Lookahead) -> Contact {
        let none = Contact::Seen(Seen {
            prefix: false,
            first_source: 0,
        });
        if config.seen_epoch_shift == 0 {
            return none;
        }
        let (prefix, prefix_hash) = (ahead.prefix, ahead.prefix_hash);
        let bits = filter::seen_bits(prefix_hash);
        if ahead.line.is_null() {
            return none;
        }
        // SAFETY: a map value for this program run. Two CPUs may lose one's bit: that prefix
        // looks new once more (see `sg_common::filter`).
        let line = unsafe { &mut *ahead.line };
        let epoch = now >> (config.seen_epoch_shift & 63);
        let generation = |ahead: u64| {
            let g = ((epoch + ahead) % filter::SEEN_GENERATIONS) as usize;
            // SAFETY: a local. The volatile read hides the bound from LLVM, which would
            // otherwise drop the `& 3` that shows the verifier the index stays in the line.
            unsafe { core::ptr::read_volatile(&g) & 3 }
        };
        let (current, next, previous) = (generation(0), generation(1), generation(2));
        let (now_bits, before_bits) = (line.words[current], line.words[previous]);
        if now_bits & bits != bits {
            line.words[current] = now_bits | bits;
        }
        if line.words[next] != 0 {
            line.words[next] = 0;
        }
        if now_bits & bits == bits || before_bits & bits == bits {
            return Contact::Seen(Seen {
                prefix: true,
                first_source: line.words[filter::FIRST_SOURCE],
            });
        }
        let source_hash = filter::hash(words(src), 128, &config.seed);
        let keys = SourceKeys {
            prefix,
            prefix_hash,
            source_hash,
        };
        if may_match(src, &keys, line, config) {
            return Contact::Seen(Seen {
                prefix: false,
                first_source: 0,
            });
        }
        line.words[filter::FIRST_SOURCE] = source_hash;
        Contact::First
    }

    /// A source's prefix and the filter hashes of both.
    struct SourceKeys {
        prefix: PolicyKey,
        prefix_hash: u64,
        source_hash: u64,
    }

    /// False only when no ALLOW, DENY or POLICY entry can apply to `src` (the filters lack
    /// every key of it); true means "look it up".
    #[inline(always)]
    fn may_match(src: &Addr, keys: &SourceKeys, line: &FilterLine, config: &Config) -> bool {
        let seed = &config.seed;
        let prefix = &keys.prefix;
        // A key as long as the prefix or longer is in the prefix's line, a shorter one in
        // SHORT_KEYS.
        let present = |key_hash: u64, len: u32| {
            if len >= prefix.prefix_len {
                filter::holds(line, filter::present_bits(key_hash))
            } else {
                let (index, bits) = filter::short(key_hash);
                SHORT_KEYS.get(index).is_none_or(|word| word & bits == bits)
            }
        };
        if present(keys.source_hash, 128) || present(keys.prefix_hash, prefix.prefix_len) {
            return true;
        }
        let Some(lengths) = LIST_LENGTHS.get(0) else {
            return true;
        };
        let network = network_of(src, config);
        if (lengths.short_keys != 0 || network.prefix_len >= prefix.prefix_len)
            && present(
                filter::hash(words(&network.addr), network.prefix_len, seed),
                network.prefix_len,
            )
        {
            return true;
        }
        if lengths.count > filter::MAX_LIST_LENGTHS as u32 {
            return true;
        }
        for i in 0..filter::MAX_LIST_LENGTHS {
            if i as u32 >= lengths.count {
                break;
            }
            let len = u32::from(lengths.lengths[i]);
            if len == 128 || len == prefix.prefix_len || len == network.prefix_len {
                continue; // probed above (the network when SHORT_KEYS has keys, and this is one)
            }
            if present(filter::hash(filter::masked_words(src, len), len, seed), len) {
                return true;
            }
        }
        false
    }

    /// Marks the source of `tcp` (a packet of a connection, not a SYN) verified when the
    /// packet belongs to a connection past its handshake: only a source that completed one has
    /// such a socket, so the address is not spoofed. Looked up at most every half of
    /// VERIFIED_FOR_NS per source, and only while the slot is the source's own.
    #[inline(always)]
    fn verify(ctx: &XdpContext, tcp: &parse::Tcp, config: &Config, now: u64) {
        let Some(s) = own_slot(&tcp.src, config) else {
            return;
        };
        if s.verified_until_ns > now.saturating_add(VERIFIED_FOR_NS / 2) {
            return;
        }
        if !established(ctx, tcp) {
            return;
        }
        if s.verified_until_ns <= now {
            count(counter::VERIFIED);
        }
        s.verified_until_ns = now.saturating_add(VERIFIED_FOR_NS);
    }

    /// True when the stack holds a socket past the handshake for this packet's 4-tuple.
    #[inline(always)]
    fn established(ctx: &XdpContext, tcp: &parse::Tcp) -> bool {
        // SAFETY: the tuple is plain integers; all zeros is a valid value.
        let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
        let size = if is_v4_mapped(&tcp.src) {
            let v4 = |a: &Addr| u32::from_ne_bytes([a[12], a[13], a[14], a[15]]);
            tuple.__bindgen_anon_1.ipv4 = TupleV4 {
                saddr: v4(&tcp.src),
                daddr: v4(&tcp.dst),
                sport: tcp.sport.to_be(),
                dport: tcp.dport.to_be(),
            };
            core::mem::size_of::<TupleV4>()
        } else {
            let v6 = |a: &Addr| {
                let mut w = [0u32; 4];
                for (i, word) in w.iter_mut().enumerate() {
                    *word =
                        u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]);
                }
                w
            };
            tuple.__bindgen_anon_1.ipv6 = TupleV6 {
                saddr: v6(&tcp.src),
                daddr: v6(&tcp.dst),
                sport: tcp.sport.to_be(),
                dport: tcp.dport.to_be(),
            };
            core::mem::size_of::<TupleV6>()
        };
        // SAFETY: the tuple lives on the stack for the call; a found socket is released
        // before returning, as the verifier requires. u64::MAX: the current netns.
        unsafe {
            let sk = bpf_skc_lookup_tcp(ctx.ctx.cast(), &mut tuple, size as u32, u64::MAX, 0);
            if sk.is_null() {
                return false;
            }
            let state = (*sk).state;
            bpf_sk_release(sk.cast());
            // ESTABLISHED, FIN_WAIT1/2, TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING: past the
            // handshake. Not LISTEN (the lookup falls back to the listener) nor NEW_SYN_RECV.
            matches!(state, 1 | 4 | 5 | 6 | 8 | 9 | 11)
        }
    }

    /// True when `src` is denied or blocked by policy (for the established-packets option).
    #[inline(always)]
    fn is_blocked(src: &Addr, config: &Config, now: u64) -> bool {
        let generation = GENERATION.get(0).copied().unwrap_or(0);
        let Some(source) = Remembered::of_source(src, config, generation, now, 0) else {
            return false;
        };
        match source.verdict {
            verdict::DENY | verdict::BLOCK => true,
            verdict::NEXT => Remembered::of_prefix(src, config, generation, now, false)
                .is_some_and(|p| p.verdict == verdict::BLOCK),
            _ => false,
        }
    }

    /// A source's (or prefix's) slot and its current verdict.
    struct Remembered {
        slot: *mut Slot,
        verdict: u32,
        burst: u32,
        interval_ns: u64,
    }

    impl Remembered {
        /// The slot of `src`, with the verdict of the allow and deny lists and of the policy
        /// for the exact address.
        #[inline(always)]
        fn of_source(
            src: &Addr,
            config: &Config,
            generation: u32,
            now: u64,
            first_source: u64,
        ) -> Option<Self> {
            let (index, fingerprint) = slot_hash(src, &config.seed, config.source_slots_mask);
            let slot = SOURCES.get_ptr_mut(index)?;
            let tag = fingerprint | u64::from(generation);
            let seen_tat = match Self::lookup(slot, tag, now) {
                Ok(current) => return Some(current),
                Err(seen_tat) => seen_tat,
            };
            let boot = boot_clock(config, now);
            let host = Key::new(128, *src);
            let (verdict, expires_ns, policy) =
                if let Some(e) = ALLOW.get(&host).filter(|e| live(e.expires_ns, boot)) {
                    (verdict::ALLOW, e.expires_ns, None)
                } else if let Some(e) = DENY.get(&host).filter(|e| live(e.expires_ns, boot)) {
                    (verdict::DENY, e.expires_ns, None)
                } else {
                    let exact = PolicyKey {
                        addr: *src,
                        prefix_len: 128,
                    };
                    match live_policy(&exact, boot) {
                        Some(p) => (policy_verdict(p), p.expires_ns, Some(p)),
                        None => (verdict::NEXT, 0, None),
                    }
                };
            let fresh = Remembered {
                slot,
                verdict,
                burst: policy.map_or(0, |p| p.burst),
                interval_ns: policy.map_or(0, |p| p.interval_ns),
            };
            // SAFETY: as above.
            let claimed = unsafe {
                fresh.store(
                    tag,
                    seen_tat,
                    until(expires_ns, boot, now),
                    counter::SOURCE_SLOT_CLAIMED,
                )
            };
            if claimed
                && verdict == verdict::NEXT
                && first_source != 0
                && first_source == filter::hash(words(src), 128, &config.seed)
            {
                fresh.spend_first_contact(now, config, &config.source_ceiling);
            }
            Some(fresh)
        }

        /// The slot of `src`'s prefix, with the verdict of the policy for that prefix, else for
        /// its network.
        #[inline(always)]
        fn of_prefix(
            src: &Addr,
            config: &Config,
            generation: u32,
            now: u64,
            seen: bool,
        ) -> Option<Self> {
            let key = prefix_of(src, config);
            let (index, fingerprint) = slot_hash(&key.addr, &config.seed, config.prefix_slots_mask);
            let slot = PREFIXES.get_ptr_mut(index)?;
            let tag = fingerprint | u64::from(generation);
            let seen_tat = match Self::lookup(slot, tag, now) {
                Ok(current) => return Some(current),
                Err(seen_tat) => seen_tat,
            };
            let boot = boot_clock(config, now);
            let (policy, network) = match live_policy(&key, boot) {
                Some(p) => (Some(p), false),
                None => (live_policy(&network_of(src, config), boot), true),
            };
            let verdict = match policy.map(policy_verdict) {
                Some(verdict::LIMIT) if network => verdict::NETWORK_LIMIT,
                Some(v) => v,
                None => verdict::NEXT,
            };
            let fresh = Remembered {
                slot,
                verdict,
                burst: policy.map_or(0, |p| p.burst),
                interval_ns: policy.map_or(0, |p| p.interval_ns),
            };
            let expires_ns = policy.map_or(0, |p| p.expires_ns);
            // SAFETY: as above.
            let claimed = unsafe {
                fresh.store(
                    tag,
                    seen_tat,
                    until(expires_ns, boot, now),
                    counter::PREFIX_SLOT_CLAIMED,
                )
            };
            if claimed && seen && verdict == verdict::NEXT {
                fresh.spend_first_contact(now, config, &config.prefix_ceiling);
            }
            Some(fresh)
        }

        /// The slot's current verdict, or (counting that it must be worked out again) the
        /// bucket state seen with the stale tag.
        #[inline(always)]
        fn lookup(slot: *mut Slot, tag: u64, now: u64) -> Result<Self, u64> {
            // SAFETY: slot points to a map value, valid for this program run.
            let found = unsafe { Self::cached(slot, tag, now) };
            if found.is_err() {
                count(counter::VERDICT_WORKED_OUT);
            }
            found
        }

        /// The slot's verdict when it is this address's, of this generation, not past its
        /// time, and not torn by two writers; else the bucket state seen with the stale tag.
        ///
        /// # Safety
        /// `slot` must point to a map value valid for this program run.
        #[inline(always)]
        unsafe fn cached(slot: *mut Slot, tag: u64, now: u64) -> Result<Self, u64> {
            // SAFETY: the caller's contract; XDP runs to completion, so the reference does not
            // outlive the program run.
            let s = unsafe { &*slot };
            if s.tag != tag || now >= s.until_ns || s.check != s.checksum() {
                // SAFETY: an aligned u64 of the map value above.
                return Err(unsafe { core::ptr::read_volatile(&s.tat_ns) });
            }
            Ok(Remembered {
                slot,
                verdict: s.verdict,
                burst: s.burst,
                interval_ns: s.interval_ns,
            })
        }

        /// Writes the verdict into the slot. The bucket survives when the slot was already this
        /// address's (a new generation or a passed expiry); another address starts full.
        /// `seen_tat` is the bucket as it was when the tag was found stale: when another CPU
        /// took the slot over meanwhile and already spent tokens, the reset must not refund
        /// them, so it only happens if the bucket is still what was seen.
        ///
        /// Returns true when the slot was another address's (or nobody's) and is now this one's.
        ///
        /// # Safety
        /// As for `cached`.
        #[inline(always)]
        unsafe fn store(
            &self,
            tag: u64,
            seen_tat: u64,
            until_ns: u64,
            claimed_counter: u32,
        ) -> bool {
            // SAFETY: the caller's contract; another CPU may write the slot at once, which the
            // checksum detects (see `Slot`).
            let s = unsafe { &mut *self.slot };
            let claimed = s.tag >> 32 != tag >> 32;
            if claimed {
                // The REPLACED counter follows each CLAIMED counter.
                count(claimed_counter + u32::from(s.tag != 0));
                // SAFETY: tat_ns is an aligned u64 inside the map value.
                let _ = unsafe { bucket::compare_exchange(&mut s.tat_ns, seen_tat, 0) };
                // Another source's verification and drops are not this one's.
                s.verified_until_ns = 0;
                s.dropped_by_rule = 0;
                s.dropped_by_ceiling = 0;
            }
            s.tag = tag;
            s.until_ns = until_ns;
            s.interval_ns = self.interval_ns;
            s.verdict = self.verdict;
            s.burst = self.burst;
            s.check = s.checksum();
            claimed
        }

        /// Spends, in a freshly claimed slot, the token of the connection that passed on first
        /// contact without one (see `first_contact`).
        #[inline(always)]
        fn spend_first_contact(&self, now: u64, config: &Config, ceiling: &sg_common::Bucket) {
            if ceiling.interval_ns != 0 {
                let _ = self.take(now, config, ceiling.interval_ns, ceiling.burst);
            }
        }

        /// Counts a drop by a list or a policy in the slot (for the refusals userspace reads).
        #[inline(always)]
        fn note_rule_drop(&self) {
            // SAFETY: the slot points to a map value, valid for this program run; a lost
            // increment between two CPUs only undercounts a report.
            unsafe {
                (*self.slot).dropped_by_rule = (*self.slot).dropped_by_rule.wrapping_add(1);
            }
        }

        /// True while the slot's source is verified (see `verify`).
        #[inline(always)]
        fn verified(&self, now: u64) -> bool {
            // SAFETY: the slot points to a map value, valid for this program run.
            unsafe { (*self.slot).verified_until_ns > now }
        }

        /// Takes one token from the slot's bucket; false when the connection must be refused.
        #[inline(always)]
        fn take(&self, now: u64, config: &Config, interval_ns: u64, burst: u64) -> bool {
            // SAFETY: the slot points to a map value, valid for this program run.
            let tat = unsafe { &mut (*self.slot).tat_ns };
            // SAFETY: tat_ns is the first field of an 8-byte aligned map value.
            taken(unsafe { bucket::take(tat, now, config.tick_ns, interval_ns, burst) })
        }
    }

    /// Whether a token was taken; a bucket that lost every race is counted.
    #[inline(always)]
    fn taken(t: bucket::Taken) -> bool {
        match t {
            bucket::Taken::Yes => true,
            bucket::Taken::Empty => false,
            bucket::Taken::Contended => {
                count(counter::BUCKET_CONTENDED);
                false
            }
        }
    }

    #[inline(always)]
    fn policy_verdict(p: &Policy) -> u32 {
        if p.action == action::BLOCK {
            verdict::BLOCK
        } else {
            verdict::LIMIT
        }
    }

    /// The tick-clock time at which an entry expiring at `expires_ns` (CLOCK_BOOTTIME, 0 =
    /// never) stops applying.
    #[inline(always)]
    fn until(expires_ns: u64, boot: u64, now: u64) -> u64 {
        if expires_ns == 0 {
            u64::MAX
        } else {
            now.saturating_add(expires_ns.saturating_sub(boot))
        }
    }

    /// The clock of the buckets: jiffies times the tick length userspace measured, a few
    /// instructions where the precise clock costs more than the rest of the program.
    #[inline(always)]
    fn tick_clock(config: &Config) -> u64 {
        if config.tick_ns == 0 {
            // SAFETY: a helper without arguments.
            return unsafe { bpf_ktime_get_boot_ns() };
        }
        // SAFETY: a helper without arguments.
        unsafe { bpf_jiffies64() }.wrapping_mul(config.tick_ns)
    }

    /// CLOCK_BOOTTIME (the clock of entry expiries), read from the tick clock `now` with the
    /// offset userspace measured: within a tick, and without a helper call.
    #[inline(always)]
    fn boot_clock(config: &Config, now: u64) -> u64 {
        if config.tick_ns == 0 {
            // `now` is the precise clock already.
            return now;
        }
        now.wrapping_add(config.boot_offset_ns)
    }

    /// Returns the high 32 bits of jiffies: with `sg_clock`, userspace reads all 64.
    #[xdp]
    pub fn sg_clock_hi(_ctx: XdpContext) -> u32 {
        // SAFETY: a helper without arguments.
        (unsafe { bpf_jiffies64() } >> 32) as u32
    }

    #[inline(always)]
    fn prefix_of(src: &Addr, config: &Config) -> PolicyKey {
        let v4 = is_v4_mapped(src);
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

    #[inline(always)]
    fn network_of(src: &Addr, config: &Config) -> PolicyKey {
        let (mask, prefix_len) = if is_v4_mapped(src) {
            (&config.network_mask_v4, config.network_len_v4)
        } else {
            (&config.network_mask_v6, config.network_len_v6)
        };
        PolicyKey {
            addr: apply_mask(src, mask),
            prefix_len,
        }
    }

    /// The POLICY entry of `key`, unless it has expired.
    #[inline(always)]
    fn live_policy(key: &PolicyKey, boot: u64) -> Option<&'static Policy> {
        // SAFETY: map values stay valid for the program run.
        let p = unsafe { POLICY.get(key) }?;
        live(p.expires_ns, boot).then_some(p)
    }

    #[inline(always)]
    fn live(expires_ns: u64, now: u64) -> bool {
        expires_ns == 0 || now < expires_ns
    }

    #[inline(always)]
    fn refuse(src: &Addr, port: u16, service: u8, why: u8, config: &Config) -> u32 {
        count(counter::DROP_REASON + u32::from(why));
        note_drop(src, why, config);
        count(counter::SERVICE_DROPPED + u32::from(service));
        let sample = u64::from(config.event_sample);
        if sample != 0 && counter_value(counter::DROPPED) % sample == 0 {
            let event = DropEvent {
                // SAFETY: a helper without arguments.
                time_ns: unsafe { bpf_ktime_get_boot_ns() },
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

    /// The slot of `src` when it holds `src` (not another source that took it over, nor
    /// nobody yet), for what the program notes about a source outside its decision.
    #[inline(always)]
    fn own_slot(src: &Addr, config: &Config) -> Option<&'static mut Slot> {
        let (index, fingerprint) = slot_hash(src, &config.seed, config.source_slots_mask);
        let slot = SOURCES.get_ptr_mut(index)?;
        // SAFETY: a map value, valid for this program run; XDP runs to completion, so the
        // reference does not outlive it.
        let s = unsafe { &mut *slot };
        (s.tag >> 32 == fingerprint >> 32).then_some(s)
    }

    /// Counts a drop in the source's own slot, by kind of reason, for per-sender reports.
    #[inline(always)]
    fn note_drop(src: &Addr, why: u8, config: &Config) {
        let Some(s) = own_slot(src, config) else {
            return;
        };
        if why == reason::DEFAULT_SOURCE || why == reason::DEFAULT_PREFIX {
            s.dropped_by_ceiling = s.dropped_by_ceiling.wrapping_add(1);
        } else {
            s.dropped_by_rule = s.dropped_by_rule.wrapping_add(1);
        }
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
