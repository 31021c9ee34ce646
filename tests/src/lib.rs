//! Helpers for slowgate's root-only tests and benchmarks: the XDP program run on crafted packets
//! (BPF_PROG_TEST_RUN), network namespaces joined by veth, listeners and clients inside them,
//! and the daemon as a child process. Every guard cleans up on drop, also when a test fails.

use std::{
    fs::File,
    io::Read,
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

pub mod bench;
pub mod feed_server;
pub mod fleet;
pub mod flood;
pub mod lab;
pub mod mail;
pub mod policy_bench;
pub mod shapes;

use anyhow::{Context, bail};
use aya::{Ebpf, TestRun, TestRunOptions, programs::Xdp};
use slowgate::{config::Capacity, enforcer};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// Fails the test with a clear message when not root: these tests load XDP programs.
pub fn require_root() {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test loads XDP programs and creates network namespaces: run it as root \
         (`cargo xtask test`)"
    );
}

/// CPU time (user + system) of process `pid` so far, from /proc.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let after = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// A unique suffix for names of namespaces and pin directories made by this process.
pub fn unique(tag: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("sgt{}{tag}{n}", std::process::id() % 100_000)
}

// ---------------------------------------------------------------------------------------------
// Crafted packets.

/// Ethernet frame with optional VLAN tags (their TPIDs: 0x8100 or 0x88a8), then `payload`.
pub fn frame(vlan_tpids: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for (i, tpid) in vlan_tpids.iter().enumerate() {
        p.extend_from_slice(&tpid.to_be_bytes());
        p.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    p.extend_from_slice(&ethertype.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

pub fn tcp_header(dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t
}

/// IPv4 header (with `option_words` 4-byte words of NOP options) carrying `l4` of `proto`.
pub fn ipv4(src: [u8; 4], proto: u8, option_words: usize, frag: u16, l4: &[u8]) -> Vec<u8> {
    let ihl = 5 + option_words;
    let mut ip = vec![0u8; ihl * 4];
    ip[0] = 0x40 | ihl as u8;
    ip[2..4].copy_from_slice(&((ihl * 4 + l4.len()) as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&frag.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&[198, 51, 100, 1]);
    for b in &mut ip[20..] {
        *b = 1; // NOP
    }
    ip.extend_from_slice(l4);
    ip
}

/// An IPv6 extension header in a chain.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    HopByHop,
    Routing,
    DestOpts,
    /// Fragment header with this fragment offset (in 8-byte units).
    Fragment(u16),
}

/// IPv6 header, extension headers in order, then `l4` of `proto`.
pub fn ipv6(src: Ipv6Addr, exts: &[Ext], proto: u8, l4: &[u8]) -> Vec<u8> {
    let code = |e: &Ext| match e {
        Ext::HopByHop => 0u8,
        Ext::Routing => 43,
        Ext::DestOpts => 60,
        Ext::Fragment(_) => 44,
    };
    let mut body = Vec::new();
    for (i, e) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(proto, code);
        match e {
            Ext::Fragment(off) => {
                let mut h = vec![next, 0, 0, 0, 0, 0, 0, 1];
                h[2..4].copy_from_slice(&((off << 3) | 1).to_be_bytes());
                body.extend_from_slice(&h);
            }
            // 16 bytes: Hdr Ext Len 1 (two 8-octet units), padded with PadN.
            _ => body.extend_from_slice(&[next, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        }
    }
    body.extend_from_slice(l4);
    let mut ip = vec![0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(body.len() as u16).to_be_bytes());
    ip[6] = exts.first().map_or(proto, code);
    ip[7] = 64;
    ip[8..24].copy_from_slice(&src.octets());
    ip[24..40].copy_from_slice(&"2001:db8:a::1".parse::<Ipv6Addr>().unwrap().octets());
    ip.extend_from_slice(&body);
    ip
}

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// A plain IPv4 TCP segment from `src` to `dport` in an Ethernet frame.
pub fn v4_tcp(src: [u8; 4], dport: u16, flags: u8) -> Vec<u8> {
    frame(
        &[],
        ETH_P_IP,
        &ipv4(src, IPPROTO_TCP, 0, 0, &tcp_header(dport, flags)),
    )
}

/// A plain IPv6 TCP segment.
pub fn v6_tcp(src: &str, dport: u16, flags: u8) -> Vec<u8> {
    let src: Ipv6Addr = src.parse().unwrap();
    frame(
        &[],
        ETH_P_IPV6,
        &ipv6(src, &[], IPPROTO_TCP, &tcp_header(dport, flags)),
    )
}

// ---------------------------------------------------------------------------------------------
// The program in the kernel, not attached anywhere.

/// The embedded object, loaded without pins, with the throttle (and the empty baseline) loaded.
pub struct TestProgram {
    pub ebpf: Ebpf,
    pub maps: enforcer::Maps,
}

impl TestProgram {
    /// Loads with small capacities (tests) and writes `config`'s kernel settings.
    pub fn load(config: &slowgate::config::Config) -> anyhow::Result<TestProgram> {
        TestProgram::load_with(config, &config.capacity)
    }

    pub fn load_with(
        config: &slowgate::config::Config,
        capacity: &Capacity,
    ) -> anyhow::Result<TestProgram> {
        TestProgram::load_object(enforcer::EBPF_OBJECT, config, capacity)
    }

    /// Another object built from sg-ebpf (`enforcer::EBPF_OBJECT_NON_ATOMIC`).
    pub fn load_object(
        object: &[u8],
        config: &slowgate::config::Config,
        capacity: &Capacity,
    ) -> anyhow::Result<TestProgram> {
        let mut ebpf = enforcer::load_object(object, capacity, None)?;
        for name in [enforcer::PROGRAM, enforcer::EMPTY_PROGRAM] {
            let program: &mut Xdp = ebpf.program_mut(name).context("program")?.try_into()?;
            program.load().with_context(|| format!("load {name}"))?;
        }
        let mut maps = enforcer::Maps::from_ebpf(&mut ebpf)?;
        let tick_ns = enforcer::tick_ns(&mut ebpf)?;
        let offset = enforcer::boot_offset_ns(&mut ebpf, tick_ns)?;
        maps.write_config(&config.kernel_config(), tick_ns, offset)?;
        maps.write_ports(&config.ports)?;
        Ok(TestProgram { ebpf, maps })
    }

    /// Runs the throttle once on `packet`; returns its verdict.
    pub fn run(&self, packet: &[u8]) -> u32 {
        self.run_program(enforcer::PROGRAM, packet, 1).0
    }

    /// Runs `program` `repeat` times on `packet`: (last verdict, mean duration per run).
    pub fn run_program(&self, program: &str, packet: &[u8], repeat: u32) -> (u32, Duration) {
        let program: &Xdp = self
            .ebpf
            .program(program)
            .expect("program in object")
            .try_into()
            .expect("an XDP program");
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(packet),
                repeat,
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        (result.return_value, result.duration)
    }

    pub fn counter(&self, index: u32) -> u64 {
        self.maps.counters().expect("read counters")[index as usize]
    }
}

/// Keeps the calling thread on `cpu` (panics when the machine has no such CPU).
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "pin to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A config for tests: the default one with the given overrides appended as TOML.
pub fn test_config(extra: &str) -> slowgate::config::Config {
    let text = format!(
        "interfaces = [\"lo\"]\n{extra}\n[capacity]\nlists = 1024\npolicies = 1024\nsources = 4096\nprefixes = 1024\n"
    );
    slowgate::config::Config::parse(&text, Path::new("test.toml")).expect("test config")
}

// ---------------------------------------------------------------------------------------------
// Network namespaces.

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A network namespace, deleted (with its interfaces) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> anyhow::Result<Netns> {
        let name = unique(tag);
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME args...`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Adds an address (IPv6 with nodad, so it is usable at once).
    pub fn addr(&self, dev: &str, cidr: &str) -> anyhow::Result<()> {
        if cidr.contains(':') {
            self.ip(&["addr", "add", cidr, "dev", dev, "nodad"])
        } else {
            self.ip(&["addr", "add", cidr, "dev", dev])
        }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `f` with this thread inside the namespace: sockets it creates live there.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> anyhow::Result<T> {
        let original = File::open("/proc/thread-self/ns/net").context("open own netns")?;
        let target = File::open(self.path()).context("open netns")?;
        // SAFETY: valid namespace fds; setns(CLONE_NEWNET) changes only this thread.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {}: {}", self.name, std::io::Error::last_os_error());
        }
        let result = f();
        // SAFETY: as above; going back to where the thread was.
        if unsafe { libc::setns(original.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            panic!(
                "cannot return from netns: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(result)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Joins `a` and `b` with a veth pair created directly inside them, both ends up.
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> anyhow::Result<()> {
    ip(&[
        "link", "add", a_dev, "netns", &a.name, "type", "veth", "peer", "name", b_dev, "netns",
        &b.name,
    ])?;
    a.ip(&["link", "set", a_dev, "up"])?;
    b.ip(&["link", "set", b_dev, "up"])?;
    Ok(())
}

/// TCP listeners in a namespace, accepting and closing connections until dropped.
pub struct Listeners {
    stop: std::sync::Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Listeners {
    /// Listens on `[::]:port` (dual stack) for each port; accepted connections are closed at
    /// once.
    pub fn start(ns: &Netns, ports: &[u16]) -> anyhow::Result<Listeners> {
        Listeners::serve(ns, ports, |conn, _| {
            drop(conn);
            None
        })
    }

    /// The same, each accepted connection handed to `handle`, which may give back a thread
    /// that serves it (joined when the listeners stop; it must end once `stop` is set).
    fn serve<H>(ns: &Netns, ports: &[u16], handle: H) -> anyhow::Result<Listeners>
    where
        H: Fn(std::net::TcpStream, std::sync::Arc<AtomicBool>) -> Option<thread::JoinHandle<()>>
            + Clone
            + Send
            + 'static,
    {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &port in ports {
            let listener = ns.enter(|| TcpListener::bind(("::", port)))??;
            listener.set_nonblocking(true)?;
            let (stop, handle) = (stop.clone(), handle.clone());
            threads.push(thread::spawn(move || {
                let mut served = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => served.extend(handle(conn, stop.clone())),
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
                for t in served {
                    let _ = t.join();
                }
            }));
        }
        Ok(Listeners { stop, threads })
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One TCP connection attempt from `src` (an address inside `ns`) to `dst`.
pub fn connect(ns: &Netns, src: IpAddr, dst: SocketAddr, timeout: Duration) -> bool {
    tcp_connect(ns, src, dst, timeout).is_ok()
}

/// A TCP connection from `src` (an address inside `ns`) to `dst`, or the error; reads and
/// writes on it time out after `timeout` too.
pub fn tcp_connect(
    ns: &Netns,
    src: IpAddr,
    dst: SocketAddr,
    timeout: Duration,
) -> std::io::Result<std::net::TcpStream> {
    use socket2::{Domain, Socket, Type};
    let domain = if dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = ns
        .enter(|| Socket::new(domain, Type::STREAM, None))
        .map_err(std::io::Error::other)??;
    socket.bind(&SocketAddr::new(src, 0).into())?;
    socket.connect_timeout(&dst.into(), timeout)?;
    let stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// `GET path` over HTTP/1.0 from inside `ns`; the body, or None (the reason on stderr).
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let local: IpAddr = if addr.is_ipv4() {
        "127.0.0.1".parse().ok()?
    } else {
        "::1".parse().ok()?
    };
    let attempt = || -> std::io::Result<String> {
        let mut stream = tcp_connect(ns, local, addr, Duration::from_secs(5))?;
        write!(stream, "GET {path} HTTP/1.0\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    };
    let text = match attempt() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("GET {path} from {addr}: {e}");
            return None;
        }
    };
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200").then(|| body.to_string())
}

/// `attempts` connection attempts spread evenly over `over`; returns how many succeeded.
/// Bounded in count and time: each attempt waits at most its slot.
pub fn attempts(ns: &Netns, src: IpAddr, dst: SocketAddr, attempts: u32, over: Duration) -> u32 {
    let slot = over / attempts;
    let start = Instant::now();
    let mut ok = 0;
    for i in 0..attempts {
        let due = start + slot * i;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        if connect(ns, src, dst, slot.mul_f32(0.9)) {
            ok += 1;
        }
    }
    ok
}

// ---------------------------------------------------------------------------------------------
// The slowgate binary and daemon.

/// The `slowgate` binary under test (`cargo xtask test` sets SLOWGATE_BIN).
pub fn bin() -> PathBuf {
    let path = std::env::var_os("SLOWGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/slowgate"));
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo xtask test` does)",
        path.display()
    );
    path
}

/// A directory under the system's temporary directory, removed on drop (also when a test
/// fails).
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The state directory that goes with a pin directory in tests (never the system's).
pub fn state_dir_of(pin_dir: &Path) -> PathBuf {
    let name = pin_dir.file_name().unwrap_or_default().to_string_lossy();
    std::env::temp_dir().join(format!("{name}-state"))
}

/// Runs the CLI against `pin_dir`; returns (success, stdout + stderr).
pub fn cli(pin_dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin())
        .env("SLOWGATE_STATE_DIR", state_dir_of(pin_dir))
        // The pinned maps themselves, never a daemon's socket (not even the system's).
        .env(
            "SLOWGATE_CONTROL",
            state_dir_of(pin_dir).join("no-daemon.sock"),
        )
        .arg("--pin-dir")
        .arg(pin_dir)
        .args(args)
        .output()
        .expect("run slowgate");
    said(&out)
}

/// Whether a command succeeded, and what it printed (stdout, then stderr).
pub fn said(out: &std::process::Output) -> (bool, String) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Polls `f` every 50 ms until it holds (true) or `within` has passed (false).
pub fn until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A pin directory under /sys/fs/bpf, detached and removed on drop.
pub struct PinDir {
    pub path: PathBuf,
}

impl PinDir {
    pub fn new() -> PinDir {
        slowgate::enforcer::ensure_bpffs(Path::new("/sys/fs/bpf/x")).expect("bpffs");
        PinDir {
            path: PathBuf::from("/sys/fs/bpf").join(unique("pins")),
        }
    }
}

impl Default for PinDir {
    fn default() -> Self {
        PinDir::new()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.path.exists() {
            let _ = slowgate::enforcer::detach(&self.path);
        }
        let _ = std::fs::remove_dir_all(state_dir_of(&self.path));
    }
}

/// `slowgate run` inside a namespace (only the network namespace is entered, so pins are
/// shared with the test: see ../shared/TOOLCHAIN.md). Killed on drop.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    /// Its control socket (in its own temporary directory, never the system's).
    pub control: PathBuf,
}

impl Daemon {
    /// Starts the daemon and waits until it says it is ready (at most 20 s).
    pub fn start(ns: &Netns, config_text: &str, pin_dir: &Path) -> anyhow::Result<Daemon> {
        Daemon::start_with_env(ns, config_text, pin_dir, &[])
    }

    /// The same, with extra environment variables.
    pub fn start_with_env(
        ns: &Netns,
        config_text: &str,
        pin_dir: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Daemon> {
        let dir = std::env::temp_dir().join(unique("daemon"));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("slowgate.toml");
        let control = dir.join("control.sock");
        let config_text = if config_text.contains("[control]") {
            config_text.to_string()
        } else {
            format!(
                "{config_text}\n[control]\nsocket = \"{}\"\n",
                control.display()
            )
        };
        // A top-level key goes before the first table.
        let config_text = format!(
            "state_dir = \"{}\"\n{config_text}",
            state_dir_of(pin_dir).display()
        );
        std::fs::write(&config, config_text)?;
        let log = dir.join("daemon.log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg(bin())
            .arg("--config")
            .arg(&config)
            .arg("--pin-dir")
            .arg(pin_dir)
            .arg("run")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .context("spawn slowgate run")?;
        let mut daemon = Daemon {
            child,
            log,
            control,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = daemon.log_text();
            if text.contains("slowgate: ready") {
                return Ok(daemon);
            }
            if let Some(status) = daemon.child.try_wait()? {
                bail!("slowgate run exited ({status}): {text}");
            }
            if Instant::now() > deadline {
                bail!("slowgate run not ready after 20 s: {text}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `slowgate --control SOCKET ARGS` against this daemon, as root or (`as_nobody`) as an
    /// unprivileged user: whether it succeeded, and what it printed.
    pub fn control(&self, args: &[&str], as_nobody: bool) -> (bool, String) {
        let mut cmd = if as_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(bin());
            c
        } else {
            Command::new(bin())
        };
        let out = cmd
            .arg("--control")
            .arg(&self.control)
            .args(args)
            .output()
            .expect("run slowgate");
        said(&out)
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if let Some(dir) = self.log.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Listeners {
    /// Listeners that keep each connection open until the client closes it (as an MTA does
    /// until QUIT), writing a byte every 300 ms so that a client gone silent times out: each
    /// accepted socket has TCP_USER_TIMEOUT `user_timeout`.
    pub fn holding(ns: &Netns, ports: &[u16], user_timeout: Duration) -> anyhow::Result<Self> {
        Listeners::serve(ns, ports, move |conn, stop| {
            Some(thread::spawn(move || hold(conn, user_timeout, &stop)))
        })
    }
}

fn hold(conn: std::net::TcpStream, user_timeout: Duration, stop: &AtomicBool) {
    use std::io::Write as _;
    let socket = socket2::SockRef::from(&conn);
    let _ = socket.set_tcp_user_timeout(Some(user_timeout));
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(300)));
    let mut conn = conn;
    let mut buf = [0u8; 256];
    // Bounded: the test ends every connection, and `stop` ends them all.
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
        if conn.write_all(b".").is_err() {
            return;
        }
    }
}

/// Appends `text` to a log file, as the mail software would.
pub fn append(log: &Path, text: &str) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(log)
        .expect("open the log")
        .write_all(text.as_bytes())
        .expect("append to the log");
}
