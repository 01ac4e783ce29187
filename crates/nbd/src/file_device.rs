//! A [`BlockDevice`] over a regular (sparse) file, for tests, benches and plain file exports.
//! Allocation comes from SEEK_DATA/SEEK_HOLE, trim punches holes, write-zeroes uses
//! FALLOC_FL_ZERO_RANGE; all I/O is positional, so one open file serves every thread.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::BlockDevice;

pub struct FileDevice {
    file: File,
    size: u64,
    read_only: bool,
}

impl FileDevice {
    /// Opens an existing file; its current length is the device size.
    pub fn open(path: &Path, read_only: bool) -> io::Result<FileDevice> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        FileDevice::from_file(file, read_only)
    }

    /// Creates (or truncates) a sparse file of `size` bytes.
    pub fn create(path: &Path, size: u64) -> io::Result<FileDevice> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(size)?;
        FileDevice::from_file(file, false)
    }

    pub fn from_file(file: File, read_only: bool) -> io::Result<FileDevice> {
        let size = file.metadata()?.len();
        Ok(FileDevice {
            file,
            size,
            read_only,
        })
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        // SAFETY: plain syscall on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, len) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn check_range(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::ErrorKind::InvalidInput.into()),
        }
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(io::ErrorKind::PermissionDenied.into())
        } else {
            Ok(())
        }
    }
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.file.read_exact_at(buf, offset)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, data.len() as u64)?;
        self.file.write_all_at(data, offset)
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            // Trim is advisory: a file system without hole punching just keeps the data.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            other => other,
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let zero_range = self.fallocate(
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        );
        match zero_range {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.write_zero_bytes(offset, len)
            }
            other => other,
        }
    }

    fn allocated(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, u64)>> {
        let end = offset.saturating_add(len).min(self.size);
        rbdm_sparse::data_extents(&self.file, offset, end)
    }
}

impl FileDevice {
    fn write_zero_bytes(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("rbdm-nbd-fd-{}-{tag}", std::process::id()))
    }

    #[test]
    fn sparse_map_follows_writes_and_trims() {
        let path = temp_path("map");
        let dev = FileDevice::create(&path, 8 << 20).expect("create");
        assert_eq!(dev.allocated(0, 8 << 20).expect("map"), vec![]);
        dev.write(1 << 20, &[7u8; 65536]).expect("write");
        dev.write(4 << 20, &[9u8; 1 << 20]).expect("write");
        let map = dev.allocated(0, 8 << 20).expect("map");
        assert_eq!(map, vec![(1 << 20, 65536), (4 << 20, 1 << 20)]);
        // Clipped to the query.
        assert_eq!(
            dev.allocated((4 << 20) + 4096, 8192).expect("map"),
            vec![((4 << 20) + 4096, 8192)]
        );
        dev.trim(4 << 20, 1 << 20).expect("trim");
        assert_eq!(
            dev.allocated(0, 8 << 20).expect("map"),
            vec![(1 << 20, 65536)]
        );
        dev.write_zeroes(1 << 20, 4096).expect("zeroes");
        let mut buf = vec![1u8; 8192];
        dev.read(1 << 20, &mut buf).expect("read");
        assert!(buf[..4096].iter().all(|&b| b == 0));
        assert!(buf[4096..].iter().all(|&b| b == 7));
        assert!(dev.read(8 << 20, &mut buf).is_err(), "beyond the end");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn read_only_refuses_writes() {
        let path = temp_path("ro");
        FileDevice::create(&path, 1 << 20).expect("create");
        let dev = FileDevice::open(&path, true).expect("open");
        let err = dev.write(0, &[1]).expect_err("read-only");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        let _ = std::fs::remove_file(&path);
    }
}
