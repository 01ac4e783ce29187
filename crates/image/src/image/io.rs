//! Image I/O: read, write, discard, flush, and the gate every change passes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rbdm_extent::ObjectState;
use rbdm_store::{Error as StoreError, WriteOp};

use super::{ignore_not_found, Image};
use crate::header::{Header, ParentLink};
use crate::migration::{self, MigrationRecord, MigrationRole};
use crate::rbd::now;
use crate::{Error, Result};

impl Image {
    /// Reads `buf.len()` bytes at `offset`; a read past the end is `Invalid`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let h = self.header()?;
        let (size, parent) = self.view(&h)?;
        self.check_range(offset, buf.len() as u64, size)?;
        let snap = self.read_snap();
        let source = self.migration_source(&h)?;
        for ext in h.layout.map_extent(offset, buf.len() as u64) {
            let dst = &mut buf[ext.buf_offset as usize..(ext.buf_offset + ext.len) as usize];
            match self
                .store()
                .read_into(&self.data_loc(&h, ext.object_no), snap, ext.offset, dst)
            {
                Ok(n) => dst[n..].fill(0),
                Err(StoreError::NoObject { .. }) => match &source {
                    Some((rec, src)) => {
                        src.read(self.migration_point(rec), offset + ext.buf_offset, dst)?
                    }
                    None => self.read_redirect(parent.as_ref(), offset + ext.buf_offset, dst)?,
                },
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Fills `dst` (image bytes at `offset`) for an object this image does not have: from the
    /// parent below the overlap, zeros elsewhere.
    fn read_redirect(
        &self,
        parent: Option<&ParentLink>,
        offset: u64,
        dst: &mut [u8],
    ) -> Result<()> {
        dst.fill(0);
        if let Some(link) = parent {
            if offset < link.overlap {
                let n = (link.overlap - offset).min(dst.len() as u64) as usize;
                self.parent_image(link)?.read(offset, &mut dst[..n])?;
            }
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly(format!(
                "image '{}' is open read-only",
                self.name
            )));
        }
        Ok(())
    }

    pub(super) fn begin_change(&self) -> Result<Arc<Header>> {
        self.check_writable()?;
        let h = self.header()?;
        if let Some(rec) = MigrationRecord::from_header(&h)? {
            // An abort writes clients' writes back into its source (invariant 1).
            let aborting = rec.state == migration::MigrationState::Aborting;
            if rec.role == MigrationRole::Source && !aborting {
                return Err(Error::ReadOnly(format!(
                    "image '{}' is the source of a migration and is read-only",
                    self.name
                )));
            }
        }
        self.acquire_lock(&h)?;
        if self.touched.swap(true, Ordering::Relaxed) {
            return Ok(h);
        }
        let t = now();
        self.update_header(|h| {
            h.modify_timestamp = t;
            Ok(())
        })?;
        self.header()
    }

    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let _gate = self.io_gate.read().unwrap_or_else(|e| e.into_inner());
        let h = self.begin_change()?;
        self.check_range(offset, data.len() as u64, h.size)?;
        let snapc = h.snap_context();
        for ext in h.layout.map_extent(offset, data.len() as u64) {
            self.prepare_object(&h, ext.object_no)?;
            let piece = &data[ext.buf_offset as usize..(ext.buf_offset + ext.len) as usize];
            // A client's write may tear across pages after a crash, as on a disk.
            let op = WriteOp::new().write(ext.offset, piece).tearable();
            self.store()
                .operate(&self.data_loc(&h, ext.object_no), &op, &snapc)?;
        }
        Ok(())
    }

    /// Before the first write into an object: record it in the object map (durably, before
    /// the data lands) and copy up the parent's data if a parent still supplies it.
    fn prepare_object(&self, h: &Header, object_no: u64) -> Result<()> {
        self.set_object_state(h, object_no, ObjectState::Exists)?;
        if let Some((_, src)) = self.migration_source(h)? {
            return src.copy_object(self, object_no, true);
        }
        if let Some(link) = &h.parent {
            if !self.parent_ranges(h, link, object_no).is_empty() {
                self.copy_up(h, link, object_no)?;
            }
        }
        Ok(())
    }

    /// Deallocates; reads back as zeros.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let _gate = self.io_gate.read().unwrap_or_else(|e| e.into_inner());
        let h = self.begin_change()?;
        self.check_range(offset, len, h.size)?;
        self.zero_range(&h, offset, len, true)
    }

    /// Makes `[offset, offset+len)` read as zeros; objects wholly inside are removed.
    pub(super) fn zero_range(
        &self,
        h: &Header,
        offset: u64,
        len: u64,
        copy_up: bool,
    ) -> Result<()> {
        let snapc = h.snap_context();
        for ext in h.layout.map_extent(offset, len) {
            let loc = self.data_loc(h, ext.object_no);
            let in_parent = h
                .parent
                .as_ref()
                .filter(|l| !self.parent_ranges(h, l, ext.object_no).is_empty());
            let data_len: u64 = h
                .layout
                .object_extents_in_image(ext.object_no, h.size)
                .iter()
                .map(|e| e.1)
                .sum();
            let whole = !h.layout.is_striped() && ext.offset == 0 && ext.len >= data_len;
            if let (Some((_, src)), true) = (self.migration_source(h)?, copy_up) {
                // The object must stop reading through to the source: copy it, then zero.
                self.set_object_state(h, ext.object_no, ObjectState::Exists)?;
                src.copy_object(self, ext.object_no, true)?;
            } else if let (Some(link), true) = (in_parent, copy_up) {
                self.set_object_state(h, ext.object_no, ObjectState::Exists)?;
                self.copy_up(h, link, ext.object_no)?;
            } else if whole {
                ignore_not_found(self.store().operate(&loc, &WriteOp::new().remove(), &snapc))?;
                self.set_object_state(h, ext.object_no, ObjectState::Nonexistent)?;
                continue;
            }
            let op = WriteOp::new().assert_exists().zero(ext.offset, ext.len);
            match self.store().operate(&loc, &op, &snapc) {
                // Changed since the last snapshot, as far as fast-diff is concerned.
                Ok(()) => self.set_object_state(h, ext.object_no, ObjectState::Exists)?,
                Err(StoreError::NoObject { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Reads back as zeros (deallocating where it can).
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.discard(offset, len)
    }

    pub fn flush(&self) -> Result<()> {
        self.store().flush()?;
        Ok(())
    }

    /// Makes durable what every process wrote to the store, not only this handle's writes.
    pub fn flush_all(&self) -> Result<()> {
        self.store().flush_all()?;
        Ok(())
    }
}
