//! Resize: growing, and shrinking with the trim of objects past the new end.

use rbdm_extent::ObjectState;
use rbdm_store::{Locator, WriteOp};

use super::{ignore_not_found, Image};
use crate::finishers::{self, RESIZE};
use crate::header::Header;
use crate::{Error, Progress, Result};

impl Image {
    pub fn resize(&self, size: u64, allow_shrink: bool, progress: Progress) -> Result<()> {
        let _gate = self.io_gate.write().unwrap_or_else(|e| e.into_inner());
        let h = self.begin_change()?;
        // Before any object is touched: a size the image cannot address changes nothing.
        h.check_size(size)?;
        if size < h.size && !allow_shrink {
            return Err(Error::Invalid(
                "shrinking an image is only allowed with the --allow-shrink flag".into(),
            ));
        }
        // Objects go before the size changes: a kill in between is finished forward by the
        // next open, so the head never shows a size with bytes of the other.
        let old = h.size;
        let _live = self.intent_begin(RESIZE, "size", &finishers::two(old, size))?;
        self.resize_steps(old, size, progress)?;
        self.intent_end(RESIZE, "size")
    }

    /// The steps of a resize from `old` to `size`; each may run again (after a kill, when the
    /// header may already say `size`).
    pub(crate) fn resize_steps(&self, old: u64, size: u64, progress: Progress) -> Result<()> {
        let h = Header {
            size: old,
            ..(*self.header()?).clone()
        };
        if size > h.size {
            // Bytes past the old end (left by a shrink, or copied up for a snapshot) must not
            // reappear in the head.
            let tail_end = (h.size.div_ceil(h.layout.period()) * h.layout.period()).min(size);
            if tail_end > h.size {
                let grown = Header { size, ..h.clone() };
                self.zero_range(&grown, h.size, tail_end - h.size, false)?;
            }
        }
        if size < h.size {
            self.trim(&h, size, progress)?;
        }
        self.update_header(|hh| {
            hh.size = size;
            if let Some(p) = hh.parent.as_mut() {
                p.overlap = p.overlap.min(size);
            }
            Ok(())
        })?;
        let h = self.header()?;
        self.with_head_map(&h, |m| {
            let count = h.layout.object_count(size);
            let changed = m.len() != count;
            m.resize(count);
            (changed, ())
        })?;
        Ok(())
    }

    /// Removes the objects of `h` past `size` and zeroes the tail of the last period.
    fn trim(&self, h: &Header, size: u64, progress: Progress) -> Result<()> {
        let snapc = h.snap_context();
        let (keep, old) = (h.layout.object_count(size), h.layout.object_count(h.size));
        // Only the objects that exist (one listing), as librbd's trim skips what the
        // object map says is absent: a shrink from a huge sparse size must not visit
        // every object number it addressed.
        let doomed: Vec<(u64, Locator)> = self
            .own_object_numbers(h)?
            .into_iter()
            .filter(|(no, _)| (keep..old).contains(no))
            .collect();
        let total = doomed.len() as u64;
        for (i, (object_no, loc)) in doomed.iter().enumerate() {
            ignore_not_found(self.store().operate(loc, &WriteOp::new().remove(), &snapc))?;
            self.set_object_state(h, *object_no, ObjectState::Nonexistent)?;
            progress(i as u64 + 1, total);
        }
        let tail_end = (size.div_ceil(h.layout.period()) * h.layout.period()).min(h.size);
        self.zero_range(h, size, tail_end - size, false)
    }
}
