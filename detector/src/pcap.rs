//! Capture files through `pcap-parser`: classic pcap (either byte order, µs or ns timestamps) and
//! pcapng (any number of sections and interfaces), read as a stream. `detector replay` and the
//! tests read captures through it.
//!
//! The crate frames and decodes the records. What stays here: each packet's timestamp in ns and
//! link type from its file header or interface, the limits that keep a corrupt length from
//! allocating gigabytes, and errors that name the file, the byte offset and what is wrong, where
//! the crate only says "incomplete" or "parse error". Nothing here panics on any input. A packet
//! borrows the reader's buffer until the next call.

use std::{
    fs::File,
    io::{self, Read},
    path::Path,
    sync::{Arc, Mutex},
};

use pcap_parser::{
    traits::PcapReaderIterator, Block, InterfaceDescriptionBlock, LegacyPcapReader, OptionCode,
    PcapBlockOwned, PcapHeader, PcapNGReader,
};

/// Ethernet (`LINKTYPE_ETHERNET`), the only link type the flow logic parses.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// BSD loopback (`LINKTYPE_NULL`).
pub const LINKTYPE_NULL: u32 = 0;
/// Raw IPv4 or IPv6, no link header (`LINKTYPE_RAW`).
pub const LINKTYPE_RAW: u32 = 101;
/// Linux "any" device cooked header, v1 (`LINKTYPE_LINUX_SLL`).
pub const LINKTYPE_LINUX_SLL: u32 = 113;
/// Linux "any" device cooked header, v2 (`LINKTYPE_LINUX_SLL2`).
pub const LINKTYPE_LINUX_SLL2: u32 = 276;

/// Largest packet or block accepted. Real packets are at most a few hundred KiB (GSO/LRO); a
/// bigger length is corruption, and refusing it keeps a bad length from allocating gigabytes.
pub const MAX_BLOCK: usize = 256 << 20;

/// Captured lengths up to this are accepted whatever the snaplen says: libpcap does the same,
/// because some writers record a smaller snaplen than the packets they store.
const LENIENT_SNAPLEN: usize = 262_144;

/// More interfaces than this in one pcapng section is corruption; the cap bounds memory.
const MAX_INTERFACES: usize = 65_536;

/// Read buffer of [`Reader::open`]: large sequential reads, few system calls. It grows, by
/// doubling once full, only for a record larger than itself.
const FILE_BUFFER: usize = 256 << 10;

/// Read buffer of [`Reader::new`], which also serves small in-memory inputs (tests, fuzzing).
const BUFFER: usize = 64 << 10;

const PCAP_MAGIC_US: u32 = 0xa1b2_c3d4;
const PCAP_MAGIC_NS: u32 = 0xa1b2_3c4d;
const NG_SHB: u32 = 0x0a0d_0d0a;
const NG_BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;
const NG_IDB: u32 = 0x0000_0001;
/// Obsolete Packet Block: pcap-parser has no type for it and hands it over as unknown.
const NG_OPB: u32 = 0x0000_0002;
const NG_SPB: u32 = 0x0000_0003;
const NG_EPB: u32 = 0x0000_0006;

/// Where the packet data starts in each kind of record: after the classic record header; after
/// a pcapng block's type, length and the fixed fields of an EPB or OPB, or of an SPB.
const PCAP_DATA: usize = 16;
const NG_EPB_DATA: usize = 28;
const NG_SPB_DATA: usize = 12;

/// Name of a link type for messages: "ETHERNET", "RAW", "LINUX_SLL", …, or "unknown".
pub fn link_type_name(lt: u32) -> &'static str {
    match lt {
        LINKTYPE_NULL => "NULL",
        LINKTYPE_ETHERNET => "ETHERNET",
        6 => "IEEE802_5",
        8 => "SLIP",
        9 => "PPP",
        10 => "FDDI",
        50 => "PPP_HDLC",
        51 => "PPP_ETHER",
        LINKTYPE_RAW => "RAW",
        104 => "C_HDLC",
        105 => "IEEE802_11",
        108 => "LOOP",
        LINKTYPE_LINUX_SLL => "LINUX_SLL",
        119 => "PRISM_HEADER",
        127 => "IEEE802_11_RADIOTAP",
        192 => "PPI",
        195 => "IEEE802_15_4_WITHFCS",
        220 => "USB_LINUX_MMAPPED",
        228 => "IPV4",
        229 => "IPV6",
        239 => "NFLOG",
        249 => "NETANALYZER_TRANSPARENT",
        LINKTYPE_LINUX_SLL2 => "LINUX_SLL2",
        _ => "unknown",
    }
}

/// One captured packet, borrowed from the reader until the next call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Capture time, Unix nanoseconds (0 for pcapng Simple Packet Blocks, which carry none).
    pub ts_ns: u64,
    /// The captured bytes; shorter than `wire_len` when the capture cut the packet.
    pub data: &'a [u8],
    /// Length of the packet on the wire; never less than `data.len()`.
    pub wire_len: usize,
    /// `LINKTYPE_*` of the interface the packet was captured on.
    pub link_type: u32,
}

/// What can go wrong reading a capture. Every variant names the file; all but `Open` give the
/// byte offset of the record or block at fault.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    /// The file could not be opened.
    #[error("{file}: cannot open: {source}")]
    Open {
        file: String,
        #[source]
        source: io::Error,
    },
    /// Reading failed for a reason other than the end of the file.
    #[error("{file}: read error at byte offset {offset}: {source}")]
    Io {
        file: String,
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// The first four bytes are neither a pcap nor a pcapng magic number.
    #[error(
        "{file}: not a pcap or pcapng capture file (magic number {magic:#010x} at byte offset 0)"
    )]
    BadMagic { file: String, magic: u32 },
    /// The file ends inside a header, packet or block. Packets before `offset` were complete.
    #[error(
        "{file}: truncated: the file ends inside the record that starts at byte offset {offset} \
         (after {packets_read} complete packets)"
    )]
    Truncated {
        file: String,
        offset: u64,
        packets_read: u64,
    },
    /// A pcap file header or pcapng Section Header Block has a version this reader does not know.
    #[error("{file}: unsupported {format} version {major}.{minor} at byte offset {offset}")]
    UnsupportedVersion {
        file: String,
        offset: u64,
        format: &'static str,
        major: u16,
        minor: u16,
    },
    /// A pcapng block length is too small, too large, not a multiple of 4, or does not match the
    /// copy at the end of the block.
    #[error("{file}: pcapng block of type {block_type:#010x} at byte offset {offset} has a bad length {length}: {why}")]
    BadBlockLength {
        file: String,
        offset: u64,
        block_type: u32,
        length: u64,
        why: &'static str,
    },
    /// A packet's captured length is larger than its snaplen allows or than its block holds.
    #[error("{file}: packet at byte offset {offset} has captured length {caplen}, more than {limit} ({why})")]
    BadCaptureLength {
        file: String,
        offset: u64,
        caplen: u64,
        limit: u64,
        why: &'static str,
    },
    /// A pcapng packet names an interface its section has not described.
    #[error(
        "{file}: packet block at byte offset {offset} refers to interface {interface}, but its \
         section defines {defined} interface(s)"
    )]
    UnknownInterface {
        file: String,
        offset: u64,
        interface: u32,
        defined: usize,
    },
    /// Any other structural fault in a header or block.
    #[error("{file}: malformed capture at byte offset {offset}: {what}")]
    Malformed {
        file: String,
        offset: u64,
        what: &'static str,
    },
}

/// Converts pcapng timestamp units to nanoseconds (`if_tsresol`, `if_tsoffset`). pcap-parser's
/// own conversion gives whole seconds as `u32` and cannot express units finer than 10^-19 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TsScale {
    /// Units of 10^-n s with n <= 9: multiply by 10^(9-n).
    Mul(u64),
    /// Units of 10^-n s with n > 9: divide by 10^(n-9); 0 when that overflows u64 (every
    /// timestamp then rounds to 0 ns).
    Div(u64),
    /// Units of 2^-n s.
    Pow2(u32),
}

impl TsScale {
    /// The scale for an `if_tsresol` value: high bit clear means 10^-n, set means 2^-n.
    fn from_tsresol(v: u8) -> Self {
        let n = u32::from(v & 0x7f);
        if v & 0x80 != 0 {
            TsScale::Pow2(n)
        } else if n <= 9 {
            // 10^(9-n) <= 10^9 always fits.
            TsScale::Mul(10u64.pow(9 - n))
        } else {
            TsScale::Div(10u64.checked_pow(n - 9).unwrap_or(0))
        }
    }

    fn to_ns(self, ticks: u64) -> u64 {
        match self {
            TsScale::Mul(m) => ticks.saturating_mul(m),
            TsScale::Div(d) => ticks.checked_div(d).unwrap_or(0),
            TsScale::Pow2(n) => {
                // ticks * 10^9 < 2^94 cannot overflow u128, and n <= 127.
                let ns = (u128::from(ticks) * 1_000_000_000) >> n;
                u64::try_from(ns).unwrap_or(u64::MAX)
            }
        }
    }
}

