//! The parts of the XDP program that do not need the kernel: packet parsing and token buckets.
//! They build on the host too, so `cargo test -p sg-ebpf --lib` checks them without root.
#![cfg_attr(not(test), no_std)]
// BPF_CMPXCHG through the intrinsic (see bucket.rs); the BPF build runs in nightly mode.
#![cfg_attr(
    target_arch = "bpf",
    feature(core_intrinsics),
    allow(internal_features)
)]

pub mod bucket;
pub mod parse;
