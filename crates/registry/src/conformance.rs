//! The contract every plugin keeps, as checks that each plugin crate's tests call (as
//! Arrow's `object_store::integration` is for its backends and `rbdm_store::conformance` for
//! ours): what a `Stream` and a `SourceImage` promise their callers, tested against the
//! plugin's own answers, so that no plugin needs a checker of its own.
//!
//! - [`check_stream`]: reads past the end fail and zero-length reads succeed, vectored reads
//!   equal single reads, known extents are sorted, cover the asked range inside the size,
//!   and zero extents read as zeros; optionally the bytes against what the test wrote.
//! - [`check_list_snaps`] / [`check_list_snaps_range`]: at every point, extents sorted,
//!   disjoint and covering the range clipped to that point's size, `Zero` reading as zeros
//!   and `Unchanged` as the previous point, through the image's own `read`.
//! - [`check_source`]: the above over the whole image plus reads at and past each point's
//!   end and zero-length reads.
//! - [`check_fails`] / [`check_source_fails`]: a stream that stopped working gives errors,
//!   never bytes (zeros above all), also through a format on top of it ([`Breakable`]).
//!
//! What it is not: no test of a particular format's decoding (whether the bytes are the
//! right ones is for each plugin's tests, against QEMU or the bytes they wrote). The checks
//! return `Err(Failure)` naming the point, the extent and the offset, for `?` or `unwrap`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::{ExtentState, Point, SnapExtent, SourceError, SourceImage, Stream, StreamExtent};

/// A broken promise: which one, where.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Failure(pub String);

pub type Outcome<T = ()> = std::result::Result<T, Failure>;

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Outcome {
    if ok {
        Ok(())
    } else {
        Err(Failure(what()))
    }
}

fn read_failed(what: &str, e: SourceError) -> Failure {
    Failure(format!("{what}: {}", rbdm_image::report(&e)))
}

/// Bytes compared at once: the checks never hold a whole image.
const PIECE: u64 = 1 << 20;

/// The `Stream` contract. `want`: the stream's bytes when the test knows them.
pub fn check_stream(s: &dyn Stream, want: Option<&[u8]>) -> Outcome {
    let size = s.size();
    let name = s.describe();
    if let Some(w) = want {
        ensure(w.len() as u64 == size, || {
            format!("{name}: size {size}, the test wrote {}", w.len())
        })?;
    }
    // Zero-length reads anywhere inside, and at the end, are no-ops that succeed.
    for at in [0, size / 2, size] {
        s.read_at(at, &mut [])
            .map_err(|e| read_failed(&format!("{name}: zero-length read at {at}"), e))?;
    }
    // Past the end, or across it, is an error, never a short read nor zeros.
    let mut two = [0u8; 2];
    for (at, buf) in [
        (size, &mut two[..1]),
        (size.saturating_sub(1), &mut [0u8; 2][..]),
    ] {
        let len = buf.len();
        ensure(s.read_at(at, buf).is_err(), || {
            format!("{name}: read of {len} bytes at {at} past the end ({size}) succeeded")
        })?;
    }
    ensure(s.read_at(u64::MAX - 1, &mut two).is_err(), || {
        format!("{name}: read at u64::MAX - 1 succeeded")
    })?;
    check_stream_bytes(s, want)?;
    check_stream_extents(s, 0, size)?;
    if size > 2 {
        check_stream_extents(s, size / 3, size)?;
    }
    Ok(())
}

