//! Parsing a virtio-blk request out of a descriptor chain. Every field comes from the guest
//! and is treated as hostile: nothing here can panic, whatever the descriptors say.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Request types (virtio 1.2, 5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;

/// Status byte values.
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

const HEADER_SIZE: u32 = 16;

/// What the request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Read from the disk into guest buffers.
    In,
    /// Write guest buffers to the disk.
    Out,
    Flush,
    GetId,
    /// Give back the ranges the data's segments name.
    Discard,
    Unsupported(u32),
}

/// A well-formed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestKind,
    pub sector: u64,
    /// The data buffers, in order.
    pub data: Vec<(GuestAddress, u32)>,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

impl Request {
    /// Total length of the data buffers.
    pub fn data_len(&self) -> u64 {
        self.data.iter().map(|(_, len)| u64::from(*len)).sum()
    }
}

/// Why a descriptor chain is not a valid request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("the descriptor chain is empty")]
    Empty,
    #[error("the descriptor chain loops, is longer than the queue or points outside guest memory")]
    Truncated,
    #[error("the request header descriptor is too short or device-writable")]
    BadHeader,
    #[error("the request header cannot be read from guest memory")]
    HeaderUnreadable,
    #[error("the status descriptor is missing, empty or not device-writable")]
    BadStatus,
    #[error("a data descriptor has the wrong direction for the request")]
    DataDirection,
    #[error("a data buffer lies outside guest memory")]
    DataOutOfMemory,
}

/// The status descriptor's address if the chain's last descriptor can take the status byte;
/// used to report an error for chains that fail to parse.
pub fn status_address<M: GuestMemoryBackend>(
    descriptors: &[Descriptor],
    memory: &M,
) -> Option<GuestAddress> {
    let last = descriptors.last()?;
    (last.is_write_only()
        && last.len() >= 1
        && !last.has_next()
        && memory.address_in_range(last.addr()))
    .then(|| last.addr())
}

