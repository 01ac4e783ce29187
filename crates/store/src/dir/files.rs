//! Sparse data files: reading and copying only allocated extents, punching holes, applying
//! planned data steps, and the journal's byte encoding of those steps.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use crate::plan::DataStep;
use crate::{Error, Result};

/// Deallocates a range, keeping the size. Falls back to writing zeros only on a file system
/// that cannot punch holes.
pub fn punch_hole(f: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: fallocate on a descriptor we own; no memory is passed.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            l,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(e);
    }
    let zeros = vec![0u8; len.min(1 << 20) as usize];
    let mut at = offset;
    while at < offset + len {
        let n = (offset + len - at).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Copies the allocated extents of `src` (of `size` bytes) into the empty `dst` and sets
/// its size: holes stay holes.
pub fn copy_sparse(src: &File, dst: &File, size: u64) -> io::Result<()> {
    let mut buf = Vec::new();
    for (off, len) in rbdm_sparse::data_extents(src, 0, size)? {
        if copy_range(src, dst, off, len)? {
            continue;
        }
        buf.resize(len.min(1 << 20) as usize, 0);
        let mut at = off;
        while at < off + len {
            let n = (off + len - at).min(buf.len() as u64) as usize;
            src.read_exact_at(&mut buf[..n], at)?;
            dst.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
    }
    dst.set_len(size)
}

/// In-kernel copy (may share blocks on file systems that can). `false` if unsupported here.
fn copy_range(src: &File, dst: &File, off: u64, len: u64) -> io::Result<bool> {
    let (mut from, mut to) = (off as libc::loff_t, off as libc::loff_t);
    let mut left = len as usize;
    while left > 0 {
        // SAFETY: both descriptors are ours; the offsets are valid pointers to locals.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut from,
                dst.as_raw_fd(),
                &mut to,
                left,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOSYS | libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP)
                    if left == len as usize =>
                {
                    Ok(false)
                }
                _ => Err(e),
            };
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "copy_file_range hit the end of the source",
            ));
        }
        left -= n as usize;
    }
    Ok(true)
}

/// Applies planned steps and sets the final size. Re-applying the same steps to a file that
/// had some or all of them applied gives the same result (the journal's replay needs that):
/// every byte a step touches ends as the last step touching it leaves it, whatever it held.
pub fn apply_steps(f: &File, steps: &[DataStep], size: u64) -> io::Result<()> {
    for step in steps {
        match *step {
            DataStep::Write { offset, data } => f.write_all_at(data, offset)?,
            DataStep::Zero { offset, len } => punch_hole(f, offset, len)?,
            DataStep::Truncate(n) => f.set_len(n)?,
        }
    }
    f.set_len(size)
}

