//! Packet parsing shared by the XDP/TC programs and the user-space replayer.
//!
//! Every header is copied out of the packet through [`PacketBytes::load`] into a small fixed-size
//! buffer. In the kernel that is a bounds-checked copy from the packet's linear part (with
//! `bpf_xdp_load_bytes`/`bpf_skb_load_bytes` for bytes beyond it), so the parser itself never
//! does packet-pointer arithmetic that the verifier would have to prove safe; in user space it
//! is a slice copy. Both sides therefore run this exact code.

use crate::key::FlowKey;

/// Access to the bytes of one packet, starting at the Ethernet header.
pub trait PacketBytes {
    /// Length of the frame on the wire. For a capture this is the original length, which may
    /// exceed what was captured (snap length).
    fn wire_len(&self) -> usize;
    /// Copies `buf.len()` bytes starting at `offset` into `buf`. Returns false when those bytes
    /// are not available (beyond the packet, or beyond what a capture kept). Callers pass
    /// constant lengths, as the kernel helpers require.
    fn load(&self, offset: usize, buf: &mut [u8]) -> bool;
}

/// A packet held in memory: `data` is what was captured, `wire_len` what was on the wire.
#[derive(Clone, Copy, Debug)]
pub struct Captured<'a> {
    pub data: &'a [u8],
    pub wire_len: usize,
}

impl<'a> Captured<'a> {
    /// A packet captured whole.
    pub fn whole(data: &'a [u8]) -> Self {
        Self {
            data,
            wire_len: data.len(),
        }
    }
}

