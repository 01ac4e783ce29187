//! Where an export's data and holes are, for block status and sparse reads, answered in time
//! proportional to what the reply covers rather than to what the request spans.
//!
//! QEMU asks `NBD_CMD_BLOCK_STATUS` with `REQ_ONE` and a length reaching to the end of the
//! export, once per extent; mapping the whole remainder each time made a map of an image with
//! tens of thousands of extents quadratic. So the map is walked in pieces from the request's
//! offset and the walk stops as soon as the reply is known.
//!
//! Devices that name an allocation granule and a change token ([`BlockDevice`]'s
//! `allocation_granule` / `allocation_token`) get a per-export cache of each granule's
//! extents. The export forgets granules it writes, trims or zeroes itself; other writers (a
//! migration's copy, another process) are caught by the token. Safety rule: the cache may
//! report more data than there is, never a hole that is not one, because a client skips what
//! is reported as a hole. So a cached granule is used without a check only where it says
//! data; before any of its holes go into a reply its token is read again, and a changed token
//! means the granule is mapped afresh. A token is read before the map it vouches for, so a
//! write landing in between leaves a stale token, never a stale hole under a fresh one.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use crate::{lock, BlockDevice};

/// Without a granule, the map is asked for windows growing from this size.
const FIRST_WINDOW: u64 = 64 << 10;
/// Cached extents per export before the cache starts over (16 bytes each).
const MAX_CACHED_EXTENTS: usize = 1 << 20;

/// A contiguous piece of a range: data, or a hole that reads as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seg {
    pub offset: u64,
    pub len: u64,
    pub data: bool,
}

/// How far one call may walk.
#[derive(Clone, Copy)]
pub(crate) struct Limit {
    /// Stop once this many segments are complete.
    pub segments: usize,
    /// Stop after looking at this many pieces (granules or windows): the reply then covers a
    /// prefix of the request, which NBD allows.
    pub pieces: usize,
}

impl Limit {
    /// All of the range, for reads.
    pub const ALL: Limit = Limit {
        segments: usize::MAX,
        pieces: usize::MAX,
    };
}

/// One export's allocation map cache.
pub(crate) struct AllocMap {
    granule: u64,
    size: u64,
    cached: Mutex<Cached>,
}

#[derive(Default)]
struct Cached {
    granules: HashMap<u64, Granule>,
    extents: usize,
}

#[derive(Clone)]
struct Granule {
    token: u64,
    /// Data extents inside the granule, in export offsets.
    extents: Arc<[(u64, u64)]>,
}

impl AllocMap {
    pub(crate) fn new(dev: &dyn BlockDevice) -> AllocMap {
        AllocMap {
            granule: dev.allocation_granule(),
            size: dev.size(),
            cached: Mutex::new(Cached::default()),
        }
    }

    /// Segments covering `[offset, offset+len)` from `offset` on, or a prefix of it when
    /// `limit` stops the walk; never empty for `len > 0`.
    pub(crate) fn segments(
        &self,
        dev: &dyn BlockDevice,
        offset: u64,
        len: u64,
        limit: Limit,
    ) -> io::Result<Vec<Seg>> {
        self.walk(dev, offset, len, limit, true)
            .map(|segs| segs.expect("walks that may map always answer"))
    }

    /// As [`AllocMap::segments`], from cached granules and token checks only (both cheap and
    /// local); `None` when the answer needs the device's map, or on any error (the caller
    /// then asks [`AllocMap::segments`], which reports it).
    pub(crate) fn cached_segments(
        &self,
        dev: &dyn BlockDevice,
        offset: u64,
        len: u64,
        limit: Limit,
    ) -> Option<Vec<Seg>> {
        if self.granule == 0 {
            return None;
        }
        self.walk(dev, offset, len, limit, false).ok().flatten()
    }