/// Parses the chain's descriptors (header, data..., status).
pub fn parse_request<M: GuestMemoryBackend>(
    descriptors: &[Descriptor],
    memory: &M,
) -> Result<Request, RequestError> {
    let (header, rest) = descriptors.split_first().ok_or(RequestError::Empty)?;
    let (status, data) = rest.split_last().ok_or(RequestError::BadStatus)?;
    // The chain iterator stops silently at its length limit or at an unreadable descriptor;
    // a last descriptor that still points onwards means the chain was cut short.
    if status.has_next() {
        return Err(RequestError::Truncated);
    }
    if header.is_write_only() || header.len() < HEADER_SIZE {
        return Err(RequestError::BadHeader);
    }
    if !status.is_write_only() || status.len() < 1 || !memory.address_in_range(status.addr()) {
        return Err(RequestError::BadStatus);
    }
    let mut raw = [0u8; HEADER_SIZE as usize];
    memory
        .read_slice(&mut raw, header.addr())
        .map_err(|_| RequestError::HeaderUnreadable)?;
    let request_type = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let sector = u64::from_le_bytes([
        raw[8], raw[9], raw[10], raw[11], raw[12], raw[13], raw[14], raw[15],
    ]);
    let kind = match request_type {
        VIRTIO_BLK_T_IN => RequestKind::In,
        VIRTIO_BLK_T_OUT => RequestKind::Out,
        VIRTIO_BLK_T_FLUSH => RequestKind::Flush,
        VIRTIO_BLK_T_GET_ID => RequestKind::GetId,
        VIRTIO_BLK_T_DISCARD => RequestKind::Discard,
        other => RequestKind::Unsupported(other),
    };
    let device_writes = matches!(kind, RequestKind::In | RequestKind::GetId);
    let mut buffers = Vec::with_capacity(data.len());
    for descriptor in data {
        if matches!(
            kind,
            RequestKind::In | RequestKind::Out | RequestKind::GetId | RequestKind::Discard
        ) && descriptor.is_write_only() != device_writes
        {
            return Err(RequestError::DataDirection);
        }
        if descriptor.len() > 0 && !memory.check_range(descriptor.addr(), descriptor.len() as usize)
        {
            return Err(RequestError::DataOutOfMemory);
        }
        buffers.push((descriptor.addr(), descriptor.len()));
    }
    Ok(Request {
        kind,
        sector,
        data: buffers,
        status: status.addr(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use vm_memory::GuestMemoryMmap;

    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const NEXT: u16 = VRING_DESC_F_NEXT as u16;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("memory")
    }

    fn header(memory: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&kind.to_le_bytes());
        raw[8..].copy_from_slice(&sector.to_le_bytes());
        memory.write_slice(&raw, GuestAddress(at)).expect("header");
    }

    fn chain(parts: &[(u64, u32, u16)]) -> Vec<Descriptor> {
        let count = parts.len();
        parts
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let next = if i + 1 < count { NEXT } else { 0 };
                Descriptor::new(addr, len, flags | next, (i + 1) as u16)
            })
            .collect()
    }

    #[test]
    fn read_request_parses() {
        let m = memory();
        header(&m, 0x1000, VIRTIO_BLK_T_IN, 8);
        let descs = chain(&[(0x1000, 16, 0), (0x2000, 512, WRITE), (0x3000, 1, WRITE)]);
        let request = parse_request(&descs, &m).expect("valid");
        assert_eq!(request.kind, RequestKind::In);
        assert_eq!(request.sector, 8);
        assert_eq!(request.data, vec![(GuestAddress(0x2000), 512)]);
        assert_eq!(request.status, GuestAddress(0x3000));
    }

    #[test]
    fn flush_without_data_parses() {
        let m = memory();
        header(&m, 0x1000, VIRTIO_BLK_T_FLUSH, 0);
        let descs = chain(&[(0x1000, 16, 0), (0x3000, 1, WRITE)]);
        assert_eq!(
            parse_request(&descs, &m).expect("valid").kind,
            RequestKind::Flush
        );
    }

    #[test]
    fn malformed_chains_are_errors() {
        let m = memory();
        header(&m, 0x1000, VIRTIO_BLK_T_OUT, 0);
        assert_eq!(parse_request(&[], &m), Err(RequestError::Empty));
        assert_eq!(
            parse_request(&chain(&[(0x1000, 16, 0)]), &m),
            Err(RequestError::BadStatus)
        );
        // Header too short, or writable.
        let descs = chain(&[(0x1000, 8, 0), (0x3000, 1, WRITE)]);
        assert_eq!(parse_request(&descs, &m), Err(RequestError::BadHeader));
        let descs = chain(&[(0x1000, 16, WRITE), (0x3000, 1, WRITE)]);
        assert_eq!(parse_request(&descs, &m), Err(RequestError::BadHeader));
        // Status read-only or empty.
        let descs = chain(&[(0x1000, 16, 0), (0x3000, 1, 0)]);
        assert_eq!(parse_request(&descs, &m), Err(RequestError::BadStatus));
        let descs = chain(&[(0x1000, 16, 0), (0x3000, 0, WRITE)]);
        assert_eq!(parse_request(&descs, &m), Err(RequestError::BadStatus));
        // A write request whose data buffer is device-writable.
        let descs = chain(&[(0x1000, 16, 0), (0x2000, 512, WRITE), (0x3000, 1, WRITE)]);
        assert_eq!(parse_request(&descs, &m), Err(RequestError::DataDirection));
    }

    #[test]
    fn out_of_memory_buffers_are_errors() {
        let m = memory();
        header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
        let descs = chain(&[(0x1000, 16, 0), (0xf_ff00, 512, WRITE), (0x3000, 1, WRITE)]);
        assert_eq!(
            parse_request(&descs, &m),
            Err(RequestError::DataOutOfMemory)
        );
        let descs = chain(&[
            (0x1000, 16, 0),
            (u64::MAX - 10, 512, WRITE),
            (0x3000, 1, WRITE),
        ]);
        assert_eq!(
            parse_request(&descs, &m),
            Err(RequestError::DataOutOfMemory)
        );
        let descs = chain(&[(0x1000, 16, 0), (0x2000, 512, WRITE), (0x20_0000, 1, WRITE)]);
        assert_eq!(parse_request(&descs, &m), Err(RequestError::BadStatus));
        let descs = chain(&[(0x20_0000, 16, 0), (0x3000, 1, WRITE)]);
        assert_eq!(
            parse_request(&descs, &m),
            Err(RequestError::HeaderUnreadable)
        );
    }

    #[test]
    fn cut_short_chain_is_truncated() {
        let m = memory();
        header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
        let mut descs = chain(&[(0x1000, 16, 0), (0x3000, 1, WRITE)]);
        descs[1] = Descriptor::new(0x3000, 1, WRITE | NEXT, 0);
        assert_eq!(parse_request(&descs, &m), Err(RequestError::Truncated));
        assert_eq!(status_address(&descs, &m), None);
    }

    #[test]
    fn unknown_types_parse_as_unsupported() {
        let m = memory();
        header(&m, 0x1000, 77, 0);
        let descs = chain(&[(0x1000, 16, 0), (0x3000, 1, WRITE)]);
        assert_eq!(
            parse_request(&descs, &m).expect("valid").kind,
            RequestKind::Unsupported(77)
        );
        assert_eq!(status_address(&descs, &m), Some(GuestAddress(0x3000)));
    }
}
