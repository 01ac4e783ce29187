//! Checksums of object data: a crc32c per 4 KiB block of every data file, as BlueStore keeps,
//! checked on every read, so that a damaged block fails with EIO naming the object and the
//! offset instead of being returned as data.
//!
//! Storage: table `sums`, one row per data file (token) and chunk of `CHUNK_BLOCKS` blocks,
//! each block an entry `(cur, alt)`. A block reads as sound when its crc (over its 4 KiB,
//! zeros past the version's end) is `cur` or `alt`; a chunk without a row is all zero blocks.
//! Rows change only in the transaction that commits the data change they describe, so sums
//! and metadata never disagree. `alt` is what makes torn writes safe:
//!
//! - a new file is written before the commit that names it, its sums in that commit;
//! - a journaled change commits its new sums with its journal row, and a crash before the
//!   file has it is repaired by the replay that every access does first;
//! - an in-place write (a client's block write) commits first, with `alt` holding the crc of
//!   each block as it is on disk, and then writes: a crash in between (or a torn write)
//!   leaves each block old or new, and both verify. The old crc stays as `alt` until the
//!   block's next change, which first finds out what the block really holds.
//!
//! Stores made before checksums (no `checksums` key in `meta`) are read unchecked.

use std::collections::BTreeMap;
use std::fs::File;

use rusqlite::{params, Connection};

use super::{crc, files};
use crate::plan::DataStep;
use crate::{Error, Result};

pub(super) const BLOCK: u64 = 4096;
const CHUNK_BLOCKS: u64 = 128;
const ENTRY: usize = 8;

/// crc32c of a block, zeros past `data`'s end.
pub(super) fn block_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    let pad = BLOCK as usize - data.len().min(BLOCK as usize);
    if pad == 0 {
        return crc;
    }
    crc32c::crc32c_append(crc, &ZEROS[..pad])
}

static ZEROS: [u8; BLOCK as usize] = [0; BLOCK as usize];

fn zero_crc() -> u32 {
    static Z: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *Z.get_or_init(|| crc32c::crc32c(&ZEROS))
}

/// One chunk's entries, `(cur, alt)` per block.
type Chunk = [(u32, u32); CHUNK_BLOCKS as usize];

/// The entries of one data file's blocks, by chunk as they are stored (a missing chunk, or
/// block: a zero block). One allocation per chunk of 128 blocks, not one per block: a 4 MiB
/// read decodes 8 of them.
#[derive(Default, Clone)]
pub(super) struct Sums {
    chunks: BTreeMap<u64, Box<Chunk>>,
}

fn zero_chunk() -> Box<Chunk> {
    let z = zero_crc();
    Box::new([(z, z); CHUNK_BLOCKS as usize])
}

impl Sums {
    /// The file's sums for blocks `[first, last]`.
    pub fn load(conn: &Connection, token: &str, first: u64, last: u64) -> Result<Sums> {
        let mut st = conn.prepare_cached(
            "SELECT chunk, crcs FROM sums WHERE token = ?1 AND chunk BETWEEN ?2 AND ?3",
        )?;
        let (c0, c1) = (first / CHUNK_BLOCKS, last / CHUNK_BLOCKS);
        let mut rows = st.query(params![token, c0 as i64, c1 as i64])?;
        let mut chunks = BTreeMap::new();
        while let Some(row) = rows.next()? {
            let chunk: i64 = row.get(0)?;
            let crcs = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
            if crcs.len() % ENTRY != 0 || crcs.len() > CHUNK_BLOCKS as usize * ENTRY {
                return Err(Error::Corrupt(format!(
                    "checksums of data file {token} chunk {chunk} are malformed"
                )));
            }
            let mut entries = zero_chunk();
            for (slot, e) in entries.iter_mut().zip(crcs.chunks_exact(ENTRY)) {
                let cur = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
                let alt = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
                *slot = (cur, alt);
            }
            chunks.insert(chunk as u64, entries);
        }
        Ok(Sums { chunks })
    }

    /// Every block of the file.
    pub fn load_all(conn: &Connection, token: &str) -> Result<Sums> {
        Self::load(conn, token, 0, i64::MAX as u64)
    }