/// Reads the whole stream in pieces, each also as a vectored read of two halves.
fn check_stream_bytes(s: &dyn Stream, want: Option<&[u8]>) -> Outcome {
    let (size, name) = (s.size(), s.describe());
    let mut at = 0;
    while at < size {
        let n = (size - at).min(PIECE) as usize;
        let mut one = vec![0u8; n];
        s.read_at(at, &mut one)
            .map_err(|e| read_failed(&format!("{name}: read {n} at {at}"), e))?;
        if let Some(w) = want {
            first_difference(&one, &w[at as usize..at as usize + n]).map_or(Ok(()), |i| {
                Err(Failure(format!(
                    "{name}: byte {} differs from what was written",
                    at + i as u64
                )))
            })?;
        }
        let mut vec = vec![0xa5u8; n];
        let (a, b) = vec.split_at_mut(n / 2);
        s.read_vectored_at(&mut [(at, a), (at + (n / 2) as u64, b)])
            .map_err(|e| read_failed(&format!("{name}: vectored read at {at}"), e))?;
        if let Some(i) = first_difference(&one, &vec) {
            return Err(Failure(format!(
                "{name}: vectored read differs from read_at at byte {}",
                at + i as u64
            )));
        }
        at += n as u64;
    }
    Ok(())
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Known extents of `[offset, offset+len)`: sorted, contiguous, exactly the range clipped to
/// the size; zero extents read as zeros.
fn check_stream_extents(s: &dyn Stream, offset: u64, len: u64) -> Outcome {
    let (size, name) = (s.size(), s.describe());
    let Some(extents) = s.extents(offset, len) else {
        return Ok(());
    };
    let extents: Vec<StreamExtent> =
        extents.map_err(|e| read_failed(&format!("{name}: extents at {offset}"), e))?;
    let end = offset.saturating_add(len).min(size);
    let mut pos = offset;
    for e in &extents {
        ensure(e.offset == pos && e.len > 0, || {
            format!("{name}: extent {e:?} does not follow {pos} in {extents:?}")
        })?;
        pos += e.len;
        ensure(pos <= end, || {
            format!("{name}: extent {e:?} ends past {end} (size {size})")
        })?;
        if e.zero {
            check_zero(
                &format!("{name}: zero extent {e:?}"),
                e.offset,
                e.len,
                &|at, buf| s.read_at(at, buf),
            )?;
        }
    }
    ensure(pos == end.max(offset), || {
        format!("{name}: extents of {offset}+{len} end at {pos}, not {end}")
    })
}

type ReadFn<'a> = dyn Fn(u64, &mut [u8]) -> crate::Result<()> + 'a;

fn check_zero(what: &str, offset: u64, len: u64, read: &ReadFn) -> Outcome {
    let mut buf = vec![0u8; len.min(PIECE) as usize];
    let mut at = offset;
    while at < offset + len {
        let n = (offset + len - at).min(PIECE) as usize;
        read(at, &mut buf[..n]).map_err(|e| read_failed(&format!("{what}: read at {at}"), e))?;
        if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
            return Err(Failure(format!(
                "{what}: byte {} is {:#04x}, not zero",
                at + i as u64,
                buf[i]
            )));
        }
        at += n as u64;
    }
    Ok(())
}

/// How strictly `list_snaps` is held to the bytes.
#[derive(Clone, Copy, Debug)]
pub struct SnapRules {
    /// Every 4 KiB piece is `Unchanged` exactly when it equals the previous point, and a
    /// `Data` piece is not all zeros (formats that compare contents, as raw does). Off: the
    /// states need only be true (a format may report unchanged data as `Data`).
    pub exact: bool,
    /// Touching extents of one state are merged (`push_extent`).
    pub merged: bool,
}

impl SnapRules {
    pub const EXACT: SnapRules = SnapRules {
        exact: true,
        merged: true,
    };
    /// True and merged (a format that merges but reports unchanged data as `Data`).
    pub const MERGED: SnapRules = SnapRules {
        exact: false,
        merged: true,
    };
    pub const TRUE: SnapRules = SnapRules {
        exact: false,
        merged: false,
    };
}

/// Every point, oldest first, with its size.
pub fn points(img: &dyn SourceImage) -> Vec<(Point, u64)> {
    let snaps = img.snapshots();
    let mut out: Vec<(Point, u64)> = snaps
        .iter()
        .enumerate()
        .map(|(i, s)| (Point::Snap(i), s.size))
        .collect();
    out.push((Point::Head, img.size()));
    out
}

