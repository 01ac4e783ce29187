//! Clone v2's children bookkeeping, as librbd and `cls_rbd` keep it (the parent's
//! `snap_children_<snap>` sets and `child_count`, the CLONE_PARENT/CLONE_CHILD op features
//! and the OPERATIONS feature), and reparenting. rbdm's earlier `rbd_children` keys are still
//! read and removed, never written.

use rbdm_cls::header::op_features;
use rbdm_cls::parent::ChildImageSpec;
use rbdm_store::{Error as StoreError, Locator, PoolId, WriteOp};

use super::{no_snapc, Rbd, CHILDREN};
use crate::header::{header_name, Header, ParentLink};
use crate::{features, ChildInfo, Error, Image, PoolSpec, Result};

impl Rbd {
    /// rbdm's clone v1-style registry key (`rbd_children`), read and removed only: stores
    /// made before clone v2 bookkeeping still list their children through it.
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

    fn child_spec(&self, child: &PoolSpec, child_id: &str) -> Result<ChildImageSpec> {
        Ok(ChildImageSpec {
            pool_id: self.pool_id(&child.pool)?,
            pool_namespace: child.namespace.clone(),
            image_id: child_id.into(),
        })
    }

    fn parent_header_loc(link: &ParentLink) -> Locator {
        Locator::new(link.pool_id, &link.namespace, &header_name(&link.image_id))
    }

    /// Records `child` as a clone of `link`'s snapshot (also a migration destination that
    /// keeps its source's parent), as librbd's clone v2 does: CLONE_CHILD on the child, then
    /// (Ceph's `child_attach`) the child in the snapshot's `snap_children` set, its
    /// `child_count` and CLONE_PARENT in one update of the parent's header. Registering
    /// again changes nothing.
    pub fn child_register(
        &self,
        link: &ParentLink,
        child: &PoolSpec,
        child_id: &str,
    ) -> Result<()> {
        let spec = self.child_spec(child, child_id)?;
        let child_loc = self.loc(child, &header_name(child_id))?;
        Header::update(&self.store, &child_loc, |h| {
            set_op_feature(h, op_features::CLONE_CHILD, true);
            Ok(())
        })?;
        Header::update(&self.store, &Self::parent_header_loc(link), |h| {
            let Some(snap) = h.snaps.get(&link.snap_id) else {
                // The parent's snapshot went away before the clone could attach to it.
                return Err(Error::SnapRemoved {
                    image: link.image_id.clone(),
                    id: link.snap_id,
                });
            };
            let children = h.snap_children.entry(link.snap_id).or_default();
            // An unprotect that ran between the clone's check and here must not leave a
            // child on an unprotected snapshot (a `snap rm` would then take its data). A
            // child already attached (a re-run) stays attached.
            if !snap.protected && !children.contains(&spec) {
                return Err(Error::Busy(format!(
                    "snapshot {} of image id '{}' is no longer protected",
                    link.snap_id, link.image_id
                )));
            }
            children.insert(spec.clone());
            set_op_feature(h, op_features::CLONE_PARENT, true);
            Ok(())
        })?;
        Ok(())
    }

    /// Undoes [`Rbd::child_register`] (Ceph's `child_detach`): the parent loses CLONE_PARENT
    /// with its last child, the child CLONE_CHILD with its last parent link (as Ceph's
    /// `remove_parent`). An absent parent or child header, or a child not listed, is done.
    pub(crate) fn child_unregister(
        &self,
        link: &ParentLink,
        child: &PoolSpec,
        child_id: &str,
    ) -> Result<()> {
        let spec = self.child_spec(child, child_id)?;
        gone_is_done(Header::update(
            &self.store,
            &Self::parent_header_loc(link),
            |h| {
                if let Some(set) = h.snap_children.get_mut(&link.snap_id) {
                    set.remove(&spec);
                    if set.is_empty() {
                        h.snap_children.remove(&link.snap_id);
                    }
                }
                if h.snap_children.is_empty() {
                    set_op_feature(h, op_features::CLONE_PARENT, false);
                }
                Ok(())
            },
        ))?;
        self.legacy_unregister(link, &spec, child)?;
        let child_loc = self.loc(child, &header_name(child_id))?;
        gone_is_done(Header::update(&self.store, &child_loc, |h| {
            let linked = h.parent.is_some() || h.snaps.values().any(|s| s.parent.is_some());
            if !linked {
                set_op_feature(h, op_features::CLONE_CHILD, false);
            }
            Ok(())
        }))
    }

