//! Per-vCPU CPUID, derived from what KVM supports on this host.
//!
//! KVM's supported list describes the host; each vCPU must additionally see its own APIC id
//! and a topology that matches the vCPU count (one package, one thread per core, one core per
//! vCPU), and the hypervisor bit. The KVM paravirtual leaves (0x4000_0000 onwards) are kept
//! as KVM reports them.

use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

const LEAF_VENDOR: u32 = 0;
const LEAF_FEATURES: u32 = 1;
const LEAF_CACHE_PARAMETERS: u32 = 4;
const LEAF_PERFORMANCE_MONITORING: u32 = 0xa;
const LEAF_EXTENDED_TOPOLOGY: u32 = 0xb;
const LEAF_EXTENDED_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_ADDRESS_SIZES: u32 = 0x8000_0008;

const FEATURES_ECX_HYPERVISOR: u32 = 1 << 31;
/// The local APIC timer's TSC-deadline mode, leaf 1 ECX bit 24. KVM emulates it whenever the
/// IRQ chip is in the kernel (KVM_CAP_TSC_DEADLINE_TIMER) but leaves it out of its supported
/// list; a guest that sees it skips calibrating the APIC timer against the PIT, which takes
/// ten timer ticks of boot time (100 ms at our 100 Hz, far more under nested emulation).
const FEATURES_ECX_TSC_DEADLINE: u32 = 1 << 24;
const FEATURES_EDX_HTT: u32 = 1 << 28;
/// CLFLUSH line size in 8-byte units (64-byte lines), leaf 1 EBX[15:8].
const CLFLUSH_LINE_SIZE: u32 = 8;

const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// "AuthenticAMD" as leaf 0 returns it in EBX.
const AMD_VENDOR_EBX: u32 = 0x6874_7541;

/// Number of APIC-id bits needed to number `count` cores.
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        u32::BITS - (count - 1).leading_zeros()
    }
}

fn max_basic_leaf(entries: &[kvm_cpuid_entry2]) -> u32 {
    entries
        .iter()
        .find(|e| e.function == LEAF_VENDOR)
        .map_or(0, |e| e.eax)
}

fn topology_entries(leaf: u32, apic_id: u32, vcpus: u32) -> [kvm_cpuid_entry2; 3] {
    let entry = |index: u32, eax: u32, ebx: u32, level_type: u32| kvm_cpuid_entry2 {
        function: leaf,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: (level_type << 8) | index,
        edx: apic_id,
        ..Default::default()
    };
    [
        // One thread per core: shifting the APIC id by 0 gives the core id.
        entry(0, 0, 1, TOPOLOGY_LEVEL_SMT),
        // Every vCPU is a core of the one package.
        entry(1, id_bits(vcpus), vcpus, TOPOLOGY_LEVEL_CORE),
        // The invalid level ends the enumeration.
        entry(2, 0, 0, 0),
    ]
}

