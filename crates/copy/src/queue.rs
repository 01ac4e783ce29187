//! The objects a run visits, in increasing order: only those the source may hold data in,
//! asked one window of the image at a time, and the watermark below which all are done.
//!
//! Why windows: asking the source about the whole image at once could return millions of
//! ranges; a window of [`WINDOW_OBJECTS`] objects bounds what is held, and metadata-backed
//! sources answer a window without reading data, so a 1 TiB image with a few MiB of data
//! costs a few hundred metadata walks instead of one copy attempt per object number. A
//! source that cannot say what it allocates but lists from metadata (`native`) is asked
//! through one `list_snaps` per window instead.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Mutex;

use rbdm_image::Layout;
use rbdm_registry::{ExtentState, SourceImage};

use crate::Result;

/// Objects asked about at once (rounded to whole object sets): 16 GiB of 4 MiB objects.
const WINDOW_OBJECTS: u64 = 4096;

/// Hands out object numbers `start..total` that may need copying.
pub(crate) struct Queue<'a> {
    source: &'a dyn SourceImage,
    layout: Layout,
    total: u64,
    /// The source may be asked what it allocates; false: every object is visited (the
    /// destination keeps a parent, whose data the copy must also consider).
    sparse: bool,
    state: Mutex<State>,
}

struct State {
    /// First object of the next window not yet asked about.
    next_window: u64,
    /// Objects of asked windows not handed out yet, ascending.
    pending: VecDeque<u64>,
    /// Handed out and not finished.
    in_flight: BTreeSet<u64>,
}

