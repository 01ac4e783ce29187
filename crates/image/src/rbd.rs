//! Pools, namespaces, the image directory, create/clone/remove/rename, trash and config-key.

use std::time::{SystemTime, UNIX_EPOCH};

use rbdm_store::{Error as StoreError, Locator, PoolId, SnapContext, StoreRef, WriteOp};

use crate::encoding::{Dec, Enc};
use crate::finishers;
use crate::header::{self, Header, ParentLink};
use crate::intent;
use crate::{
    features, ChildInfo, CreateOptions, Error, Image, ImageSpec, Layout, PoolSpec, Progress,
    Result, TrashEntry,
};

/// The entry point: images, pools' RBD state, namespaces, trash, config-key, on one store.
#[derive(Clone)]
pub struct Rbd {
    store: StoreRef,
}

pub(crate) const DIRECTORY: &str = "rbd_directory";
pub(crate) const TRASH: &str = "rbd_trash";
pub(crate) const CHILDREN: &str = "rbd_children";
pub(crate) const NAMESPACES: &str = "rbd_namespace";
/// The trash source of an image `rm` is removing (librbd's `RBD_TRASH_IMAGE_SOURCE_REMOVING`).
pub(crate) const REMOVING: &str = "REMOVING";
/// Store-wide state lives in a pool `ls` does not show.
const HIDDEN_POOL: &str = ".rbdm";
const CONFIG_KEY: &str = "config_key";

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn no_snapc() -> SnapContext {
    SnapContext::default()
}

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

