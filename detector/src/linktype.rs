//! Captures of other link types, seen as the Ethernet frames the flow logic parses (the kernel
//! programs see Ethernet only): the link header is replaced by an Ethernet header with the same
//! protocol. Lengths the flow logic counts are the IP packet's, so nothing it counts changes.

use crate::pcap::{
    LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_NULL, LINKTYPE_RAW,
};

/// PPP (`LINKTYPE_PPP`).
pub const LINKTYPE_PPP: u32 = 9;
/// Cisco HDLC (`LINKTYPE_C_HDLC`).
pub const LINKTYPE_C_HDLC: u32 = 104;
/// OpenBSD loopback, the address family in network order (`LINKTYPE_LOOP`).
pub const LINKTYPE_LOOP: u32 = 108;
/// Raw IPv4 and raw IPv6 (`LINKTYPE_IPV4`, `LINKTYPE_IPV6`).
pub const LINKTYPE_IPV4: u32 = 228;
pub const LINKTYPE_IPV6: u32 = 229;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_HEADER: usize = 14;

/// Whether captures of this link type can be replayed.
pub fn supported(link_type: u32) -> bool {
    matches!(
        link_type,
        LINKTYPE_ETHERNET
            | LINKTYPE_NULL
            | LINKTYPE_LOOP
            | LINKTYPE_RAW
            | LINKTYPE_IPV4
            | LINKTYPE_IPV6
            | LINKTYPE_LINUX_SLL
            | LINKTYPE_LINUX_SLL2
            | LINKTYPE_PPP
            | LINKTYPE_C_HDLC
    )
}

/// The link header's length and the protocol (an ethertype) of what follows it; None when the
/// header is cut short or names nothing the flow logic could read.
fn header(link_type: u32, data: &[u8]) -> Option<(usize, u16)> {
    let be16 = |at: usize| Some(u16::from_be_bytes([*data.get(at)?, *data.get(at + 1)?]));
    // The IP version in the first nibble, for links without a protocol field.
    let by_version = |at: usize| match data.get(at)? >> 4 {
        4 => Some(ETH_P_IPV4),
        6 => Some(ETH_P_IPV6),
        _ => None,
    };
    match link_type {
        LINKTYPE_RAW | LINKTYPE_IPV4 | LINKTYPE_IPV6 => Some((0, by_version(0)?)),
        // BSD loopback: a 4-byte address family in the capturing host's byte order (NULL) or
        // network order (LOOP); 2 is IPv4, 24, 28 and 30 are IPv6 on the BSDs and macOS.
        LINKTYPE_NULL | LINKTYPE_LOOP => {
            let b: [u8; 4] = data.get(..4)?.try_into().ok()?;
            let family = if link_type == LINKTYPE_LOOP || u32::from_le_bytes(b) > 0xffff {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            };
            match family {
                2 => Some((4, ETH_P_IPV4)),
                24 | 28 | 30 => Some((4, ETH_P_IPV6)),
                _ => None,
            }
        }
        // Linux cooked v1: 16 bytes, the protocol last; v2: 20 bytes, the protocol first.
        LINKTYPE_LINUX_SLL => Some((16, be16(14)?)),
        LINKTYPE_LINUX_SLL2 => Some((20, be16(0)?)),
        // PPP, with or without the HDLC address and control bytes (ff 03) before the protocol.
        LINKTYPE_PPP => {
            let at = if data.starts_with(&[0xff, 0x03]) {
                2
            } else {
                0
            };
            match be16(at)? {
                0x0021 => Some((at + 2, ETH_P_IPV4)),
                0x0057 => Some((at + 2, ETH_P_IPV6)),
                _ => None,
            }
        }
        // Cisco HDLC: address, control, then an ethertype.
        LINKTYPE_C_HDLC => Some((4, be16(2)?)),
        _ => None,
    }
}

/// The packet as an Ethernet frame, and its length on the wire as one: `data` itself for
/// Ethernet, else a frame built in `buf`. A packet whose link header is cut short or carries
/// no protocol the flow logic reads becomes a frame of no known protocol, counted as not IP.
pub fn as_ethernet<'a>(
    link_type: u32,
    data: &'a [u8],
    wire_len: usize,
    buf: &'a mut Vec<u8>,
) -> (&'a [u8], usize) {
    if link_type == LINKTYPE_ETHERNET {
        return (data, wire_len);
    }
    let (skip, ethertype) = header(link_type, data).unwrap_or((data.len(), 0));
    let skip = skip.min(data.len());
    buf.clear();
    buf.extend_from_slice(&[0u8; 12]);
    buf.extend_from_slice(&ethertype.to_be_bytes());
    buf.extend_from_slice(&data[skip..]);
    let wire = (wire_len.saturating_sub(skip) + ETH_HEADER).max(buf.len());
    (&buf[..], wire)
}

#[cfg(test)]
mod tests {
    use super::*;
    use detector_common::{
        packet::{parse, Captured, IPPROTO_UDP},
        testpkt::udp4,
    };

    /// An Ethernet UDP frame's IP packet behind each link type's header parses to the same key
    /// and length.
    #[test]
    fn every_link_type_gives_the_ethernet_frames_packet() {
        let eth = udp4([10, 0, 0, 1], 1000, [10, 0, 0, 2], 53, 30);
        let ip = &eth[ETH_HEADER..];
        let want = parse(&Captured::whole(&eth)).unwrap();
        let with = |head: &[u8]| [head, ip].concat();
        let cases: Vec<(u32, Vec<u8>)> = vec![
            (LINKTYPE_RAW, ip.to_vec()),
            (LINKTYPE_IPV4, ip.to_vec()),
            (LINKTYPE_NULL, with(&2u32.to_le_bytes())),
            (LINKTYPE_NULL, with(&2u32.to_be_bytes())),
            (LINKTYPE_LOOP, with(&2u32.to_be_bytes())),
            (
                LINKTYPE_LINUX_SLL,
                with(&[0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0x08, 0x00]),
            ),
            (
                LINKTYPE_LINUX_SLL2,
                with(&[
                    0x08, 0x00, 0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0,
                ]),
            ),
            (LINKTYPE_PPP, with(&[0xff, 0x03, 0x00, 0x21])),
            (LINKTYPE_PPP, with(&[0x00, 0x21])),
            (LINKTYPE_C_HDLC, with(&[0x0f, 0x00, 0x08, 0x00])),
        ];
        for (lt, data) in cases {
            assert!(supported(lt));
            let mut buf = Vec::new();
            let (frame, wire) = as_ethernet(lt, &data, data.len(), &mut buf);
            assert_eq!(wire, eth.len(), "link type {lt}");
            let got = parse(&Captured::whole(frame)).unwrap_or_else(|_| panic!("link type {lt}"));
            assert_eq!(got.key, want.key, "link type {lt}");
            assert_eq!(got.key.proto, IPPROTO_UDP);
        }
    }

    #[test]
    fn a_short_or_foreign_header_is_no_ip() {
        let mut buf = Vec::new();
        for (lt, data) in [
            (LINKTYPE_LINUX_SLL, vec![0u8; 5]),
            (LINKTYPE_NULL, 7u32.to_le_bytes().to_vec()),
            (LINKTYPE_PPP, vec![0xc0, 0x21, 1, 2]),
        ] {
            let (frame, _) = as_ethernet(lt, &data, data.len(), &mut buf);
            assert_eq!(&frame[12..14], &[0, 0], "link type {lt}");
        }
        assert!(!supported(105), "802.11 is not read");
    }
}