    fn entry(&self, block: u64) -> (u32, u32) {
        match self.chunks.get(&(block / CHUNK_BLOCKS)) {
            Some(c) => c[(block % CHUNK_BLOCKS) as usize],
            None => (zero_crc(), zero_crc()),
        }
    }

    fn set(&mut self, block: u64, entry: (u32, u32)) {
        let chunk = self
            .chunks
            .entry(block / CHUNK_BLOCKS)
            .or_insert_with(zero_chunk);
        chunk[(block % CHUNK_BLOCKS) as usize] = entry;
    }

    /// Makes a block a zero block again; whether it was not one.
    fn clear(&mut self, block: u64) -> bool {
        let z = (zero_crc(), zero_crc());
        match self.chunks.get_mut(&(block / CHUNK_BLOCKS)) {
            Some(c) => std::mem::replace(&mut c[(block % CHUNK_BLOCKS) as usize], z) != z,
            None => false,
        }
    }

    /// Blocks from `from` on whose entry is not a zero block's.
    fn set_blocks_from(&self, from: u64) -> Vec<u64> {
        let z = (zero_crc(), zero_crc());
        let mut out = Vec::new();
        for (&chunk, entries) in self.chunks.range(from / CHUNK_BLOCKS..) {
            for (i, e) in entries.iter().enumerate() {
                let b = chunk * CHUNK_BLOCKS + i as u64;
                if b >= from && *e != z {
                    out.push(b);
                }
            }
        }
        out
    }

    /// Whether a block with this crc is sound.
    pub fn accepts(&self, block: u64, crc: u32) -> bool {
        let (cur, alt) = self.entry(block);
        crc == cur || crc == alt
    }

    /// The first block from `first` on whose crc (`crcs`, one a block) is not accepted: the
    /// same as `accepts` block by block, with one map lookup a chunk instead of a block.
    pub fn first_rejected(&self, first: u64, crcs: &[u32]) -> Option<u64> {
        let z = zero_crc();
        let mut b = first;
        let mut rest = crcs;
        while !rest.is_empty() {
            let in_chunk = (CHUNK_BLOCKS - b % CHUNK_BLOCKS).min(rest.len() as u64) as usize;
            let (now, later) = rest.split_at(in_chunk);
            let at = (b % CHUNK_BLOCKS) as usize;
            let bad = match self.chunks.get(&(b / CHUNK_BLOCKS)) {
                Some(c) => now
                    .iter()
                    .zip(c.iter().skip(at))
                    .position(|(crc, (cur, alt))| crc != cur && crc != alt),
                None => now.iter().position(|crc| *crc != z),
            };
            if let Some(i) = bad {
                return Some(b + i as u64);
            }
            b += in_chunk as u64;
            rest = later;
        }
        None
    }

