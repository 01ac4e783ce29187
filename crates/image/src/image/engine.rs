//! The engine interface: what the copy engine (`rbdm-copy`), live migration
//! (`rbdm-migration`) and the native format plugin use to work on an image's header and
//! objects directly, below [`Image::read`] and [`Image::write`].
//!
//! Who may use it: those engines and their tests. Everything else (the CLI, the NBD export,
//! import and export) goes through the I/O and operations of the other files, which keep the
//! object map, copy up from a parent, take the exclusive lock and check fences; nothing here
//! does any of that for its caller.
//!
//! What each gives:
//! - [`Image::header`]: the header as stored now (reloaded when its version moved), shared;
//!   it can be stale by the time it is used, so a change goes through `update_header`.
//! - [`Image::update_header`]: an atomic read-modify-write of the header object: `change`
//!   runs on the header as stored, and the result is written only if no one changed the
//!   header meanwhile (a generation compare in the same store operation); otherwise
//!   `change` runs again on the newer header, so it must not have other side effects. An
//!   error from `change` writes nothing. A size or feature change is checked first.
//! - [`Image::swap_migration_record`] (intent.rs), [`Image::migration_record`],
//!   [`Image::set_migration_record`]: the migration record, through `update_header`.
//! - [`Image::data_loc`]: where a data object lives: `<object_prefix>.<objno:016x>` (the
//!   header's prefix: `rbd_data.<id>` for rbdm's images, `rbd_data.<pool id>.<id>` for an image
//!   librbd made with a data pool) in the
//!   image's data pool when the header names one (`--data-pool`), else in the image's own
//!   pool, and the image's namespace.
//! - [`Image::side_loc`]: a per-image object of the engines' own beside the header (the image's
//!   pool and namespace, never its data pool); today one kind: `rbdm_migration_empty`
//!   (`rbdm-copy`'s set of objects found empty). Removing the image leaves it.
//! - [`Image::parent_has_data`], [`Image::parent_has_data_at`], [`Image::owns_range`]: what a
//!   clone reads from its parent, for a migration that keeps the parent link.
//! - [`Image::drop_object_maps`], [`Image::rebuild_object_maps`]: an engine that wrote objects
//!   without keeping the object map (as a migration's copies do) drops the maps, then
//!   rebuilds them from the objects when it is done.
//! - [`Image::store`] (image.rs), [`Image::flush_all`] (io.rs): the store the objects are in, and making
//!   every process's writes to it durable.

use std::sync::Arc;

use rbdm_store::{Error as StoreError, Locator, SnapContext, SnapId, WriteOp, HEAD};

use super::{ignore_not_found, lock, Image};
use crate::header::{self, Header};
use crate::migration::MigrationRecord;
use crate::{Error, Result};

impl Image {
    /// The header object, `rbd_header.<id>` in the image's pool and namespace.
    pub(crate) fn header_loc(&self) -> Locator {
        Locator::new(
            self.pool_id,
            &self.spec.namespace,
            &header::header_name(&self.id),
        )
    }

    /// Where object `object_no` of this image lives (`h`, this image's header, names the data
    /// pool). Says nothing of whether the object exists.
    pub fn data_loc(&self, h: &Header, object_no: u64) -> Locator {
        Locator::new(
            self.data_pool(h),
            &self.spec.namespace,
            &header::data_name(&h.object_prefix, object_no),
        )
    }

    /// An object beside the header (same pool and namespace) named `<kind>.<image id>`, for
    /// bookkeeping other crates keep per image; removing the image does not remove it.
    pub fn side_loc(&self, kind: &str) -> Locator {
        Locator::new(
            self.pool_id,
            &self.spec.namespace,
            &format!("{kind}.{}", self.id),
        )
    }

    /// The header, reloaded if another handle or process changed it.
    pub fn header(&self) -> Result<Arc<Header>> {
        let version = match self.store().stat(&self.header_loc(), HEAD) {
            Ok(st) => st.version,
            Err(StoreError::NoObject { .. }) => return Err(Error::ImageRemoved(self.name.clone())),
            Err(e) => return Err(e.into()),
        };
        {
            let c = self.cache.read().unwrap_or_else(|e| e.into_inner());
            if c.0 == version {
                return Ok(c.1.clone());
            }
        }
        let h = Arc::new(Header::load(self.store(), &self.header_loc())?);
        *self.cache.write().unwrap_or_else(|e| e.into_inner()) = (version, h.clone());
        Ok(h)
    }