/// What a pcapng Interface Description Block says about the packets captured on it.
#[derive(Clone, Copy, Debug)]
struct Interface {
    link_type: u32,
    /// 0 means no limit.
    snaplen: u32,
    scale: TsScale,
    /// `if_tsoffset`: seconds added to every timestamp.
    offset_s: i64,
}

impl Interface {
    fn ts_ns(&self, ticks: u64) -> u64 {
        self.scale
            .to_ns(ticks)
            .saturating_add_signed(self.offset_s.saturating_mul(1_000_000_000))
    }
}

/// Per-format state.
#[derive(Debug)]
enum Format {
    /// A classic pcap file whose header is still to be parsed.
    Start,
    Classic {
        big_endian: bool,
        /// Nanosecond timestamps (magic 0xa1b23c4d) rather than microseconds.
        nanos: bool,
        /// The most a record may capture (see [`caplen_limit`]).
        limit: usize,
        link_type: u32,
    },
    Ng {
        /// Byte order of the current section.
        big_endian: bool,
        /// The current section's interfaces, indexed by interface id.
        interfaces: Vec<Interface>,
    },
}

/// Where the packet a record held lies in the record, and what it says about it.
#[derive(Clone, Copy, Debug)]
struct Meta {
    start: usize,
    caplen: usize,
    wire_len: usize,
    ts_ns: u64,
    link_type: u32,
}

/// What one record was.
enum Step {
    Packet(Meta),
    /// A header, section, interface or other block: taken in, nothing to return.
    Other,
    /// A clean end of file.
    End,
}

/// The length fields at the start of a record, read before pcap-parser can take it.
#[derive(Clone, Copy, Debug)]
struct Frame {
    block_type: u32,
    total: usize,
    big_endian: bool,
}

/// The crate's reader of the format the file's magic number named.
enum Inner<R: Read> {
    Classic(LegacyPcapReader<Source<R>>),
    Ng(PcapNGReader<Source<R>>),
}

impl<R: Read> Inner<R> {
    fn data(&self) -> &[u8] {
        match self {
            Inner::Classic(r) => r.data(),
            Inner::Ng(r) => r.data(),
        }
    }
}

/// The input as the crate's reader sees it: the header this module read first, then the rest.
/// It keeps the `io::Error` behind a failed read, which the crate's `ReadError` drops.
struct Source<R> {
    head: Vec<u8>,
    at: usize,
    inner: R,
    failure: Arc<Mutex<Option<io::Error>>>,
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(mut rest) = self.head.get(self.at..).filter(|r| !r.is_empty()) {
            let n = rest.read(buf)?;
            self.at += n;
            return Ok(n);
        }
        loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let kind = e.kind();
                    if let Ok(mut slot) = self.failure.lock() {
                        *slot = Some(e);
                    }
                    return Err(kind.into());
                }
                read => return read,
            }
        }
    }
}

/// Everything the reader knows besides the crate's reader; every error is made here.
#[derive(Debug)]
struct State {
    name: String,
    packets_read: u64,
    format: Format,
    /// Length of the record whose packet was returned last: consumed on the next call, since
    /// the packet borrows it.
    pending: usize,
    /// Size of the crate's buffer.
    capacity: usize,
    /// Where [`Source`] keeps the cause of a failed read.
    failure: Arc<Mutex<Option<io::Error>>>,
}

/// A streaming capture reader over any `Read`; holds at most one buffer of input in memory.
pub struct Reader<R: Read> {
    inner: Inner<R>,
    state: State,
}

impl<R: Read> std::fmt::Debug for Reader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Reader<File> {
    /// Opens a capture file and reads its header.
    pub fn open(path: &Path) -> Result<Self, PcapError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|source| PcapError::Open {
            file: name.clone(),
            source,
        })?;
        Reader::with_capacity(file, &name, FILE_BUFFER)
    }
}

/// `u32` at `at` in the given byte order, if the slice holds it.
fn u32_at(b: &[u8], at: usize, big_endian: bool) -> Option<u32> {
    let raw: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(if big_endian {
        u32::from_be_bytes(raw)
    } else {
        u32::from_le_bytes(raw)
    })
}

/// The most a packet may capture under `snaplen` (0 = unlimited), as libpcap allows.
fn caplen_limit(snaplen: u32) -> usize {
    let snaplen = usize::try_from(snaplen).unwrap_or(MAX_BLOCK);
    if snaplen == 0 {
        MAX_BLOCK
    } else {
        // Constants, LENIENT_SNAPLEN < MAX_BLOCK: clamp cannot panic.
        snaplen.clamp(LENIENT_SNAPLEN, MAX_BLOCK)
    }
}

/// `usize` from a length field; lengths beyond `usize` are capped to fail the size checks.
fn len(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// The byte order a pcapng byte-order magic announces.
fn ng_byte_order(magic: u32) -> Option<bool> {
    match magic {
        NG_BYTE_ORDER_MAGIC => Some(false),
        m if m.swap_bytes() == NG_BYTE_ORDER_MAGIC => Some(true),
        _ => None,
    }
}

/// Smallest length of each pcapng block type: type, length, fixed fields, trailing length.
fn ng_min_len(block_type: u32) -> u32 {
    match block_type {
        NG_SHB => 28,
        NG_IDB => 20,
        NG_EPB | NG_OPB => 32,
        NG_SPB => 16,
        _ => 12,
    }
}

impl<R: Read> Reader<R> {
    /// Reads the file header (pcap) or first Section Header Block (pcapng) from `inner`. `name`
    /// identifies the input in errors, normally the file path.
    pub fn new(inner: R, name: &str) -> Result<Self, PcapError> {
        Reader::with_capacity(inner, name, BUFFER)
    }

    fn with_capacity(mut inner: R, name: &str, capacity: usize) -> Result<Self, PcapError> {
        let mut state = State {
            name: name.to_string(),
            packets_read: 0,
            format: Format::Start,
            pending: 0,
            capacity,
            failure: Arc::default(),
        };
        let (head, ng) = state.read_head(&mut inner)?;
        state.capacity = capacity.max(head.len());
        let source = Source {
            head,
            at: 0,
            inner,
            failure: Arc::clone(&state.failure),
        };
        // `create_reader` would do the same probe, but from one `read` (too short on a pipe) and
        // without giving the input back when it fails; `read_head` has checked what it checks.
        let built = if ng {
            state.format = Format::Ng {
                big_endian: false,
                interfaces: Vec::new(),
            };
            PcapNGReader::new(state.capacity, source).map(Inner::Ng)
        } else {
            LegacyPcapReader::new(state.capacity, source).map(Inner::Classic)
        };
        let inner = built.map_err(|_| state.malformed(0, "the file header cannot be parsed"))?;
        let mut r = Reader { inner, state };
        // The header or first section: its version, link type and timestamp unit.
        match r.step()? {
            Step::Other => Ok(r),
            Step::Packet(_) | Step::End => Err(r.state.truncated(0)),
        }
    }

    /// The next packet, or `Ok(None)` at a clean end of file. After an error the reader's
    /// position is unspecified: stop reading.
    pub fn next_packet(&mut self) -> Result<Option<Packet<'_>>, PcapError> {
        let m = loop {
            match self.step()? {
                Step::Packet(m) => break m,
                Step::Other => {}
                Step::End => return Ok(None),
            }
        };
        self.state.packets_read += 1;
        // The record parsers checked that start + caplen lies within the record.
        let data = self
            .inner
            .data()
            .get(m.start..m.start.saturating_add(m.caplen))
            .unwrap_or_default();
        Ok(Some(Packet {
            ts_ns: m.ts_ns,
            data,
            // Some writers store an original length below the captured one; the captured
            // bytes did cross the wire, so never report less.
            wire_len: m.wire_len.max(data.len()),
            link_type: m.link_type,
        }))
    }

    /// Packets returned so far.
    pub fn packets_read(&self) -> u64 {
        self.state.packets_read
    }

    /// Bytes of the input taken in so far, the last packet's record included.
    #[cfg(test)]
    fn offset(&self) -> u64 {
        let consumed = match &self.inner {
            Inner::Classic(r) => r.consumed(),
            Inner::Ng(r) => r.consumed(),
        };
        (consumed + self.state.pending) as u64
    }

    /// Takes in one record, through the crate's reader of this format.
    fn step(&mut self) -> Result<Step, PcapError> {
        match &mut self.inner {
            Inner::Classic(r) => self.state.step(r),
            Inner::Ng(r) => self.state.step(r),
        }
    }
}

/// Reading records through the crate's reader `it` (generic, not `dyn`: the per-packet calls
/// are inlined).
impl State {
    /// Takes in one record, refilling the buffer as often as it needs.
    fn step<I: PcapReaderIterator>(&mut self, it: &mut I) -> Result<Step, PcapError> {
        // No shift here: `refill` moves what is left to the front anyway, and shifting on every
        // half buffer consumed would copy each byte of the file twice.
        it.consume_noshift(std::mem::take(&mut self.pending));
        loop {
            let (offset, data) = (it.consumed() as u64, it.data());
            // Lengths are checked before the crate parses a record: it trusts them (a pcapng
            // block shorter than 12 bytes even underflows its arithmetic).
            let frame = self.frame(data, offset)?;
            let whole = frame.filter(|f| data.len() >= f.total);
            if let Some(f) = whole {
                self.check_trailer(f, data, offset)?;
            }
            if let Some(step) = self.parse(it, offset)? {
                return Ok(step);
            }
            if let Some(step) = self.refused(it, frame, whole, offset)? {
                return Ok(step);
            }
        }
    }