    /// `may_map`: whether the device's map may be asked; if not, `None` where it would be.
    fn walk(
        &self,
        dev: &dyn BlockDevice,
        offset: u64,
        len: u64,
        limit: Limit,
        may_map: bool,
    ) -> io::Result<Option<Vec<Seg>>> {
        let end = offset.saturating_add(len).min(self.size.max(offset));
        let mut out: Vec<Seg> = Vec::new();
        let mut pos = offset;
        let mut window = FIRST_WINDOW;
        let mut pieces = 0;
        while pos < end {
            let piece_end = if self.granule == 0 {
                let piece_end = pos.saturating_add(window).min(end);
                let ext = dev.allocated(pos, piece_end - pos)?;
                append(&mut out, segments(pos, piece_end - pos, &ext));
                window = window.saturating_mul(2);
                piece_end
            } else {
                match self.granule_piece(dev, pos, end, &mut out, may_map)? {
                    Some(stop) => stop,
                    None => return Ok(None),
                }
            };
            pos = piece_end;
            pieces += 1;
            if out.len() > limit.segments {
                // The last kept segment is complete: a different one follows it.
                out.truncate(limit.segments);
                break;
            }
            if pieces >= limit.pieces {
                break;
            }
        }
        Ok(Some(out))
    }

    /// Appends the segments of `[pos, end)` inside `pos`'s granule; returns where they stop,
    /// or `None` when that needs the device's map and `may_map` is false.
    fn granule_piece(
        &self,
        dev: &dyn BlockDevice,
        pos: u64,
        end: u64,
        out: &mut Vec<Seg>,
        may_map: bool,
    ) -> io::Result<Option<u64>> {
        let index = pos / self.granule;
        let start = index * self.granule;
        let stop = (start + self.granule).min(end);
        let cached = lock(&self.cached).granules.get(&index).cloned();
        let fresh = match &cached {
            // Only holes need the check: reporting data that is gone is safe.
            Some(g) => {
                let segs = segments(pos, stop - pos, &g.extents);
                let holes = segs.iter().any(|s| !s.data);
                (!holes || dev.allocation_token(start).ok() == Some(g.token)).then_some(segs)
            }
            None => None,
        };
        let segs = match fresh {
            Some(segs) => segs,
            None if !may_map => return Ok(None),
            None => segments(pos, stop - pos, &self.fetch(dev, index)?),
        };
        append(out, segs);
        Ok(Some(stop))
    }

    /// Maps granule `index` afresh and caches it when the device gives a token.
    fn fetch(&self, dev: &dyn BlockDevice, index: u64) -> io::Result<Arc<[(u64, u64)]>> {
        let start = index * self.granule;
        let len = self.granule.min(self.size - start);
        // The token first: a change after it makes the cached entry stale, never wrong.
        let token = dev.allocation_token(start);
        let extents: Arc<[(u64, u64)]> = dev.allocated(start, len)?.into();
        if let Ok(token) = token {
            let mut c = lock(&self.cached);
            if c.extents + extents.len() > MAX_CACHED_EXTENTS {
                *c = Cached::default();
            }
            c.extents += extents.len();
            let entry = Granule {
                token,
                extents: Arc::clone(&extents),
            };
            if let Some(old) = c.granules.insert(index, entry) {
                c.extents -= old.extents.len();
            }
        }
        Ok(extents)
    }

    /// The export changed `[offset, offset+len)` itself: map those granules afresh next time.
    pub(crate) fn forget(&self, offset: u64, len: u64) {
        if self.granule == 0 || len == 0 {
            return;
        }
        let first = offset / self.granule;
        let last = (offset.saturating_add(len) - 1) / self.granule;
        let mut c = lock(&self.cached);
        let c = &mut *c;
        if last - first < c.granules.len() as u64 {
            for index in first..=last {
                if let Some(old) = c.granules.remove(&index) {
                    c.extents -= old.extents.len();
                }
            }
        } else {
            c.granules.retain(|i, _| *i < first || *i > last);
            c.extents = c.granules.values().map(|g| g.extents.len()).sum();
        }
    }
}

/// Appends `more`, merging across the seam when the kinds match.
fn append(out: &mut Vec<Seg>, more: Vec<Seg>) {
    for s in more {
        match out.last_mut() {
            Some(last) if last.data == s.data && last.offset + last.len == s.offset => {
                last.len += s.len
            }
            _ => out.push(s),
        }
    }
}

