//! Guest memory: anonymous, private, `MAP_NORESERVE` mappings (vm-memory's default), so
//! the host commits a page only when the guest first touches it.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {0} MiB of guest memory")]
    Map(u64, #[source] vm_memory::mmap::FromRangesError),
    #[error("guest memory of {0} MiB does not fit this host's address space")]
    TooLarge(u64),
    #[error("the thread registering guest memory failed")]
    RegistrationThread,
    #[error("KVM refused guest memory slot {0}")]
    Slot(u32, #[source] kvm_ioctls::Error),
}

/// Maps `ranges` (address, size) as guest RAM.
pub fn create_guest_memory(
    ranges: &[(GuestAddress, u64)],
    size_mib: u64,
) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges = ranges
        .iter()
        .map(|&(addr, size)| {
            usize::try_from(size)
                .map(|size| (addr, size))
                .map_err(|_| MemoryError::TooLarge(size_mib))
        })
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| MemoryError::Map(size_mib, e))
}

/// Tells KVM where each region of guest memory lives in this process.
pub fn register_guest_memory(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in memory.iter().enumerate() {
        let slot = slot as u32;
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| MemoryError::TooLarge(region.len() >> 20))?;
        let kvm_region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the host range is a live mapping owned by `memory`, which the caller keeps
        // alive for as long as the VM (it is dropped after the vCPUs are joined), and the
        // slots do not overlap because the regions do not.
        unsafe { vm.set_user_memory_region(kvm_region) }.map_err(|e| MemoryError::Slot(slot, e))?;
    }
    Ok(())
}
