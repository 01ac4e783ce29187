//! Opening images: by name, by id (trash included), and quietly (no watch).

use super::Rbd;
use crate::{Error, Image, ImageSpec, PoolSpec, Result};

impl Rbd {
    /// Opens `spec` (its `snap`, if any, read-only). `NoImage` for an image in the trash.
    pub fn open(&self, spec: &ImageSpec, read_only: bool) -> Result<Image> {
        let id = match self.image_id(&spec.pool_spec(), &spec.image) {
            Err(Error::NoImage { .. }) => {
                // A create or trash restore cut short may be what names it.
                self.settle_names_quietly(&spec.pool_spec());
                self.image_id(&spec.pool_spec(), &spec.image)?
            }
            r => r?,
        };
        Image::open(
            self.clone(),
            spec.pool_spec(),
            spec.image.clone(),
            id,
            spec.snap.as_deref(),
            read_only,
            true,
        )
    }

    /// Opens by id: this also finds images in the trash.
    pub fn open_by_id(
        &self,
        spec: &PoolSpec,
        id: &str,
        snap: Option<&str>,
        read_only: bool,
    ) -> Result<Image> {
        let name = match self.image_name(spec, id)? {
            Some(n) => n,
            None => self
                .trash_get(spec, id)
                .map(|t| t.name)
                .unwrap_or_else(|_| id.to_string()),
        };
        Image::open(
            self.clone(),
            spec.clone(),
            name,
            id.to_string(),
            snap,
            read_only,
            true,
        )
    }

    /// Opens read-only without registering as a watcher: for internal readers (a migration
    /// source read by its destination) that must not keep the image "in use".
    pub fn open_quiet(
        &self,
        spec: &PoolSpec,
        name: Option<&str>,
        id: Option<&str>,
        snap: Option<&str>,
    ) -> Result<Image> {
        let id = match (id, name) {
            (Some(id), _) => id.to_string(),
            (None, Some(n)) => self.image_id(spec, n)?,
            (None, None) => return Err(Error::Invalid("an image name or id is needed".into())),
        };
        let name = match name {
            Some(n) => n.to_string(),
            None => self.image_name(spec, &id)?.unwrap_or_else(|| id.clone()),
        };
        Image::open(self.clone(), spec.clone(), name, id, snap, true, false)
    }
}
