//! The deep-copy engine: fills a migration destination's objects from a source image, one
//! object at a time, snapshot by snapshot, so the destination ends with the source's whole
//! history.
//!
//! What it is for: for one destination object, ask the source what changed at each point
//! (`list_snaps`), read only that, and write it with the snap context the destination had at
//! that point, so the store preserves each snapshot's bytes as RADOS clones do. Holes stay
//! holes; ranges that became zero are zeroed (deallocated), never written as zeros. Each
//! point's write also records how far the object got (an xattr), so a copy cut short by a
//! crash resumes where it stopped, and a finished object is never copied again: client
//! writes that landed after it are safe. Objects found empty only by reading the source (a
//! raw stream without hole information) are recorded beside the destination, so a resumed
//! run does not read them again either. (DESIGN.md says "an object that already exists is
//! never copied again"; with snapshots an object can exist half-way through its history,
//! hence the markers.) A per-object store lock keeps the background copy
//! and a client's copy-up from interleaving. [`run`] copies every object the source may hold
//! data in (asking it window by window, see `queue.rs`) with several
//! threads, a bandwidth limit and progress.
//! What it is not: it does not know migration states (that is `rbdm-migration`).
//!
//! Threads rather than futures: the store and every source stream are blocking, so an
//! executor would only add a thread pool under the same work (DESIGN.md asks for "futures";
//! scoped threads give the same overlap with less machinery).
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rbdm_extent::IntervalSet;
use rbdm_image::header::Header;
use rbdm_image::migration::MigrationRecord;
use rbdm_image::Image;
use rbdm_registry::{ExtentState, Point, SourceImage};
use rbdm_store::{Error as StoreError, SnapContext, SnapId, WriteOp};

mod queue;
use queue::Queue;

