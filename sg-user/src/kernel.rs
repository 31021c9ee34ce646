//! The enforcer's side of the kernel boundary: loading and attaching the XDP program, pinning,
//! and reading and writing its maps. Knows nothing about log formats or points.

use std::{
    collections::BTreeMap,
    ffi::CString,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use aya::{
    Ebpf, EbpfLoader, TestRun, include_bytes_aligned,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{Xdp, XdpMode, links::FdLink},
};
use sg_common::{
    Addr, Attachment, Config as KernelConfig, FilterLine, ListEntry, ListLengths, Policy,
    PolicyKey, Slot, action, capacity, counter, filter, map_name, mode, service,
};

use crate::{
    config::{AttachMode, Capacity},
    domain::{Limit, boot_time_ns},
    domain::{Network, Rate},
};

/// The XDP program, built by build.rs and embedded so that the binary is all an operator installs.
pub static EBPF_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sg-ebpf.o"));

/// The same program with a compare-and-swap that is not atomic: only the tests load it, to
/// show that the two-CPU bucket test fails without atomicity.
#[cfg(feature = "test-objects")]
pub static EBPF_OBJECT_NON_ATOMIC: &[u8] =
    include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sg-ebpf-non-atomic.o"));

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
const PINNED_MAPS: [&str; 14] = [
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
];

/// Serialises every change to the present bits of FILTER, SHORT_KEYS and LIST_LENGTHS in this
/// process (the learning loop and
/// the daemon task each hold a `Maps`): setting a key's bits is a read-modify-write of a word,
/// and a rebuild must not overwrite bits set by an insert it did not see. Other processes only
/// write the maps while no daemon runs (the CLI's offline path; the daemon holds the pin
/// directory's lock).
static FILTER_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How often a sweep rebuilds the present bits from the maps (dropping those of entries gone).
const FILTER_REBUILD_EVERY: Duration = Duration::from_secs(600);

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
    let src = CString::new("bpf").unwrap();
    let target = CString::new("/sys/fs/bpf").unwrap();
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
        .map_max_entries(map_name::PREFIXES, capacity.prefixes.next_power_of_two());
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
    }
}

fn link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
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
                eprintln!(
                    "slowgate: {iface}: the pinned program was attached to {was}, not to {iface} \
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

/// Which manual list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    Allow,
    Deny,
}

impl ListKind {
    pub fn name(self) -> &'static str {
        match self {
            ListKind::Allow => "allow",
            ListKind::Deny => "deny",
        }
    }
}

/// A list or limit entry read back from the kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry<T> {
    pub network: Network,
    pub value: T,
    /// Time left before the kernel ignores it; None = never expires.
    pub remaining: Option<Duration>,
}

/// The program's maps, typed.
pub struct Maps {
    pub config: Array<MapData, KernelConfig>,
    pub ports: Array<MapData, u8>,
    pub allow: LpmTrie<MapData, Addr, ListEntry>,
    pub deny: LpmTrie<MapData, Addr, ListEntry>,
    pub policy: HashMap<MapData, PolicyKey, Policy>,
    pub sources: Array<MapData, Slot>,
    pub prefixes: Array<MapData, Slot>,
    pub generation: Array<MapData, u32>,
    pub counters: PerCpuArray<MapData, u64>,
    pub attachments: Array<MapData, Attachment>,
    filter: Array<MapData, FilterLine>,
    short_keys: Array<MapData, u64>,
    list_lengths: Array<MapData, ListLengths>,
    /// max_entries of each bounded map, read from the kernel.
    capacities: Vec<(&'static str, u32)>,
    /// When this handle last rebuilt the present bits (None: not yet, so the first
    /// `write_config` does).
    filter_rebuilt: Option<std::time::Instant>,
}

impl Maps {
    /// Takes the maps out of a loaded object (call after attaching).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> anyhow::Result<Maps> {
        Maps::build(|name| {
            ebpf.take_map(name)
                .with_context(|| format!("the object has no map {name}"))
        })
    }

    /// Opens the maps pinned under `pin_dir` by a daemon (running or not).
    pub fn open_pinned(pin_dir: &Path) -> anyhow::Result<Maps> {
        if !pin_dir.join(map_name::CONFIG).exists() {
            bail!(
                "slowgate is not running here: no pinned maps under {} \
                 (start it with `slowgate run --config FILE`, or pass --pin-dir)",
                pin_dir.display()
            );
        }
        Maps::build(|name| {
            let path = pin_dir.join(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("open pinned map {}", path.display()))?;
            Ok(Map::from_map_data(data)?)
        })
    }