    /// The record the crate parsed, taken in; `None` when it could not parse one.
    fn parse<I: PcapReaderIterator>(
        &mut self,
        it: &mut I,
        offset: u64,
    ) -> Result<Option<Step>, PcapError> {
        let (size, taken) = match it.next() {
            Ok((size, block)) => (size, Some(self.take_in(&block, offset)?)),
            Err(pcap_parser::PcapError::Eof) => return Ok(Some(Step::End)),
            Err(pcap_parser::PcapError::ReadError) => (0, None),
            // Incomplete, buffer too small, or a record the crate refused.
            Err(_) => return Ok(None),
        };
        let Some(taken) = taken else {
            return Err(self.read_error(it));
        };
        Ok(Some(match taken {
            Some(m) => {
                self.pending = size;
                Step::Packet(m)
            }
            None => {
                it.consume_noshift(size);
                Step::Other
            }
        }))
    }

    /// After the crate could not parse the record at `offset`: a bad record if it is whole, a
    /// cut file if the input has ended, or else more input (`None`: parse again).
    fn refused<I: PcapReaderIterator>(
        &mut self,
        it: &mut I,
        frame: Option<Frame>,
        whole: Option<Frame>,
        offset: u64,
    ) -> Result<Option<Step>, PcapError> {
        if let Some(f) = whole {
            self.unparsed(f, it.data(), offset)?;
            it.consume_noshift(f.total);
            return Ok(Some(Step::Other));
        }
        if it.reader_exhausted() {
            return if it.data().is_empty() {
                Ok(Some(Step::End))
            } else {
                Err(self.truncated(offset))
            };
        }
        if it.data().len() >= self.capacity {
            // A record larger than the buffer: grow with the data that arrives, not straight
            // to the claimed length (which `frame` capped at MAX_BLOCK).
            let Some(f) = frame else {
                return Err(self.malformed(
                    offset,
                    "the read buffer filled up before a record header ended",
                ));
            };
            self.capacity = self.capacity.saturating_mul(2).min(f.total);
            it.grow(self.capacity);
        }
        if it.refill().is_err() {
            return Err(self.read_error(it));
        }
        Ok(None)
    }

    /// The error behind the crate's `ReadError`, kept by [`Source`], at the offset where the
    /// failed read started.
    fn read_error<I: PcapReaderIterator>(&self, it: &I) -> PcapError {
        let source = self.failure.lock().ok().and_then(|mut slot| slot.take());
        let at = (it.consumed() + it.data().len()) as u64;
        self.io(
            at,
            source.unwrap_or_else(|| io::Error::other("read failed")),
        )
    }
}

impl State {
    fn truncated(&self, offset: u64) -> PcapError {
        PcapError::Truncated {
            file: self.name.clone(),
            offset,
            packets_read: self.packets_read,
        }
    }

    fn malformed(&self, offset: u64, what: &'static str) -> PcapError {
        PcapError::Malformed {
            file: self.name.clone(),
            offset,
            what,
        }
    }

    fn io(&self, offset: u64, source: io::Error) -> PcapError {
        PcapError::Io {
            file: self.name.clone(),
            offset,
            source,
        }
    }

    fn bad_length(
        &self,
        offset: u64,
        block_type: u32,
        length: u64,
        why: &'static str,
    ) -> PcapError {
        PcapError::BadBlockLength {
            file: self.name.clone(),
            offset,
            block_type,
            length,
            why,
        }
    }

    fn bad_caplen(&self, offset: u64, caplen: usize, limit: usize, why: &'static str) -> PcapError {
        PcapError::BadCaptureLength {
            file: self.name.clone(),
            offset,
            caplen: caplen as u64,
            limit: limit as u64,
            why,
        }
    }

    /// Reads the file header (pcap) or the first Section Header Block (pcapng) whole, for the
    /// crate's reader to parse from its first `read`; says whether the file is pcapng.
    fn read_head<R: Read>(&self, inner: &mut R) -> Result<(Vec<u8>, bool), PcapError> {
        let mut head = Vec::new();
        let mut take = |head: &mut Vec<u8>, n: usize| {
            // Grows with the data that arrives, not to a claimed length.
            let at = head.len() as u64;
            inner
                .take(n as u64)
                .read_to_end(head)
                .map_err(|e| self.io(at, e))
        };
        take(&mut head, 12)?;
        let Some(magic) = u32_at(&head, 0, false) else {
            // An empty file: the capture ended before even its header was written.
            return Err(self.truncated(0));
        };
        let (total, ng) = if magic == NG_SHB {
            let Some(bom) = u32_at(&head, 8, false) else {
                return Err(self.truncated(0));
            };
            // The byte-order magic tells how to read the length that precedes it.
            let Some(big_endian) = ng_byte_order(bom) else {
                return Err(
                    self.malformed(0, "Section Header Block has an invalid byte-order magic")
                );
            };
            let total = u32_at(&head, 4, big_endian).unwrap_or_default();
            (self.block_len(0, NG_SHB, total)?, true)
        } else if [PCAP_MAGIC_US, PCAP_MAGIC_NS]
            .iter()
            .any(|&m| magic == m || magic == m.swap_bytes())
        {
            (24, false)
        } else {
            return Err(PcapError::BadMagic {
                file: self.name.clone(),
                magic: magic.swap_bytes(),
            });
        };
        let rest = total.saturating_sub(head.len());
        take(&mut head, rest)?;
        if head.len() < total {
            return Err(self.truncated(0));
        }
        Ok((head, ng))
    }

    /// Checks a pcapng block's total length.
    fn block_len(&self, offset: u64, block_type: u32, total: u32) -> Result<usize, PcapError> {
        let why = if total < ng_min_len(block_type) {
            "shorter than this block type's fixed fields"
        } else if !total.is_multiple_of(4) {
            "not a multiple of 4"
        } else if len(total) > MAX_BLOCK {
            "larger than the 256 MiB this reader accepts"
        } else {
            return Ok(len(total));
        };
        Err(self.bad_length(offset, block_type, u64::from(total), why))
    }

    /// The length of the record at the start of `data`, once its header is there; refuses a
    /// length that is corrupt before any buffer grows for it.
    fn frame(&self, data: &[u8], offset: u64) -> Result<Option<Frame>, PcapError> {
        match self.format {
            // The file header: its fields were checked by `read_head`.
            Format::Start => Ok(None),
            Format::Classic {
                big_endian, limit, ..
            } => {
                let Some(caplen) = u32_at(data, 8, big_endian).map(len) else {
                    return Ok(None);
                };
                if caplen > limit {
                    return Err(self.bad_caplen(
                        offset,
                        caplen,
                        limit,
                        "the snaplen in the file header allows no more",
                    ));
                }
                Ok(Some(Frame {
                    block_type: 0,
                    total: PCAP_DATA + caplen,
                    big_endian,
                }))
            }
            Format::Ng { big_endian, .. } => {
                let Some(block_type) = u32_at(data, 0, big_endian) else {
                    return Ok(None);
                };
                // A new section's length is in its own byte order, which the magic after it
                // gives; the SHB type reads the same in either order.
                let big_endian = if block_type == NG_SHB {
                    let Some(bom) = u32_at(data, 8, false) else {
                        return Ok(None);
                    };
                    ng_byte_order(bom).ok_or_else(|| {
                        self.malformed(
                            offset,
                            "Section Header Block has an invalid byte-order magic",
                        )
                    })?
                } else {
                    big_endian
                };
                let Some(total) = u32_at(data, 4, big_endian) else {
                    return Ok(None);
                };
                Ok(Some(Frame {
                    block_type,
                    total: self.block_len(offset, block_type, total)?,
                    big_endian,
                }))
            }
        }
    }

    /// Checks that a whole pcapng block's trailing length repeats the leading one.
    fn check_trailer(&self, frame: Frame, data: &[u8], offset: u64) -> Result<(), PcapError> {
        if !matches!(self.format, Format::Ng { .. }) {
            return Ok(());
        }
        let trailer = frame
            .total
            .checked_sub(4)
            .and_then(|at| u32_at(data, at, frame.big_endian));
        if trailer.map(len) == Some(frame.total) {
            return Ok(());
        }
        Err(self.bad_length(
            offset,
            frame.block_type,
            frame.total as u64,
            "the length at the end of the block differs",
        ))
    }

