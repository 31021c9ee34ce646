//! Packet parsing: Ethernet, up to two VLAN tags, IPv4 or IPv6 (with a bounded walk of extension
//! headers), TCP. Works on a `[start, end)` byte range so that the same code runs in the kernel
//! (`ctx.data()..ctx.data_end()`) and in host unit tests (a slice's address range).
//!
//! Every read goes through [`ptr_at`], which checks the bound first: the BPF verifier rejects any
//! packet access it cannot prove in range.

use sg_common::Addr;

/// Why a packet could not be parsed before its source address was known. The program passes
/// such packets and counts them: with no source, there is nobody to judge (the stack drops
/// them too: no listener ever sees a frame without a whole IP header). The one exception is
/// [`ParseError::TooManyVlanTags`], which is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The packet ends inside the link or IP header.
    Truncated,
    /// IPv4 version or IHL not valid (RFC 791: IHL >= 5), or IPv6 version not 6.
    BadHeader,
    /// More VLAN tags than [`MAX_VLAN_TAGS`]: the source is out of reach, but the stack may
    /// still find a SYN under them. No honest sender stacks that many, so the program drops it.
    TooManyVlanTags,
}

/// What the program needs to know about a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet {
    /// Not TCP, or not a first fragment: nothing for slowgate to look at.
    Other,
    /// A TCP segment (or the first fragment of one).
    Tcp(Tcp),
    /// An IP packet from this source whose transport header the walk cannot reach: an IPv6
    /// chain longer than [`MAX_EXT_HEADERS`], headers past [`MAX_OFFSET`], a header cut short.
    /// The stack may still find a SYN in it (Linux walks any number of extension headers), so
    /// it is judged by its source as a new connection would be, never passed blindly.
    Opaque(Addr),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tcp {
    /// Source in the mapped 16-byte form.
    pub src: Addr,
    /// Destination, the same form (for socket lookups).
    pub dst: Addr,
    /// Source port, host byte order.
    pub sport: u16,
    /// Destination port, host byte order.
    pub dport: u16,
    /// A connection opening: SYN without ACK. A first fragment too short to carry the flags
    /// counts as one (RFC 1858 "tiny fragment" attack: a real stack never sends it).
    pub new_connection: bool,
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HLEN: usize = 4;
/// 802.1Q and 802.1ad tags walked before the IP header. QinQ carries two, but Linux strips any
/// number of priority tags (VLAN id 0), so a deeper stack still reaches the listener; a frame
/// with more tags than this is refused ([`ParseError::TooManyVlanTags`]), never passed.
pub const MAX_VLAN_TAGS: usize = 8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
/// RFC 8200 section 4.1: a conforming packet has at most one of each extension header (two
/// Destination Options), so 8 covers every conforming chain. Longer chains are valid for Linux
/// and become [`Packet::Opaque`].
pub const MAX_EXT_HEADERS: usize = 8;

const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;
/// A TCP header without options (RFC 9293 section 3.1); the flags are at offset 13.
const TCP_HLEN: usize = 20;

/// Headers never reach this far into a packet; the bound lets the verifier prove every
/// variable-offset access safe.
const MAX_OFFSET: usize = 1024;

/// Returns a pointer to a `T` at `off` bytes from `start`, if it lies entirely before `end`.
///
/// # Safety
/// `start..end` must be a readable byte range (the packet, or a slice in tests). The returned
/// pointer may be unaligned: read it with `read_unaligned` or use byte arrays.
#[inline(always)]
unsafe fn ptr_at<T>(start: usize, end: usize, off: usize) -> Result<*const T, ParseError> {
    if off > MAX_OFFSET {
        return Err(ParseError::Truncated);
    }
    if start + off + core::mem::size_of::<T>() > end {
        return Err(ParseError::Truncated);
    }
    Ok((start + off) as *const T)
}

/// Loads a `T` from a pointer that may be unaligned. On BPF this is one load instruction (the
/// verifier accepts misaligned packet loads on architectures with efficient unaligned access,
/// and no BPF instruction traps on alignment); on the host it is `read_unaligned`.
///
/// # Safety
/// `p` must point to `size_of::<T>()` readable bytes.
#[inline(always)]
unsafe fn load<T: Copy>(p: *const T) -> T {
    #[cfg(target_arch = "bpf")]
    // SAFETY: see above; LLVM's BPF backend otherwise splits the load into single bytes.
    unsafe {
        core::ptr::read(p)
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: the caller guarantees the bytes are readable.
    unsafe {
        core::ptr::read_unaligned(p)
    }
}

#[inline(always)]
fn read<const N: usize>(start: usize, end: usize, off: usize) -> Result<[u8; N], ParseError> {
    // SAFETY: ptr_at checked that N bytes at off lie inside the range; [u8; N] has alignment 1.
    unsafe { Ok(*ptr_at::<[u8; N]>(start, end, off)?) }
}

/// Parses the packet in `start..end`.
///
/// # Safety
/// `start..end` must be a readable byte range.
#[inline(always)]
pub unsafe fn parse(start: usize, end: usize) -> Result<Packet, ParseError> {
    let eth: [u8; ETH_HLEN] = read(start, end, 0)?;
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let tag: [u8; VLAN_HLEN] = read(start, end, off)?;
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        off += VLAN_HLEN;
    }
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        return Err(ParseError::TooManyVlanTags);
    }
    match ethertype {
        ETH_P_IP => ipv4(start, end, off),
        ETH_P_IPV6 => ipv6(start, end, off),
        _ => Ok(Packet::Other),
    }
}

