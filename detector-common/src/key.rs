//! The flow key: a flow's two endpoints, protocol and VLAN, in a canonical order so that both
//! directions of a flow find one entry. The packet parser fills it, the flow table is keyed by
//! it; it depends on neither.

/// Canonical, direction-independent flow key: the endpoint that sorts first by (address, port)
/// is `lo`. IPv4 addresses occupy the first 4 bytes of the 16-byte fields, the rest is zero.
/// 8-byte alignment lets the BPF program compare and swap addresses as two u64 words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlowKey {
    pub addr_lo: [u8; 16],
    pub addr_hi: [u8; 16],
    pub port_lo: u16,
    pub port_hi: u16,
    /// Transport protocol (IPPROTO_*), after IPv6 extension headers.
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    /// Outermost 802.1Q/802.1ad VLAN id, 0 when untagged.
    pub vlan: u16,
}

/// One `write` of the key's 40 bytes. The derived impl made nine (a length prefix and the
/// bytes per address, then a call per field), and the agent hashes flow keys with SipHash, whose
/// per-call overhead made up most of its context lookups (BENCHMARKS.md).
impl core::hash::Hash for FlowKey {
    #[inline]
    fn hash<H: core::hash::Hasher>(&self, h: &mut H) {
        let mut b = [0u8; 40];
        b[..16].copy_from_slice(&self.addr_lo);
        b[16..32].copy_from_slice(&self.addr_hi);
        b[32..34].copy_from_slice(&self.port_lo.to_ne_bytes());
        b[34..36].copy_from_slice(&self.port_hi.to_ne_bytes());
        b[36] = self.proto;
        b[37] = self.family;
        b[38..40].copy_from_slice(&self.vlan.to_ne_bytes());
        h.write(&b);
    }
}

impl FlowKey {
    #[inline(always)]
    fn words(&self) -> [u64; 4] {
        // SAFETY: FlowKey is align(8) and the two addresses fill its first 32 bytes.
        unsafe { *(self as *const Self as *const [u64; 4]) }
    }
    #[inline(always)]
    fn set_words(&mut self, w: [u64; 4]) {
        // SAFETY: as in `words`; any bit pattern is a valid address.
        unsafe { *(self as *mut Self as *mut [u64; 4]) = w }
    }
    /// Puts the endpoint that sorts first by (address, port) into `lo`, given a key filled as
    /// lo = source, hi = destination. Returns true when the source stayed `lo`.
    #[inline(always)]
    pub fn canonicalize(&mut self) -> bool {
        let w = self.words();
        // Big-endian words compare like the address bytes.
        let (a0, a1, b0, b1) = (
            u64::from_be(w[0]),
            u64::from_be(w[1]),
            u64::from_be(w[2]),
            u64::from_be(w[3]),
        );
        let src_first = if a0 != b0 {
            a0 < b0
        } else if a1 != b1 {
            a1 < b1
        } else {
            self.port_lo <= self.port_hi
        };
        if !src_first {
            self.set_words([w[2], w[3], w[0], w[1]]);
            core::mem::swap(&mut self.port_lo, &mut self.port_hi);
        }
        src_first
    }
}
