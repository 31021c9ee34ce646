// Concurrent-connection caps: a `sock_ops` program, attached to the root cgroup, counts the
// established connections to the protected ports per source and per prefix (CONNECTIONS);
// the XDP program refuses a new SYN from a source or prefix at its cap.
//
// The count is kept by the kernel's own TCP state machine: a passive connection is counted
// when it becomes established (`PASSIVE_ESTABLISHED_CB`), and uncounted when its socket
// reaches TCP_CLOSE (`STATE_CB`), which every end goes through: FIN either way, RST,
// retransmission and keepalive timeouts. COUNTED remembers which sockets (by cookie) were
// counted, so a socket is uncounted once and only if it was counted, whatever else happened
// (tables full, a daemon restarted with the counts kept in pinned maps).

use aya_ebpf::{
    bindings::{
        BPF_NOEXIST, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_CLOSE,
    },
    btf_maps::HashMap,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::{btf_map, sock_ops},
    programs::SockOpsContext,
    EbpfContext,
};
use sg_ebpf::bucket::{CAS_ATTEMPTS, compare_exchange};
use sg_common::{Addr, Config, PolicyKey, capacity, counter, flag, map_v4};

use super::{CONFIG, PORTS, count, prefix_of};

/// Established connections per source (`prefix_len` 128) and per prefix.
#[btf_map]
pub(super) static CONNECTIONS: HashMap<PolicyKey, u64, { capacity::CONNECTIONS as usize }> =
    HashMap::new();

/// Sockets counted in CONNECTIONS, by socket cookie; the value is unused.
#[btf_map]
static COUNTED: HashMap<u64, u8, { capacity::COUNTED as usize }> = HashMap::new();

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

/// Counts and uncounts; never changes what the socket does (always returns 1).
#[sock_ops]
pub fn sg_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => established(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => closed(&ctx),
        _ => {}
    }
    1
}

/// The remote address in the mapped form, the config, when the socket is one we count: in
/// our namespace, to a protected port.
#[inline(always)]
fn ours(ctx: &SockOpsContext) -> Option<(Addr, &'static Config)> {
    let config = CONFIG.get(0)?;
    if config.concurrent_source == 0 && config.concurrent_prefix == 0 {
        return None;
    }
    // SAFETY: a helper on this program's context.
    if config.netns_cookie != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != config.netns_cookie
    {
        return None;
    }
    let fields = Fields::read(ctx);
    if fields.local_port > 0xffff || PORTS.get(fields.local_port).copied().unwrap_or(0) == 0 {
        return None;
    }
    let addr = fields.remote()?;
    Some((addr, config))
}

#[inline(always)]
fn keys(addr: &Addr, config: &Config) -> [PolicyKey; 2] {
    [
        PolicyKey {
            addr: *addr,
            prefix_len: 128,
        },
        prefix_of(addr, config),
    ]
}

#[inline(always)]
fn established(ctx: &SockOpsContext) {
    let Some((addr, config)) = ours(ctx) else {
        return;
    };
    // SAFETY: a helper on this program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if COUNTED.insert(&cookie, &1, u64::from(BPF_NOEXIST)).is_err() {
        count(counter::CONCURRENT_UNTRACKED);
        return;
    }
    let [source, prefix] = keys(&addr, config);
    if !add(&source) {
        let _ = COUNTED.remove(&cookie);
        count(counter::CONCURRENT_UNTRACKED);
        return;
    }
    if !add(&prefix) {
        sub(&source);
        let _ = COUNTED.remove(&cookie);
        count(counter::CONCURRENT_UNTRACKED);
        return;
    }
    // Called again at every state change from now on, TCP_CLOSE included.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

#[inline(always)]
fn closed(ctx: &SockOpsContext) {
    // SAFETY: a helper on this program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if COUNTED.remove(&cookie).is_err() {
        return;
    }
    let Some(config) = CONFIG.get(0) else {
        return;
    };
    // The namespace and port were checked when it was counted (the caps may be off since).
    let Some(addr) = Fields::read(ctx).remote() else {
        return;
    };
    for key in keys(&addr, config) {
        sub(&key);
    }
}

/// The fields of the context this program reads, each loaded once at its own fixed offset:
/// the verifier refuses a load through a context pointer the compiler moved (as it does when
/// two branches share the load of neighbouring fields).
struct Fields {
    family: u32,
    remote_ip4: u32,
    remote_ip6: [u32; 4],
    local_port: u32,
}

