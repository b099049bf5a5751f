//! `virtio_mmio`: the virtio-mmio transport driven by a hostile driver's register accesses,
//! with a real device behind it (a virtio-blk slot holding a disk, or the balloon) and its
//! queues in guest memory the driver also controls.
//!
//! Input: byte 0 the device (bit 0: balloon, else block), byte 1 the number of accesses,
//! then 8 bytes per access (kind, width, offset as u16, value as u32), then guest memory.
//! Access kinds: write, read, a queue notification through the ioeventfd path
//! (`process_queue`), a configuration change (the host swapping the disk).

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;
use vpod_vmm::config::BalloonConfig;
use vpod_vmm::devices::virtio::balloon::device::BalloonDevice;
use vpod_vmm::devices::virtio::block::disk::RawFile;
use vpod_vmm::devices::virtio::block::BlockDevice;
use vpod_vmm::devices::virtio::{MmioInterrupt, MmioTransport, VirtioDevice};
use vpod_vmm::devices::BusDevice;

use crate::guest::{guest_memory, size_code, DriverImage};
use crate::Seed;

const ACCESS_LEN: usize = 8;
const MAX_ACCESSES: usize = 64;
const WIDTHS: [usize; 4] = [4, 1, 2, 8];

const WRITE: u8 = 0;
const READ: u8 = 1;
const NOTIFY: u8 = 2;
const CONFIG_CHANGED: u8 = 3;

/// A disk image in the scratch directory, unlinked at once: the descriptor keeps it.
fn scratch_disk(sectors: usize) -> RawFile {
    let path = crate::guest::scratch_path("disk");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("scratch disk");
    let _ = std::fs::remove_file(&path);
    file.set_len(sectors as u64 * 512).expect("disk size");
    RawFile::new(file).expect("raw disk")
}

fn device(choice: u8) -> Box<dyn VirtioDevice> {
    if choice & 1 != 0 {
        return Box::new(BalloonDevice::new(&BalloonConfig::default()));
    }
    let mut block = BlockDevice::empty_slot();
    block
        .attach_image(scratch_disk(16), false, b"fuzz")
        .expect("a disk in the slot");
    Box::new(block)
}

pub fn virtio_mmio(data: &[u8]) {
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let count = usize::from(byte(1)).min(MAX_ACCESSES);
    let accesses_end = (2 + count * ACCESS_LEN).min(data.len());
    let accesses = data.get(2..accesses_end).unwrap_or(&[]);
    let memory = Arc::new(guest_memory(data.get(accesses_end..).unwrap_or(&[])));
    let interrupt = Arc::new(MmioInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).expect("irq eventfd"),
    ));
    let mut transport =
        MmioTransport::new(device(byte(0)), memory, interrupt).expect("mmio transport");
    for access in accesses.chunks(ACCESS_LEN) {
        let field = |i: usize| access.get(i).copied().unwrap_or(0);
        let width = WIDTHS[usize::from(field(1) & 3)];
        let offset = u64::from(u16::from_le_bytes([field(2), field(3)]) & 0x1ff);
        let value = u32::from_le_bytes([field(4), field(5), field(6), field(7)]);
        match field(0) % 4 {
            WRITE => {
                let bytes = u64::from(value).to_le_bytes();
                transport.write(offset, &bytes[..width]);
            }
            READ => {
                let mut bytes = [0u8; 8];
                transport.read(offset, &mut bytes[..width]);
            }
            NOTIFY => transport.process_queue(value as usize % 4),
            CONFIG_CHANGED => {
                let _ = transport.notify_config_changed();
            }
            _ => unreachable!("four access kinds"),
        }
    }
}

/// One register access.
fn access(kind: u8, offset: u16, value: u32) -> [u8; ACCESS_LEN] {
    let mut raw = [0u8; ACCESS_LEN];
    raw[0] = kind;
    raw[2..4].copy_from_slice(&offset.to_le_bytes());
    raw[4..8].copy_from_slice(&value.to_le_bytes());
    raw
}

