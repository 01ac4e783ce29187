//! An open image: striped I/O with read-through to a parent (`read_redirect`) and copy-up
//! before the first write into an object a parent still supplies (`copy_up`), the object
//! map, snapshots, flatten, metadata, `du` and `diff`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use rbdm_extent::{IntervalSet, ObjectMap, ObjectState};
use rbdm_store::{
    Error as StoreError, Locator, PoolId, SnapContext, SnapId, Watcher, WriteOp, HEAD,
};

use crate::finishers::{self, COPY_UP, FLATTEN, RESIZE, ROLLBACK, SNAP_CREATE, SNAP_REMOVE};
use crate::header::{self, Header, ParentLink, SnapMeta, METADATA_PREFIX};
use crate::intent;
use crate::migration::{self, MigrationRecord, MigrationRole, MigrationSource};
use crate::rbd::now;
use crate::{
    features, ChildInfo, DiffExtent, DuEntry, Error, ImageInfo, Layout, ParentInfo, PoolSpec,
    Progress, Rbd, Result, SnapInfo,
};

const LOCK_NAME: &str = "rbd_lock";

/// An open image (head, or a snapshot read-only). Safe to share across threads.
pub struct Image {
    rbd: Rbd,
    spec: PoolSpec,
    name: String,
    id: String,
    pool_id: PoolId,
    /// The snapshot this handle is open at; `None` for the head.
    snap_id: Option<SnapId>,
    read_only: bool,
    cache: RwLock<(u64, Arc<Header>)>,
    /// The head object map and the `snap_seq` it was loaded under (reloaded after a snapshot).
    map: Mutex<Option<(SnapId, ObjectMap)>>,
    /// Writes hold it shared; snapshot creation and rollback hold it exclusively so no write
    /// carries a snap context older than a snapshot taken in this process.
    io_gate: RwLock<()>,
    watch_cookie: Option<u64>,
    lock_cookie: Mutex<Option<String>>,
    parent: Mutex<Option<(ParentLink, Arc<Image>)>>,
    /// The source this image reads through to while it is a migration destination.
    migration: Mutex<Option<Arc<dyn MigrationSource>>>,
    touched: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn ignore_not_found(r: std::result::Result<(), StoreError>) -> Result<()> {
    match r {
        Ok(()) | Err(StoreError::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl Image {
    pub(crate) fn open(
        rbd: Rbd,
        spec: PoolSpec,
        name: String,
        id: String,
        snap: Option<&str>,
        read_only: bool,
        watch: bool,
    ) -> Result<Image> {
        let pool_id = rbd.pool_id(&spec.pool)?;
        let hloc = Locator::new(pool_id, &spec.namespace, &header::header_name(&id));
        let not_found = |_| Error::NotFound(format!("image '{name}' does not exist"));
        let version = rbd.store().stat(&hloc, HEAD).map_err(not_found)?.version;
        let h = Header::load(rbd.store(), &hloc)?;
        let snap_id = match snap {
            Some(s) => Some(
                h.snap_by_name(s)
                    .ok_or_else(|| {
                        Error::NotFound(format!("snapshot '{name}@{s}' does not exist"))
                    })?
                    .id,
            ),
            None => None,
        };
        let watch_cookie = if watch {
            Some(rbd.store().watch(&hloc)?)
        } else {
            None
        };
        Ok(Image {
            rbd,
            spec,
            name,
            id,
            pool_id,
            snap_id,
            read_only: read_only || snap_id.is_some(),
            cache: RwLock::new((version, Arc::new(h))),
            map: Mutex::new(None),
            io_gate: RwLock::new(()),
            watch_cookie,
            lock_cookie: Mutex::new(None),
            parent: Mutex::new(None),
            migration: Mutex::new(None),
            touched: AtomicBool::new(false),
        })
        .and_then(|img| {
            img.settle(watch)?;
            Ok(img)
        })
    }

    /// Finishes what a killed operation left (see intent.rs): a writer must, before its own
    /// first step; a user's reader tries, so it shows the settled state, and shows the state
    /// as it is if it cannot (a full disk, a fence). Internal readers (`user` false) leave it.
    fn settle(&self, user: bool) -> Result<()> {
        let has = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .has_intents;
        if !has || (self.read_only && !user) {
            return Ok(());
        }
        let r = self.finish_intents();
        if !self.read_only {
            return r;
        }
        // A reader does not keep the exclusive lock it took to finish.
        if let Some(c) = lock(&self.lock_cookie).take() {
            let _ = self.store().unlock(&self.header_loc(), LOCK_NAME, &c);
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn pool_spec(&self) -> &PoolSpec {
        &self.spec
    }
    pub fn rbd(&self) -> &Rbd {
        &self.rbd
    }
    pub(crate) fn pool(&self) -> PoolId {
        self.pool_id
    }

    pub fn snap_id(&self) -> Option<SnapId> {
        self.snap_id
    }
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub fn store(&self) -> &rbdm_store::StoreRef {
        self.rbd.store()
    }
    pub(crate) fn header_loc(&self) -> Locator {
        Locator::new(
            self.pool_id,
            &self.spec.namespace,
            &header::header_name(&self.id),
        )
    }
    fn map_loc(&self, snap: Option<SnapId>) -> Locator {
        Locator::new(
            self.pool_id,
            &self.spec.namespace,
            &header::object_map_name(&self.id, snap),
        )
    }
    fn data_pool(&self, h: &Header) -> PoolId {
        h.data_pool_id.unwrap_or(self.pool_id)
    }
    /// Where object `object_no` of this image lives.
    pub fn data_loc(&self, h: &Header, object_no: u64) -> Locator {
        Locator::new(
            self.data_pool(h),
            &self.spec.namespace,
            &header::data_name(&self.id, object_no),
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
    fn read_snap(&self) -> SnapId {
        self.snap_id.unwrap_or(HEAD)
    }

    /// The header, reloaded if another handle or process changed it.
    pub fn header(&self) -> Result<Arc<Header>> {
        let version = match self.store().stat(&self.header_loc(), HEAD) {
            Ok(st) => st.version,
            Err(StoreError::NotFound(_)) => {
                return Err(Error::NotFound(format!(
                    "image '{}' was removed",
                    self.name
                )))
            }
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

    /// Changes the header (guarded against concurrent changes) and refreshes the cache.
    pub fn update_header<T>(&self, change: impl FnMut(&mut Header) -> Result<T>) -> Result<T> {
        let (_, out) = Header::update(self.store(), &self.header_loc(), change)?;
        self.header()?;
        Ok(out)
    }

    /// Size and parent link at the point this handle is open at.
    fn view(&self, h: &Header) -> Result<(u64, Option<ParentLink>)> {
        match self.snap_id {
            None => Ok((h.size, h.parent.clone())),
            Some(id) => {
                let s = h.snaps.get(&id).ok_or_else(|| {
                    Error::NotFound(format!("snapshot {id} of '{}' was removed", self.name))
                })?;
                Ok((s.size, s.parent.clone()))
            }
        }
    }

    fn check_range(&self, offset: u64, len: u64, size: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(Error::Invalid(format!(
                "extent {offset}+{len} is beyond the end of image '{}' ({size} bytes)",
                self.name
            ))),
        }
    }

    pub fn info(&self) -> Result<ImageInfo> {
        let h = self.header()?;
        let (size, parent) = self.view(&h)?;
        let parent = match parent {
            Some(link) => Some(self.parent_info(&link)?),
            None => None,
        };
        let data_pool = match h.data_pool_id {
            Some(id) => Some(self.store().pool_name(id)?),
            None => None,
        };
        Ok(ImageInfo {
            name: self.name.clone(),
            id: self.id.clone(),
            pool: self.spec.pool.clone(),
            namespace: self.spec.namespace.clone(),
            size,
            layout: h.layout,
            features: h.features,
            flags: h.flags,
            block_name_prefix: h.object_prefix.clone(),
            snapshot_count: h.snaps.len(),
            data_pool,
            parent,
            create_timestamp: h.create_timestamp,
            access_timestamp: h.access_timestamp,
            modify_timestamp: h.modify_timestamp,
            read_only: self.read_only,
        })
    }

    fn parent_info(&self, link: &ParentLink) -> Result<ParentInfo> {
        let pool = self.store().pool_name(link.pool_id)?;
        let pspec = PoolSpec::new(&pool, &link.namespace);
        let image_name = match self.rbd.image_name(&pspec, &link.image_id)? {
            Some(n) => n,
            None => self
                .rbd
                .trash_get(&pspec, &link.image_id)
                .map(|t| t.name)
                .unwrap_or_default(),
        };
        let ploc = Locator::new(
            link.pool_id,
            &link.namespace,
            &header::header_name(&link.image_id),
        );
        let snap_name = Header::load(self.store(), &ploc)?
            .snaps
            .get(&link.snap_id)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        Ok(ParentInfo {
            pool,
            namespace: link.namespace.clone(),
            image_name,
            image_id: link.image_id.clone(),
            snap_name,
            snap_id: link.snap_id,
            overlap: link.overlap,
        })
    }

    pub fn size(&self) -> u64 {
        let h = self.header().unwrap_or_else(|_| {
            self.cache
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .1
                .clone()
        });
        self.view(&h).map(|v| v.0).unwrap_or(h.size)
    }

    pub fn layout(&self) -> Layout {
        self.cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .layout
    }

    pub(crate) fn parent_link(&self) -> Option<ParentLink> {
        self.cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .parent
            .clone()
    }

    /// The parent snapshot a clone reads through to, opened read-only once and kept.
    fn parent_image(&self, link: &ParentLink) -> Result<Arc<Image>> {
        let mut slot = lock(&self.parent);
        if let Some((l, img)) = slot.as_ref() {
            if l.pool_id == link.pool_id && l.image_id == link.image_id && l.snap_id == link.snap_id
            {
                return Ok(img.clone());
            }
        }
        let pool = self.store().pool_name(link.pool_id)?;
        let pspec = PoolSpec::new(&pool, &link.namespace);
        let mut img = Image::open(
            self.rbd.clone(),
            pspec,
            link.image_id.clone(),
            link.image_id.clone(),
            None,
            true,
            false,
        )?;
        img.snap_id = Some(link.snap_id);
        img.read_only = true;
        let img = Arc::new(img);
        *slot = Some((link.clone(), img.clone()));
        Ok(img)
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
                Err(StoreError::NotFound(_)) => {}
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

    /// The source to read through to, when this image is a migration destination.
    fn migration_source(
        &self,
        h: &Header,
    ) -> Result<Option<(MigrationRecord, Arc<dyn MigrationSource>)>> {
        let Some(rec) = MigrationRecord::from_header(h)? else {
            return Ok(None);
        };
        if rec.role != MigrationRole::Destination {
            return Ok(None);
        }
        let mut slot = lock(&self.migration);
        if let Some(src) = slot.as_ref() {
            return Ok(Some((rec, src.clone())));
        }
        let src = migration::open_source(&self.rbd, &rec)?;
        *slot = Some(src.clone());
        Ok(Some((rec, src)))
    }

    /// The source point this handle's reads map to.
    fn migration_point(&self, rec: &MigrationRecord) -> Option<usize> {
        rec.point_of(self.snap_id)
    }

    // ---- I/O
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
                Err(StoreError::NotFound(_)) => match &source {
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

    /// Takes the image's exclusive lock before the first change, as librbd does.
    pub(crate) fn acquire_lock(&self, h: &Header) -> Result<()> {
        if h.features & features::EXCLUSIVE_LOCK == 0 {
            return Ok(());
        }
        let mut cookie = lock(&self.lock_cookie);
        if cookie.is_some() {
            return Ok(());
        }
        let c = format!("auto {}", self.watch_cookie.unwrap_or(0));
        match self.store().lock(
            &self.header_loc(),
            LOCK_NAME,
            &c,
            "rbdm exclusive lock",
            true,
        ) {
            Ok(()) => {}
            Err(StoreError::Busy(_)) => {
                return Err(Error::Busy(format!(
                    "image '{}' is locked by another client",
                    self.name
                )))
            }
            Err(e) => return Err(e.into()),
        }
        if let Err(e) = self.check_fence() {
            let _ = self.store().unlock(&self.header_loc(), LOCK_NAME, &c);
            return Err(e);
        }
        *cookie = Some(c);
        // Whoever held the lock before may have changed the object map.
        *lock(&self.map) = None;
        Ok(())
    }

    fn begin_change(&self) -> Result<Arc<Header>> {
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

    /// Image ranges of an object that read through to the parent.
    fn parent_ranges(&self, h: &Header, link: &ParentLink, object_no: u64) -> Vec<(u64, u64)> {
        self.parent_ranges_at(h, link, h.size, object_no)
    }

    /// The same, for an image of `size` bytes (a snapshot's size may differ from the head's).
    fn parent_ranges_at(
        &self,
        h: &Header,
        link: &ParentLink,
        size: u64,
        object_no: u64,
    ) -> Vec<(u64, u64)> {
        h.layout
            .object_extents_in_image(object_no, link.overlap.min(size))
    }

    /// Creates the object from the parent's data, unless it exists. Written with an empty snap
    /// context, so snapshots taken since the clone see the same bytes they read through before.
    fn copy_up(&self, h: &Header, link: &ParentLink, object_no: u64) -> Result<()> {
        let loc = self.data_loc(h, object_no);
        match self.store().stat(&loc, HEAD) {
            Ok(_) => return Ok(()),
            Err(StoreError::NotFound(_)) => {}
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

    fn has_object_map(h: &Header) -> bool {
        h.features & features::OBJECT_MAP != 0
    }

    /// Loads an object map; an absent or damaged one is rebuilt from the objects themselves.
    fn load_map(&self, h: &Header, snap: Option<SnapId>, size: u64) -> Result<ObjectMap> {
        let count = h.layout.object_count(size);
        // A header written before sizes were bounded must fail here, not abort allocating.
        if count > rbdm_extent::MAX_MAP_OBJECTS {
            return Err(Error::Corrupt(format!(
                "image '{}' has {count} objects, more than an object map holds ({})",
                self.name,
                rbdm_extent::MAX_MAP_OBJECTS
            )));
        }
        let stored = match self
            .store()
            .read(&self.map_loc(snap), HEAD, 0, u64::MAX >> 1)
        {
            Ok(buf) => ObjectMap::decode(&buf).ok(),
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let mut map = match stored {
            Some(m) => m,
            // Without the map's history every existing object counts as changed.
            None => {
                let objects = self.own_object_numbers(h)?;
                self.rebuild_map(h, &objects, None, snap.unwrap_or(HEAD), size)?
            }
        };
        if map.len() != count {
            map.resize(count);
        }
        Ok(map)
    }

    /// The numbers of this image's data objects that exist at head, from one listing.
    fn own_object_numbers(&self, h: &Header) -> Result<Vec<(u64, Locator)>> {
        self.own_objects(h, false)
    }

    /// The same, with `clones` also those that exist only as clones (for snapshots).
    fn own_objects(&self, h: &Header, clones: bool) -> Result<Vec<(u64, Locator)>> {
        let prefix = format!("{}.", h.object_prefix);
        let (pool, ns) = (self.data_pool(h), Some(self.spec.namespace.as_str()));
        let all = if clones {
            self.store().list_all_objects(pool, ns)?
        } else {
            self.store().list_objects(pool, ns)?
        };
        let mut out: Vec<(u64, Locator)> = all
            .into_iter()
            .filter_map(|loc| {
                let no = u64::from_str_radix(loc.name.strip_prefix(&prefix)?, 16).ok()?;
                Some((no, loc))
            })
            .collect();
        out.sort_by_key(|(no, _)| *no);
        Ok(out)
    }

    fn rebuild_map(
        &self,
        h: &Header,
        objects: &[(u64, Locator)],
        prev: Option<SnapId>,
        snap: SnapId,
        size: u64,
    ) -> Result<ObjectMap> {
        let count = h.layout.object_count(size);
        let mut map = ObjectMap::new(count);
        for (no, loc) in objects.iter().filter(|(no, _)| *no < count) {
            match self.store().stat(loc, snap) {
                Ok(_) => {}
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            }
            let changed = match prev {
                None => true,
                Some(p) => self
                    .changed_in_object(loc, p, snap, h.layout.object_size)?
                    .is_none_or(|(c, _)| !c.is_empty()),
            };
            let state = if changed {
                ObjectState::Exists
            } else {
                ObjectState::ExistsClean
            };
            map.set(*no, state);
        }
        Ok(map)
    }

    fn save_map(&self, snap: Option<SnapId>, map: &ObjectMap) -> Result<()> {
        let op = WriteOp::new().write_full(&map.encode());
        self.store()
            .operate(&self.map_loc(snap), &op, &SnapContext::default())?;
        Ok(())
    }

    /// Runs `f` on the head object map (loaded on first use) and saves it if `f` changed it.
    fn with_head_map<T>(
        &self,
        h: &Header,
        f: impl FnOnce(&mut ObjectMap) -> (bool, T),
    ) -> Result<Option<T>> {
        if !Self::has_object_map(h) {
            return Ok(None);
        }
        let mut slot = lock(&self.map);
        if slot.as_ref().is_none_or(|(seq, _)| *seq != h.snap_seq) {
            *slot = Some((h.snap_seq, self.load_map(h, None, h.size)?));
        }
        let (_, map) = slot.as_mut().expect("loaded above");
        let count = h.layout.object_count(h.size);
        if map.len() < count {
            map.resize(count);
        }
        let (changed, out) = f(map);
        if changed {
            if let Err(e) = self.save_map(None, map) {
                *slot = None;
                return Err(e);
            }
        }
        Ok(Some(out))
    }

    fn set_object_state(&self, h: &Header, object_no: u64, state: ObjectState) -> Result<()> {
        self.with_head_map(h, |m| (m.set(object_no, state), ()))?;
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
    fn zero_range(&self, h: &Header, offset: u64, len: u64, copy_up: bool) -> Result<()> {
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
                Err(StoreError::NotFound(_)) => {}
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

    /// Objects that may hold bytes of `[offset, offset+len)`.
    fn objects_in(
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
    /// by reading data. Includes data read through from a parent.
    pub fn allocated_extents(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        let h = self.header()?;
        let (size, parent) = self.view(&h)?;
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let source = self.migration_source(&h)?;
        // While migrating, objects appear from other processes' copies: the map is not kept.
        let map = if Self::has_object_map(&h) && source.is_none() {
            Some(self.load_map(&h, self.snap_id, size)?)
        } else {
            None
        };
        let mut out = IntervalSet::new();
        let snap = self.read_snap();
        for object_no in self.objects_in(&h.layout, size, offset, end - offset) {
            let in_parent = parent
                .as_ref()
                .filter(|l| !self.parent_ranges_at(&h, l, size, object_no).is_empty());
            if in_parent.is_none() && map.as_ref().is_some_and(|m| !m.get(object_no).may_exist()) {
                continue;
            }
            match self.store().map_extents(
                &self.data_loc(&h, object_no),
                snap,
                0,
                h.layout.object_size,
            ) {
                Ok(extents) => {
                    for (o, l) in extents {
                        for (img, n) in h.layout.object_image_extents(object_no, o, l) {
                            out.insert(img, n);
                        }
                    }
                }
                Err(StoreError::NotFound(_)) if source.is_some() => {
                    let (rec, src) = source.as_ref().expect("checked");
                    for (img, n) in h.layout.object_extents_in_image(object_no, size) {
                        for (o, l) in
                            IntervalSet::from_ranges([(img, n)]).intersection(offset, end - offset)
                        {
                            for e in src.allocated(self.migration_point(rec), o, l)? {
                                out.insert(e.0, e.1);
                            }
                        }
                    }
                }
                Err(StoreError::NotFound(_)) => {
                    if let Some(link) = in_parent {
                        let p = self.parent_image(link)?;
                        for (img, n) in self.parent_ranges_at(&h, link, size, object_no) {
                            let clip = IntervalSet::from_ranges([(img, n)])
                                .intersection(offset, end - offset);
                            for (o, l) in clip {
                                for e in p.allocated_extents(o, l)? {
                                    out.insert(e.0, e.1);
                                }
                            }
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out.intersection(offset, end - offset))
    }

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

    // ---- snapshots
    pub(crate) fn snap_meta(&self, name: &str) -> Result<SnapMeta> {
        self.header()?.snap_by_name(name).cloned().ok_or_else(|| {
            Error::NotFound(format!("snapshot '{}@{name}' does not exist", self.name))
        })
    }

    fn check_head(&self, what: &str) -> Result<()> {
        if self.snap_id.is_some() {
            return Err(Error::Invalid(format!(
                "cannot {what} on a snapshot; open the image's head"
            )));
        }
        Ok(())
    }

    pub fn snap_create(&self, name: &str) -> Result<SnapId> {
        self.check_head("create a snapshot")?;
        self.check_fence()?;
        if name.is_empty() || name.contains(['/', '@']) {
            return Err(Error::Invalid(format!("invalid snapshot name '{name}'")));
        }
        let _gate = self.io_gate.write().unwrap_or_else(|e| e.into_inner());
        let h = self.header()?;
        if h.snap_by_name(name).is_some() {
            return Err(Error::Exists(format!(
                "snapshot '{}@{name}' already exists",
                self.name
            )));
        }
        let pool = self.data_pool(&h);
        let sid = self.store().snap_create(pool)?;
        let arg = sid.to_string();
        let live = match self.intent_begin(SNAP_CREATE, &arg, &[]) {
            Ok(l) => l,
            Err(e) => {
                let _ = self.store().snap_remove(pool, sid);
                return Err(e);
            }
        };
        let result = (|| -> Result<()> {
            if Self::has_object_map(&h) {
                let map = self
                    .with_head_map(&h, |m| (false, m.clone()))?
                    .expect("object map feature");
                self.save_map(Some(sid), &map)?;
            }
            let t = now();
            self.update_header(|hh| {
                if hh.snap_by_name(name).is_some() {
                    return Err(Error::Exists(format!(
                        "snapshot '{}@{name}' already exists",
                        self.name
                    )));
                }
                let parent = hh.parent.clone();
                hh.snaps.insert(
                    sid,
                    SnapMeta {
                        id: sid,
                        name: name.into(),
                        size: hh.size,
                        protected: false,
                        timestamp: t,
                        parent,
                    },
                );
                hh.snap_seq = hh.snap_seq.max(sid);
                Ok(())
            })
        })();
        if let Err(e) = result {
            let _ = self.drop_snap_id(&h, sid);
            let _ = self.intent_end(SNAP_CREATE, &arg);
            return Err(e);
        }
        let h = self.header()?;
        self.clean_head_map(&h)?;
        self.intent_end(SNAP_CREATE, &arg)?;
        drop(live);
        Ok(sid)
    }

    /// Fast-diff: from a new snapshot on, "exists" in the head map means "changed since it".
    pub(crate) fn clean_head_map(&self, h: &Header) -> Result<()> {
        self.with_head_map(h, |m| {
            let dirty: Vec<u64> = (0..m.len())
                .filter(|&i| m.get(i) == ObjectState::Exists)
                .collect();
            for &i in &dirty {
                m.set(i, ObjectState::ExistsClean);
            }
            (!dirty.is_empty(), ())
        })?;
        Ok(())
    }

    /// Undoes a snapshot creation the header never recorded: its map and its store snap id.
    pub(crate) fn drop_snap_id(&self, h: &Header, sid: SnapId) -> Result<()> {
        ignore_not_found(self.store().operate(
            &self.map_loc(Some(sid)),
            &WriteOp::new().remove(),
            &SnapContext::default(),
        ))?;
        self.store().snap_remove(self.data_pool(h), sid)?;
        Ok(())
    }

    /// Oldest first.
    pub fn snap_list(&self) -> Result<Vec<SnapInfo>> {
        Ok(self
            .header()?
            .snaps
            .values()
            .map(|s| SnapInfo {
                id: s.id,
                name: s.name.clone(),
                size: s.size,
                protected: s.protected,
                timestamp: s.timestamp,
            })
            .collect())
    }

    /// Refused (`Busy`) if protected.
    pub fn snap_remove(&self, name: &str) -> Result<()> {
        self.check_head("remove a snapshot")?;
        let sm = self.snap_meta(name)?;
        if sm.protected {
            return Err(Error::Busy(format!(
                "snapshot '{}@{name}' is protected from removal",
                self.name
            )));
        }
        // The clones are freed after the header forgets the snapshot: a kill in between
        // would leak them, so the rest is an intent any later writable open finishes.
        let arg = sm.id.to_string();
        let _live = self.intent_begin(SNAP_REMOVE, &arg, &finishers::two(sm.id, sm.size))?;
        self.update_header(|hh| {
            hh.snaps.remove(&sm.id);
            Ok(())
        })?;
        self.snap_remove_rest(sm.id, sm.size)?;
        self.intent_end(SNAP_REMOVE, &arg)
    }

    /// What follows the header change of a snapshot removal; each step may run twice.
    pub(crate) fn snap_remove_rest(&self, id: SnapId, size: u64) -> Result<()> {
        let h = self.header()?;
        let map = self.map_loc(Some(id));
        if Self::has_object_map(&h) && self.store().stat(&map, HEAD).is_ok() {
            let next = h.snaps.range(id + 1..).next().map(|(id, _)| *id);
            self.merge_dirty_bits(&h, id, size, next)?;
        }
        self.store().snap_remove(self.data_pool(&h), id)?;
        ignore_not_found(self.store().operate(
            &map,
            &WriteOp::new().remove(),
            &SnapContext::default(),
        ))
    }

    /// What changed in a removed snapshot now counts as changed in the next one (fast-diff).
    /// `removed` and `size`: the removed snapshot's id and size (its map's extent).
    fn merge_dirty_bits(
        &self,
        h: &Header,
        removed: SnapId,
        size: u64,
        next: Option<SnapId>,
    ) -> Result<()> {
        let old = self.load_map(h, Some(removed), size)?;
        let dirty: Vec<u64> = (0..old.len())
            .filter(|&i| old.get(i) == ObjectState::Exists)
            .collect();
        let mark = |m: &mut ObjectMap| {
            let mut changed = false;
            for &i in &dirty {
                if m.get(i) == ObjectState::ExistsClean {
                    changed |= m.set(i, ObjectState::Exists);
                }
            }
            changed
        };
        match next {
            Some(id) => {
                let size = h.snaps.get(&id).map(|s| s.size).unwrap_or(h.size);
                let mut m = self.load_map(h, Some(id), size)?;
                if mark(&mut m) {
                    self.save_map(Some(id), &m)?;
                }
            }
            None => {
                self.with_head_map(h, |m| (mark(m), ()))?;
            }
        }
        Ok(())
    }

    fn set_protected(&self, name: &str, protected: bool) -> Result<()> {
        self.check_head("change snapshot protection")?;
        let sm = self.snap_meta(name)?;
        if sm.protected == protected {
            let state = if protected {
                "already protected"
            } else {
                "not protected"
            };
            return Err(Error::Invalid(format!(
                "snapshot '{}@{name}' is {state}",
                self.name
            )));
        }
        if !protected {
            let children =
                self.rbd
                    .children_of(self.pool_id, &self.spec.namespace, &self.id, sm.id)?;
            if !children.is_empty() {
                return Err(Error::Busy(format!(
                    "cannot unprotect: snapshot '{}@{name}' has {} child image(s)",
                    self.name,
                    children.len()
                )));
            }
        }
        self.update_header(|hh| {
            if let Some(s) = hh.snaps.get_mut(&sm.id) {
                s.protected = protected;
            }
            Ok(())
        })
    }

    pub fn snap_protect(&self, name: &str) -> Result<()> {
        if self.header()?.features & features::LAYERING == 0 {
            return Err(Error::Invalid(format!(
                "image '{}' does not have the layering feature",
                self.name
            )));
        }
        self.set_protected(name, true)
    }

    /// Refused (`Busy`) while the snapshot has children.
    pub fn snap_unprotect(&self, name: &str) -> Result<()> {
        self.set_protected(name, false)
    }

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
            Err(StoreError::NotFound(_)) => {
                ignore_not_found(self.store().operate(&loc, &WriteOp::new().remove(), snapc))?;
                self.set_object_state(h, object_no, ObjectState::Nonexistent)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes every unprotected snapshot; refused if any is protected.
    pub fn snap_purge(&self) -> Result<()> {
        let snaps = self.snap_list()?;
        let protected: Vec<&str> = snaps
            .iter()
            .filter(|s| s.protected)
            .map(|s| s.name.as_str())
            .collect();
        if !protected.is_empty() {
            return Err(Error::Busy(format!(
                "snapshots of '{}' are protected: {}",
                self.name,
                protected.join(", ")
            )));
        }
        for s in &snaps {
            self.snap_remove(&s.name)?;
        }
        Ok(())
    }

    pub fn snap_rename(&self, from: &str, to: &str) -> Result<()> {
        self.check_head("rename a snapshot")?;
        if to.is_empty() || to.contains(['/', '@']) {
            return Err(Error::Invalid(format!("invalid snapshot name '{to}'")));
        }
        let sm = self.snap_meta(from)?;
        self.update_header(|hh| {
            if hh.snap_by_name(to).is_some() {
                return Err(Error::Exists(format!(
                    "snapshot '{}@{to}' already exists",
                    self.name
                )));
            }
            if let Some(s) = hh.snaps.get_mut(&sm.id) {
                s.name = to.into();
            }
            Ok(())
        })
    }

    // ---- clones
    pub fn flatten(&self, progress: Progress) -> Result<()> {
        self.check_head("flatten")?;
        let h = self.begin_change()?;
        let link = h
            .parent
            .clone()
            .ok_or_else(|| Error::Invalid(format!("image '{}' has no parent", self.name)))?;
        let count = h.layout.object_count(link.overlap.min(h.size));
        for object_no in 0..count {
            progress(object_no, count);
            let _gate = self.io_gate.read().unwrap_or_else(|e| e.into_inner());
            self.set_object_state(&h, object_no, ObjectState::Exists)?;
            self.copy_up(&h, &link, object_no)?;
        }
        // Snapshots whose parent range the copy-ups covered no longer need the parent;
        // one that saw more of it (the head was shrunk since) keeps its link. The header and
        // the parents' children lists change in two steps: the intent names every link, and
        // a finisher makes the lists follow whatever the header says.
        let flattened = link.overlap.min(h.size);
        let mut links = vec![link];
        links.extend(h.snaps.values().filter_map(|s| s.parent.clone()));
        let key = |l: &ParentLink| {
            (
                l.pool_id,
                l.namespace.clone(),
                l.image_id.clone(),
                l.snap_id,
            )
        };
        links.sort_by_key(key);
        links.dedup_by_key(|l| key(l));
        let _live = self.intent_begin(FLATTEN, "head", &finishers::links(&links))?;
        self.update_header(|hh| {
            hh.parent = None;
            for s in hh.snaps.values_mut() {
                if s.parent
                    .as_ref()
                    .is_some_and(|p| p.overlap.min(s.size) <= flattened)
                {
                    s.parent = None;
                }
            }
            Ok(())
        })?;
        self.sync_child_links(&links)?;
        self.intent_end(FLATTEN, "head")?;
        progress(count, count);
        Ok(())
    }

    /// Children of the open snapshot (or of every snapshot when opened at head).
    pub fn children(&self) -> Result<Vec<ChildInfo>> {
        let h = self.header()?;
        let snaps: Vec<SnapId> = match self.snap_id {
            Some(id) => vec![id],
            None => h.snaps.keys().copied().collect(),
        };
        let mut out = Vec::new();
        for s in snaps {
            out.extend(
                self.rbd
                    .children_of(self.pool_id, &self.spec.namespace, &self.id, s)?,
            );
        }
        Ok(out)
    }

    // ---- metadata
    pub fn metadata_set(&self, key: &str, value: &str) -> Result<()> {
        if key.is_empty() {
            return Err(Error::Invalid("image-meta: empty key".into()));
        }
        self.check_fence()?;
        let op = WriteOp::new()
            .assert_exists()
            .omap_set([(format!("{METADATA_PREFIX}{key}"), value.as_bytes().to_vec())]);
        self.store()
            .operate(&self.header_loc(), &op, &SnapContext::default())?;
        Ok(())
    }

    pub fn metadata_get(&self, key: &str) -> Result<String> {
        let k = format!("{METADATA_PREFIX}{key}");
        let found = self.store().omap_get_keys(&self.header_loc(), &[&k])?;
        let v = found.get(&k).ok_or_else(|| {
            Error::NotFound(format!("image '{}' has no metadata key '{key}'", self.name))
        })?;
        Ok(String::from_utf8_lossy(v).into_owned())
    }

    pub fn metadata_remove(&self, key: &str) -> Result<()> {
        self.metadata_get(key)?;
        self.check_fence()?;
        let op = WriteOp::new().omap_rm([format!("{METADATA_PREFIX}{key}")]);
        self.store()
            .operate(&self.header_loc(), &op, &SnapContext::default())?;
        Ok(())
    }

    pub fn metadata_list(&self) -> Result<BTreeMap<String, String>> {
        Ok(self
            .rbd
            .omap_all(&self.header_loc(), METADATA_PREFIX)?
            .into_iter()
            .map(|(k, v)| {
                (
                    k[METADATA_PREFIX.len()..].to_string(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect())
    }

    // ---- accounting
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
            .own_object_numbers(h)?
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
                Err(StoreError::NotFound(_)) => None,
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
    fn changed_in_object(
        &self,
        loc: &Locator,
        from: SnapId,
        to: SnapId,
        os: u64,
    ) -> Result<Option<(IntervalSet, u64)>> {
        let ss = match self.store().list_snaps(loc) {
            Ok(ss) => ss,
            Err(StoreError::NotFound(_)) => return Ok(None),
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

    /// Clients holding the image's exclusive lock (writers).
    pub fn lockers(&self) -> Result<Vec<rbdm_store::LockInfo>> {
        match self.store().list_lockers(&self.header_loc(), LOCK_NAME) {
            Err(StoreError::NotFound(_)) => Ok(Vec::new()),
            r => Ok(r?),
        }
    }

    /// Rebuilds the head's and every snapshot's object map from the objects themselves (after
    /// other processes wrote objects without keeping the map, as a migration's copy does).
    /// Removes every object map (head and snapshots), so that until they are rebuilt any
    /// reader rebuilds them from the objects themselves instead of trusting stale ones.
    pub fn drop_object_maps(&self) -> Result<()> {
        let h = self.header()?;
        let mut slot = lock(&self.map);
        let points = h.snaps.keys().map(|&id| Some(id)).chain([None]);
        for snap in points {
            let op = WriteOp::new().remove();
            match self
                .store()
                .operate(&self.map_loc(snap), &op, &SnapContext::default())
            {
                Ok(()) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
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
        let objects = self.own_object_numbers(&h)?;
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

    pub fn watchers(&self) -> Result<Vec<Watcher>> {
        Ok(self.store().list_watchers(&self.header_loc())?)
    }

    /// Removes every data object and object map of this image (used by remove).
    pub(crate) fn remove_data(&self, progress: Progress) -> Result<()> {
        let h = self.header()?;
        let prefix = format!("{}.", h.object_prefix);
        let objects: Vec<Locator> = self
            .store()
            .list_objects(self.data_pool(&h), Some(&self.spec.namespace))?
            .into_iter()
            .filter(|l| l.name.starts_with(&prefix))
            .collect();
        let total = objects.len() as u64;
        for (i, loc) in objects.iter().enumerate() {
            ignore_not_found(self.store().operate(
                loc,
                &WriteOp::new().remove(),
                &SnapContext::default(),
            ))?;
            progress(i as u64 + 1, total);
        }
        Ok(())
    }

    pub(crate) fn remove_header(&self) -> Result<()> {
        let map_prefix = header::object_map_name(&self.id, None);
        for loc in self
            .store()
            .list_objects(self.pool_id, Some(&self.spec.namespace))?
        {
            if loc.name.starts_with(&map_prefix) {
                ignore_not_found(self.store().operate(
                    &loc,
                    &WriteOp::new().remove(),
                    &SnapContext::default(),
                ))?;
            }
        }
        ignore_not_found(self.store().operate(
            &self.header_loc(),
            &WriteOp::new().remove(),
            &SnapContext::default(),
        ))
    }

    /// Closes the image: flushes, drops the watch and any lock.
    pub fn close(self) -> Result<()> {
        self.flush()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let loc = self.header_loc();
        if let Some(c) = lock(&self.lock_cookie).take() {
            let _ = self.store().unlock(&loc, LOCK_NAME, &c);
        }
        if let Some(c) = self.watch_cookie {
            let _ = self.store().unwatch(&loc, c);
        }
    }
}