    fn build(mut get: impl FnMut(&str) -> anyhow::Result<Map>) -> anyhow::Result<Maps> {
        let mut capacities = Vec::new();
        let mut bounded = |name: &'static str| -> anyhow::Result<Map> {
            let map = get(name)?;
            let max = match &map {
                Map::HashMap(m) | Map::LpmTrie(m) | Map::Array(m) => m.info()?.max_entries(),
                _ => 0,
            };
            capacities.push((name, max));
            Ok(map)
        };
        let allow = bounded(map_name::ALLOW)?.try_into()?;
        let deny = bounded(map_name::DENY)?.try_into()?;
        let policy = bounded(map_name::POLICY)?.try_into()?;
        let sources = bounded(map_name::SOURCES)?.try_into()?;
        let prefixes = bounded(map_name::PREFIXES)?.try_into()?;
        Ok(Maps {
            config: get(map_name::CONFIG)?.try_into()?,
            ports: get(map_name::PORTS)?.try_into()?,
            allow,
            deny,
            policy,
            sources,
            prefixes,
            generation: get(map_name::GENERATION)?.try_into()?,
            counters: get(map_name::COUNTERS)?.try_into()?,
            attachments: get(map_name::ATTACHMENTS)?.try_into()?,
            filter: get(map_name::FILTER)?.try_into()?,
            short_keys: get(map_name::SHORT_KEYS)?.try_into()?,
            list_lengths: get(map_name::LIST_LENGTHS)?.try_into()?,
            capacities,
            filter_rebuilt: None,
        })
    }

    /// Writes the kernel's settings, completed with what only this side knows: the tick length
    /// (see [`tick_ns`]), the slot tables' sizes, and the slot hash's seed (the one already in
    /// force when there is one, so that a restart keeps every source in its slot). The first
    /// call of a handle, and any call that changes the seed or the prefix lengths, rebuilds the
    /// present bits first: the
    /// filter is keyed with the seed, and maps pinned by an older version may lack it.
    pub fn write_config(
        &mut self,
        config: &KernelConfig,
        tick_ns: u64,
        boot_offset_ns: u64,
    ) -> anyhow::Result<()> {
        let _filter = FILTER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.read_config()?;
        let seed = if old.seed != [0, 0] {
            old.seed
        } else {
            random_seed()?
        };
        let capacity = |name| {
            self.capacities
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(1, |&(_, max)| max)
        };
        let config = KernelConfig {
            tick_ns,
            boot_offset_ns,
            seed,
            source_slots_mask: capacity(map_name::SOURCES) - 1,
            prefix_slots_mask: capacity(map_name::PREFIXES) - 1,
            seen_epoch_shift: seen_epoch_shift(config, tick_ns),
            ..*config
        };
        let keying = [Keying::of(&old), Keying::of(&config)];
        if self.filter_rebuilt.is_none() || keying[0] != keying[1] {
            // Under both keyings, for the moment between this write and the config's.
            self.rebuild_filter(&keying)?;
        }
        self.config.set(0, config, 0).context("write CONFIG")
    }

    /// Rebuilds the present bits from the maps now (a sweep does it every ten minutes).
    pub fn rebuild_present(&mut self) -> anyhow::Result<()> {
        let _filter = FILTER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let keying = Keying::of(&self.read_config()?);
        self.rebuild_filter(&[keying])
    }

    /// Sets the present bits of a key about to be inserted into ALLOW, DENY or POLICY (and,
    /// for a list, makes its length one the program probes). Call with FILTER_LOCK held,
    /// before the insert: the program must never see an entry whose key the filter lacks.
    fn mark_present(&mut self, addr: &Addr, prefix_len: u32, list: bool) -> anyhow::Result<()> {
        let keying = Keying::of(&self.read_config()?);
        let mut lengths = self.list_lengths.get(&0, 0).context("read LIST_LENGTHS")?;
        let mut lengths_changed = list && add_length(&mut lengths, prefix_len);
        for place in keying.places(addr, prefix_len) {
            match place {
                Place::Line(index, bits) => {
                    let mut line = self.filter.get(&index, 0).context("read FILTER")?;
                    if !filter::holds(&line, bits) {
                        filter::set(&mut line, bits);
                        self.filter.set(index, line, 0).context("write FILTER")?;
                    }
                }
                Place::Short(index, bits) => {
                    if lengths.short_keys == 0 {
                        lengths.short_keys = 1;
                        lengths_changed = true;
                    }
                    let word = self.short_keys.get(&index, 0).context("read SHORT_KEYS")?;
                    if word & bits != bits {
                        self.short_keys
                            .set(index, word | bits, 0)
                            .context("write SHORT_KEYS")?;
                    }
                }
            }
        }
        // After the bits: the program skips SHORT_KEYS while `short_keys` is 0.
        if lengths_changed {
            self.list_lengths
                .set(0, lengths, 0)
                .context("write LIST_LENGTHS")?;
        }
        Ok(())
    }

    /// Rewrites the present bits (FILTER's, SHORT_KEYS) and LIST_LENGTHS from the entries the
    /// maps hold now, under each of `keyings`. Call with FILTER_LOCK held. A word only ever
    /// loses bits of entries gone, so the program never misses one, even in a line half
    /// written. FILTER's seen words are the program's: a line is written back as read.
    fn rebuild_filter(&mut self, keyings: &[Keying]) -> anyhow::Result<()> {
        let mut lines = vec![FilterLine::default(); filter::LINES as usize];
        let mut short = vec![0u64; filter::SHORT_WORDS as usize];
        let mut lengths = ListLengths::default();
        let mut any_short = false;
        let mut set = |addr: &Addr, prefix_len: u32| {
            for keying in keyings {
                for place in keying.places(addr, prefix_len) {
                    match place {
                        Place::Line(index, bits) => filter::set(&mut lines[index as usize], bits),
                        Place::Short(index, bits) => {
                            short[index as usize] |= bits;
                            any_short = true;
                        }
                    }
                }
            }
        };
        for list in [&self.allow, &self.deny] {
            for key in list.keys() {
                let key = key.context("read a list key")?;
                set(&key.data(), key.prefix_len());
                add_length(&mut lengths, key.prefix_len());
            }
        }
        for key in self.policy.keys() {
            let key = key.context("read a POLICY key")?;
            set(&key.addr, key.prefix_len);
        }
        lengths.short_keys = u32::from(any_short);
        let present = filter::PRESENT_FROM..;
        for (index, want) in (0..filter::LINES).zip(lines) {
            let mut line = self.filter.get(&index, 0).context("read FILTER")?;
            if line.words[present.clone()] != want.words[present.clone()] {
                line.words[present.clone()].copy_from_slice(&want.words[present.clone()]);
                self.filter.set(index, line, 0).context("write FILTER")?;
            }
        }
        for (index, want) in (0..filter::SHORT_WORDS).zip(short) {
            if self.short_keys.get(&index, 0).context("read SHORT_KEYS")? != want {
                self.short_keys
                    .set(index, want, 0)
                    .context("write SHORT_KEYS")?;
            }
        }
        self.list_lengths
            .set(0, lengths, 0)
            .context("write LIST_LENGTHS")?;
        self.filter_rebuilt = Some(std::time::Instant::now());
        Ok(())
    }

    /// Tells the kernel that ALLOW, DENY or POLICY changed: verdicts cached in slots are stale.
    /// Call after the change. Two writers racing here still both leave a new generation behind
    /// their change, which is all the kernel needs.
    fn changed(&mut self) -> anyhow::Result<()> {
        let generation = self.generation.get(&0, 0).context("read GENERATION")?;
        self.generation
            .set(0, generation.wrapping_add(1), 0)
            .context("write GENERATION")
    }

    /// The current GENERATION (bumped after every change to ALLOW, DENY or POLICY).
    pub fn generation(&self) -> anyhow::Result<u32> {
        self.generation.get(&0, 0).context("read GENERATION")
    }

    pub fn read_config(&self) -> anyhow::Result<KernelConfig> {
        self.config.get(&0, 0).context("read CONFIG")
    }

    /// Makes exactly `ports` protected (port -> service).
    pub fn write_ports(&mut self, ports: &BTreeMap<u16, u8>) -> anyhow::Result<()> {
        for port in 0..=u16::MAX {
            let want = ports.get(&port).copied().unwrap_or(0);
            let index = u32::from(port);
            if self.ports.get(&index, 0)? != want {
                self.ports.set(index, want, 0).context("write PORTS")?;
            }
        }
        Ok(())
    }

    pub fn protected_ports(&self) -> anyhow::Result<BTreeMap<u16, u8>> {
        let mut out = BTreeMap::new();
        for (port, svc) in self.ports.iter().enumerate() {
            let svc = svc?;
            if svc != 0 {
                out.insert(port as u16, svc);
            }
        }
        Ok(out)
    }

    /// Records where the program is attached (for `slowgate status`).
    pub fn record_attachments(&mut self, attached: &[Attachment]) -> anyhow::Result<()> {
        if attached.len() > capacity::ATTACHMENTS as usize {
            bail!(
                "slowgate attaches to {} interfaces at most",
                capacity::ATTACHMENTS
            );
        }
        for slot in 0..capacity::ATTACHMENTS {
            let a = attached.get(slot as usize).copied().unwrap_or_default();
            self.attachments.set(slot, a, 0)?;
        }
        Ok(())
    }

    pub fn attachments(&self) -> anyhow::Result<Vec<Attachment>> {
        let mut out = Vec::new();
        for a in self.attachments.iter() {
            let a = a?;
            if a.ifindex != 0 {
                out.push(a);
            }
        }
        Ok(out)
    }

    fn list(&mut self, kind: ListKind) -> &mut LpmTrie<MapData, Addr, ListEntry> {
        match kind {
            ListKind::Allow => &mut self.allow,
            ListKind::Deny => &mut self.deny,
        }
    }

    pub fn list_add(
        &mut self,
        kind: ListKind,
        net: Network,
        ttl: Option<Duration>,
    ) -> anyhow::Result<()> {
        self.write_list_entry(kind, net, ttl)?;
        self.changed()
    }

    /// Removes `net`; false when it was not listed.
    pub fn list_del(&mut self, kind: ListKind, net: Network) -> anyhow::Result<bool> {
        let removed = self.remove_list_entry(kind, net)?;
        self.changed()?;
        Ok(removed)
    }

    /// Adds `net` to a list without telling the kernel (see [`Maps::publish`]).
    pub fn write_list_entry(
        &mut self,
        kind: ListKind,
        net: Network,
        ttl: Option<Duration>,
    ) -> anyhow::Result<()> {
        let key = Key::new(net.prefix_len, net.addr);
        let entry = ListEntry {
            expires_ns: expiry(ttl),
        };
        let _filter = FILTER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        self.mark_present(&net.addr, net.prefix_len, true)?;
        self.list(kind)
            .insert(&key, entry, 0)
            .map_err(|e| full_or(e, kind.name()))
            .with_context(|| format!("add {net} to the {} list", kind.name()))
    }

    /// Removes `net` from a list without telling the kernel; false when it was not listed.
    pub fn remove_list_entry(&mut self, kind: ListKind, net: Network) -> anyhow::Result<bool> {
        let key = Key::new(net.prefix_len, net.addr);
        removed(self.list(kind).remove(&key))
    }

    pub fn list_entries(&self, kind: ListKind) -> anyhow::Result<Vec<Entry<ListEntry>>> {
        let list = match kind {
            ListKind::Allow => &self.allow,
            ListKind::Deny => &self.deny,
        };
        let now = boot_time_ns();
        let mut out = Vec::new();
        for item in list.iter() {
            let (key, value) = item?;
            out.push(Entry {
                network: Network {
                    addr: key.data(),
                    prefix_len: key.prefix_len(),
                },
                value,
                remaining: remaining(value.expires_ns, now),
            });
        }
        out.sort_by_key(|e| e.network);
        Ok(out)
    }

    /// The POLICY key for `net`: an exact address, or a prefix or network of the configured
    /// lengths.
    pub fn policy_key(&self, net: Network) -> anyhow::Result<PolicyKey> {
        let config = self.read_config()?;
        let (prefix_len, network_len) = if net.is_v4() {
            (config.prefix_len_v4, config.network_len_v4)
        } else {
            (config.prefix_len_v6, config.network_len_v6)
        };
        if !net.is_host() && net.prefix_len != prefix_len && net.prefix_len != network_len {
            let shown = |len: u32| {
                if net.is_v4() {
                    len - sg_common::V4_MAPPED_BITS
                } else {
                    len
                }
            };
            bail!(
                "{net}: a limit applies to one address, a /{} prefix or a /{} network (the \
                 configured lengths); use `deny` for other networks",
                shown(prefix_len),
                shown(network_len)
            );
        }
        Ok(PolicyKey {
            addr: net.addr,
            prefix_len: net.prefix_len,
        })
    }

    pub fn limit_set(
        &mut self,
        net: Network,
        limit: Limit,
        ttl: Option<Duration>,
    ) -> anyhow::Result<()> {
        self.write_limit(net, limit, ttl)?;
        self.changed()
    }

    /// Writes a batch of limits (None removes one) and tells the kernel once. Returns the
    /// entries that could not be written, with the reason.
    pub fn limits_apply(
        &mut self,
        batch: &[(Network, Option<Limit>)],
        ttl: Option<Duration>,
    ) -> Vec<(Network, anyhow::Error)> {
        let mut failed = Vec::new();
        for &(net, limit) in batch {
            let result = match limit {
                Some(limit) => self.write_limit(net, limit, ttl),
                None => self.remove_limit(net).map(|_| ()),
            };
            if let Err(e) = result {
                failed.push((net, e));
            }
        }
        if batch.len() > failed.len()
            && let Err(e) = self.changed()
        {
            failed.push((batch[0].0, e));
        }
        failed
    }

    /// Writes the limit of `net` without telling the kernel (see [`Maps::publish`]). A
    /// refresh of the same limit keeps a network bucket's state (its tokens are spent).
    pub fn write_limit(
        &mut self,
        net: Network,
        limit: Limit,
        ttl: Option<Duration>,
    ) -> anyhow::Result<()> {
        let key = self.policy_key(net)?;
        let mut policy = policy_of(limit, ttl);
        if let Ok(old) = self.policy.get(&key, 0)
            && (old.action, old.interval_ns, old.burst)
                == (policy.action, policy.interval_ns, policy.burst)
        {
            policy.tat_ns = old.tat_ns;
        }
        let _filter = FILTER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        self.mark_present(&key.addr, key.prefix_len, false)?;
        self.policy
            .insert(key, policy, 0)
            .map_err(|e| full_or(e, "policy"))
            .with_context(|| format!("set the limit of {net}"))
    }

    /// Removes the limit of `net` without telling the kernel; false when it had none.
    pub fn remove_limit(&mut self, net: Network) -> anyhow::Result<bool> {
        let key = self.policy_key(net)?;
        removed(self.policy.remove(&key))
    }

    /// Tells the kernel that entries changed (one GENERATION bump for any number of writes).
    pub fn publish(&mut self) -> anyhow::Result<()> {
        self.changed()
    }

    /// Whether a limit entry exists for `net` (expired or not).
    pub fn limit_exists(&self, net: Network) -> anyhow::Result<bool> {
        let key = self.policy_key(net)?;
        Ok(self.policy.get(&key, 0).is_ok())
    }

    pub fn limit_del(&mut self, net: Network) -> anyhow::Result<bool> {
        let removed = self.remove_limit(net)?;
        self.changed()?;
        Ok(removed)
    }

    pub fn limit_entries(&self) -> anyhow::Result<Vec<Entry<Limit>>> {
        let now = boot_time_ns();
        let mut out = Vec::new();
        for item in self.policy.iter() {
            let (key, p) = item?;
            let limit = if p.action == action::BLOCK {
                Limit::Block
            } else {
                Limit::Rate {
                    rate: Rate {
                        interval: Duration::from_nanos(p.interval_ns),
                    },
                    burst: p.burst,
                }
            };
            out.push(Entry {
                network: Network {
                    addr: key.addr,
                    prefix_len: key.prefix_len,
                },
                value: limit,
                remaining: remaining(p.expires_ns, now),
            });
        }
        out.sort_by_key(|e| e.network);
        Ok(out)
    }

    /// Deletes expired list and policy entries (the kernel already ignores them; this frees
    /// their room). Returns how many went.
    pub fn sweep(&mut self) -> anyhow::Result<usize> {
        let now = boot_time_ns();
        let mut swept = 0;
        for kind in [ListKind::Allow, ListKind::Deny] {
            let expired = expired_keys(self.list(kind).iter(), |v| v.expires_ns, now);
            for key in expired {
                swept += usize::from(self.list(kind).remove(&key).is_ok());
            }
        }
        let expired = expired_keys(self.policy.iter(), |v| v.expires_ns, now);
        for key in expired {
            swept += usize::from(self.policy.remove(&key).is_ok());
        }
        if self
            .filter_rebuilt
            .is_none_or(|at| at.elapsed() >= FILTER_REBUILD_EVERY)
        {
            self.rebuild_present()?;
        }
        if swept > 0 {
            self.changed()?;
        }
        Ok(swept)
    }

    /// Every counter summed over CPUs, indexed by `sg_common::counter`.
    /// PACKETS and NEW_CONN are sums of other counters, worked out here to spare the program
    /// two increments per packet.
    pub fn counters(&self) -> anyhow::Result<Vec<u64>> {
        let mut all = (0..counter::COUNT)
            .map(|i| Ok(self.counters.get(&i, 0)?.iter().sum()))
            .collect::<anyhow::Result<Vec<u64>>>()?;
        let at = |c: u32| c as usize;
        all[at(counter::PACKETS)] = all[at(counter::PASSED)] + all[at(counter::DROPPED)];
        all[at(counter::NEW_CONN)] = (0..service::COUNT)
            .map(|s| all[at(counter::SERVICE_NEW_CONN + s)])
            .sum();
        Ok(all)
    }

    /// What the program counted of one source in its slot: (drops by a list or policy, drops
    /// by a default ceiling); None when the source has no slot (never seen, or displaced).
    pub fn source_drops(&self, net: Network) -> anyhow::Result<Option<(u32, u32)>> {
        let config = self.read_config()?;
        let (index, fingerprint) =
            sg_common::slot_hash(&net.addr, &config.seed, config.source_slots_mask);
        let slot = self.sources.get(&index, 0).context("read SOURCES")?;
        Ok((slot.tag >> 32 == fingerprint >> 32)
            .then_some((slot.dropped_by_rule, slot.dropped_by_ceiling)))
    }

    /// One counter, CPU by CPU.
    pub fn counter_per_cpu(&self, index: u32) -> anyhow::Result<Vec<u64>> {
        Ok(self.counters.get(&index, 0)?.iter().copied().collect())
    }

    /// (name, entries, capacity) of each bounded map.
    pub fn fill(&self) -> Vec<(&'static str, usize, u32)> {
        let lpm = |m: &LpmTrie<MapData, Addr, ListEntry>| m.keys().filter(Result::is_ok).count();
        // Slots are never freed, so the tables' fill is the count of first claims.
        let claimed = self.counters().unwrap_or_default();
        let claimed = |c: u32| claimed.get(c as usize).copied().unwrap_or(0) as usize;
        let counts = [
            lpm(&self.allow),
            lpm(&self.deny),
            self.policy.keys().filter(Result::is_ok).count(),
            claimed(counter::SOURCE_SLOT_CLAIMED),
            claimed(counter::PREFIX_SLOT_CLAIMED),
        ];
        self.capacities
            .iter()
            .zip(counts)
            .map(|(&(name, max), n)| (name, n, max))
            .collect()
    }
}

