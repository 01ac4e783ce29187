//! Creating images: options to a first header, create, clone, and the layout check.

use std::time::{SystemTime, UNIX_EPOCH};

use rbdm_store::WriteOp;

use super::{check_name, no_snapc, now, Rbd};
use crate::finishers;
use crate::header::{self, Header, ParentLink};
use crate::intent;
use crate::{features, CreateOptions, Error, ImageSpec, Layout, PoolSpec, Result};

/// A fresh image id: 12 hex digits, as Ceph's.
fn new_image_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

impl Rbd {
    /// Checks options and derives the header a new image starts with.
    fn new_header(&self, spec: &PoolSpec, id: &str, opts: &CreateOptions) -> Result<Header> {
        let layout = opts.layout.unwrap_or_default();
        let mut feats = opts.features.unwrap_or(features::DEFAULT);
        let known: u64 = features::NAMES.iter().map(|(_, b)| b).fold(0, |a, b| a | b);
        if feats & !known != 0 {
            return Err(Error::Invalid(format!(
                "unknown feature bits {:#x}",
                feats & !known
            )));
        }
        if feats & features::OBJECT_MAP != 0 && feats & features::EXCLUSIVE_LOCK == 0 {
            return Err(Error::Invalid(
                "feature object-map requires exclusive-lock".into(),
            ));
        }
        if feats & features::FAST_DIFF != 0 && feats & features::OBJECT_MAP == 0 {
            return Err(Error::Invalid(
                "feature fast-diff requires object-map".into(),
            ));
        }
        if feats & features::JOURNALING != 0 {
            return Err(Error::Unsupported(
                "feature journaling is not supported".into(),
            ));
        }
        feats &= !(features::STRIPINGV2
            | features::DATA_POOL
            | features::MIGRATING
            | features::OPERATIONS);
        if layout.is_striped() {
            feats |= features::STRIPINGV2;
        }
        let mut h = Header::new(opts.size, layout, header::data_prefix(id), feats, now());
        if let Some(dp) = &opts.data_pool {
            let dp_id = self.pool_id(dp)?;
            let own = self.pool_id(&spec.pool)?;
            if dp_id != own {
                h.data_pool_id = Some(dp_id);
                h.features |= features::DATA_POOL;
                // As librbd: the image's own pool id in the prefix keeps the names of images
                // of several pools that share one data pool apart.
                h.object_prefix = format!("rbd_data.{own}.{id}");
            }
        }
        Ok(h)
    }

    /// Creates image `name`; `Invalid`: bad name or options; `NoPool`, `NoNamespace`: no
    /// pool, namespace or data pool; `Exists`: the name is taken; `Unsupported`: journaling.
    pub fn create(&self, spec: &PoolSpec, name: &str, opts: &CreateOptions) -> Result<()> {
        self.create_with(spec, name, opts, |_| {}).map(|_| ())
    }

    /// Creates an image whose header `adjust` may change first (parent link, migration
    /// record); returns its id. Nothing is left behind on failure.
    pub fn create_with(
        &self,
        spec: &PoolSpec,
        name: &str,
        opts: &CreateOptions,
        adjust: impl FnOnce(&mut Header),
    ) -> Result<String> {
        check_name("image", name)?;
        self.check_namespace(spec)?;
        self.settle_names(spec)?;
        if self.image_id(spec, name).is_ok() {
            return Err(Error::Exists(format!(
                "image '{name}' already exists in {spec}"
            )));
        }
        let id = new_image_id();
        let mut h = self.new_header(spec, &id, opts)?;
        adjust(&mut h);
        h.check_size(h.size)?;
        // Header, child link, `rbd_id.<name>`, then the name, which also ends the intent:
        // until then no one sees the image, and a kill is undone by the next command that
        // settles the pool.
        let dir = self.dir_anchor(spec)?;
        let data = finishers::create_data(name, h.parent.as_ref());
        let _live = dir.begin(finishers::CREATE, &id, &data)?;
        let ikey = intent::key(finishers::CREATE, &id);
        let hloc = self.loc(spec, &header::header_name(&id))?;
        let made = (|| {
            h.create(&self.store, &hloc)?;
            if let Some(link) = &h.parent {
                self.child_register(link, spec, &id)?;
            }
            self.dir_add_ending(spec, name, &id, Some(&ikey))
        })();
        if let Err(e) = made {
            if let Some(link) = &h.parent {
                let _ = self.child_unregister(link, spec, &id);
            }
            let _ = self.drop_id_object_of(spec, name, &id);
            let _ = self
                .store
                .operate(&hloc, &WriteOp::new().remove(), &no_snapc());
            let _ = dir.end(finishers::CREATE, &id);
            return Err(e);
        }
        Ok(id)
    }