/// `list_snaps` over `[offset, offset+len)` against the image's own reads; returns its answer.
pub fn check_list_snaps_range(
    img: &dyn SourceImage,
    offset: u64,
    len: u64,
    rules: SnapRules,
) -> Outcome<Vec<Vec<SnapExtent>>> {
    let pts = points(img);
    let lists = img
        .list_snaps(offset, len)
        .map_err(|e| read_failed(&format!("list_snaps {offset}+{len}"), e))?;
    ensure(lists.len() == pts.len(), || {
        format!(
            "list_snaps gave {} lists for {} points",
            lists.len(),
            pts.len()
        )
    })?;
    for (p, list) in lists.iter().enumerate() {
        let end = offset.saturating_add(len).min(pts[p].1).max(offset);
        let mut pos = offset;
        for (i, e) in list.iter().enumerate() {
            let at = format!("point {p} ({:?}): extent {e:?}", pts[p].0);
            ensure(e.offset == pos && e.len > 0, || {
                format!("{at} does not follow {pos}")
            })?;
            ensure(
                !rules.merged || i == 0 || list[i - 1].state != e.state,
                || format!("{at}: not merged with the extent before it"),
            )?;
            ensure(p > 0 || e.state != ExtentState::Unchanged, || {
                format!("{at}: Unchanged at the first point")
            })?;
            pos += e.len;
            ensure(pos <= end, || format!("{at}: ends past {end}"))?;
            check_extent(img, &pts, p, e, rules).map_err(|f| Failure(format!("{at}: {f}")))?;
        }
        ensure(pos == end, || {
            format!("point {p}: extents of {offset}+{len} end at {pos}, not {end}")
        })?;
    }
    Ok(lists)
}

/// `list_snaps` in windows of `window` bytes over the whole image; returns the answers
/// joined per point.
pub fn check_list_snaps(
    img: &dyn SourceImage,
    window: u64,
    rules: SnapRules,
) -> Outcome<Vec<Vec<SnapExtent>>> {
    let pts = points(img);
    let max = pts.iter().map(|p| p.1).max().unwrap_or(0);
    let mut joined: Vec<Vec<SnapExtent>> = vec![Vec::new(); pts.len()];
    let mut pos = 0;
    while pos < max {
        let lists = check_list_snaps_range(img, pos, window.max(1), rules)?;
        for (all, list) in joined.iter_mut().zip(lists) {
            for e in list {
                crate::push_extent(all, e.offset, e.len, e.state);
            }
        }
        pos += window.max(1);
    }
    Ok(joined)
}

/// One extent's state against the point's bytes (and the previous point's), read a piece of
/// up to 1 MiB at a time and judged by 4 KiB aligned blocks, so `exact` speaks of whole
/// blocks.
fn check_extent(
    img: &dyn SourceImage,
    pts: &[(Point, u64)],
    p: usize,
    e: &SnapExtent,
    rules: SnapRules,
) -> Outcome {
    let end = e.offset + e.len;
    let mut at = e.offset;
    while at < end {
        let stop = end.min((at / PIECE + 1) * PIECE);
        let cur = read_point(img, pts, p, at, stop)?;
        let prev = match p.checked_sub(1) {
            Some(q) => Some((read_point(img, pts, q, at, stop)?, pts[q].1)),
            None => None,
        };
        check_blocks(
            e,
            at,
            &cur,
            prev.as_ref().map(|(b, size)| (&b[..], *size)),
            rules,
        )?;
        at = stop;
    }
    Ok(())
}

fn read_point(
    img: &dyn SourceImage,
    pts: &[(Point, u64)],
    p: usize,
    at: u64,
    stop: u64,
) -> Outcome<Vec<u8>> {
    let mut buf = vec![0u8; (stop - at) as usize];
    img.read(pts[p].0, at, &mut buf)
        .map_err(|err| read_failed(&format!("read of point {p} at {at}"), err))?;
    Ok(buf)
}

/// `cur` (bytes at `at`) block by block against the extent's state; `prev`: the previous
/// point's bytes there and its size.
fn check_blocks(
    e: &SnapExtent,
    at: u64,
    cur: &[u8],
    prev: Option<(&[u8], u64)>,
    rules: SnapRules,
) -> Outcome {
    const BLOCK: u64 = 4096;
    let end = at + cur.len() as u64;
    let mut from = at;
    while from < end {
        let to = end.min((from / BLOCK + 1) * BLOCK);
        let (a, b) = ((from - at) as usize, (to - at) as usize);
        let piece = &cur[a..b];
        let same = prev.is_some_and(|(bytes, size)| to <= size && bytes[a..b] == *piece);
        let zero = piece.iter().all(|&x| x == 0);
        match e.state {
            ExtentState::Unchanged => ensure(same, || format!("{from}..{to} changed"))?,
            ExtentState::Zero => ensure(zero, || format!("{from}..{to} is not zero"))?,
            ExtentState::Data => ensure(!rules.exact || !zero, || {
                format!("{from}..{to} is all zeros")
            })?,
        }
        ensure(
            !rules.exact || same == (e.state == ExtentState::Unchanged),
            || format!("{from}..{to} did not change"),
        )?;
        from = to;
    }
    Ok(())
}

