//! What holds data: allocated extents, `du` and `diff`.

use std::sync::Arc;

use rbdm_cls::header::flags;
use rbdm_extent::{IntervalSet, ObjectState};
use rbdm_store::{Error as StoreError, Locator, SnapId, HEAD};

use super::Image;
use crate::header::{Header, ParentLink, SnapMeta};
use crate::migration::{MigrationRecord, MigrationSource};
use crate::{DiffExtent, DuEntry, Error, Layout, Result};

/// Windows of at most this many objects ask each object rather than list the pool.
const ASK_EACH_UP_TO: u64 = 64;

impl Image {
    /// Objects that may hold bytes of `[offset, offset+len)`.
    pub(super) fn objects_in(
        &self,
        layout: &Layout,
        size: u64,
        offset: u64,
        len: u64,
    ) -> std::ops::Range<u64> {
        let count = layout.object_count(size);
        if len == 0 || count == 0 {
            return 0..0;
        }
        let period = layout.period();
        let first = offset / period * layout.stripe_count;
        let last = ((offset + len - 1) / period + 1) * layout.stripe_count;
        first.min(count)..last.min(count)
    }

    /// Extents of `[offset, offset+len)` that hold data (at the open snapshot), for sparse
    /// export and NBD block status: from the object map and the objects' sparse maps, never
    /// by reading data. Includes data read through from a parent or a migration source.
    pub fn allocated_extents(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        let h = self.header()?;
        let (size, parent) = self.view(&h)?;
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let source = self.migration_source(&h)?;
        let window = self.objects_in(&h.layout, size, offset, end - offset);
        let candidates = self.candidate_objects(&h, size, source.is_none(), window)?;
        let (snap, os) = (self.read_snap(), h.layout.object_size);
        let mut out = IntervalSet::new();
        // Image bytes of objects that exist: those never read through.
        let mut own = IntervalSet::new();
        for (object_no, loc) in candidates {
            let extents = match self.store().map_extents(&loc, snap, 0, os) {
                Ok(extents) => extents,
                Err(StoreError::NoObject { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            for (o, l) in extents {
                for (img, n) in h.layout.object_image_extents(object_no, o, l) {
                    out.insert(img, n);
                }
            }
            for (img, n) in h.layout.object_image_extents(object_no, 0, os) {
                own.insert(img, n);
            }
        }
        // The rest reads through: asked once for the whole window, not once an object.
        let through = self.read_through(source.as_ref(), parent.as_ref(), offset, end)?;
        let mut through = IntervalSet::from_ranges(through);
        through.subtract(&own);
        for (o, l) in through.iter() {
            out.insert(o, l);
        }
        Ok(out.intersection(offset, end - offset))
    }

    /// Extents of `[offset, end)` the migration source, else the parent, holds.
    fn read_through(
        &self,
        source: Option<&(MigrationRecord, Arc<dyn MigrationSource>)>,
        parent: Option<&ParentLink>,
        offset: u64,
        end: u64,
    ) -> Result<Vec<(u64, u64)>> {
        if let Some((rec, src)) = source {
            return src.allocated(self.migration_point(rec), offset, end - offset);
        }
        match parent {
            Some(link) if offset < end.min(link.overlap) => self
                .parent_image(link)?
                .allocated_extents(offset, end.min(link.overlap) - offset),
            _ => Ok(Vec::new()),
        }
    }

    /// Objects of `window` that may exist at the open snapshot, with their locators: from a
    /// valid object map when `use_map`; else, for a window of more than a few objects, from
    /// one listing of the image's data objects, so the cost follows what exists rather than
    /// the virtual size. A short window (NBD block status) asks each object instead of
    /// listing the whole pool.
    fn candidate_objects(
        &self,
        h: &Header,
        size: u64,
        use_map: bool,
        window: std::ops::Range<u64>,
    ) -> Result<Vec<(u64, Locator)>> {
        let valid_map = Self::has_object_map(h) && h.flags & flags::OBJECT_MAP_INVALID == 0;
        if use_map && valid_map {
            let map = self.load_map(h, self.snap_id, size)?;
            return Ok(window
                .filter(|&no| map.get(no).may_exist())
                .map(|no| (no, self.data_loc(h, no)))
                .collect());
        }
        if window.end - window.start <= ASK_EACH_UP_TO {
            return Ok(window.map(|no| (no, self.data_loc(h, no))).collect());
        }
        // A snapshot may be served by an object whose head was removed since.
        let listed = self.own_objects(h, self.snap_id.is_some())?;
        Ok(listed
            .into_iter()
            .filter(|(no, _)| window.contains(no))
            .collect())
    }

    /// Objects of a version that changed since the previous snapshot (or all, at the first).
    fn changed_objects(&self, h: &Header, snap: Option<SnapId>, size: u64) -> Result<u64> {
        if Self::has_object_map(h) {
            let map = self.load_map(h, snap, size)?;
            return Ok((0..map.len())
                .filter(|&i| map.get(i) == ObjectState::Exists)
                .count() as u64);
        }
        // From one listing, not one stat per possible object: a sparse image may address
        // far more objects than it has.
        let s = snap.unwrap_or(HEAD);
        let count = h.layout.object_count(size);
        let mut n = 0;
        for (_, loc) in self
            .own_objects(h, snap.is_some())?
            .iter()
            .filter(|(no, _)| *no < count)
        {
            if self.store().stat(loc, s).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Snapshots oldest first, then the head; from the object map, not by reading data.
    pub fn du(&self) -> Result<Vec<DuEntry>> {
        let h = self.header()?;
        let used = |n: u64, size: u64| (n * h.layout.object_size).min(size);
        let mut out = Vec::new();
        for s in h.snaps.values() {
            let n = self.changed_objects(&h, Some(s.id), s.size)?;
            out.push(DuEntry {
                snap: Some(s.name.clone()),
                provisioned: s.size,
                used: used(n, s.size),
            });
        }
        let n = self.changed_objects(&h, None, h.size)?;
        out.push(DuEntry {
            snap: None,
            provisioned: h.size,
            used: used(n, h.size),
        });
        Ok(out)
    }

    /// Changes since `from_snap` (or all data when `None`) up to the open snapshot/head.
    pub fn diff(&self, from_snap: Option<&str>, whole_object: bool) -> Result<Vec<DiffExtent>> {
        let h = self.header()?;
        let (size, _) = self.view(&h)?;
        let from = match from_snap {
            Some(name) => Some(self.snap_meta(name)?),
            None => None,
        };
        if let (Some(f), Some(to)) = (&from, self.snap_id) {
            if f.id >= to {
                return Err(Error::Invalid(format!(
                    "snapshot '{}' is not older than the snapshot diffed to",
                    f.name
                )));
            }
        }
        let mut data = IntervalSet::new();
        let mut zero = IntervalSet::new();
        match &from {
            None if !whole_object => {
                data = IntervalSet::from_ranges(self.allocated_extents(0, size)?)
            }
            _ => self.diff_objects(&h, from.as_ref(), size, whole_object, &mut data, &mut zero)?,
        }
        zero.subtract(&data);
        let mut out: Vec<DiffExtent> = data
            .iter()
            .map(|(offset, len)| DiffExtent {
                offset,
                len,
                exists: true,
            })
            .chain(zero.iter().map(|(offset, len)| DiffExtent {
                offset,
                len,
                exists: false,
            }))
            .collect();
        out.sort_by_key(|e| e.offset);
        Ok(out)
    }

    fn diff_objects(
        &self,
        h: &Header,
        from: Option<&SnapMeta>,
        size: u64,
        whole_object: bool,
        data: &mut IntervalSet,
        zero: &mut IntervalSet,
    ) -> Result<()> {
        let to = self.read_snap();
        let candidates = self.diff_candidates(h, from, size)?;
        let os = h.layout.object_size;
        for object_no in candidates {
            let loc = self.data_loc(h, object_no);
            let at_to = match self.store().map_extents(&loc, to, 0, os) {
                Ok(e) => Some(IntervalSet::from_ranges(e)),
                Err(StoreError::NoObject { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            let (changed, from_size) = match from {
                None => (IntervalSet::from_ranges([(0, os)]), 0),
                Some(f) => match self.changed_in_object(&loc, f.id, to, os)? {
                    Some(c) => c,
                    None => continue,
                },
            };
            let have = at_to.clone().unwrap_or_default();
            if whole_object {
                if !changed.is_empty() {
                    let target = if at_to.is_some() {
                        &mut *data
                    } else {
                        &mut *zero
                    };
                    for (img, n) in h.layout.object_image_extents(object_no, 0, os) {
                        target.insert(img, n);
                    }
                }
                continue;
            }
            // Zero: bytes the old version had that changed and now read as zeros.
            for (o, l) in changed.intersection(0, from_size) {
                for (zo, zl) in have.gaps(o, l) {
                    for (img, n) in h.layout.object_image_extents(object_no, zo, zl) {
                        zero.insert(img, n);
                    }
                }
            }
            for (o, l) in have.iter() {
                for (so, sl) in changed.intersection(o, l) {
                    for (img, n) in h.layout.object_image_extents(object_no, so, sl) {
                        data.insert(img, n);
                    }
                }
            }
        }
        let clip = |s: &mut IntervalSet| s.remove(size, u64::MAX - size);
        clip(data);
        clip(zero);
        Ok(())
    }

    /// Objects that may differ: with fast-diff, those marked changed in any version after
    /// `from`, or gone since; without, every object.
    fn diff_candidates(&self, h: &Header, from: Option<&SnapMeta>, size: u64) -> Result<Vec<u64>> {
        let count = h
            .layout
            .object_count(size.max(from.map(|f| f.size).unwrap_or(0)));
        let Some(f) = from.filter(|_| Self::has_object_map(h)) else {
            return Ok((0..count).collect());
        };
        let to = self.snap_id;
        let mut changed = vec![false; count as usize];
        let later = h
            .snaps
            .range(f.id + 1..)
            .map(|(id, s)| (Some(*id), s.size))
            .filter(|(id, _)| to.is_none() || *id <= to);
        let versions: Vec<(Option<SnapId>, u64)> = later
            .chain(if to.is_none() {
                Some((None, h.size))
            } else {
                None
            })
            .collect();
        let from_map = self.load_map(h, Some(f.id), f.size)?;
        let to_map = match versions.last() {
            Some((id, sz)) => self.load_map(h, *id, *sz)?,
            None => from_map.clone(),
        };
        for (id, sz) in &versions {
            let m = self.load_map(h, *id, *sz)?;
            for (i, c) in changed.iter_mut().enumerate() {
                *c |= m.get(i as u64) == ObjectState::Exists;
            }
        }
        for (i, c) in changed.iter_mut().enumerate() {
            *c |= from_map.get(i as u64).may_exist() != to_map.get(i as u64).may_exist();
        }
        Ok((0..count).filter(|&i| changed[i as usize]).collect())
    }

    /// Ranges of one object that differ between snapshot `from` and version `to`, and the
    /// object's size at `from` (0 if it did not exist then); `None` if it exists in neither.
    pub(super) fn changed_in_object(
        &self,
        loc: &Locator,
        from: SnapId,
        to: SnapId,
        os: u64,
    ) -> Result<Option<(IntervalSet, u64)>> {
        let ss = match self.store().list_snaps(loc) {
            Ok(ss) => ss,
            Err(StoreError::NoObject { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let serving = |s: SnapId| ss.clones.iter().position(|c| c.id >= s);
        let from_idx = match serving(from) {
            Some(i) if ss.clones[i].snaps.contains(&from) => Some(i),
            Some(_) => None,
            None if ss.seq < from && ss.head_size.is_some() => Some(ss.clones.len()),
            None => None,
        };
        let to_idx = if to == HEAD {
            ss.clones.len()
        } else {
            serving(to).unwrap_or(ss.clones.len())
        };
        let Some(fi) = from_idx else {
            return Ok(Some((IntervalSet::from_ranges([(0, os)]), 0)));
        };
        let from_size = ss
            .clones
            .get(fi)
            .map(|c| c.size)
            .or(ss.head_size)
            .unwrap_or(0);
        // Equal through every newer version up to `to`, within the old size.
        let mut same = IntervalSet::from_ranges([(0, from_size)]);
        for c in &ss.clones[fi.min(to_idx)..to_idx] {
            let ov = IntervalSet::from_ranges(c.overlap.iter().copied());
            let mut s = IntervalSet::new();
            for (o, l) in same.iter() {
                for r in ov.intersection(o, l) {
                    s.insert(r.0, r.1);
                }
            }
            same = s;
        }
        let mut changed = IntervalSet::from_ranges([(0, os)]);
        changed.subtract(&same);
        Ok(Some((changed, from_size)))
    }
}