/// Asks the kernel to start writing the file's dirty pages back, without waiting. Only a
/// hint that makes a later fsync cheaper: failure (an old kernel, a file system without it)
/// changes nothing, since the fsync still does all the work.
pub fn start_writeback(f: &File) {
    // SAFETY: sync_file_range on a descriptor we own; no memory is passed.
    let _ = unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Reads `[offset, offset+len)` clipped to `size`; bytes past the file's end read as zeros.
pub fn read_at(f: Option<&File>, offset: u64, len: u64, size: u64) -> io::Result<Vec<u8>> {
    let end = offset.saturating_add(len).min(size);
    if offset >= end {
        return Ok(Vec::new());
    }
    let mut out = vec![0u8; (end - offset) as usize];
    read_into(f, offset, &mut out, size)?;
    Ok(out)
}

/// Fills the start of `buf` with the bytes at `offset` clipped to `size` and returns how many
/// that is; bytes past the file's end (or of a version with no file) read as zeros.
pub fn read_into(f: Option<&File>, offset: u64, buf: &mut [u8], size: u64) -> io::Result<usize> {
    let end = offset.saturating_add(buf.len() as u64).min(size);
    if offset >= end {
        return Ok(0);
    }
    let want = &mut buf[..(end - offset) as usize];
    let mut done = 0;
    if let Some(f) = f {
        while done < want.len() {
            match f.read_at(&mut want[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
    want[done..].fill(0);
    Ok(want.len())
}

/// A step as stored in the journal, owning its bytes.
pub enum OwnedStep {
    Write(u64, Vec<u8>),
    Zero(u64, u64),
    Truncate(u64),
}

impl OwnedStep {
    pub fn as_step(&self) -> DataStep<'_> {
        match self {
            OwnedStep::Write(offset, data) => DataStep::Write {
                offset: *offset,
                data,
            },
            OwnedStep::Zero(offset, len) => DataStep::Zero {
                offset: *offset,
                len: *len,
            },
            OwnedStep::Truncate(n) => DataStep::Truncate(*n),
        }
    }
}

/// `tag u8, a u64 LE, b u64 LE, [b bytes for a write]` per step.
pub fn encode_steps(steps: &[DataStep]) -> Vec<u8> {
    let mut out = Vec::new();
    for step in steps {
        let (tag, a, b, data): (u8, u64, u64, &[u8]) = match *step {
            DataStep::Write { offset, data } => (0, offset, data.len() as u64, data),
            DataStep::Zero { offset, len } => (1, offset, len, &[]),
            DataStep::Truncate(n) => (2, n, 0, &[]),
        };
        out.push(tag);
        out.extend_from_slice(&a.to_le_bytes());
        out.extend_from_slice(&b.to_le_bytes());
        out.extend_from_slice(data);
    }
    out
}

pub fn decode_steps(mut bytes: &[u8]) -> Result<Vec<OwnedStep>> {
    let corrupt = || Error::Corrupt("journal entry is malformed".into());
    let mut out = Vec::new();
    while let Some((&tag, rest)) = bytes.split_first() {
        if rest.len() < 16 {
            return Err(corrupt());
        }
        let a = u64::from_le_bytes(rest[..8].try_into().map_err(|_| corrupt())?);
        let b = u64::from_le_bytes(rest[8..16].try_into().map_err(|_| corrupt())?);
        bytes = &rest[16..];
        out.push(match tag {
            0 => {
                let n = usize::try_from(b)
                    .ok()
                    .filter(|n| *n <= bytes.len())
                    .ok_or_else(corrupt)?;
                let (data, rest) = bytes.split_at(n);
                bytes = rest;
                OwnedStep::Write(a, data.to_vec())
            }
            1 => OwnedStep::Zero(a, b),
            2 => OwnedStep::Truncate(a),
            _ => return Err(corrupt()),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new, empty read-write file in `dir`.
    fn scratch_file(dir: &tempfile::TempDir, name: &str) -> File {
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join(name))
            .expect("open")
    }

    #[test]
    fn steps_round_trip_and_reject_garbage() {
        let steps = [
            DataStep::Write {
                offset: 5,
                data: b"abc",
            },
            DataStep::Zero { offset: 1, len: 2 },
            DataStep::Truncate(9),
        ];
        let decoded = decode_steps(&encode_steps(&steps)).expect("decode");
        assert_eq!(
            decoded.iter().map(OwnedStep::as_step).collect::<Vec<_>>(),
            steps
        );
        let mut bad = encode_steps(&steps);
        bad.truncate(bad.len() - 1);
        assert!(decode_steps(&bad).is_err());
        assert!(decode_steps(&[7; 17]).is_err());
    }

    #[test]
    fn holes_stay_holes_through_copy_and_punch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = scratch_file(&dir, "a");
        src.write_all_at(&[1; 4096], 0).expect("write");
        src.write_all_at(&[2; 4096], 1 << 20).expect("write");
        src.set_len(2 << 20).expect("len");
        let ext = rbdm_sparse::data_extents(&src, 0, 2 << 20).expect("extents");
        assert_eq!(ext, vec![(0, 4096), (1 << 20, 4096)]);
        let dst = scratch_file(&dir, "b");
        copy_sparse(&src, &dst, 2 << 20).expect("copy");
        assert_eq!(
            rbdm_sparse::data_extents(&dst, 0, 2 << 20).expect("extents"),
            ext
        );
        assert_eq!(
            read_at(Some(&dst), (1 << 20) - 2, 4, 2 << 20).expect("read"),
            vec![0, 0, 2, 2]
        );
        punch_hole(&dst, 0, 4096).expect("punch");
        assert_eq!(
            rbdm_sparse::data_extents(&dst, 0, 2 << 20).expect("extents"),
            vec![(1 << 20, 4096)]
        );
        assert_eq!(dst.metadata().expect("meta").len(), 2 << 20);
    }

    #[test]
    fn read_into_clips_and_zero_fills_past_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = scratch_file(&dir, "a");
        f.write_all_at(&[7; 10], 0).expect("write");
        // The version is 16 bytes but its file only 10: the last 6 read as zeros.
        let mut buf = [0xee; 20];
        assert_eq!(read_into(Some(&f), 4, &mut buf, 16).expect("read"), 12);
        assert_eq!(&buf[..12], &[7, 7, 7, 7, 7, 7, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            &buf[12..],
            &[0xee; 8],
            "bytes past the version are left alone"
        );
        let mut buf = [0xee; 4];
        assert_eq!(read_into(None, 0, &mut buf, 3).expect("no file"), 3);
        assert_eq!(buf, [0, 0, 0, 0xee]);
        assert_eq!(read_into(Some(&f), 16, &mut buf, 16).expect("at end"), 0);
        assert_eq!(
            read_into(Some(&f), u64::MAX - 1, &mut buf, 16).expect("far"),
            0
        );
    }

    #[test]
    fn replaying_steps_is_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = scratch_file(&dir, "a");
        f.write_all_at(&[9; 100], 0).expect("write");
        let steps = [
            DataStep::Truncate(10),
            DataStep::Write {
                offset: 5,
                data: &[1; 20],
            },
            DataStep::Zero { offset: 0, len: 3 },
        ];
        // Half applied (a torn first pass), then replayed twice.
        f.set_len(10).expect("len");
        apply_steps(&f, &steps, 25).expect("apply");
        let once = read_at(Some(&f), 0, 100, 25).expect("read");
        apply_steps(&f, &steps, 25).expect("apply");
        assert_eq!(read_at(Some(&f), 0, 100, 25).expect("read"), once);
        assert_eq!(once, [&[0u8; 3][..], &[9; 2], &[1; 20]].concat());
    }
}
