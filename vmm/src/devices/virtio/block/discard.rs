//! Discard (virtio 1.2, 5.2.6.2): the guest hands back ranges of the disk it no longer
//! uses, and the host punches holes in the image there, so a sparse image shrinks on the
//! host as the guest deletes files (`du` of it follows what the guest keeps).
//!
//! A request's data is an array of 16-byte segments: sector (le64), number of sectors
//! (le32), flags (le32). Every byte of it is the guest's: the count, the flags and the
//! ranges are checked before anything is touched.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// The most segments one request may carry (config `max_discard_seg`).
pub const MAX_DISCARD_SEGMENTS: u32 = 32;
/// The most sectors one segment may cover (config `max_discard_sectors`): 2 GiB.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Discards are worth sending in whole 4 KiB blocks, the host filesystem's hole size
/// (config `discard_sector_alignment`, in sectors).
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;

const SEGMENT_SIZE: usize = 16;

/// One range the guest discards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub sector: u64,
    pub sectors: u32,
}

/// Why a discard request cannot be run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DiscardError {
    /// More segments than offered, or flags set (unmap is for write-zeroes only): the
    /// device answers "unsupported", as the spec says.
    #[error("the discard request has more segments than offered or flags set")]
    Unsupported,
    /// No segment, a partial segment, a segment larger than offered, or unreadable data.
    #[error("the discard request's segments are malformed")]
    Malformed,
}

/// The segments in a request's data buffers (device-readable, in order).
pub fn read_segments<M: GuestMemoryBackend>(
    memory: &M,
    data: &[(GuestAddress, u32)],
) -> Result<Vec<Segment>, DiscardError> {
    let total: u64 = data.iter().map(|(_, len)| u64::from(*len)).sum();
    if total > u64::from(MAX_DISCARD_SEGMENTS) * SEGMENT_SIZE as u64 {
        return Err(DiscardError::Unsupported);
    }
    if total == 0 || total % SEGMENT_SIZE as u64 != 0 {
        return Err(DiscardError::Malformed);
    }
    let mut bytes = Vec::with_capacity(total as usize);
    for &(addr, len) in data {
        let start = bytes.len();
        bytes.resize(start + len as usize, 0);
        memory
            .read_slice(&mut bytes[start..], addr)
            .map_err(|_| DiscardError::Malformed)?;
    }
    bytes
        .chunks_exact(SEGMENT_SIZE)
        .map(|raw| {
            let field = |range: std::ops::Range<usize>| &raw[range];
            let sector = u64::from_le_bytes(field(0..8).try_into().unwrap_or_default());
            let sectors = u32::from_le_bytes(field(8..12).try_into().unwrap_or_default());
            let flags = u32::from_le_bytes(field(12..16).try_into().unwrap_or_default());
            if flags != 0 {
                return Err(DiscardError::Unsupported);
            }
            if sectors > MAX_DISCARD_SECTORS {
                return Err(DiscardError::Malformed);
            }
            Ok(Segment { sector, sectors })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn put(memory: &GuestMemoryMmap, at: u64, segments: &[(u64, u32, u32)]) -> u32 {
        let mut raw = Vec::new();
        for &(sector, sectors, flags) in segments {
            raw.extend_from_slice(&sector.to_le_bytes());
            raw.extend_from_slice(&sectors.to_le_bytes());
            raw.extend_from_slice(&flags.to_le_bytes());
        }
        memory.write_slice(&raw, GuestAddress(at)).unwrap();
        raw.len() as u32
    }

    #[test]
    fn segments_are_read_in_order_even_split_across_buffers() {
        let m = memory();
        let len = put(&m, 0x1000, &[(8, 16, 0), (1024, 8, 0)]);
        assert_eq!(
            read_segments(&m, &[(GuestAddress(0x1000), len)]).unwrap(),
            vec![
                Segment {
                    sector: 8,
                    sectors: 16
                },
                Segment {
                    sector: 1024,
                    sectors: 8
                }
            ]
        );
        // The same bytes in two buffers cut mid-segment.
        let mut raw = vec![0u8; len as usize];
        m.read_slice(&mut raw, GuestAddress(0x1000)).unwrap();
        m.write_slice(&raw[..20], GuestAddress(0x3000)).unwrap();
        m.write_slice(&raw[20..], GuestAddress(0x5000)).unwrap();
        assert_eq!(
            read_segments(
                &m,
                &[(GuestAddress(0x3000), 20), (GuestAddress(0x5000), len - 20)]
            )
            .unwrap()
            .len(),
            2
        );
    }

    #[test]
    fn hostile_segments_are_refused() {
        let m = memory();
        let one = put(&m, 0x1000, &[(0, 8, 0)]);
        assert_eq!(read_segments(&m, &[]), Err(DiscardError::Malformed));
        assert_eq!(
            read_segments(&m, &[(GuestAddress(0x1000), one - 1)]),
            Err(DiscardError::Malformed)
        );
        let flagged = put(&m, 0x2000, &[(0, 8, 1)]);
        assert_eq!(
            read_segments(&m, &[(GuestAddress(0x2000), flagged)]),
            Err(DiscardError::Unsupported)
        );
        let huge = put(&m, 0x3000, &[(0, MAX_DISCARD_SECTORS + 1, 0)]);
        assert_eq!(
            read_segments(&m, &[(GuestAddress(0x3000), huge)]),
            Err(DiscardError::Malformed)
        );
        let many = vec![(0u64, 8u32, 0u32); MAX_DISCARD_SEGMENTS as usize + 1];
        let len = put(&m, 0x4000, &many);
        assert_eq!(
            read_segments(&m, &[(GuestAddress(0x4000), len)]),
            Err(DiscardError::Unsupported)
        );
        // Lengths that would overflow a sum, and memory that is not there.
        assert_eq!(
            read_segments(
                &m,
                &[
                    (GuestAddress(0x1000), u32::MAX),
                    (GuestAddress(0), u32::MAX)
                ]
            ),
            Err(DiscardError::Unsupported)
        );
        assert_eq!(
            read_segments(&m, &[(GuestAddress(0xfff8), 16)]),
            Err(DiscardError::Malformed)
        );
    }
}
