//! Initial vCPU state on x86_64: MSRs, FPU, local APIC, segments, page tables and registers.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    BOOT_GDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START, PVH_INFO_START,
    ZERO_PAGE_START,
};

/// Errors setting up a vCPU's registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("KVM refused the boot MSRs")]
    SetMsrs(#[source] kvm_ioctls::Error),
    #[error("KVM accepted only {0} of {1} boot MSRs")]
    PartialMsrs(usize, usize),
    #[error("cannot build the MSR list")]
    MsrList(#[source] vmm_sys_util::fam::Error),
    #[error("cannot set the FPU state")]
    SetFpu(#[source] kvm_ioctls::Error),
    #[error("cannot access the local APIC")]
    Lapic(#[source] kvm_ioctls::Error),
    #[error("cannot access the special registers")]
    Sregs(#[source] kvm_ioctls::Error),
    #[error("cannot set the general registers")]
    Regs(#[source] kvm_ioctls::Error),
    #[error("cannot write the GDT or page tables into guest memory")]
    GuestMemory(#[source] vm_memory::GuestMemoryError),
}

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// The Xen PVH ABI: 32-bit protected mode, paging off, `rbx` = `hvm_start_info`.
    Pvh,
    /// Linux's 64-bit boot protocol: long mode, identity-mapped, `rsi` = `boot_params`.
    Linux64,
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back.
const MTRR_ENABLE_WRITE_BACK: u64 = (1 << 11) | 6;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// The MSR values every vCPU starts with.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITE_BACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Sets the boot MSRs.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(RegsError::MsrList)?;
    let written = vcpu.set_msrs(&msrs).map_err(RegsError::SetMsrs)?;
    if written != entries.len() {
        return Err(RegsError::PartialMsrs(written, entries.len()));
    }
    Ok(())
}

/// Sets the FPU control words to their power-on values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(RegsError::SetFpu)
}

fn set_lvt_delivery_mode(register: u32, mode: u32) -> u32 {
    (register & !0x700) | (mode << 8)
}

/// Routes LINT0 to the legacy PIC (ExtINT) and LINT1 to NMI, as firmware would.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(RegsError::Lapic)?;
    for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
        let value = set_lvt_delivery_mode(u32::from_le_bytes(bytes), mode);
        for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
            lapic.regs[offset + i] = byte as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(RegsError::Lapic)
}

/// A GDT descriptor from its flags (type, S, DPL, P in the low byte; AVL, L, D/B, G in bits
/// 12-15), base and limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The KVM segment register a GDT descriptor loads at `index`.
pub fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let granular = bit(55) == 1;
    let limit = if granular {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: if bit(47) == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// The GDT for a boot protocol: null, code, data, TSS.
pub fn boot_gdt(protocol: BootProtocol) -> [u64; 4] {
    let code_flags = match protocol {
        BootProtocol::Pvh => 0xc09b,     // 32-bit, 4 KiB granular, execute/read
        BootProtocol::Linux64 => 0xa09b, // 64-bit
    };
    [
        gdt_entry(0, 0, 0),
        gdt_entry(code_flags, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x008b, 0, 0x67),
    ]
}

fn write_gdt(memory: &GuestMemoryMmap, gdt: &[u64]) -> Result<(), RegsError> {
    for (i, entry) in gdt.iter().enumerate() {
        memory
            .write_obj(*entry, GuestAddress(BOOT_GDT_START + (i as u64) * 8))
            .map_err(RegsError::GuestMemory)?;
    }
    Ok(())
}

/// Identity-maps the first GiB with 2 MiB pages for the Linux 64-bit entry.
fn write_identity_page_tables(memory: &GuestMemoryMmap) -> Result<(), RegsError> {
    let write = |value: u64, addr: u64| {
        memory
            .write_obj(value, GuestAddress(addr))
            .map_err(RegsError::GuestMemory)
    };
    write(PDPTE_START | 0x03, PML4_START)?;
    write(PDE_START | 0x03, PDPTE_START)?;
    for i in 0..512u64 {
        write((i << 21) | 0x83, PDE_START + i * 8)?;
    }
    Ok(())
}

/// Sets segments, control registers and (for long mode) page tables for `protocol`.
pub fn setup_sregs(
    memory: &GuestMemoryMmap,
    vcpu: &VcpuFd,
    protocol: BootProtocol,
) -> Result<(), RegsError> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(RegsError::Sregs)?;
    let gdt = boot_gdt(protocol);
    write_gdt(memory, &gdt)?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;

    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], 3);

    match protocol {
        BootProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootProtocol::Linux64 => {
            write_identity_page_tables(memory)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
    }
    vcpu.set_sregs(&sregs).map_err(RegsError::Sregs)
}

/// The general registers at the kernel's entry.
pub fn boot_regs(protocol: BootProtocol, entry: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        ..Default::default()
    };
    match protocol {
        BootProtocol::Pvh => regs.rbx = PVH_INFO_START,
        BootProtocol::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
    }
    regs
}

/// Sets the general registers for the entry at `entry`.
pub fn setup_regs(vcpu: &VcpuFd, protocol: BootProtocol, entry: u64) -> Result<(), RegsError> {
    vcpu.set_regs(&boot_regs(protocol, entry))
        .map_err(RegsError::Regs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_code_segment_decodes_to_4_gib_limit() {
        let entry = gdt_entry(0xc09b, 0, 0xfffff);
        assert_eq!(entry, 0x00cf_9b00_0000_ffff);
        let seg = segment_from_gdt(entry, 1);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(
            (seg.type_, seg.present, seg.s, seg.db, seg.g, seg.l),
            (0xb, 1, 1, 1, 1, 0)
        );
        assert_eq!(seg.selector, 8);
        assert_eq!(seg.unusable, 0);
    }

    #[test]
    fn long_mode_code_segment_sets_l_not_db() {
        let seg = segment_from_gdt(boot_gdt(BootProtocol::Linux64)[1], 1);
        assert_eq!((seg.l, seg.db), (1, 0));
    }

    #[test]
    fn tss_segment_is_byte_granular() {
        let seg = segment_from_gdt(boot_gdt(BootProtocol::Pvh)[3], 3);
        assert_eq!((seg.limit, seg.type_, seg.s, seg.g), (0x67, 0xb, 0, 0));
    }

    #[test]
    fn base_and_limit_round_trip() {
        let seg = segment_from_gdt(gdt_entry(0x0093, 0x1234_5678, 0xabcde), 2);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0xabcde);
    }

    #[test]
    fn pvh_entry_passes_start_info_in_rbx() {
        let regs = boot_regs(BootProtocol::Pvh, 0x100_0000);
        assert_eq!(
            (regs.rip, regs.rbx, regs.rflags),
            (0x100_0000, PVH_INFO_START, 2)
        );
        let regs = boot_regs(BootProtocol::Linux64, 0x100_0200);
        assert_eq!((regs.rsi, regs.rsp), (ZERO_PAGE_START, BOOT_STACK_POINTER));
    }

    #[test]
    fn lvt_delivery_mode_replaces_only_the_mode_bits() {
        assert_eq!(
            set_lvt_delivery_mode(0x0001_0000, APIC_MODE_EXTINT),
            0x0001_0700
        );
        assert_eq!(
            set_lvt_delivery_mode(0x0000_0700, APIC_MODE_NMI),
            0x0000_0400
        );
    }

    #[test]
    fn boot_msrs_enable_fast_strings_and_write_back_mtrrs() {
        let entries = boot_msr_entries();
        let value = |index| entries.iter().find(|e| e.index == index).map(|e| e.data);
        assert_eq!(value(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(value(MSR_MTRR_DEF_TYPE), Some(0x806));
        assert_eq!(value(MSR_IA32_TSC), Some(0));
    }
}
