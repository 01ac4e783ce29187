//! The trash: records in `rbd_trash`, move, list, restore, remove and purge.

use rbdm_store::{Error as StoreError, WriteOp};

use super::{check_name, no_snapc, now, Rbd, REMOVING, TRASH};
use crate::encoding::{Dec, Enc};
use crate::finishers;
use crate::intent;
use crate::{Error, Image, ImageSpec, PoolSpec, Progress, Result, TrashEntry};

/// One trash record, as stored under `id_<id>` in `rbd_trash`.
fn encode_trash(t: &TrashEntry) -> Vec<u8> {
    Enc::new()
        .versioned(1, 1, |e| {
            e.str(&t.name)
                .str(&t.source)
                .u64(t.deleted_at)
                .u64(t.deferment_end);
        })
        .finish()
}

fn decode_trash(id: &str, buf: &[u8]) -> Result<TrashEntry> {
    let what = format!("trash entry {id}");
    let mut d = Dec::new(buf, &what);
    let (_, mut b) = d.versioned(1)?;
    Ok(TrashEntry {
        id: id.into(),
        name: b.str()?,
        source: b.str()?,
        deleted_at: b.u64()?,
        deferment_end: b.u64()?,
    })
}

impl Rbd {
    /// Moves an image to the trash; returns its id.
    pub fn trash_move(&self, spec: &ImageSpec, delay_secs: u64) -> Result<String> {
        self.trash_move_as(spec, delay_secs, "USER")
    }

    /// `source` is "USER" or "MIGRATION" (hidden from `trash ls` without `--all`, and not
    /// removable or restorable by hand).
    pub fn trash_move_as(&self, spec: &ImageSpec, delay_secs: u64, source: &str) -> Result<String> {
        let pspec = spec.pool_spec();
        self.settle_names(&pspec)?;
        let id = self.image_id(&pspec, &spec.image)?;
        if source == "USER" {
            let image = Image::open(
                self.clone(),
                pspec.clone(),
                spec.image.clone(),
                id.clone(),
                None,
                true,
                false,
            )?;
            if !image.watchers()?.is_empty() {
                return Err(Error::Busy(format!(
                    "image '{}' still has watchers",
                    spec.image
                )));
            }
        }
        let t = now();
        let entry = TrashEntry {
            id: id.clone(),
            name: spec.image.clone(),
            source: source.into(),
            deleted_at: t,
            deferment_end: t + delay_secs,
        };
        // The trash entry, then the name, which also ends the intent: a kill in between is
        // finished forward (the name goes) by the next command that settles the pool.
        let dir = self.dir_anchor(&pspec)?;
        let _live = dir.begin(finishers::TRASH_MOVE, &id, spec.image.as_bytes())?;
        let loc = self.loc(&pspec, TRASH)?;
        self.store.operate(
            &loc,
            &WriteOp::new().omap_set([(format!("id_{id}"), encode_trash(&entry))]),
            &no_snapc(),
        )?;
        let ikey = intent::key(finishers::TRASH_MOVE, &id);
        self.dir_remove_ending(&pspec, &spec.image, &id, Some(&ikey))?;
        Ok(id)
    }

    pub(crate) fn trash_get(&self, spec: &PoolSpec, id: &str) -> Result<TrashEntry> {
        let loc = self.loc(spec, TRASH)?;
        let key = format!("id_{id}");
        let found = match self.store.omap_get_keys(&loc, &[&key]) {
            Err(StoreError::NoObject { .. }) => Default::default(),
            r => r?,
        };
        let v = found.get(&key).ok_or_else(|| {
            Error::NotFound(format!("image id '{id}' is not in the trash of {spec}"))
        })?;
        decode_trash(id, v)
    }

