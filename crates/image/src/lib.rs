//! RBD image semantics on an [`rbdm_store::ObjectStore`].
//!
//! What it is for: the directory (name ↔ id), image headers (size, layout, features,
//! snapshots, parent, migration record), striped image I/O, snapshots, clones and flatten,
//! trash, image metadata, the config-key store, `du` and `diff` from the object map. Objects are
//! named as RBD format 2 lays an image out in RADOS (`rbd_directory`, `rbd_id.<name>`,
//! `rbd_header.<id>`, `rbd_data.<id>.<objno:016x>`, `rbd_object_map.<id>[.<snap:016x>]`,
//! `rbd_trash`, `rbd_children`), values go through one encoding module ([`encoding`]).
//! What it is not: no CLI parsing or printing (that is `rbdm-cli`), no external formats.
//!
//! Contract: this file's public signatures are shared with the CLI and the NBD export, which
//! are written against them. Add to them freely; change one only together with its callers.

use std::collections::BTreeMap;

pub use rbdm_extent::Layout;
pub use rbdm_store::{SnapId, StoreRef, Watcher};

pub mod encoding;
mod error;
pub mod spec;

pub use error::{Error, Result};
pub use spec::{ImageSpec, PoolSpec};

/// Feature bits, as Ceph numbers them.
pub mod features {
    pub const LAYERING: u64 = 1 << 0;
    pub const STRIPINGV2: u64 = 1 << 1;
    pub const EXCLUSIVE_LOCK: u64 = 1 << 2;
    pub const OBJECT_MAP: u64 = 1 << 3;
    pub const FAST_DIFF: u64 = 1 << 4;
    pub const DEEP_FLATTEN: u64 = 1 << 5;
    pub const JOURNALING: u64 = 1 << 6;
    pub const DATA_POOL: u64 = 1 << 7;
    pub const OPERATIONS: u64 = 1 << 8;
    pub const MIGRATING: u64 = 1 << 9;
    /// What `rbd create` enables by default.
    pub const DEFAULT: u64 = LAYERING | EXCLUSIVE_LOCK | OBJECT_MAP | FAST_DIFF | DEEP_FLATTEN;
    /// Name ↔ bit, in Ceph's order, for parsing `--image-feature` and printing `info`.
    pub const NAMES: &[(&str, u64)] = &[
        ("layering", LAYERING),
        ("striping", STRIPINGV2),
        ("exclusive-lock", EXCLUSIVE_LOCK),
        ("object-map", OBJECT_MAP),
        ("fast-diff", FAST_DIFF),
        ("deep-flatten", DEEP_FLATTEN),
        ("journaling", JOURNALING),
        ("data-pool", DATA_POOL),
        ("operations", OPERATIONS),
        ("migrating", MIGRATING),
    ];
}

/// Options of `create` (and of `clone`, `import`, `migration prepare`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateOptions {
    pub size: u64,
    /// `None`: 4 MiB objects, no striping.
    pub layout: Option<Layout>,
    /// `None`: [`features::DEFAULT`]. Dependencies are checked (object-map needs
    /// exclusive-lock, fast-diff needs object-map); striping and data-pool bits are derived.
    pub features: Option<u64>,
    pub data_pool: Option<String>,
}

impl CreateOptions {
    pub fn with_size(size: u64) -> Self {
        CreateOptions { size, layout: None, features: None, data_pool: None }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentInfo {
    pub pool: String,
    pub namespace: String,
    pub image_name: String,
    pub image_id: String,
    pub snap_name: String,
    pub snap_id: SnapId,
    /// Bytes of the child that read through to the parent.
    pub overlap: u64,
}

/// What `rbd info` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub name: String,
    pub id: String,
    pub pool: String,
    pub namespace: String,
    pub size: u64,
    pub layout: Layout,
    pub features: u64,
    /// Header flags (Ceph: 1 = object map invalid, 2 = fast diff invalid).
    pub flags: u64,
    /// `rbd_data.<id>`.
    pub block_name_prefix: String,
    pub snapshot_count: usize,
    pub data_pool: Option<String>,
    pub parent: Option<ParentInfo>,
    /// Seconds since the Unix epoch.
    pub create_timestamp: u64,
    pub access_timestamp: u64,
    pub modify_timestamp: u64,
    /// Open at a snapshot, or opened read-only.
    pub read_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapInfo {
    pub id: SnapId,
    pub name: String,
    pub size: u64,
    pub protected: bool,
    /// Seconds since the Unix epoch.
    pub timestamp: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrashEntry {
    pub id: String,
    pub name: String,
    /// "USER" (moved by `trash mv`) or "MIGRATION" (hidden unless `--all`).
    pub source: String,
    pub deleted_at: u64,
    pub deferment_end: u64,
}

/// A child image of a snapshot (`rbd children`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildInfo {
    pub pool: String,
    pub namespace: String,
    pub image_name: String,
    pub image_id: String,
    pub in_trash: bool,
}

/// One line of `rbd du`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuEntry {
    /// `None` for the image head.
    pub snap: Option<String>,
    pub provisioned: u64,
    pub used: u64,
}

/// One extent of `rbd diff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiffExtent {
    pub offset: u64,
    pub len: u64,
    /// `true` = data, `false` = zero (discarded since the start snapshot).
    pub exists: bool,
}

