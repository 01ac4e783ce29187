//! The image directory: name <-> id in `rbd_directory`, the `rbd_id.<name>` objects,
//! listing and rename.

use rbdm_store::{Error as StoreError, Locator, WriteOp};

use super::{check_name, no_snapc, Rbd, DIRECTORY};
use crate::header;
use crate::{Error, PoolSpec, Result};

impl Rbd {
    /// The id of image `name`; `NotFound` if there is none (images in the trash have none).
    pub(crate) fn image_id(&self, spec: &PoolSpec, name: &str) -> Result<String> {
        let loc = self.loc(spec, DIRECTORY)?;
        let key = format!("name_{name}");
        let mut found = match self.store.omap_get_keys(&loc, &[&key]) {
            Err(StoreError::NoObject { .. }) => Default::default(),
            r => r?,
        };
        let id = found
            .remove(&key)
            .ok_or_else(|| Error::NotFound(format!("image '{name}' does not exist in {spec}")))?;
        String::from_utf8(id)
            .map_err(|_| Error::Corrupt(format!("directory entry of '{name}' is not UTF-8")))
    }

    /// The directory name of image `id`, `None` if the directory does not list it.
    pub fn image_name(&self, spec: &PoolSpec, id: &str) -> Result<Option<String>> {
        let loc = self.loc(spec, DIRECTORY)?;
        let key = format!("id_{id}");
        let found = match self.store.omap_get_keys(&loc, &[&key]) {
            Err(StoreError::NoObject { .. }) => return Ok(None),
            r => r?,
        };
        Ok(found
            .get(&key)
            .map(|v| String::from_utf8_lossy(v).into_owned()))
    }

    pub(super) fn dir_add(&self, spec: &PoolSpec, name: &str, id: &str) -> Result<()> {
        self.dir_add_ending(spec, name, id, None)
    }

    /// Names image `id`; with `intent`, removes that intent key in the same atomic write
    /// (the last step of a create).
    pub(super) fn dir_add_ending(
        &self,
        spec: &PoolSpec,
        name: &str,
        id: &str,
        intent: Option<&str>,
    ) -> Result<()> {
        let loc = self.loc(spec, DIRECTORY)?;
        let key = format!("name_{name}");
        let op = WriteOp::new()
            .omap_cmp(&key, None)
            .omap_set([
                (key.clone(), id.as_bytes().to_vec()),
                (format!("id_{id}"), name.as_bytes().to_vec()),
            ])
            .omap_rm(intent);
        match self.store.operate(&loc, &op, &no_snapc()) {
            Err(StoreError::Canceled(_)) => Err(Error::Exists(format!(
                "image '{name}' already exists in {spec}"
            ))),
            r => r.map_err(Into::into),
        }?;
        let (idloc, op) = (
            self.id_loc(spec, name)?,
            WriteOp::new().write_full(id.as_bytes()),
        );
        self.store.operate(&idloc, &op, &no_snapc())?;
        Ok(())
    }

    /// Where the `rbd_id.<name>` object of an image name lives.
    fn id_loc(&self, spec: &PoolSpec, name: &str) -> Result<Locator> {
        self.loc(spec, &header::id_object_name(name))
    }

    pub(crate) fn dir_remove(&self, spec: &PoolSpec, name: &str, id: &str) -> Result<()> {
        self.dir_remove_ending(spec, name, id, None)
    }

    /// Unnames image `id`; with `intent`, removes that intent key in the same atomic write.
    pub(super) fn dir_remove_ending(
        &self,
        spec: &PoolSpec,
        name: &str,
        id: &str,
        intent: Option<&str>,
    ) -> Result<()> {
        // The id object goes first: the name (and with it the intent) goes last, in one
        // atomic write, so a kill in between leaves the image named and the intent (if any)
        // to finish the removal; the other order left an `rbd_id.<name>` no image owns.
        if self.image_id(spec, name)? != id {
            return Err(Error::NotFound(format!(
                "image '{name}' does not exist in {spec}"
            )));
        }
        let (idloc, op) = (self.id_loc(spec, name)?, WriteOp::new().remove());
        match self.store.operate(&idloc, &op, &no_snapc()) {
            Err(StoreError::NoObject { .. }) | Ok(()) => {}
            Err(e) => return Err(e.into()),
        }
        let loc = self.loc(spec, DIRECTORY)?;
        let key = format!("name_{name}");
        let op = WriteOp::new()
            .omap_cmp(&key, Some(id.as_bytes()))
            .omap_rm([key.clone(), format!("id_{id}")])
            .omap_rm(intent);
        match self.store.operate(&loc, &op, &no_snapc()) {
            Err(StoreError::Canceled(_)) => Err(Error::NotFound(format!(
                "image '{name}' does not exist in {spec}"
            ))),
            r => r.map_err(Into::into),
        }
    }

    /// Image names in the pool/namespace, sorted (trash not included).
    pub fn list(&self, spec: &PoolSpec) -> Result<Vec<String>> {
        self.check_namespace(spec)?;
        self.settle_names_quietly(spec);
        let loc = self.loc(spec, DIRECTORY)?;
        Ok(self
            .omap_all(&loc, "name_")?
            .into_iter()
            .map(|(k, _)| k["name_".len()..].to_string())
            .collect())
    }

    /// Renames image `from`; `Invalid`: a bad `to`; `NotFound`: no `from`; `Exists`: `to` is taken.
    pub fn rename(&self, spec: &PoolSpec, from: &str, to: &str) -> Result<()> {
        check_name("image", to)?;
        let id = self.image_id(spec, from)?;
        self.dir_add(spec, to, &id)?;
        let loc = self.loc(spec, DIRECTORY)?;
        let op = WriteOp::new()
            .omap_rm([format!("name_{from}")])
            .omap_set([(format!("id_{id}"), to.as_bytes().to_vec())]);
        self.store.operate(&loc, &op, &no_snapc())?;
        let (from_id, remove) = (self.id_loc(spec, from)?, WriteOp::new().remove());
        let _ = self.store.operate(&from_id, &remove, &no_snapc());
        Ok(())
    }
}