/// RFC 791 section 3.1.
#[inline(always)]
fn ipv4(start: usize, end: usize, off: usize) -> Result<Packet, ParseError> {
    let ip: [u8; 20] = read(start, end, off)?;
    if ip[0] >> 4 != 4 {
        return Err(ParseError::BadHeader);
    }
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    if header_len < 20 {
        return Err(ParseError::BadHeader);
    }
    // SAFETY: read() above checked that the 20-byte header is in range.
    let v4: u32 = unsafe { load(ptr_at::<u32>(start, end, off + 12)?) };
    let mapped = u64::from(u32::from_ne_bytes([0, 0, 0xff, 0xff])) | (u64::from(v4) << 32);
    // SAFETY: two u64 are 16 bytes; any bytes are a valid Addr.
    let src: Addr = unsafe { core::mem::transmute::<[u64; 2], Addr>([0, mapped]) };
    let dst = sg_common::map_v4([ip[16], ip[17], ip[18], ip[19]]);
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    let more_fragments = frag & 0x2000 != 0;
    if frag & 0x1fff != 0 {
        // Only the first fragment carries the TCP header; the stack cannot reassemble a
        // segment whose first fragment was dropped.
        return Ok(Packet::Other);
    }
    if ip[9] != IPPROTO_TCP {
        return Ok(Packet::Other);
    }
    // Options must be present in full, even though we skip them.
    if start + off + header_len > end {
        return Ok(Packet::Opaque(src));
    }
    Ok(tcp(
        start,
        end,
        off + header_len,
        (src, dst),
        more_fragments,
    ))
}

/// RFC 8200 sections 3 and 4.
#[inline(always)]
fn ipv6(start: usize, end: usize, off: usize) -> Result<Packet, ParseError> {
    let ip: [u8; 40] = read(start, end, off)?;
    if ip[0] >> 4 != 6 {
        return Err(ParseError::BadHeader);
    }
    // SAFETY: read() above checked that the 40-byte header is in range.
    let words: [u64; 2] = unsafe { load(ptr_at::<[u64; 2]>(start, end, off + 8)?) };
    // SAFETY: two u64 are 16 bytes; any bytes are a valid Addr.
    let src: Addr = unsafe { core::mem::transmute::<[u64; 2], Addr>(words) };
    let mut dst: Addr = [0; 16];
    dst.copy_from_slice(&ip[24..40]);
    let mut next = ip[6];
    let mut off = off + 40;
    let mut fragmented = false;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPPROTO_TCP => return Ok(tcp(start, end, off, (src, dst), fragmented)),
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                // Hdr Ext Len is in 8-octet units, not counting the first 8 octets.
                let Ok(ext) = read::<2>(start, end, off) else {
                    return Ok(Packet::Opaque(src));
                };
                next = ext[0];
                off += (usize::from(ext[1]) + 1) * 8;
            }
            IPPROTO_AH => {
                // RFC 4302 section 2.2: Payload Len is in 4-octet units, minus 2.
                let Ok(ext) = read::<2>(start, end, off) else {
                    return Ok(Packet::Opaque(src));
                };
                next = ext[0];
                off += (usize::from(ext[1]) + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let Ok(ext) = read::<8>(start, end, off) else {
                    return Ok(Packet::Opaque(src));
                };
                next = ext[0];
                let frag = u16::from_be_bytes([ext[2], ext[3]]);
                if frag >> 3 != 0 {
                    // Not the first fragment: no transport header in it.
                    return Ok(Packet::Other);
                }
                fragmented = true;
                off += 8;
            }
            _ => return Ok(Packet::Other),
        }
    }
    match next {
        IPPROTO_TCP => Ok(tcp(start, end, off, (src, dst), fragmented)),
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT => {
            Ok(Packet::Opaque(src))
        }
        _ => Ok(Packet::Other),
    }
}

