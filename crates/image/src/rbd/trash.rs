//! The trash: records in `rbd_trash`, move, list, restore, remove and purge.

use std::time::{SystemTime, UNIX_EPOCH};

use rbdm_cls::trash::{TrashImageSpec, TrashSource, TrashState};
use rbdm_cls::UTime;
use rbdm_store::{Error as StoreError, WriteOp};

use super::{check_name, no_snapc, now, Rbd, TRASH};
use crate::finishers;
use crate::format_version::{is_old_trash, undecodable};
use crate::intent;
use crate::{Error, Image, ImageSpec, PoolSpec, Progress, Result, TrashEntry};

/// Now as Ceph stamps a trash entry (`ceph_clock_now`).
fn utime_now() -> UTime {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    UTime {
        sec: d.as_secs() as u32,
        nsec: d.subsec_nanos(),
    }
}

/// Image `id`'s trash entry as stored; an older rbdm's entry is refused by name.
fn decode_spec(id: &str, buf: &[u8]) -> Result<TrashImageSpec> {
    TrashImageSpec::decode(buf)
        .map_err(|e| undecodable(&format!("trash entry {id}"), buf, e, is_old_trash))
}

fn decode_trash(id: &str, buf: &[u8]) -> Result<TrashEntry> {
    let spec = decode_spec(id, buf)?;
    Ok(TrashEntry {
        id: id.into(),
        name: spec.name,
        source: spec.source,
        state: spec.state,
        deleted_at: spec.deletion_time.sec.into(),
        deferment_end: spec.deferment_end_time.sec.into(),
    })
}

/// Hidden from `trash ls` without `--all`: migration sources and removals under way.
fn hidden(source: TrashSource) -> bool {
    matches!(source, TrashSource::Migration | TrashSource::Removing)
}

impl Rbd {
    /// Moves an image to the trash; returns its id.
    pub fn trash_move(&self, spec: &ImageSpec, delay_secs: u64) -> Result<String> {
        self.trash_move_as(spec, delay_secs, TrashSource::User)
    }