    /// Replaces the rows of `token` for the chunks `changed` names, dropping chunks past
    /// `size` (all of the file's rows when `size` is 0).
    pub fn save(&self, conn: &Connection, token: &str, changed: &[u64], size: u64) -> Result<()> {
        let end_chunk = size.div_ceil(BLOCK).div_ceil(CHUNK_BLOCKS);
        conn.prepare_cached("DELETE FROM sums WHERE token = ?1 AND chunk >= ?2")?
            .execute(params![token, end_chunk as i64])?;
        let z = zero_crc();
        for &chunk in changed.iter().filter(|c| **c < end_chunk) {
            let entries = self.chunks.get(&chunk);
            let all_zero = entries.is_none_or(|c| c.iter().all(|e| *e == (z, z)));
            if all_zero {
                conn.prepare_cached("DELETE FROM sums WHERE token = ?1 AND chunk = ?2")?
                    .execute(params![token, chunk as i64])?;
                continue;
            }
            let mut blob = Vec::with_capacity(CHUNK_BLOCKS as usize * ENTRY);
            for (cur, alt) in entries.iter().flat_map(|c| c.iter()) {
                blob.extend_from_slice(&cur.to_le_bytes());
                blob.extend_from_slice(&alt.to_le_bytes());
            }
            conn.prepare_cached(
                "INSERT OR REPLACE INTO sums(token, chunk, crcs) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![token, chunk as i64, blob])?;
        }
        Ok(())
    }
}

/// Copies a file's rows to a new token (the new file starts as a copy of the old).
pub(super) fn copy_rows(conn: &Connection, from: &str, to: &str) -> Result<()> {
    conn.prepare_cached("INSERT OR REPLACE INTO sums(token, chunk, crcs) SELECT ?2, chunk, crcs FROM sums WHERE token = ?1")?
        .execute(params![from, to])?;
    Ok(())
}

pub(super) fn drop_rows(conn: &Connection, token: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM sums WHERE token = ?1")?
        .execute([token])?;
    Ok(())
}

/// A damaged block, named for the error.
pub(super) fn damaged(what: &str, token: &str, block: u64) -> Error {
    Error::Corrupt(format!(
        "{what}: checksum mismatch in the 4 KiB block at offset {} (data file {token})",
        block * BLOCK
    ))
}

/// Checks the bytes a read returned: `data` is `[offset, offset+len)` of a version of `size`
/// bytes. Whole blocks are checked straight from `data`, several at once (see `crc`); the
/// blocks at either end that the read covers only in part are read whole from `f`.
pub(super) fn verify_read(
    sums: &Sums,
    f: &File,
    size: u64,
    offset: u64,
    data: &[u8],
    what: &str,
    token: &str,
) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let end = offset + data.len() as u64;
    let (full_from, full_to) = (offset.div_ceil(BLOCK), end / BLOCK);
    if full_from < full_to {
        let start = (full_from * BLOCK - offset) as usize;
        let whole = &data[start..start + ((full_to - full_from) * BLOCK) as usize];
        let mut crcs = Vec::with_capacity((full_to - full_from) as usize);
        crc::block_crcs(whole, &mut crcs);
        if let Some(b) = sums.first_rejected(full_from, &crcs) {
            return Err(damaged(what, token, b));
        }
    }
    let mut edges = [offset / BLOCK, end / BLOCK];
    let mut edges = &mut edges[..];
    if edges[0] == edges[1] {
        edges = &mut edges[..1];
    }
    for &mut b in edges {
        let (bs, be) = (b * BLOCK, ((b + 1) * BLOCK).min(size));
        if (full_from..full_to).contains(&b) || bs >= end {
            continue;
        }
        let crc = if bs >= offset && be <= end {
            block_crc(&data[(bs - offset) as usize..(be - offset) as usize])
        } else {
            // Zeroed only here: a read of whole blocks (the usual) needs no buffer.
            let mut buf = [0u8; BLOCK as usize];
            files::read_into(Some(f), bs, &mut buf, size)
                .map_err(super::io_err(format!("read {what}")))?;
            block_crc(&buf[..(be - bs) as usize])
        };
        if !sums.accepts(b, crc) {
            return Err(damaged(what, token, b));
        }
    }
    Ok(())
}

/// What a block's content becomes through a plan's steps.
#[derive(Default)]
struct Fate {
    /// Set by the last step that covered the whole block: `Some(i)` a write (step `i`),
    /// `None` zeros; unset: the block starts from its old bytes.
    base: Option<Option<usize>>,
    /// Later steps that touch part of it, in order.
    partial: Vec<usize>,
}

