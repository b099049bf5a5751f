//! The storage behind a virtio-blk device.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::FileTypeExt;

use vm_memory::VolatileSlice;

/// Most buffers one `preadv` takes (Linux's IOV_MAX).
const IOV_MAX: usize = 1024;

/// Positioned access to a disk image.
pub trait DiskImage: Send {
    /// Size in bytes.
    fn size(&self) -> u64;
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes written data durable.
    fn flush(&mut self) -> io::Result<()>;

    /// Gives back `len` bytes at `offset`: later reads may return anything there (a file
    /// returns zeros). Storage that cannot says so.
    fn discard(&mut self, _offset: u64, _len: u64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Fills `targets` (guest memory), in order, from the bytes at `offset`. This default
    /// copies through a buffer; files read straight into guest memory.
    fn read_exact_into_at(&mut self, targets: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        let mut offset = offset;
        let mut buffer = Vec::new();
        for target in targets {
            buffer.resize(target.len(), 0);
            self.read_exact_at(&mut buffer, offset)?;
            target.copy_from(&buffer);
            offset += target.len() as u64;
        }
        Ok(())
    }
}

/// A raw image file.
pub struct RawFile {
    file: File,
    size: u64,
}

impl RawFile {
    /// A regular file or a block device (whose metadata says 0 bytes: its size is where a
    /// seek to its end lands).
    pub fn new(mut file: File) -> io::Result<Self> {
        let metadata = file.metadata()?;
        let size = if metadata.file_type().is_block_device() {
            file.seek(SeekFrom::End(0))?
        } else {
            metadata.len()
        };
        Ok(RawFile { file, size })
    }
}

impl DiskImage for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, offset)
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.file, buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// A hole punched in the file (the file keeps its size); on a block device the kernel
    /// discards or zeroes the range.
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
        else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        // SAFETY: fallocate takes a descriptor we own and plain integers; no memory.
        let done = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            )
        };
        if done < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One `preadv` per up to IOV_MAX buffers, straight into guest memory: a request of 254
    /// page-sized segments costs one system call and no copy in the VMM.
    fn read_exact_into_at(&mut self, targets: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        let guards: Vec<_> = targets.iter().map(|t| t.ptr_guard_mut()).collect();
        let mut iovecs: Vec<libc::iovec> = guards
            .iter()
            .zip(targets)
            .map(|(guard, target)| libc::iovec {
                iov_base: guard.as_ptr().cast(),
                iov_len: target.len(),
            })
            .filter(|iov| iov.iov_len > 0)
            .collect();
        let mut first = 0;
        let mut offset = offset;
        while first < iovecs.len() {
            let batch = &iovecs[first..iovecs.len().min(first + IOV_MAX)];
            let position =
                libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
            // SAFETY: every iovec points into guest memory that `targets` borrow (the mapping
            // outlives this call, and `guards` keep any per-access mapping alive) and is no
            // longer than its slice; the kernel writes at most the iovecs' total length, and
            // nothing in this process holds a Rust reference into guest memory.
            let read = unsafe {
                libc::preadv(
                    self.file.as_raw_fd(),
                    batch.as_ptr(),
                    batch.len() as libc::c_int,
                    position,
                )
            };
            if read < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            if read == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let mut left = read as usize;
            offset += left as u64;
            while left > 0 {
                let iov = &mut iovecs[first];
                if left >= iov.iov_len {
                    left -= iov.iov_len;
                    first += 1;
                } else {
                    // SAFETY: `left` is less than this iovec's length, so the advanced base
                    // stays inside the same guest memory slice.
                    iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(left) }.cast();
                    iov.iov_len -= left;
                    left = 0;
                }
            }
        }
        Ok(())
    }
}

/// A disk that may be absent (an empty slot, capacity 0) and is swapped while the guest
/// runs.
#[derive(Default)]
pub struct SlotDisk {
    file: Option<RawFile>,
}

impl SlotDisk {
    pub fn new(file: Option<RawFile>) -> Self {
        SlotDisk { file }
    }

    /// Puts `file` (or nothing) in the slot.
    pub fn replace(&mut self, file: Option<RawFile>) {
        self.file = file;
    }

    pub fn is_attached(&self) -> bool {
        self.file.is_some()
    }

    fn file(&mut self) -> io::Result<&mut RawFile> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the slot is empty"))
    }
}

