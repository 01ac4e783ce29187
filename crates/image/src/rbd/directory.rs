//! The image directory: name <-> id in `rbd_directory`, the `rbd_id.<name>` objects,
//! listing and rename.

use rbdm_cls::directory::{decode_string, encode_string};
use rbdm_store::{Error as StoreError, Locator, WriteOp, HEAD};

use super::{check_name, no_snapc, Rbd, DIRECTORY};
use crate::encoding::Dec;
use crate::format_version::{is_old_string, undecodable};
use crate::{finishers, header};
use crate::{Error, PoolSpec, Result};

/// A directory value or `rbd_id.<name>` data: Ceph's u32-length string. A raw value an older
/// rbdm wrote is refused by name (see [`crate::format_version`]).
pub(crate) fn decode_name(what: &str, bytes: &[u8]) -> Result<String> {
    decode_string("directory string", bytes).map_err(|e| undecodable(what, bytes, e, is_old_string))
}

impl Rbd {
    /// The id of image `name`; `NoImage` if there is none (images in the trash have none).
    pub(crate) fn image_id(&self, spec: &PoolSpec, name: &str) -> Result<String> {
        let key = format!("name_{name}");
        let id = self
            .dir_value(spec, &key)?
            .ok_or_else(|| Error::no_image(spec, name))?;
        decode_name(&format!("directory entry {key} of {spec}"), &id)
    }

    /// The directory name of image `id`, `None` if the directory does not list it.
    pub fn image_name(&self, spec: &PoolSpec, id: &str) -> Result<Option<String>> {
        let key = format!("id_{id}");
        match self.dir_value(spec, &key)? {
            Some(v) => decode_name(&format!("directory entry {key} of {spec}"), &v).map(Some),
            None => Ok(None),
        }
    }

    /// One `rbd_directory` value; an absent directory has none.
    fn dir_value(&self, spec: &PoolSpec, key: &str) -> Result<Option<Vec<u8>>> {
        let loc = self.loc(spec, DIRECTORY)?;
        match self.store.omap_get_keys(&loc, &[key]) {
            Err(StoreError::NoObject { .. }) => Ok(None),
            r => Ok(r?.remove(key)),
        }
    }

    pub(super) fn dir_add(&self, spec: &PoolSpec, name: &str, id: &str) -> Result<()> {
        self.dir_add_ending(spec, name, id, None)
    }

    /// Names image `id`: its `rbd_id.<name>` object, then the directory entries, as librbd
    /// orders them (a kill in between leaves an id object its intent, or the next create of
    /// the name, takes back); with `intent`, the entries' write also removes that intent key.
    pub(super) fn dir_add_ending(
        &self,
        spec: &PoolSpec,
        name: &str,
        id: &str,
        intent: Option<&str>,
    ) -> Result<()> {
        self.write_id_object(spec, name, id)?;
        let loc = self.loc(spec, DIRECTORY)?;
        let key = format!("name_{name}");
        let op = WriteOp::new()
            .omap_cmp(&key, None)
            .omap_set([
                (key.clone(), encode_string(id)),
                (format!("id_{id}"), encode_string(name)),
            ])
            .omap_rm(intent);
        match self.store.operate(&loc, &op, &no_snapc()) {
            Err(StoreError::Canceled(_)) => Err(Error::Exists(format!(
                "image '{name}' already exists in {spec}"
            ))),
            r => r.map_err(Into::into),
        }
    }

    /// Writes `rbd_id.<name>` holding `id`. One that exists is taken over only when no
    /// directory entry and no other create or restore under way names `name` (a rename or a
    /// restore cut short left it); otherwise `Exists`.
    pub(super) fn write_id_object(&self, spec: &PoolSpec, name: &str, id: &str) -> Result<()> {
        let loc = self.id_loc(spec, name)?;
        let data = encode_string(id);
        let fresh = WriteOp::new().create_exclusive().write_full(&data);
        match self.store.operate(&loc, &fresh, &no_snapc()) {
            Err(StoreError::Exists(_)) => {}
            r => return Ok(r?),
        }
        if self.dir_value(spec, &format!("name_{name}"))?.is_some()
            || self.naming_under_way(spec, name, id)?
        {
            return Err(Error::Exists(format!(
                "image '{name}' already exists in {spec}"
            )));
        }
        let op = WriteOp::new().write_full(&data);
        self.store.operate(&loc, &op, &no_snapc())?;
        Ok(())
    }