/// The sums of a file after `steps` (ending at `size`), given its sums before and a way to
/// read its old blocks. `in_place`: the file is rewritten in place after the commit, so each
/// changed block keeps the crc of its bytes on disk as `alt`. Returns the chunks changed.
#[allow(clippy::too_many_arguments)]
pub(super) fn apply_steps(
    sums: &mut Sums,
    steps: &[DataStep],
    old_size: u64,
    size: u64,
    old: Option<&File>,
    in_place: bool,
    what: &str,
    token: &str,
) -> Result<Vec<u64>> {
    let mut fates: BTreeMap<u64, Fate> = BTreeMap::new();
    let mut len = old_size;
    // Blocks from here on lost their old bytes to a truncate (zeros unless written again).
    let mut cut = old_size.div_ceil(BLOCK);
    let all: Vec<DataStep> = steps
        .iter()
        .copied()
        .chain([DataStep::Truncate(size)])
        .collect();
    for (i, step) in all.iter().enumerate() {
        let (from, to, full) = match *step {
            DataStep::Write { offset, data } => {
                len = len.max(offset + data.len() as u64);
                (offset, offset + data.len() as u64, Some(Some(i)))
            }
            DataStep::Zero { offset, len: n } => (offset, (offset + n).min(len), Some(None)),
            DataStep::Truncate(n) => {
                if n < len {
                    let first_gone = n.div_ceil(BLOCK);
                    for (_, fate) in fates.range_mut(first_gone..) {
                        *fate = Fate {
                            base: Some(None),
                            partial: Vec::new(),
                        };
                    }
                    cut = cut.min(first_gone);
                    if n % BLOCK != 0 {
                        fates.entry(n / BLOCK).or_default().partial.push(i);
                    }
                }
                len = n;
                continue;
            }
        };
        for b in from / BLOCK..to.div_ceil(BLOCK) {
            let fate = fates.entry(b).or_insert_with(|| Fate {
                base: (b >= cut).then_some(None),
                partial: Vec::new(),
            });
            if from <= b * BLOCK && to >= (b + 1) * BLOCK {
                *fate = Fate {
                    base: full,
                    partial: Vec::new(),
                };
            } else {
                fate.partial.push(i);
            }
        }
    }
    let end_block = size.div_ceil(BLOCK);
    let mut changed: Vec<u64> = fates.keys().map(|b| b / CHUNK_BLOCKS).collect();
    // Old blocks a truncate cut (and no step touched) are zeros now: drop their entries.
    for b in sums.set_blocks_from(cut) {
        if !fates.contains_key(&b) && sums.clear(b) {
            changed.push(b / CHUNK_BLOCKS);
        }
    }
    for (&b, fate) in &fates {
        if b >= end_block {
            sums.clear(b);
            continue;
        }
        let on_disk = |sums: &Sums| -> Result<u32> {
            let (cur, alt) = sums.entry(b);
            match old {
                Some(f) if cur != alt => read_old_crc(sums, f, old_size, b, what, token),
                _ => Ok(cur),
            }
        };
        let crc = block_after(b, fate, &all, sums, old, old_size, size, what, token)?;
        let alt = if in_place { on_disk(sums)? } else { crc };
        sums.set(b, (crc, alt));
    }
    changed.sort_unstable();
    changed.dedup();
    Ok(changed)
}

/// The crc of an old block as it is on disk, checked against its sums.
fn read_old_crc(sums: &Sums, f: &File, size: u64, b: u64, what: &str, token: &str) -> Result<u32> {
    let mut buf = [0u8; BLOCK as usize];
    files::read_into(Some(f), b * BLOCK, &mut buf, size)
        .map_err(super::io_err(format!("read {what}")))?;
    let crc = block_crc(&buf);
    if !sums.accepts(b, crc) {
        return Err(damaged(what, token, b));
    }
    Ok(crc)
}

/// The crc of block `b` after the steps.
#[allow(clippy::too_many_arguments)]
fn block_after(
    b: u64,
    fate: &Fate,
    steps: &[DataStep],
    sums: &Sums,
    old: Option<&File>,
    old_size: u64,
    size: u64,
    what: &str,
    token: &str,
) -> Result<u32> {
    let (bs, be) = (b * BLOCK, (b + 1) * BLOCK);
    let slice_of = |i: usize| match steps[i] {
        DataStep::Write { offset, data } => &data[(bs - offset) as usize..(be - offset) as usize],
        _ => &[][..],
    };
    if fate.partial.is_empty() {
        return Ok(match fate.base {
            Some(Some(i)) => block_crc(&slice_of(i)[..(size.min(be) - bs) as usize]),
            Some(None) => zero_crc(),
            None => sums.entry(b).0,
        });
    }
    let mut buf = [0u8; BLOCK as usize];
    match fate.base {
        Some(Some(i)) => buf.copy_from_slice(slice_of(i)),
        Some(None) => {}
        None => {
            if let Some(f) = old {
                files::read_into(Some(f), bs, &mut buf, old_size)
                    .map_err(super::io_err(format!("read {what}")))?;
                if !sums.accepts(b, block_crc(&buf)) {
                    return Err(damaged(what, token, b));
                }
            }
        }
    }
    for &i in &fate.partial {
        match steps[i] {
            DataStep::Write { offset, data } => {
                let (from, to) = (offset.max(bs), (offset + data.len() as u64).min(be));
                buf[(from - bs) as usize..(to - bs) as usize]
                    .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
            }
            DataStep::Zero { offset, len } => {
                let (from, to) = (offset.max(bs), (offset + len).min(be));
                if from < to {
                    buf[(from - bs) as usize..(to - bs) as usize].fill(0);
                }
            }
            DataStep::Truncate(n) => {
                if n < be {
                    buf[(n.max(bs) - bs) as usize..].fill(0);
                }
            }
        }
    }
    Ok(block_crc(&buf))
}