    /// Clones a protected snapshot `parent` (its `snap` must be set) into `child`.
    pub fn clone_image(
        &self,
        parent: &ImageSpec,
        child: &ImageSpec,
        opts: &CreateOptions,
    ) -> Result<()> {
        let snap = parent
            .snap
            .as_deref()
            .ok_or_else(|| Error::Invalid("the parent must be a snapshot (image@snap)".into()))?;
        let p = self.open(&parent.with_snap(None), true)?;
        let info = p.info()?;
        if info.features & features::LAYERING == 0 {
            return Err(Error::Invalid(format!(
                "image '{}' does not have the layering feature",
                parent.image
            )));
        }
        let sm = p.snap_meta(snap)?;
        if !sm.protected {
            return Err(Error::Invalid(format!(
                "parent snapshot '{parent}' must be protected"
            )));
        }
        let mut opts = opts.clone();
        opts.size = sm.size;
        if opts.layout.is_none() {
            opts.layout = Some(info.layout);
        }
        let link = ParentLink {
            pool_id: self.pool_id(&parent.pool)?,
            namespace: parent.namespace.clone(),
            image_id: info.id.clone(),
            snap_id: sm.id,
            overlap: sm.size,
        };
        let cspec = child.pool_spec();
        self.check_namespace(&cspec)?;
        if self.image_id(&cspec, &child.image).is_ok() {
            return Err(Error::Exists(format!(
                "image '{}' already exists in {cspec}",
                child.image
            )));
        }
        // The child link is registered inside the create, before the name appears.
        self.create_with(&cspec, &child.image, &opts, |h| {
            h.parent = Some(link.clone())
        })?;
        Ok(())
    }
}

/// Layout check shared by create paths that take user input.
pub fn layout_for(
    object_size: Option<u64>,
    stripe_unit: Option<u64>,
    stripe_count: Option<u64>,
) -> Result<Option<Layout>> {
    if object_size.is_none() && stripe_unit.is_none() && stripe_count.is_none() {
        return Ok(None);
    }
    let os = object_size.unwrap_or(4 << 20);
    let su = stripe_unit.unwrap_or(os);
    let sc = stripe_count.unwrap_or(1);
    Layout::new(os, su, sc)
        .map(Some)
        .map_err(|e| Error::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbdm_store::{StoreRef, HEAD};

    /// A create killed after its `rbd_id.<name>` but before its name: settling takes the id
    /// object back, and only when it holds that create's id.
    #[test]
    fn a_create_killed_before_its_name_takes_its_id_object_back() {
        let store: StoreRef = std::sync::Arc::new(rbdm_store::mem::MemStore::new());
        let rbd = Rbd::new(store.clone());
        let spec = PoolSpec::new("rbd", "");
        let idobj = rbd.loc(&spec, "rbd_id.x").unwrap();
        let killed = |id: &str| {
            let dir = rbd.dir_anchor(&spec).unwrap();
            let data = finishers::create_data("x", None);
            drop(dir.begin(finishers::CREATE, id, &data).unwrap());
        };
        killed("0123456789ab");
        rbd.write_id_object(&spec, "x", "0123456789ab").unwrap();
        rbd.settle_names(&spec).unwrap();
        assert!(store.stat(&idobj, HEAD).is_err(), "the id object went");
        // Another image's id object under that name stays.
        rbd.write_id_object(&spec, "x", "ba9876543210").unwrap();
        killed("0123456789ab");
        rbd.settle_names(&spec).unwrap();
        assert!(store.stat(&idobj, HEAD).is_ok(), "not that create's");
        rbd.create(&spec, "x", &CreateOptions::with_size(1 << 20))
            .unwrap();
        assert_eq!(rbd.list(&spec).unwrap(), ["x"]);
    }
}
