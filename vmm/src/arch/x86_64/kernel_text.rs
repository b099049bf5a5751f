//! The guest kernel's code, shared between VMs. The kernel is loaded as usual (copied into
//! guest RAM, on huge pages, so the boot takes few nested page faults); a few seconds
//! later, with every vCPU paused, each page of an ELF kernel's `.text` that still holds
//! exactly the file's bytes is replaced by a copy-on-write (`MAP_PRIVATE`) mapping of the
//! kernel file ([`share_identical_pages`]). Every VM booting the same file then runs on the
//! same page-cache pages; the pages its boot patched (a few hundred instruction sites)
//! stay its own. A page the guest writes later gets a private copy then.
//!
//! Only `.text` is shared, never data or read-only data: a guest kernel may hand read-only
//! data to a device (a constant string in a virtio-fs request, say), and a vhost-user
//! backend maps the guest RAM memfd, whose pages behind shared code are dropped. Code is
//! never a device buffer. Guest memory on reserved huge pages (hugetlbfs) is left alone.
//!
//! The cost is a timing side channel of the kind shared libraries have between host
//! processes: a guest that flushes a shared code page from the cache can tell whether
//! another VM ran that code since (flush+reload). `--private-boot-files` turns it off.
//! The kernel file must be replaced by a rename, never rewritten in place: a private
//! mapping sees the file's bytes until the guest writes the page.

use std::fs::File;
use std::os::unix::fs::FileExt;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::vstate::file_pages::{FileRuns, GuestRam};

const PAGE: u64 = 4096;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: u64 = 56;
const SHDR_SIZE: u64 = 64;
/// Bounds on what is read of a file that may be anything: more program or section headers,
/// or a longer section name table, than a kernel has means "do not share".
const MAX_PHDRS: u64 = 64;
const MAX_SHDRS: u64 = 4096;
const MAX_SHSTRTAB: u64 = 1 << 20;

const PT_LOAD: u32 = 1;
const SHT_PROGBITS: u32 = 1;
const SHF_ALLOC: u64 = 2;
const SHF_EXECINSTR: u64 = 4;