/// How a write op changes the sums, worked out before its commit and saved in it.
pub(super) struct SumsChange {
    /// The file whose rows change, its new sums, the chunks changed, its size after.
    target: Option<(String, Sums, Vec<u64>, u64)>,
    /// The new file starts as a copy of this one's rows.
    copy_from: Option<String>,
    /// This file is no longer referenced once the op commits.
    dropped: Option<String>,
}

impl SumsChange {
    /// Writes the change (in the op's transaction).
    pub fn save(&self, conn: &Connection) -> Result<()> {
        if let Some((token, sums, changed, size)) = &self.target {
            if let Some(from) = &self.copy_from {
                copy_rows(conn, from, token)?;
            }
            sums.save(conn, token, changed, *size)?;
        }
        if let Some(t) = &self.dropped {
            drop_rows(conn, t)?;
        }
        Ok(())
    }
}

/// What the op does to the data files (see `write::DataPlan`), for `sums_change`.
pub(super) enum Target<'a> {
    /// The old file (if any) is dropped, no new one.
    NoFile,
    Keep,
    /// A new file `token`, a copy of `base` (or empty) changed by the steps.
    NewFile {
        token: &'a str,
        base: Option<&'a str>,
    },
    /// The old file changed through the journal.
    Journal,
    /// The old file rewritten in place after the commit.
    InPlace,
}

