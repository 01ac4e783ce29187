//! Sparseness both ways: 4 KiB blocks of zeros are neither written to an image nor to a
//! file, and a file's holes (SEEK_DATA/SEEK_HOLE) are not read.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

use rbdm_image::{Image, Layout};

/// Zero detection granularity, as rbd's default sparse size.
pub const SPARSE: u64 = 4096;

pub fn is_zero(buf: &[u8]) -> bool {
    buf.iter().all(|&b| b == 0)
}

/// Bytes moved at a time: one object, at least 4 KiB and at most 32 MiB.
pub fn chunk_size(layout: &Layout) -> u64 {
    layout.object_size.clamp(SPARSE, 32 << 20)
}

/// Writes `data` at `off`, skipping 4 KiB blocks that are all zero; with `zero_fill` those
/// blocks are zeroed in the image instead (a later diff over older data).
pub fn write_image_sparse(
    image: &Image,
    off: u64,
    data: &[u8],
    zero_fill: bool,
) -> rbdm_image::Result<()> {
    let mut i = 0usize;
    while i < data.len() {
        // Blocks follow absolute 4 KiB boundaries so runs line up with objects.
        let block_end = (((off + i as u64) / SPARSE + 1) * SPARSE - off) as usize;
        let end = block_end.min(data.len());
        let zero = is_zero(&data[i..end]);
        let mut j = end;
        while j < data.len() {
            let next = (j + SPARSE as usize).min(data.len());
            if is_zero(&data[j..next]) != zero {
                break;
            }
            j = next;
        }
        if !zero {
            image.write(off + i as u64, &data[i..j])?;
        } else if zero_fill {
            image.write_zeroes(off + i as u64, (j - i) as u64)?;
        }
        i = j;
    }
    Ok(())
}

/// Writes `data` at `off` of `file`, leaving 4 KiB blocks of zeros as holes.
pub fn write_file_sparse(file: &File, off: u64, data: &[u8]) -> std::io::Result<()> {
    // Runs of non-zero blocks go out as one write: a write per 4 KiB block cost 2-4x the
    // time of `qemu-img convert` into tmpfs.
    let mut run: Option<usize> = None;
    for (i, block) in data.chunks(SPARSE as usize).enumerate() {
        match (is_zero(block), run) {
            (false, None) => run = Some(i * SPARSE as usize),
            (true, Some(start)) => {
                file.write_all_at(&data[start..i * SPARSE as usize], off + start as u64)?;
                run = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run {
        file.write_all_at(&data[start..], off + start as u64)?;
    }
    Ok(())
}

/// `n` zero bytes to a stream.
pub fn write_zeros(out: &mut dyn Write, mut n: u64) -> std::io::Result<()> {
    let zeros = [0u8; 64 << 10];
    while n > 0 {
        let k = n.min(zeros.len() as u64) as usize;
        out.write_all(&zeros[..k])?;
        n -= k as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_file_writes_keep_bytes_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = File::create(&path).unwrap();
        let mut data = vec![0u8; 64 << 10];
        data[100..5000].fill(1); // blocks 0-1
        data[16 << 10..(16 << 10) + 1].fill(2); // block 4
        data[(60 << 10) + 7..].fill(3); // last block
        write_file_sparse(&file, 8192, &data).unwrap();
        file.set_len(8192 + data.len() as u64).unwrap();
        let got = std::fs::read(&path).unwrap();
        assert!(got[..8192].iter().all(|&b| b == 0));
        assert!(got[8192..] == data[..]);
    }
}
