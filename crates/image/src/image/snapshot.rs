//! Snapshots: create, list, remove, protect, purge, rename.

use rbdm_extent::{ObjectMap, ObjectState};
use rbdm_store::{SnapContext, SnapId, WriteOp, HEAD};

use super::{ignore_not_found, Image};
use crate::finishers::{self, SNAP_CREATE, SNAP_REMOVE};
use crate::header::{Header, SnapMeta};
use crate::rbd::now;
use crate::{features, Error, Result, SnapInfo};

impl Image {
    pub(crate) fn snap_meta(&self, name: &str) -> Result<SnapMeta> {
        self.header()?
            .snap_by_name(name)
            .cloned()
            .ok_or_else(|| Error::no_snap(&self.name, name))
    }

    pub(super) fn check_head(&self, what: &str) -> Result<()> {
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
            // Checked again in the guarded update: a clone that attached after the check
            // above changed this header, so this runs again and sees it.
            let attached = hh.snap_children.get(&sm.id).map_or(0, |c| c.len());
            if !protected && attached > 0 {
                return Err(Error::Busy(format!(
                    "cannot unprotect: snapshot '{}@{name}' has {attached} child image(s)",
                    self.name
                )));
            }
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
}
