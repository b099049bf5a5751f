//! Guest pages that hold a page of a host file, found by content: the guest's initrd, which
//! its kernel unpacks into the initramfs, leaves the agent's binary there page by page
//! (the pod initrd puts `/init`'s bytes at a 4 KiB-aligned offset, so each page of the
//! unpacked file equals one page of the initrd). [`share_matching_pages`] maps the file
//! copy-on-write over each such guest page, as [`crate::arch::kernel_text`] does for the
//! kernel's code, so that every VM booting that initrd keeps one host copy of the agent.
//! Only resident guest pages are read (`mincore`), so the scan faults nothing in.
//!
//! Only for guest RAM that no other process maps, or a guest that keeps those pages in place:
//! a matched page that later became a device buffer would be written by a vhost-user backend
//! through the guest RAM memfd, where the guest no longer reads
//! ([`crate::vstate::boot_share`] decides).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use std::os::fd::AsRawFd;

use crate::arch::kernel_text::KernelTextError;

const PAGE: usize = 4096;
/// How many leading bytes of a page key the index.
const KEY: usize = 32;
/// Files larger than this are not indexed (the index would cost more than it saves).
pub const MAX_INDEXED_BYTES: u64 = 64 << 20;

type Key = [u8; KEY];

/// The whole pages of a file (at page-aligned offsets), by their first bytes. Pages that
/// start with zeros are left out: too many pages of anything start so.
#[derive(Debug, Default)]
pub struct FilePageIndex {
    by_key: HashMap<Key, Vec<u64>>,
}

impl FilePageIndex {
    /// Indexes `file`; an empty index for a file over [`MAX_INDEXED_BYTES`].
    pub fn build(file: &File) -> std::io::Result<Self> {
        let size = file.metadata()?.len();
        let mut index = FilePageIndex::default();
        if size > MAX_INDEXED_BYTES {
            return Ok(index);
        }
        let mut chunk = vec![0u8; 64 * PAGE];
        let mut offset = 0u64;
        while offset + PAGE as u64 <= size {
            let n = usize::try_from((size - offset).min(chunk.len() as u64)).unwrap_or(0);
            let whole = n - n % PAGE;
            file.read_exact_at(&mut chunk[..whole], offset)?;
            for (i, page) in chunk[..whole].chunks_exact(PAGE).enumerate() {
                let mut key = [0u8; KEY];
                key.copy_from_slice(&page[..KEY]);
                if key != [0u8; KEY] {
                    index
                        .by_key
                        .entry(key)
                        .or_default()
                        .push(offset + (i * PAGE) as u64);
                }
            }
            offset += whole as u64;
        }
        Ok(index)
    }