impl<'a> Queue<'a> {
    pub fn new(
        source: &'a dyn SourceImage,
        layout: Layout,
        start: u64,
        total: u64,
        sparse: bool,
    ) -> Self {
        Queue {
            source,
            layout,
            total,
            sparse,
            state: Mutex::new(State {
                next_window: start.min(total),
                pending: VecDeque::new(),
                in_flight: BTreeSet::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update below leaves the state consistent, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next object to copy, or `None` when all are handed out.
    pub fn next(&self) -> Result<Option<u64>> {
        let mut st = self.lock();
        while st.pending.is_empty() && st.next_window < self.total {
            let from = st.next_window;
            let to = self.window_end(from);
            st.pending = self.objects_in(from, to)?.into();
            st.next_window = to;
        }
        let n = st.pending.pop_front();
        if let Some(n) = n {
            st.in_flight.insert(n);
        }
        Ok(n)
    }

    /// Marks `n` finished; returns the watermark: every object below it is done (copied, or
    /// never needing a copy).
    pub fn finish(&self, n: u64) -> u64 {
        let mut st = self.lock();
        st.in_flight.remove(&n);
        self.watermark(&st)
    }

    /// The current watermark (for a checkpoint after a failure).
    pub fn done_below(&self) -> u64 {
        self.watermark(&self.lock())
    }

    fn watermark(&self, st: &State) -> u64 {
        let frontier = st.pending.front().copied().unwrap_or(st.next_window);
        st.in_flight
            .first()
            .copied()
            .unwrap_or(frontier)
            .min(frontier)
    }

    /// The end of the window from object `from`: whole object sets, so a window is one
    /// contiguous image range.
    fn window_end(&self, from: u64) -> u64 {
        let per_set = self.layout.stripe_count;
        let sets = WINDOW_OBJECTS.div_ceil(per_set).max(1);
        let set_end = (from / per_set + sets) * per_set;
        set_end.min(self.total)
    }

    /// Objects of `[from, to)` (whole object sets but maybe the ends) worth visiting.
    fn objects_in(&self, from: u64, to: u64) -> Result<Vec<u64>> {
        let all = || (from..to).collect();
        if !self.sparse {
            return Ok(all());
        }
        let period = self.layout.period();
        let first_set = from / self.layout.stripe_count;
        let last_set = (to - 1) / self.layout.stripe_count;
        let image_from = first_set * period;
        let image_len = (last_set - first_set + 1) * period;
        let ranges = match self.source.allocated(image_from, image_len) {
            Some(ranges) => ranges?,
            None if self.source.scan_cost(image_from, image_len) == 0 => {
                listed_data(self.source, image_from, image_len)?
            }
            None => return Ok(all()),
        };
        let mut objects = BTreeSet::new();
        for (off, len) in ranges {
            let end = off.saturating_add(len).min(image_from + image_len);
            let off = off.max(image_from);
            if off < end {
                self.touched(off, end, &mut objects);
            }
        }
        Ok(objects.range(from..to).copied().collect())
    }

    /// Adds the objects image bytes `[off, end)` map into.
    fn touched(&self, off: u64, end: u64, objects: &mut BTreeSet<u64>) {
        let l = &self.layout;
        let row = l.stripe_unit * l.stripe_count;
        let mut pos = off;
        while pos < end {
            let set = pos / l.period();
            let piece_end = ((set + 1) * l.period()).min(end);
            if piece_end - pos >= row {
                // A full row of stripe units touches every object of the set.
                objects.extend(set * l.stripe_count..(set + 1) * l.stripe_count);
            } else {
                objects.extend(
                    l.map_extent(pos, piece_end - pos)
                        .iter()
                        .map(|e| e.object_no),
                );
            }
            pos = piece_end;
        }
    }
}

/// Where any point holds data in `[off, off+len)`, from `list_snaps`: for a source that
/// cannot say what it allocates but whose listing is metadata only (`scan_cost` 0), one
/// listing of a window costs far less than asking object by object. A byte holding data at
/// some point was listed as data at that point or an earlier one, so the union of every
/// point's data extents covers it.
fn listed_data(source: &dyn SourceImage, off: u64, len: u64) -> Result<Vec<(u64, u64)>> {
    let per_point = source.list_snaps(off, len)?;
    Ok(per_point
        .iter()
        .flatten()
        .filter(|e| e.state == ExtentState::Data)
        .map(|e| (e.offset, e.len))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbdm_registry::{Point, SnapExtent, SourceSnapshot};

    /// A source the queue may ask what it allocates (`ranges`; `None`: it cannot tell) or
    /// list: `points` answer every listing, clipped to it; `scan` is what a listing reads.
    struct Fake {
        ranges: Option<Vec<(u64, u64)>>,
        points: Vec<Vec<SnapExtent>>,
        scan: u64,
    }

    fn allocating(ranges: Vec<(u64, u64)>) -> Fake {
        Fake {
            ranges: Some(ranges),
            points: Vec::new(),
            scan: 0,
        }
    }

    impl SourceImage for Fake {
        fn format(&self) -> &str {
            "test"
        }
        fn size(&self) -> u64 {
            u64::MAX
        }
        fn snapshots(&self) -> Vec<SourceSnapshot> {
            Vec::new()
        }
        fn read(&self, _: Point, _: u64, _: &mut [u8]) -> rbdm_registry::Result<()> {
            unreachable!("the queue never reads")
        }
        fn list_snaps(&self, off: u64, len: u64) -> rbdm_registry::Result<Vec<Vec<SnapExtent>>> {
            assert!(
                self.ranges.is_none(),
                "asked what it allocates, never listed"
            );
            let clip = |e: &SnapExtent| {
                let (from, to) = (e.offset.max(off), (e.offset + e.len).min(off + len));
                (from < to).then(|| SnapExtent {
                    offset: from,
                    len: to - from,
                    state: e.state,
                })
            };
            Ok(self
                .points
                .iter()
                .map(|p| p.iter().filter_map(clip).collect())
                .collect())
        }
        fn allocated(&self, off: u64, len: u64) -> Option<rbdm_registry::Result<Vec<(u64, u64)>>> {
            let end = off + len;
            let ranges = self.ranges.as_ref()?;
            let inside = ranges.iter().filter(|&&(o, l)| o < end && o + l > off);
            Some(Ok(inside.copied().collect()))
        }
        fn scan_cost(&self, _: u64, len: u64) -> u64 {
            self.scan.min(len)
        }
    }

    fn drain(q: &Queue) -> Vec<u64> {
        std::iter::from_fn(|| q.next().unwrap()).collect()
    }

    #[test]
    fn a_source_that_only_lists_is_asked_by_window_for_its_data() {
        let layout = Layout::default();
        let ext = |object: u64, state| SnapExtent {
            offset: object << 22,
            len: 4096,
            state,
        };
        // Data in object 3 at the first point, in 9000 at the second; zeros elsewhere.
        let points = vec![
            vec![ext(1, ExtentState::Zero), ext(3, ExtentState::Data)],
            vec![ext(3, ExtentState::Zero), ext(9000, ExtentState::Data)],
        ];
        let source = Fake {
            ranges: None,
            points,
            scan: 0,
        };
        let q = Queue::new(&source, layout, 0, 10_000, true);
        assert_eq!(drain(&q), vec![3, 9000]);
        // Listing reads data: every object is visited instead, each listed on its own.
        let blind = Fake { scan: 1, ..source };
        let q = Queue::new(&blind, layout, 0, 10_000, true);
        assert_eq!(drain(&q).len(), 10_000);
    }

    #[test]
    fn hands_out_exactly_the_touched_objects_for_any_layout() {
        let ranges = vec![
            (0, 1),
            (5 * 4096 + 7, 3 * 4096),
            (1 << 30, 70_000),
            (3 << 30, 1 << 26),
        ];
        for layout in [
            Layout::new(1 << 22, 1 << 22, 1).unwrap(),
            Layout::new(1 << 16, 4096, 3).unwrap(),
            Layout::new(1 << 14, 1 << 12, 7).unwrap(),
        ] {
            let total = layout.object_count(4 << 30);
            let mut want: Vec<u64> = ranges
                .iter()
                .flat_map(|&(o, l)| layout.map_extent(o, l))
                .map(|e| e.object_no)
                .filter(|&n| n >= 3)
                .collect();
            want.sort();
            want.dedup();
            let source = allocating(ranges.clone());
            let q = Queue::new(&source, layout, 3, total, true);
            assert_eq!(drain(&q), want, "{layout:?}");
            let q = Queue::new(&source, layout, 3, total, false);
            assert_eq!(drain(&q), (3..total).collect::<Vec<_>>(), "{layout:?}");
        }
    }

    #[test]
    fn watermark_waits_for_objects_in_flight_and_skips_empty_ones() {
        let layout = Layout::default();
        let source = allocating(vec![(4 << 22, 1), (9 << 22, 1)]);
        let q = Queue::new(&source, layout, 0, 20, true);
        assert_eq!(q.done_below(), 0);
        let (a, b) = (q.next().unwrap().unwrap(), q.next().unwrap().unwrap());
        assert_eq!((a, b), (4, 9));
        assert_eq!(q.done_below(), 4);
        assert_eq!(q.finish(b), 4);
        assert_eq!(q.finish(a), 20);
        assert_eq!(q.next().unwrap(), None);
    }
}
