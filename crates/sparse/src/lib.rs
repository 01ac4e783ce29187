//! Data extents of a local file, from `lseek(SEEK_DATA/SEEK_HOLE)`: the one walker the store's
//! data files, the NBD file device, the file stream, export/import and the tests use.
//!
//! What it is for: finding where a file holds data, one extent at a time (memory does not
//! grow with the file), with positional I/O left to the caller (the shared offset `lseek`
//! moves is never used for reads). What it is not: a reader, or a policy for file systems
//! without SEEK_DATA — `next_data` returns their error and `next_data_or_rest` counts the
//! rest as data.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;

/// The first data extent `(offset, len)` of `file` at or after `pos` and before `end`;
/// `None` when there is none. A hole reported at the data offset means the file changed
/// under us: the rest up to `end` counts as data, never as a hole (and the walk ends).
pub fn next_data(file: &File, pos: u64, end: u64) -> io::Result<Option<(u64, u64)>> {
    if pos >= end {
        return Ok(None);
    }
    let Some(data) = seek(file, pos, libc::SEEK_DATA)? else {
        return Ok(None);
    };
    if data >= end {
        return Ok(None);
    }
    let hole = seek(file, data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
    let hole = if hole <= data { end } else { hole };
    Ok(Some((data, hole - data)))
}

/// As [`next_data`], for callers that must not skip data: where the file system cannot tell
/// (no SEEK_DATA), everything left, `[pos, end)`, is data.
pub fn next_data_or_rest(file: &File, pos: u64, end: u64) -> Option<(u64, u64)> {
    next_data(file, pos, end).unwrap_or_else(|_| (pos < end).then(|| (pos, end - pos)))
}

/// Every data extent of `file` in `[start, end)`, in order.
pub fn data_extents(file: &File, start: u64, end: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut pos = start;
    while let Some((data, len)) = next_data(file, pos, end)? {
        out.push((data, len));
        pos = data + len;
    }
    Ok(out)
}

/// `None` when there is no data at or after `pos` (ENXIO), or `pos` is past what `lseek` can
/// address.
fn seek(file: &File, pos: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let Ok(off) = libc::off_t::try_from(pos) else {
        return Ok(None);
    };
    // SAFETY: lseek on a descriptor `file` keeps open; no memory is passed, and callers read
    // with positional reads, which do not depend on the offset lseek moves.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENXIO) => Ok(None),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    const BLOCK: u64 = 1 << 20;

    /// A file of `blocks` MiB with data in the listed blocks (1 MiB each, so every file
    /// system's allocation granularity divides them).
    fn file_with(blocks: u64, data: &[u64]) -> (tempfile::NamedTempFile, File) {
        let t = tempfile::NamedTempFile::new().unwrap();
        let f = t.reopen().unwrap();
        f.set_len(blocks * BLOCK).unwrap();
        for &b in data {
            f.write_all_at(&vec![0xa5; BLOCK as usize], b * BLOCK)
                .unwrap();
        }
        (t, f)
    }

    #[test]
    fn holes_and_data_in_the_middle() {
        let (_t, f) = file_with(8, &[1, 2, 5]);
        let e = data_extents(&f, 0, 8 * BLOCK).unwrap();
        assert_eq!(e, vec![(BLOCK, 2 * BLOCK), (5 * BLOCK, BLOCK)]);
    }

    #[test]
    fn a_range_cuts_the_extents() {
        let (_t, f) = file_with(8, &[1, 2, 5]);
        let half = BLOCK / 2;
        let e = data_extents(&f, BLOCK + half, 5 * BLOCK + half).unwrap();
        assert_eq!(e, vec![(BLOCK + half, BLOCK + half), (5 * BLOCK, half)]);
        assert_eq!(data_extents(&f, 3 * BLOCK, 5 * BLOCK).unwrap(), vec![]);
    }

    #[test]
    fn data_at_the_end_and_an_empty_file() {
        let (_t, f) = file_with(4, &[3]);
        assert_eq!(
            data_extents(&f, 0, 4 * BLOCK).unwrap(),
            vec![(3 * BLOCK, BLOCK)]
        );
        assert_eq!(next_data(&f, 4 * BLOCK, 4 * BLOCK).unwrap(), None);
        let (_t, empty) = file_with(0, &[]);
        assert_eq!(data_extents(&empty, 0, 1 << 30).unwrap(), vec![]);
    }

    #[test]
    fn positions_lseek_cannot_address_have_no_data() {
        let (_t, f) = file_with(1, &[0]);
        assert_eq!(next_data(&f, u64::MAX - 1, u64::MAX).unwrap(), None);
    }
}
