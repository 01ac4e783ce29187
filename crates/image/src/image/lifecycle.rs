//! The exclusive lock, watchers and lockers, removal of an image's objects, close.

use rbdm_store::{Error as StoreError, Locator, SnapContext, Watcher, WriteOp};

use super::{ignore_not_found, lock, Image, LOCK_NAME};
use crate::header::{self, Header};
use crate::{features, Error, Progress, Result};

impl Image {
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

    /// Clients holding the image's exclusive lock (writers).
    pub fn lockers(&self) -> Result<Vec<rbdm_store::LockInfo>> {
        match self.store().list_lockers(&self.header_loc(), LOCK_NAME) {
            Err(StoreError::NoObject { .. }) => Ok(Vec::new()),
            r => Ok(r?),
        }
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
