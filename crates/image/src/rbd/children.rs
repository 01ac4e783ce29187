//! The children registry (omap of `rbd_children` in the parent's pool) and reparenting.

use rbdm_store::{Error as StoreError, Locator, PoolId, WriteOp};

use super::{no_snapc, Rbd, CHILDREN};
use crate::header::ParentLink;
use crate::{ChildInfo, Error, Image, PoolSpec, Result};

impl Rbd {
    fn child_key(
        link: &ParentLink,
        child_pool: PoolId,
        child: &PoolSpec,
        child_id: &str,
    ) -> String {
        format!(
            "{}{}\x01{}\x01{}",
            Self::children_prefix(link.namespace.as_str(), &link.image_id, link.snap_id),
            child_pool,
            child.namespace,
            child_id
        )
    }

    fn children_prefix(ns: &str, image_id: &str, snap_id: u64) -> String {
        format!("child_{ns}\x01{image_id}\x01{snap_id:016x}\x01")
    }

    fn children_loc(&self, parent_pool: PoolId) -> Locator {
        Locator::new(parent_pool, "", CHILDREN)
    }

    /// Records `child` as a clone of `link`'s snapshot (also a migration destination that
    /// keeps its source's parent).
    pub fn child_register(
        &self,
        link: &ParentLink,
        child: &PoolSpec,
        child_id: &str,
    ) -> Result<()> {
        let key = Self::child_key(link, self.pool_id(&child.pool)?, child, child_id);
        self.store.operate(
            &self.children_loc(link.pool_id),
            &WriteOp::new().omap_set([(key, Vec::new())]),
            &no_snapc(),
        )?;
        Ok(())
    }

    pub(crate) fn child_unregister(
        &self,
        link: &ParentLink,
        child: &PoolSpec,
        child_id: &str,
    ) -> Result<()> {
        let key = Self::child_key(link, self.pool_id(&child.pool)?, child, child_id);
        match self.store.operate(
            &self.children_loc(link.pool_id),
            &WriteOp::new().omap_rm([key]),
            &no_snapc(),
        ) {
            Err(StoreError::NoPool(_)) | Ok(()) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Children of one snapshot of an image.
    pub(crate) fn children_of(
        &self,
        pool: PoolId,
        ns: &str,
        image_id: &str,
        snap_id: u64,
    ) -> Result<Vec<ChildInfo>> {
        let prefix = Self::children_prefix(ns, image_id, snap_id);
        let mut out = Vec::new();
        for (key, _) in self.omap_all(&self.children_loc(pool), &prefix)? {
            let rest = &key[prefix.len()..];
            let parts: Vec<&str> = rest.split('\x01').collect();
            let [cpool, cns, cid] = parts[..] else {
                return Err(Error::Corrupt(format!("children registry key {key:?}")));
            };
            let cpool: PoolId = cpool
                .parse()
                .map_err(|_| Error::Corrupt(format!("children registry key {key:?}")))?;
            let pool_name = self.store.pool_name(cpool)?;
            let cspec = PoolSpec::new(&pool_name, cns);
            let (name, in_trash) = match self.image_name(&cspec, cid)? {
                Some(n) => (n, false),
                None => (
                    self.trash_get(&cspec, cid)
                        .map(|t| t.name)
                        .unwrap_or_default(),
                    true,
                ),
            };
            out.push(ChildInfo {
                pool: pool_name,
                namespace: cns.into(),
                image_name: name,
                image_id: cid.into(),
                in_trash,
            });
        }
        Ok(out)
    }

    /// Moves every clone child of `from`'s snapshots to the snapshot of the same name in
    /// `to` (a migration commit with `--force`); returns how many children moved.
    pub fn reparent_children(&self, from: &Image, to: &Image) -> Result<usize> {
        let fh = from.header()?;
        let th = to.header()?;
        let mut moved = 0;
        for s in fh.snaps.values() {
            let children =
                self.children_of(from.pool(), &from.pool_spec().namespace, from.id(), s.id)?;
            if children.is_empty() {
                continue;
            }
            let target = th
                .snap_by_name(&s.name)
                .ok_or_else(|| Error::no_snap_to_follow(to.name(), &s.name))?;
            let old = |p: &ParentLink| {
                p.pool_id == from.pool() && p.image_id == from.id() && p.snap_id == s.id
            };
            for c in children {
                let cspec = PoolSpec::new(&c.pool, &c.namespace);
                let child = Image::open(
                    self.clone(),
                    cspec.clone(),
                    c.image_name.clone(),
                    c.image_id.clone(),
                    None,
                    false,
                    false,
                )?;
                let mut old_link = None;
                child.update_header(|h| {
                    let relink = |p: &mut Option<ParentLink>, found: &mut Option<ParentLink>| {
                        if let Some(l) = p.as_mut().filter(|l| old(l)) {
                            *found = Some(l.clone());
                            l.pool_id = to.pool();
                            l.namespace = to.pool_spec().namespace.clone();
                            l.image_id = to.id().to_string();
                            l.snap_id = target.id;
                        }
                    };
                    relink(&mut h.parent, &mut old_link);
                    for sm in h.snaps.values_mut() {
                        relink(&mut sm.parent, &mut old_link);
                    }
                    Ok(())
                })?;
                if let Some(l) = old_link {
                    let new = ParentLink {
                        pool_id: to.pool(),
                        namespace: to.pool_spec().namespace.clone(),
                        image_id: to.id().into(),
                        snap_id: target.id,
                        overlap: l.overlap,
                    };
                    self.child_register(&new, &cspec, &c.image_id)?;
                    self.child_unregister(&l, &cspec, &c.image_id)?;
                    moved += 1;
                }
            }
        }
        Ok(moved)
    }
}
