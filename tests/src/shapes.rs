//! A generator of packet shapes for "no shape gets a denied source through": every TCP SYN the
//! Linux stack might accept, dressed in VLAN stacks, IPv4 options and fragments, IPv6 chains of
//! every extension header kind, count and length, and cut short. Frames carry correct checksums
//! so that a real listener answers the ones the stack accepts; [`RawLink`] sends them on a veth
//! and reads back the SYN-ACKs.

use std::{
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::Netns;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const TCP: u8 = 6;
const HOPOPTS: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AH: u8 = 51;
const DSTOPTS: u8 = 60;

/// A MAC address as `ip link` takes it.
pub fn mac_text(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// One shape: a name for failure messages and the frames that make it (several for fragments).
pub struct Shape {
    pub name: String,
    pub frames: Vec<Vec<u8>>,
}

/// Where the frames go: link addresses and the server's address of each family.
#[derive(Clone, Copy)]
pub struct Path {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub dst_v4: [u8; 4],
    pub dst_v6: [u8; 16],
    pub dport: u16,
}

/// An IPv6 extension header in a generated chain: kind and total length in bytes.
#[derive(Clone, Copy, Debug)]
enum Ext {
    /// Hop-by-hop, destination options, routing (type 253, no segments left), AH: (code, bytes).
    Sized(u8, usize),
    /// A fragment header (atomic: offset 0, no more fragments).
    AtomicFragment,
}

/// The SYN of `sport` from `src` in every shape. The source port identifies the shape in the
/// server's SYN-ACK, so callers give each (shape, source) its own port range.
pub fn shapes(path: &Path, src: IpAddr, sport_base: u16) -> Vec<Shape> {
    let mut out = Vec::new();
    let mut sport = sport_base;
    let mut next_port = || {
        sport += 1;
        sport
    };
    match src {
        IpAddr::V4(v4) => v4_shapes(path, v4.octets(), &mut next_port, &mut out),
        IpAddr::V6(v6) => v6_shapes(path, v6.octets(), &mut next_port, &mut out),
    }
    out
}

/// A plain SYN frame from `src` (either family) with source port `sport`, checksums right.
pub fn syn_frame(path: &Path, src: IpAddr, sport: u16) -> Vec<u8> {
    match src {
        IpAddr::V4(v4) => {
            let src = v4.octets();
            let tcp = v4_syn(src, path.dst_v4, sport, path.dport, 0);
            let mut ip = v4_header(src, path.dst_v4, 0, 0, sport, tcp.len());
            ip.extend_from_slice(&tcp);
            ethernet(path, &[], ETH_P_IP, &ip)
        }
        IpAddr::V6(v6) => {
            let ip = v6_packet(v6.octets(), path.dst_v6, &[], sport, path.dport);
            ethernet(path, &[], ETH_P_IPV6, &ip)
        }
    }
}

/// VLAN stacks as the stack receives them untagged: priority tags (VLAN id 0).
fn vlan_stacks() -> Vec<(&'static str, Vec<u16>)> {
    vec![
        ("untagged", vec![]),
        ("802.1Q", vec![0x8100]),
        ("802.1ad+802.1Q", vec![0x88a8, 0x8100]),
        ("802.1Q x2", vec![0x8100, 0x8100]),
        ("802.1Q x3", vec![0x8100, 0x8100, 0x8100]),
        ("802.1ad+802.1Q x3", vec![0x88a8, 0x8100, 0x8100, 0x8100]),
    ]
}

fn ethernet(path: &Path, tags: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 32);
    f.extend_from_slice(&path.dst_mac);
    f.extend_from_slice(&path.src_mac);
    for tpid in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&[0, 0]); // priority tag: VLAN id 0
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A SYN header with `option_bytes` of options (NOPs then an MSS), checksum left at zero.
fn syn(sport: u16, dport: u16, option_bytes: usize) -> Vec<u8> {
    assert!(option_bytes.is_multiple_of(4) && option_bytes <= 40);
    let mut t = vec![0u8; 20 + option_bytes];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&0x5107_9a7eu32.to_be_bytes());
    t[12] = (((20 + option_bytes) / 4) << 4) as u8;
    t[13] = 0x02;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    if option_bytes >= 4 {
        for b in &mut t[20..16 + option_bytes] {
            *b = 1; // NOP
        }
        let mss = 16 + option_bytes;
        t[mss..mss + 4].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    }
    t
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum16(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn tcp_checksum(pseudo: &[u8], tcp: &mut [u8]) {
    tcp[16..18].copy_from_slice(&[0, 0]);
    let c = fold(sum16(pseudo) + sum16(tcp));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
}

fn v4_syn(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, options: usize) -> Vec<u8> {
    let mut tcp = syn(sport, dport, options);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, TCP]);
    pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    tcp_checksum(&pseudo, &mut tcp);
    tcp
}