    /// Changes the header atomically (see the module doc: `change` may run more than once)
    /// and refreshes the cache.
    pub fn update_header<T>(&self, change: impl FnMut(&mut Header) -> Result<T>) -> Result<T> {
        let (_, out) = Header::update(self.store(), &self.header_loc(), change)?;
        self.header()?;
        Ok(out)
    }

    /// True when object `object_no` would read data from the parent (a clone's object that
    /// does not exist yet): a migration keeping the parent link must create such an object
    /// where its source hides the parent's data.
    pub fn parent_has_data(&self, h: &Header, object_no: u64) -> Result<bool> {
        self.parent_has_data_at(h, None, object_no)
    }

    /// The same at snapshot `snap` (`None`: the head), through that point's parent link and
    /// overlap, which may differ from the head's (a shrink cuts the overlap).
    pub fn parent_has_data_at(
        &self,
        h: &Header,
        snap: Option<SnapId>,
        object_no: u64,
    ) -> Result<bool> {
        let (link, size) = match snap.and_then(|id| h.snaps.get(&id)) {
            Some(s) => (&s.parent, s.size),
            None => (&h.parent, h.size),
        };
        let Some(link) = link else {
            return Ok(false);
        };
        let parent = self.parent_image(link)?;
        for (off, len) in self.parent_ranges_at(h, link, size, object_no) {
            if !parent.allocated_extents(off, len)?.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// For a clone (at this handle's point): true when any of its own objects covering
    /// `[offset, offset+len)` exists, false when every read there goes to the parent (or reads
    /// zeros), `None` when the image has no parent at this point. A migration that keeps the
    /// parent link copies only what the clone owns, so the destination stays sparse.
    pub fn owns_range(&self, offset: u64, len: u64) -> Result<Option<bool>> {
        let h = self.header()?;
        let (size, parent) = self.view(&h)?;
        if parent.is_none() {
            return Ok(None);
        }
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(Some(false));
        }
        for object_no in self.objects_in(&h.layout, size, offset, end - offset) {
            match self
                .store()
                .stat(&self.data_loc(&h, object_no), self.read_snap())
            {
                Ok(_) => return Ok(Some(true)),
                Err(StoreError::NoObject { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(false))
    }

    /// The migration record in the header, if the image takes part in one.
    pub fn migration_record(&self) -> Result<Option<MigrationRecord>> {
        MigrationRecord::from_header(&*self.header()?)
    }

    /// Replaces (or with `None` clears) the migration record.
    pub fn set_migration_record(&self, rec: Option<&MigrationRecord>) -> Result<()> {
        self.swap_migration_record(|_| Ok(rec.cloned())).map(|_| ())
    }

    /// Removes every object map (head and snapshots), so that until they are rebuilt any
    /// reader rebuilds them from the objects themselves instead of trusting stale ones.
    pub fn drop_object_maps(&self) -> Result<()> {
        let h = self.header()?;
        let mut slot = lock(&self.map);
        let points = h.snaps.keys().map(|&id| Some(id)).chain([None]);
        for snap in points {
            let op = WriteOp::new().remove();
            ignore_not_found(self.store().operate(
                &self.map_loc(snap),
                &op,
                &SnapContext::default(),
            ))?;
        }
        *slot = None;
        Ok(())
    }

    /// Rebuilds every object map from the store (after a migration filled the image): an
    /// object is `Exists` at a point where it changed since the point before and
    /// `ExistsClean` where it did not, so fast-diff `du` and `diff` stay exact per snapshot.
    pub fn rebuild_object_maps(&self) -> Result<()> {
        let h = self.header()?;
        if !Self::has_object_map(&h) {
            return Ok(());
        }
        // Snapshots' maps need the objects that exist only as clones too.
        let objects = self.own_objects(&h, !h.snaps.is_empty())?;
        let mut slot = lock(&self.map);
        let mut prev = None;
        for s in h.snaps.values() {
            let m = self.rebuild_map(&h, &objects, prev, s.id, s.size)?;
            self.save_map(Some(s.id), &m)?;
            prev = Some(s.id);
        }
        let m = self.rebuild_map(&h, &objects, prev, HEAD, h.size)?;
        self.save_map(None, &m)?;
        *slot = Some((h.snap_seq, m));
        Ok(())
    }
}
