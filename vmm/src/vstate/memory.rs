//! Guest memory: anonymous, private, `MAP_NORESERVE` mappings, so the host commits a page
//! only when the guest first touches it, placed on 2 MiB boundaries and marked for
//! transparent huge pages.
//!
//! KVM maps guest memory with 2 MiB nested-paging entries only where the host backs it with
//! a huge page *and* the guest-physical and host-virtual addresses agree modulo 2 MiB. An
//! ordinary mmap is only 4 KiB aligned, so every 4 KiB the guest touches first costs a
//! nested-paging fault (a VM exit). Measured in the emulated KVM host: 5,400 such faults
//! in one Linux boot, against 333 for QEMU, which aligns its RAM the same way.
//!
//! A VM with a vhost-user device (virtio-fs) needs memory another process can map: then,
//! and only then, guest RAM is one memfd mapped shared at the same 2 MiB-aligned addresses
//! ([`create_shared_guest_memory`]). It is a hugetlbfs memfd when the host has enough
//! reserved 2 MiB pages for all of it, else an ordinary (shmem) memfd advised for huge
//! pages, which the kernel honours only where `/sys/kernel/mm/transparent_hugepage/
//! shmem_enabled` is `advise`, `within_size` or `always` (Debian's default is `never`).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::mmap::{MmapRegion, MmapRegionBuilder};
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
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
    #[error("KVM refused guest memory slot {0}")]
    Slot(u32, #[source] kvm_ioctls::Error),
    #[error("cannot create a {0} MiB memfd for shared guest memory")]
    Memfd(u64, #[source] std::io::Error),
    #[error("cannot offer guest memory to KSM (madvise MADV_MERGEABLE); is the host kernel built with CONFIG_KSM?")]
    Mergeable(#[source] std::io::Error),
}

/// What backs shared guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedBacking {
    /// Reserved 2 MiB hugetlbfs pages: never swapped, not counted in the VMM's RSS.
    HugeTlb,
    /// Page-cache (shmem) pages, huge only where shmem THP is enabled.
    Shmem,
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

/// Maps `ranges` (address, size) as guest RAM; `mergeable` offers it to KSM.
pub fn create_guest_memory(
    ranges: &[(GuestAddress, u64)],
    size_mib: u64,
    mergeable: bool,
) -> Result<GuestMemoryMmap, MemoryError> {
    let mut regions = Vec::with_capacity(ranges.len());
    for &(addr, size) in ranges {
        let size = usize::try_from(size).map_err(|_| MemoryError::TooLarge(size_mib))?;
        let host = map_aligned(size).map_err(|e| MemoryError::Map(size_mib, e))?;
        if mergeable {
            // SAFETY: advice on the private anonymous mapping `map_aligned` just made.
            let advised = unsafe { libc::madvise(host.cast(), size, libc::MADV_MERGEABLE) };
            if advised != 0 {
                return Err(MemoryError::Mergeable(std::io::Error::last_os_error()));
            }
        }
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

const SHARED_FLAGS: i32 = libc::MAP_SHARED | libc::MAP_FIXED;

/// An empty memfd, hugetlbfs-backed with 2 MiB pages or ordinary shmem.
fn memfd(huge: bool) -> std::io::Result<File> {
    let mut flags = libc::MFD_CLOEXEC;
    if huge {
        flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    }
    // SAFETY: the name is a NUL-terminated static string; the call only creates a new
    // descriptor, which is owned below.
    let fd = unsafe { libc::memfd_create(c"vpod-guest-ram".as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Maps `ranges` of `file` (back to back from offset 0) shared, each at a 2 MiB-aligned
/// address. Hugetlbfs mappings are made without `MAP_NORESERVE`, so a host without enough
/// reserved pages refuses the mapping now rather than killing the VM at its first fault.
fn map_shared(
    file: &File,
    ranges: &[(GuestAddress, u64)],
    huge: bool,
    size_mib: u64,
) -> Result<GuestMemoryMmap, std::io::Error> {
    let flags = if huge {
        SHARED_FLAGS
    } else {
        SHARED_FLAGS | libc::MAP_NORESERVE
    };
    let mut regions: Vec<GuestRegionMmap> = Vec::with_capacity(ranges.len());
    let mut offset = 0u64;
    for &(addr, size) in ranges {
        match map_shared_region(file, addr, size, offset, flags, huge) {
            Ok(region) => regions.push(region),
            Err(error) => {
                for region in &regions {
                    // SAFETY: the mappings made above for regions that are dropped now,
                    // unreferenced by anything else.
                    unsafe { libc::munmap(region.as_ptr().cast(), region.len() as usize) };
                }
                return Err(error);
            }
        }
        offset += size;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| {
        std::io::Error::other(format!("{size_mib} MiB of guest memory as regions: {e}"))
    })
}

/// Maps `size` bytes of `file` from `offset` shared at a 2 MiB-aligned address, as the guest
/// region at `addr`.
fn map_shared_region(
    file: &File,
    addr: GuestAddress,
    size: u64,
    offset: u64,
    flags: i32,
    huge: bool,
) -> std::io::Result<GuestRegionMmap> {
    let len = usize::try_from(size).map_err(|_| too_large())?;
    let file_offset = i64::try_from(offset).map_err(|_| too_large())?;
    let duplicate = file.try_clone()?;
    // An aligned private reservation, replaced in place by the shared mapping.
    let host = map_aligned(len)?;
    // SAFETY: MAP_FIXED over [host, host + len), the private mapping `map_aligned` just made
    // and nothing else uses; `file` is a memfd at least `offset + len` long.
    let mapped =
        unsafe { libc::mmap(host.cast(), len, PROT, flags, file.as_raw_fd(), file_offset) };
    if mapped == libc::MAP_FAILED {
        let error = std::io::Error::last_os_error();
        // SAFETY: the reservation made above, which nothing refers to.
        unsafe { libc::munmap(host.cast(), len) };
        return Err(error);
    }
    if !huge {
        // SAFETY: advice on the mapping just made; refused where shmem THP is off.
        unsafe { libc::madvise(host.cast(), len, libc::MADV_HUGEPAGE) };
    }
    let builder = MmapRegionBuilder::new(len)
        .with_file_offset(FileOffset::new(duplicate, offset))
        .with_mmap_prot(PROT)
        .with_mmap_flags(flags & !libc::MAP_FIXED)
        .with_hugetlbfs(huge);
    // SAFETY: `host` and `len` are exactly the live shared mapping made above; it is never
    // unmapped while the process runs.
    let mapping = unsafe { builder.with_raw_mmap_pointer(host) }
        .build()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    GuestRegionMmap::new(mapping, addr)
        .ok_or_else(|| std::io::Error::other("a region wraps the address space"))
}

fn too_large() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::OutOfMemory)
}

/// Maps `ranges` as guest RAM that a vhost-user backend can map too (each region carries
/// the memfd and its offset): hugetlbfs when the host has the pages, else shmem.
pub fn create_shared_guest_memory(
    ranges: &[(GuestAddress, u64)],
    size_mib: u64,
) -> Result<(GuestMemoryMmap, SharedBacking), MemoryError> {
    let total: u64 = ranges.iter().map(|&(_, size)| size).sum();
    let huge_fits = ranges.iter().all(|&(_, size)| size % HUGE_PAGE as u64 == 0);
    if huge_fits {
        if let Ok(file) = memfd(true) {
            if file.set_len(total).is_ok() {
                if let Ok(memory) = map_shared(&file, ranges, true, size_mib) {
                    return Ok((memory, SharedBacking::HugeTlb));
                }
            }
        }
    }
    let file = memfd(false).map_err(|e| MemoryError::Memfd(size_mib, e))?;
    file.set_len(total)
        .map_err(|e| MemoryError::Memfd(size_mib, e))?;
    let memory =
        map_shared(&file, ranges, false, size_mib).map_err(|e| MemoryError::Map(size_mib, e))?;
    Ok((memory, SharedBacking::Shmem))
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

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    const MIB: u64 = 1 << 20;

    #[test]
    fn private_memory_has_no_file_and_is_2mib_aligned() {
        let memory =
            create_guest_memory(&[(GuestAddress(0), 8 * MIB)], 8, false).expect("private memory");
        let region = memory.iter().next().expect("one region");
        assert!(region.file_offset().is_none());
        assert_eq!(region.as_ptr() as usize % HUGE_PAGE, 0);
    }

    /// The `VmFlags` line of this process's mapping that starts at `address`.
    fn vm_flags(address: usize) -> Vec<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let start = format!("{address:x}-");
        let mut lines = smaps.lines().skip_while(|line| !line.starts_with(&start));
        assert!(lines.next().is_some(), "no mapping at {start}");
        let flags = lines
            .find_map(|line| line.strip_prefix("VmFlags:"))
            .expect("a VmFlags line");
        flags.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn mergeable_memory_is_offered_to_ksm_and_other_memory_is_not() {
        let ksm = create_guest_memory(&[(GuestAddress(0), 8 * MIB)], 8, true).expect("ksm memory");
        let plain =
            create_guest_memory(&[(GuestAddress(0), 8 * MIB)], 8, false).expect("plain memory");
        let flags_of = |memory: &GuestMemoryMmap| {
            vm_flags(memory.iter().next().expect("one region").as_ptr() as usize)
        };
        // "mg": madvise(MADV_MERGEABLE), what ksmd scans.
        assert!(
            flags_of(&ksm).contains(&"mg".to_owned()),
            "{:?}",
            flags_of(&ksm)
        );
        assert!(
            !flags_of(&plain).contains(&"mg".to_owned()),
            "{:?}",
            flags_of(&plain)
        );
    }

    #[test]
    fn shared_memory_is_one_memfd_mapped_back_to_back_and_2mib_aligned() {
        let ranges = [(GuestAddress(0), 4 * MIB), (GuestAddress(1 << 32), 6 * MIB)];
        let (memory, _backing) = create_shared_guest_memory(&ranges, 10).expect("shared memory");
        let regions: Vec<_> = memory.iter().collect();
        assert_eq!(regions.len(), 2);
        let offsets: Vec<u64> = regions
            .iter()
            .map(|r| r.file_offset().expect("a file").start())
            .collect();
        assert_eq!(offsets, [0, 4 * MIB]);
        for region in &regions {
            assert_eq!(region.as_ptr() as usize % HUGE_PAGE, 0);
        }
        // What the guest writes is in the file, where another process would see it.
        memory
            .write_obj(0x1234_5678u32, GuestAddress((1 << 32) + 16))
            .expect("write");
        let file = regions[1].file_offset().expect("a file").file();
        let mut word = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(file, &mut word, 4 * MIB + 16).expect("read");
        assert_eq!(u32::from_le_bytes(word), 0x1234_5678);
    }
}
