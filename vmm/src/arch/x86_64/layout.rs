//! Guest physical memory layout on x86_64.
//!
//! ```text
//! 0x0000_0000  real-mode IVT/BDA (RAM)
//! 0x0000_0500  GDT used at entry
//! 0x0000_6000  PVH hvm_start_info
//! 0x0000_7000  PVH memory map, or the Linux zero page (boot_params)
//! 0x0000_8ff0  initial stack (Linux 64-bit boot)
//! 0x0000_9000  identity page tables (PML4, PDPT, PD) for the Linux 64-bit boot
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table (last KiB of base memory, where Linux scans for it)
//! 0x000a_0000  legacy hole (not RAM)
//! 0x0010_0000  kernel, then free RAM; the initrd sits at the top of low RAM
//! 0xc000_0000  32-bit MMIO hole: virtio-mmio slots, IOAPIC, LAPIC (not RAM)
//! 0x1_0000_0000 the rest of RAM when the guest has more than 3 GiB
//! ```

use vm_memory::GuestAddress;

/// Where the GDT loaded at entry lives.
pub const BOOT_GDT_START: u64 = 0x500;
/// Where the PVH `hvm_start_info` structure lives.
pub const PVH_INFO_START: u64 = 0x6000;
/// Where the PVH memory map lives.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Where the PVH module list (the initrd) lives.
pub const PVH_MODLIST_START: u64 = 0x6800;
/// Where the Linux boot protocol's `boot_params` ("zero page") lives.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the Linux 64-bit boot protocol.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table for the Linux 64-bit boot protocol.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (2 MiB pages, identity map of the first GiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line (including its NUL), Linux's `COMMAND_LINE_SIZE` on x86.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area; RAM below it is usable, the MP table sits here.
pub const EBDA_START: u64 = 0x9fc00;
/// First address above the legacy hole, where kernels load.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// First address above 4 GiB, where RAM resumes for large guests.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// First virtio-mmio slot; each slot is [`VIRTIO_MMIO_SLOT_SIZE`] bytes.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio register window.
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 0x1000;
/// Default IOAPIC address.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Default local APIC address.
pub const APIC_START: u64 = 0xfee0_0000;
/// The TSS KVM needs on Intel: three pages just below the BIOS area at the top of 4 GiB.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

/// First legacy IRQ handed to virtio-mmio devices (0-4 are the PIT, keyboard, cascade,
/// COM2, COM1).
pub const VIRTIO_IRQ_FIRST: u32 = 5;
/// Last IRQ the IOAPIC has.
pub const IRQ_LAST: u32 = 23;
/// COM1's IRQ.
pub const SERIAL_IRQ: u32 = 4;

/// Smallest guest memory accepted, in MiB.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Largest guest memory accepted, in MiB (1 TiB: far below any host's physical address width
/// that could run it, and still a sane mapping size).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

/// The guest RAM ranges for `size` bytes of memory: below the MMIO hole first, the rest
/// above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    let low = size.min(MMIO_HOLE_START);
    let mut ranges = vec![(GuestAddress(0), low)];
    if size > low {
        ranges.push((GuestAddress(HIGH_RAM_START), size - low));
    }
    ranges
}

/// End (exclusive) of the RAM below the MMIO hole.
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_HOLE_START)
}

/// One usable-RAM range as the guest must see it (E820 type 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    pub start: u64,
    pub size: u64,
}

/// The RAM the guest may use, as reported in the e820 map or the PVH memory map: the
/// base 640 KiB minus the EBDA, then from 1 MiB to the hole, then above 4 GiB.
pub fn usable_ram(size: u64) -> Vec<RamRange> {
    let mut ranges = vec![RamRange {
        start: 0,
        size: EBDA_START,
    }];
    let low_end = low_ram_end(size);
    if low_end > HIMEM_START {
        ranges.push(RamRange {
            start: HIMEM_START,
            size: low_end - HIMEM_START,
        });
    }
    if size > low_end {
        ranges.push(RamRange {
            start: HIGH_RAM_START,
            size: size - low_end,
        });
    }
    ranges
}

/// Guest address of virtio-mmio slot `index`.
pub fn virtio_mmio_slot(index: u32) -> u64 {
    VIRTIO_MMIO_START + u64::from(index) * VIRTIO_MMIO_SLOT_SIZE
}

/// Number of virtio-mmio slots: one per free legacy IRQ.
pub const VIRTIO_MMIO_SLOTS: u32 = IRQ_LAST - VIRTIO_IRQ_FIRST + 1;

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn small_memory_is_one_range_below_the_hole() {
        assert_eq!(ram_ranges(128 * MIB), vec![(GuestAddress(0), 128 * MIB)]);
        assert_eq!(
            usable_ram(128 * MIB),
            vec![
                RamRange {
                    start: 0,
                    size: EBDA_START
                },
                RamRange {
                    start: HIMEM_START,
                    size: 127 * MIB
                },
            ]
        );
    }

    #[test]
    fn large_memory_splits_around_the_mmio_hole() {
        let ranges = ram_ranges(4 * GIB);
        assert_eq!(
            ranges,
            vec![(GuestAddress(0), 3 * GIB), (GuestAddress(4 * GIB), GIB)]
        );
        let usable = usable_ram(4 * GIB);
        assert_eq!(usable.len(), 3);
        assert_eq!(
            usable[2],
            RamRange {
                start: 4 * GIB,
                size: GIB
            }
        );
        let total: u64 = usable.iter().map(|r| r.size).sum();
        // Everything except the legacy hole between the EBDA and 1 MiB is usable.
        assert_eq!(total, 4 * GIB - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn exactly_three_gib_has_no_high_range() {
        assert_eq!(ram_ranges(3 * GIB).len(), 1);
        assert_eq!(usable_ram(3 * GIB).len(), 2);
    }

    #[test]
    fn virtio_slots_fit_in_the_mmio_hole_below_the_ioapic() {
        let last = virtio_mmio_slot(VIRTIO_MMIO_SLOTS - 1) + VIRTIO_MMIO_SLOT_SIZE;
        const { assert!(VIRTIO_MMIO_START >= MMIO_HOLE_START) };
        assert!(last <= IOAPIC_START);
        assert_eq!(VIRTIO_MMIO_SLOTS, 19);
    }
}
