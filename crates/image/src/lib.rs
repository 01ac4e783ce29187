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
//! Contract: the public signatures of [`Rbd`] (rbd.rs and rbd/*.rs) and [`Image`] (image.rs
//! and image/*.rs, one subject a file) are shared with the CLI and the NBD export. Add to them
//! freely; change one only together with its callers.
//!
//! Concurrency: any number of processes may open an image; header changes are guarded
//! compare-and-swap updates (see [`header`]), and writers take the image's exclusive lock.
//! Known limit: librbd asks the lock owner to take a snapshot; here a snapshot taken by
//! another process while a writer is mid-write may miss that one write's copy-on-write.
#![forbid(unsafe_code)]

pub use rbdm_extent::Layout;
pub use rbdm_store::{report, SnapId, StoreRef, Watcher};

pub mod advisory;
mod alloc_map;
pub mod encoding;
mod error;
mod finishers;
mod format_version;
pub mod fsck;
pub mod header;
mod image;
pub mod intent;
pub mod migration;
mod rbd;
pub mod spec;

pub use image::Image;
pub use rbd::{layout_for, Rbd};
pub use rbdm_cls::trash::{TrashSource, TrashState};

pub use error::{Error, Result};
pub use spec::{ImageSpec, PoolSpec};

/// Feature bits, as Ceph numbers them (one list: `rbdm_cls`'s, the `features` key's bits).
pub mod features {
    pub use rbdm_cls::header::features::*;
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
        CreateOptions {
            size,
            layout: None,
            features: None,
            data_pool: None,
        }
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
    /// `User` (moved by `trash mv`), `Migration` or `Removing` (an `rm` in progress, or
    /// cut short: `rm` of the name finishes it); the last two are hidden unless `--all`.
    pub source: TrashSource,
    /// `Removing` once a removal from the trash began (as librbd's): restore refuses it.
    pub state: TrashState,
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