impl super::DirStore {
    /// The sums change of an op on `loc` (caller holds its stripe lock exclusive).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn sums_change(
        &self,
        loc: &crate::Locator,
        steps: &[DataStep],
        old_token: Option<&str>,
        old_size: u64,
        size: u64,
        target: Target,
        cloning: bool,
    ) -> Result<Option<SumsChange>> {
        if !self.checksums {
            return Ok(None);
        }
        let what = loc.to_string();
        // A clone keeps the old file; otherwise a new file (or none) replaces it.
        let replaced = matches!(target, Target::NoFile | Target::NewFile { .. }) && !cloning;
        let dropped = old_token.filter(|_| replaced).map(str::to_string);
        let (token, base, in_place) = match (target, old_token) {
            (Target::NoFile | Target::Keep, _) => {
                return Ok(Some(SumsChange {
                    target: None,
                    copy_from: None,
                    dropped,
                }))
            }
            (Target::NewFile { token, base }, _) => (token, base, false),
            (Target::Journal, Some(t)) => (t, Some(t), false),
            (Target::InPlace, Some(t)) => (t, Some(t), true),
            (_, None) => return Err(Error::Corrupt(format!("{what}: no data file to change"))),
        };
        let (mut sums, old_file, base_size) = match base {
            Some(b) => {
                let sums = match (in_place, steps) {
                    (true, [DataStep::Write { offset, data }]) if !data.is_empty() => {
                        let last = (offset + data.len() as u64 - 1) / BLOCK;
                        Sums::load(&self.db(), b, offset / BLOCK, last)?
                    }
                    _ => Sums::load_all(&self.db(), b)?,
                };
                (sums, Some(self.open_data(b)?), old_size)
            }
            None => (Sums::default(), None, 0),
        };
        let changed = apply_steps(
            &mut sums,
            steps,
            base_size,
            size,
            old_file.as_ref(),
            in_place,
            &what,
            base.unwrap_or(token),
        )?;
        let copy_from = base.filter(|b| *b != token).map(str::to_string);
        Ok(Some(SumsChange {
            target: Some((token.to_string(), sums, changed, size)),
            copy_from,
            dropped,
        }))
    }

    /// Fills the start of `buf` from `offset` of the version `stored` of `loc` (clipped to
    /// its size, as `files::read_into`) and checks it. A piece at a time: each piece's crc
    /// runs while its bytes are still in the CPU's cache, which a whole 4 MiB read's are not.
    pub(super) fn read_checked(
        &self,
        loc: &crate::Locator,
        stored: &super::rows::Stored,
        f: Option<&File>,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        const PIECE: u64 = 256 << 10;
        let read = |at: u64, piece: &mut [u8]| {
            files::read_into(f, at, piece, stored.size)
                .map_err(super::io_err(format!("read {loc}")))
        };
        let n = offset
            .saturating_add(buf.len() as u64)
            .min(stored.size)
            .saturating_sub(offset);
        let (true, Some(token), Some(file), true) =
            (self.checksums, stored.token.as_deref(), f, n > 0)
        else {
            return read(offset, buf);
        };
        let sums = Sums::load(&self.db(), token, offset / BLOCK, (offset + n - 1) / BLOCK)?;
        let what = loc.to_string();
        let mut done = 0;
        while done < n {
            let at = offset + done;
            let len = ((at / PIECE + 1) * PIECE - at).min(n - done);
            let piece = &mut buf[done as usize..(done + len) as usize];
            read(at, piece)?;
            verify_read(&sums, file, stored.size, at, piece, &what, token)?;
            done += len;
        }
        Ok(n as usize)
    }

    /// Checks the pieces of one read (sorted by offset, as a sparse read returns them),
    /// against the sums of the range they span, loaded once.
    pub(super) fn verify_pieces<D: AsRef<[u8]>>(
        &self,
        loc: &crate::Locator,
        stored: &super::rows::Stored,
        f: Option<&File>,
        pieces: &[(u64, D)],
    ) -> Result<()> {
        let pieces: Vec<(u64, &[u8])> = pieces
            .iter()
            .map(|(o, d)| (*o, d.as_ref()))
            .filter(|(_, d)| !d.is_empty())
            .collect();
        let (true, Some(token), Some(f), Some(first), Some(last)) = (
            self.checksums,
            stored.token.as_deref(),
            f,
            pieces.first(),
            pieces.last(),
        ) else {
            return Ok(());
        };
        let end = last.0 + last.1.len() as u64 - 1;
        let sums = Sums::load(&self.db(), token, first.0 / BLOCK, end / BLOCK)?;
        let what = loc.to_string();
        for (offset, data) in pieces {
            verify_read(&sums, f, stored.size, offset, data, &what, token)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_rejected_agrees_with_accepts_block_by_block() {
        let mut sums = Sums::default();
        // Chunk 0 has a row, chunk 1 none (zero blocks), chunk 2 a row with an alt.
        for b in 0..CHUNK_BLOCKS {
            sums.set(b, (b as u32, b as u32));
        }
        sums.set(2 * CHUNK_BLOCKS + 5, (7, 8));
        let first = CHUNK_BLOCKS - 3;
        let n = 2 * CHUNK_BLOCKS as usize + 10;
        let good: Vec<u32> = (first..first + n as u64)
            .map(|b| match sums.entry(b) {
                (cur, alt) if b % 2 == 0 => cur.max(alt),
                (cur, _) => cur,
            })
            .collect();
        assert_eq!(sums.first_rejected(first, &good), None);
        for bad_at in [0, 2, 3, 100, n - 10 + 4, n - 1] {
            let mut crcs = good.clone();
            crcs[bad_at] ^= 1;
            let want = (first..).zip(&crcs).find(|(b, c)| !sums.accepts(*b, **c));
            assert_eq!(want.map(|w| w.0), Some(first + bad_at as u64));
            assert_eq!(
                sums.first_rejected(first, &crcs),
                want.map(|w| w.0),
                "{bad_at}"
            );
        }
    }
}
