//! The XDP program: the embedded object, loading with the configured capacities, pinning,
//! attaching and detaching, the kernel's clocks, and the drop-event ring buffer.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
pub use aya::Ebpf;
use aya::{
    EbpfLoader, TestRun, include_bytes_aligned,
    maps::{MapData, RingBuf},
    programs::{Xdp, XdpMode, links::FdLink},
};
use sg_common::{capacity, map_name, mode};

use crate::domain::boot_time_ns;

/// How to attach XDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode where the driver supports it, else generic (skb) mode.
    Auto,
    Native,
    Skb,
}

/// Map sizes (`[capacity]` in the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub lists: u32,
    pub policies: u32,
    pub sources: u32,
    pub prefixes: u32,
    /// Sources and prefixes with established connections counted (the concurrent caps); the
    /// connections themselves get four times as many entries.
    pub connections: u32,
}

/// The XDP program, built by build.rs and embedded so that the binary is all an operator installs.
pub static EBPF_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sg-ebpf.o"));

/// The same program with a compare-and-swap that is not atomic: only the tests load it, to
/// show that the two-CPU bucket test fails without atomicity.
#[cfg(feature = "test-objects")]
pub static EBPF_OBJECT_NON_ATOMIC: &[u8] =
    include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sg-ebpf-non-atomic.o"));

/// The same program without its kernel diagnostics (aya-log): the baseline that shows, in
/// `cargo xtask bench xdp`, what they cost while switched off.
#[cfg(feature = "test-objects")]
pub static EBPF_OBJECT_NO_KERNEL_LOG: &[u8] =
    include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sg-ebpf-no-kernel-log.o"));

/// The throttle program's name in the object.
pub const PROGRAM: &str = "slowgate";
/// An empty XDP program in the same object, the baseline of `cargo xtask bench xdp`.
pub const EMPTY_PROGRAM: &str = "sg_empty";
/// A program that returns jiffies, to measure the kernel's tick (see [`tick_ns`]).
pub const CLOCK_PROGRAM: &str = "sg_clock";
pub const CLOCK_HI_PROGRAM: &str = "sg_clock_hi";

/// The length of one kernel tick (1 s / CONFIG_HZ), which the XDP program's bucket clock counts
/// in. Measured once per process by reading jiffies twice, 200 ms apart, through the clock
/// program, and rounded to the nearest CONFIG_HZ the kernel offers.
pub fn tick_ns(ebpf: &mut Ebpf) -> anyhow::Result<u64> {
    static TICK_NS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    if let Some(&t) = TICK_NS.get() {
        return Ok(t);
    }
    let j0 = run_clock(ebpf, CLOCK_PROGRAM)?;
    let t0 = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    let j1 = run_clock(ebpf, CLOCK_PROGRAM)?;
    let t1 = std::time::Instant::now();
    let measured = f64::from(j1.wrapping_sub(j0)) / (t1 - t0).as_secs_f64();
    let hz = [100.0, 250.0, 300.0, 1000.0]
        .into_iter()
        .min_by(|a: &f64, b: &f64| (a - measured).abs().total_cmp(&(b - measured).abs()))
        .unwrap_or(250.0);
    let tick = (1e9 / hz) as u64;
    Ok(*TICK_NS.get_or_init(|| tick))
}

/// CLOCK_BOOTTIME minus the XDP program's tick clock (`jiffies * tick_ns`, wrapping), for
/// `Config::boot_offset_ns`. Reads all 64 bits of jiffies through the two clock programs
/// (again when the low half wrapped between the reads).
pub fn boot_offset_ns(ebpf: &mut Ebpf, tick_ns: u64) -> anyhow::Result<u64> {
    for _ in 0..4 {
        let lo = run_clock(ebpf, CLOCK_PROGRAM)?;
        let hi = run_clock(ebpf, CLOCK_HI_PROGRAM)?;
        let lo_again = run_clock(ebpf, CLOCK_PROGRAM)?;
        let boot = boot_time_ns();
        if lo_again >= lo {
            let jiffies = (u64::from(hi) << 32) | u64::from(lo_again);
            return Ok(boot.wrapping_sub(jiffies.wrapping_mul(tick_ns)));
        }
    }
    bail!("jiffies kept wrapping while read")
}

/// Runs one of the clock programs (loading it the first time) and returns what it returned:
/// the low or the high half of jiffies.
fn run_clock(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<u32> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("the object has no {name} program"))?
        .try_into()?;
    if program.fd().is_err() {
        program.load().with_context(|| format!("load {name}"))?;
    }
    let frame = [0u8; 64];
    let result = program
        .test_run(aya::programs::TestRunOptions {
            data_in: Some(&frame),
            ..Default::default()
        })
        .with_context(|| format!("run {name}"))?;
    Ok(result.return_value)
}