/// The `SourceImage` contract over the whole image: `list_snaps` in windows of `window`,
/// zero-length reads, and bytes past each point's size reading as zeros. Returns the
/// `list_snaps` answers joined per point.
pub fn check_source(
    img: &dyn SourceImage,
    window: u64,
    rules: SnapRules,
) -> Outcome<Vec<Vec<SnapExtent>>> {
    let lists = check_list_snaps(img, window, rules)?;
    for (p, size) in points(img) {
        for at in [0, size / 2, size, size.saturating_add(PIECE)] {
            img.read(p, at, &mut [])
                .map_err(|e| read_failed(&format!("{p:?}: zero-length read at {at}"), e))?;
        }
        let mut tail = [0xa5u8; 100];
        let from = size.saturating_sub(10);
        img.read(p, from, &mut tail)
            .map_err(|e| read_failed(&format!("{p:?}: read across the end at {from}"), e))?;
        let past = (size - from) as usize;
        ensure(tail[past..].iter().all(|&b| b == 0), || {
            format!("{p:?}: bytes past the size {size} are not zero")
        })?;
    }
    Ok(lists)
}

/// A stream that stopped working (its server gone, its file unreadable): every read of one
/// byte or more fails, none comes back as zeros.
pub fn check_fails(s: &dyn Stream) -> Outcome {
    let size = s.size();
    let name = s.describe();
    for at in [0, size / 2, size.saturating_sub(1)] {
        let mut buf = [0xa5u8; 1];
        if at < size {
            ensure(s.read_at(at, &mut buf).is_err(), || {
                format!("{name}: a read at {at} of a broken stream succeeded: {buf:?}")
            })?;
        }
    }
    if size > 0 {
        let (mut a, mut b) = ([0u8; 1], [0u8; 1]);
        let r = s.read_vectored_at(&mut [(0, &mut a[..]), (size - 1, &mut b[..])]);
        ensure(r.is_err(), || {
            format!("{name}: a vectored read of a broken stream succeeded")
        })?;
    }
    Ok(())
}

/// A format over a stream that breaks after it opened: reads of every extent that
/// `list_snaps` called data fail rather than read as zeros. `lists`: `list_snaps` over the
/// whole image from another open of the same source, so that `img` has nothing cached.
pub fn check_source_fails(
    img: &dyn SourceImage,
    lists: &[Vec<SnapExtent>],
    broken: &Breakable,
) -> Outcome {
    broken.set_broken(true);
    let pts = points(img);
    let mut tried = 0;
    for (p, list) in lists.iter().enumerate() {
        for e in list.iter().filter(|e| e.state == ExtentState::Data) {
            let n = e.len.min(4096) as usize;
            let mut buf = vec![0xa5u8; n];
            let r = img.read(pts[p].0, e.offset, &mut buf);
            ensure(r.is_err(), || {
                format!(
                    "point {p}: the data at {} read with the stream broken (zeros: {})",
                    e.offset,
                    buf.iter().all(|&b| b == 0)
                )
            })?;
            tried += 1;
        }
    }
    broken.set_broken(false);
    ensure(tried > 0, || {
        "no data extent to read: the check tested nothing".to_string()
    })
}

/// A stream that can be broken at will: while broken, every read fails with EIO.
pub struct Breakable {
    inner: Arc<dyn Stream>,
    broken: Arc<AtomicBool>,
}