    /// Whether a create or trash restore of an image other than `id` is naming `name`.
    fn naming_under_way(&self, spec: &PoolSpec, name: &str, id: &str) -> Result<bool> {
        for i in self.pending(spec)? {
            let named = match i.op.as_str() {
                _ if i.arg == id => continue,
                finishers::CREATE => Dec::new(&i.data, "create intent").str()?,
                finishers::TRASH_RESTORE => String::from_utf8_lossy(&i.data).into_owned(),
                _ => continue,
            };
            if named == name {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Removes `rbd_id.<name>` if it holds `id` (a create or restore undone after a kill).
    pub(crate) fn drop_id_object_of(&self, spec: &PoolSpec, name: &str, id: &str) -> Result<()> {
        let loc = self.id_loc(spec, name)?;
        let held = match self.store.read(&loc, HEAD, 0, u64::from(u32::MAX)) {
            Err(StoreError::NoObject { .. }) => return Ok(()),
            r => r?,
        };
        if decode_string("rbd_id", &held).ok().as_deref() != Some(id) {
            return Ok(());
        }
        self.remove_object(&loc)
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
            return Err(Error::no_image(spec, name));
        }
        self.remove_object(&self.id_loc(spec, name)?)?;
        let loc = self.loc(spec, DIRECTORY)?;
        let key = format!("name_{name}");
        let op = WriteOp::new()
            .omap_cmp(&key, Some(&encode_string(id)))
            .omap_rm([key.clone(), format!("id_{id}")])
            .omap_rm(intent);
        match self.store.operate(&loc, &op, &no_snapc()) {
            Err(StoreError::Canceled(_)) => Err(Error::no_image(spec, name)),
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

    /// Renames image `from`; `Invalid`: a bad `to`; `NoImage`: no `from`; `Exists`: `to` is
    /// taken. `rbd_id.<to>`, then `rbd_id.<from>` goes, then both directory entries change in
    /// one write: an id object is written before its name and removed before it, so a kill
    /// leaves at most an id object no name owns (which running the rename again, or the next
    /// create of that name, takes over) and a name whose id object is gone (as a cut-short
    /// `rm` does).
    pub fn rename(&self, spec: &PoolSpec, from: &str, to: &str) -> Result<()> {
        check_name("image", to)?;
        let id = self.image_id(spec, from)?;
        self.write_id_object(spec, to, &id)?;
        let from_idobj = self.id_loc(spec, from)?;
        self.remove_object(&from_idobj)?;
        let (from_key, to_key) = (format!("name_{from}"), format!("name_{to}"));
        let op = WriteOp::new()
            .omap_cmp(&from_key, Some(&encode_string(&id)))
            .omap_cmp(&to_key, None)
            .omap_rm([from_key])
            .omap_set([
                (to_key, encode_string(&id)),
                (format!("id_{id}"), encode_string(to)),
            ]);
        let loc = self.loc(spec, DIRECTORY)?;
        if let Err(e) = self.store.operate(&loc, &op, &no_snapc()) {
            // Back as it was: `from` keeps its id object, `to` loses ours.
            let back = WriteOp::new().write_full(&encode_string(&id));
            self.store.operate(&from_idobj, &back, &no_snapc())?;
            self.drop_id_object_of(spec, to, &id)?;
            return Err(match e {
                StoreError::Canceled(_) => {
                    Error::Exists(format!("image '{to}' already exists in {spec}"))
                }
                e => e.into(),
            });
        }
        Ok(())
    }
}
