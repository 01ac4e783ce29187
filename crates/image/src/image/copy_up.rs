//! Copy-up: a clone's object created from the parent's data before its first write.

use rbdm_extent::{IntervalSet, ObjectState};
use rbdm_store::{Error as StoreError, SnapContext, WriteOp, HEAD};

use super::Image;
use crate::finishers::{self, COPY_UP};
use crate::header::{Header, ParentLink};
use crate::intent;
use crate::{Error, Result};

impl Image {
    /// Creates the object from the parent's data, unless it exists. Written with an empty snap
    /// context, so snapshots taken since the clone see the same bytes they read through before.
    pub(super) fn copy_up(&self, h: &Header, link: &ParentLink, object_no: u64) -> Result<()> {
        let loc = self.data_loc(h, object_no);
        match self.store().stat(&loc, HEAD) {
            Ok(_) => return Ok(()),
            Err(StoreError::NoObject { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let parent = self.parent_image(link)?;
        let mut op = WriteOp::new().create_exclusive();
        // Snapshots read this object too once it exists, and one taken before a shrink saw
        // more of the parent than the head does: copy what the widest view needs.
        let same = |p: &ParentLink| {
            p.pool_id == link.pool_id && p.image_id == link.image_id && p.snap_id == link.snap_id
        };
        let reach = h
            .snaps
            .values()
            .filter_map(|s| {
                s.parent
                    .as_ref()
                    .filter(|p| same(p))
                    .map(|p| p.overlap.min(s.size))
            })
            .fold(link.overlap.min(h.size), u64::max);
        for (off, len) in h.layout.object_extents_in_image(object_no, reach) {
            for (doff, dlen) in parent.allocated_extents(off, len)? {
                let mut buf = vec![0u8; dlen as usize];
                parent.read(doff, &mut buf)?;
                // A piece of one object's image range is contiguous inside the object too.
                let (_, in_object) = h.layout.map_offset(doff);
                op = op.write(in_object, &buf);
            }
        }
        // The snapshots' maps first, as librbd's copy-up updates the object maps before it
        // writes: a kill between the two then leaves a map saying "may exist" over a missing
        // object (reads fall through to the parent, still linked), never a written object a
        // map hides; a re-run finds the object and returns early above.
        self.mark_snapshot_maps(h, object_no)?;
        let head_reach = link.overlap.min(h.size);
        // The head must not see what only the snapshots saw: that part is zeroed with the
        // head's snap context, which preserves the copied bytes in a clone for them. Two
        // writes: the intent makes the next open do the second if a kill comes between.
        let mut zero = Vec::new();
        if reach > head_reach {
            let wide = IntervalSet::from_ranges(h.layout.object_extents_in_image(object_no, reach));
            for (off, len) in wide.intersection(head_reach, reach - head_reach) {
                for e in h.layout.map_extent(off, len) {
                    zero.push((e.offset, e.len));
                }
            }
        }
        let arg = object_no.to_string();
        let _live = match zero.is_empty() {
            true => None,
            false => Some(self.copy_up_begin(&arg, &zero)?),
        };
        match self.store().operate(&loc, &op, &SnapContext::default()) {
            Ok(()) => {}
            Err(StoreError::Exists(_)) if zero.is_empty() => return Ok(()),
            Err(StoreError::Exists(_)) => return self.intent_end(COPY_UP, &arg),
            Err(e) => return Err(e.into()),
        }
        if !zero.is_empty() {
            let mut op = WriteOp::new();
            for (o, l) in &zero {
                op = op.zero(*o, *l);
            }
            self.store().operate(&loc, &op, &h.snap_context())?;
            self.intent_end(COPY_UP, &arg)?;
        }
        Ok(())
    }

    /// The intent of a two-write copy-up. Another thread of this process copying the same
    /// object up holds it (no other process can: it would hold the exclusive lock); waiting
    /// for it keeps our write after both of its writes.
    fn copy_up_begin(&self, arg: &str, zero: &[(u64, u64)]) -> Result<intent::OpLock> {
        let data = finishers::ranges(zero);
        let mut waited = 0;
        loop {
            match self.intent_begin(COPY_UP, arg, &data) {
                Err(Error::Busy(_)) if waited < 10_000 => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    waited += 1;
                }
                r => return r,
            }
        }
    }

    /// A copy-up is visible in the snapshots that read through to the parent (that is what
    /// makes flatten deep), so their object maps must now say the object exists.
    fn mark_snapshot_maps(&self, h: &Header, object_no: u64) -> Result<()> {
        if !Self::has_object_map(h) {
            return Ok(());
        }
        for s in h.snaps.values().filter(|s| s.parent.is_some()) {
            let mut m = self.load_map(h, Some(s.id), s.size)?;
            if m.get(object_no) == ObjectState::Nonexistent
                && m.set(object_no, ObjectState::ExistsClean)
            {
                self.save_map(Some(s.id), &m)?;
            }
        }
        Ok(())
    }
}