/// What places a key in the filters: the seed and each family's prefix length (see
/// `sg_common::filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Keying {
    seed: [u64; 2],
    prefix_lens: [u32; 2],
}

/// Where a key's present bits go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// A FILTER line and the key's bits in it.
    Line(u32, [u32; 3]),
    /// A SHORT_KEYS word and the key's bits in it.
    Short(u32, u64),
}

impl Keying {
    fn of(config: &KernelConfig) -> Keying {
        Keying {
            seed: config.seed,
            prefix_lens: [config.prefix_len_v4, config.prefix_len_v6],
        }
    }

    /// Where the program looks for a key: one place for each family whose sources the key
    /// covers (the families' prefix lengths differ; `::/0` covers both).
    fn places(&self, addr: &Addr, prefix_len: u32) -> Vec<Place> {
        let key = filter::masked_words(addr, prefix_len);
        let mapped = sg_common::V4_MAPPED_BITS;
        let v4_space = sg_common::map_v4([0; 4]);
        let covers = [
            // Some IPv4-mapped source: the key agrees with ::ffff:0:0/96 as far as both go.
            filter::masked_words(addr, prefix_len.min(mapped))
                == filter::masked_words(&v4_space, prefix_len.min(mapped)),
            // Some IPv6 source: anything but a key inside ::ffff:0:0/96.
            !(prefix_len >= mapped && addr[..12] == sg_common::V4_MAPPED_PREFIX),
        ];
        let mut places: Vec<Place> = self
            .prefix_lens
            .iter()
            .zip(covers)
            .filter(|&(_, covered)| covered)
            .map(|(&family_prefix, _)| {
                let key_hash = filter::hash(key, prefix_len, &self.seed);
                if prefix_len >= family_prefix {
                    let prefix = filter::masked_words(addr, family_prefix);
                    let line = filter::line(filter::hash(prefix, family_prefix, &self.seed));
                    Place::Line(line, filter::present_bits(key_hash))
                } else {
                    let (word, bits) = filter::short(key_hash);
                    Place::Short(word, bits)
                }
            })
            .collect();
        places.dedup();
        places
    }
}