    /// Removes the child's `rbd_children` key, if a store made before clone v2 has one.
    fn legacy_unregister(
        &self,
        link: &ParentLink,
        spec: &ChildImageSpec,
        child: &PoolSpec,
    ) -> Result<()> {
        let key = Self::child_key(link, spec.pool_id, child, &spec.image_id);
        gone_is_done(
            self.store
                .operate(
                    &self.children_loc(link.pool_id),
                    &WriteOp::new().assert_exists().omap_rm([key]),
                    &no_snapc(),
                )
                .map_err(Error::from),
        )
    }

    /// Children of one snapshot of an image: its `snap_children` set, and the
    /// `rbd_children` keys a store made before clone v2 bookkeeping may still hold.
    pub(crate) fn children_of(
        &self,
        pool: PoolId,
        ns: &str,
        image_id: &str,
        snap_id: u64,
    ) -> Result<Vec<ChildInfo>> {
        let hloc = Locator::new(pool, ns, &header_name(image_id));
        let mut specs = Header::load(&self.store, &hloc)?
            .snap_children
            .remove(&snap_id)
            .unwrap_or_default();
        specs.extend(self.legacy_children(pool, ns, image_id, snap_id)?);
        specs.into_iter().map(|c| self.child_info(&c)).collect()
    }

    fn legacy_children(
        &self,
        pool: PoolId,
        ns: &str,
        image_id: &str,
        snap_id: u64,
    ) -> Result<Vec<ChildImageSpec>> {
        let prefix = Self::children_prefix(ns, image_id, snap_id);
        let mut out = Vec::new();
        for (key, _) in self.omap_all(&self.children_loc(pool), &prefix)? {
            let rest = &key[prefix.len()..];
            let parts: Vec<&str> = rest.split('\x01').collect();
            let [cpool, cns, cid] = parts[..] else {
                return Err(Error::Corrupt(format!("children registry key {key:?}")));
            };
            let pool_id: PoolId = cpool
                .parse()
                .map_err(|_| Error::Corrupt(format!("children registry key {key:?}")))?;
            out.push(ChildImageSpec {
                pool_id,
                pool_namespace: cns.into(),
                image_id: cid.into(),
            });
        }
        Ok(out)
    }

    fn child_info(&self, c: &ChildImageSpec) -> Result<ChildInfo> {
        let pool_name = self.store.pool_name(c.pool_id)?;
        let cspec = PoolSpec::new(&pool_name, &c.pool_namespace);
        let (name, in_trash) = match self.image_name(&cspec, &c.image_id)? {
            Some(n) => (n, false),
            None => (
                self.trash_get(&cspec, &c.image_id)
                    .map(|t| t.name)
                    .unwrap_or_default(),
                true,
            ),
        };
        Ok(ChildInfo {
            pool: pool_name,
            namespace: c.pool_namespace.clone(),
            image_name: name,
            image_id: c.image_id.clone(),
            in_trash,
        })
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

/// Sets or clears one `op_features` bit; OPERATIONS follows whether any is set (Ceph's
/// `set_op_features`).
fn set_op_feature(h: &mut Header, bit: u64, on: bool) {
    if on {
        h.op_features |= bit;
    } else {
        h.op_features &= !bit;
    }
    if h.op_features != 0 {
        h.features |= features::OPERATIONS;
    } else {
        h.features &= !features::OPERATIONS;
    }
}

/// A missing pool or object: nothing left to undo.
fn gone_is_done<T>(r: Result<T>) -> Result<()> {
    match r {
        Ok(_) | Err(Error::Store(StoreError::NoPool(_) | StoreError::NoObject { .. })) => Ok(()),
        Err(e) => Err(e),
    }
}
