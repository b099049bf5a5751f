//! Guest memory: anonymous, private, `MAP_NORESERVE` mappings, so the host commits a page
//! only when the guest first touches it, placed on 2 MiB boundaries and marked for
//! transparent huge pages.
//!
//! KVM maps guest memory with 2 MiB nested-paging entries only where the host backs it with
//! a huge page *and* the guest-physical and host-virtual addresses agree modulo 2 MiB. An
//! ordinary mmap is only 4 KiB aligned, so every 4 KiB the guest touches first costs a
//! nested-paging fault (a VM exit). Measured in the emulated KVM host: 5,400 such faults
//! in one Linux boot, against 333 for QEMU, which aligns its RAM the same way.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::mmap::MmapRegion;
use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {0} MiB of guest memory")]
    Map(u64, #[source] std::io::Error),
    #[error("cannot describe {0} MiB of guest memory as regions: {1}")]
    Regions(u64, String),
    #[error("guest memory of {0} MiB does not fit this host's address space")]
    TooLarge(u64),
    #[error("the thread registering guest memory failed")]
    RegistrationThread,
    #[error("KVM refused guest memory slot {0}")]
    Slot(u32, #[source] kvm_ioctls::Error),
}

const HUGE_PAGE: usize = 2 << 20;
const PROT: i32 = libc::PROT_READ | libc::PROT_WRITE;
const FLAGS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

/// Maps `size` bytes at a 2 MiB-aligned address and advises huge pages for them. The
/// mapping lives as long as the process: one VMM process runs one VM.
fn map_aligned(size: usize) -> std::io::Result<*mut u8> {
    let padded = size
        .checked_add(HUGE_PAGE)
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
    // SAFETY: a fresh anonymous mapping at an address the kernel chooses; nothing else in
    // the process is affected.
    let base = unsafe { libc::mmap(std::ptr::null_mut(), padded, PROT, FLAGS, -1, 0) };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let start = base as usize;
    let aligned = (start + HUGE_PAGE - 1) & !(HUGE_PAGE - 1);
    let head = aligned - start;
    let tail = padded - head - size;
    // SAFETY: both ranges lie inside the mapping just made and outside [aligned,
    // aligned + size), the part kept; unmapping them touches nothing else.
    unsafe {
        if head > 0 {
            libc::munmap(base, head);
        }
        if tail > 0 {
            libc::munmap((aligned + size) as *mut libc::c_void, tail);
        }
        // Advice only: a host without THP refuses it and keeps 4 KiB pages.
        libc::madvise(aligned as *mut libc::c_void, size, libc::MADV_HUGEPAGE);
    }
    Ok(aligned as *mut u8)
}

/// Maps `ranges` (address, size) as guest RAM.
pub fn create_guest_memory(
    ranges: &[(GuestAddress, u64)],
    size_mib: u64,
) -> Result<GuestMemoryMmap, MemoryError> {
    let mut regions = Vec::with_capacity(ranges.len());
    for &(addr, size) in ranges {
        let size = usize::try_from(size).map_err(|_| MemoryError::TooLarge(size_mib))?;
        let host = map_aligned(size).map_err(|e| MemoryError::Map(size_mib, e))?;
        // SAFETY: `host` and `size` are exactly the live mapping `map_aligned` made, with
        // these protection and flags; it is never unmapped while the process runs.
        let mapping = unsafe { MmapRegion::build_raw(host, size, PROT, FLAGS) }
            .map_err(|e| MemoryError::Regions(size_mib, e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, addr).ok_or_else(|| {
            MemoryError::Regions(size_mib, "a region wraps the address space".into())
        })?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions)
        .map_err(|e| MemoryError::Regions(size_mib, e.to_string()))
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
