//! Builders for test packets (Ethernet frames), used by unit tests here and by the integration
//! tests that feed the real XDP program through BPF_PROG_TEST_RUN.

use std::vec::Vec;

use crate::packet::{
    ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};

/// An Ethernet frame around `l3`, with optional VLAN tags given as (TPID, VLAN id).
pub fn eth(ethertype: u16, vlans: &[(u16, u16)], l3: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 4 * vlans.len() + l3.len());
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01]);
    for &(tpid, vid) in vlans {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet (header checksum filled in; options padded to 4 bytes by the caller).
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, options: &[u8], l4: &[u8]) -> Vec<u8> {
    let ihl = 20 + options.len();
    let tot = ihl + l4.len();
    let mut h = Vec::with_capacity(tot);
    h.push(0x40 | (ihl / 4) as u8);
    h.push(0);
    h.extend_from_slice(&(tot as u16).to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(options);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(l4);
    h
}

/// An IPv6 packet; `ext` are extension headers as (header type, body after the 2-byte
/// next/length prefix; padded to a multiple of 8 with that prefix).
pub fn ipv6(src: [u8; 16], dst: [u8; 16], proto: u8, ext: &[(u8, Vec<u8>)], l4: &[u8]) -> Vec<u8> {
    let mut chain = Vec::new();
    for (i, (_, body)) in ext.iter().enumerate() {
        let next = ext.get(i + 1).map(|e| e.0).unwrap_or(proto);
        let total = (2 + body.len()).div_ceil(8) * 8;
        chain.push(next);
        chain.push((total / 8 - 1) as u8);
        chain.extend_from_slice(body);
        chain.resize(chain.len() + total - 2 - body.len(), 0);
    }
    let first = ext.first().map(|e| e.0).unwrap_or(proto);
    let payload = chain.len() + l4.len();
    let mut h = Vec::with_capacity(40 + payload);
    h.extend_from_slice(&[0x60, 0, 0, 0]);
    h.extend_from_slice(&(payload as u16).to_be_bytes());
    h.push(first);
    h.push(64);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&chain);
    h.extend_from_slice(l4);
    h
}

/// A TCP segment (checksum left zero: the flow logic does not look at it).
pub fn tcp(sport: u16, dport: u16, seq: u32, flags: u8, window: u16, payload: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(20 + payload.len());
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&seq.to_be_bytes());
    s.extend_from_slice(&0u32.to_be_bytes());
    s.push(5 << 4);
    s.push(flags);
    s.extend_from_slice(&window.to_be_bytes());
    s.extend_from_slice(&[0, 0, 0, 0]);
    s.extend_from_slice(payload);
    s
}

/// A UDP datagram.
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(8 + payload.len());
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    s.extend_from_slice(&[0, 0]);
    s.extend_from_slice(payload);
    s
}

/// An ICMP (or ICMPv6) message with the echo layout: type, code, checksum, id, sequence.
pub fn icmp(icmp_type: u8, code: u8, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut s = vec![icmp_type, code, 0, 0];
    s.extend_from_slice(&id.to_be_bytes());
    s.extend_from_slice(&seq.to_be_bytes());
    s.extend_from_slice(payload);
    s
}

/// An IPv4 TCP frame with `payload_len` zero bytes of payload.
pub fn tcp4(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    flags: u8,
    seq: u32,
    payload_len: usize,
) -> Vec<u8> {
    let l4 = tcp(sport, dport, seq, flags, 29200, &vec![0u8; payload_len]);
    eth(ETH_P_IPV4, &[], &ipv4(src, dst, IPPROTO_TCP, &[], &l4))
}

/// An IPv4 UDP frame.
pub fn udp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload_len: usize) -> Vec<u8> {
    eth(
        ETH_P_IPV4,
        &[],
        &ipv4(
            src,
            dst,
            IPPROTO_UDP,
            &[],
            &udp(sport, dport, &vec![0u8; payload_len]),
        ),
    )
}

/// An IPv4 ICMP echo request (type 8) or reply (type 0) frame.
pub fn icmp4(
    src: [u8; 4],
    dst: [u8; 4],
    icmp_type: u8,
    id: u16,
    seq: u16,
    payload_len: usize,
) -> Vec<u8> {
    let l4 = icmp(icmp_type, 0, id, seq, &vec![0u8; payload_len]);
    eth(ETH_P_IPV4, &[], &ipv4(src, dst, IPPROTO_ICMP, &[], &l4))
}

/// An IPv6 UDP frame with the given extension headers.
pub fn udp6(
    src: [u8; 16],
    sport: u16,
    dst: [u8; 16],
    dport: u16,
    ext: &[(u8, Vec<u8>)],
    payload_len: usize,
) -> Vec<u8> {
    eth(
        ETH_P_IPV6,
        &[],
        &ipv6(
            src,
            dst,
            IPPROTO_UDP,
            ext,
            &udp(sport, dport, &vec![0u8; payload_len]),
        ),
    )
}

/// An IPv6 ICMPv6 echo frame.
pub fn icmp6(
    src: [u8; 16],
    dst: [u8; 16],
    icmp_type: u8,
    id: u16,
    seq: u16,
    payload_len: usize,
) -> Vec<u8> {
    let l4 = icmp(icmp_type, 0, id, seq, &vec![0u8; payload_len]);
    eth(ETH_P_IPV6, &[], &ipv6(src, dst, IPPROTO_ICMPV6, &[], &l4))
}

/// A frame with one 802.1Q tag (VLAN id `vid`) around an IPv4 TCP segment.
pub fn tcp4_vlan(
    vid: u16,
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    let l4 = tcp(sport, dport, 1, flags, 1000, &[]);
    eth(
        ETH_P_IPV4,
        &[(ETH_P_8021Q, vid)],
        &ipv4(src, dst, IPPROTO_TCP, &[], &l4),
    )
}

/// The 16-byte key form of an IPv4 address.
pub fn v4key(a: [u8; 4]) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..4].copy_from_slice(&a);
    k
}