/// RFC 9293 section 3.1. A header cut short is judged by its source ([`Packet::Opaque`]);
/// in a first fragment, a header too short to show the flags is a new connection.
#[inline(always)]
fn tcp(start: usize, end: usize, off: usize, (src, dst): (Addr, Addr), fragment: bool) -> Packet {
    let Ok(ports) = read::<4>(start, end, off) else {
        return Packet::Opaque(src);
    };
    let sport = u16::from_be_bytes([ports[0], ports[1]]);
    let dport = u16::from_be_bytes([ports[2], ports[3]]);
    let new_connection = match read::<TCP_HLEN>(start, end, off) {
        Ok(head) => head[13] & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN,
        Err(_) if fragment => true,
        Err(_) => return Packet::Opaque(src),
    };
    Packet::Tcp(Tcp {
        src,
        dst,
        sport,
        dport,
        new_connection,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sg_common::map_v4;

    fn parse_bytes(pkt: &[u8]) -> Result<Packet, ParseError> {
        let start = pkt.as_ptr() as usize;
        // SAFETY: start..start + len is the slice, readable for the call.
        unsafe { parse(start, start + pkt.len()) }
    }

    fn eth(ethertype: u16) -> Vec<u8> {
        let mut p = vec![0u8; 12];
        p.extend_from_slice(&ethertype.to_be_bytes());
        p
    }

    fn tcp_header(dport: u16, flags: u8) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        t
    }

    fn ipv4_syn(dport: u16) -> Vec<u8> {
        let mut p = eth(ETH_P_IP);
        let mut ip = vec![0u8; 20];
        ip[0] = 0x45;
        ip[9] = IPPROTO_TCP;
        ip[12..16].copy_from_slice(&[203, 0, 113, 9]);
        p.extend_from_slice(&ip);
        p.extend_from_slice(&tcp_header(dport, TCP_FLAG_SYN));
        p
    }

    #[test]
    fn ipv4_syn_is_a_new_connection_from_its_mapped_source() {
        let got = parse_bytes(&ipv4_syn(25)).unwrap();
        assert_eq!(
            got,
            Packet::Tcp(Tcp {
                src: map_v4([203, 0, 113, 9]),
                dst: map_v4([0, 0, 0, 0]),
                sport: 40000,
                dport: 25,
                new_connection: true
            })
        );
    }

    #[test]
    fn a_truncated_ipv4_syn_is_an_error_before_its_source_and_opaque_after() {
        let pkt = ipv4_syn(25);
        let source_known = ETH_HLEN + 20;
        for len in 0..pkt.len() {
            let want = if len < source_known {
                Err(ParseError::Truncated)
            } else {
                Ok(Packet::Opaque(map_v4([203, 0, 113, 9])))
            };
            assert_eq!(parse_bytes(&pkt[..len]), want, "len {len}");
        }
    }

    #[test]
    fn syn_ack_is_not_a_new_connection() {
        let mut pkt = ipv4_syn(25);
        let flags = pkt.len() - 7;
        pkt[flags] = TCP_FLAG_SYN | TCP_FLAG_ACK;
        assert!(matches!(
            parse_bytes(&pkt),
            Ok(Packet::Tcp(Tcp {
                new_connection: false,
                ..
            }))
        ));
    }

    #[test]
    fn ihl_below_five_is_a_bad_header() {
        let mut pkt = ipv4_syn(25);
        pkt[14] = 0x44;
        assert_eq!(parse_bytes(&pkt), Err(ParseError::BadHeader));
    }

    fn ipv6_with(exts: &[(u8, usize)]) -> (Vec<u8>, Addr) {
        let mut p = eth(ETH_P_IPV6);
        let mut ip = vec![0u8; 40];
        ip[0] = 0x60;
        ip[6] = exts.first().map_or(IPPROTO_TCP, |e| e.0);
        ip[8..24].copy_from_slice(&[0x20, 1, 0x0d, 0xb8, 0, 0xa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
        let mut src = [0u8; 16];
        src.copy_from_slice(&ip[8..24]);
        p.extend_from_slice(&ip);
        for (i, &(_, len)) in exts.iter().enumerate() {
            let next = exts.get(i + 1).map_or(IPPROTO_TCP, |e| e.0);
            let mut h = vec![0u8; len];
            h[0] = next;
            h[1] = (len / 8 - 1) as u8;
            p.extend_from_slice(&h);
        }
        p.extend_from_slice(&tcp_header(25, TCP_FLAG_SYN));
        (p, src)
    }

    #[test]
    fn an_ipv6_chain_the_walk_cannot_finish_is_judged_by_its_source() {
        // Nine Destination Options: one more than the walk.
        let (p, src) = ipv6_with(&[(IPPROTO_DSTOPTS, 8); MAX_EXT_HEADERS + 1]);
        assert_eq!(parse_bytes(&p), Ok(Packet::Opaque(src)));
        // One header longer than the offset bound (Hdr Ext Len 160: 1,288 bytes).
        let (p, src) = ipv6_with(&[(IPPROTO_DSTOPTS, 1288)]);
        assert_eq!(parse_bytes(&p), Ok(Packet::Opaque(src)));
        // Cut inside the chain, inside TCP.
        let (p, src) = ipv6_with(&[(IPPROTO_HOPOPTS, 8), (IPPROTO_DSTOPTS, 16)]);
        for len in ETH_HLEN + 40..p.len() - TCP_HLEN + 13 {
            assert_eq!(parse_bytes(&p[..len]), Ok(Packet::Opaque(src)), "len {len}");
        }
        // Eight is still walked to the end.
        let (p, src) = ipv6_with(&[(IPPROTO_DSTOPTS, 8); MAX_EXT_HEADERS]);
        assert_eq!(
            parse_bytes(&p),
            Ok(Packet::Tcp(Tcp {
                src,
                dst: [0; 16],
                sport: 40000,
                dport: 25,
                new_connection: true
            }))
        );
    }
}
