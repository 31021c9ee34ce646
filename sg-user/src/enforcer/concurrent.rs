//! Concurrent-connection caps (`[ceiling.concurrent]`): the `sock_ops` program that counts
//! established connections, attached to a cgroup v2 directory (the root by default, so every
//! socket on the host is seen) with its link pinned beside the XDP links, so that counting goes
//! on while the daemon is down (a stale count would refuse a source forever).
//!
//! The program counts only the daemon's network namespace (its cookie is in CONFIG), so
//! several daemons on one host, one per namespace, count apart.

use std::{
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use aya::{
    Ebpf,
    programs::{CgroupAttachMode, SockOps, links::FdLink},
};
use sg_common::PolicyKey;

use super::Maps;

/// `[ceiling.concurrent]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConcurrentCaps {
    /// Most established connections one source may hold; 0 = no cap.
    pub source: u32,
    pub prefix: u32,
    /// The cap of a source or prefix a level limits, when lower; 0 = the same.
    pub limited: u32,
    /// The cgroup v2 directory to attach to; None = the hierarchy's root.
    pub cgroup: Option<PathBuf>,
}

/// The counting program's name in the object.
pub const SOCK_OPS_PROGRAM: &str = "sg_sockops";

fn link_pin(pin_dir: &Path) -> PathBuf {
    pin_dir.join("link_sockops")
}

/// Attaches the counting program and pins its link, unless a pinned link is already there (a
/// restart: the counts in the pinned maps are current). Returns the cgroup it attached to,
/// None when it re-used the link.
pub fn attach_counting(
    ebpf: &mut Ebpf,
    pin_dir: &Path,
    cgroup: Option<&Path>,
) -> anyhow::Result<Option<PathBuf>> {
    let pin = link_pin(pin_dir);
    if pin.exists() {
        return Ok(None);
    }
    let dir = match cgroup {
        Some(dir) => dir.to_path_buf(),
        None => cgroup2_root()?,
    };
    let file = std::fs::File::open(&dir).with_context(|| {
        format!(
            "open the cgroup {} (ceiling.concurrent.cgroup)",
            dir.display()
        )
    })?;
    let program: &mut SockOps = ebpf
        .program_mut(SOCK_OPS_PROGRAM)
        .context("the object has no sg_sockops program")?
        .try_into()?;
    if program.fd().is_err() {
        program
            .load()
            .context("verify and load the connection-counting program")?;
    }
    // `Single` means no flags: a cgroup bpf_link is always attached beside others (the kernel
    // refuses BPF_F_ALLOW_MULTI on link_create).
    let id = program
        .attach(&file, CgroupAttachMode::Single)
        .with_context(|| format!("attach the connection counter to {}", dir.display()))?;
    let link: FdLink = program
        .take_link(id)?
        .try_into()
        .context("the connection counter's link is not a bpf_link (kernel too old?)")?;
    link.pin(&pin)
        .with_context(|| format!("pin the connection counter at {}", pin.display()))?;
    Ok(Some(dir))
}

/// Unpins the counting link (caps switched off): the program stops once no descriptor holds
/// it. True when there was one.
pub fn detach_counting(pin_dir: &Path) -> anyhow::Result<bool> {
    let pin = link_pin(pin_dir);
    match std::fs::remove_file(&pin) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("remove {}", pin.display())),
    }
}

/// The mount point of the cgroup2 hierarchy (`/sys/fs/cgroup` on unified systems,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("read /proc/self/mounts")?;
    mounts
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, dir, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(dir.replace("\\040", " ")))
        })
        .context(
            "no cgroup2 hierarchy is mounted, and the concurrent-connection caps need one: mount \
             it, or set ceiling.concurrent.cgroup",
        )
}

/// The cookie of the network namespace this process is in (SO_NETNS_COOKIE, Linux 5.14).
pub fn netns_cookie() -> anyhow::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let socket = std::net::UdpSocket::bind(("::", 0))
        .or_else(|_| std::net::UdpSocket::bind(("0.0.0.0", 0)))
        .context("open a socket to read the network namespace's cookie")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        bail!(
            "read the network namespace's cookie: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(cookie)
}

impl Maps {
    /// Established connections counted per source and prefix (non-zero ones).
    pub fn connection_counts(&self) -> anyhow::Result<Vec<(crate::domain::Network, u64)>> {
        let mut out = Vec::new();
        for item in self.connections.iter() {
            let (key, n): (PolicyKey, u64) = item.context("read CONNECTIONS")?;
            if n > 0 {
                out.push((
                    crate::domain::Network {
                        addr: key.addr,
                        prefix_len: key.prefix_len,
                    },
                    n,
                ));
            }
        }
        Ok(out)
    }

    /// Removes the entries at zero (sources whose connections all closed), so the table holds
    /// only sources with connections open. Returns how many went.
    pub fn sweep_connections(&mut self) -> anyhow::Result<usize> {
        let idle: Vec<PolicyKey> = self
            .connections
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, n)| *n == 0)
            .map(|(k, _)| k)
            .collect();
        let mut removed = 0;
        for key in idle {
            // Counted again since the read: leave it.
            if self.connections.get(&key, 0).is_ok_and(|n| n == 0)
                && self.connections.remove(&key).is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }
}