/// A Linux driver's bring-up of `queues` queues of `size` at the layout's places, then a
/// notification of each.
fn bring_up(image: &DriverImage, queues: usize, features_low: u32) -> Vec<[u8; ACCESS_LEN]> {
    let layout = image.layout;
    let mut out = vec![
        access(WRITE, 0x70, 0),
        access(READ, 0x00, 0),
        access(READ, 0x04, 0),
        access(READ, 0x08, 0),
        access(WRITE, 0x70, 1),
        access(WRITE, 0x70, 3),
        access(WRITE, 0x14, 1),
        access(READ, 0x10, 0),
        access(WRITE, 0x24, 1),
        access(WRITE, 0x20, 1),
        access(WRITE, 0x24, 0),
        access(WRITE, 0x20, features_low),
        access(WRITE, 0x70, 0xb),
        access(READ, 0x70, 0),
    ];
    for queue in 0..queues {
        out.extend([
            access(WRITE, 0x30, queue as u32),
            access(READ, 0x34, 0),
            access(WRITE, 0x38, u32::from(layout.size)),
            access(WRITE, 0x80, layout.desc_table(queue) as u32),
            access(WRITE, 0x84, 0),
            access(WRITE, 0x90, layout.avail(queue) as u32),
            access(WRITE, 0x94, 0),
            access(WRITE, 0xa0, layout.used(queue) as u32),
            access(WRITE, 0xa4, 0),
            access(WRITE, 0x44, 1),
        ]);
    }
    out.push(access(WRITE, 0x70, 0xf));
    for queue in 0..queues {
        out.push(access(NOTIFY, 0, queue as u32));
    }
    out.extend([
        access(READ, 0x60, 0),
        access(WRITE, 0x64, 1),
        access(READ, 0x100, 0),
    ]);
    out
}

fn input(device: u8, accesses: &[[u8; ACCESS_LEN]], image: DriverImage) -> Vec<u8> {
    let mut control = vec![device, accesses.len() as u8];
    for access in accesses {
        control.extend_from_slice(access);
    }
    image.into_input(&control)
}

pub fn seeds() -> Vec<Seed> {
    let size = 8;
    assert!(size_code(size) < 8);
    let mut seeds = Vec::new();
    // virtio-blk: a read of sector 1 and the device id.
    let mut image = DriverImage::new(size);
    let base = image.layout.data_base(1);
    image.write(base, &[0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    image.chain(
        0,
        &[
            (base, 16, false),
            (base + 0x100, 512, true),
            (base + 0x400, 1, true),
        ],
    );
    image.write(
        base + 0x500,
        &[8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    image.chain(
        0,
        &[
            (base + 0x500, 16, false),
            (base + 0x600, 20, true),
            (base + 0x700, 1, true),
        ],
    );
    let mut accesses = bring_up(&image, 1, 0x0000_2204);
    accesses.extend([access(CONFIG_CHANGED, 0, 0), access(READ, 0xfc, 0)]);
    seeds.push(("block-bring-up-and-read", input(0, &accesses, image)));
    // The balloon: inflate, deflate and stats queues, a page number to give back.
    let mut image = DriverImage::new(size);
    let base = image.layout.data_base(3);
    image.write(base, &0x9u32.to_le_bytes());
    image.chain(0, &[(base, 4, false)]);
    seeds.push((
        "balloon-bring-up",
        input(1, &bring_up(&image, 3, 0x0000_0006), image),
    ));
    // Out of order: DRIVER_OK before FEATURES_OK, a queue set up after DRIVER_OK, a reset.
    let image = DriverImage::new(size);
    let accesses = [
        access(WRITE, 0x70, 1),
        access(WRITE, 0x70, 7),
        access(WRITE, 0x30, 0),
        access(WRITE, 0x38, 3),
        access(WRITE, 0x44, 1),
        access(NOTIFY, 0, 0),
        access(WRITE, 0x70, 0),
        access(WRITE, 0x30, 9),
        access(READ, 0x34, 0),
    ];
    seeds.push(("out-of-order", input(0, &accesses, image)));
    seeds
}
