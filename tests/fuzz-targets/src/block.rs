//! `block_request`: the virtio-blk request parser and queue handler on a guest's rings.
//!
//! Control bytes: 0 the queue size, 1 flags (bit 0 read-only, bit 1 a disk size that is
//! not whole sectors), 2 the disk's size in sectors. The rest is guest memory. Checked: no
//! panic, and no access outside the disk (a raw file would grow).

use std::io;

use vm_memory::VolatileSlice;
use vpod_vmm::devices::virtio::block::handler::BlockQueueHandler;
use vpod_vmm::devices::virtio::block::DiskImage;

use crate::guest::{size_code, DriverImage, GuestInput, Quiet};
use crate::Seed;

const CONTROL: usize = 3;
const SERIAL: [u8; 20] = *b"fuzz-disk-serial-012";

/// A disk in memory that fails the fuzz run on any access past its end.
pub struct BoundedDisk {
    bytes: Vec<u8>,
}

impl BoundedDisk {
    fn range(&self, offset: u64, len: usize) -> std::ops::Range<usize> {
        let start = usize::try_from(offset).expect("disk offset fits usize");
        let end = start.checked_add(len).expect("disk range overflows");
        assert!(
            end <= self.bytes.len(),
            "access past the disk's end: {start}..{end} of {}",
            self.bytes.len()
        );
        start..end
    }
}

impl DiskImage for BoundedDisk {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let range = self.range(offset, buf.len());
        buf.copy_from_slice(&self.bytes[range]);
        Ok(())
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let range = self.range(offset, buf.len());
        self.bytes[range].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).expect("discard length fits usize");
        let range = self.range(offset, len);
        self.bytes[range].fill(0);
        Ok(())
    }

    fn read_exact_into_at(&mut self, targets: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        let total: usize = targets.iter().map(|t| t.len()).sum();
        let mut at = self.range(offset, total).start;
        for target in targets {
            target.copy_from(&self.bytes[at..at + target.len()]);
            at += target.len();
        }
        Ok(())
    }
}

pub fn block_request(data: &[u8]) {
    let input = GuestInput::split(data, CONTROL);
    let layout = crate::guest::Layout::new(input.queue_size(0));
    let memory = input.memory();
    let flags = input.byte(1);
    let mut size = usize::from(input.byte(2)) * 512;
    if flags & 2 != 0 {
        size += 100;
    }
    let disk = BoundedDisk {
        bytes: (0..size).map(|i| (i / 512) as u8).collect(),
    };
    let mut handler = BlockQueueHandler::new(layout.queue(0), disk, Quiet, flags & 1 != 0, SERIAL);
    handler.process_queue(&memory);
    // Nothing new was made available: a second pass must find nothing to do.
    handler.process_queue(&memory);
    assert_eq!(handler.disk.bytes.len(), size, "the disk changed size");
}

/// A request header: type, reserved, sector.
fn header(kind: u32, sector: u64) -> [u8; 16] {
    let mut raw = [0u8; 16];
    raw[0..4].copy_from_slice(&kind.to_le_bytes());
    raw[8..16].copy_from_slice(&sector.to_le_bytes());
    raw
}

pub fn seeds() -> Vec<Seed> {
    let size = 16;
    let control = [size_code(size), 0, 64];
    let one = |name, kind: u32, sector, data: &[(u32, bool)], payload: &[u8]| {
        let mut image = DriverImage::new(size);
        let base = image.layout.data_base(1);
        image.write(base, &header(kind, sector));
        let mut buffers = vec![(base, 16, false)];
        let mut at = base + 0x100;
        for &(len, writable) in data {
            buffers.push((at, len, writable));
            at += u64::from(len).next_multiple_of(0x100);
        }
        if !payload.is_empty() {
            image.write(base + 0x100, payload);
        }
        buffers.push((at, 1, true));
        image.chain(0, &buffers);
        (name, image.into_input(&control))
    };
    let mut seeds = vec![
        one("read-one-sector", 0, 1, &[(512, true)], &[]),
        one("read-two-buffers", 0, 3, &[(512, true), (1024, true)], &[]),
        one("write-one-sector", 1, 2, &[(512, false)], &[0xab; 512]),
        one("flush", 4, 0, &[], &[]),
        one("get-id", 8, 0, &[(20, true)], &[]),
        one("read-past-end", 0, 64, &[(512, true)], &[]),
        one("unsupported-type", 99, 0, &[(512, true)], &[]),
    ];
    // A discard of 8 sectors at sector 8: one 16-byte segment (sector, sectors, flags).
    let mut segment = [0u8; 16];
    segment[0..8].copy_from_slice(&8u64.to_le_bytes());
    segment[8..12].copy_from_slice(&8u32.to_le_bytes());
    seeds.push(one("discard", 11, 0, &[(16, false)], &segment));
    // Several requests queued at once, on a disk whose size is not whole sectors.
    let mut image = DriverImage::new(size);
    let base = image.layout.data_base(1);
    for (i, kind) in [0u32, 1, 4, 8].into_iter().enumerate() {
        let at = base + 0x400 * i as u64;
        image.write(at, &header(kind, i as u64));
        let writable = kind != 1;
        image.chain(
            0,
            &[
                (at, 16, false),
                (at + 0x100, 512, writable),
                (at + 0x300, 1, true),
            ],
        );
    }
    seeds.push(("four-requests", image.into_input(&[size_code(size), 2, 8])));
    seeds
}