/// Maps pinned under the pin directory: all of them, so a restarted daemon finds the state the
/// running program uses.
const PINNED_MAPS: [&str; 16] = [
    map_name::DROP_EVENTS,
    map_name::CONFIG,
    map_name::PORTS,
    map_name::ALLOW,
    map_name::DENY,
    map_name::POLICY,
    map_name::SOURCES,
    map_name::PREFIXES,
    map_name::GENERATION,
    map_name::COUNTERS,
    map_name::ATTACHMENTS,
    map_name::FILTER,
    map_name::SHORT_KEYS,
    map_name::LIST_LENGTHS,
    map_name::CONNECTIONS,
    map_name::COUNTED,
];

/// Expiry time for a time-to-live; 0 (never) without one.
pub fn expiry(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |t| boot_time_ns() + t.as_nanos() as u64)
}

/// Mounts bpffs on /sys/fs/bpf when it is not mounted (some systems do not mount it).
pub fn ensure_bpffs(pin_dir: &Path) -> anyhow::Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(root) || is_bpffs(root) {
        return Ok(());
    }
    let (src, target) = (c"bpf", c"/sys/fs/bpf");
    // SAFETY: valid C strings; mount(2) with no data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("mount bpffs on /sys/fs/bpf");
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Loads the embedded object with the configured capacities. With `pin_dir`, maps already pinned
/// there are re-used (a restart keeps every list, limit and bucket) and new ones are pinned.
pub fn load(capacity: &Capacity, pin_dir: Option<&Path>) -> anyhow::Result<Ebpf> {
    load_object(EBPF_OBJECT, capacity, pin_dir)
}

/// [`load`] of another object built from sg-ebpf (the tests' variants).
pub fn load_object(
    object: &[u8],
    capacity: &Capacity,
    pin_dir: Option<&Path>,
) -> anyhow::Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(map_name::ALLOW, capacity.lists)
        .map_max_entries(map_name::DENY, capacity.lists)
        .map_max_entries(map_name::POLICY, capacity.policies)
        .map_max_entries(map_name::SOURCES, capacity.sources.next_power_of_two())
        .map_max_entries(map_name::PREFIXES, capacity.prefixes.next_power_of_two())
        .map_max_entries(map_name::CONNECTIONS, capacity.connections)
        .map_max_entries(map_name::COUNTED, capacity.connections.saturating_mul(4));
    let paths: Vec<(&str, PathBuf)> = match pin_dir {
        Some(dir) => PINNED_MAPS.iter().map(|m| (*m, dir.join(m))).collect(),
        None => Vec::new(),
    };
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    loader
        .load(object)
        .context("load the XDP program (is this root, on Linux >= 5.12 with BTF?)")
}

/// The default capacities (sg_common::capacity), for tests and tools.
pub fn default_capacity() -> Capacity {
    Capacity {
        lists: capacity::LIST,
        policies: capacity::POLICY,
        sources: capacity::SOURCES,
        prefixes: capacity::PREFIXES,
        connections: capacity::CONNECTIONS,
    }
}

pub(super) fn link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("link_{iface}"))
}

/// Attaches the throttle to `iface` and pins the link, unless a pinned link is already there
/// (a restart: the program attached earlier keeps running, sharing the re-used maps, so
/// enforcement never pauses). Returns the mode it attached in, None when it re-used a link.
pub fn attach(
    ebpf: &mut Ebpf,
    iface: &str,
    wanted: AttachMode,
    pin_dir: &Path,
) -> anyhow::Result<Option<u32>> {
    let pin = link_pin(pin_dir, iface);
    if pin.exists() {
        let want = ifindex(iface)?;
        match pinned_link_ifindex(&pin) {
            Ok(Some(found)) if found == want => return Ok(None),
            found => {
                // The interface was deleted (and maybe made again): the pinned link protects
                // nothing. Attach again, and say so.
                let was = match found {
                    Ok(Some(i)) => format!("interface index {i}"),
                    Ok(None) => "an interface that is gone".to_string(),
                    Err(e) => format!("nothing readable ({e:#})"),
                };
                tracing::warn!(
                    "{iface}: the pinned program was attached to {was}, not to {iface} \
                     (index {want}); attaching again"
                );
                std::fs::remove_file(&pin)
                    .with_context(|| format!("remove the stale pin {}", pin.display()))?;
            }
        }
    }
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM)
        .context("the object has no slowgate program")?
        .try_into()?;
    if program.fd().is_err() {
        program.load().context("verify and load the XDP program")?;
    }
    let (link_id, recorded) = match wanted {
        AttachMode::Native => (program.attach(iface, XdpMode::Driver), mode::NATIVE),
        AttachMode::Skb => (program.attach(iface, XdpMode::Skb), mode::SKB),
        AttachMode::Auto => match program.attach(iface, XdpMode::Driver) {
            Ok(id) => (Ok(id), mode::NATIVE),
            Err(_) => (program.attach(iface, XdpMode::Skb), mode::SKB),
        },
    };
    let link_id = link_id.with_context(|| format!("attach XDP to {iface}"))?;
    let link = program.take_link(link_id)?;
    let fd_link: FdLink = link
        .try_into()
        .with_context(|| format!("XDP on {iface} is not a bpf_link (kernel too old?)"))?;
    fd_link
        .pin(&pin)
        .with_context(|| format!("pin the XDP link of {iface} at {}", pin.display()))?;
    Ok(Some(recorded))
}

