//! The `native` source format: an rbdm image in our own store, at a snapshot or its head.
//!
//! What it is for: import-only migration from an image named by pool name or id, namespace,
//! image name or id (an image in the trash is found by id), and snapshot name or id. The
//! source's snapshots up to and including the chosen one become the target's snapshots (as
//! Ceph does: `snap_name: "2"` gives the target `@1` and `@2`), and the target's head holds
//! the chosen snapshot's data.
//! What it is not: the same-store migration path (that links two images in one store and is
//! driven by `rbdm-migration`); this only reads.
#![forbid(unsafe_code)]

use rbdm_extent::IntervalSet;
use rbdm_image::{Image, PoolSpec, Rbd, SnapInfo};
use rbdm_registry::{
    ExtentState, FormatPlugin, OpenContext, Point, Result, SnapExtent, SourceError, SourceImage,
    SourceSnapshot,
};
pub use rbdm_spec::{NativeSpec, PoolRef, SnapRef};

/// Which image and point to read, already resolved from the spec's JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeSource {
    pub pool: PoolRef,
    pub namespace: String,
    pub image_name: String,
    pub image_id: Option<String>,
    pub snap: Option<SnapRef>,
}

impl From<NativeSpec> for NativeSource {
    fn from(s: NativeSpec) -> Self {
        NativeSource {
            pool: s.pool,
            namespace: s.pool_namespace,
            image_name: s.image_name,
            image_id: s.image_id,
            snap: s.snap,
        }
    }
}

inventory::submit!(FormatPlugin {
    type_name: "native",
    description: "an image in this store, at its head or a snapshot (pool_name|pool_id, image_name, snap_name|snap_id)",
    open: open_spec,
});

/// Referenced by `rbdm-plugins` so the linker keeps this crate and its registration.
#[inline(never)]
pub fn link() {}

fn open_spec(spec: &serde_json::Value, ctx: &OpenContext) -> Result<Box<dyn SourceImage>> {
    let parsed =
        NativeSpec::from_json(spec, "").map_err(|e| SourceError::BadSpec(e.to_string()))?;
    let rbd = ctx.rbd().map_err(|e| {
        SourceError::Invalid(format!("the native format reads an image in a store: {e}"))
    })?;
    Ok(Box::new(open(rbd, &parsed.into())?))
}

/// An open native source: one read-only handle per point, and per point the extents that
/// changed since the previous point (computed once from the object maps, never from data).
pub struct NativeImage {
    points: Vec<Image>,
    snapshots: Vec<SourceSnapshot>,
    changes: Vec<Changes>,
}

/// Of one point: where it holds data, and where it differs from the point before.
struct Changes {
    data: IntervalSet,
    changed: IntervalSet,
    size: u64,
}

pub fn open(rbd: &Rbd, src: &NativeSource) -> Result<NativeImage> {
    let pool = match &src.pool {
        PoolRef::Name(n) => n.clone(),
        PoolRef::Id(id) => rbd
            .store()
            .pool_name(*id)
            .map_err(|e| not_found(format!("pool id {id}: {}", rbdm_image::report(&e))))?,
    };
    let pool_spec = PoolSpec::new(&pool, &src.namespace);
    let head = open_point(rbd, &pool_spec, src, None)?;
    let all_snaps = head.snap_list().map_err(image_err)?;
    let upto = chosen_snaps(&all_snaps, src.snap.as_ref())?;
    let mut points = Vec::with_capacity(upto.len() + 1);
    for s in &upto {
        points.push(open_point(rbd, &pool_spec, src, Some(&s.name))?);
    }
    let snapshots: Vec<SourceSnapshot> = upto
        .iter()
        .map(|s| SourceSnapshot {
            name: s.name.clone(),
            size: s.size,
            timestamp: Some(s.timestamp),
        })
        .collect();
    // With a chosen snapshot the head is that snapshot again: nothing changes after it.
    match upto.last().filter(|_| src.snap.is_some()) {
        Some(last) => points.push(open_point(rbd, &pool_spec, src, Some(&last.name))?),
        None => points.push(head),
    }
    let changes = compute_changes(&points, &upto)?;
    Ok(NativeImage {
        points,
        snapshots,
        changes,
    })
}

fn open_point(rbd: &Rbd, pool: &PoolSpec, src: &NativeSource, snap: Option<&str>) -> Result<Image> {
    let r = match &src.image_id {
        // Quiet opens: a destination reading its source must not keep the source "in use".
        Some(id) => rbd.open_quiet(pool, None, Some(id), snap),
        None => rbd.open_quiet(pool, Some(&src.image_name), None, snap),
    };
    r.map_err(|e| match e.errno() {
        ENOENT => not_found(format!("image {}/{}: {e}", pool, src.image_name)),
        _ => image_err(e),
    })
}

/// The snapshots up to and including the chosen one, oldest first.
fn chosen_snaps(all: &[SnapInfo], chosen: Option<&SnapRef>) -> Result<Vec<SnapInfo>> {
    let Some(chosen) = chosen else {
        return Ok(all.to_vec());
    };
    let pos = all.iter().position(|s| match chosen {
        SnapRef::Name(n) => &s.name == n,
        SnapRef::Id(id) => s.id == *id,
    });
    match pos {
        Some(i) => Ok(all[..=i].to_vec()),
        None => Err(not_found(format!(
            "snapshot {chosen:?} not found in the source image"
        ))),
    }
}