    /// The trash entry of image `id`, if it is in the trash.
    pub fn trash_find(&self, spec: &PoolSpec, id: &str) -> Result<Option<TrashEntry>> {
        match self.trash_get(spec, id) {
            Ok(t) => Ok(Some(t)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Drops the trash entry of image `id` (whose image is gone); idempotent.
    pub fn trash_forget(&self, spec: &PoolSpec, id: &str) -> Result<()> {
        let loc = self.loc(spec, TRASH)?;
        match self.store.operate(
            &loc,
            &WriteOp::new().omap_rm([format!("id_{id}")]),
            &no_snapc(),
        ) {
            Err(StoreError::NoObject { .. }) => Ok(()),
            r => Ok(r?),
        }
    }

    /// `all`: include entries of source "MIGRATION".
    pub fn trash_list(&self, spec: &PoolSpec, all: bool) -> Result<Vec<TrashEntry>> {
        self.check_namespace(spec)?;
        self.settle_names_quietly(spec);
        let loc = self.loc(spec, TRASH)?;
        let mut out = Vec::new();
        for (k, v) in self.omap_all(&loc, "id_")? {
            let t = decode_trash(&k[3..], &v)?;
            if all || (t.source != "MIGRATION" && t.source != REMOVING) {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Restores image `id` (as `new_name`, if given); `NotFound`: not in the trash; `Busy`: being
    /// removed, or a migration's source; `Invalid`/`Exists`: a bad or taken name.
    pub fn trash_restore(&self, spec: &PoolSpec, id: &str, new_name: Option<&str>) -> Result<()> {
        self.settle_names(spec)?;
        let t = self.trash_get(spec, id)?;
        if t.source == REMOVING {
            return Err(Error::Busy(format!(
                "image '{}' is being removed; run 'rbdm rm {}' to finish",
                t.name, t.name
            )));
        }
        // A migration source whose migration is gone (an abort cut short) may come back.
        if t.source == "MIGRATION"
            && self
                .open_by_id(spec, id, None, true)?
                .migration_record()?
                .is_some()
        {
            return Err(Error::Busy(format!(
                "image '{}' is the source of a migration; use 'rbdm migration abort'",
                t.name
            )));
        }
        self.trash_restore_any(spec, &t, new_name)
    }

    /// Restores an entry whatever its source (an aborted migration's source too).
    pub fn trash_restore_any(
        &self,
        spec: &PoolSpec,
        t: &TrashEntry,
        new_name: Option<&str>,
    ) -> Result<()> {
        let name = new_name.unwrap_or(&t.name);
        check_name("image", name)?;
        // The name, then the trash entry goes: a kill in between is finished forward by the
        // next command that settles the pool (or by running this again).
        let dir = self.dir_anchor(spec)?;
        let _live = dir.begin(finishers::TRASH_RESTORE, &t.id, name.as_bytes())?;
        if self.image_id(spec, name).ok().as_deref() != Some(t.id.as_str()) {
            self.dir_add(spec, name, &t.id)?;
        }
        self.trash_forget(spec, &t.id)?;
        dir.end(finishers::TRASH_RESTORE, &t.id)
    }

    /// Refused before the deferment end unless `force`; refused for migration sources.
    pub fn trash_remove(
        &self,
        spec: &PoolSpec,
        id: &str,
        force: bool,
        progress: Progress,
    ) -> Result<()> {
        self.settle_names(spec)?;
        let t = self.trash_get(spec, id)?;
        if t.source == "MIGRATION" {
            return Err(Error::Busy(format!(
                "image '{}' is the source of a migration; use 'rbdm migration commit'",
                t.name
            )));
        }
        if !force && now() < t.deferment_end && t.source != REMOVING {
            return Err(Error::Busy(format!(
                "image '{}' is not yet expired from the trash (use --force)",
                t.name
            )));
        }
        self.trash_purge_entry(spec, &t, progress)
    }

    /// Deletes a trash entry and its image whatever its source.
    pub fn trash_purge_entry(
        &self,
        spec: &PoolSpec,
        t: &TrashEntry,
        progress: Progress,
    ) -> Result<()> {
        // Each step may run again: a header already gone means only the entry is left.
        match self.remove_by_id(spec, &t.id, None, progress) {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        self.trash_forget(spec, &t.id)
    }
}