impl PacketBytes for Captured<'_> {
    #[inline(always)]
    fn wire_len(&self) -> usize {
        self.wire_len
    }
    #[inline(always)]
    fn load(&self, offset: usize, buf: &mut [u8]) -> bool {
        match offset
            .checked_add(buf.len())
            .and_then(|end| self.data.get(offset..end))
        {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_NONE: u8 = 59;
pub const IPPROTO_DSTOPTS: u8 = 60;
pub const IPPROTO_SCTP: u8 = 132;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;
pub const TCP_ECE: u8 = 0x40;
pub const TCP_CWR: u8 = 0x80;

/// At most this many VLAN tags (802.1ad outer + 802.1Q inner) are skipped.
pub const MAX_VLAN_TAGS: usize = 2;
/// At most this many IPv6 extension headers are skipped before giving up on the packet.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

/// Why a packet did not produce a flow update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Not IPv4/IPv6 (ARP, LLDP, MPLS, more than two VLAN tags, ...). Passed, not an error.
    NotIp,
    /// Truncated, inconsistent lengths, bad version, header chain too long: passed and counted.
    Malformed,
}

/// What the flow update needs to know about one packet. Aligned to 8 so that `zeroed` can
/// clear it with word stores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(8))]
pub struct Parsed {
    /// Canonical (direction-independent) flow key.
    pub key: FlowKey,
    /// The packet travels from the key's `lo` endpoint to its `hi` endpoint.
    pub from_lo: bool,
    /// IP total length (header + payload), as the header declares it.
    pub l3_len: u32,
    /// Transport payload bytes (0 for non-first fragments and protocols without ports).
    pub payload_len: u32,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    pub tcp_seq: u32,
    pub tcp_window: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// True for a fragment other than the first (no transport header).
    pub later_fragment: bool,
}

impl Parsed {
    /// Source address of this packet, in the key's 16-byte form.
    #[inline(always)]
    pub fn src_addr(&self) -> &[u8; 16] {
        if self.from_lo {
            &self.key.addr_lo
        } else {
            &self.key.addr_hi
        }
    }
}

#[inline(always)]
fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

#[inline(always)]
fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Marker for plain-data types that are valid all-zero, with a size that is a multiple of 8 and
/// an alignment of at least 8: what [`zeroed`] can produce.
///
/// # Safety
/// The implementing type must meet all three conditions.
unsafe trait ZeroWords: Sized {}

// SAFETY: integers, bools and byte arrays (all valid when zero); repr(C, align(8)), 64 bytes.
unsafe impl ZeroWords for Parsed {}

/// The parser's scratch buffer: 24 bytes (the largest header read is 20), word aligned.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Scratch([u8; 24]);

// SAFETY: a byte array, 24 bytes, align 8.
unsafe impl ZeroWords for Scratch {}

/// Fills `slot` with zeroes, 8 bytes per volatile store, in place, and returns it initialised.
/// A plain zero initialisation becomes a `memset` call in the BPF program, and the BPF
/// backend's `memset` is a byte loop: for the scratch buffer and [`Parsed`] that loop was about
/// 30 ns of every packet's cost (BENCHMARKS.md). Volatile, because LLVM merges ordinary stores
/// back into a memset; in place, because a by-value return is copied with one.
#[inline(always)]
fn zeroed<T: ZeroWords>(slot: &mut core::mem::MaybeUninit<T>) -> &mut T {
    let words = slot.as_mut_ptr().cast::<u64>();
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 8 {
        // SAFETY: `i` words are inside `slot` (size is a multiple of 8); it is 8-aligned.
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
    // SAFETY: every byte was written with zero, a valid value of `T` (ZeroWords).
    unsafe { slot.assume_init_mut() }
}

/// Parses Ethernet (+ up to two VLAN tags), IPv4/IPv6 (+ extension headers) and the transport
/// header, and returns the canonical flow key with the per-packet fields.
///
/// One 24-byte scratch buffer serves every header: the BPF stack is 512 bytes in all.
#[inline(always)]
pub fn parse<P: PacketBytes>(pkt: &P) -> Result<Parsed, Skip> {
    let wire_len = pkt.wire_len();
    let mut scratch = core::mem::MaybeUninit::<Scratch>::uninit();
    let b = &mut zeroed(&mut scratch).0;
    if !pkt.load(0, &mut b[..14]) {
        return Err(Skip::Malformed);
    }
    let mut ethertype = be16(b, 12);
    let mut off = 14usize;
    let mut slot = core::mem::MaybeUninit::<Parsed>::uninit();
    let p = zeroed(&mut slot);
    let mut tags = 0;
    while tags < MAX_VLAN_TAGS && (ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD) {
        if !pkt.load(off, &mut b[..4]) {
            return Err(Skip::Malformed);
        }
        // The outermost tag names the flow's VLAN.
        if tags == 0 {
            p.key.vlan = be16(b, 0) & 0x0fff;
        }
        ethertype = be16(b, 2);
        off += 4;
        tags += 1;
    }

    // Source and destination go into addr_lo/addr_hi first; canonical order is fixed at the end.
    let l3_off = off;
    let l3_end;
    let mut proto;
    let mut l4_off;
    if ethertype == ETH_P_IPV4 {
        if !pkt.load(off, &mut b[..20]) {
            return Err(Skip::Malformed);
        }
        let ihl = ((b[0] & 0x0f) as usize) * 4;
        let tot_len = be16(b, 2) as usize;
        if b[0] >> 4 != 4 || ihl < 20 || tot_len < ihl || l3_off + tot_len > wire_len {
            return Err(Skip::Malformed);
        }
        p.later_fragment = be16(b, 6) & 0x1fff != 0;
        proto = b[9];
        // Addresses are loaded straight into the key: copying them byte by byte through
        // registers costs the BPF program hundreds of bytes of stack in spills.
        if !pkt.load(off + 12, &mut p.key.addr_lo[..4])
            || !pkt.load(off + 16, &mut p.key.addr_hi[..4])
        {
            return Err(Skip::Malformed);
        }
        p.key.family = 4;
        p.l3_len = tot_len as u32;
        l3_end = l3_off + tot_len;
        l4_off = l3_off + ihl;
    } else if ethertype == ETH_P_IPV6 {
        if !pkt.load(off, &mut b[..8])
            || !pkt.load(off + 8, &mut p.key.addr_lo)
            || !pkt.load(off + 24, &mut p.key.addr_hi)
        {
            return Err(Skip::Malformed);
        }
        let payload_len = be16(b, 4) as usize;
        // A zero payload length means a jumbogram (hop-by-hop option), not seen on our links.
        if b[0] >> 4 != 6 || payload_len == 0 || l3_off + 40 + payload_len > wire_len {
            return Err(Skip::Malformed);
        }
        proto = b[6];
        p.key.family = 6;
        p.l3_len = (40 + payload_len) as u32;
        l3_end = l3_off + 40 + payload_len;
        l4_off = l3_off + 40;
        let mut n = 0;
        while n < MAX_IPV6_EXT_HEADERS {
            let len = match proto {
                IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                    if !pkt.load(l4_off, &mut b[..2]) {
                        return Err(Skip::Malformed);
                    }
                    (b[1] as usize + 1) * 8
                }
                IPPROTO_AH => {
                    if !pkt.load(l4_off, &mut b[..2]) {
                        return Err(Skip::Malformed);
                    }
                    (b[1] as usize + 2) * 4
                }
                IPPROTO_FRAGMENT => {
                    if !pkt.load(l4_off, &mut b[..8]) {
                        return Err(Skip::Malformed);
                    }
                    if be16(b, 2) & 0xfff8 != 0 {
                        p.later_fragment = true;
                    }
                    8
                }
                _ => break,
            };
            proto = b[0];
            l4_off += len;
            if l4_off > l3_end {
                return Err(Skip::Malformed);
            }
            n += 1;
        }
        if n == MAX_IPV6_EXT_HEADERS
            && matches!(
                proto,
                IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT
            )
        {
            return Err(Skip::Malformed);
        }
    } else {
        return Err(Skip::NotIp);
    }
    p.key.proto = proto;

    let mut sport: u16 = 0;
    let mut dport: u16 = 0;
    if !p.later_fragment {
        if proto == IPPROTO_TCP {
            if !pkt.load(l4_off, &mut b[..20]) {
                return Err(Skip::Malformed);
            }
            let doff = ((b[12] >> 4) as usize) * 4;
            if doff < 20 || l4_off + doff > l3_end {
                return Err(Skip::Malformed);
            }
            sport = be16(b, 0);
            dport = be16(b, 2);
            p.tcp_seq = be32(b, 4);
            p.tcp_flags = b[13];
            p.tcp_window = be16(b, 14);
            p.payload_len = (l3_end - l4_off - doff) as u32;
        } else if proto == IPPROTO_UDP || proto == IPPROTO_SCTP {
            // SCTP's common header starts with the two ports, like UDP.
            let hdr = if proto == IPPROTO_UDP { 8 } else { 12 };
            if !pkt.load(l4_off, &mut b[..8]) || l4_off + hdr > l3_end {
                return Err(Skip::Malformed);
            }
            sport = be16(b, 0);
            dport = be16(b, 2);
            p.payload_len = (l3_end - l4_off - hdr) as u32;
        } else if proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6 {
            if !pkt.load(l4_off, &mut b[..8]) || l4_off + 8 > l3_end {
                return Err(Skip::Malformed);
            }
            p.icmp_type = b[0];
            p.icmp_code = b[1];
            // Echo request and reply share the identifier: use it as both "ports" so the two
            // directions of a ping form one flow.
            let echo = if proto == IPPROTO_ICMP {
                b[0] == 8 || b[0] == 0
            } else {
                b[0] == 128 || b[0] == 129
            };
            if echo {
                sport = be16(b, 4);
                dport = sport;
            }
            p.payload_len = (l3_end - l4_off - 8) as u32;
        }
    }

    // Canonical order: the (address, port) pair that sorts first is `lo`.
    p.key.port_lo = sport;
    p.key.port_hi = dport;
    p.from_lo = p.key.canonicalize();
    Ok(*p)
}