impl Fields {
    #[inline(always)]
    fn read(ctx: &SockOpsContext) -> Fields {
        let ops = ctx.ops;
        // SAFETY: fields of this program's context, read with constant offsets.
        unsafe {
            Fields {
                family: core::ptr::read_volatile(core::ptr::addr_of!((*ops).family)),
                remote_ip4: core::ptr::read_volatile(core::ptr::addr_of!((*ops).remote_ip4)),
                remote_ip6: [
                    core::ptr::read_volatile(core::ptr::addr_of!((*ops).remote_ip6[0])),
                    core::ptr::read_volatile(core::ptr::addr_of!((*ops).remote_ip6[1])),
                    core::ptr::read_volatile(core::ptr::addr_of!((*ops).remote_ip6[2])),
                    core::ptr::read_volatile(core::ptr::addr_of!((*ops).remote_ip6[3])),
                ],
                local_port: core::ptr::read_volatile(core::ptr::addr_of!((*ops).local_port)),
            }
        }
    }

    /// The remote address in the mapped form.
    #[inline(always)]
    fn remote(&self) -> Option<Addr> {
        match self.family {
            AF_INET => Some(map_v4(self.remote_ip4.to_ne_bytes())),
            AF_INET6 => {
                let mut a = [0u8; 16];
                for (i, w) in self.remote_ip6.iter().enumerate() {
                    a[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
                }
                Some(a)
            }
            _ => None,
        }
    }
}

/// One more connection of `key`; false when the table is full.
#[inline(always)]
fn add(key: &PolicyKey) -> bool {
    for _ in 0..2 {
        if let Some(n) = CONNECTIONS.get_ptr_mut(key) {
            step(n, 1);
            return true;
        }
        // Another CPU may insert it between the lookup and here: then look again.
        match CONNECTIONS.insert(key, &1, u64::from(BPF_NOEXIST)) {
            Ok(()) => return true,
            Err(e) if e == -17 => continue,
            Err(_) => return false,
        }
    }
    false
}

/// One connection of `key` fewer, never below zero (the entry stays; userspace removes
/// entries at zero).
#[inline(always)]
fn sub(key: &PolicyKey) {
    if let Some(n) = CONNECTIONS.get_ptr_mut(key) {
        step(n, -1);
    }
}

/// Adds `by` (1 or -1) to a count with compare-and-swap (the BPF target has no atomic add
/// that core exposes), never going below zero.
#[inline(always)]
fn step(n: *mut u64, by: i64) {
    // SAFETY: an 8-byte aligned map value, valid for this program run; other CPUs change it
    // only by compare-and-swap.
    let mut seen = unsafe { core::ptr::read_volatile(n) };
    for _ in 0..CAS_ATTEMPTS {
        if by < 0 && seen == 0 {
            return;
        }
        let new = seen.wrapping_add(by as u64);
        // SAFETY: as above.
        match unsafe { compare_exchange(n, seen, new) } {
            Ok(_) => return,
            Err(now) => seen = now,
        }
    }
}

/// Whether a new connection from `src` would pass its caps (`limited`: a level holds it).
#[inline(always)]
pub(super) fn over_cap(src: &Addr, prefix: &PolicyKey, config: &Config, limited: bool) -> bool {
    if config.flags & flag::CONCURRENT_CAPS == 0 {
        return false;
    }
    let cap = |own: u32| {
        if limited && config.concurrent_limited != 0 && (own == 0 || config.concurrent_limited < own)
        {
            config.concurrent_limited
        } else {
            own
        }
    };
    let source_cap = cap(config.concurrent_source);
    if source_cap != 0 {
        let key = PolicyKey {
            addr: *src,
            prefix_len: 128,
        };
        // SAFETY: map values stay valid for the program run.
        if unsafe { CONNECTIONS.get(&key) }.is_some_and(|n| *n >= u64::from(source_cap)) {
            return true;
        }
    }
    let prefix_cap = cap(config.concurrent_prefix);
    // SAFETY: as above.
    prefix_cap != 0 && unsafe { CONNECTIONS.get(prefix) }.is_some_and(|n| *n >= u64::from(prefix_cap))
}
