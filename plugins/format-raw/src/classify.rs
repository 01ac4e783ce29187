//! Deciding Data / Zero / Unchanged for one point, segment by segment: a segment is a range
//! where both this point and the previous one are uniformly a known hole, possibly data, or
//! (for the previous point) absent. Only segments that can hold data are read.

use rbdm_registry::{push_extent, ExtentState, Result, SnapExtent, Stream};

use crate::{BLOCK, CHUNK};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The stream knows this reads as zeros.
    Hole,
    /// May hold data: read it.
    Data,
    /// No previous point here: this is the first point, or beyond the previous point's size.
    Absent,
}

/// What the current point is compared with over one segment.
enum Prev<'a> {
    Absent,
    Zeros,
    Stream(&'a dyn Stream),
}

/// The previous point's bytes for one block.
enum PrevBytes<'a> {
    Absent,
    Zeros,
    Bytes(&'a [u8]),
}

/// Bytes read while classifying: (from the current point?, offset, bytes), for the caller to
/// keep for the reads that follow.
pub type Keep<'a> = dyn Fn(bool, u64, &[u8]) + 'a;

pub fn classify(
    cur: &dyn Stream,
    prev: Option<&dyn Stream>,
    cur_sides: &[(u64, u64, Side)],
    prev_sides: &[(u64, u64, Side)],
    keep: &Keep,
) -> Result<Vec<SnapExtent>> {
    let mut out = Vec::new();
    let mut bufs = (Vec::new(), Vec::new());
    for (a, b, c, p) in segments(cur_sides, prev_sides) {
        let prev = match (p, prev) {
            (Side::Data, Some(s)) => Prev::Stream(s),
            (Side::Hole, _) => Prev::Zeros,
            _ => Prev::Absent,
        };
        match (c, &prev) {
            (Side::Data, _) => scan(&mut out, &mut bufs, (a, b), Some(cur), &prev, keep)?,
            (_, Prev::Stream(_)) => scan(&mut out, &mut bufs, (a, b), None, &prev, keep)?,
            (_, Prev::Zeros) => push_extent(&mut out, a, b - a, ExtentState::Unchanged),
            (_, Prev::Absent) => push_extent(&mut out, a, b - a, ExtentState::Zero),
        }
    }
    Ok(out)
}

/// The common refinement of two sorted lists that cover the same range.
fn segments(x: &[(u64, u64, Side)], y: &[(u64, u64, Side)]) -> Vec<(u64, u64, Side, Side)> {
    let x: Vec<_> = x.iter().filter(|e| e.1 > e.0).collect();
    let y: Vec<_> = y.iter().filter(|e| e.1 > e.0).collect();
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    let Some(mut pos) = x.first().map(|e| e.0) else {
        return out;
    };
    while i < x.len() && j < y.len() {
        let stop = x[i].1.min(y[j].1);
        if stop > pos {
            out.push((pos, stop, x[i].2, y[j].2));
            pos = stop;
        }
        if x[i].1 <= stop {
            i += 1;
        }
        if y[j].1 <= stop {
            j += 1;
        }
    }
    out
}

/// Reads `[a, b)` in chunks (the current point unless `cur` is `None`, meaning a known hole;
/// the previous one when it is a stream) and classifies each 4 KiB block.
fn scan(
    out: &mut Vec<SnapExtent>,
    bufs: &mut (Vec<u8>, Vec<u8>),
    (a, b): (u64, u64),
    cur: Option<&dyn Stream>,
    prev: &Prev,
    keep: &Keep,
) -> Result<()> {
    let mut pos = a;
    while pos < b {
        let stop = b.min((pos / CHUNK + 1) * CHUNK);
        let n = (stop - pos) as usize;
        let cbuf = match cur {
            Some(s) => Some(fill(&mut bufs.0, s, pos, n)?),
            None => None,
        };
        let pbuf = match prev {
            Prev::Stream(s) => Some(fill(&mut bufs.1, *s, pos, n)?),
            _ => None,
        };
        // Only chunks holding data are read again; all-zero ones never are.
        for (is_cur, b) in [(true, cbuf), (false, pbuf)] {
            if let Some(b) = b.filter(|b| !is_zero(b)) {
                keep(is_cur, pos, b);
            }
        }
        let mut at = pos;
        while at < stop {
            let end = stop.min((at / BLOCK + 1) * BLOCK);
            let r = (at - pos) as usize..(end - pos) as usize;
            let p = match (prev, &pbuf) {
                (_, Some(p)) => PrevBytes::Bytes(&p[r.clone()]),
                (Prev::Zeros, _) => PrevBytes::Zeros,
                _ => PrevBytes::Absent,
            };
            push_extent(
                out,
                at,
                end - at,
                block_state(cbuf.as_ref().map(|c| &c[r]), p),
            );
            at = end;
        }
        pos = stop;
    }
    Ok(())
}

fn fill<'a>(buf: &'a mut Vec<u8>, s: &dyn Stream, offset: u64, n: usize) -> Result<&'a [u8]> {
    if buf.len() < n {
        buf.resize(n, 0);
    }
    s.read_at(offset, &mut buf[..n])?;
    Ok(&buf[..n])
}

/// `cur`: this point's bytes, `None` for a known hole.
fn block_state(cur: Option<&[u8]>, prev: PrevBytes) -> ExtentState {
    let cur_zero = cur.is_none_or(is_zero);
    let same = match prev {
        PrevBytes::Absent => false,
        PrevBytes::Zeros => cur_zero,
        PrevBytes::Bytes(p) => match cur {
            Some(c) => c == p,
            None => is_zero(p),
        },
    };
    match (same, cur_zero) {
        (true, _) => ExtentState::Unchanged,
        (false, true) => ExtentState::Zero,
        (false, false) => ExtentState::Data,
    }
}

/// OR-folds fixed-size lanes so the compiler vectorises it; exits early per 256 bytes.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(256);
    let lanes = chunks
        .by_ref()
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0);
    lanes && chunks.remainder().iter().all(|&b| b == 0)
}