/// Adds `prefix_len` to the lengths the program probes; true when `lengths` changed.
fn add_length(lengths: &mut ListLengths, prefix_len: u32) -> bool {
    let count = lengths.count as usize;
    if lengths.count == filter::TOO_MANY_LENGTHS
        || lengths.lengths[..count.min(filter::MAX_LIST_LENGTHS)]
            .iter()
            .any(|&l| u32::from(l) == prefix_len)
    {
        return false;
    }
    if count >= filter::MAX_LIST_LENGTHS {
        lengths.count = filter::TOO_MANY_LENGTHS;
    } else {
        lengths.lengths[count] = prefix_len as u8;
        lengths.count += 1;
    }
    true
}

/// The SEEN filter's generation: the longest default-ceiling interval, at least a tick (see
/// `sg_common::Config::seen_epoch_shift`), as a power of two: ilog2, rounded up.
fn seen_epoch_shift(config: &KernelConfig, tick_ns: u64) -> u32 {
    let longest = config
        .source_ceiling
        .interval_ns
        .max(config.prefix_ceiling.interval_ns)
        .max(tick_ns)
        .max(1_000_000);
    longest.next_power_of_two().ilog2().min(62)
}

fn policy_of(limit: Limit, ttl: Option<Duration>) -> Policy {
    match limit {
        Limit::Block => Policy {
            action: action::BLOCK,
            expires_ns: expiry(ttl),
            ..Policy::default()
        },
        Limit::Rate { rate, burst } => Policy {
            tat_ns: 0,
            interval_ns: rate.interval.as_nanos() as u64,
            expires_ns: expiry(ttl),
            burst,
            action: action::LIMIT,
        },
    }
}