impl DiskImage for SlotDisk {
    fn size(&self) -> u64 {
        self.file.as_ref().map_or(0, |f| f.size())
    }

    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file()?.read_exact_at(buf, offset)
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file()?.write_all_at(buf, offset)
    }

    fn read_exact_into_at(&mut self, targets: &[VolatileSlice<'_>], offset: u64) -> io::Result<()> {
        self.file()?.read_exact_into_at(targets, offset)
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.file()?.discard(offset, len)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

/// An in-memory disk for tests.
#[cfg(test)]
#[derive(Default)]
pub struct MemoryDisk {
    pub bytes: Vec<u8>,
    pub flushes: usize,
    /// (offset, length) of every discard, in order.
    pub discards: Vec<(u64, u64)>,
}

#[cfg(test)]
impl DiskImage for MemoryDisk {
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let source = self
            .bytes
            .get(start..start + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(source);
        Ok(())
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let target = self
            .bytes
            .get_mut(start..start + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        target.copy_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flushes += 1;
        Ok(())
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start
            .checked_add(usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?)
            .ok_or(io::ErrorKind::InvalidInput)?;
        self.bytes
            .get_mut(start..end)
            .ok_or(io::ErrorKind::UnexpectedEof)?
            .fill(0);
        self.discards.push((offset, len));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    fn raw_file(bytes: &[u8]) -> RawFile {
        let path = std::env::temp_dir().join(format!(
            "vpod-disk-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, bytes).unwrap();
        let file = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        RawFile::new(file).unwrap()
    }

    #[test]
    fn a_file_reads_into_scattered_guest_buffers_in_order() {
        let pattern: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let mut disk = raw_file(&pattern);
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        // Out of order in memory, one empty, one odd-sized.
        let buffers = [
            (0x8000u64, 4096usize),
            (0x1000, 0),
            (0x2000, 513),
            (0x4000, 4096),
        ];
        let targets: Vec<_> = buffers
            .iter()
            .map(|&(at, len)| memory.get_slice(GuestAddress(at), len).unwrap())
            .collect();
        disk.read_exact_into_at(&targets, 1000).unwrap();
        let mut offset = 1000;
        for (at, len) in buffers {
            let mut got = vec![0; len];
            memory.read_slice(&mut got, GuestAddress(at)).unwrap();
            assert_eq!(got, pattern[offset..offset + len], "buffer at {at:#x}");
            offset += len;
        }
        // The same through the copying default gives the same bytes.
        let mut memory_disk = MemoryDisk {
            bytes: pattern.clone(),
            ..MemoryDisk::default()
        };
        let other = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let targets: Vec<_> = buffers
            .iter()
            .map(|&(at, len)| other.get_slice(GuestAddress(at), len).unwrap())
            .collect();
        memory_disk.read_exact_into_at(&targets, 1000).unwrap();
        for (at, len) in buffers {
            let (mut a, mut b) = (vec![0; len], vec![0; len]);
            memory.read_slice(&mut a, GuestAddress(at)).unwrap();
            other.read_slice(&mut b, GuestAddress(at)).unwrap();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn a_discard_punches_a_hole_the_file_keeps_its_size() {
        let path = std::env::temp_dir().join(format!("vpod-discard-test-{}", std::process::id()));
        std::fs::write(&path, vec![0xa5u8; 1 << 20]).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut disk = RawFile::new(file).unwrap();
        let blocks = || {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&path).unwrap().blocks()
        };
        let before = blocks();
        disk.discard(256 << 10, 512 << 10).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        assert!(
            blocks() + 512 * 2 <= before,
            "{before} blocks before, {} after",
            blocks()
        );
        let mut back = vec![1u8; 4096];
        disk.read_exact_at(&mut back, 256 << 10).unwrap();
        assert!(back.iter().all(|&b| b == 0));
        disk.read_exact_at(&mut back, 0).unwrap();
        assert!(back.iter().all(|&b| b == 0xa5));
        assert!(SlotDisk::default().discard(0, 4096).is_err());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn reading_past_the_end_of_a_file_is_an_error() {
        let mut disk = raw_file(&[7; 4096]);
        let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let targets = [memory.get_slice(GuestAddress(0), 8192).unwrap()];
        let error = disk.read_exact_into_at(&targets, 0).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        let mut empty = SlotDisk::default();
        assert!(empty.read_exact_into_at(&targets, 0).is_err());
    }
}
