//! Loading the kernel (ELF vmlinux, with or without a PVH note, or bzImage), the initrd and
//! the command line into guest memory.

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::bzimage::{self, BzImage};
use linux_loader::loader::elf::{self, Elf, PvhBootCapability};
use linux_loader::loader::{self as loader, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{low_ram_end, CMDLINE_START, HIMEM_START};
use super::regs::BootProtocol;

/// Errors loading the kernel, initrd or command line.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot open kernel {0}")]
    Open(PathBuf, #[source] std::io::Error),
    #[error("kernel {0} is not an ELF vmlinux or bzImage")]
    NotAKernel(PathBuf),
    #[error("kernel {0} cannot be loaded into guest memory (is the memory too small?): {1}")]
    Load(PathBuf, String),
    #[error("cannot open initrd {0}")]
    OpenInitrd(PathBuf, #[source] std::io::Error),
    #[error("guest memory is too small for the kernel and the {1}-byte initrd {0}")]
    InitrdTooLarge(PathBuf, u64),
    #[error("cannot read initrd {0} into guest memory")]
    ReadInitrd(PathBuf, #[source] vm_memory::GuestMemoryError),
    #[error("cannot write the kernel command line into guest memory")]
    Cmdline(#[source] vm_memory::GuestMemoryError),
}

/// Where and how the loaded kernel starts.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub entry: u64,
    pub protocol: BootProtocol,
    /// First guest address after the kernel image.
    pub end: u64,
    /// The bzImage setup header, for the zero page.
    pub setup_header: Option<setup_header>,
}

/// Offset of the 64-bit entry point from the start of a bzImage's protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

fn load_error(path: &Path, error: impl std::fmt::Display) -> KernelError {
    KernelError::Load(path.to_path_buf(), error.to_string())
}

/// Loads the kernel at `path`: an ELF with a PVH note boots through PVH, any other ELF and
/// bzImages through the Linux 64-bit protocol. Returns the open file too, for sharing the
/// kernel's code once it has booted ([`super::kernel_text`]).
pub fn load_kernel(
    memory: &GuestMemoryMmap,
    path: &Path,
) -> Result<(LoadedKernel, File), KernelError> {
    let mut file = File::open(path).map_err(|e| KernelError::Open(path.to_path_buf(), e))?;
    let loaded = load_kernel_file(memory, path, &mut file)?;
    Ok((loaded, file))
}

fn load_kernel_file(
    memory: &GuestMemoryMmap,
    path: &Path,
    file: &mut File,
) -> Result<LoadedKernel, KernelError> {
    match Elf::load(memory, None, file, Some(GuestAddress(HIMEM_START))) {
        Ok(result) => {
            let (entry, protocol) = match result.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(entry) => (entry.0, BootProtocol::Pvh),
                _ => (result.kernel_load.0, BootProtocol::Linux64),
            };
            Ok(LoadedKernel {
                entry,
                protocol,
                end: result.kernel_end,
                setup_header: None,
            })
        }
        Err(loader::Error::Elf(elf::Error::InvalidElfMagicNumber))
        | Err(loader::Error::Elf(elf::Error::ReadElfHeader)) => {
            match BzImage::load(memory, None, file, Some(GuestAddress(HIMEM_START))) {
                Ok(result) => Ok(LoadedKernel {
                    entry: result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
                    protocol: BootProtocol::Linux64,
                    end: result.kernel_end,
                    setup_header: result.setup_header,
                }),
                Err(loader::Error::Bzimage(
                    bzimage::Error::InvalidBzImage
                    | bzimage::Error::ReadBzImageHeader
                    | bzimage::Error::SeekBzImageHeader,
                )) => Err(KernelError::NotAKernel(path.to_path_buf())),
                Err(e) => Err(load_error(path, e)),
            }
        }
        Err(loader::Error::Elf(
            elf::Error::BigEndianElfOnLittle
            | elf::Error::InvalidProgramHeaderSize
            | elf::Error::InvalidProgramHeaderOffset,
        )) => Err(KernelError::NotAKernel(path.to_path_buf())),
        Err(e) => Err(load_error(path, e)),
    }
}

/// Copies the initrd to the top of low RAM, page-aligned, above the kernel. Returns its
/// address and size, and the open file.
pub fn load_initrd(
    memory: &GuestMemoryMmap,
    memory_size: u64,
    kernel: &LoadedKernel,
    path: &Path,
) -> Result<(u64, u64, File), KernelError> {
    let mut file = File::open(path).map_err(|e| KernelError::OpenInitrd(path.to_path_buf(), e))?;
    let size = file
        .metadata()
        .map_err(|e| KernelError::OpenInitrd(path.to_path_buf(), e))?
        .len();
    let mut top = low_ram_end(memory_size);
    if let Some(header) = kernel.setup_header {
        let max = u64::from(header.initrd_addr_max);
        if max > 0 {
            top = top.min(max + 1);
        }
    }
    let too_large = || KernelError::InitrdTooLarge(path.to_path_buf(), size);
    let start = top.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if start < kernel.end.max(HIMEM_START) {
        return Err(too_large());
    }
    let len = usize::try_from(size).map_err(|_| too_large())?;
    memory
        .read_exact_volatile_from(GuestAddress(start), &mut file, len)
        .map_err(|e| KernelError::ReadInitrd(path.to_path_buf(), e))?;
    Ok((start, size, file))
}

/// Writes the NUL-terminated command line at [`CMDLINE_START`].
pub fn write_cmdline(memory: &GuestMemoryMmap, cmdline: &str) -> Result<(), KernelError> {
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    memory
        .write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(KernelError::Cmdline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).expect("memory")
    }

    fn temp(name: &str, bytes: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("vpod-kernel-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).expect("temp file");
        path
    }

    #[test]
    fn text_file_is_not_a_kernel() {
        let path = temp("text", &b"just some text, not a kernel\n".repeat(100));
        let result = load_kernel(&memory(16 << 20), &path);
        let _ = std::fs::remove_file(&path);
        assert!(
            matches!(result, Err(KernelError::NotAKernel(_))),
            "{result:?}"
        );
    }

    #[test]
    fn tiny_file_is_not_a_kernel() {
        let path = temp("tiny", b"MZ");
        let result = load_kernel(&memory(16 << 20), &path);
        let _ = std::fs::remove_file(&path);
        assert!(
            matches!(result, Err(KernelError::NotAKernel(_))),
            "{result:?}"
        );
    }

    #[test]
    fn missing_kernel_is_an_open_error() {
        let result = load_kernel(&memory(16 << 20), Path::new("/nonexistent/vmlinux"));
        assert!(matches!(result, Err(KernelError::Open(..))));
    }

    #[test]
    fn initrd_goes_to_the_top_of_memory_page_aligned() {
        let path = temp("initrd", &[7u8; 5000]);
        let m = memory(16 << 20);
        let kernel = LoadedKernel {
            entry: HIMEM_START,
            protocol: BootProtocol::Pvh,
            end: 0x20_0000,
            setup_header: None,
        };
        let loaded = load_initrd(&m, 16 << 20, &kernel, &path);
        let big = load_initrd(
            &m,
            16 << 20,
            &LoadedKernel {
                end: 0xff_f000,
                ..kernel
            },
            &path,
        );
        let _ = std::fs::remove_file(&path);
        let (start, size, _) = loaded.expect("fits");
        assert_eq!(size, 5000);
        assert_eq!(start % 4096, 0);
        assert!(start + size <= 16 << 20);
        let byte: u8 = m.read_obj(GuestAddress(start + 4999)).expect("readable");
        assert_eq!(byte, 7);
        assert!(matches!(big, Err(KernelError::InitrdTooLarge(..))));
    }
}
