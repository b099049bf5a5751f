//! The virtio-vsock packet header (virtio 1.2, 5.10.6) and reading/writing packets through
//! descriptor chains. Everything here is pure: the header is plain data and a chain is a
//! list of guest buffers, so both can be tested and fuzzed without KVM.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::metrics::DropReason;
use super::{HOST_CID, MAX_PAYLOAD};

/// Size of the little-endian header on the wire.
pub const HEADER_SIZE: usize = 44;

/// The only socket type supported.
pub const TYPE_STREAM: u16 = 1;

/// Shutdown flags: the sender will receive no more / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// Packet operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Request,
    Response,
    Rst,
    Shutdown,
    Rw,
    CreditUpdate,
    CreditRequest,
}

impl Op {
    pub fn from_wire(op: u16) -> Option<Op> {
        Some(match op {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }

    pub fn to_wire(self) -> u16 {
        match self {
            Op::Request => 1,
            Op::Response => 2,
            Op::Rst => 3,
            Op::Shutdown => 4,
            Op::Rw => 5,
            Op::CreditUpdate => 6,
            Op::CreditRequest => 7,
        }
    }
}

/// A packet header as it is on the wire; `op` and `type_` are kept raw so that hostile values
/// survive parsing and are judged by the caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl PacketHeader {
    pub fn from_bytes(raw: &[u8; HEADER_SIZE]) -> Self {
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at =
            |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        let u16_at = |at: usize| u16::from_le_bytes([raw[at], raw[at + 1]]);
        PacketHeader {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut raw = [0u8; HEADER_SIZE];
        raw[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        raw[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        raw[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        raw[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        raw[24..28].copy_from_slice(&self.len.to_le_bytes());
        raw[28..30].copy_from_slice(&self.type_.to_le_bytes());
        raw[30..32].copy_from_slice(&self.op.to_le_bytes());
        raw[32..36].copy_from_slice(&self.flags.to_le_bytes());
        raw[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        raw[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        raw
    }

    /// The operation, if it is one the protocol defines.
    pub fn operation(&self) -> Option<Op> {
        Op::from_wire(self.op)
    }
}

/// The guest buffers of one descriptor chain, seen as one byte range.
#[derive(Debug, Default, Clone)]
pub struct ChainBuffers {
    segments: Vec<(GuestAddress, u32)>,
    len: u64,
}

impl ChainBuffers {
    pub fn clear(&mut self) {
        self.segments.clear();
        self.len = 0;
    }

    pub fn push(&mut self, addr: GuestAddress, len: u32) {
        self.segments.push((addr, len));
        self.len += u64::from(len);
    }

    /// Total bytes of all buffers.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `f(address, range in data)` for each piece of `[offset, offset + len)`.
    fn for_each_piece<F>(&self, offset: u64, len: usize, mut f: F) -> bool
    where
        F: FnMut(GuestAddress, std::ops::Range<usize>) -> bool,
    {
        let Some(end) = offset.checked_add(len as u64) else {
            return false;
        };
        if end > self.len {
            return false;
        }
        let mut start_of_segment = 0u64;
        let mut done = 0usize;
        for &(addr, seg_len) in &self.segments {
            if done == len {
                break;
            }
            let seg_end = start_of_segment + u64::from(seg_len);
            let at = offset + done as u64;
            if at < seg_end && seg_len > 0 {
                let within = at - start_of_segment;
                let take = ((seg_end - at) as usize).min(len - done);
                let Some(address) = addr.0.checked_add(within) else {
                    return false;
                };
                if !f(GuestAddress(address), done..done + take) {
                    return false;
                }
                done += take;
            }
            start_of_segment = seg_end;
        }
        done == len
    }

    /// Reads `data.len()` bytes at `offset`; false if any of them is outside the buffers or
    /// guest memory.
    pub fn read_at<M: GuestMemory>(&self, memory: &M, offset: u64, data: &mut [u8]) -> bool {
        let len = data.len();
        self.for_each_piece(offset, len, |addr, range| {
            memory.read_slice(&mut data[range], addr).is_ok()
        })
    }

    /// Writes `data` at `offset`; false if any byte is outside the buffers or guest memory.
    pub fn write_at<M: GuestMemory>(&self, memory: &M, offset: u64, data: &[u8]) -> bool {
        self.for_each_piece(offset, data.len(), |addr, range| {
            memory.write_slice(&data[range], addr).is_ok()
        })
    }
}

/// Checks a header from the guest against the device's rules: `chain_len` is how many bytes
/// the chain carries in all. Returns the operation, or why the packet must be dropped.
pub fn check_guest_header(
    header: &PacketHeader,
    guest_cid: u64,
    chain_len: u64,
) -> Result<Op, DropReason> {
    let carried = chain_len.saturating_sub(HEADER_SIZE as u64);
    if header.len as usize > MAX_PAYLOAD || u64::from(header.len) > carried {
        return Err(DropReason::BadLength);
    }
    if header.type_ != TYPE_STREAM {
        return Err(DropReason::BadType);
    }
    if header.src_cid != guest_cid || header.dst_cid != HOST_CID {
        return Err(DropReason::BadCid);
    }
    header.operation().ok_or(DropReason::UnknownOp)
}

/// The reset the host sends for a guest packet that names no connection it knows.
pub fn reset_reply(to: &PacketHeader) -> PacketHeader {
    PacketHeader {
        src_cid: to.dst_cid,
        dst_cid: to.src_cid,
        src_port: to.dst_port,
        dst_port: to.src_port,
        len: 0,
        type_: TYPE_STREAM,
        op: Op::Rst.to_wire(),
        flags: 0,
        buf_alloc: 0,
        fwd_cnt: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vm_memory::GuestMemoryMmap;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1_0000)]).expect("memory")
    }

    #[test]
    fn header_round_trips_in_wire_order() {
        let header = PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1024,
            dst_port: 52,
            len: 5,
            type_: TYPE_STREAM,
            op: Op::Rw.to_wire(),
            flags: 0,
            buf_alloc: 262_144,
            fwd_cnt: 9,
        };
        let raw = header.to_bytes();
        assert_eq!(&raw[0..8], &3u64.to_le_bytes());
        assert_eq!(&raw[24..28], &5u32.to_le_bytes());
        assert_eq!(&raw[30..32], &5u16.to_le_bytes());
        assert_eq!(PacketHeader::from_bytes(&raw), header);
        assert_eq!(header.operation(), Some(Op::Rw));
    }

    #[test]
    fn unknown_ops_parse_but_have_no_operation() {
        let mut raw = [0u8; HEADER_SIZE];
        raw[30] = 99;
        assert_eq!(PacketHeader::from_bytes(&raw).operation(), None);
        for op in 1..=7u16 {
            assert_eq!(Op::from_wire(op).map(Op::to_wire), Some(op));
        }
    }

    #[test]
    fn chain_reads_and_writes_span_segments() {
        let m = memory();
        let mut chain = ChainBuffers::default();
        chain.push(GuestAddress(0x100), 10);
        chain.push(GuestAddress(0x200), 0);
        chain.push(GuestAddress(0x300), 10);
        assert!(chain.write_at(&m, 5, b"0123456789"));
        let mut back = [0u8; 10];
        assert!(chain.read_at(&m, 5, &mut back));
        assert_eq!(&back, b"0123456789");
        let mut first = [0u8; 5];
        m.read_slice(&mut first, GuestAddress(0x105)).expect("read");
        assert_eq!(&first, b"01234");
        assert!(!chain.read_at(&m, 15, &mut back), "past the end");
        assert!(!chain.write_at(&m, u64::MAX, b"x"));
    }

    #[test]
    fn chain_outside_memory_fails_cleanly() {
        let m = memory();
        let mut chain = ChainBuffers::default();
        chain.push(GuestAddress(u64::MAX - 4), 100);
        let mut data = [0u8; 50];
        assert!(!chain.read_at(&m, 0, &mut data));
        assert!(!chain.write_at(&m, 10, &data));
    }

    fn valid() -> PacketHeader {
        PacketHeader {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            len: 10,
            type_: TYPE_STREAM,
            op: Op::Rw.to_wire(),
            ..PacketHeader::default()
        }
    }

    #[test]
    fn hostile_headers_are_refused_with_their_reason() {
        let chain = HEADER_SIZE as u64 + 10;
        assert_eq!(check_guest_header(&valid(), 3, chain), Ok(Op::Rw));
        let longer = PacketHeader { len: 11, ..valid() };
        assert_eq!(
            check_guest_header(&longer, 3, chain),
            Err(DropReason::BadLength)
        );
        let huge = PacketHeader {
            len: u32::MAX,
            ..valid()
        };
        assert_eq!(
            check_guest_header(&huge, 3, u64::MAX),
            Err(DropReason::BadLength)
        );
        assert_eq!(
            check_guest_header(&valid(), 3, 10),
            Err(DropReason::BadLength)
        );
        let dgram = PacketHeader {
            type_: 2,
            ..valid()
        };
        assert_eq!(
            check_guest_header(&dgram, 3, chain),
            Err(DropReason::BadType)
        );
        assert_eq!(
            check_guest_header(&valid(), 4, chain),
            Err(DropReason::BadCid)
        );
        let elsewhere = PacketHeader {
            dst_cid: 7,
            ..valid()
        };
        assert_eq!(
            check_guest_header(&elsewhere, 3, chain),
            Err(DropReason::BadCid)
        );
        let odd = PacketHeader { op: 0, ..valid() };
        assert_eq!(
            check_guest_header(&odd, 3, chain),
            Err(DropReason::UnknownOp)
        );
    }

    #[test]
    fn reset_reply_swaps_the_addresses() {
        let rst = reset_reply(&valid());
        assert_eq!((rst.src_cid, rst.dst_cid), (HOST_CID, 3));
        assert_eq!((rst.src_port, rst.dst_port), (52, 1000));
        assert_eq!(rst.operation(), Some(Op::Rst));
    }

    proptest! {
        // Bounded, so `make test` runs the parser's fuzz target in fixed time.
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_44_bytes_parse_and_round_trip(raw in prop::array::uniform32(any::<u8>()), tail in prop::array::uniform12(any::<u8>())) {
            let mut bytes = [0u8; HEADER_SIZE];
            bytes[..32].copy_from_slice(&raw);
            bytes[32..].copy_from_slice(&tail);
            let header = PacketHeader::from_bytes(&bytes);
            prop_assert_eq!(header.to_bytes(), bytes);
        }

        #[test]
        fn random_chains_never_panic(
            segments in prop::collection::vec((any::<u64>(), any::<u32>()), 0..8),
            offset in any::<u64>(),
            len in 0usize..300,
        ) {
            let m = memory();
            let mut chain = ChainBuffers::default();
            for (addr, seg_len) in segments {
                chain.push(GuestAddress(addr % 0x2_0000), seg_len % 0x2000);
            }
            let mut data = vec![0u8; len];
            let _ = chain.read_at(&m, offset % 0x4000, &mut data);
            let _ = chain.write_at(&m, offset, &data);
        }
    }
}
