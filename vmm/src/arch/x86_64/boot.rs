//! The structures a kernel reads at entry: the PVH start info with its memory map, or the
//! Linux "zero page" (`boot_params`) with its e820 table.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::layout::{
    usable_ram, CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};

/// Errors writing the boot structures.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot write the boot parameters into guest memory")]
    Configure(#[source] linux_loader::configurator::Error),
}

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448;
/// "Undefined" boot loader id in `type_of_loader`.
const LOADER_UNDEFINED: u8 = 0xff;
const KERNEL_ALIGNMENT: u32 = 0x0100_0000;

/// Where the kernel finds what it needs besides its own image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootInputs {
    /// Total guest RAM in bytes.
    pub memory_size: u64,
    /// Command line length without its NUL.
    pub cmdline_len: usize,
    /// Initrd address and size, if any.
    pub initrd: Option<(u64, u64)>,
}

/// The PVH start info, its memory map and module list.
pub fn pvh_start_info(
    inputs: &BootInputs,
) -> (
    hvm_start_info,
    Vec<hvm_memmap_table_entry>,
    Vec<hvm_modlist_entry>,
) {
    let memmap: Vec<hvm_memmap_table_entry> = usable_ram(inputs.memory_size)
        .into_iter()
        .map(|range| hvm_memmap_table_entry {
            addr: range.start,
            size: range.size,
            type_: E820_RAM,
            reserved: 0,
        })
        .collect();
    let modules: Vec<hvm_modlist_entry> = inputs
        .initrd
        .map(|(paddr, size)| hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() {
            0
        } else {
            PVH_MODLIST_START
        },
        ..Default::default()
    };
    (start_info, memmap, modules)
}

/// The Linux zero page; `header` is the bzImage's setup header, if the kernel had one.
pub fn linux_boot_params(inputs: &BootInputs, header: Option<setup_header>) -> boot_params {
    let mut params = boot_params::default();
    match header {
        Some(header) => params.hdr = header,
        None => {
            params.hdr.boot_flag = BOOT_FLAG_MAGIC;
            params.hdr.header = HDRS_MAGIC;
            params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
        }
    }
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = inputs.cmdline_len as u32;
    if let Some((addr, size)) = inputs.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let ranges = usable_ram(inputs.memory_size);
    for (slot, range) in params.e820_table.iter_mut().zip(ranges.iter()) {
        *slot = boot_e820_entry {
            addr: range.start,
            size: range.size,
            r#type: E820_RAM,
        };
    }
    params.e820_entries = ranges.len().min(params.e820_table.len()) as u8;
    params
}

/// Writes the PVH start info, memory map and module list into guest memory.
pub fn write_pvh_boot(memory: &GuestMemoryMmap, inputs: &BootInputs) -> Result<(), BootError> {
    let (start_info, memmap, modules) = pvh_start_info(inputs);
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&params, memory).map_err(BootError::Configure)
}

/// Writes the Linux zero page into guest memory.
pub fn write_linux_boot(
    memory: &GuestMemoryMmap,
    inputs: &BootInputs,
    header: Option<setup_header>,
) -> Result<(), BootError> {
    let zero_page = linux_boot_params(inputs, header);
    let params = BootParams::new(&zero_page, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams(&params, memory).map_err(BootError::Configure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{HIGH_RAM_START, HIMEM_START};
    use vm_memory::Bytes;

    const MIB: u64 = 1 << 20;

    fn inputs(memory_size: u64, initrd: Option<(u64, u64)>) -> BootInputs {
        BootInputs {
            memory_size,
            cmdline_len: 42,
            initrd,
        }
    }

    #[test]
    fn pvh_memmap_lists_ram_around_the_holes() {
        let (info, memmap, modules) = pvh_start_info(&inputs(4096 * MIB, None));
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.memmap_entries, 3);
        assert_eq!(memmap[1].addr, HIMEM_START);
        assert_eq!(memmap[2].addr, HIGH_RAM_START);
        assert_eq!(memmap[2].size, 1024 * MIB);
        assert!(modules.is_empty());
        assert_eq!(info.nr_modules, 0);
    }

    #[test]
    fn pvh_initrd_is_the_one_module() {
        let (info, _, modules) = pvh_start_info(&inputs(128 * MIB, Some((0x700_0000, 1234))));
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, PVH_MODLIST_START);
        assert_eq!((modules[0].paddr, modules[0].size), (0x700_0000, 1234));
    }

    #[test]
    fn zero_page_has_e820_cmdline_and_initrd() {
        let params = linux_boot_params(&inputs(256 * MIB, Some((0x800_0000, 99))), None);
        let entries = params.e820_entries;
        assert_eq!(entries, 2);
        let second = params.e820_table[1];
        let (addr, size) = (second.addr, second.size);
        assert_eq!((addr, size), (HIMEM_START, 255 * MIB));
        let hdr = params.hdr;
        let (flag, ptr, len, image) = (
            hdr.boot_flag,
            hdr.cmd_line_ptr,
            hdr.cmdline_size,
            hdr.ramdisk_image,
        );
        assert_eq!(flag, BOOT_FLAG_MAGIC);
        assert_eq!(u64::from(ptr), CMDLINE_START);
        assert_eq!(len, 42);
        assert_eq!(image, 0x800_0000);
    }

    #[test]
    fn pvh_boot_structures_land_in_guest_memory() {
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)])
            .expect("test memory");
        write_pvh_boot(&memory, &inputs(16 * MIB, Some((0x80_0000, 4096)))).expect("written");
        let info: hvm_start_info = memory
            .read_obj(GuestAddress(PVH_INFO_START))
            .expect("readable");
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        let first: hvm_memmap_table_entry = memory
            .read_obj(GuestAddress(PVH_MEMMAP_START))
            .expect("readable");
        assert_eq!(first.type_, E820_RAM);
        let module: hvm_modlist_entry = memory
            .read_obj(GuestAddress(PVH_MODLIST_START))
            .expect("readable");
        assert_eq!(module.size, 4096);
    }
}