/// The index of interface `iface`.
pub fn ifindex(iface: &str) -> anyhow::Result<u32> {
    let name = CString::new(iface).context("interface name")?;
    // SAFETY: valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("interface {iface} does not exist (see `interfaces` in the config)");
    }
    Ok(index)
}

/// True when the link pinned for `iface` is attached to the interface that has that name now.
pub fn link_is_live(pin_dir: &Path, iface: &str) -> bool {
    let Ok(want) = ifindex(iface) else {
        return false;
    };
    matches!(pinned_link_ifindex(&link_pin(pin_dir, iface)), Ok(Some(i)) if i == want)
}

/// The interface a pinned XDP link is attached to: None once its interface is gone (the
/// kernel keeps the link, attached to nothing). aya's `LinkInfo` does not expose it, so this
/// asks the kernel directly (BPF_OBJ_GET, BPF_OBJ_GET_INFO_BY_FD).
fn pinned_link_ifindex(pin: &Path) -> anyhow::Result<Option<u32>> {
    use std::os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    };
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_TYPE_XDP: u32 = 6;
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let path = CString::new(pin.as_os_str().as_bytes())?;
    // union bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd, file_flags, path_fd; every
    // byte past them must be zero, so it is built in a zeroed buffer.
    let mut get = [0u64; 3];
    get[0] = path.as_ptr() as u64;
    // SAFETY: bpf(2) reads 24 bytes of `get`, whose pathname points to a live C string.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            get.as_ptr(),
            std::mem::size_of_val(&get),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_OBJ_GET");
    }
    // SAFETY: a new descriptor the kernel just gave us, owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // struct bpf_link_info: type, id, prog_id, then a union aligned to 8 (xdp.ifindex first).
    let mut info = [0u64; 8];
    let request = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: the kernel writes at most info_len bytes into `info`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &request as *const InfoByFd,
            std::mem::size_of::<InfoByFd>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_OBJ_GET_INFO_BY_FD");
    }
    if info[0] as u32 != BPF_LINK_TYPE_XDP {
        bail!("{} is not an XDP link", pin.display());
    }
    let ifindex = info[2] as u32;
    Ok((ifindex != 0).then_some(ifindex))
}

/// Removes every link and map pinned under `pin_dir`: the program stops, the maps go.
pub fn detach(pin_dir: &Path) -> anyhow::Result<Vec<String>> {
    if !pin_dir.exists() {
        bail!("nothing to detach: {} does not exist", pin_dir.display());
    }
    let mut removed = Vec::new();
    for entry in
        std::fs::read_dir(pin_dir).with_context(|| format!("read {}", pin_dir.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        std::fs::remove_file(entry.path())
            .with_context(|| format!("remove pin {}", entry.path().display()))?;
        removed.push(name);
    }
    std::fs::remove_dir(pin_dir).with_context(|| format!("remove {}", pin_dir.display()))?;
    removed.sort();
    Ok(removed)
}

/// The sampled drop events of a loaded object.
pub fn drop_events(ebpf: &mut Ebpf) -> anyhow::Result<RingBuf<MapData>> {
    Ok(ebpf
        .take_map(map_name::DROP_EVENTS)
        .context("the object has no DROP_EVENTS map")?
        .try_into()?)
}

/// Reads one drop event from a ring buffer item.
pub fn parse_drop_event(bytes: &[u8]) -> Option<sg_common::DropEvent> {
    if bytes.len() < std::mem::size_of::<sg_common::DropEvent>() {
        return None;
    }
    // SAFETY: length checked; DropEvent is plain old data; read_unaligned tolerates alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}