/// Per point: its data from the allocation map, and what changed since the point before.
/// Changes come from `Image::diff`, widened by every range whose allocation changed (a
/// discard after a snapshot is not always in the diff) and by growth since the previous point.
fn compute_changes(points: &[Image], snaps: &[SnapInfo]) -> Result<Vec<Changes>> {
    let mut out = Vec::with_capacity(points.len());
    let mut prev_data = IntervalSet::new();
    let mut prev_size = 0;
    for (i, img) in points.iter().enumerate() {
        let from = if i == 0 { None } else { snaps.get(i - 1) };
        let size = img.size();
        let data = IntervalSet::from_ranges(img.allocated_extents(0, size).map_err(image_err)?)
            .clip(0, size);
        // The same snapshot again (the head of a source read at a snapshot): no change.
        if from.is_some_and(|f| img.snap_id() == Some(f.id)) {
            prev_data = data.clone();
            out.push(Changes {
                data,
                changed: IntervalSet::new(),
                size,
            });
            continue;
        }
        let from = from.map(|s| s.name.as_str());
        let mut changed = IntervalSet::from_ranges(
            img.diff(from, false)
                .map_err(image_err)?
                .iter()
                .map(|d| (d.offset, d.len)),
        );
        if size > prev_size {
            changed.insert(prev_size, size - prev_size);
        }
        let old = prev_data.clip(0, size);
        for (set, minus) in [(&data, &old), (&old, &data)] {
            let mut only = set.clone();
            only.subtract(minus);
            changed.union_with(&only);
        }
        prev_size = size;
        prev_data = data.clone();
        out.push(Changes {
            data,
            changed,
            size,
        });
    }
    Ok(out)
}

impl SourceImage for NativeImage {
    fn format(&self) -> &str {
        "native"
    }
    fn size(&self) -> u64 {
        self.points.last().map_or(0, Image::size)
    }
    fn snapshots(&self) -> Vec<SourceSnapshot> {
        self.snapshots.clone()
    }
    fn read(&self, point: Point, offset: u64, buf: &mut [u8]) -> Result<()> {
        let img = self.point(point)?;
        let size = img.size();
        buf.fill(0);
        if offset >= size {
            return Ok(());
        }
        let n = buf.len().min((size - offset) as usize);
        img.read(offset, &mut buf[..n]).map_err(image_err)
    }
    fn owns(&self, offset: u64, len: u64) -> Result<Option<Vec<bool>>> {
        let mut out = Vec::with_capacity(self.points.len());
        let mut any_parent = false;
        for img in &self.points {
            let owned = img.owns_range(offset, len).map_err(image_err)?;
            any_parent |= owned.is_some();
            // A point without a parent owns whatever it has.
            out.push(owned.unwrap_or(true));
        }
        Ok(any_parent.then_some(out))
    }
    fn list_snaps(&self, offset: u64, len: u64) -> Result<Vec<Vec<SnapExtent>>> {
        Ok(self
            .changes
            .iter()
            .enumerate()
            .map(|(i, c)| point_extents(c, i == 0, offset, len))
            .collect())
    }
}

impl NativeImage {
    fn point(&self, point: Point) -> Result<&Image> {
        let i = match point {
            Point::Snap(i) if i < self.snapshots.len() => i,
            Point::Snap(i) => {
                return Err(SourceError::Invalid(format!(
                    "no snapshot #{i} in the source"
                )))
            }
            Point::Head => self.points.len() - 1,
        };
        Ok(&self.points[i])
    }
}

/// Sorted extents covering `[offset, offset+len)` clipped to the point's size: changed data,
/// changed zeros, and (after the first point) everything else unchanged.
fn point_extents(c: &Changes, first: bool, offset: u64, len: u64) -> Vec<SnapExtent> {
    let end = offset.saturating_add(len).min(c.size);
    if offset >= end {
        return Vec::new();
    }
    let span = end - offset;
    let mut out = Vec::new();
    let changed = if first {
        IntervalSet::from_ranges([(offset, span)])
    } else {
        c.changed.clip(offset, span)
    };
    for (o, l) in changed.gaps(offset, span) {
        out.push(SnapExtent {
            offset: o,
            len: l,
            state: ExtentState::Unchanged,
        });
    }
    for (co, cl) in changed.iter() {
        for (o, l) in c.data.intersection(co, cl) {
            out.push(SnapExtent {
                offset: o,
                len: l,
                state: ExtentState::Data,
            });
        }
        for (o, l) in c.data.gaps(co, cl) {
            out.push(SnapExtent {
                offset: o,
                len: l,
                state: ExtentState::Zero,
            });
        }
    }
    out.sort_by_key(|e| e.offset);
    out
}

const ENOENT: i32 = 2;

fn image_err(e: rbdm_image::Error) -> SourceError {
    match e.errno() {
        ENOENT => SourceError::NotFound(rbdm_image::report(&e)),
        _ => SourceError::Invalid(rbdm_image::report(&e)),
    }
}

fn not_found(msg: String) -> SourceError {
    SourceError::NotFound(msg)
}
