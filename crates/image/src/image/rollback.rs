//! Rollback of the head to a snapshot.

use rbdm_extent::{ObjectMap, ObjectState};
use rbdm_store::{Error as StoreError, SnapContext, WriteOp};

use super::{ignore_not_found, Image};
use crate::finishers::{self, ROLLBACK};
use crate::header::{Header, SnapMeta};
use crate::{Progress, Result};

impl Image {
    pub fn snap_rollback(&self, name: &str, progress: Progress) -> Result<()> {
        self.check_head("roll back")?;
        let sm = self.snap_meta(name)?;
        let _gate = self.io_gate.write().unwrap_or_else(|e| e.into_inner());
        let old = self.begin_change()?;
        // Which objects exist, read before the size changes and the head map with it.
        let maps = if Self::has_object_map(&old) {
            Some((
                self.load_map(&old, Some(sm.id), sm.size)?,
                self.with_head_map(&old, |m| (false, m.clone()))?
                    .expect("map"),
            ))
        } else {
            None
        };
        // Recorded before the size changes: a rollback cut short is redone by the next open,
        // so the head never shows a mix of the snapshot and what it had.
        let arg = sm.id.to_string();
        let _live = self.intent_begin(ROLLBACK, &arg, &finishers::two(sm.id, old.size))?;
        self.rollback_steps(&sm, old.size, maps, progress)?;
        self.intent_end(ROLLBACK, &arg)
    }

    /// The steps of a rollback to `sm` of a head of `old_size` bytes; each may run again.
    /// `maps` (the snapshot's and the head's object maps, read before the size changed) say
    /// which objects to visit; without them, every object the store has of this image.
    pub(crate) fn rollback_steps(
        &self,
        sm: &SnapMeta,
        old_size: u64,
        maps: Option<(ObjectMap, ObjectMap)>,
        progress: Progress,
    ) -> Result<()> {
        // The size first, so the object map covers every object the rollback recreates.
        self.update_header(|hh| {
            hh.size = sm.size;
            hh.parent = sm.parent.clone();
            Ok(())
        })?;
        let h = self.header()?;
        let snapc = h.snap_context();
        let count = h.layout.object_count(old_size.max(sm.size));
        let visit: Vec<u64> = match &maps {
            Some((at_snap, head)) => (0..count)
                .filter(|&i| at_snap.get(i).may_exist() || head.get(i).may_exist())
                .collect(),
            None => self
                .own_objects(&h, true)?
                .into_iter()
                .map(|(no, _)| no)
                .filter(|&no| no < count)
                .collect(),
        };
        let total = visit.len() as u64;
        for (i, object_no) in visit.into_iter().enumerate() {
            progress(i as u64, total);
            self.rollback_object(&h, sm, object_no, &snapc)?;
        }
        progress(total, total);
        Ok(())
    }

    fn rollback_object(
        &self,
        h: &Header,
        sm: &SnapMeta,
        object_no: u64,
        snapc: &SnapContext,
    ) -> Result<()> {
        let loc = self.data_loc(h, object_no);
        match self
            .store()
            .sparse_read(&loc, sm.id, 0, h.layout.object_size)
        {
            Ok(extents) => {
                let size = self.store().stat(&loc, sm.id)?.size;
                let mut op = WriteOp::new().create().truncate(0);
                for (off, data) in &extents {
                    op = op.write(*off, data);
                }
                self.store().operate(&loc, &op.truncate(size), snapc)?;
                self.set_object_state(h, object_no, ObjectState::Exists)
            }
            Err(StoreError::NoObject { .. }) => {
                ignore_not_found(self.store().operate(&loc, &WriteOp::new().remove(), snapc))?;
                self.set_object_state(h, object_no, ObjectState::Nonexistent)
            }
            Err(e) => Err(e.into()),
        }
    }
}
