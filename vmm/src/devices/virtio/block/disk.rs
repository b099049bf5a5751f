//! The storage behind a virtio-blk device.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Positioned access to a disk image.
pub trait DiskImage: Send {
    /// Size in bytes.
    fn size(&self) -> u64;
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes written data durable.
    fn flush(&mut self) -> io::Result<()>;
}

/// A raw image file.
pub struct RawFile {
    file: File,
    size: u64,
}

impl RawFile {
    pub fn new(file: File) -> io::Result<Self> {
        let size = file.metadata()?.len();
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
}