/// A progress callback: `(done, total)`, called now and then during long operations.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// The entry point: images, pools' RBD state, namespaces, trash, config-key, on one store.
#[derive(Clone)]
pub struct Rbd {
    store: StoreRef,
}

/// An open image (head, or a snapshot read-only). Safe to share across threads.
pub struct Image {
    #[allow(dead_code)]
    rbd: Rbd,
}

impl Rbd {
    pub fn new(store: StoreRef) -> Self {
        Rbd { store }
    }
    pub fn store(&self) -> &StoreRef {
        &self.store
    }

    // ---- pools and namespaces
    pub fn pool_create(&self, _pool: &str) -> Result<()> {
        todo!()
    }
    /// Refused (`Busy`) while the pool holds images, unless `force`.
    pub fn pool_remove(&self, _pool: &str, _force: bool) -> Result<()> {
        todo!()
    }
    pub fn pool_list(&self) -> Result<Vec<String>> {
        todo!()
    }
    pub fn namespace_create(&self, _pool: &str, _ns: &str) -> Result<()> {
        todo!()
    }
    /// Refused (`Busy`) while the namespace holds images.
    pub fn namespace_remove(&self, _pool: &str, _ns: &str) -> Result<()> {
        todo!()
    }
    pub fn namespace_list(&self, _pool: &str) -> Result<Vec<String>> {
        todo!()
    }

    // ---- images
    pub fn create(&self, _spec: &PoolSpec, _name: &str, _opts: &CreateOptions) -> Result<()> {
        todo!()
    }
    /// Image names in the pool/namespace, sorted (trash not included).
    pub fn list(&self, _spec: &PoolSpec) -> Result<Vec<String>> {
        todo!()
    }
    /// Opens `spec` (its `snap`, if any, read-only). `NotFound` for an image in the trash.
    pub fn open(&self, _spec: &ImageSpec, _read_only: bool) -> Result<Image> {
        todo!()
    }
    /// Opens by id: this also finds images in the trash.
    pub fn open_by_id(&self, _spec: &PoolSpec, _id: &str, _snap: Option<&str>, _read_only: bool) -> Result<Image> {
        todo!()
    }
    /// Refused (`Busy`) with snapshots, with watchers, or with children.
    pub fn remove(&self, _spec: &ImageSpec, _progress: Progress) -> Result<()> {
        todo!()
    }
    pub fn rename(&self, _spec: &PoolSpec, _from: &str, _to: &str) -> Result<()> {
        todo!()
    }
    /// Clones a protected snapshot `parent` (its `snap` must be set) into `child`.
    pub fn clone_image(&self, _parent: &ImageSpec, _child: &ImageSpec, _opts: &CreateOptions) -> Result<()> {
        todo!()
    }

    // ---- trash
    /// Moves an image to the trash; returns its id.
    pub fn trash_move(&self, _spec: &ImageSpec, _delay_secs: u64) -> Result<String> {
        todo!()
    }
    /// `all`: include entries of source "MIGRATION".
    pub fn trash_list(&self, _spec: &PoolSpec, _all: bool) -> Result<Vec<TrashEntry>> {
        todo!()
    }
    pub fn trash_restore(&self, _spec: &PoolSpec, _id: &str, _new_name: Option<&str>) -> Result<()> {
        todo!()
    }
    /// Refused before the deferment end unless `force`; refused for migration sources.
    pub fn trash_remove(&self, _spec: &PoolSpec, _id: &str, _force: bool, _progress: Progress) -> Result<()> {
        todo!()
    }

