//! An open image: the [`Image`] handle, its opening, accessors and `Drop`. Each subject is
//! a child file, all `impl Image`: `io` (read, write, discard, flush), `copy_up` (a clone's
//! first write into an object its parent supplies), `object_map`, `accounting` (allocated
//! extents, `du`, `diff`), `resize`, `snapshot`, `rollback`, `clone` (the parent, flatten,
//! children), `metadata`, `lifecycle` (the exclusive lock, lockers, removal, close),
//! `source` (a migration destination's source) and `engine` (what the copy and migration
//! engines use directly).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use rbdm_extent::ObjectMap;
use rbdm_store::{Error as StoreError, Locator, PoolId, SnapId, HEAD};

use crate::header::{self, Header, ParentLink};
use crate::migration::MigrationSource;
use crate::{Error, ImageInfo, Layout, PoolSpec, Rbd, Result};

mod accounting;
mod clone;
mod copy_up;
mod engine;
mod io;
mod lifecycle;
mod metadata;
mod object_map;
mod resize;
mod rollback;
mod snapshot;
mod source;

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
        Ok(()) | Err(StoreError::NoObject { .. }) => Ok(()),
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
        let not_found = |_| Error::no_image_here(&name);
        let version = rbd.store().stat(&hloc, HEAD).map_err(not_found)?.version;
        let h = Header::load(rbd.store(), &hloc)?;
        let snap_id = match snap {
            Some(s) => Some(
                h.snap_by_name(s)
                    .ok_or_else(|| Error::no_snap(&name, s))?
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

    fn data_pool(&self, h: &Header) -> PoolId {
        h.data_pool_id.unwrap_or(self.pool_id)
    }

    fn read_snap(&self) -> SnapId {
        self.snap_id.unwrap_or(HEAD)
    }

    /// Size and parent link at the point this handle is open at.
    fn view(&self, h: &Header) -> Result<(u64, Option<ParentLink>)> {
        match self.snap_id {
            None => Ok((h.size, h.parent.clone())),
            Some(id) => {
                let s = h.snaps.get(&id).ok_or_else(|| Error::SnapRemoved {
                    image: self.name.clone(),
                    id,
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
