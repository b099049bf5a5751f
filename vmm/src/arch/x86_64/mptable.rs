//! The Intel MultiProcessor Specification (1.4) tables, which is how a guest without ACPI
//! learns its processors, buses and interrupt routing.
//!
//! The floating pointer goes in the last KiB of base memory (one of the places Linux scans),
//! immediately followed by the configuration table: one processor entry per vCPU, an ISA bus,
//! the IOAPIC, one I/O interrupt entry per IOAPIC pin, and the two local interrupts (ExtINT on
//! LINT0, NMI on LINT1).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_START, EBDA_START, IOAPIC_START, IRQ_LAST};

/// Largest vCPU count whose table fits in the 1 KiB at [`EBDA_START`].
pub const MAX_VCPUS: u8 = 32;

const FLOATING_POINTER_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
#[cfg(test)]
const PROCESSOR_ENTRY_SIZE: usize = 20;
#[cfg(test)]
const SMALL_ENTRY_SIZE: usize = 8;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const INTERRUPT_TYPE_INT: u8 = 0;
const INTERRUPT_TYPE_NMI: u8 = 1;
const INTERRUPT_TYPE_EXTINT: u8 = 3;

const SPEC_REVISION: u8 = 4;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// CPUID signature reported per processor: family 6, only printed by guests.
const CPU_SIGNATURE: u32 = 0x600;
/// Feature flags per processor: FPU and on-chip APIC.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

/// Errors building the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("the MP table supports 1 to {MAX_VCPUS} vCPUs, not {0}")]
    TooManyVcpus(u8),
    #[error("the MP table does not fit in guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// The IOAPIC's id: the first id after the vCPUs' local APICs.
fn ioapic_id(vcpus: u8) -> u8 {
    vcpus
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// The floating pointer and the configuration table, ready to be copied to `base`.
pub fn build_mp_table(vcpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(MptableError::TooManyVcpus(vcpus));
    }
    let table_address = base + FLOATING_POINTER_SIZE as u64;
    let irqs = IRQ_LAST as u8 + 1;

    let mut entries = Vec::new();
    let mut entry_count: u16 = 0;
    for cpu in 0..vcpus {
        entries.push(ENTRY_PROCESSOR);
        entries.push(cpu); // local APIC id
        entries.push(LAPIC_VERSION);
        entries.push(CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        entry_count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entry_count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id(vcpus), IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    entry_count += 1;
    for irq in 0..irqs {
        // Flags 0: polarity and trigger "conforming to the bus" (ISA: edge, active high).
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INTERRUPT_TYPE_INT, 0, 0]);
        entries.extend_from_slice(&[0, irq, ioapic_id(vcpus), irq]);
        entry_count += 1;
    }
    // LINT0 of the bootstrap processor carries the legacy PIC (ExtINT); LINT1 of every
    // processor (destination 0xff) is NMI.
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INTERRUPT_TYPE_EXTINT, 0, 0]);
    entries.extend_from_slice(&[0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INTERRUPT_TYPE_NMI, 0, 0]);
    entries.extend_from_slice(&[0, 0, 0xff, 1]);
    entry_count += 2;

    let table_length = (HEADER_SIZE + entries.len()) as u16;
    let mut table = Vec::with_capacity(usize::from(table_length));
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&table_length.to_le_bytes());
    table.push(SPEC_REVISION);
    table.push(0); // checksum, filled below
    table.extend_from_slice(b"VPOD    ");
    table.extend_from_slice(b"VPOD-VMM    ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    table.push(0); // extended table checksum
    table.push(0);
    debug_assert_eq!(table.len(), HEADER_SIZE);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(FLOATING_POINTER_SIZE + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&(table_address as u32).to_le_bytes());
    out.push(1); // length in 16-byte units
    out.push(SPEC_REVISION);
    out.push(0); // checksum, filled below
    out.extend_from_slice(&[0; 5]); // feature bytes: a configuration table is present
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP table for `vcpus` processors into guest memory at [`EBDA_START`].
pub fn setup_mptable(memory: &GuestMemoryMmap, vcpus: u8) -> Result<(), MptableError> {
    let table = build_mp_table(vcpus, EBDA_START)?;
    memory
        .write_slice(&table, GuestAddress(EBDA_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn entries(table: &[u8]) -> Vec<u8> {
        // The entry types, walking the table after its header.
        let mut types = Vec::new();
        let mut at = FLOATING_POINTER_SIZE + HEADER_SIZE;
        while at < table.len() {
            let kind = table[at];
            types.push(kind);
            at += if kind == ENTRY_PROCESSOR {
                PROCESSOR_ENTRY_SIZE
            } else {
                SMALL_ENTRY_SIZE
            };
        }
        types
    }

    #[test]
    fn checksums_of_both_structures_are_zero() {
        for vcpus in [1, 2, 4, MAX_VCPUS] {
            let table = build_mp_table(vcpus, EBDA_START).expect("valid vCPU count");
            assert_eq!(sum(&table[..FLOATING_POINTER_SIZE]), 0);
            assert_eq!(sum(&table[FLOATING_POINTER_SIZE..]), 0);
        }
    }

    #[test]
    fn floating_pointer_points_at_the_table() {
        let table = build_mp_table(2, EBDA_START).expect("valid vCPU count");
        assert_eq!(&table[0..4], b"_MP_");
        let pointer = u32::from_le_bytes([table[4], table[5], table[6], table[7]]);
        assert_eq!(u64::from(pointer), EBDA_START + 16);
        assert_eq!(&table[16..20], b"PCMP");
    }

    #[test]
    fn entry_counts_match_vcpus_and_irqs() {
        let table = build_mp_table(4, EBDA_START).expect("valid vCPU count");
        let types = entries(&table);
        let count = |t| types.iter().filter(|&&x| x == t).count();
        assert_eq!(count(ENTRY_PROCESSOR), 4);
        assert_eq!(count(ENTRY_BUS), 1);
        assert_eq!(count(ENTRY_IOAPIC), 1);
        assert_eq!(count(ENTRY_IO_INTERRUPT), 24);
        assert_eq!(count(ENTRY_LOCAL_INTERRUPT), 2);
        let header_count = u16::from_le_bytes([table[16 + 34], table[16 + 35]]);
        assert_eq!(usize::from(header_count), types.len());
        let length = u16::from_le_bytes([table[16 + 4], table[16 + 5]]);
        assert_eq!(usize::from(length), table.len() - 16);
    }

    #[test]
    fn only_the_first_processor_is_the_bootstrap_processor() {
        let table = build_mp_table(3, EBDA_START).expect("valid vCPU count");
        let first = FLOATING_POINTER_SIZE + HEADER_SIZE;
        for cpu in 0..3 {
            let entry = first + cpu * PROCESSOR_ENTRY_SIZE;
            assert_eq!(usize::from(table[entry + 1]), cpu);
            let bsp = table[entry + 3] & CPU_BOOTSTRAP != 0;
            assert_eq!(bsp, cpu == 0);
        }
    }

    #[test]
    fn largest_table_fits_in_the_ebda_kilobyte() {
        let table = build_mp_table(MAX_VCPUS, EBDA_START).expect("valid vCPU count");
        assert!(table.len() <= 1024);
    }

    #[test]
    fn zero_or_too_many_vcpus_are_refused() {
        assert!(build_mp_table(0, EBDA_START).is_err());
        assert!(build_mp_table(MAX_VCPUS + 1, EBDA_START).is_err());
    }
}