/// Errors finding the kernel's code, or sharing a boot file's pages with guest memory.
#[derive(Debug, thiserror::Error)]
pub enum KernelTextError {
    #[error("cannot read a boot file (its headers or pages)")]
    Read(#[source] std::io::Error),
    #[error("cannot map a boot file copy-on-write into guest memory")]
    Map(#[source] std::io::Error),
    #[error("cannot drop the guest memory behind a shared page")]
    Drop(#[source] std::io::Error),
    #[error("cannot move guest memory off huge pages before sharing part of them")]
    SmallPages(#[source] std::io::Error),
}

/// Where the kernel's `.text` lies, in whole pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextPages {
    /// Offset in the file, page-aligned.
    pub file_offset: u64,
    /// Guest-physical address the loader puts that byte at, page-aligned.
    pub guest_addr: u64,
    /// Length, a whole number of pages.
    pub len: u64,
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default())
}

fn read_at(file: &File, offset: u64, len: u64) -> Result<Vec<u8>, KernelTextError> {
    let len = usize::try_from(len).map_err(|e| KernelTextError::Read(std::io::Error::other(e)))?;
    let mut bytes = vec![0; len];
    file.read_exact_at(&mut bytes, offset)
        .map_err(KernelTextError::Read)?;
    Ok(bytes)
}

/// Finds the whole pages of `.text` in a little-endian ELF64 `file` and where its loader
/// (which puts each `PT_LOAD` at its physical address) places them. `None` for anything
/// else (a bzImage, a file without section headers, a `.text` that is not page-congruent
/// between file and memory, or less than a page of it), which is then simply copied.
pub fn find_text(file: &File) -> Result<Option<TextPages>, KernelTextError> {
    let size = file.metadata().map_err(KernelTextError::Read)?.len();
    if size < EHDR_SIZE as u64 {
        return Ok(None);
    }
    let ehdr = read_at(file, 0, EHDR_SIZE as u64)?;
    if ehdr[..4] != *b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return Ok(None);
    }
    let (phoff, shoff) = (u64_at(&ehdr, 0x20), u64_at(&ehdr, 0x28));
    let (phentsize, phnum) = (
        u64::from(u16_at(&ehdr, 0x36)),
        u64::from(u16_at(&ehdr, 0x38)),
    );
    let (shentsize, shnum) = (
        u64::from(u16_at(&ehdr, 0x3a)),
        u64::from(u16_at(&ehdr, 0x3c)),
    );
    let shstrndx = u64::from(u16_at(&ehdr, 0x3e));
    let fits = |offset: u64, len: u64| offset.checked_add(len).is_some_and(|end| end <= size);
    if phentsize != PHDR_SIZE
        || shentsize != SHDR_SIZE
        || phnum > MAX_PHDRS
        || shnum > MAX_SHDRS
        || shstrndx >= shnum
        || !fits(phoff, phnum * PHDR_SIZE)
        || !fits(shoff, shnum * SHDR_SIZE)
    {
        return Ok(None);
    }
    let shdrs = read_at(file, shoff, shnum * SHDR_SIZE)?;
    let shdr = |i: u64| &shdrs[(i * SHDR_SIZE) as usize..((i + 1) * SHDR_SIZE) as usize];
    let names = shdr(shstrndx);
    let (names_offset, names_len) = (u64_at(names, 24), u64_at(names, 32));
    if names_len > MAX_SHSTRTAB || !fits(names_offset, names_len) {
        return Ok(None);
    }
    let names = read_at(file, names_offset, names_len)?;
    let text = (0..shnum).map(shdr).find(|s| {
        let name = usize::try_from(u32_at(s, 0)).unwrap_or(usize::MAX);
        names.get(name..).is_some_and(|n| n.starts_with(b".text\0"))
            && u32_at(s, 4) == SHT_PROGBITS
            && u64_at(s, 8) & (SHF_ALLOC | SHF_EXECINSTR) == SHF_ALLOC | SHF_EXECINSTR
    });
    let Some(text) = text else {
        return Ok(None);
    };
    let (text_offset, text_size) = (u64_at(text, 24), u64_at(text, 32));
    let Some(text_end) = text_offset.checked_add(text_size) else {
        return Ok(None);
    };
    let phdrs = read_at(file, phoff, phnum * PHDR_SIZE)?;
    let segment = phdrs.chunks_exact(PHDR_SIZE as usize).find(|p| {
        let (offset, filesz) = (u64_at(p, 8), u64_at(p, 32));
        u32_at(p, 0) == PT_LOAD
            && offset <= text_offset
            && offset
                .checked_add(filesz)
                .is_some_and(|end| text_end <= end)
    });
    let Some(segment) = segment else {
        return Ok(None);
    };
    let (segment_offset, paddr) = (u64_at(segment, 8), u64_at(segment, 24));
    let Some(start) = text_offset.checked_next_multiple_of(PAGE) else {
        return Ok(None);
    };
    let end = text_end - text_end % PAGE;
    let Some(guest_addr) = paddr.checked_add(start - segment_offset) else {
        return Ok(None);
    };
    if end <= start || guest_addr % PAGE != 0 || end > size {
        return Ok(None);
    }
    Ok(Some(TextPages {
        file_offset: start,
        guest_addr,
        len: end - start,
    }))
}

/// What [`share_identical_pages`] did, in pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TextSharing {
    /// Pages now mapped from the file.
    pub shared: u64,
    /// Pages the guest had changed, left as they are.
    pub private: u64,
}

/// How much of the file is read and compared at a time.
const CHUNK: usize = 64 * 4096;