fn check_name(kind: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.contains(['/', '@', '\0']) || name.len() > 255 {
        return Err(Error::Invalid(format!("invalid {kind} name '{name}'")));
    }
    Ok(())
}

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
    pub fn new(store: StoreRef) -> Self {
        Rbd { store }
    }
    pub fn store(&self) -> &StoreRef {
        &self.store
    }

    pub(crate) fn pool_id(&self, pool: &str) -> Result<PoolId> {
        self.store.pool_id(pool).map_err(|e| match e {
            StoreError::NoPool(_) => Error::NotFound(format!("pool '{pool}' does not exist")),
            e => e.into(),
        })
    }

    pub(crate) fn loc(&self, spec: &PoolSpec, name: &str) -> Result<Locator> {
        Ok(Locator::new(
            self.pool_id(&spec.pool)?,
            &spec.namespace,
            name,
        ))
    }

    // ---- pools and namespaces
    pub fn pool_create(&self, pool: &str) -> Result<()> {
        check_name("pool", pool)?;
        if pool.starts_with('.') {
            return Err(Error::Invalid(format!(
                "pool names starting with '.' are reserved: '{pool}'"
            )));
        }
        match self.store.create_pool(pool) {
            Ok(_) => Ok(()),
            Err(StoreError::Exists(_)) => {
                Err(Error::Exists(format!("pool '{pool}' already exists")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Refused (`Busy`) while the pool holds images, unless `force`.
    pub fn pool_remove(&self, pool: &str, force: bool) -> Result<()> {
        let id = self.pool_id(pool)?;
        if !force {
            let images = self
                .store
                .list_objects(id, None)?
                .into_iter()
                .filter(|l| l.name.starts_with("rbd_header."))
                .count();
            if images > 0 {
                return Err(Error::Busy(format!(
                    "pool '{pool}' still holds {images} image(s)"
                )));
            }
        }
        self.store.remove_pool(pool)?;
        Ok(())
    }

    pub fn pool_list(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .store
            .list_pools()?
            .into_iter()
            .map(|(_, n)| n)
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    pub fn namespace_create(&self, pool: &str, ns: &str) -> Result<()> {
        check_name("namespace", ns)?;
        let loc = self.loc(&PoolSpec::new(pool, ""), NAMESPACES)?;
        let key = format!("name_{ns}");
        let op = WriteOp::new()
            .omap_cmp(&key, None)
            .omap_set([(key.clone(), Vec::new())]);
        match self.store.operate(&loc, &op, &no_snapc()) {
            Err(StoreError::Canceled(_)) => Err(Error::Exists(format!(
                "namespace '{pool}/{ns}' already exists"
            ))),
            r => Ok(r?),
        }
    }

    /// Refused (`Busy`) while the namespace holds images.
    pub fn namespace_remove(&self, pool: &str, ns: &str) -> Result<()> {
        self.check_namespace(&PoolSpec::new(pool, ns))?;
        let spec = PoolSpec::new(pool, ns);
        if !self.list(&spec)?.is_empty() || !self.trash_list(&spec, true)?.is_empty() {
            return Err(Error::Busy(format!("namespace '{pool}/{ns}' is not empty")));
        }
        let loc = self.loc(&PoolSpec::new(pool, ""), NAMESPACES)?;
        self.store.operate(
            &loc,
            &WriteOp::new().omap_rm([format!("name_{ns}")]),
            &no_snapc(),
        )?;
        Ok(())
    }

    pub fn namespace_list(&self, pool: &str) -> Result<Vec<String>> {
        let loc = self.loc(&PoolSpec::new(pool, ""), NAMESPACES)?;
        Ok(self
            .omap_all(&loc, "name_")?
            .into_iter()
            .map(|(k, _)| k["name_".len()..].to_string())
            .collect())
    }

    /// `NotFound` unless the pool exists and the namespace ("" always does) was created.
    pub fn check_namespace(&self, spec: &PoolSpec) -> Result<()> {
        self.pool_id(&spec.pool)?;
        if spec.namespace.is_empty() || self.namespace_list(&spec.pool)?.contains(&spec.namespace) {
            Ok(())
        } else {
            Err(Error::NotFound(format!(
                "namespace '{}' does not exist",
                spec
            )))
        }
    }

    /// Every omap entry of `loc` whose key starts with `prefix`; an absent object has none.
    pub(crate) fn omap_all(&self, loc: &Locator, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let page = match self.store.omap_get(loc, &after, prefix, 1024) {
                Err(StoreError::NoObject { .. }) => break,
                r => r?,
            };
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            out.extend(page);
        }
        Ok(out)
    }

    // ---- the directory
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

    fn dir_add(&self, spec: &PoolSpec, name: &str, id: &str) -> Result<()> {
        self.dir_add_ending(spec, name, id, None)
    }

    /// Names image `id`; with `intent`, removes that intent key in the same atomic write
    /// (the last step of a create).
    fn dir_add_ending(
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
    fn dir_remove_ending(
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

    // ---- images
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
            if dp_id != self.pool_id(&spec.pool)? {
                h.data_pool_id = Some(dp_id);
                h.features |= features::DATA_POOL;
            }
        }
        Ok(h)
    }

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
        // Header, child link, then the name, which also ends the intent: until then no one
        // sees the image, and a kill is undone by the next command that settles the pool.
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
            let _ = self
                .store
                .operate(&hloc, &WriteOp::new().remove(), &no_snapc());
            let _ = dir.end(finishers::CREATE, &id);
            return Err(e);
        }
        Ok(id)
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

    /// Opens `spec` (its `snap`, if any, read-only). `NotFound` for an image in the trash.
    pub fn open(&self, spec: &ImageSpec, read_only: bool) -> Result<Image> {
        let id = match self.image_id(&spec.pool_spec(), &spec.image) {
            Err(Error::NotFound(_)) => {
                // A create or trash restore cut short may be what names it.
                self.settle_names_quietly(&spec.pool_spec());
                self.image_id(&spec.pool_spec(), &spec.image)?
            }
            r => r?,
        };
        Image::open(
            self.clone(),
            spec.pool_spec(),
            spec.image.clone(),
            id,
            spec.snap.as_deref(),
            read_only,
            true,
        )
    }

    /// Opens by id: this also finds images in the trash.
    pub fn open_by_id(
        &self,
        spec: &PoolSpec,
        id: &str,
        snap: Option<&str>,
        read_only: bool,
    ) -> Result<Image> {
        let name = match self.image_name(spec, id)? {
            Some(n) => n,
            None => self
                .trash_get(spec, id)
                .map(|t| t.name)
                .unwrap_or_else(|_| id.to_string()),
        };
        Image::open(
            self.clone(),
            spec.clone(),
            name,
            id.to_string(),
            snap,
            read_only,
            true,
        )
    }

    /// Opens read-only without registering as a watcher: for internal readers (a migration
    /// source read by its destination) that must not keep the image "in use".
    pub fn open_quiet(
        &self,
        spec: &PoolSpec,
        name: Option<&str>,
        id: Option<&str>,
        snap: Option<&str>,
    ) -> Result<Image> {
        let id = match (id, name) {
            (Some(id), _) => id.to_string(),
            (None, Some(n)) => self.image_id(spec, n)?,
            (None, None) => return Err(Error::Invalid("an image name or id is needed".into())),
        };
        let name = match name {
            Some(n) => n.to_string(),
            None => self.image_name(spec, &id)?.unwrap_or_else(|| id.clone()),
        };
        Image::open(self.clone(), spec.clone(), name, id, snap, true, false)
    }

    /// Refused (`Busy`) with snapshots, with watchers, or with children. As librbd's, a
    /// removal first moves the image to the trash (source `REMOVING`, hidden), then removes
    /// it from there: a kill leaves no half-removed image under its name, and `rm` of the
    /// same name finishes what is in the trash.
    pub fn remove(&self, spec: &ImageSpec, progress: Progress) -> Result<()> {
        let pspec = spec.pool_spec();
        self.settle_names(&pspec)?;
        let id = match self.image_id(&pspec, &spec.image) {
            Err(Error::NotFound(m)) => {
                let cut = self
                    .trash_list(&pspec, true)?
                    .into_iter()
                    .find(|t| t.name == spec.image && t.source == REMOVING);
                return match cut {
                    Some(t) => self.trash_purge_entry(&pspec, &t, progress),
                    None => Err(Error::NotFound(m)),
                };
            }
            r => r?,
        };
        let image = Image::open(
            self.clone(),
            pspec.clone(),
            spec.image.clone(),
            id.clone(),
            None,
            false,
            false,
        )?;
        self.check_removable(&image, &spec.image)?;
        drop(image);
        self.trash_move_as(spec, 0, REMOVING)?;
        let t = self.trash_get(&pspec, &id)?;
        self.trash_purge_entry(&pspec, &t, progress)
    }

    /// What refuses a removal: a fence, snapshots, watchers.
    fn check_removable(&self, image: &Image, label: &str) -> Result<()> {
        image.check_fence()?;
        if !image.snap_list()?.is_empty() {
            return Err(Error::NotEmpty(format!(
                "image '{label}' has snapshots - these must be deleted with 'rbdm snap purge' before the image can be removed"
            )));
        }
        if !image.watchers()?.is_empty() {
            return Err(Error::Busy(format!("image '{label}' still has watchers")));
        }
        Ok(())
    }

    pub(crate) fn remove_by_id(
        &self,
        spec: &PoolSpec,
        id: &str,
        name: Option<&str>,
        progress: Progress,
    ) -> Result<()> {
        let image = Image::open(
            self.clone(),
            spec.clone(),
            name.unwrap_or(id).into(),
            id.into(),
            None,
            false,
            false,
        )?;
        self.check_removable(&image, name.unwrap_or(id))?;
        image.remove_data(progress)?;
        if let Some(n) = name {
            self.dir_remove(spec, n, id)?;
        }
        if let Some(p) = image.parent_link() {
            self.child_unregister(&p, spec, id)?;
        }
        image.remove_header()?;
        Ok(())
    }

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

    // ---- the children registry: omap of `rbd_children` in the parent's pool
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
            let target = th.snap_by_name(&s.name).ok_or_else(|| {
                Error::NotFound(format!(
                    "destination '{}' has no snapshot '{}' for the clones to follow",
                    to.name(),
                    s.name
                ))
            })?;
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

    // ---- trash
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

    /// Removes image `id` and its trash entry, if any, whether or not a directory entry
    /// still names it (a removal cut short). Each step may run again.
    pub fn remove_id(&self, spec: &PoolSpec, id: &str, progress: Progress) -> Result<()> {
        let name = self.image_name(spec, id)?;
        match self.remove_by_id(spec, id, name.as_deref(), progress) {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        self.trash_forget(spec, id)
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

    // ---- config-key (store-wide)
    fn config_loc(&self) -> Result<Locator> {
        let id = match self.store.pool_id(HIDDEN_POOL) {
            Ok(id) => id,
            Err(StoreError::NoPool(_)) => match self.store.create_pool(HIDDEN_POOL) {
                Ok(id) => id,
                Err(StoreError::Exists(_)) => self.store.pool_id(HIDDEN_POOL)?,
                Err(e) => return Err(e.into()),
            },
            Err(e) => return Err(e.into()),
        };
        Ok(Locator::new(id, "", CONFIG_KEY))
    }

    pub fn config_key_set(&self, key: &str, value: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(Error::Invalid("config-key: empty key".into()));
        }
        self.store.operate(
            &self.config_loc()?,
            &WriteOp::new().omap_set([(key.to_string(), value.to_vec())]),
            &no_snapc(),
        )?;
        Ok(())
    }

    pub fn config_key_get(&self, key: &str) -> Result<Vec<u8>> {
        let found = match self.store.omap_get_keys(&self.config_loc()?, &[key]) {
            Err(StoreError::NoObject { .. }) => Default::default(),
            r => r?,
        };
        found
            .get(key)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("config-key '{key}' does not exist")))
    }

    pub fn config_key_remove(&self, key: &str) -> Result<()> {
        self.config_key_get(key)?;
        self.store.operate(
            &self.config_loc()?,
            &WriteOp::new().omap_rm([key]),
            &no_snapc(),
        )?;
        Ok(())
    }

    pub fn config_key_list(&self) -> Result<Vec<String>> {
        Ok(self
            .omap_all(&self.config_loc()?, "")?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
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