/// 128 random bits from the kernel (getrandom(2)).
fn random_seed() -> anyhow::Result<[u64; 2]> {
    let mut bytes = [0u8; 16];
    // SAFETY: writes at most 16 bytes into `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != 16 {
        return Err(std::io::Error::last_os_error()).context("getrandom");
    }
    let (a, b) = bytes.split_at(8);
    Ok([
        u64::from_ne_bytes(a.try_into()?),
        u64::from_ne_bytes(b.try_into()?) | 1,
    ])
}

/// Keys of the entries whose expiry (0 = never) has passed at `now`.
fn expired_keys<K, V>(
    entries: impl Iterator<Item = Result<(K, V), aya::maps::MapError>>,
    expires_ns: impl Fn(&V) -> u64,
    now: u64,
) -> Vec<K> {
    entries
        .filter_map(Result::ok)
        .filter(|(_, v)| {
            let at = expires_ns(v);
            at != 0 && at <= now
        })
        .map(|(k, _)| k)
        .collect()
}

fn remaining(expires_ns: u64, now: u64) -> Option<Duration> {
    (expires_ns != 0).then(|| Duration::from_nanos(expires_ns.saturating_sub(now)))
}

/// A full map answers E2BIG: say so in words an operator understands.
fn full_or(e: aya::maps::MapError, what: &str) -> anyhow::Error {
    if let aya::maps::MapError::SyscallError(s) = &e
        && s.io_error.raw_os_error() == Some(libc::E2BIG)
    {
        return anyhow::anyhow!(
            "the {what} map is full; raise its size under [capacity] or remove entries"
        );
    }
    e.into()
}

fn removed(result: Result<(), aya::maps::MapError>) -> anyhow::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(aya::maps::MapError::KeyNotFound) => Ok(false),
        Err(aya::maps::MapError::SyscallError(s))
            if s.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
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
