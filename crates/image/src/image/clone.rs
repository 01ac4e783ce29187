//! The parent of a clone: read-through handle, parent info and ranges, flatten, children.

use std::sync::Arc;

use rbdm_extent::ObjectState;
use rbdm_store::{Locator, SnapId};

use super::{lock, Image};
use crate::finishers::{self, FLATTEN};
use crate::header::{self, Header, ParentLink};
use crate::{ChildInfo, Error, ParentInfo, PoolSpec, Progress, Result};

impl Image {
    pub(super) fn parent_info(&self, link: &ParentLink) -> Result<ParentInfo> {
        let pool = self.store().pool_name(link.pool_id)?;
        let pspec = PoolSpec::new(&pool, &link.namespace);
        let image_name = match self.rbd.image_name(&pspec, &link.image_id)? {
            Some(n) => n,
            None => self
                .rbd
                .trash_get(&pspec, &link.image_id)
                .map(|t| t.name)
                .unwrap_or_default(),
        };
        let ploc = Locator::new(
            link.pool_id,
            &link.namespace,
            &header::header_name(&link.image_id),
        );
        let snap_name = Header::load(self.store(), &ploc)?
            .snaps
            .get(&link.snap_id)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        Ok(ParentInfo {
            pool,
            namespace: link.namespace.clone(),
            image_name,
            image_id: link.image_id.clone(),
            snap_name,
            snap_id: link.snap_id,
            overlap: link.overlap,
        })
    }

    pub(crate) fn parent_link(&self) -> Option<ParentLink> {
        self.cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .parent
            .clone()
    }

    /// The parent snapshot a clone reads through to, opened read-only once and kept.
    pub(super) fn parent_image(&self, link: &ParentLink) -> Result<Arc<Image>> {
        let mut slot = lock(&self.parent);
        if let Some((l, img)) = slot.as_ref() {
            if l.pool_id == link.pool_id && l.image_id == link.image_id && l.snap_id == link.snap_id
            {
                return Ok(img.clone());
            }
        }
        let pool = self.store().pool_name(link.pool_id)?;
        let pspec = PoolSpec::new(&pool, &link.namespace);
        let mut img = Image::open(
            self.rbd.clone(),
            pspec,
            link.image_id.clone(),
            link.image_id.clone(),
            None,
            true,
            false,
        )?;
        img.snap_id = Some(link.snap_id);
        img.read_only = true;
        let img = Arc::new(img);
        *slot = Some((link.clone(), img.clone()));
        Ok(img)
    }

    /// Image ranges of an object that read through to the parent.
    pub(super) fn parent_ranges(
        &self,
        h: &Header,
        link: &ParentLink,
        object_no: u64,
    ) -> Vec<(u64, u64)> {
        self.parent_ranges_at(h, link, h.size, object_no)
    }

    /// The same, for an image of `size` bytes (a snapshot's size may differ from the head's).
    pub(super) fn parent_ranges_at(
        &self,
        h: &Header,
        link: &ParentLink,
        size: u64,
        object_no: u64,
    ) -> Vec<(u64, u64)> {
        h.layout
            .object_extents_in_image(object_no, link.overlap.min(size))
    }

    pub fn flatten(&self, progress: Progress) -> Result<()> {
        self.check_head("flatten")?;
        let h = self.begin_change()?;
        let link = h
            .parent
            .clone()
            .ok_or_else(|| Error::Invalid(format!("image '{}' has no parent", self.name)))?;
        let count = h.layout.object_count(link.overlap.min(h.size));
        for object_no in 0..count {
            progress(object_no, count);
            let _gate = self.io_gate.read().unwrap_or_else(|e| e.into_inner());
            self.set_object_state(&h, object_no, ObjectState::Exists)?;
            self.copy_up(&h, &link, object_no)?;
        }
        // Snapshots whose parent range the copy-ups covered no longer need the parent;
        // one that saw more of it (the head was shrunk since) keeps its link. The header and
        // the parents' children lists change in two steps: the intent names every link, and
        // a finisher makes the lists follow whatever the header says.
        let flattened = link.overlap.min(h.size);
        let mut links = vec![link];
        links.extend(h.snaps.values().filter_map(|s| s.parent.clone()));
        let key = |l: &ParentLink| {
            (
                l.pool_id,
                l.namespace.clone(),
                l.image_id.clone(),
                l.snap_id,
            )
        };
        links.sort_by_key(key);
        links.dedup_by_key(|l| key(l));
        let _live = self.intent_begin(FLATTEN, "head", &finishers::links(&links))?;
        self.update_header(|hh| {
            hh.parent = None;
            for s in hh.snaps.values_mut() {
                if s.parent
                    .as_ref()
                    .is_some_and(|p| p.overlap.min(s.size) <= flattened)
                {
                    s.parent = None;
                }
            }
            Ok(())
        })?;
        self.sync_child_links(&links)?;
        self.intent_end(FLATTEN, "head")?;
        progress(count, count);
        Ok(())
    }

    /// Children of the open snapshot (or of every snapshot when opened at head).
    pub fn children(&self) -> Result<Vec<ChildInfo>> {
        let h = self.header()?;
        let snaps: Vec<SnapId> = match self.snap_id {
            Some(id) => vec![id],
            None => h.snaps.keys().copied().collect(),
        };
        let mut out = Vec::new();
        for s in snaps {
            out.extend(
                self.rbd
                    .children_of(self.pool_id, &self.spec.namespace, &self.id, s)?,
            );
        }
        Ok(out)
    }
}