    // ---- config-key (store-wide)
    pub fn config_key_set(&self, _key: &str, _value: &[u8]) -> Result<()> {
        todo!()
    }
    pub fn config_key_get(&self, _key: &str) -> Result<Vec<u8>> {
        todo!()
    }
    pub fn config_key_remove(&self, _key: &str) -> Result<()> {
        todo!()
    }
    pub fn config_key_list(&self) -> Result<Vec<String>> {
        todo!()
    }
}

impl Image {
    pub fn info(&self) -> Result<ImageInfo> {
        todo!()
    }
    pub fn size(&self) -> u64 {
        todo!()
    }
    pub fn layout(&self) -> Layout {
        todo!()
    }
    /// Reads `buf.len()` bytes at `offset`; a read past the end is `Invalid`.
    pub fn read(&self, _offset: u64, _buf: &mut [u8]) -> Result<()> {
        todo!()
    }
    pub fn write(&self, _offset: u64, _data: &[u8]) -> Result<()> {
        todo!()
    }
    /// Deallocates; reads back as zeros.
    pub fn discard(&self, _offset: u64, _len: u64) -> Result<()> {
        todo!()
    }
    /// Reads back as zeros (deallocating where it can).
    pub fn write_zeroes(&self, _offset: u64, _len: u64) -> Result<()> {
        todo!()
    }
    pub fn flush(&self) -> Result<()> {
        todo!()
    }
    /// Extents of `[offset, offset+len)` that hold data (at the open snapshot), for sparse
    /// export and NBD block status: from the object map and the objects' sparse maps, never
    /// by reading data. Includes data read through from a parent.
    pub fn allocated_extents(&self, _offset: u64, _len: u64) -> Result<Vec<(u64, u64)>> {
        todo!()
    }
    pub fn resize(&self, _size: u64, _allow_shrink: bool, _progress: Progress) -> Result<()> {
        todo!()
    }

    // ---- snapshots
    pub fn snap_create(&self, _name: &str) -> Result<SnapId> {
        todo!()
    }
    /// Oldest first.
    pub fn snap_list(&self) -> Result<Vec<SnapInfo>> {
        todo!()
    }
    /// Refused (`Busy`) if protected.
    pub fn snap_remove(&self, _name: &str) -> Result<()> {
        todo!()
    }
    pub fn snap_protect(&self, _name: &str) -> Result<()> {
        todo!()
    }
    /// Refused (`Busy`) while the snapshot has children.
    pub fn snap_unprotect(&self, _name: &str) -> Result<()> {
        todo!()
    }
    pub fn snap_rollback(&self, _name: &str, _progress: Progress) -> Result<()> {
        todo!()
    }
    /// Removes every unprotected snapshot; refused if any is protected.
    pub fn snap_purge(&self) -> Result<()> {
        todo!()
    }
    pub fn snap_rename(&self, _from: &str, _to: &str) -> Result<()> {
        todo!()
    }

    // ---- clones
    pub fn flatten(&self, _progress: Progress) -> Result<()> {
        todo!()
    }
    /// Children of the open snapshot (or of every snapshot when opened at head).
    pub fn children(&self) -> Result<Vec<ChildInfo>> {
        todo!()
    }

    // ---- metadata
    pub fn metadata_set(&self, _key: &str, _value: &str) -> Result<()> {
        todo!()
    }
    pub fn metadata_get(&self, _key: &str) -> Result<String> {
        todo!()
    }
    pub fn metadata_remove(&self, _key: &str) -> Result<()> {
        todo!()
    }
    pub fn metadata_list(&self) -> Result<BTreeMap<String, String>> {
        todo!()
    }

    // ---- accounting
    /// Snapshots oldest first, then the head; from the object map, not by reading data.
    pub fn du(&self) -> Result<Vec<DuEntry>> {
        todo!()
    }
    /// Changes since `from_snap` (or all data when `None`) up to the open snapshot/head.
    pub fn diff(&self, _from_snap: Option<&str>, _whole_object: bool) -> Result<Vec<DiffExtent>> {
        todo!()
    }
    pub fn watchers(&self) -> Result<Vec<Watcher>> {
        todo!()
    }
    /// Closes the image: flushes, drops the watch and any lock.
    pub fn close(self) -> Result<()> {
        todo!()
    }
}