    /// Indexed pages.
    pub fn len(&self) -> usize {
        self.by_key.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// The resident pages of `len` bytes at `host` (a page-aligned mapping), by `mincore`.
fn resident(host: usize, len: usize) -> std::io::Result<Vec<u8>> {
    let mut residency = vec![0u8; len.div_ceil(PAGE)];
    // SAFETY: [host, host + len) is a live mapping of guest RAM; mincore only writes one
    // byte per page into `residency`, which has exactly that many.
    let done = unsafe { libc::mincore(host as *mut libc::c_void, len, residency.as_mut_ptr()) };
    if done != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(residency)
}

/// The 2 MiB blocks transparent huge pages come in.
const HUGE: usize = 2 << 20;

/// The guest RAM files are mapped over, and what must happen to it first.
///
/// - A shared memfd (a vhost-user backend maps it too): the memfd's pages behind a file
///   mapping are dropped (`MADV_REMOVE`), as the mapping alone would not free them.
/// - Private memory, advised onto transparent huge pages: a file mapping over part of a huge
///   page unmaps only that part, and the rest of the 2 MiB stays allocated, queued for a
///   split that runs under memory pressure only; the host would free nothing it reports.
///   So before the first file page goes into a 2 MiB block, the block is moved onto 4 KiB
///   pages ([`Self::split`]): its resident pages that are not all zeros are copied out, the
///   block is advised `MADV_NOHUGEPAGE` and dropped (`MADV_DONTNEED`, which frees the huge
///   page), and the copies are written back, each onto a page of its own. Zero pages are
///   not written back: they come back zero-filled on the next touch.
pub struct GuestRam {
    shared_memfd: bool,
    /// Host ranges (start, length) of private guest RAM; blocks are clipped to them.
    regions: Vec<(usize, usize)>,
    /// Blocks (their host start) already on small pages.
    split: BTreeSet<usize>,
    /// Blocks moved onto small pages, and the pages written back into them.
    pub split_blocks: u64,
    pub rewritten_pages: u64,
}

impl GuestRam {
    pub fn new(memory: &GuestMemoryMmap, shared_memfd: bool) -> Self {
        let regions = if shared_memfd {
            Vec::new()
        } else {
            memory
                .iter()
                .filter_map(|region| {
                    let len = usize::try_from(region.len()).ok()?;
                    let slice = memory.get_slice(region.start_addr(), len).ok()?;
                    Some((slice.ptr_guard_mut().as_ptr() as usize, len))
                })
                .collect()
        };
        GuestRam {
            shared_memfd,
            regions,
            split: BTreeSet::new(),
            split_blocks: 0,
            rewritten_pages: 0,
        }
    }

    /// Readies `[host, host + len)` for a file mapping: drops a memfd's pages there, or
    /// moves the private blocks it touches onto small pages.
    fn prepare(&mut self, host: usize, len: usize) -> Result<(), KernelTextError> {
        if self.shared_memfd {
            // SAFETY: [host, host + len) is page-aligned and inside the guest RAM mapping,
            // which lives as long as the process; MADV_REMOVE frees the memfd's pages there
            // (a hole, read back as zeros), which nothing but the paused guest uses.
            let removed =
                unsafe { libc::madvise(host as *mut libc::c_void, len, libc::MADV_REMOVE) };
            if removed != 0 {
                return Err(KernelTextError::Drop(std::io::Error::last_os_error()));
            }
            return Ok(());
        }
        let mut block = host - host % HUGE;
        while block < host + len {
            if self.split.insert(block) {
                self.split(block, host..host + len)?;
            }
            block += HUGE;
        }
        Ok(())
    }

    /// Moves the private block at `block` (clipped to its region) onto small pages, leaving
    /// out the pages of `mapped`, which a file mapping replaces next. No file is mapped in
    /// the block yet: [`Self::prepare`] runs before each mapping and splits a block once.
    fn split(
        &mut self,
        block: usize,
        mapped: std::ops::Range<usize>,
    ) -> Result<(), KernelTextError> {
        let Some(&(start, len)) = self
            .regions
            .iter()
            .find(|&&(start, len)| block + HUGE > start && block < start + len)
        else {
            return Ok(());
        };
        let from = block.max(start);
        let to = (block + HUGE).min(start + len);
        // SAFETY: [from, to) is page-aligned and inside the private guest RAM mapping, which
        // lives as long as the process; only its advice changes, not its contents.
        let advised =
            unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_NOHUGEPAGE) };
        if advised != 0 {
            let error = std::io::Error::last_os_error();
            // A host kernel without transparent huge pages: nothing to split.
            if error.raw_os_error() == Some(libc::EINVAL) {
                return Ok(());
            }
            return Err(KernelTextError::SmallPages(error));
        }
        // Every page is read, not only those mincore calls resident: a page swapped out
        // must come back and be kept, and reading a page never touched maps the shared zero
        // page, which costs nothing.
        let mut kept: Vec<(usize, Vec<u8>)> = Vec::new();
        for at in (from..to).step_by(PAGE) {
            if mapped.contains(&at) {
                continue;
            }
            // SAFETY: a page of the private guest RAM mapping, which lives as long as the
            // process; the guest is paused and no device uses it meanwhile.
            let bytes = unsafe { std::slice::from_raw_parts(at as *const u8, PAGE) };
            if bytes.iter().any(|&b| b != 0) {
                kept.push((at, bytes.to_vec()));
            }
        }
        // SAFETY: as above; the contents of [from, to) outside `mapped` are saved in `kept`
        // (all but zero pages, which read back as zeros after MADV_DONTNEED), and `mapped`
        // is about to be replaced by the file.
        let dropped =
            unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_DONTNEED) };
        if dropped != 0 {
            // Nothing was dropped; the guest's pages are as they were.
            return Err(KernelTextError::SmallPages(std::io::Error::last_os_error()));
        }
        for (at, bytes) in &kept {
            // SAFETY: `at` is a page of the mapping just dropped, writable, faulted in anew
            // as a 4 KiB page by this write; `bytes` is one page long.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), *at as *mut u8, PAGE) };
        }
        self.split_blocks += 1;
        self.rewritten_pages += kept.len() as u64;
        Ok(())
    }
}

/// Maps pages of `file` copy-on-write over guest RAM, merging pages that follow each other
/// both in guest RAM and in the file into one mapping, each readied first by [`GuestRam`].
pub struct FileRuns<'a> {
    file: &'a File,
    ram: &'a mut GuestRam,
    /// (host address, length, file offset) of the run not yet mapped.
    run: Option<(usize, usize, u64)>,
}

