//! A sparse model of an image's expected contents (4 KiB block → fill byte), random
//! block writes for a client to make, and the comparison of an exported file with the
//! model that reads only the file's data segments, so time and memory follow allocated
//! data, not the virtual size (a 1025 MiB image compares in well under a second).
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::Rng;

pub const MIB: u64 = 1 << 20;
/// Every write in these scenarios covers whole blocks of this size.
pub const BLOCK: u64 = 4096;
/// How much of an exported file is compared at a time.
pub const CHUNK: u64 = 4 * MIB;

/// Expected image contents: the fill byte of every written block; the rest reads as zeros.
#[derive(Clone)]
pub struct Model {
    pub size: u64,
    pub blocks: BTreeMap<u64, u8>,
}

/// `(offset, length, byte)`, block-aligned.
pub type Write = (u64, u64, u8);

impl Model {
    pub fn empty(size: u64) -> Self {
        Model {
            size,
            blocks: BTreeMap::new(),
        }
    }

    pub fn with(&self, writes: &[Write]) -> Self {
        let mut next = self.clone();
        for &(off, len, byte) in writes {
            assert!(off % BLOCK == 0 && len % BLOCK == 0 && off + len <= self.size);
            for b in off / BLOCK..(off + len) / BLOCK {
                next.blocks.insert(b, byte);
            }
        }
        next
    }

    /// The expected bytes of `[off, off + buf.len())`.
    pub fn fill(&self, off: u64, buf: &mut [u8]) {
        buf.fill(0);
        let end = off + buf.len() as u64;
        for (&b, &byte) in self.blocks.range(off / BLOCK..end.div_ceil(BLOCK)) {
            let from = (b * BLOCK).max(off);
            let to = ((b + 1) * BLOCK).min(end);
            buf[(from - off) as usize..(to - off) as usize].fill(byte);
        }
    }

    /// The first offset in `[from, to)` the model says is not zero.
    pub fn nonzero_in(&self, from: u64, to: u64) -> Option<u64> {
        self.blocks
            .range(from / BLOCK..to.div_ceil(BLOCK))
            .find(|(_, &byte)| byte != 0)
            .map(|(&b, _)| (b * BLOCK).max(from))
    }
}

/// Random writes for a client to make.
pub trait RandomWrites {
    fn writes(&mut self, count: usize, len: u64, size: u64, earlier: &[Write]) -> Vec<Write>;
}

impl RandomWrites for Rng {
    /// `count` writes of `len` bytes at distinct random `len`-aligned offsets (distinct, so
    /// their order in flight does not matter), each with its own non-zero byte; one in four
    /// rewrites a block of `earlier` (random picks alone would rarely hit one twice), and
    /// the last one lands in the image's final, partial object.
    fn writes(&mut self, count: usize, len: u64, size: u64, earlier: &[Write]) -> Vec<Write> {
        let slots = size / len;
        let tail_slots = MIB / len;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let slot = if out.len() + 1 == count {
                slots - 1 - self.next_u64() % tail_slots
            } else if !earlier.is_empty() && out.len() % 4 == 1 {
                earlier[(self.next_u64() % earlier.len() as u64) as usize].0 / len
            } else {
                self.next_u64() % slots
            };
            if seen.insert(slot) {
                out.push((slot * len, len, (self.next_u64() % 255 + 1) as u8));
            }
        }
        out
    }
}

/// `Ok` when the file at `path` holds exactly what `want` says. Holes are zeros by
/// definition, so only the file's data segments are read.
pub fn file_matches(path: &Path, want: &Model) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len != want.size {
        return Err(format!("{len} bytes, expected {}", want.size));
    }
    let (mut got, mut exp) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
    let mut pos = 0;
    while pos < len {
        let (data, hole) = next_data(&file, pos, len);
        if let Some(at) = want.nonzero_in(pos, data) {
            return Err(format!("a hole at byte {at}, where data was written"));
        }
        let mut off = data;
        while off < hole {
            let n = (CHUNK - off % CHUNK).min(hole - off) as usize;
            file.read_exact_at(&mut got[..n], off)
                .map_err(|e| format!("read at {off}: {e}"))?;
            want.fill(off, &mut exp[..n]);
            if got[..n] != exp[..n] {
                let i = (0..n).find(|&i| got[i] != exp[i]).unwrap_or(0);
                return Err(format!(
                    "first difference at byte {}: {:#04x}, expected {:#04x}",
                    off + i as u64,
                    got[i],
                    exp[i]
                ));
            }
            off += n as u64;
        }
        pos = hole;
    }
    Ok(())
}

/// The next data segment `[data, hole)` at or after `pos` (`(len, len)` when none is left).
/// Where the file system cannot tell, everything is data.
pub fn next_data(file: &File, pos: u64, len: u64) -> (u64, u64) {
    rbdm_sparse::next_data_or_rest(file, pos, len).map_or((len, len), |(data, n)| (data, data + n))
}