    /// A whole record, its lengths checked, that the crate refused or wanted more of than it
    /// holds: the error that says why, or `Ok` for a block this reader has no use for (skipped,
    /// as pcap-parser cannot parse every block type a writer may invent).
    fn unparsed(&self, frame: Frame, data: &[u8], offset: u64) -> Result<(), PcapError> {
        if !matches!(self.format, Format::Ng { .. }) {
            return Err(self.malformed(offset, "the packet record cannot be parsed"));
        }
        match frame.block_type {
            NG_EPB | NG_OPB => {
                let caplen = u32_at(data, 20, frame.big_endian).map_or(usize::MAX, len);
                let room = frame.total.saturating_sub(32);
                if caplen > room {
                    Err(self.bad_caplen(
                        offset,
                        caplen,
                        room,
                        "the block does not hold that much data",
                    ))
                } else {
                    Err(self.malformed(offset, "a packet block cannot be parsed"))
                }
            }
            NG_SHB | NG_IDB | NG_SPB => Err(self.malformed(
                offset,
                "a section, interface or packet block cannot be parsed",
            )),
            _ => Ok(()),
        }
    }

    /// Takes in one record the crate parsed; the packet it holds, if any.
    fn take_in(
        &mut self,
        block: &PcapBlockOwned<'_>,
        offset: u64,
    ) -> Result<Option<Meta>, PcapError> {
        match block {
            PcapBlockOwned::LegacyHeader(h) => self.start_classic(h).map(|()| None),
            PcapBlockOwned::Legacy(b) => {
                let Format::Classic {
                    nanos, link_type, ..
                } = self.format
                else {
                    return Err(self.malformed(offset, "pcap record in a pcapng file"));
                };
                // `frame` checked the captured length against the snaplen.
                // u32 seconds * 10^9 + u32 * 10^3 stays below 2^63: no overflow possible.
                let frac_ns = u64::from(b.ts_usec) * if nanos { 1 } else { 1_000 };
                Ok(Some(Meta {
                    start: PCAP_DATA,
                    caplen: b.data.len(),
                    wire_len: len(b.origlen),
                    ts_ns: u64::from(b.ts_sec) * 1_000_000_000 + frac_ns,
                    link_type,
                }))
            }
            PcapBlockOwned::NG(block) => self.take_in_ng(block, offset),
        }
    }

    fn start_classic(&mut self, h: &PcapHeader) -> Result<(), PcapError> {
        if h.version_major != 2 {
            return Err(PcapError::UnsupportedVersion {
                file: self.name.clone(),
                offset: 4,
                format: "pcap",
                major: h.version_major,
                minor: h.version_minor,
            });
        }
        self.format = Format::Classic {
            big_endian: h.is_bigendian(),
            nanos: h.is_nanosecond_precision(),
            limit: caplen_limit(h.snaplen),
            // The upper 16 bits carry FCS information, not the link type.
            link_type: h.network.0.cast_unsigned() & 0xffff,
        };
        Ok(())
    }

    fn take_in_ng(&mut self, block: &Block<'_>, offset: u64) -> Result<Option<Meta>, PcapError> {
        let Format::Ng { big_endian, .. } = self.format else {
            return Err(self.malformed(offset, "pcapng block in a classic pcap file"));
        };
        let opb = if big_endian {
            NG_OPB.swap_bytes()
        } else {
            NG_OPB
        };
        match block {
            Block::SectionHeader(shb) => {
                let (major, minor) = (shb.major_version, shb.minor_version);
                // 1.0 is the standard; 1.2 was written by some old tools and means the same.
                if major != 1 || (minor != 0 && minor != 2) {
                    return Err(PcapError::UnsupportedVersion {
                        file: self.name.clone(),
                        offset,
                        format: "pcapng",
                        major,
                        minor,
                    });
                }
                if let Format::Ng {
                    big_endian,
                    interfaces,
                } = &mut self.format
                {
                    *big_endian = shb.big_endian();
                    // Interface ids are per section: the previous section's interfaces are gone.
                    interfaces.clear();
                }
                Ok(None)
            }
            Block::InterfaceDescription(idb) => {
                let iface = self.interface(idb, big_endian, offset)?;
                let defined = match &mut self.format {
                    Format::Ng { interfaces, .. } => {
                        interfaces.push(iface);
                        interfaces.len()
                    }
                    Format::Start | Format::Classic { .. } => 0,
                };
                if defined > MAX_INTERFACES {
                    return Err(self.malformed(offset, "more than 65536 interfaces in one section"));
                }
                Ok(None)
            }
            Block::EnhancedPacket(epb) => {
                let iface = self.iface(epb.if_id, offset)?;
                let ticks = u64::from(epb.ts_high) << 32 | u64::from(epb.ts_low);
                self.packet(iface, epb.caplen, epb.origlen, ticks, offset)
                    .map(Some)
            }
            Block::SimplePacket(spb) => {
                let iface = self.iface(0, offset)?;
                // No timestamp, no captured length: the data is the original length cut to
                // what the block holds and to the snaplen.
                let mut caplen = spb.data.len().min(len(spb.origlen));
                if iface.snaplen != 0 {
                    caplen = caplen.min(len(iface.snaplen));
                }
                Ok(Some(Meta {
                    start: NG_SPB_DATA,
                    caplen,
                    wire_len: len(spb.origlen),
                    ts_ns: 0,
                    link_type: iface.link_type,
                }))
            }
            // The crate reads every block type little-endian.
            Block::Unknown(ub) if ub.block_type == opb => {
                self.obsolete_packet(ub.data, big_endian, offset).map(Some)
            }
            // Statistics, name resolution, secrets, custom blocks: not needed.
            _ => Ok(None),
        }
    }

    /// The link type, snaplen and timestamp unit of an Interface Description Block.
    /// `if_tsoffset` is read here: pcap-parser reads it little-endian in every section.
    fn interface(
        &self,
        idb: &InterfaceDescriptionBlock<'_>,
        big_endian: bool,
        offset: u64,
    ) -> Result<Interface, PcapError> {
        let mut iface = Interface {
            link_type: u32::try_from(idb.linktype.0).unwrap_or_default(),
            snaplen: idb.snaplen,
            scale: TsScale::from_tsresol(6),
            offset_s: 0,
        };
        for opt in &idb.options {
            match (opt.code, opt.as_bytes()) {
                (OptionCode::EndOfOpt, _) => break,
                (OptionCode::IfTsresol, Ok(&[v])) => iface.scale = TsScale::from_tsresol(v),
                (OptionCode::IfTsresol, _) => {
                    return Err(self.malformed(offset, "if_tsresol option is not 1 byte long"));
                }
                (OptionCode::IfTsoffset, v) => {
                    let raw: [u8; 8] = v.ok().and_then(|v| v.try_into().ok()).ok_or_else(|| {
                        self.malformed(offset, "if_tsoffset option is not 8 bytes long")
                    })?;
                    iface.offset_s = if big_endian {
                        i64::from_be_bytes(raw)
                    } else {
                        i64::from_le_bytes(raw)
                    };
                }
                _ => {}
            }
        }
        Ok(iface)
    }

    /// The interface a packet block names.
    fn iface(&self, id: u32, offset: u64) -> Result<Interface, PcapError> {
        let Format::Ng { interfaces, .. } = &self.format else {
            return Err(self.malformed(offset, "pcapng block in a classic pcap file"));
        };
        interfaces
            .get(len(id))
            .copied()
            .ok_or_else(|| PcapError::UnknownInterface {
                file: self.name.clone(),
                offset,
                interface: id,
                defined: interfaces.len(),
            })
    }

    /// An Enhanced or Obsolete Packet Block's packet, the block already framed by the crate.
    fn packet(
        &self,
        iface: Interface,
        caplen: u32,
        wire_len: u32,
        ticks: u64,
        offset: u64,
    ) -> Result<Meta, PcapError> {
        let (caplen, limit) = (len(caplen), caplen_limit(iface.snaplen));
        if caplen > limit {
            return Err(self.bad_caplen(
                offset,
                caplen,
                limit,
                "the interface's snaplen allows no more",
            ));
        }
        Ok(Meta {
            start: NG_EPB_DATA,
            caplen,
            wire_len: len(wire_len),
            ts_ns: iface.ts_ns(ticks),
            link_type: iface.link_type,
        })
    }