    /// Moves an image to the trash as `source` (see [`TrashEntry::source`]).
    pub fn trash_move_as(
        &self,
        spec: &ImageSpec,
        delay_secs: u64,
        source: TrashSource,
    ) -> Result<String> {
        let pspec = spec.pool_spec();
        self.settle_names(&pspec)?;
        let id = self.image_id(&pspec, &spec.image)?;
        if source == TrashSource::User {
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
        let t = utime_now();
        let entry = TrashImageSpec {
            source,
            name: spec.image.clone(),
            deletion_time: t,
            deferment_end_time: UTime {
                sec: t
                    .sec
                    .saturating_add(delay_secs.try_into().unwrap_or(u32::MAX)),
                ..t
            },
            state: TrashState::Normal,
        };
        // The trash entry, then the name, which also ends the intent: a kill in between is
        // finished forward (the name goes) by the next command that settles the pool.
        let dir = self.dir_anchor(&pspec)?;
        let _live = dir.begin(finishers::TRASH_MOVE, &id, spec.image.as_bytes())?;
        let loc = self.loc(&pspec, TRASH)?;
        self.store.operate(
            &loc,
            &WriteOp::new().omap_set([(format!("id_{id}"), entry.encode())]),
            &no_snapc(),
        )?;
        let ikey = intent::key(finishers::TRASH_MOVE, &id);
        self.dir_remove_ending(&pspec, &spec.image, &id, Some(&ikey))?;
        Ok(id)
    }

    pub(crate) fn trash_get(&self, spec: &PoolSpec, id: &str) -> Result<TrashEntry> {
        decode_trash(id, &self.trash_raw(spec, id)?)
    }

    /// The stored bytes of image `id`'s trash entry; `NoTrashEntry` if there is none.
    fn trash_raw(&self, spec: &PoolSpec, id: &str) -> Result<Vec<u8>> {
        let loc = self.loc(spec, TRASH)?;
        let key = format!("id_{id}");
        let mut found = match self.store.omap_get_keys(&loc, &[&key]) {
            Err(StoreError::NoObject { .. }) => Default::default(),
            r => r?,
        };
        found
            .remove(&key)
            .ok_or_else(|| Error::no_trash_entry(spec, id))
    }

    /// Sets the state of image `id`'s trash entry, guarded on the entry read (librbd's
    /// `trash_state_set`); `Busy` if it changed meanwhile.
    fn trash_set_state(&self, spec: &PoolSpec, id: &str, state: TrashState) -> Result<()> {
        let old = self.trash_raw(spec, id)?;
        let mut entry = decode_spec(id, &old)?;
        if entry.state == state {
            return Ok(());
        }
        entry.state = state;
        let key = format!("id_{id}");
        let op = WriteOp::new()
            .omap_cmp(&key, Some(&old))
            .omap_set([(key.clone(), entry.encode())]);
        match self
            .store
            .operate(&self.loc(spec, TRASH)?, &op, &no_snapc())
        {
            Err(StoreError::Canceled(_)) => Err(Error::Busy(format!(
                "trash entry of image id '{id}' changed meanwhile"
            ))),
            r => Ok(r?),
        }
    }

    /// The trash entry of image `id`, if it is in the trash.
    pub fn trash_find(&self, spec: &PoolSpec, id: &str) -> Result<Option<TrashEntry>> {
        match self.trash_get(spec, id) {
            Ok(t) => Ok(Some(t)),
            Err(Error::NoTrashEntry { .. }) => Ok(None),
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

    /// `all`: include the hidden entries (migration sources, removals under way).
    pub fn trash_list(&self, spec: &PoolSpec, all: bool) -> Result<Vec<TrashEntry>> {
        self.check_namespace(spec)?;
        self.settle_names_quietly(spec);
        let loc = self.loc(spec, TRASH)?;
        let mut out = Vec::new();
        for (k, v) in self.omap_all(&loc, "id_")? {
            let t = decode_trash(&k[3..], &v)?;
            if all || !hidden(t.source) {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Restores image `id` (as `new_name`, if given); `NoTrashEntry`: not in the trash;
    /// `Busy`: being removed, or a migration's source; `Invalid`/`Exists`: a bad or taken name.
    pub fn trash_restore(&self, spec: &PoolSpec, id: &str, new_name: Option<&str>) -> Result<()> {
        self.settle_names(spec)?;
        let t = self.trash_get(spec, id)?;
        if t.source == TrashSource::Removing {
            return Err(Error::Busy(format!(
                "image '{}' is being removed; run 'rbdm rm {}' to finish",
                t.name, t.name
            )));
        }
        if t.state == TrashState::Removing {
            return Err(Error::Busy(format!(
                "image '{}' is being removed from the trash; run 'rbdm trash rm {id}' to finish",
                t.name
            )));
        }
        // A migration source whose migration is gone (an abort cut short) may come back.
        if t.source == TrashSource::Migration
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
        if t.source == TrashSource::Migration {
            return Err(Error::Busy(format!(
                "image '{}' is the source of a migration; use 'rbdm migration commit'",
                t.name
            )));
        }
        // A removal already started (by `rm`, or a `trash rm` cut short) is finished
        // whatever the deferment: the entry says so.
        let started = t.source == TrashSource::Removing || t.state == TrashState::Removing;
        if !force && now() < t.deferment_end && !started {
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
        // The entry says `Removing` first, so a removal cut short is not restored half
        // gone. Each step may run again: a header already gone means only the entry is left.
        match self.trash_set_state(spec, &t.id, TrashState::Removing) {
            Ok(()) | Err(Error::NoTrashEntry { .. }) => {}
            Err(e) => return Err(e),
        }
        match self.remove_by_id(spec, &t.id, None, progress) {
            Ok(()) => {}
            Err(e) if e.is_no_image() => {}
            Err(e @ (Error::Busy(_) | Error::NotEmpty(_))) => {
                // Refused (snapshots, watchers) before anything went: the entry is restorable
                // again, as librbd leaves it, even when an earlier attempt had marked it.
                self.trash_set_state(spec, &t.id, TrashState::Normal)?;
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        self.trash_forget(spec, &t.id)
    }
}
