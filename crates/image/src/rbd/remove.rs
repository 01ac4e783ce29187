//! Removing images: `rm` (through the trash, as librbd's) and its recovery by id.

use super::Rbd;
use crate::{Error, Image, ImageSpec, PoolSpec, Progress, Result, TrashSource};

impl Rbd {
    /// Refused (`Busy`) with snapshots, with watchers, or with children. As librbd's, a
    /// removal first moves the image to the trash (source `Removing`, hidden), then removes
    /// it from there: a kill leaves no half-removed image under its name, and `rm` of the
    /// same name finishes what is in the trash.
    pub fn remove(&self, spec: &ImageSpec, progress: Progress) -> Result<()> {
        let pspec = spec.pool_spec();
        self.settle_names(&pspec)?;
        let id = match self.image_id(&pspec, &spec.image) {
            Err(e @ Error::NoImage { .. }) => {
                let cut = self
                    .trash_list(&pspec, true)?
                    .into_iter()
                    .find(|t| t.name == spec.image && t.source == TrashSource::Removing);
                return match cut {
                    Some(t) => self.trash_purge_entry(&pspec, &t, progress),
                    None => Err(e),
                };
            }
            r => r?,
        };
        let image = Image::open(
            self.clone(),
            pspec.clone(),
            spec.image.clone(),
            id.clone(),
            None,
            false,
            false,
        )?;
        self.check_removable(&image, &spec.image)?;
        drop(image);
        self.trash_move_as(spec, 0, TrashSource::Removing)?;
        let t = self.trash_get(&pspec, &id)?;
        self.trash_purge_entry(&pspec, &t, progress)
    }

    /// What refuses a removal: a fence, snapshots, watchers.
    fn check_removable(&self, image: &Image, label: &str) -> Result<()> {
        image.check_fence()?;
        if !image.snap_list()?.is_empty() {
            return Err(Error::NotEmpty(format!(
                "image '{label}' has snapshots - these must be deleted with 'rbdm snap purge' before the image can be removed"
            )));
        }
        if !image.watchers()?.is_empty() {
            return Err(Error::Busy(format!("image '{label}' still has watchers")));
        }
        Ok(())
    }

    pub(crate) fn remove_by_id(
        &self,
        spec: &PoolSpec,
        id: &str,
        name: Option<&str>,
        progress: Progress,
    ) -> Result<()> {
        let image = Image::open(
            self.clone(),
            spec.clone(),
            name.unwrap_or(id).into(),
            id.into(),
            None,
            false,
            false,
        )?;
        self.check_removable(&image, name.unwrap_or(id))?;
        image.remove_data(progress)?;
        if let Some(n) = name {
            self.dir_remove(spec, n, id)?;
        }
        if let Some(p) = image.parent_link() {
            self.child_unregister(&p, spec, id)?;
        }
        image.remove_header()?;
        Ok(())
    }

    /// Removes image `id` and its trash entry, if any, whether or not a directory entry
    /// still names it (a removal cut short). Each step may run again.
    pub fn remove_id(&self, spec: &PoolSpec, id: &str, progress: Progress) -> Result<()> {
        let name = self.image_name(spec, id)?;
        match self.remove_by_id(spec, id, name.as_deref(), progress) {
            Ok(()) => {}
            Err(e) if e.is_no_image() => {}
            Err(e) => return Err(e),
        }
        self.trash_forget(spec, id)
    }
}