/// The xattr recording how far an object's copy got: a point index, or [`DONE`].
pub const MARKER: &str = "rbdm.migrated";
pub const DONE: &[u8] = b"done";
const LOCK: &str = "rbdm_migration_copy";
/// Beside the destination's header: omap keys of objects found empty by reading the source
/// (a raw stream without hole information), so a resumed run does not read them again.
const EMPTY_SET: &str = "rbdm_migration_empty";

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("reading the source")]
    Source(#[from] rbdm_registry::SourceError),
    #[error(transparent)]
    Image(#[from] rbdm_image::Error),
    #[error("destination object {object}")]
    Store { object: u64, source: StoreError },
    #[error("destination object {0}: another copy held it for too long")]
    LockTimeout(u64),
    #[error("stopped")]
    Stopped,
}

impl CopyError {
    pub fn errno(&self) -> i32 {
        match self {
            CopyError::Source(e) => e.errno(),
            CopyError::Image(e) => e.errno(),
            CopyError::Store { source, .. } => source.errno(),
            CopyError::LockTimeout(_) => 110,
            CopyError::Stopped => 4,
        }
    }
}

pub type Result<T, E = CopyError> = std::result::Result<T, E>;

/// One point of the destination's history: a snapshot (oldest first), then the head.
#[derive(Clone, Debug)]
struct TargetPoint {
    /// The destination's snapshot at this point; `None` for the head.
    snap: Option<SnapId>,
    source: Point,
    snapc: SnapContext,
    size: u64,
}

fn target_points(h: &Header, rec: &MigrationRecord) -> Vec<TargetPoint> {
    let mut out = Vec::new();
    let mut older: Vec<SnapId> = Vec::new();
    for s in h.snaps.values() {
        let source = rec
            .point_of(Some(s.id))
            .map(Point::Snap)
            .unwrap_or(Point::Head);
        let snapc = SnapContext {
            seq: older.last().copied().unwrap_or(0),
            snaps: older.iter().rev().copied().collect(),
        };
        out.push(TargetPoint {
            snap: Some(s.id),
            source,
            snapc,
            size: s.size,
        });
        older.push(s.id);
    }
    out.push(TargetPoint {
        snap: None,
        source: Point::Head,
        snapc: h.snap_context(),
        size: h.size,
    });
    out
}

/// Per source point: where it holds data, and what changed since the point before.
struct SourceView {
    data: Vec<IntervalSet>,
    changed: Vec<IntervalSet>,
}

fn source_index(p: Point, nsnaps: usize) -> usize {
    match p {
        Point::Snap(i) => i.min(nsnaps),
        Point::Head => nsnaps,
    }
}

fn source_view(source: &dyn SourceImage, extents: &[(u64, u64)]) -> Result<SourceView> {
    let npoints = source.snapshots().len() + 1;
    let mut data = vec![IntervalSet::new(); npoints];
    let mut changed = vec![IntervalSet::new(); npoints];
    for &(off, len) in extents {
        let per_point = source.list_snaps(off, len)?;
        let mut prev = IntervalSet::new();
        for (k, exts) in per_point.iter().enumerate().take(npoints) {
            let mut now = prev.clone();
            for e in exts {
                match e.state {
                    ExtentState::Data => {
                        now.insert(e.offset, e.len);
                        changed[k].insert(e.offset, e.len);
                    }
                    ExtentState::Zero => {
                        now.remove(e.offset, e.len);
                        changed[k].insert(e.offset, e.len);
                    }
                    ExtentState::Unchanged => {}
                }
            }
            // Past a point's size nothing exists.
            let size = if k + 1 < npoints {
                source.snapshots()[k].size
            } else {
                source.size()
            };
            now.remove(size, u64::MAX - size);
            data[k].union_with(&now.clip(off, len));
            prev = now;
        }
    }
    Ok(SourceView { data, changed })
}

/// Counters shared by the copies of one run, and its bandwidth budget.
#[derive(Default)]
pub struct Stats {
    pub bytes_read: AtomicU64,
    pub objects_written: AtomicU64,
    /// Objects [`run`] asked to copy (the rest the source said hold nothing).
    pub objects_visited: AtomicU64,
    /// Bytes per second; 0 = unlimited.
    limit: AtomicU64,
    started: OnceInstant,
}

/// The time of the first read of a run.
#[derive(Default)]
struct OnceInstant(std::sync::OnceLock<Instant>);

impl Stats {
    pub fn with_limit(limit: Option<u64>) -> Self {
        let s = Stats::default();
        s.limit.store(limit.unwrap_or(0), Ordering::Relaxed);
        s
    }

    /// Counts a read about to be made and, under a limit, waits until it is due, so no
    /// burst exceeds one read whatever the concurrency.
    fn reserve(&self, bytes: u64) {
        let total = self.bytes_read.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let limit = self.limit.load(Ordering::Relaxed);
        if limit == 0 {
            return;
        }
        let started = *self.started.0.get_or_init(Instant::now);
        let due = Duration::from_secs_f64(total as f64 / limit as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// Copies destination object `object_no` from `source`, unless done. `for_write`: a client
/// write follows, so the object is created (and marked) even where the source has nothing.
pub fn copy_object(
    image: &Image,
    source: &dyn SourceImage,
    rec: &MigrationRecord,
    object_no: u64,
    for_write: bool,
    stats: &Stats,
) -> Result<()> {
    let h = image.header()?;
    // The source is read-only, so what it holds for this object can be asked before the lock.
    let points = target_points(&h, rec);
    let max_size = points.iter().map(|p| p.size).max().unwrap_or(0);
    let extents = h.layout.object_extents_in_image(object_no, max_size);
    let owned = owned_points(&h, source, &extents)?;
    // A destination keeping the source's parent reads from that parent wherever the source
    // does: what the source does not own is not copied.
    if !for_write && owned.as_ref().is_some_and(|o| o.iter().all(|&b| !b)) {
        return Ok(());
    }
    // Reading to find zeros is reading: it counts against the bandwidth limit. The data found
    // is then mostly read from what the scan kept, but counted again (a source cannot say
    // which reads it served from memory), so the limit is never exceeded.
    let scan: u64 = extents.iter().map(|&(o, l)| source.scan_cost(o, l)).sum();
    if scan > 0 {
        stats.reserve(scan);
    }
    let view = source_view(source, &extents)?;
    let nothing = view.data.iter().all(IntervalSet::is_empty)
        && view.changed.iter().all(IntervalSet::is_empty);
    // Most objects of a sparse source hold nothing at any point: skip them without touching
    // the destination (no lock, no store round trip), so cost follows data.
    if !for_write && nothing && !image.parent_has_data(&h, object_no)? {
        if scan > 0 {
            note_empty(image, object_no)?;
        }
        return Ok(());
    }
    let plan = ObjectPlan {
        points,
        extents,
        view,
        owned,
        scanned: scan > 0,
    };
    let loc = image.data_loc(&h, object_no);
    let store = image.store();
    let cookie = format!("{}.{:?}", std::process::id(), std::thread::current().id());
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        match store.lock(&loc, LOCK, &cookie, "migration copy-up", true) {
            Ok(()) => break,
            Err(StoreError::Busy(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(StoreError::Busy(_)) => return Err(CopyError::LockTimeout(object_no)),
            Err(e) => {
                return Err(CopyError::Store {
                    object: object_no,
                    source: e,
                })
            }
        }
    }
    let result = copy_locked(image, &h, source, &plan, object_no, for_write, stats);
    let _ = store.unlock(&loc, LOCK, &cookie);
    result
}

/// Per source point, whether the source owns anything in `extents`; `None` when the
/// destination has no parent (everything is copied) or the source cannot tell.
fn owned_points(
    h: &Header,
    source: &dyn SourceImage,
    extents: &[(u64, u64)],
) -> Result<Option<Vec<bool>>> {
    if h.parent.is_none() && h.snaps.values().all(|s| s.parent.is_none()) {
        return Ok(None);
    }
    let mut all: Option<Vec<bool>> = None;
    for &(off, len) in extents {
        let Some(per_point) = source.owns(off, len)? else {
            return Ok(None);
        };
        match &mut all {
            None => all = Some(per_point),
            Some(a) => a.iter_mut().zip(per_point).for_each(|(a, b)| *a |= b),
        }
    }
    Ok(all)
}

thread_local! {
    /// Read buffers given back by written ops, reused by this thread's next reads: fresh
    /// multi-MiB buffers cost a page fault and a page clear per 4 KiB (~10% of an import).
    static BUFFERS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Buffers kept per thread (each at most one read, itself at most one object).
const KEPT_BUFFERS: usize = 1;

/// A zeroed buffer of `len` bytes, reused when this thread has one. New ones get room for
/// `room` bytes (an object), so a later, longer read does not reallocate.
fn read_buffer(len: usize, room: usize) -> Vec<u8> {
    let mut buf = BUFFERS
        .with(|b| b.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(len.max(room)));
    buf.clear();
    buf.resize(len, 0);
    buf
}

/// Takes back the data buffers of a finished op for [`read_buffer`].
fn recycle(op: WriteOp) {
    BUFFERS.with(|b| {
        let mut kept = b.borrow_mut();
        for o in op.ops {
            if let rbdm_store::Op::Write { data, .. } = o {
                if kept.len() < KEPT_BUFFERS {
                    kept.push(data);
                }
            }
        }
    });
}

/// Records that object `object_no` was read from the source and found empty.
fn note_empty(image: &Image, object_no: u64) -> Result<()> {
    let op = WriteOp::new()
        .create()
        .omap_set([(format!("{object_no:016x}"), Vec::new())]);
    image
        .store()
        .operate(&image.side_loc(EMPTY_SET), &op, &SnapContext::default())
        .map_err(|e| CopyError::Store {
            object: object_no,
            source: e,
        })
}

/// True when an earlier run read object `object_no` from the source and found it empty.
fn known_empty(image: &Image, object_no: u64) -> Result<bool> {
    let key = format!("{object_no:016x}");
    match image
        .store()
        .omap_get_keys(&image.side_loc(EMPTY_SET), &[key.as_str()])
    {
        Ok(found) => Ok(!found.is_empty()),
        Err(StoreError::NoObject { .. }) => Ok(false),
        Err(e) => Err(CopyError::Store {
            object: object_no,
            source: e,
        }),
    }
}

/// Drops what runs recorded beside the destination (at commit or abort).
pub fn forget_progress(image: &Image) -> Result<()> {
    let op = WriteOp::new().remove();
    match image
        .store()
        .operate(&image.side_loc(EMPTY_SET), &op, &SnapContext::default())
    {
        Ok(()) | Err(StoreError::NoObject { .. }) => Ok(()),
        Err(e) => Err(CopyError::Store {
            object: 0,
            source: e,
        }),
    }
}

/// True when an earlier copy finished object `object_no`: its done marker is set, or it was
/// read and found empty.
fn already_done(image: &Image, h: &Header, object_no: u64) -> Result<bool> {
    let loc = image.data_loc(h, object_no);
    match image.store().get_xattr(&loc, MARKER) {
        Ok(v) => Ok(v == DONE),
        Err(StoreError::NoObject { .. } | StoreError::NoKey { .. }) => {
            known_empty(image, object_no)
        }
        Err(e) => Err(CopyError::Store {
            object: object_no,
            source: e,
        }),
    }
}

/// Where a previous copy of this object stopped: `None` if finished, else the first point to do.
fn resume_point(image: &Image, h: &Header, object_no: u64) -> Result<Option<usize>> {
    let loc = image.data_loc(h, object_no);
    let err = |e| CopyError::Store {
        object: object_no,
        source: e,
    };
    match image.store().get_xattr(&loc, MARKER) {
        Err(StoreError::NoObject { .. }) => Ok(Some(0)),
        Ok(v) if v == DONE => Ok(None),
        Ok(v) => {
            let t: [u8; 8] = v
                .try_into()
                .map_err(|_| err(StoreError::Corrupt(format!("{loc}: bad {MARKER} xattr"))))?;
            Ok(Some(u64::from_le_bytes(t) as usize + 1))
        }
        // An object without a marker was written by a client after a copy that found nothing.
        Err(StoreError::NoKey { .. }) => Ok(None),
        Err(e) => Err(err(e)),
    }
}

/// What one object's copy writes, worked out from the source before the lock.
struct ObjectPlan {
    points: Vec<TargetPoint>,
    extents: Vec<(u64, u64)>,
    view: SourceView,
    /// Per source point: does the source own data here (see [`owned_points`]).
    owned: Option<Vec<bool>>,
    /// `list_snaps` read the data to find zeros (so an empty result is worth recording).
    scanned: bool,
}

fn copy_locked(
    image: &Image,
    h: &Header,
    source: &dyn SourceImage,
    plan: &ObjectPlan,
    object_no: u64,
    for_write: bool,
    stats: &Stats,
) -> Result<()> {
    let Some(start) = resume_point(image, h, object_no)? else {
        return Ok(());
    };
    let ObjectPlan {
        points,
        extents,
        view,
        owned,
        scanned,
    } = plan;
    let nsnaps = source.snapshots().len();
    let loc = image.data_loc(h, object_no);
    let mut exists = start > 0;
    for (t, p) in points.iter().enumerate() {
        let sp = source_index(p.source, nsnaps);
        let is_head = t + 1 == points.len();
        let owned_here = owned.as_ref().map(|o| o.get(sp).copied().unwrap_or(true));
        // Not created yet and not owned by the source at this point: the parent shows through
        // in both images, so nothing is written (a client's copy-up at the head still is).
        if t >= start && !exists && owned_here == Some(false) && !(is_head && for_write) {
            continue;
        }
        // An object created at this point gets everything the point holds, not just changes.
        let changed = if t == 0 || !exists {
            IntervalSet::from_ranges(extents.iter().copied())
        } else {
            let prev = source_index(points[t - 1].source, nsnaps);
            let mut c = IntervalSet::new();
            for k in prev + 1..=sp.max(prev) {
                c.union_with(&view.changed[k]);
            }
            c
        };
        if t < start {
            continue;
        }
        let mut op = WriteOp::new();
        let mut wrote = false;
        for (off, len) in changed.iter() {
            for (doff, dlen) in view.data[sp].intersection(off, len) {
                stats.reserve(dlen);
                let mut buf = read_buffer(dlen as usize, h.layout.object_size as usize);
                source.read(p.source, doff, &mut buf)?;
                let mapped: Vec<_> = h
                    .layout
                    .map_extent(doff, dlen)
                    .into_iter()
                    .filter(|e| e.object_no == object_no)
                    .collect();
                wrote |= !mapped.is_empty();
                // Unstriped (the usual case): the buffer is the write, moved rather than copied.
                if let [e] = mapped.as_slice() {
                    if e.buf_offset == 0 && e.len == dlen {
                        op = op.push(rbdm_store::Op::Write {
                            offset: e.offset,
                            data: buf,
                        });
                        continue;
                    }
                }
                for e in mapped {
                    op = op.write(
                        e.offset,
                        &buf[e.buf_offset as usize..(e.buf_offset + e.len) as usize],
                    );
                }
            }
            if exists {
                for (zoff, zlen) in view.data[sp].gaps(off, len) {
                    for e in h
                        .layout
                        .map_extent(zoff, zlen)
                        .into_iter()
                        .filter(|e| e.object_no == object_no)
                    {
                        op = op.zero(e.offset, e.len);
                    }
                }
            }
        }
        // A destination that keeps its source's parent: where the source holds nothing here
        // but the parent does, the source was hiding the parent (a discard), so the object
        // must exist to keep hiding it.
        let hides_parent = !wrote
            && !exists
            && owned_here.unwrap_or(t == 0)
            && image.parent_has_data_at(h, p.snap, object_no)?;
        if !(wrote || exists || hides_parent || is_head && for_write) {
            continue;
        }
        let marker = if is_head {
            DONE.to_vec()
        } else {
            (t as u64).to_le_bytes().to_vec()
        };
        let op = op.create().set_xattr(MARKER, &marker);
        let done = image.store().operate(&loc, &op, &p.snapc);
        recycle(op);
        done.map_err(|e| CopyError::Store {
            object: object_no,
            source: e,
        })?;
        exists = true;
    }
    if exists {
        stats.objects_written.fetch_add(1, Ordering::Relaxed);
    } else if *scanned {
        // Read and found all zeros: nothing marks it in the destination, so remember it.
        note_empty(image, object_no)?;
    }
    Ok(())
}

/// How a whole run goes.
pub struct RunOptions {
    /// Objects copied at once.
    pub concurrency: usize,
    /// Bytes per second read from the source; `None`: unlimited.
    pub bandwidth_limit: Option<u64>,
    /// Objects below this are known to be done (a resumed run's watermark).
    pub start: u64,
    /// An earlier run stopped (killed or failed): objects past `start` it finished carry a
    /// done marker, checked before asking the source anything, so they are never re-read.
    pub resumed: bool,
}

/// Copies every destination object from `opts.start` on that the source may hold data in
/// (every object when the source cannot tell). `progress(done, total)` is called as
/// objects finish; `checkpoint(watermark)` now and then with the number below which every
/// object is done, for the caller to persist.
pub fn run(
    image: &Image,
    source: &dyn SourceImage,
    rec: &MigrationRecord,
    opts: &RunOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
    checkpoint: &(dyn Fn(u64) + Sync),
    stop: &AtomicBool,
) -> Result<Stats> {
    let h = image.header()?;
    let total = h.layout.object_count(
        h.size
            .max(h.snaps.values().map(|s| s.size).max().unwrap_or(0)),
    );
    // A parent of the destination may hold data where the source holds none (its copy
    // hides or keeps the parent's data), so then every object is visited.
    let sparse = h.parent.is_none() && h.snaps.values().all(|s| s.parent.is_none());
    let queue = Queue::new(source, h.layout, opts.start, total, sparse);
    let failed: Mutex<Option<CopyError>> = Mutex::new(None);
    let stats = Stats::with_limit(opts.bandwidth_limit);
    let last_checkpoint = Mutex::new(Instant::now());
    let fail = |e: CopyError| {
        let mut f = failed.lock().unwrap_or_else(|e| e.into_inner());
        f.get_or_insert(e);
    };
    std::thread::scope(|scope| {
        for _ in 0..opts.concurrency.max(1) {
            scope.spawn(|| loop {
                if stop.load(Ordering::Relaxed)
                    || failed.lock().map(|f| f.is_some()).unwrap_or(true)
                {
                    return;
                }
                let n = match queue.next() {
                    Ok(Some(n)) => n,
                    Ok(None) => return,
                    Err(e) => return fail(e),
                };
                stats.objects_visited.fetch_add(1, Ordering::Relaxed);
                let copied = match opts.resumed {
                    true => already_done(image, &h, n).and_then(|done| match done {
                        true => Ok(()),
                        false => copy_object(image, source, rec, n, false, &stats),
                    }),
                    false => copy_object(image, source, rec, n, false, &stats),
                };
                if let Err(e) = copied {
                    return fail(e);
                }
                let watermark = queue.finish(n);
                progress(
                    watermark.max(n.min(watermark + opts.concurrency as u64)),
                    total,
                );
                let mut last = last_checkpoint.lock().unwrap_or_else(|e| e.into_inner());
                if last.elapsed() > Duration::from_secs(1) {
                    *last = Instant::now();
                    checkpoint(watermark);
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        checkpoint(queue.done_below());
        return Err(e);
    }
    if stop.load(Ordering::Relaxed) {
        return Err(CopyError::Stopped);
    }
    checkpoint(total);
    progress(total, total);
    Ok(stats)
}

/// Extents holding data at a source point (image offsets), from `list_snaps` alone.
pub fn allocated_at(
    source: &dyn SourceImage,
    point: Point,
    offset: u64,
    len: u64,
) -> Result<Vec<(u64, u64)>> {
    let view = source_view(source, &[(offset, len)])?;
    let k = source_index(point, source.snapshots().len());
    Ok(view.data[k].iter().collect())
}