impl<'a> FileRuns<'a> {
    pub fn new(file: &'a File, ram: &'a mut GuestRam) -> Self {
        FileRuns {
            file,
            ram,
            run: None,
        }
    }

    /// The file offset that would extend the pending run with the page at `host`.
    pub fn next_offset(&self, host: usize) -> Option<u64> {
        self.run
            .and_then(|(at, len, offset)| (at + len == host).then_some(offset + len as u64))
    }

    /// Adds `len` bytes of the file from `offset`, to be mapped at `host`.
    pub fn add(&mut self, host: usize, len: usize, offset: u64) -> Result<(), KernelTextError> {
        if self.next_offset(host) == Some(offset) {
            if let Some((_, run_len, _)) = &mut self.run {
                *run_len += len;
                return Ok(());
            }
        }
        self.flush()?;
        self.run = Some((host, len, offset));
        Ok(())
    }

    /// Maps the pending run.
    pub fn flush(&mut self) -> Result<(), KernelTextError> {
        match self.run.take() {
            Some((host, len, offset)) => self.map(host, len, offset),
            None => Ok(()),
        }
    }

    fn map(&mut self, host: usize, len: usize, offset: u64) -> Result<(), KernelTextError> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|e| KernelTextError::Map(std::io::Error::other(e)))?;
        self.ram.prepare(host, len)?;
        // SAFETY: as above; MAP_FIXED replaces exactly those pages with a private mapping of
        // the same length, readable and writable as before, which KVM's memory slot (a range
        // of addresses, not of mappings) keeps using; the mapping holds its own reference to
        // the file.
        let mapped = unsafe {
            libc::mmap(
                host as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                self.file.as_raw_fd(),
                offset,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(KernelTextError::Map(std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

/// Whether `at` lies in one of `ranges` (sorted and disjoint): a binary search, as the
/// guest may report thousands of ranges and the scan asks for each resident page.
fn within(ranges: &[std::ops::Range<u64>], at: u64) -> bool {
    let i = ranges.partition_point(|r| r.end <= at);
    ranges.get(i).is_some_and(|r| r.start <= at)
}

/// Maps `file` copy-on-write over every resident guest page outside `skip` (a guest
/// address range), and inside `only` where given (guest address ranges, sorted and
/// disjoint), that holds exactly one of its indexed pages, guest RAM readied by `ram`. The caller keeps the guest paused.
/// Returns how many pages were mapped.
pub fn share_matching_pages(
    memory: &GuestMemoryMmap,
    file: &File,
    index: &FilePageIndex,
    ram: &mut GuestRam,
    skip: std::ops::Range<u64>,
    only: Option<&[std::ops::Range<u64>]>,
) -> Result<u64, KernelTextError> {
    let mut shared = 0;
    if index.is_empty() {
        return Ok(shared);
    }
    let mut from_file = vec![0u8; PAGE];
    let mut in_guest = vec![0u8; PAGE];
    let mut runs = FileRuns::new(file, ram);
    for region in memory.iter() {
        let base = region.start_addr().0;
        let Ok(len) = usize::try_from(region.len()) else {
            continue;
        };
        let Ok(slice) = memory.get_slice(GuestAddress(base), len) else {
            continue;
        };
        let host = slice.ptr_guard_mut().as_ptr() as usize;
        let residency = resident(host, len).map_err(KernelTextError::Read)?;
        for (page, state) in residency.iter().enumerate() {
            let at = page * PAGE;
            let guest = base + at as u64;
            if state & 1 == 0 || skip.contains(&guest) || at + PAGE > len {
                continue;
            }
            if only.is_some_and(|ranges| !within(ranges, guest)) {
                continue;
            }
            let guest_page = slice
                .subslice(at, PAGE)
                .map_err(|e| KernelTextError::Read(std::io::Error::other(e)))?;
            let mut key = [0u8; KEY];
            guest_page
                .subslice(0, KEY)
                .map_err(|e| KernelTextError::Read(std::io::Error::other(e)))?
                .copy_to(&mut key[..]);
            let Some(offsets) = index.by_key.get(&key) else {
                continue;
            };
            guest_page.copy_to(&mut in_guest[..]);
            // The page that would extend the run is tried first.
            let next = runs.next_offset(host + at);
            let candidates = next
                .filter(|o| offsets.contains(o))
                .into_iter()
                .chain(offsets.iter().copied().filter(|&o| Some(o) != next));
            for offset in candidates {
                file.read_exact_at(&mut from_file, offset)
                    .map_err(KernelTextError::Read)?;
                if from_file != in_guest {
                    continue;
                }
                shared += 1;
                runs.add(host + at, PAGE, offset)?;
                break;
            }
        }
    }
    runs.flush()?;
    Ok(shared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::create_guest_memory;
    use vm_memory::Bytes;

    const MIB: u64 = 1 << 20;

    /// A file of `pages` pages, each filled with its own non-zero pattern, the third
    /// starting with zeros.
    fn file(name: &str, pages: usize) -> (std::path::PathBuf, Vec<u8>) {
        let mut bytes = vec![0u8; pages * PAGE];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = ((i / PAGE) as u8)
                .wrapping_mul(31)
                .wrapping_add((i % 251) as u8)
                | 1;
        }
        bytes[2 * PAGE..2 * PAGE + KEY].fill(0);
        let path = std::env::temp_dir().join(format!("vpod-pages-{}-{name}", std::process::id()));
        std::fs::write(&path, &bytes).expect("temp file");
        (path, bytes)
    }

    /// The file the mapping of this process holding `address` maps, and its Anonymous KiB.
    fn mapping(address: usize) -> (String, u64) {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let holds = |line: &str| {
            let Some((range, _)) = line.split_once(' ') else {
                return false;
            };
            let Some((start, end)) = range.split_once('-') else {
                return false;
            };
            match (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) {
                (Ok(start), Ok(end)) => (start..end).contains(&address),
                _ => false,
            }
        };
        let mut lines = smaps.lines().skip_while(|l| !holds(l));
        let head = lines.next().expect("a mapping holding the address");
        let anonymous = lines
            .find_map(|l| l.strip_prefix("Anonymous:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .expect("Anonymous");
        (
            head.split_whitespace().nth(5).unwrap_or("").to_string(),
            anonymous,
        )
    }

    #[test]
    fn within_finds_an_address_among_sorted_ranges() {
        let ranges = [0x1000..0x3000, 0x8000..0x9000];
        for (at, inside) in [
            (0, false),
            (0x1000, true),
            (0x2fff, true),
            (0x3000, false),
            (0x8000, true),
            (0x9000, false),
        ] {
            assert_eq!(within(&ranges, at), inside, "{at:#x}");
        }
        assert!(!within(&[], 0x1000));
    }

    #[test]
    fn pages_that_do_not_start_with_zeros_are_indexed() {
        let (path, _) = file("index", 4);
        let index = FilePageIndex::build(&File::open(&path).expect("open")).expect("index");
        let _ = std::fs::remove_file(&path);
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn guest_pages_holding_file_pages_are_mapped_from_the_file() {
        let (path, bytes) = file("share", 4);
        let file = File::open(&path).expect("open");
        let index = FilePageIndex::build(&file).expect("index");
        let memory = create_guest_memory(&[(GuestAddress(0), 8 * MIB)], 8, false).expect("ram");
        let page = |i: usize| &bytes[i * PAGE..(i + 1) * PAGE];
        // File page 1 twice, page 3 once, page 0 with one byte changed, page 2 (zeros
        // first, not indexed), and page 3 again inside the skipped range.
        let placed = [
            (0x10_0000, page(1).to_vec()),
            (0x30_0000, page(1).to_vec()),
            (0x31_0000, page(3).to_vec()),
            (0x40_0000, {
                let mut p = page(0).to_vec();
                p[100] ^= 1;
                p
            }),
            (0x50_0000, page(2).to_vec()),
            (0x60_0000, page(3).to_vec()),
        ];
        for (at, content) in &placed {
            memory
                .write_slice(content, GuestAddress(*at))
                .expect("write");
        }
        let shared = share_matching_pages(
            &memory,
            &file,
            &index,
            &mut GuestRam::new(&memory, false),
            0x60_0000..0x70_0000,
            None,
        )
        .expect("share");
        assert_eq!(shared, 3);
        for (at, content) in &placed {
            let mut seen = vec![0u8; PAGE];
            memory
                .read_slice(&mut seen, GuestAddress(*at))
                .expect("read");
            assert!(&seen == content, "the guest sees what it wrote at {at:#x}");
            let host = memory.get_host_address(GuestAddress(*at)).expect("host") as usize;
            let (mapped, anonymous) = mapping(host);
            let from_file = [0x10_0000, 0x30_0000, 0x31_0000].contains(at);
            assert_eq!(mapped == path.display().to_string(), from_file, "{at:#x}");
            if from_file {
                assert_eq!(anonymous, 0, "{at:#x}");
            }
        }
        let _ = std::fs::remove_file(&path);
    }

    /// Resident pages of `len` bytes at `host`.
    fn resident_pages(host: usize, len: usize) -> usize {
        resident(host, len)
            .expect("mincore")
            .iter()
            .filter(|&&r| r & 1 != 0)
            .count()
    }

    /// KiB of transparent huge pages in the mappings between `from` and `to`.
    fn huge_kib(from: usize, to: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let mut inside = false;
        let mut kib = 0;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((start, end)) = first.split_once('-') {
                if let (Ok(start), Ok(end)) = (
                    usize::from_str_radix(start, 16),
                    usize::from_str_radix(end, 16),
                ) {
                    inside = start < to && end > from;
                    continue;
                }
            }
            if let (true, Some(v)) = (inside, line.strip_prefix("AnonHugePages:")) {
                kib += v.trim().trim_end_matches(" kB").parse::<u64>().unwrap_or(0);
            }
        }
        kib
    }

    #[test]
    fn a_private_block_under_a_file_page_moves_to_small_pages_and_keeps_its_bytes() {
        let (path, bytes) = file("split", 3);
        let file = File::open(&path).expect("open");
        let index = FilePageIndex::build(&file).expect("index");
        let memory = create_guest_memory(&[(GuestAddress(0), 8 * MIB)], 8, false).expect("ram");
        // The whole block at 2 MiB touched (a huge page where the host gives one): zeros,
        // but for file page 1 at 0x20_3000 and two pages of the guest's own.
        memory
            .write_slice(&vec![0u8; 2 * MIB as usize], GuestAddress(0x20_0000))
            .expect("touch");
        let own: Vec<u8> = (0..PAGE).map(|i| (i % 251) as u8 | 0x80).collect();
        for at in [0x20_0000u64, 0x3f_f000] {
            memory.write_slice(&own, GuestAddress(at)).expect("write");
        }
        memory
            .write_slice(&bytes[PAGE..2 * PAGE], GuestAddress(0x20_3000))
            .expect("write");
        let block = memory
            .get_host_address(GuestAddress(0x20_0000))
            .expect("host") as usize;
        let huge_before = huge_kib(block, block + 2 * MIB as usize);
        let mut ram = GuestRam::new(&memory, false);
        let shared = share_matching_pages(&memory, &file, &index, &mut ram, 0..0, None);
        let huge_after = huge_kib(block, block + 2 * MIB as usize);
        let resident_after = resident_pages(block, 2 * MIB as usize);
        let _ = std::fs::remove_file(&path);

        assert_eq!(shared.expect("share"), 1);
        // The two pages of the guest's own; the page under the file is not written back.
        assert_eq!((ram.split_blocks, ram.rewritten_pages), (1, 2));
        for at in [0x20_0000u64, 0x3f_f000] {
            let mut seen = vec![0u8; PAGE];
            memory
                .read_slice(&mut seen, GuestAddress(at))
                .expect("read");
            assert!(seen == own, "the guest's page at {at:#x} kept its bytes");
        }
        // The two pages of the guest's own and the file's page; the zero pages are gone.
        assert_eq!(resident_after, 3, "pages resident");
        assert_eq!(huge_after, 0, "huge pages left ({huge_before} KiB before)");
        let mut seen = vec![0u8; PAGE];
        memory
            .read_slice(&mut seen, GuestAddress(0x20_1000))
            .expect("read");
        assert!(seen.iter().all(|&b| b == 0), "a zero page reads zeros");
    }

    #[test]
    fn neighbouring_matches_of_neighbouring_file_pages_are_one_mapping() {
        let (path, bytes) = file("run", 3);
        let file = File::open(&path).expect("open");
        let index = FilePageIndex::build(&file).expect("index");
        let memory = create_guest_memory(&[(GuestAddress(0), 8 * MIB)], 8, false).expect("ram");
        memory
            .write_slice(&bytes[..2 * PAGE], GuestAddress(0x20_0000))
            .expect("write");
        let shared = share_matching_pages(
            &memory,
            &file,
            &index,
            &mut GuestRam::new(&memory, false),
            0..0,
            None,
        )
        .expect("share");
        let host = memory
            .get_host_address(GuestAddress(0x20_0000))
            .expect("host") as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let start = format!("{host:x}-{:x} ", host + 2 * PAGE);
        let _ = std::fs::remove_file(&path);
        assert_eq!(shared, 2);
        assert!(
            smaps.lines().any(|l| l.starts_with(&start)),
            "no single mapping {start}"
        );
    }
}
