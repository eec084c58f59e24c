//! The journal's file, written with `O_DIRECT | O_DSYNC`: each append goes
//! to the device and is durable when `pwrite` returns, without the page
//! cache's copy, its writeback pass and a separate `fdatasync` (the spool
//! writer's CPU per commit fell by about a fifth, see the README). Reads go
//! through a second, buffered descriptor (rare: recovery, and records moved
//! into redb); Linux drops cached pages a direct write covers, so they see
//! what was written.
//!
//! Direct writes must start and end on `BLOCK` boundaries from aligned
//! memory: the journal writes whole blocks, and this copies them into an
//! aligned buffer.

use redb::StorageBackend;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The unit of a direct write: a common physical block size, a multiple of
/// every logical one.
pub const BLOCK: usize = 4096;

#[derive(Debug)]
pub struct DirectFile {
    direct: File,
    plain: File,
    /// Reused for the aligned copy of each write.
    scratch: Mutex<Vec<u8>>,
    /// The length changed since the last sync: a direct write makes its
    /// data durable, not necessarily a length set before it.
    resized: AtomicBool,
}

impl DirectFile {
    /// Opens `path` (created if missing) for direct writes; when its file
    /// system does not take them, the file opened for reading and writing
    /// (the caller then writes through the page cache and syncs).
    pub fn open(path: &Path) -> io::Result<Result<DirectFile, File>> {
        let plain = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let direct = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
            .open(path);
        match direct {
            Ok(direct) => Ok(Ok(DirectFile {
                direct,
                plain,
                scratch: Mutex::new(Vec::new()),
                resized: AtomicBool::new(false),
            })),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Err(plain)),
            Err(e) => Err(e),
        }
    }
}

impl StorageBackend for DirectFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.plain.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.plain.read_exact_at(out, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.resized.store(true, Ordering::Release);
        self.plain.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        if self.resized.swap(false, Ordering::AcqRel)
            && let Err(e) = self.plain.sync_data()
        {
            self.resized.store(true, Ordering::Release);
            return Err(e);
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if !(offset as usize).is_multiple_of(BLOCK) || !data.len().is_multiple_of(BLOCK) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "direct write of {} bytes at {offset}: not whole {BLOCK}-byte blocks",
                    data.len()
                ),
            ));
        }
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        scratch.resize(data.len() + BLOCK, 0);
        let start = scratch.as_ptr().align_offset(BLOCK);
        let aligned = &mut scratch[start..start + data.len()];
        aligned.copy_from_slice(data);
        self.direct.write_all_at(aligned, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_blocks_are_written_through_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        // Linux has taken O_DIRECT on tmpfs since 6.6, and on ext4, xfs and
        // btrfs long before: a refusal here is a failure, not a skip.
        let Ok(f) = DirectFile::open(&path).expect("open") else {
            panic!("the test's file system takes direct writes");
        };
        f.set_len(3 * BLOCK as u64).expect("grow");
        f.sync_data().expect("length synced");
        let block: Vec<u8> = (0..BLOCK).map(|i| (i % 251) as u8).collect();
        f.write(BLOCK as u64, &block).expect("aligned write");
        let mut back = vec![0; BLOCK];
        f.read(BLOCK as u64, &mut back).expect("read");
        assert_eq!(back, block);
        let err = f.write(10, &block).expect_err("unaligned offset");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = f.write(0, &block[..100]).expect_err("partial block");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(f.len().expect("len"), 3 * BLOCK as u64);
    }
}