/// The CPUID entries vCPU `vcpu_id` of `vcpu_count` should see, given KVM's supported list
/// and whether KVM emulates the TSC-deadline timer.
pub fn vcpu_cpuid(
    supported: &[kvm_cpuid_entry2],
    vcpu_id: u8,
    vcpu_count: u8,
    tsc_deadline: bool,
) -> Vec<kvm_cpuid_entry2> {
    let apic_id = u32::from(vcpu_id);
    let vcpus = u32::from(vcpu_count.max(1));
    let max_leaf = max_basic_leaf(supported);
    let is_amd = supported
        .iter()
        .any(|e| e.function == LEAF_VENDOR && e.ebx == AMD_VENDOR_EBX);
    let had_v2_topology = supported
        .iter()
        .any(|e| e.function == LEAF_EXTENDED_TOPOLOGY_V2);

    let mut entries: Vec<kvm_cpuid_entry2> = supported
        .iter()
        .filter(|e| e.function != LEAF_EXTENDED_TOPOLOGY && e.function != LEAF_EXTENDED_TOPOLOGY_V2)
        .copied()
        .collect();

    for entry in entries.iter_mut() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (apic_id << 24) | (vcpus << 16) | (CLFLUSH_LINE_SIZE << 8);
                entry.ecx |= FEATURES_ECX_HYPERVISOR;
                if tsc_deadline {
                    entry.ecx |= FEATURES_ECX_TSC_DEADLINE;
                } else {
                    entry.ecx &= !FEATURES_ECX_TSC_DEADLINE;
                }
                if vcpus > 1 {
                    entry.edx |= FEATURES_EDX_HTT;
                } else {
                    entry.edx &= !FEATURES_EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMETERS => {
                let cache_level = (entry.eax >> 5) & 0x7;
                let sharing = if cache_level >= 3 { vcpus - 1 } else { 0 };
                entry.eax &= 0x3fff;
                entry.eax |= ((vcpus - 1) << 26) | ((sharing & 0xfff) << 14);
            }
            // No virtual PMU: guests then skip the performance-counter MSRs entirely.
            LEAF_PERFORMANCE_MONITORING => {
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            LEAF_AMD_ADDRESS_SIZES if is_amd => {
                entry.ecx &= !0xf0ff;
                entry.ecx |= (id_bits(vcpus) << 12) | (vcpus - 1);
            }
            _ => {}
        }
    }

    if max_leaf >= LEAF_EXTENDED_TOPOLOGY {
        entries.extend(topology_entries(LEAF_EXTENDED_TOPOLOGY, apic_id, vcpus));
    }
    if had_v2_topology && max_leaf >= LEAF_EXTENDED_TOPOLOGY_V2 {
        entries.extend(topology_entries(LEAF_EXTENDED_TOPOLOGY_V2, apic_id, vcpus));
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn host() -> Vec<kvm_cpuid_entry2> {
        let mut vendor = leaf(0, 0);
        vendor.eax = 0x1f;
        let mut l1 = leaf(1, 0);
        l1.ebx = 0xff12_3456;
        let mut l4_l1 = leaf(4, 0);
        l4_l1.eax = (1 << 5) | 0x1 | (7 << 26);
        let mut l4_l3 = leaf(4, 3);
        l4_l3.eax = (3 << 5) | 0x3;
        let mut pmu = leaf(0xa, 0);
        pmu.eax = 0x0703_0105;
        let kvm = leaf(0x4000_0000, 0);
        vec![
            vendor,
            l1,
            l4_l1,
            l4_l3,
            pmu,
            leaf(0xb, 0),
            leaf(0x1f, 0),
            kvm,
        ]
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .expect("leaf present")
    }

    #[test]
    fn leaf_1_carries_the_apic_id_count_and_hypervisor_bit() {
        let entries = vcpu_cpuid(&host(), 3, 4, false);
        let l1 = find(&entries, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_ne!(l1.ecx & FEATURES_ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & FEATURES_EDX_HTT, 0);
    }

    #[test]
    fn topology_leaves_report_cores_and_x2apic_id() {
        let entries = vcpu_cpuid(&host(), 2, 4, false);
        for function in [0xb, 0x1f] {
            let smt = find(&entries, function, 0);
            let core = find(&entries, function, 1);
            let end = find(&entries, function, 2);
            assert_eq!((smt.ebx, smt.edx, smt.ecx >> 8), (1, 2, 1));
            assert_eq!((core.eax, core.ebx, core.edx, core.ecx >> 8), (2, 4, 2, 2));
            assert_eq!(end.ecx >> 8, 0);
            assert_eq!(entries.iter().filter(|e| e.function == function).count(), 3);
        }
    }

    #[test]
    fn leaf_4_reports_cores_per_package_and_l3_sharing() {
        let entries = vcpu_cpuid(&host(), 0, 2, false);
        let l1_cache = find(&entries, 4, 0);
        let l3_cache = find(&entries, 4, 3);
        assert_eq!(l1_cache.eax >> 26, 1);
        assert_eq!((l1_cache.eax >> 14) & 0xfff, 0);
        assert_eq!((l3_cache.eax >> 14) & 0xfff, 1);
        // The cache description bits survive.
        assert_eq!(l3_cache.eax & 0x3fff, (3 << 5) | 0x3);
    }

    #[test]
    fn pmu_is_hidden_and_kvm_leaves_are_kept() {
        let entries = vcpu_cpuid(&host(), 0, 1, false);
        assert_eq!(find(&entries, 0xa, 0).eax, 0);
        find(&entries, 0x4000_0000, 0);
        assert_eq!(find(&entries, 1, 0).edx & FEATURES_EDX_HTT, 0);
    }

    #[test]
    fn no_v2_topology_leaf_when_the_host_has_none() {
        let supported: Vec<_> = host().into_iter().filter(|e| e.function != 0x1f).collect();
        let entries = vcpu_cpuid(&supported, 0, 2, false);
        assert!(entries.iter().all(|e| e.function != 0x1f));
        assert_eq!(entries.iter().filter(|e| e.function == 0xb).count(), 3);
    }

    #[test]
    fn tsc_deadline_follows_what_kvm_emulates() {
        let with = vcpu_cpuid(&host(), 0, 1, true);
        assert_ne!(find(&with, 1, 0).ecx & FEATURES_ECX_TSC_DEADLINE, 0);
        let mut supported = host();
        supported[1].ecx |= FEATURES_ECX_TSC_DEADLINE;
        let without = vcpu_cpuid(&supported, 0, 1, false);
        assert_eq!(find(&without, 1, 0).ecx & FEATURES_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn id_bits_rounds_up_to_a_power_of_two() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
    }
}