/// Replaces each page of `pages` in `memory` that holds exactly the bytes of `file` at its
/// offset by a copy-on-write mapping of the file ([`FileRuns`]), guest RAM readied by `ram`.
/// The caller must keep the guest from running (every vCPU paused) and from reaching these
/// pages through a device meanwhile; guest memory outside `pages` keeps its contents (the
/// 2 MiB blocks around them may move onto small pages).
pub fn share_identical_pages(
    memory: &GuestMemoryMmap,
    file: &File,
    pages: TextPages,
    ram: &mut GuestRam,
) -> Result<TextSharing, KernelTextError> {
    let mut outcome = TextSharing::default();
    let Ok(len) = usize::try_from(pages.len) else {
        return Ok(outcome);
    };
    let Ok(slice) = memory.get_slice(GuestAddress(pages.guest_addr), len) else {
        return Ok(outcome);
    };
    let host = slice.ptr_guard_mut().as_ptr() as usize;
    let mut from_file = vec![0u8; CHUNK];
    let mut in_guest = vec![0u8; CHUNK];
    let mut runs = FileRuns::new(file, ram);
    let mut at = 0;
    while at < len {
        let n = CHUNK.min(len - at);
        file.read_exact_at(&mut from_file[..n], pages.file_offset + at as u64)
            .map_err(KernelTextError::Read)?;
        slice
            .subslice(at, n)
            .map_err(|e| KernelTextError::Read(std::io::Error::other(e)))?
            .copy_to(&mut in_guest[..n]);
        for page in (0..n).step_by(PAGE as usize) {
            let end = (page + PAGE as usize).min(n);
            if from_file[page..end] == in_guest[page..end] {
                outcome.shared += 1;
                let offset = pages.file_offset + (at + page) as u64;
                runs.add(host + at + page, end - page, offset)?;
            } else {
                outcome.private += 1;
                runs.flush()?;
            }
        }
        at += n;
    }
    runs.flush()?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::{create_guest_memory, create_shared_guest_memory};
    use linux_loader::loader::{elf::Elf, KernelLoader};
    use std::path::PathBuf;
    use vm_memory::Bytes;

    const MIB: u64 = 1 << 20;

    /// An ELF64 with one PT_LOAD at physical `paddr` from file offset `load_offset`, whose
    /// first `text_len` bytes are a `.text` section, followed by `data_len` bytes of data.
    fn elf(load_offset: u64, paddr: u64, text_len: u64, data_len: u64) -> Vec<u8> {
        let names = b"\0.text\0.shstrtab\0";
        let total = load_offset + text_len + data_len;
        let shoff = total + names.len() as u64;
        let mut f = vec![0u8; (shoff + 3 * SHDR_SIZE) as usize];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        f[0x18..0x20].copy_from_slice(&paddr.to_le_bytes());
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        f[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        f[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&(SHDR_SIZE as u16).to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        let p = 64;
        f[p..p + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        f[p + 4..p + 8].copy_from_slice(&5u32.to_le_bytes());
        f[p + 8..p + 16].copy_from_slice(&load_offset.to_le_bytes());
        f[p + 16..p + 24].copy_from_slice(&paddr.to_le_bytes());
        f[p + 24..p + 32].copy_from_slice(&paddr.to_le_bytes());
        f[p + 32..p + 40].copy_from_slice(&(text_len + data_len).to_le_bytes());
        f[p + 40..p + 48].copy_from_slice(&(text_len + data_len).to_le_bytes());
        for (i, byte) in f[load_offset as usize..total as usize]
            .iter_mut()
            .enumerate()
        {
            *byte = (i % 251) as u8 + 1;
        }
        f[total as usize..shoff as usize].copy_from_slice(names);
        let section =
            |f: &mut Vec<u8>, i: u64, name: u32, kind: u32, flags: u64, at: u64, len: u64| {
                let s = (shoff + i * SHDR_SIZE) as usize;
                f[s..s + 4].copy_from_slice(&name.to_le_bytes());
                f[s + 4..s + 8].copy_from_slice(&kind.to_le_bytes());
                f[s + 8..s + 16].copy_from_slice(&flags.to_le_bytes());
                f[s + 24..s + 32].copy_from_slice(&at.to_le_bytes());
                f[s + 32..s + 40].copy_from_slice(&len.to_le_bytes());
            };
        section(
            &mut f,
            1,
            1,
            SHT_PROGBITS,
            SHF_ALLOC | SHF_EXECINSTR,
            load_offset,
            text_len,
        );
        section(&mut f, 2, 7, 3, 0, total, names.len() as u64);
        f
    }

    fn temp(name: &str, bytes: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("vpod-text-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).expect("temp file");
        path
    }

    /// (Rss, Anonymous) in KiB of this process's mapping that starts at `address`, and the
    /// file it maps. Anonymous pages in a private file mapping are its copied-on-write ones.
    fn smaps(address: usize) -> (u64, u64, String) {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let start = format!("{address:x}-");
        let mut lines = smaps.lines().skip_while(|line| !line.starts_with(&start));
        let head = lines.next().expect("a mapping at the address");
        let file = head.split_whitespace().nth(5).unwrap_or("").to_string();
        let mut field = |name: &str| {
            lines
                .find_map(|line| line.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
                .expect("an smaps field")
        };
        let rss = field("Rss:");
        let copied = field("Anonymous:");
        (rss, copied, file)
    }

    /// Loads the test ELF at `path` into `memory` as the VMM does, and finds its text.
    fn load(memory: &GuestMemoryMmap, path: &PathBuf) -> (File, TextPages) {
        let mut file = File::open(path).expect("open");
        Elf::load(memory, None, &mut file, None).expect("load");
        let pages = find_text(&file).expect("headers").expect("text pages");
        (file, pages)
    }

    #[test]
    fn unchanged_text_pages_become_the_file_s_and_changed_ones_stay_the_guest_s() {
        // .text 64 KiB + 100 bytes at file offset 0x1000 for 2 MiB; 5000 bytes of data.
        let bytes = elf(0x1000, 2 * MIB, 64 * 1024 + 100, 5000);
        let path = temp("cow", &bytes);
        let memory = create_guest_memory(&[(GuestAddress(0), 8 * MIB)], 8, false).expect("ram");
        let (file, pages) = load(&memory, &path);
        assert_eq!(
            pages,
            TextPages {
                file_offset: 0x1000,
                guest_addr: 2 * MIB,
                len: 64 * 1024
            }
        );
        // The guest's boot patched its fourth page.
        memory
            .write_slice(&[0x90; 5], GuestAddress(2 * MIB + 3 * 4096 + 10))
            .expect("patch");
        let mut expected = vec![0u8; 64 * 1024 + 100 + 5000];
        memory
            .read_slice(&mut expected, GuestAddress(2 * MIB))
            .expect("read guest memory");
        let outcome =
            share_identical_pages(&memory, &file, pages, &mut GuestRam::new(&memory, false))
                .expect("share");
        assert_eq!(
            outcome,
            TextSharing {
                shared: 15,
                private: 1
            }
        );
        let mut seen = vec![0u8; expected.len()];
        memory
            .read_slice(&mut seen, GuestAddress(2 * MIB))
            .expect("read guest memory");
        assert!(seen == expected, "the guest sees what it saw before");
        let host = memory
            .get_host_address(GuestAddress(2 * MIB))
            .expect("host") as usize;
        let (rss, copied, mapped) = smaps(host);
        assert_eq!(mapped, path.display().to_string());
        assert_eq!(copied, 0, "no private copy of a shared page yet");
        assert!(rss > 0, "the reads above used the file's pages");
        let after_patch = host + 4 * 4096;
        assert_eq!(smaps(after_patch).2, path.display().to_string());
        // A later guest write gets a page of its own; the file keeps its bytes.
        memory
            .write_slice(&[0xcc; 16], GuestAddress(2 * MIB + 8192))
            .expect("write");
        assert_eq!(smaps(host).1, 4);
        let on_disk = std::fs::read(&path).expect("read file");
        let _ = std::fs::remove_file(&path);
        assert_eq!(on_disk, bytes);
    }

    #[test]
    fn shared_memfd_guest_memory_is_shared_too() {
        let bytes = elf(0x1000, 2 * MIB, 32 * 1024, 10);
        let path = temp("memfd", &bytes);
        let (memory, _) =
            create_shared_guest_memory(&[(GuestAddress(0), 8 * MIB)], 8).expect("shared ram");
        let (file, pages) = load(&memory, &path);
        let outcome =
            share_identical_pages(&memory, &file, pages, &mut GuestRam::new(&memory, true))
                .expect("share");
        let mut seen = vec![0u8; 32 * 1024];
        memory
            .read_slice(&mut seen, GuestAddress(2 * MIB))
            .expect("read guest memory");
        let host = memory
            .get_host_address(GuestAddress(2 * MIB))
            .expect("host") as usize;
        let mapped = smaps(host).2;
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            outcome,
            TextSharing {
                shared: 8,
                private: 0
            }
        );
        assert!(seen == bytes[0x1000..0x1000 + 32 * 1024]);
        assert_eq!(mapped, path.display().to_string());
    }

    #[test]
    fn text_that_is_not_page_congruent_is_copied() {
        let bytes = elf(0x1800, 2 * MIB, 64 * 1024, 10);
        let path = temp("incongruent", &bytes);
        let file = File::open(&path).expect("open");
        let found = find_text(&file);
        let _ = std::fs::remove_file(&path);
        assert!(matches!(found, Ok(None)), "{found:?}");
    }

    #[test]
    fn text_outside_guest_memory_is_left_alone() {
        let bytes = elf(0x1000, 64 * MIB, 64 * 1024, 10);
        let path = temp("outside", &bytes);
        let memory = create_guest_memory(&[(GuestAddress(0), 8 * MIB)], 8, false).expect("ram");
        let file = File::open(&path).expect("open");
        let pages = find_text(&file).expect("headers").expect("text pages");
        let outcome =
            share_identical_pages(&memory, &file, pages, &mut GuestRam::new(&memory, false));
        let _ = std::fs::remove_file(&path);
        assert_eq!(outcome.expect("no error"), TextSharing::default());
    }

    #[test]
    fn files_that_are_not_elf_kernels_have_no_text_to_share() {
        for (name, bytes) in [
            ("empty", Vec::new()),
            ("text", b"not an elf file at all, just words".repeat(10)),
            ("truncated", elf(0x1000, 2 * MIB, 8192, 10)[..200].to_vec()),
        ] {
            let path = temp(name, &bytes);
            let file = File::open(&path).expect("open");
            let found = find_text(&file);
            let _ = std::fs::remove_file(&path);
            assert!(matches!(found, Ok(None)), "{name}: {found:?}");
        }
    }

    #[test]
    fn absurd_header_counts_and_offsets_are_refused_not_read() {
        let mut bytes = elf(0x1000, 2 * MIB, 8192, 10);
        bytes[0x3c..0x3e].copy_from_slice(&u16::MAX.to_le_bytes());
        let path = temp("absurd", &bytes);
        let file = File::open(&path).expect("open");
        let many = find_text(&file);
        let mut bytes = elf(0x1000, 2 * MIB, 8192, 10);
        bytes[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, &bytes).expect("rewrite");
        let far = find_text(&File::open(&path).expect("open"));
        let _ = std::fs::remove_file(&path);
        assert!(matches!(many, Ok(None)), "{many:?}");
        assert!(matches!(far, Ok(None)), "{far:?}");
    }
}