impl Breakable {
    pub fn new(inner: Box<dyn Stream>) -> Breakable {
        Breakable {
            inner: Arc::from(inner),
            broken: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Another handle on the same stream and switch, to give a format to own.
    pub fn handle(&self) -> Box<dyn Stream> {
        Box::new(Breakable {
            inner: self.inner.clone(),
            broken: self.broken.clone(),
        })
    }

    /// Another stream, broken by the same switch (a snapshot's stream beside the head's).
    pub fn sibling(&self, other: Box<dyn Stream>) -> Box<dyn Stream> {
        Box::new(Breakable {
            inner: Arc::from(other),
            broken: self.broken.clone(),
        })
    }

    pub fn set_broken(&self, broken: bool) {
        self.broken.store(broken, Ordering::SeqCst);
    }

    fn check(&self) -> crate::Result<()> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(SourceError::io(
                format!("{}: broken by the test", self.inner.describe()),
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        Ok(())
    }
}

impl Stream for Breakable {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> crate::Result<()> {
        self.check()?;
        self.inner.read_at(offset, buf)
    }
    fn read_vectored_at(&self, reads: &mut [(u64, &mut [u8])]) -> crate::Result<()> {
        self.check()?;
        self.inner.read_vectored_at(reads)
    }
    fn extents(&self, offset: u64, len: u64) -> Option<crate::Result<Vec<StreamExtent>>> {
        if let Err(e) = self.check() {
            return Some(Err(e));
        }
        self.inner.extents(offset, len)
    }
    fn open_relative(&self, name: &str) -> crate::Result<Box<dyn Stream>> {
        self.check()?;
        let inner = self.inner.open_relative(name)?;
        Ok(Box::new(Breakable {
            inner: Arc::from(inner),
            broken: self.broken.clone(),
        }))
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes in memory, holes known where zero runs are.
    struct Mem(Vec<u8>);

    impl Stream for Mem {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> crate::Result<()> {
            let end = offset
                .checked_add(buf.len() as u64)
                .filter(|e| *e <= self.size())
                .ok_or_else(|| SourceError::Invalid(format!("read at {offset} past the end")))?;
            buf.copy_from_slice(&self.0[offset as usize..end as usize]);
            Ok(())
        }
        fn describe(&self) -> String {
            "mem".into()
        }
    }

    /// A one-point image over a stream, claiming `claim` for its whole range.
    struct Claims<'a>(&'a Mem, ExtentState);

    impl SourceImage for Claims<'_> {
        fn format(&self) -> &str {
            "claims"
        }
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn snapshots(&self) -> Vec<crate::SourceSnapshot> {
            Vec::new()
        }
        fn read(&self, _: Point, offset: u64, buf: &mut [u8]) -> crate::Result<()> {
            buf.fill(0);
            let n = self.0.size().saturating_sub(offset).min(buf.len() as u64) as usize;
            self.0.read_at(offset.min(self.0.size()), &mut buf[..n])
        }
        fn list_snaps(&self, offset: u64, len: u64) -> crate::Result<Vec<Vec<SnapExtent>>> {
            let end = offset.saturating_add(len).min(self.size());
            let mut out = Vec::new();
            crate::push_extent(&mut out, offset, end.saturating_sub(offset), self.1);
            Ok(vec![out])
        }
    }

    #[test]
    fn the_suite_catches_what_it_names() {
        let mem = Mem([vec![0u8; 8192], vec![7u8; 100]].concat());
        check_stream(&mem, Some(&mem.0)).expect("a good stream");
        let wrong = [vec![0u8; 8192], vec![8u8; 100]].concat();
        assert!(check_stream(&mem, Some(&wrong)).is_err(), "wrong bytes");
        check_source(&Claims(&mem, ExtentState::Data), 4096, SnapRules::TRUE).expect("true");
        let e = check_source(&Claims(&mem, ExtentState::Zero), 4096, SnapRules::TRUE)
            .expect_err("data called zero");
        assert!(e.to_string().contains("not zero"), "{e}");
        let e = check_source(&Claims(&mem, ExtentState::Data), 4096, SnapRules::EXACT)
            .expect_err("zeros called data");
        assert!(e.to_string().contains("all zeros"), "{e}");
        let e = check_source(&Claims(&mem, ExtentState::Unchanged), 4096, SnapRules::TRUE)
            .expect_err("unchanged at the first point");
        assert!(e.to_string().contains("first point"), "{e}");
        // A stream that answers zeros when broken is caught.
        assert!(check_fails(&mem).is_err(), "a working stream is not broken");
        let b = Breakable::new(Box::new(Mem(mem.0.clone())));
        b.set_broken(true);
        check_fails(&b).expect("a broken stream fails");
    }
}