/// IPv4 header with `option_words` words of options (NOPs, the last an End of Options list).
fn v4_header(
    src: [u8; 4],
    dst: [u8; 4],
    option_words: usize,
    frag: u16,
    id: u16,
    len: usize,
) -> Vec<u8> {
    let ihl = 5 + option_words;
    let mut ip = vec![0u8; ihl * 4];
    ip[0] = 0x40 | ihl as u8;
    ip[2..4].copy_from_slice(&((ihl * 4 + len) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[6..8].copy_from_slice(&frag.to_be_bytes());
    ip[8] = 64;
    ip[9] = TCP;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    for b in &mut ip[20..] {
        *b = 1;
    }
    if option_words > 0 {
        let last = ip.len() - 1;
        ip[last] = 0; // End of Options List
    }
    let c = fold(sum16(&ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip
}

fn v4_shapes(path: &Path, src: [u8; 4], port: &mut impl FnMut() -> u16, out: &mut Vec<Shape>) {
    let dst = path.dst_v4;
    for (vlan, tags) in vlan_stacks() {
        let p = port();
        let tcp = v4_syn(src, dst, p, path.dport, 0);
        let mut ip = v4_header(src, dst, 0, 0, p, tcp.len());
        ip.extend_from_slice(&tcp);
        out.push(Shape {
            name: format!("v4 {vlan}"),
            frames: vec![ethernet(path, &tags, ETH_P_IP, &ip)],
        });
    }
    for words in 1..=10 {
        let p = port();
        let tcp = v4_syn(src, dst, p, path.dport, 0);
        let mut ip = v4_header(src, dst, words, 0, p, tcp.len());
        ip.extend_from_slice(&tcp);
        out.push(Shape {
            name: format!("v4 options {words} words"),
            frames: vec![ethernet(path, &[0x8100], ETH_P_IP, &ip)],
        });
    }
    // Fragments: the TCP header (with 20 bytes of options) split at 8, 16 and 24 bytes, the
    // pieces sent in order and in reverse order; with don't-fragment and IP options too.
    for split in [8usize, 16, 24] {
        for reverse in [false, true] {
            for words in [0usize, 3] {
                let p = port();
                let tcp = v4_syn(src, dst, p, path.dport, 20);
                let mf = 0x2000;
                let mut first = v4_header(src, dst, words, mf, p, split);
                first.extend_from_slice(&tcp[..split]);
                let mut second =
                    v4_header(src, dst, words, (split / 8) as u16, p, tcp.len() - split);
                second.extend_from_slice(&tcp[split..]);
                let mut frames = vec![
                    ethernet(path, &[], ETH_P_IP, &first),
                    ethernet(path, &[], ETH_P_IP, &second),
                ];
                if reverse {
                    frames.reverse();
                }
                out.push(Shape {
                    name: format!("v4 fragments split {split} reverse {reverse} options {words}"),
                    frames,
                });
            }
        }
    }
    // Trailing padding after the datagram (the stack trims to Total Length), and cuts.
    let p = port();
    let tcp = v4_syn(src, dst, p, path.dport, 0);
    let mut ip = v4_header(src, dst, 2, 0, p, tcp.len());
    ip.extend_from_slice(&tcp);
    let mut padded = ip.clone();
    padded.extend_from_slice(&[0xff; 18]);
    out.push(Shape {
        name: "v4 with trailing padding".into(),
        frames: vec![ethernet(path, &[], ETH_P_IP, &padded)],
    });
    for cut in [10, 20, 24, 28, 32, 40, 47] {
        out.push(Shape {
            name: format!("v4 cut at {cut}"),
            frames: vec![ethernet(path, &[], ETH_P_IP, &ip[..cut])],
        });
    }
}

/// An extension header of `len` bytes (a multiple of 8) filled with options the stack skips:
/// unknown options of type 0x1e (RFC 4727's experimental type, "skip over"), at most 257 bytes
/// each (Linux refuses padding runs over 7 bytes, so PadN cannot fill a long header).
fn options_header(next: u8, len: usize) -> Vec<u8> {
    assert!(len >= 8 && len.is_multiple_of(8) && len <= 2048);
    let mut h = vec![next, (len / 8 - 1) as u8];
    let mut left = len - 2;
    while left > 0 {
        let size = match left {
            0..=257 => left,
            258 => 256,
            _ => 257,
        };
        h.push(0x1e);
        h.push((size - 2) as u8);
        h.extend(std::iter::repeat_n(0u8, size - 2));
        left -= size;
    }
    assert_eq!(h.len(), len);
    h
}

fn ext_bytes(ext: Ext, next: u8) -> Vec<u8> {
    match ext {
        Ext::Sized(HOPOPTS | DSTOPTS, len) => options_header(next, len),
        Ext::Sized(ROUTING, len) => {
            let mut h = vec![0u8; len];
            h[0] = next;
            h[1] = (len / 8 - 1) as u8;
            h[2] = 253; // experimental routing type
            h[3] = 0; // segments left: processed as if absent
            h
        }
        Ext::Sized(AH, len) => {
            let mut h = vec![0u8; len];
            h[0] = next;
            h[1] = (len / 4 - 2) as u8;
            h[4..8].copy_from_slice(&0x100u32.to_be_bytes());
            h
        }
        Ext::Sized(code, _) => panic!("no such extension header {code}"),
        Ext::AtomicFragment => vec![next, 0, 0, 0, 0, 0, 0x51, 0x07],
    }
}

fn ext_code(ext: &Ext) -> u8 {
    match ext {
        Ext::Sized(code, _) => *code,
        Ext::AtomicFragment => FRAGMENT,
    }
}

fn v6_header(src: [u8; 16], dst: [u8; 16], next: u8, payload_len: usize) -> Vec<u8> {
    let mut ip = vec![0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
    ip[6] = next;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&src);
    ip[24..40].copy_from_slice(&dst);
    ip
}

fn v6_syn(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, options: usize) -> Vec<u8> {
    let mut tcp = syn(sport, dport, options);
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&(tcp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, TCP]);
    tcp_checksum(&pseudo, &mut tcp);
    tcp
}

/// The IPv6 packet: header, `chain`, the SYN.
fn v6_packet(src: [u8; 16], dst: [u8; 16], chain: &[Ext], sport: u16, dport: u16) -> Vec<u8> {
    let tcp = v6_syn(src, dst, sport, dport, 0);
    let mut body = Vec::new();
    for (i, e) in chain.iter().enumerate() {
        let next = chain.get(i + 1).map_or(TCP, ext_code);
        body.extend_from_slice(&ext_bytes(*e, next));
    }
    body.extend_from_slice(&tcp);
    let mut ip = v6_header(src, dst, chain.first().map_or(TCP, ext_code), body.len());
    ip.extend_from_slice(&body);
    ip
}

fn v6_chains() -> Vec<(String, Vec<Ext>)> {
    let d = |len| Ext::Sized(DSTOPTS, len);
    let mut chains: Vec<(String, Vec<Ext>)> = vec![("plain".into(), vec![])];
    for n in 1..=12 {
        chains.push((format!("{n} destination options"), vec![d(8); n]));
    }
    for n in [9, 16, 24] {
        chains.push((
            format!("{n} destination options of 16 bytes"),
            vec![d(16); n],
        ));
    }
    for len in [16, 256, 512, 1000, 1024, 1032, 1280, 1288, 1400] {
        chains.push((
            format!("one destination options of {len} bytes"),
            vec![d(len)],
        ));
        chains.push((
            format!("hop-by-hop of {len} bytes"),
            vec![Ext::Sized(HOPOPTS, len)],
        ));
        chains.push((
            format!("routing of {len} bytes"),
            vec![Ext::Sized(ROUTING, len)],
        ));
    }
    chains.push((
        "every kind in RFC 8200 order".into(),
        vec![
            Ext::Sized(HOPOPTS, 8),
            d(8),
            Ext::Sized(ROUTING, 24),
            Ext::AtomicFragment,
            d(16),
        ],
    ));
    chains.push((
        "hop-by-hop then 9 mixed".into(),
        std::iter::once(Ext::Sized(HOPOPTS, 8))
            .chain((0..9).map(|i| match i % 3 {
                0 => d(8),
                1 => Ext::Sized(ROUTING, 8),
                _ => Ext::AtomicFragment,
            }))
            .collect(),
    ));
    chains.push(("8 atomic fragments".into(), vec![Ext::AtomicFragment; 8]));
    chains.push(("9 atomic fragments".into(), vec![Ext::AtomicFragment; 9]));
    chains.push((
        "7 headers then one of 1024 bytes".into(),
        [vec![d(8); 7], vec![d(1024)]].concat(),
    ));
    chains.push((
        "800 bytes of headers then 4 more".into(),
        [vec![d(800)], vec![d(8); 4]].concat(),
    ));
    chains.push(("authentication header".into(), vec![Ext::Sized(AH, 24)]));
    chains.push((
        "10 routing headers".into(),
        vec![Ext::Sized(ROUTING, 8); 10],
    ));
    chains
}

fn v6_shapes(path: &Path, src: [u8; 16], port: &mut impl FnMut() -> u16, out: &mut Vec<Shape>) {
    let dst = path.dst_v6;
    for (vlan, tags) in vlan_stacks() {
        for (name, chain) in v6_chains() {
            if !tags.is_empty() && !matches!(name.as_str(), "plain" | "9 destination options") {
                continue;
            }
            let ip = v6_packet(src, dst, &chain, port(), path.dport);
            out.push(Shape {
                name: format!("v6 {vlan} {name}"),
                frames: vec![ethernet(path, &tags, ETH_P_IPV6, &ip)],
            });
        }
    }
    // Real fragments: the chain in the first fragment, the TCP header (with 20 bytes of
    // options) split at 24 bytes; with a long chain before and after the fragment header.
    for (name, before, after) in [
        ("fragmented", vec![], vec![]),
        (
            "fragmented after 9 destination options",
            vec![Ext::Sized(DSTOPTS, 8); 9],
            vec![],
        ),
        (
            "fragmented, 9 destination options after the fragment header",
            vec![],
            vec![Ext::Sized(DSTOPTS, 8); 9],
        ),
    ] {
        for reverse in [false, true] {
            let p = port();
            let tcp = v6_syn(src, dst, p, path.dport, 20);
            let mut after_bytes = Vec::new();
            for (i, e) in after.iter().enumerate() {
                let next = after.get(i + 1).map_or(TCP, ext_code);
                after_bytes.extend_from_slice(&ext_bytes(*e, next));
            }
            let fragmentable: Vec<u8> = [after_bytes, tcp].concat();
            let split = fragmentable.len() - 16;
            let first_next = after.first().map_or(TCP, ext_code);
            let frag_header = |offset: usize, more: bool| -> Vec<u8> {
                let off = ((offset / 8) as u16) << 3 | u16::from(more);
                let mut h = vec![first_next, 0];
                h.extend_from_slice(&off.to_be_bytes());
                h.extend_from_slice(&u32::from(p).to_be_bytes());
                h
            };
            let mut unfrag = Vec::new();
            for (i, e) in before.iter().enumerate() {
                let next = before.get(i + 1).map_or(FRAGMENT, ext_code);
                unfrag.extend_from_slice(&ext_bytes(*e, next));
            }
            let first_code = before.first().map_or(FRAGMENT, ext_code);
            let piece = |offset: usize, data: &[u8], more: bool| -> Vec<u8> {
                let body = [unfrag.clone(), frag_header(offset, more), data.to_vec()].concat();
                let mut ip = v6_header(src, dst, first_code, body.len());
                ip.extend_from_slice(&body);
                ethernet(path, &[], ETH_P_IPV6, &ip)
            };
            let split = split - split % 8;
            let mut frames = vec![
                piece(0, &fragmentable[..split], true),
                piece(split, &fragmentable[split..], false),
            ];
            if reverse {
                frames.reverse();
            }
            out.push(Shape {
                name: format!("v6 {name} reverse {reverse}"),
                frames,
            });
        }
    }
    // Cuts of a chained packet, and a payload length that claims more than is there.
    let ip = v6_packet(
        src,
        dst,
        &[Ext::Sized(HOPOPTS, 8), Ext::Sized(DSTOPTS, 16)],
        port(),
        path.dport,
    );
    for cut in [20, 40, 44, 48, 56, 60, 64, 70, 77, 83] {
        out.push(Shape {
            name: format!("v6 cut at {cut}"),
            frames: vec![ethernet(path, &[], ETH_P_IPV6, &ip[..cut])],
        });
    }
}

// ---------------------------------------------------------------------------------------------
// A raw link: frames out, SYN-ACKs in.

/// An AF_PACKET socket on one interface of a namespace.
pub struct RawLink {
    fd: OwnedFd,
    ifindex: i32,
}

impl RawLink {
    pub fn open(ns: &Netns, dev: &str) -> anyhow::Result<RawLink> {
        let dev = std::ffi::CString::new(dev)?;
        ns.enter(|| -> anyhow::Result<RawLink> {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2); the fd is owned at once.
            let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
            if raw < 0 {
                bail!("packet socket: {}", std::io::Error::last_os_error());
            }
            // SAFETY: raw is a new, valid fd that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: dev is a valid C string.
            let ifindex = unsafe { libc::if_nametoindex(dev.as_ptr()) } as i32;
            if ifindex == 0 {
                bail!("no interface {dev:?}");
            }
            // SAFETY: a zeroed sockaddr_ll is valid; bind reads exactly its size.
            let rc = unsafe {
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = proto;
                sll.sll_ifindex = ifindex;
                libc::bind(
                    fd.as_raw_fd(),
                    &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if rc != 0 {
                bail!("bind packet socket: {}", std::io::Error::last_os_error());
            }
            Ok(RawLink { fd, ifindex })
        })?
    }

    pub fn send(&self, frame: &[u8]) -> anyhow::Result<()> {
        // SAFETY: a zeroed sockaddr_ll is valid; sendto reads frame.len() bytes of frame.
        let rc = unsafe {
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = self.ifindex;
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&frame[..6]);
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            bail!(
                "send a {}-byte frame: {}",
                frame.len(),
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// The destination ports of SYN-ACKs coming in until `quiet` passes with none (at most
    /// `limit` in all). Only frames the link receives (not its own) count.
    pub fn syn_acks(&self, quiet: Duration, limit: Duration) -> Vec<u16> {
        let mut ports = Vec::new();
        let end = Instant::now() + limit;
        let mut buf = vec![0u8; 4096];
        loop {
            let wait = quiet.min(end.saturating_duration_since(Instant::now()));
            if wait.is_zero() {
                break;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as i32) } <= 0 {
                break;
            }
            // SAFETY: a zeroed sockaddr_ll is valid; recvfrom writes at most buf.len() bytes
            // and at most len bytes of address.
            let (n, incoming) = unsafe {
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                let n = libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    &mut sll as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                    &mut len,
                );
                (n, sll.sll_pkttype != libc::PACKET_OUTGOING)
            };
            if n <= 0 {
                break;
            }
            if incoming && let Some(port) = syn_ack_port(&buf[..n as usize]) {
                ports.push(port);
            }
        }
        ports
    }
}

/// The destination port of an untagged SYN-ACK, else None.
fn syn_ack_port(f: &[u8]) -> Option<u16> {
    let ethertype = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
    let tcp = match ethertype {
        ETH_P_IP if f.get(23) == Some(&TCP) => 14 + usize::from(f.get(14)? & 0x0f) * 4,
        ETH_P_IPV6 if f.get(20) == Some(&TCP) => 14 + 40,
        _ => return None,
    };
    let flags = *f.get(tcp + 13)?;
    (flags & 0x12 == 0x12).then(|| u16::from_be_bytes([f[tcp + 2], f[tcp + 3]]))
}