    /// An Obsolete Packet Block, from the body the crate hands over as an unknown block's.
    fn obsolete_packet(&self, body: &[u8], be: bool, offset: u64) -> Result<Meta, PcapError> {
        let field = |at| u32_at(body, at, be);
        let (Some(first), Some(high), Some(low), Some(caplen), Some(wire_len)) =
            (field(0), field(4), field(8), field(12), field(16))
        else {
            let total = (body.len() + 12) as u64;
            return Err(self.bad_length(
                offset,
                NG_OPB,
                total,
                "shorter than this block type's fixed fields",
            ));
        };
        // The interface id is the first 16 bits, in the section's byte order.
        let id = if be { first >> 16 } else { first & 0xffff };
        let iface = self.iface(id, offset)?;
        let room = body.len().saturating_sub(20);
        if len(caplen) > room {
            return Err(self.bad_caplen(
                offset,
                len(caplen),
                room,
                "the block does not hold that much data",
            ));
        }
        let ticks = u64::from(high) << 32 | u64::from(low);
        self.packet(iface, caplen, wire_len, ticks, offset)
    }
}
#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const NG_OPT_END: u16 = 0;
    const NG_IF_TSRESOL: u16 = 9;
    const NG_IF_TSOFFSET: u16 = 14;

    /// A packet copied out of the reader, for comparing whole files at once.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Owned {
        ts_ns: u64,
        data: Vec<u8>,
        wire_len: usize,
        link_type: u32,
    }

    fn owned(ts_ns: u64, data: &[u8], wire_len: usize, link_type: u32) -> Owned {
        Owned {
            ts_ns,
            data: data.to_vec(),
            wire_len,
            link_type,
        }
    }

    /// Every packet of an open reader, and the error that ended it, if any.
    fn drain<R: Read>(r: &mut Reader<R>) -> (Vec<Owned>, Option<PcapError>) {
        let mut out = Vec::new();
        loop {
            match r.next_packet() {
                Ok(Some(p)) => {
                    assert!(p.data.len() <= p.wire_len, "wire_len below captured length");
                    out.push(owned(p.ts_ns, p.data, p.wire_len, p.link_type));
                }
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    /// Reads a whole in-memory capture named "test.cap".
    fn read_all(bytes: &[u8]) -> Result<Vec<Owned>, PcapError> {
        let mut r = Reader::new(bytes, "test.cap")?;
        match drain(&mut r) {
            (packets, None) => Ok(packets),
            (_, Some(e)) => Err(e),
        }
    }

    /// Reads until the first error and returns it; panics if the capture reads cleanly.
    fn first_error(bytes: &[u8]) -> PcapError {
        match read_all(bytes) {
            Ok(p) => panic!("expected an error, read {} packets", p.len()),
            Err(e) => e,
        }
    }

    /// Appends fields in one byte order.
    struct W {
        be: bool,
        v: Vec<u8>,
    }

    impl W {
        fn new(be: bool) -> Self {
            W { be, v: Vec::new() }
        }
        fn u16(&mut self, x: u16) -> &mut Self {
            let b = if self.be {
                x.to_be_bytes()
            } else {
                x.to_le_bytes()
            };
            self.v.extend_from_slice(&b);
            self
        }
        fn u32(&mut self, x: u32) -> &mut Self {
            let b = if self.be {
                x.to_be_bytes()
            } else {
                x.to_le_bytes()
            };
            self.v.extend_from_slice(&b);
            self
        }
        fn u64(&mut self, x: u64) -> &mut Self {
            let b = if self.be {
                x.to_be_bytes()
            } else {
                x.to_le_bytes()
            };
            self.v.extend_from_slice(&b);
            self
        }
        fn bytes(&mut self, b: &[u8]) -> &mut Self {
            self.v.extend_from_slice(b);
            self
        }
        fn pad4(&mut self) -> &mut Self {
            while !self.v.len().is_multiple_of(4) {
                self.v.push(0);
            }
            self
        }
        fn done(&mut self) -> Vec<u8> {
            std::mem::take(&mut self.v)
        }
    }

    fn classic_header(be: bool, nanos: bool, snaplen: u32, link_type: u32) -> Vec<u8> {
        let magic = if nanos { PCAP_MAGIC_NS } else { PCAP_MAGIC_US };
        W::new(be)
            .u32(magic)
            .u16(2)
            .u16(4)
            .u32(0)
            .u32(0)
            .u32(snaplen)
            .u32(link_type)
            .done()
    }

    fn classic_record(be: bool, sec: u32, frac: u32, data: &[u8], wire_len: u32) -> Vec<u8> {
        W::new(be)
            .u32(sec)
            .u32(frac)
            .u32(data.len() as u32)
            .u32(wire_len)
            .bytes(data)
            .done()
    }

    /// A pcapng block: type, total length, body padded to 4 bytes, total length again.
    fn ng_block(be: bool, block_type: u32, body: &[u8]) -> Vec<u8> {
        let padded = body.len().next_multiple_of(4);
        let total = (12 + padded) as u32;
        W::new(be)
            .u32(block_type)
            .u32(total)
            .bytes(body)
            .pad4()
            .u32(total)
            .done()
    }

    fn shb(be: bool, major: u16, minor: u16) -> Vec<u8> {
        // Section length -1: unknown, as streaming writers leave it.
        let body = W::new(be)
            .u32(NG_BYTE_ORDER_MAGIC)
            .u16(major)
            .u16(minor)
            .u64(u64::MAX)
            .done();
        ng_block(be, NG_SHB, &body)
    }

    fn idb(be: bool, link_type: u16, snaplen: u32, options: &[(u16, &[u8])]) -> Vec<u8> {
        let mut w = W::new(be);
        w.u16(link_type).u16(0).u32(snaplen);
        for (code, value) in options {
            w.u16(*code).u16(value.len() as u16).bytes(value).pad4();
        }
        if !options.is_empty() {
            w.u16(NG_OPT_END).u16(0);
        }
        ng_block(be, NG_IDB, &w.done())
    }

    fn epb(be: bool, iface: u32, ticks: u64, data: &[u8], wire_len: u32) -> Vec<u8> {
        let body = W::new(be)
            .u32(iface)
            .u32((ticks >> 32) as u32)
            .u32(ticks as u32)
            .u32(data.len() as u32)
            .u32(wire_len)
            .bytes(data)
            .done();
        ng_block(be, NG_EPB, &body)
    }

    fn opb(be: bool, iface: u16, ticks: u64, data: &[u8], wire_len: u32) -> Vec<u8> {
        let body = W::new(be)
            .u16(iface)
            .u16(0)
            .u32((ticks >> 32) as u32)
            .u32(ticks as u32)
            .u32(data.len() as u32)
            .u32(wire_len)
            .bytes(data)
            .done();
        ng_block(be, NG_OPB, &body)
    }

    fn spb(be: bool, wire_len: u32, data: &[u8]) -> Vec<u8> {
        let body = W::new(be).u32(wire_len).bytes(data).done();
        ng_block(be, NG_SPB, &body)
    }

    const T0: u32 = 1_700_000_000;
    const T0_NS: u64 = 1_700_000_000_000_000_000;

    /// Two packets, the second cut by the snaplen (3 of 1500 bytes captured).
    fn classic_sample(be: bool, nanos: bool) -> Vec<u8> {
        let frac = if nanos { 123_456_789 } else { 123_456 };
        let mut f = classic_header(be, nanos, 65535, LINKTYPE_ETHERNET);
        f.extend(classic_record(be, T0, frac, &[1, 2, 3, 4], 4));
        f.extend(classic_record(be, T0 + 1, 0, &[5, 6, 7], 1500));
        f
    }

    #[test]
    fn classic_reads_both_byte_orders_and_resolutions() {
        for be in [false, true] {
            for nanos in [false, true] {
                let got = read_all(&classic_sample(be, nanos)).unwrap();
                let frac_ns = if nanos { 123_456_789 } else { 123_456_000 };
                assert_eq!(
                    got,
                    [
                        owned(T0_NS + frac_ns, &[1, 2, 3, 4], 4, LINKTYPE_ETHERNET),
                        owned(T0_NS + 1_000_000_000, &[5, 6, 7], 1500, LINKTYPE_ETHERNET),
                    ],
                    "big_endian={be} nanos={nanos}"
                );
            }
        }
    }

    #[test]
    fn snap_cut_packet_reports_wire_length() {
        let f = classic_sample(true, false);
        let mut r = Reader::new(&f[..], "x").unwrap();
        r.next_packet().unwrap().unwrap();
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!((p.data, p.wire_len), (&[5u8, 6, 7][..], 1500));
        assert!(r.next_packet().unwrap().is_none());
        assert_eq!(r.packets_read(), 2);

        let mut f = shb(false, 1, 0);
        f.extend(idb(false, 1, 3, &[]));
        f.extend(epb(false, 0, 7, &[9, 9, 9], 60));
        assert_eq!(read_all(&f).unwrap(), [owned(7_000, &[9, 9, 9], 60, 1)]);
    }

    #[test]
    fn classic_link_type_drops_fcs_bits_and_is_not_rejected() {
        // Bits 28..31 give an FCS length; the link type is the low 16 bits. RAW is passed
        // through: rejecting non-Ethernet captures is the replayer's call.
        let mut f = classic_header(false, false, 0, 0x6000_0000 | LINKTYPE_RAW);
        f.extend(classic_record(false, 1, 2, &[0x45], 1));
        assert_eq!(
            read_all(&f).unwrap(),
            [owned(1_000_002_000, &[0x45], 1, LINKTYPE_RAW)]
        );
    }

    #[test]
    fn classic_truncated_file_keeps_the_count_and_offset() {
        let f = classic_sample(false, false);
        // The second record starts after the 24-byte header and the 16 + 4 byte first record.
        let second = 24 + 20;
        for cut in [second + 1, second + 15, second + 16, second + 18] {
            let mut r = Reader::new(&f[..cut], "cut.pcap").unwrap();
            let (packets, err) = drain(&mut r);
            assert_eq!(packets.len(), 1, "cut at {cut}");
            match err {
                Some(PcapError::Truncated {
                    file,
                    offset,
                    packets_read,
                }) => assert_eq!(
                    (file.as_str(), offset, packets_read),
                    ("cut.pcap", second as u64, 1)
                ),
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        // Cut at a record boundary: a clean end, not a truncation.
        assert_eq!(read_all(&f[..second]).unwrap().len(), 1);
        // Cut inside the file header, or nothing at all.
        for cut in [0, 3, 4, 23] {
            assert!(
                matches!(
                    Reader::new(&f[..cut], "x"),
                    Err(PcapError::Truncated {
                        offset: 0,
                        packets_read: 0,
                        ..
                    })
                ),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn garbage_header_is_not_a_capture_file() {
        let err = Reader::new(
            &b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"[..],
            "web.txt",
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                PcapError::BadMagic {
                    magic: 0x4745_5420,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.starts_with("web.txt: not a pcap or pcapng"), "{msg}");
        assert!(msg.contains("0x47455420"), "{msg}");
    }

    #[test]
    fn classic_unsupported_version() {
        let mut f = classic_header(false, false, 65535, 1);
        f[4] = 3;
        let err = Reader::new(&f[..], "v3.pcap").unwrap_err();
        assert!(
            matches!(
                err,
                PcapError::UnsupportedVersion {
                    format: "pcap",
                    major: 3,
                    minor: 4,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn classic_absurd_capture_length_is_refused_without_allocating() {
        let mut f = classic_header(false, false, 65535, 1);
        f.extend(W::new(false).u32(1).u32(0).u32(0xffff_fff0).u32(60).done());
        let mut r = Reader::new(&f[..], "huge.pcap").unwrap();
        let err = r.next_packet().unwrap_err();
        match &err {
            PcapError::BadCaptureLength {
                offset,
                caplen,
                limit,
                ..
            } => assert_eq!((*offset, *caplen, *limit), (24, 0xffff_fff0, 262_144)),
            other => panic!("{other:?}"),
        }
        assert!(err
            .to_string()
            .starts_with("huge.pcap: packet at byte offset 24"));
        assert_eq!(
            r.state.capacity, BUFFER,
            "the buffer grew for a refused length"
        );
        // Over the snaplen but within libpcap's lenient limit is fine.
        let mut f = classic_header(false, false, 96, 1);
        f.extend(classic_record(false, 1, 0, &[0u8; 1514], 1514));
        assert_eq!(read_all(&f).unwrap()[0].data.len(), 1514);
    }

    /// Two sections of opposite byte orders; every packet block kind; interfaces with ns,
    /// 2^-20 s and default µs resolution and an `if_tsoffset`; blocks to skip in between.
    fn ng_sample(be: bool) -> Vec<u8> {
        let mut f = shb(be, 1, 0);
        f.extend(idb(be, 1, 0, &[(NG_IF_TSRESOL, &[9]), (2, b"eth0")]));
        // Interface statistics: skipped by its length.
        f.extend(ng_block(be, 5, &[0u8; 20]));
        f.extend(idb(
            be,
            LINKTYPE_RAW as u16,
            64,
            &[(NG_IF_TSRESOL, &[0x80 | 20])],
        ));
        f.extend(epb(be, 0, T0_NS + 123_456_789, &[1, 2, 3, 4, 5], 5));
        f.extend(epb(
            be,
            1,
            (u64::from(T0) << 20) | (1 << 19),
            &[0x45, 0],
            40,
        ));
        // A custom block with an odd-sized body.
        f.extend(ng_block(be, 0x4000_0bad, &[1, 2, 3, 4, 5, 6, 7]));
        f.extend(spb(be, 10, &[7; 10]));
        f.extend(opb(be, 1, 1 << 20, &[8, 8], 2));
        let other = !be;
        let offset = if other {
            100i64.to_be_bytes()
        } else {
            100i64.to_le_bytes()
        };
        f.extend(shb(other, 1, 0));
        f.extend(idb(
            other,
            LINKTYPE_LINUX_SLL as u16,
            0,
            &[(NG_IF_TSOFFSET, &offset)],
        ));
        f.extend(epb(other, 0, 5_000_001, &[6], 6));
        f
    }

    #[test]
    fn pcapng_sections_interfaces_and_block_kinds() {
        for be in [false, true] {
            let got = read_all(&ng_sample(be)).unwrap();
            assert_eq!(
                got,
                [
                    owned(T0_NS + 123_456_789, &[1, 2, 3, 4, 5], 5, LINKTYPE_ETHERNET),
                    owned(T0_NS + 500_000_000, &[0x45, 0], 40, LINKTYPE_RAW),
                    // SPB: interface 0, no timestamp; the block's padding is not data.
                    owned(0, &[7; 10], 10, LINKTYPE_ETHERNET),
                    owned(1_000_000_000, &[8, 8], 2, LINKTYPE_RAW),
                    owned(105_000_001_000, &[6], 6, LINKTYPE_LINUX_SLL),
                ],
                "first section big_endian={be}"
            );
        }
    }

    #[test]
    fn pcapng_interface_ids_restart_with_each_section() {
        let mut f = shb(false, 1, 0);
        f.extend(idb(false, 1, 0, &[]));
        f.extend(idb(false, 1, 0, &[]));
        f.extend(shb(false, 1, 0));
        f.extend(idb(false, 1, 0, &[]));
        f.extend(epb(false, 1, 0, &[1], 1));
        let err = first_error(&f);
        assert!(
            matches!(
                err,
                PcapError::UnknownInterface {
                    interface: 1,
                    defined: 1,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn pcapng_simple_packet_is_cut_to_the_snaplen() {
        let mut f = shb(true, 1, 0);
        f.extend(idb(true, 1, 4, &[]));
        f.extend(spb(true, 100, &[1, 2, 3, 4, 5, 6]));
        assert_eq!(read_all(&f).unwrap(), [owned(0, &[1, 2, 3, 4], 100, 1)]);
    }

    #[test]
    fn pcapng_unknown_interface() {
        let mut f = shb(false, 1, 0);
        f.extend(idb(false, 1, 0, &[]));
        let at = f.len();
        f.extend(epb(false, 3, 0, &[1], 1));
        let err = first_error(&f);
        match &err {
            PcapError::UnknownInterface {
                file,
                offset,
                interface,
                defined,
            } => assert_eq!(
                (file.as_str(), *offset, *interface, *defined),
                ("test.cap", at as u64, 3, 1)
            ),
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("interface 3"), "{err}");
        // A packet before any interface is described.
        let mut f = shb(true, 1, 0);
        f.extend(epb(true, 0, 0, &[1], 1));
        assert!(matches!(
            first_error(&f),
            PcapError::UnknownInterface { defined: 0, .. }
        ));
    }

    #[test]
    fn pcapng_bad_block_lengths() {
        let mut head = shb(false, 1, 0);
        head.extend(idb(false, 1, 0, &[]));
        let at = head.len() as u64;
        let good = epb(false, 0, 0, &[1, 2, 3, 4], 4);
        let with_length = |total: u32, trailer: u32| {
            let mut f = head.clone();
            let mut b = good.clone();
            b[4..8].copy_from_slice(&total.to_le_bytes());
            let n = b.len();
            b[n - 4..].copy_from_slice(&trailer.to_le_bytes());
            f.extend(b);
            f
        };
        let n = good.len() as u32;
        for (total, trailer, why) in [
            (0xffff_fff0, n, "larger than the 256 MiB"),
            (n + 2, n + 2, "not a multiple of 4"),
            (8, 8, "shorter than"),
            (n, n + 4, "differs"),
        ] {
            let f = with_length(total, trailer);
            let mut r = Reader::new(&f[..], "len.pcapng").unwrap();
            let err = r.next_packet().unwrap_err();
            match &err {
                PcapError::BadBlockLength {
                    offset,
                    block_type,
                    length,
                    why: w,
                    ..
                } => {
                    assert_eq!(
                        (*offset, *block_type, *length),
                        (at, NG_EPB, u64::from(total))
                    );
                    assert!(w.contains(why), "{w}");
                }
                other => panic!("total {total}: {other:?}"),
            }
            // A corrupt length must not have grown the buffer.
            assert_eq!(r.state.capacity, BUFFER);
        }
        // A skipped block's length is checked as well.
        let mut f = head.clone();
        let mut b = ng_block(false, 5, &[0; 8]);
        let n = b.len();
        b[n - 4] ^= 4;
        f.extend(b);
        assert!(matches!(
            first_error(&f),
            PcapError::BadBlockLength { block_type: 5, .. }
        ));
    }

    #[test]
    fn large_claimed_length_allocates_only_what_arrives() {
        // 200 MiB is under the cap, so the length is believed until the data runs out.
        let mut f = shb(false, 1, 0);
        f.extend(idb(false, 1, 0, &[]));
        let at = f.len() as u64;
        f.extend(W::new(false).u32(NG_EPB).u32(200 << 20).done());
        f.extend([0u8; 100]);
        let mut r = Reader::new(&f[..], "big.pcapng").unwrap();
        let err = r.next_packet().unwrap_err();
        assert!(
            matches!(err, PcapError::Truncated { offset, .. } if offset == at),
            "{err:?}"
        );
        assert_eq!(r.state.capacity, BUFFER);

        let mut f = classic_header(false, false, 0, 1);
        f.extend(
            W::new(false)
                .u32(1)
                .u32(0)
                .u32(200 << 20)
                .u32(200 << 20)
                .done(),
        );
        f.extend([0u8; 100]);
        let mut r = Reader::new(&f[..], "big.pcap").unwrap();
        assert!(matches!(
            r.next_packet(),
            Err(PcapError::Truncated { offset: 24, .. })
        ));
        assert_eq!(r.state.capacity, BUFFER);
    }

    #[test]
    fn pcapng_captured_length_beyond_block() {
        let mut f = shb(false, 1, 0);
        f.extend(idb(false, 1, 0, &[]));
        let mut b = epb(false, 0, 0, &[1, 2, 3, 4], 4);
        // Captured length field: 8 (header) + 12 bytes into the body.
        b[20..24].copy_from_slice(&9u32.to_le_bytes());
        f.extend(b);
        let err = first_error(&f);
        assert!(
            matches!(
                err,
                PcapError::BadCaptureLength {
                    caplen: 9,
                    limit: 4,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn pcapng_unsupported_version_and_bad_byte_order() {
        let err = Reader::new(&shb(true, 2, 0)[..], "v2.pcapng").unwrap_err();
        assert!(
            matches!(
                err,
                PcapError::UnsupportedVersion {
                    format: "pcapng",
                    major: 2,
                    minor: 0,
                    offset: 0,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err
            .to_string()
            .starts_with("v2.pcapng: unsupported pcapng version 2.0"));
        let mut f = shb(false, 1, 0);
        f[8] = 0;
        assert!(matches!(
            Reader::new(&f[..], "x"),
            Err(PcapError::Malformed { offset: 0, .. })
        ));
    }

    #[test]
    fn pcapng_bad_interface_options() {
        let mut f = shb(false, 1, 0);
        f.extend(idb(false, 1, 0, &[(NG_IF_TSRESOL, &[6, 6])]));
        let err = first_error(&f);
        assert!(
            matches!(err, PcapError::Malformed { what, .. } if what.contains("if_tsresol")),
            "{err:?}"
        );

        let mut f = shb(false, 1, 0);
        f.extend(idb(false, 1, 0, &[(NG_IF_TSOFFSET, &[1; 4])]));
        let err = first_error(&f);
        assert!(
            matches!(err, PcapError::Malformed { what, .. } if what.contains("if_tsoffset")),
            "{err:?}"
        );

        // An option that runs past the end of the block ends the option list, as pcap-parser
        // reads it: the interface keeps the default µs unit, and its packets read.
        let mut f = shb(false, 1, 0);
        let mut b = idb(false, 1, 0, &[(2, b"eth0"), (NG_IF_TSRESOL, &[9])]);
        // The first option's length field, just after link type, reserved and snaplen.
        b[8 + 8 + 2..8 + 8 + 4].copy_from_slice(&200u16.to_le_bytes());
        f.extend(b);
        f.extend(epb(false, 0, 7, &[1], 1));
        assert_eq!(read_all(&f).unwrap(), [owned(7_000, &[1], 1, 1)]);
    }

    #[test]
    fn blocks_the_crate_cannot_parse_are_skipped_if_not_needed() {
        // An Interface Statistics Block with no body is shorter than pcap-parser's statistics
        // fields but a well-framed block: skipped, as before the crate.
        let mut f = shb(true, 1, 0);
        f.extend(idb(true, 1, 0, &[]));
        f.extend(ng_block(true, 5, &[]));
        // A Process Information Block (pcap-parser's type, 0x80000001) shorter than the 12 bytes
        // of any block: refused by length before the crate's arithmetic sees it.
        f.extend(epb(true, 0, 3, &[1, 2], 2));
        assert_eq!(read_all(&f).unwrap(), [owned(3_000, &[1, 2], 2, 1)]);
        let at = f.len() as u64;
        f.extend(W::new(true).u32(0x8000_0001).u32(8).done());
        match first_error(&f) {
            PcapError::BadBlockLength {
                offset,
                block_type: 0x8000_0001,
                length: 8,
                ..
            } => assert_eq!(offset, at),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn records_larger_than_the_buffer_grow_it() {
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut f = classic_header(false, true, 0, 1);
        f.extend(classic_record(false, 1, 2, &[7; 60], 60));
        f.extend(classic_record(false, 3, 4, &big, 200_000));
        f.extend(classic_record(false, 5, 6, &[8; 60], 60));
        let got = read_all(&f).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[1], owned(3_000_000_004, &big, 200_000, 1));
        let mut r = Reader::new(&f[..], "big.pcap").unwrap();
        drain(&mut r);
        // Doubled while full, then to the record's length.
        assert_eq!(r.state.capacity, 16 + 200_000);

        let mut f = shb(false, 1, 0);
        f.extend(idb(false, 1, 0, &[]));
        f.extend(epb(false, 0, 1, &big, 200_000));
        assert_eq!(read_all(&f).unwrap(), [owned(1_000, &big, 200_000, 1)]);
    }

    /// Hands out `ok` bytes, then fails as a disk or network file system may.
    struct Failing<'a> {
        ok: &'a [u8],
    }

    impl Read for Failing<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.ok.is_empty() {
                return Err(io::Error::other("device on fire"));
            }
            self.ok.read(buf)
        }
    }

    #[test]
    fn read_errors_keep_their_cause_and_offset() {
        let f = classic_sample(false, false);
        let mut r = Reader::new(Failing { ok: &f[..30] }, "disk.pcap").unwrap();
        let err = r.next_packet().unwrap_err();
        match &err {
            PcapError::Io { offset, source, .. } => {
                assert_eq!(
                    (*offset, source.to_string().as_str()),
                    (30, "device on fire")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(err
            .to_string()
            .starts_with("disk.pcap: read error at byte offset 30"));
        // In the file header: the read that failed started at byte 0.
        let err = Reader::new(Failing { ok: &f[..8] }, "disk.pcap").unwrap_err();
        assert!(matches!(err, PcapError::Io { offset: 0, .. }), "{err:?}");
    }

    #[test]
    fn pcapng_truncated_block() {
        let f = ng_sample(false);
        let mut r = Reader::new(&f[..], "x").unwrap();
        r.next_packet().unwrap().unwrap();
        // The second EPB starts where the first packet's block ended.
        let second = r.offset();
        for cut in [
            second as usize + 3,
            second as usize + 8,
            second as usize + 30,
        ] {
            let mut r = Reader::new(&f[..cut], "cut.pcapng").unwrap();
            let (packets, err) = drain(&mut r);
            assert_eq!(packets.len(), 1);
            assert!(
                matches!(err, Some(PcapError::Truncated { offset, packets_read: 1, .. }) if offset == second),
                "cut at {cut}: {err:?}"
            );
        }
    }

    #[test]
    fn timestamp_resolutions() {
        assert_eq!(TsScale::from_tsresol(6).to_ns(1_500_000), 1_500_000_000);
        assert_eq!(TsScale::from_tsresol(0).to_ns(3), 3_000_000_000);
        assert_eq!(TsScale::from_tsresol(9).to_ns(42), 42);
        assert_eq!(TsScale::from_tsresol(12).to_ns(42_999), 42);
        // 10^-29 s: 10^20 does not fit u64, so every count rounds to 0 ns.
        assert_eq!(TsScale::from_tsresol(29).to_ns(u64::MAX), 0);
        assert_eq!(TsScale::from_tsresol(127).to_ns(u64::MAX), 0);
        assert_eq!(TsScale::from_tsresol(0x80).to_ns(2), 2_000_000_000);
        assert_eq!(TsScale::from_tsresol(0x80 | 10).to_ns(512), 500_000_000);
        assert_eq!(TsScale::from_tsresol(0x80 | 127).to_ns(u64::MAX), 0);
        // Saturates rather than wrapping.
        assert_eq!(TsScale::from_tsresol(0).to_ns(u64::MAX), u64::MAX);
    }

    /// Hands out one byte per `read`, as a pipe or socket may.
    struct Dribble<'a>(&'a [u8]);

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((b, rest)), Some(dst)) => {
                    *dst = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn short_reads_give_the_same_packets() {
        for f in [ng_sample(false), classic_sample(true, true)] {
            let mut r = Reader::new(Dribble(&f), "pipe").unwrap();
            let (packets, err) = drain(&mut r);
            assert!(err.is_none(), "{err:?}");
            assert_eq!(packets, read_all(&f).unwrap());
        }
    }

    /// Every single-byte corruption and every prefix of small captures: never a panic, and
    /// every error names the input.
    #[test]
    fn corrupted_input_never_panics() {
        let mut samples = vec![
            ng_sample(false),
            ng_sample(true),
            classic_sample(false, true),
        ];
        let mut opts = shb(true, 1, 0);
        opts.extend(idb(
            true,
            1,
            0,
            &[(NG_IF_TSRESOL, &[9]), (NG_IF_TSOFFSET, &[1; 8])],
        ));
        opts.extend(epb(true, 0, 1, &[1], 1));
        samples.push(opts);
        for base in samples {
            let mut inputs = Vec::new();
            for i in 0..base.len() {
                inputs.push(base[..i].to_vec());
                for v in [0x00, 0xff, 0x7f, 0x80, base[i] ^ 0x01, base[i] ^ 0x40] {
                    let mut f = base.clone();
                    f[i] = v;
                    inputs.push(f);
                }
            }
            for f in inputs {
                let err = match Reader::new(&f[..], "fuzz.cap") {
                    Ok(mut r) => drain(&mut r).1,
                    Err(e) => Some(e),
                };
                if let Some(e) = err {
                    assert!(e.to_string().starts_with("fuzz.cap: "), "{e}");
                }
            }
        }
    }

    use crate::dataset::test_util::shared_dir;

    /// Packets per corpus file (`tcpdump -nn -r FILE`, counting packet lines; plain `wc -l`
    /// over-counts the two files whose packets tcpdump prints on several lines, see below), and
    /// how many of them the capture cut short (captured < original length).
    const CORPUS: &[(&str, u64, u64)] = &[
        ("attack/brute-force-ftp--bruteforce.pcap", 606, 0),
        ("attack/exploit-smbghost--SMBGhost.pcap", 9, 0),
        ("attack/flood-dhcp--dhcp_flood.pcap", 500, 0),
        ("attack/flood-syn--input.pcap", 200, 0),
        (
            "attack/flood-syn-spoofed--pkt.TCP.synflood.spoofed.pcap",
            37841,
            0,
        ),
        (
            "attack/lateral-psexec--20171220_smb_psexec_add_user.pcap",
            400,
            0,
        ),
        ("attack/scan-service--nmap-vsn.pcap", 547, 0),
        ("attack/web-attack-dvwa--cooper-grill-dvwa.pcapng", 64, 0),
        ("benign/dns--dns-edns-ecs.pcap", 89, 0),
        ("benign/dns--dns53.pcap", 1, 0),
        ("benign/ftp--retr.pcap", 67, 0),
        ("benign/ftp-ipv6--ipv6.pcap", 136, 0),
        ("benign/http--bro.org.pcap", 751, 0),
        ("benign/http--get.pcap", 14, 0),
        ("benign/http-range--206_example_a.pcap", 672, 0),
        ("benign/http-upload--http-post-large.pcap", 38, 0),
        ("benign/icmp--icmp.pcap", 12, 0),
        ("benign/icmp6--icmp6.pcap", 49, 0),
        ("benign/ipv6--ipv6.pcap", 17, 0),
        ("benign/sctp--sctp.pcap", 74, 0),
        // snaplen 96: three packets are cut.
        ("benign/tcp--tcp.pcap", 12, 3),
        ("benign/udp--udp.pcap", 2, 0),
        ("benign/web-browsing--wikipedia.pcap", 136, 0),
        ("edge/bad-checksum--ip4-tcp-bad-chksum.pcap", 1, 0),
        // `tcpdump | wc -l` says 384: unknown ethertype 0x8903 packets print hex lines.
        ("edge/fabricpath--cisco-fabric-path.pcap", 130, 0),
        ("edge/ipv6-dest-opts--ip6-hoa-tcp-good-chksum.pcap", 1, 0),
        (
            "edge/ipv6-routing-header--ip6-route0-tcp-good-chksum.pcap",
            1,
            0,
        ),
        (
            "edge/mpls-invalid--mpls-6in6-6in6-invalid-version-6.pcap",
            1,
            0,
        ),
        // A well-formed file holding one packet cut to 58 of its 156 bytes.
        ("edge/truncated--geneve-truncated.pcapng", 1, 1),
        ("edge/tunnel-4in6--4in6.pcap", 1, 0),
        ("edge/tunnel-6in4--6in4.pcap", 1, 0),
        ("edge/tunnel-geneve--geneve.pcap", 6, 0),
        ("edge/tunnel-gre--gre-pptp.pcap", 2, 0),
        ("edge/tunnel-teredo--teredo-udp-in-udp.pcap", 1, 0),
        // `tcpdump | wc -l` says 20: VXLAN packets print the inner frame on a second line.
        ("edge/tunnel-vxlan--vxlan.pcap", 10, 0),
        ("edge/vlan-erspan--gre-erspan3-dot1q.pcap", 2, 0),
    ];

    #[test]
    fn reads_every_corpus_capture() {
        let root = shared_dir().join("corpus/pcap");
        let mut found = Vec::new();
        for dir in ["benign", "attack", "edge"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                if name.contains(".pcap") {
                    found.push(format!("{dir}/{name}"));
                }
            }
        }
        found.sort();
        let mut listed: Vec<String> = CORPUS.iter().map(|(f, _, _)| f.to_string()).collect();
        listed.sort();
        assert_eq!(
            found, listed,
            "corpus files changed: update CORPUS with tcpdump's counts"
        );

        for &(rel, want, want_cut) in CORPUS {
            let path = root.join(rel);
            let mut r = Reader::open(&path).unwrap_or_else(|e| panic!("{e}"));
            let (mut n, mut cut, mut last_ts) = (0u64, 0u64, 0u64);
            loop {
                match r.next_packet() {
                    Ok(Some(p)) => {
                        n += 1;
                        cut += u64::from(p.data.len() < p.wire_len);
                        assert_eq!(p.link_type, LINKTYPE_ETHERNET, "{rel}");
                        // All corpus captures are from after 1999.
                        assert!(
                            p.ts_ns > 900_000_000_000_000_000,
                            "{rel}: packet {n} at {}",
                            p.ts_ns
                        );
                        last_ts = p.ts_ns;
                    }
                    Ok(None) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            assert!(last_ts > 0);
            assert_eq!(
                (n, cut),
                (want, want_cut),
                "{rel}: packets, snap-cut packets"
            );
            assert_eq!(r.packets_read(), want, "{rel}");
        }
    }

    #[test]
    fn corpus_pcapng_details() {
        let root = shared_dir().join("corpus/pcap");
        // if_tsresol = 9: nanoseconds, as `tcpdump --nano -tt` prints 1730145002.900383409.
        let mut r =
            Reader::open(&root.join("attack/web-attack-dvwa--cooper-grill-dvwa.pcapng")).unwrap();
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!(
            (p.ts_ns, p.data.len(), p.wire_len),
            (1_730_145_002_900_383_409, 66, 66)
        );

        // Default µs resolution; tcpdump prints 1402706119.542940.
        let mut r = Reader::open(&root.join("edge/truncated--geneve-truncated.pcapng")).unwrap();
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!(
            (p.ts_ns, p.data.len(), p.wire_len),
            (1_402_706_119_542_940_000, 58, 156)
        );
        assert_eq!(&p.data[12..14], &[0x08, 0x00]);
        assert!(r.next_packet().unwrap().is_none());
    }

    /// A fresh, empty temporary folder for one test.
    fn temp_dir(test: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("detector-pcap-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn corrupted_corpus_copies_name_the_file() {
        let root = shared_dir().join("corpus/pcap");
        let dir = temp_dir("corrupt");
        // (file, bytes cut off the end, packets still read)
        for (rel, cut_bytes, packets) in [
            ("attack/flood-syn--input.pcap", 10, 199u64),
            // The last block is a 108-byte Interface Statistics Block: cutting 10 bytes loses
            // no packet, cutting 150 also cuts the last Enhanced Packet Block (100 bytes).
            ("attack/web-attack-dvwa--cooper-grill-dvwa.pcapng", 10, 64),
            ("attack/web-attack-dvwa--cooper-grill-dvwa.pcapng", 150, 63),
        ] {
            let orig = std::fs::read(root.join(rel)).unwrap();
            let name = rel.rsplit('/').next().unwrap();

            let cut = dir.join(format!("cut{cut_bytes}-{name}"));
            std::fs::write(&cut, &orig[..orig.len() - cut_bytes]).unwrap();
            let mut r = Reader::open(&cut).unwrap();
            let (read, err) = drain(&mut r);
            assert_eq!(read.len() as u64, packets, "{rel}");
            let err = err.expect("a truncation error");
            let shown = cut.display().to_string();
            match &err {
                PcapError::Truncated {
                    file, packets_read, ..
                } => assert_eq!((file, *packets_read), (&shown, packets)),
                other => panic!("{rel}: {other:?}"),
            }
            assert!(
                err.to_string().starts_with(&format!("{shown}: truncated")),
                "{err}"
            );

            // Damaged magic number.
            let bad = dir.join(format!("bad-{name}"));
            let mut b = orig.clone();
            b[..4].copy_from_slice(b"\0\0\0\0");
            std::fs::write(&bad, &b).unwrap();
            let err = Reader::open(&bad).unwrap_err();
            assert!(
                matches!(&err, PcapError::BadMagic { file, magic: 0 } if *file == bad.display().to_string())
            );
            assert!(
                err.to_string().contains(&bad.display().to_string()),
                "{err}"
            );
        }
        let missing = dir.join("missing.pcap");
        let err = Reader::open(&missing).unwrap_err();
        assert!(matches!(err, PcapError::Open { .. }));
        assert!(err.to_string().starts_with(&missing.display().to_string()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
