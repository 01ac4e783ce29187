//! The object map: where it lives, loading (or rebuilding) it, and keeping it.

use rbdm_extent::{ObjectMap, ObjectState};
use rbdm_store::{Error as StoreError, Locator, SnapContext, SnapId, WriteOp, HEAD};

use super::{lock, Image};
use crate::header::{self, Header};
use crate::{features, Error, Result};

impl Image {
    pub(super) fn map_loc(&self, snap: Option<SnapId>) -> Locator {
        Locator::new(
            self.pool_id,
            &self.spec.namespace,
            &header::object_map_name(&self.id, snap),
        )
    }

    pub(super) fn has_object_map(h: &Header) -> bool {
        h.features & features::OBJECT_MAP != 0
    }

    /// Loads an object map; an absent or damaged one is rebuilt from the objects themselves.
    pub(super) fn load_map(
        &self,
        h: &Header,
        snap: Option<SnapId>,
        size: u64,
    ) -> Result<ObjectMap> {
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
            Err(StoreError::NoObject { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let mut map = match stored {
            Some(m) => m,
            // Without the map's history every existing object counts as changed. A
            // snapshot's objects include those whose head is gone since (clones only).
            None => {
                let objects = self.own_objects(h, snap.is_some())?;
                self.rebuild_map(h, &objects, None, snap.unwrap_or(HEAD), size)?
            }
        };
        if map.len() != count {
            map.resize(count);
        }
        Ok(map)
    }

    /// The numbers of this image's data objects that exist at head, from one listing.
    pub(super) fn own_object_numbers(&self, h: &Header) -> Result<Vec<(u64, Locator)>> {
        self.own_objects(h, false)
    }

    /// The same, with `clones` also those that exist only as clones (for snapshots).
    pub(super) fn own_objects(&self, h: &Header, clones: bool) -> Result<Vec<(u64, Locator)>> {
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

    pub(super) fn rebuild_map(
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
                Err(StoreError::NoObject { .. }) => continue,
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

    pub(super) fn save_map(&self, snap: Option<SnapId>, map: &ObjectMap) -> Result<()> {
        let op = WriteOp::new().write_full(&map.encode());
        self.store()
            .operate(&self.map_loc(snap), &op, &SnapContext::default())?;
        Ok(())
    }

    /// Runs `f` on the head object map (loaded on first use) and saves it if `f` changed it.
    pub(super) fn with_head_map<T>(
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

    pub(super) fn set_object_state(
        &self,
        h: &Header,
        object_no: u64,
        state: ObjectState,
    ) -> Result<()> {
        self.with_head_map(h, |m| (m.set(object_no, state), ()))?;
        Ok(())
    }
}