/// Covers [offset, offset+len) exactly with data and hole segments, adjacent ones of the same
/// kind merged. The device's extents are clipped and anything unsorted or overlapping is
/// tolerated, because a buggy device must not make us send a malformed reply.
pub(crate) fn segments(offset: u64, len: u64, extents: &[(u64, u64)]) -> Vec<Seg> {
    let end = offset + len;
    let mut out: Vec<Seg> = Vec::new();
    let push = |out: &mut Vec<Seg>, offset: u64, len: u64, data: bool| match out.last_mut() {
        Some(last) if last.data == data && last.offset + last.len == offset => last.len += len,
        _ => out.push(Seg { offset, len, data }),
    };
    let mut cursor = offset;
    for &(o, l) in extents {
        let s = o.max(cursor);
        let e = o.saturating_add(l).min(end);
        if e <= s {
            continue;
        }
        if s > cursor {
            push(&mut out, cursor, s - cursor, false);
        }
        push(&mut out, s, e - s, true);
        cursor = e;
    }
    if cursor < end {
        push(&mut out, cursor, end - cursor, false);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn seg(offset: u64, len: u64, data: bool) -> Seg {
        Seg { offset, len, data }
    }

    #[test]
    fn segments_cover_the_range() {
        let s = segments(100, 100, &[(90, 20), (150, 10), (160, 5), (190, 50)]);
        assert_eq!(
            s,
            vec![
                seg(100, 10, true),
                seg(110, 40, false),
                seg(150, 15, true),
                seg(165, 25, false),
                seg(190, 10, true)
            ]
        );
        assert_eq!(segments(0, 10, &[]), vec![seg(0, 10, false)]);
        assert_eq!(segments(0, 10, &[(0, 10)]), vec![seg(0, 10, true)]);
    }

    #[test]
    fn segments_tolerate_bad_extents() {
        // Overlapping, unsorted, empty and overflowing extents.
        let s = segments(
            0,
            100,
            &[(10, 20), (15, 5), (5, 3), (50, 0), (90, u64::MAX)],
        );
        assert_eq!(
            s,
            vec![
                seg(0, 10, false),
                seg(10, 20, true),
                seg(30, 60, false),
                seg(90, 10, true)
            ]
        );
        let total: u64 = s.iter().map(|s| s.len).sum();
        assert_eq!(total, 100);
    }

    const G: u64 = 1 << 20;

    /// A device whose map is a list of extents; it counts map and token calls, and its token
    /// is a version the test bumps to play another writer.
    struct Fake {
        size: u64,
        granule: u64,
        extents: Mutex<Vec<(u64, u64)>>,
        version: AtomicU64,
        maps: AtomicU64,
        mapped_bytes: AtomicU64,
        tokens: AtomicU64,
    }

    impl Fake {
        fn new(size: u64, granule: u64, extents: Vec<(u64, u64)>) -> Fake {
            Fake {
                size,
                granule,
                extents: Mutex::new(extents),
                version: AtomicU64::new(1),
                maps: AtomicU64::new(0),
                mapped_bytes: AtomicU64::new(0),
                tokens: AtomicU64::new(0),
            }
        }
    }

    impl BlockDevice for Fake {
        fn size(&self) -> u64 {
            self.size
        }
        fn read_only(&self) -> bool {
            true
        }
        fn read(&self, _: u64, _: &mut [u8]) -> io::Result<()> {
            Ok(())
        }
        fn write(&self, _: u64, _: &[u8]) -> io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
        fn trim(&self, _: u64, _: u64) -> io::Result<()> {
            Ok(())
        }
        fn write_zeroes(&self, _: u64, _: u64) -> io::Result<()> {
            Ok(())
        }
        fn allocated(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, u64)>> {
            self.maps.fetch_add(1, Ordering::Relaxed);
            self.mapped_bytes.fetch_add(len, Ordering::Relaxed);
            let all = lock(&self.extents).clone();
            Ok(all
                .into_iter()
                .filter(|&(o, l)| o < offset + len && o + l > offset)
                .collect())
        }
        fn allocation_granule(&self) -> u64 {
            self.granule
        }
        fn allocation_token(&self, _: u64) -> io::Result<u64> {
            self.tokens.fetch_add(1, Ordering::Relaxed);
            match self.granule {
                0 => Err(io::ErrorKind::Unsupported.into()),
                _ => Ok(self.version.load(Ordering::Relaxed)),
            }
        }
    }

    /// 4 KiB of data every 16 KiB: as fragmented as a random 4 KiB write workload.
    fn fragmented(size: u64) -> Vec<(u64, u64)> {
        (0..size / 16384).map(|i| (i * 16384, 4096)).collect()
    }

    const ONE: Limit = Limit {
        segments: 1,
        pieces: 1024,
    };

    /// QEMU's walk: REQ_ONE from each extent's start to the end of the export.
    fn walk(map: &AllocMap, dev: &Fake) -> Vec<Seg> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < dev.size {
            let s = map.segments(dev, pos, dev.size - pos, ONE).expect("map");
            assert_eq!(s.len(), 1);
            pos += s[0].len;
            out.push(s[0]);
        }
        out
    }

    #[test]
    fn req_one_walks_cost_what_replies_cover() {
        for granule in [G, 0] {
            let size = 64 * G;
            let dev = Fake::new(size, granule, fragmented(size));
            let map = AllocMap::new(&dev);
            let got = walk(&map, &dev);
            assert_eq!(
                got,
                segments(0, size, &fragmented(size)),
                "granule {granule}"
            );
            let mapped = dev.mapped_bytes.load(Ordering::Relaxed);
            // Mapping the rest of the export per reply would be about 8192 * 32 MiB.
            assert!(
                mapped <= 2 * size || (granule == 0 && mapped <= 8192 * 2 * FIRST_WINDOW),
                "granule {granule}: mapped {mapped} bytes for {} replies",
                got.len()
            );
            if granule != 0 {
                assert_eq!(
                    dev.maps.load(Ordering::Relaxed),
                    64,
                    "each granule mapped once"
                );
            }
        }
    }

    #[test]
    fn a_changed_token_revalidates_cached_holes() {
        let dev = Fake::new(4 * G, G, vec![(0, 4096)]);
        let map = AllocMap::new(&dev);
        let first = map.segments(&dev, 0, 4 * G, Limit::ALL).expect("map");
        assert_eq!(
            first,
            vec![seg(0, 4096, true), seg(4096, 4 * G - 4096, false)]
        );
        // Another writer fills a hole: the cached hole must not be reported again.
        lock(&dev.extents).push((2 * G, 8192));
        dev.version.fetch_add(1, Ordering::Relaxed);
        let second = map.segments(&dev, 2 * G, 2 * G, ONE).expect("map");
        assert_eq!(second, vec![seg(2 * G, 8192, true)]);
        // Cached data is used without a token check.
        let tokens = dev.tokens.load(Ordering::Relaxed);
        assert_eq!(
            map.segments(&dev, 0, 2048, ONE).expect("map"),
            vec![seg(0, 2048, true)]
        );
        assert_eq!(dev.tokens.load(Ordering::Relaxed), tokens);
    }

    #[test]
    fn forget_drops_what_the_export_wrote() {
        let dev = Fake::new(4 * G, G, vec![(0, G)]);
        let map = AllocMap::new(&dev);
        assert_eq!(
            map.segments(&dev, 0, G, ONE).expect("map"),
            vec![seg(0, G, true)]
        );
        // A trim leaves the token alone here; only forgetting shows the new hole.
        lock(&dev.extents).clear();
        assert_eq!(
            map.segments(&dev, 0, G, ONE).expect("map"),
            vec![seg(0, G, true)]
        );
        map.forget(4096, 1);
        assert_eq!(
            map.segments(&dev, 0, G, ONE).expect("map"),
            vec![seg(0, G, false)]
        );
        map.forget(0, u64::MAX / 2);
        assert!(lock(&map.cached).granules.is_empty());
    }

    #[test]
    fn walks_stop_at_the_piece_limit() {
        let dev = Fake::new(16 * G, G, vec![]);
        let map = AllocMap::new(&dev);
        let limit = Limit {
            segments: 1,
            pieces: 3,
        };
        let s = map.segments(&dev, 0, 16 * G, limit).expect("map");
        assert_eq!(s, vec![seg(0, 3 * G, false)], "a prefix of the request");
    }

    #[test]
    fn cached_only_walks_never_map() {
        let dev = Fake::new(4 * G, G, vec![(0, 4096)]);
        let map = AllocMap::new(&dev);
        assert_eq!(
            map.cached_segments(&dev, 0, 4 * G, ONE),
            None,
            "nothing cached yet"
        );
        assert_eq!(dev.maps.load(Ordering::Relaxed), 0);
        map.segments(&dev, 0, 4 * G, Limit::ALL).expect("map");
        let maps = dev.maps.load(Ordering::Relaxed);
        assert_eq!(
            map.cached_segments(&dev, 4096, 4 * G - 4096, ONE),
            Some(vec![seg(4096, 4 * G - 4096, false)])
        );
        // A changed token: the cached hole is not vouched for, so no answer without a map.
        dev.version.fetch_add(1, Ordering::Relaxed);
        assert_eq!(map.cached_segments(&dev, 4096, G, ONE), None);
        assert_eq!(dev.maps.load(Ordering::Relaxed), maps);
    }
}
