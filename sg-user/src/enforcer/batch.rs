//! `BPF_MAP_UPDATE_BATCH` (Linux 5.6+; LPM tries through the kernel's generic batch ops): many
//! entries written with one system call instead of one each, for bulk imports. aya 0.14 has no
//! wrapper for it.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd},
};

use aya::maps::{IterableMap, LpmTrie, MapData, lpm_trie::Key};
use sg_common::{Addr, ListEntry};

/// `enum bpf_cmd` value of BPF_MAP_UPDATE_BATCH.
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Entries per system call: the kernel copies them one by one, so a call of this many keeps a
/// stop or a signal from waiting long.
const CHUNK: usize = 65_536;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `keys[i] -> values[i]` into `trie`. An error names how many were written first
/// (`Unsupported` when the kernel has no batch updates: the caller writes them one by one).
pub(super) fn update(
    trie: &LpmTrie<MapData, Addr, ListEntry>,
    keys: &[Key<Addr>],
    values: &[ListEntry],
) -> Result<(), (usize, io::Error)> {
    assert_eq!(keys.len(), values.len());
    let fd = trie.map().fd().as_fd().as_raw_fd();
    let mut done = 0;
    while done < keys.len() {
        let n = (keys.len() - done).min(CHUNK);
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: n as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at `n` keys and values that live across the call; the kernel
        // only reads them, and writes `attr.count`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            let e = match e.raw_os_error() {
                Some(libc::EINVAL | libc::ENOTSUP | libc::EOPNOTSUPP) if attr.count == 0 => {
                    io::Error::new(io::ErrorKind::Unsupported, e)
                }
                _ => e,
            };
            return Err((done + attr.count as usize, e));
        }
        done += n;
    }
    Ok(())
}
