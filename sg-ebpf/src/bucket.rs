//! Token buckets as GCRA (the "generic cell rate algorithm", ITU-T I.371): the whole state is one
//! u64, the theoretical arrival time (TAT), so two CPUs can update it with one compare-and-swap
//! and no lock.

/// The BPF target declares no compare-and-swap (`atomic_cas: false` in rustc's target spec,
/// because BPF_CMPXCHG needs `-mcpu=v3`), so `AtomicU64::compare_exchange` does not exist there.
/// We build with `target-cpu=v3` and call the intrinsic, which LLVM lowers to BPF_CMPXCHG.
///
/// # Safety
/// `dst` must point to a live, 8-byte aligned u64.
#[cfg(all(target_arch = "bpf", not(feature = "non-atomic-bucket")))]
#[inline(always)]
pub unsafe fn compare_exchange(dst: *mut u64, old: u64, new: u64) -> Result<u64, u64> {
    use core::intrinsics::{AtomicOrdering::Relaxed, atomic_cxchg};
    // SAFETY: the caller guarantees `dst` is a live aligned u64.
    match unsafe { atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(dst, old, new) } {
        (_, true) => Ok(old),
        (seen, false) => Err(seen),
    }
}

/// A deliberately broken compare-and-swap (a load, a compare, a store), built only into the
/// test object that proves the two-CPU test fails without atomicity.
///
/// # Safety
/// `dst` must point to a live, 8-byte aligned u64.
#[cfg(all(target_arch = "bpf", feature = "non-atomic-bucket"))]
#[inline(always)]
pub unsafe fn compare_exchange(dst: *mut u64, old: u64, new: u64) -> Result<u64, u64> {
    // SAFETY: the caller guarantees `dst` is a live aligned u64.
    unsafe {
        let seen = core::ptr::read_volatile(dst);
        if seen != old {
            return Err(seen);
        }
        core::ptr::write_volatile(dst, new);
    }
    Ok(old)
}

/// Host version, for unit tests.
///
/// # Safety
/// `dst` must point to a live, 8-byte aligned u64.
#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
pub unsafe fn compare_exchange(dst: *mut u64, old: u64, new: u64) -> Result<u64, u64> {
    use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
    // SAFETY: the caller guarantees `dst` is a live aligned u64.
    unsafe { AtomicU64::from_ptr(dst) }.compare_exchange(old, new, Relaxed, Relaxed)
}

/// Compare-and-swap attempts before giving up. With two CPUs racing on one source the second
/// attempt succeeds; the bound keeps the verifier's loop analysis finite.
pub const CAS_ATTEMPTS: usize = 8;

/// What [`take`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    /// A token was taken: the connection passes.
    Yes,
    /// The bucket is empty: refuse.
    Empty,
    /// Every compare-and-swap lost a race with another CPU: refused too, so the bucket never
    /// admits more than it holds (the client's SYN retransmission tries again).
    Contended,
}

// The arithmetic is in sg-common, so that `slowgate replay` judges connections exactly as this
// program does.
pub use sg_common::gcra::{MAX_BURST, MAX_INTERVAL_NS, conform};

/// Takes one token from the bucket whose TAT lives at `tat`, shared by every CPU. Exactly
/// what holds: however many CPUs take from one bucket at once, it never admits more than
/// `conform` allows, because a token is only taken by a successful compare-and-swap, and a
/// connection whose every attempt loses a race is refused ([`Taken::Contended`]).
///
/// # Safety
/// `tat` must point to a live, 8-byte aligned u64 (a map value) for the duration of the call.
#[inline(always)]
pub unsafe fn take(tat: *mut u64, now: u64, step_ns: u64, interval_ns: u64, burst: u64) -> Taken {
    // A plain load is atomic for an aligned u64 on every BPF JIT; a stale value only costs one
    // more compare-and-swap round.
    // SAFETY: the caller gives a valid, aligned `tat` (this function's contract).
    let mut current = unsafe { core::ptr::read_volatile(tat) };
    for _ in 0..CAS_ATTEMPTS {
        let Some(next) = conform(current, now, interval_ns, burst, step_ns) else {
            return Taken::Empty;
        };
        // SAFETY: the caller guarantees a live aligned u64.
        match unsafe { compare_exchange(tat, current, next) } {
            Ok(_) => return Taken::Yes,
            Err(seen) => current = seen,
        }
    }
    Taken::Contended
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn run(times: &[u64], interval: u64, burst: u64) -> Vec<bool> {
        let mut tat = 0u64;
        times
            .iter()
            // SAFETY: a local u64, valid and aligned for the call.
            .map(|&t| unsafe { take(&mut tat, t, 0, interval, burst) } == Taken::Yes)
            .collect()
    }

    #[test]
    fn burst_connections_pass_at_once_then_one_per_interval() {
        let t = 100 * SECOND;
        let got = run(&[t, t, t, t, t + SECOND, t + SECOND], SECOND, 3);
        assert_eq!(got, [true, true, true, false, true, false]);
    }

    #[test]
    fn refused_connections_do_not_push_the_bucket_further() {
        let t = 100 * SECOND;
        // Hammering at 10/s against 1/s burst 1: exactly one per second passes.
        let times: Vec<u64> = (0..30).map(|i| t + i * SECOND / 10).collect();
        let passed = run(&times, SECOND, 1).iter().filter(|p| **p).count();
        assert_eq!(passed, 3);
    }

    #[test]
    fn a_stepped_clock_still_reaches_a_rate_faster_than_its_steps() {
        // 1000/s on a 4 ms clock: every step lets about 4 through, not 1.
        let step = 4_000_000;
        let mut tat = 0;
        let mut passed = 0;
        for s in 1..=250u64 {
            for _ in 0..10 {
                passed += u64::from(
                    // SAFETY: a local u64, valid and aligned for the call.
                    unsafe { take(&mut tat, s * step, step, 1_000_000, 1) } == Taken::Yes,
                );
            }
        }
        // One second of clock: 1000 at the rate, plus burst and step slack.
        assert!((990..=1010).contains(&passed), "{passed}");
    }

    #[test]
    fn a_long_pause_refills_to_burst_and_no_more() {
        let t = 100 * SECOND;
        let later = t + 3600 * SECOND;
        let got = run(&[t, later, later, later], SECOND, 2);
        assert_eq!(got, [true, true, true, false]);
    }
}
