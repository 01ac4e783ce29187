//! The image header: what `rbd_header.<id>` holds, as omap keys named and encoded as Ceph's
//! `cls_rbd` names and encodes them (`size`, `order`, `features`, `snap_seq`,
//! `snapshot_<id>`, `parent`, ...; the encodings are in `header/keys.rs`), plus rbdm's own
//! `generation` key every update compares and bumps, so that several processes changing one
//! header never lose each other's changes (the update is retried on a lost race). An update
//! writes only the keys its change touched and removes only keys rbdm owns and no longer
//! wants; keys Ceph writes that rbdm does not model are kept. Headers and object maps in
//! rbdm's earlier encodings are upgraded the first time they are read (`header/upgrade.rs`).

use std::collections::{BTreeMap, BTreeSet};

use rbdm_cls::parent::ChildImageSpec;
use rbdm_store::{Error as StoreError, Locator, PoolId, SnapContext, SnapId, StoreRef, WriteOp};

use crate::encoding::{Dec, Enc};
use crate::{features, Error, Layout, Result};

mod keys;
mod upgrade;

use keys::{Keys, GENERATION};

/// The largest image: every reader addresses bytes with a signed 64-bit offset (`off_t`,
/// QEMU's `int64_t`, the kernel's block layer), so a byte past 2^63 - 1 is unreachable.
pub const MAX_IMAGE_SIZE: u64 = i64::MAX as u64;

/// Where a clone reads through to: a snapshot of another image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentLink {
    pub pool_id: PoolId,
    pub namespace: String,
    pub image_id: String,
    pub snap_id: SnapId,
    /// Bytes of the child that read through to the parent.
    pub overlap: u64,
}

impl ParentLink {
    /// Whether both name the same parent snapshot (the overlap may differ).
    pub fn same_parent(&self, other: &ParentLink) -> bool {
        (self.pool_id, &self.namespace, &self.image_id, self.snap_id)
            == (
                other.pool_id,
                &other.namespace,
                &other.image_id,
                other.snap_id,
            )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapMeta {
    pub id: SnapId,
    pub name: String,
    pub size: u64,
    /// Protected, or (Ceph's) being unprotected: either way not removable.
    pub protected: bool,
    /// Seconds; the record's nanoseconds are kept when the seconds do not change, else 0.
    pub timestamp: u64,
    /// The parent link as it was when the snapshot was taken.
    pub parent: Option<ParentLink>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub size: u64,
    pub layout: Layout,
    pub object_prefix: String,
    pub features: u64,
    pub flags: u64,
    /// `RBD_OPERATION_FEATURE_*` bits (`op_features` key, absent reads 0).
    pub op_features: u64,
    pub snap_seq: SnapId,
    /// `snap_limit`, when one was set.
    pub snap_limit: Option<u64>,
    /// By snap id (so oldest first).
    pub snaps: BTreeMap<SnapId, SnapMeta>,
    pub parent: Option<ParentLink>,
    /// Clone v2's children of each snapshot (`snap_children_<id>`; a snapshot's
    /// `child_count` is the size of its set). Only non-empty sets are kept.
    pub snap_children: BTreeMap<SnapId, BTreeSet<ChildImageSpec>>,
    pub data_pool_id: Option<PoolId>,
    /// The migration record (owned by the migration crate; opaque here).
    pub migration: Option<Vec<u8>>,
    /// rbdm's own part of the migration record (`rbdm_migration`; see `migration/record.rs`).
    pub rbdm_migration: Option<Vec<u8>>,
    /// Seconds (`utime_t` on disk; nanoseconds kept only while unchanged, written as 0).
    pub create_timestamp: u64,
    pub access_timestamp: u64,
    pub modify_timestamp: u64,
    /// rbdm's update guard (an rbdm-only key; absent reads 0).
    pub generation: u64,
    /// Whether the header object holds `rbdm_intent.*` keys (unfinished operations, see
    /// [`crate::intent`]); kept here so an open finds out without reading them a second time.
    pub has_intents: bool,
}

pub const METADATA_PREFIX: &str = "metadata_";

pub fn header_name(id: &str) -> String {
    format!("rbd_header.{id}")
}
pub fn id_object_name(name: &str) -> String {
    format!("rbd_id.{name}")
}
pub fn data_prefix(id: &str) -> String {
    format!("rbd_data.{id}")
}
/// A data object's name: the header's `object_prefix` (`rbd_data.<id>`, or
/// `rbd_data.<pool id>.<id>` for an image librbd made with a data pool) and the object number.
pub fn data_name(object_prefix: &str, object_no: u64) -> String {
    format!("{object_prefix}.{object_no:016x}")
}
pub fn object_map_name(id: &str, snap: Option<SnapId>) -> String {
    match snap {
        Some(s) => format!("rbd_object_map.{id}.{s:016x}"),
        None => format!("rbd_object_map.{id}"),
    }
}

/// rbdm's own encoding of a parent link, for intent data (and the pre-Ceph header).
pub(crate) fn encode_parent(p: &ParentLink) -> Vec<u8> {
    Enc::new()
        .versioned(1, 1, |e| {
            e.i64(p.pool_id)
                .str(&p.namespace)
                .str(&p.image_id)
                .u64(p.snap_id)
                .u64(p.overlap);
        })
        .finish()
}

pub(crate) fn decode_parent(d: &mut Dec) -> Result<ParentLink> {
    let (_, mut b) = d.versioned(1)?;
    Ok(ParentLink {
        pool_id: b.i64()?,
        namespace: b.str()?,
        image_id: b.str()?,
        snap_id: b.u64()?,
        overlap: b.u64()?,
    })
}

impl Header {
    pub fn new(size: u64, layout: Layout, object_prefix: String, features: u64, now: u64) -> Self {
        Header {
            size,
            layout,
            object_prefix,
            features,
            flags: 0,
            op_features: 0,
            snap_seq: 0,
            snap_limit: None,
            snaps: BTreeMap::new(),
            parent: None,
            snap_children: BTreeMap::new(),
            data_pool_id: None,
            migration: None,
            rbdm_migration: None,
            create_timestamp: now,
            access_timestamp: now,
            modify_timestamp: now,
            generation: 0,
            has_intents: false,
        }
    }

    /// Refuses a size this image cannot address, before anything changes: with an object map,
    /// more objects than the map may hold (librbd's `MAX_OBJECT_MAP_OBJECT_COUNT`, `EINVAL`
    /// as librbd's "image size not compatible with object map"); in any case more bytes than
    /// a 64-bit signed offset reaches (`EFBIG`).
    pub fn check_size(&self, size: u64) -> Result<()> {
        if size > MAX_IMAGE_SIZE {
            return Err(Error::TooLarge(format!(
                "image size {size} is larger than the largest addressable size \
                 {MAX_IMAGE_SIZE} bytes (2^63 - 1, a signed 64-bit offset)"
            )));
        }
        let objects = self.layout.object_count(size);
        if self.features & features::OBJECT_MAP != 0 && objects > rbdm_extent::MAX_MAP_OBJECTS {
            return Err(Error::Invalid(format!(
                "image size {size} is not compatible with the object map: {objects} objects \
                 of {} bytes, the object map holds at most {}",
                self.layout.object_size,
                rbdm_extent::MAX_MAP_OBJECTS
            )));
        }
        Ok(())
    }

    /// The snap context writes at head carry: newest snapshot first.
    pub fn snap_context(&self) -> SnapContext {
        SnapContext {
            seq: self.snap_seq,
            snaps: self.snaps.keys().rev().copied().collect(),
        }
    }

    pub fn snap_by_name(&self, name: &str) -> Option<&SnapMeta> {
        self.snaps.values().find(|s| s.name == name)
    }

    /// Every key of this header in Ceph's encodings (the whole record, as `create` writes it).
    pub fn to_keys(&self) -> BTreeMap<String, Vec<u8>> {
        keys::encode(self, &Keys::new())
    }

    pub fn from_keys(keys: &BTreeMap<String, Vec<u8>>) -> Result<Self> {
        if upgrade::is_rbdm_v1(keys) {
            return Err(Error::Corrupt(
                "image header is in rbdm's earlier encoding (an 8-byte 'order'); \
                 Header::load upgrades it"
                    .into(),
            ));
        }
        keys::decode(keys)
    }

    /// Refuses links that name different parents: Ceph keeps one `parent` record per image
    /// (the snapshots hold only their overlap), so such a header has no encoding.
    pub fn check_links(&self) -> Result<()> {
        let mut links = self
            .parent
            .iter()
            .chain(self.snaps.values().filter_map(|s| s.parent.as_ref()));
        let Some(first) = links.next() else {
            return Ok(());
        };
        match links.find(|l| !l.same_parent(first)) {
            None => Ok(()),
            Some(other) => Err(Error::Invalid(format!(
                "image links to two parents ({}/{}@{} and {}/{}@{}); a header holds one",
                first.pool_id,
                first.image_id,
                first.snap_id,
                other.pool_id,
                other.image_id,
                other.snap_id
            ))),
        }
    }

    /// Reads the header at `loc`; the store's `NoObject` if there is none.
    pub fn load(store: &StoreRef, loc: &Locator) -> Result<Header> {
        Ok(Header::read(store, loc)?.1)
    }

    /// The header at `loc` with the keys it was decoded from.
    fn read(store: &StoreRef, loc: &Locator) -> Result<(Keys, Header)> {
        let (keys, has_intents) = current_keys(store, loc)?;
        let mut h = Header::from_keys(&keys)?;
        h.has_intents = has_intents;
        Ok((keys, h))
    }

    /// Writes a new header; `Exists` if one is there.
    pub fn create(&self, store: &StoreRef, loc: &Locator) -> Result<()> {
        self.check_size(self.size)?;
        self.check_links()?;
        let op = WriteOp::new().create_exclusive().omap_set(self.to_keys());
        store.operate(loc, &op, &SnapContext::default())?;
        Ok(())
    }

    /// Read-modify-write with the generation guard; `change` may run several times. Writes
    /// only the keys whose encoding changed, so what Ceph wrote and rbdm did not change stays
    /// byte for byte (the guard is rbdm's: a librbd writer does not bump it, see
    /// `crates/cls/DESIGN.md`).
    pub fn update<T>(
        store: &StoreRef,
        loc: &Locator,
        mut change: impl FnMut(&mut Header) -> Result<T>,
    ) -> Result<(Header, T)> {
        loop {
            let (raw, old) = Header::read(store, loc)?;
            let mut new = old.clone();
            let out = change(&mut new)?;
            if (new.size, new.features) != (old.size, old.features) {
                new.check_size(new.size)?;
            }
            new.check_links()?;
            new.generation = old.generation.wrapping_add(1);
            let before = keys::encode(&old, &raw);
            let after = keys::encode(&new, &raw);
            // Keys rbdm's encoding of the old header had and the new one's lacks (a removed
            // snapshot, parent, flags, ...); keys rbdm does not model never qualify.
            let stale: BTreeSet<String> = before
                .keys()
                .filter(|k| !after.contains_key(*k))
                .cloned()
                .collect();
            let changed: Keys = after
                .into_iter()
                .filter(|(k, v)| before.get(k) != Some(v))
                .collect();
            let op = WriteOp::new()
                .assert_exists()
                .omap_cmp(GENERATION, raw.get(GENERATION).map(Vec::as_slice))
                .omap_set(changed)
                .omap_rm(stale);
            match store.operate(loc, &op, &SnapContext::default()) {
                Ok(()) => return Ok((new, out)),
                Err(StoreError::Canceled(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The header keys in Ceph's encodings: a header in rbdm's earlier encoding is upgraded
/// first (each attempt is one guarded write, so a race or a crash only repeats it).
fn current_keys(store: &StoreRef, loc: &Locator) -> Result<(Keys, bool)> {
    for _ in 0..8 {
        let (keys, has_intents) = load_keys(store, loc)?;
        if !upgrade::is_rbdm_v1(&keys) {
            return Ok((keys, has_intents));
        }
        upgrade::upgrade(store, loc, &keys)?;
    }
    Err(Error::Busy(format!(
        "{loc}: header keeps being rewritten in rbdm's earlier encoding; is an older rbdm running?"
    )))
}

/// Every omap key of the header object except image metadata, advisory locks and intents,
/// and whether there were intents.
fn load_keys(store: &StoreRef, loc: &Locator) -> Result<(BTreeMap<String, Vec<u8>>, bool)> {
    let mut keys = BTreeMap::new();
    let mut has_intents = false;
    let mut after = String::new();
    loop {
        let page = store.omap_get(loc, &after, "", 512)?;
        let Some((last, _)) = page.last() else { break };
        after = last.clone();
        for (k, v) in page {
            if k.starts_with(crate::intent::PREFIX) {
                has_intents = true;
            } else if !k.starts_with(METADATA_PREFIX) && !k.starts_with(crate::advisory::PREFIX) {
                keys.insert(k, v);
            }
        }
    }
    if keys.is_empty() {
        // An existing object with no keys is not a header either.
        store.stat(loc, rbdm_store::HEAD)?;
        return Err(Error::Corrupt(format!(
            "{}: object has no header keys",
            loc.name
        )));
    }
    Ok((keys, has_intents))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let mut h = Header::new(
            1 << 30,
            Layout::new(1 << 20, 1 << 16, 4).unwrap(),
            "rbd_data.ab".into(),
            61,
            5,
        );
        h.parent = Some(ParentLink {
            pool_id: 3,
            namespace: "ns".into(),
            image_id: "x".into(),
            snap_id: 4,
            overlap: 9,
        });
        h.snaps.insert(
            4,
            SnapMeta {
                id: 4,
                name: "s".into(),
                size: 7,
                protected: true,
                timestamp: 8,
                parent: h.parent.clone(),
            },
        );
        h.data_pool_id = Some(2);
        h.migration = Some(vec![1, 2, 3]);
        h.op_features = 1;
        h.snap_limit = Some(10);
        h.flags = 1;
        assert_eq!(Header::from_keys(&h.to_keys()).unwrap(), h);
        let mut keys = h.to_keys();
        assert_eq!(keys["order"], [20]);
        keys.insert("order".into(), vec![99]);
        assert!(matches!(Header::from_keys(&keys), Err(Error::Corrupt(_))));
        keys.remove("size");
        assert!(matches!(Header::from_keys(&keys), Err(Error::Corrupt(_))));
    }

    #[test]
    fn keys_ceph_leaves_out_are_not_written() {
        let h = Header::new(
            1 << 20,
            Layout::new(1 << 22, 1 << 22, 1).unwrap(),
            "p".into(),
            1,
            5,
        );
        let keys = h.to_keys();
        for absent in [
            "flags",
            "stripe_unit",
            "stripe_count",
            "op_features",
            "parent",
        ] {
            assert!(!keys.contains_key(absent), "{absent} written");
        }
        assert_eq!(keys["create_timestamp"], [5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(keys["object_prefix"], [1, 0, 0, 0, b'p']);
        assert_eq!(Header::from_keys(&keys).unwrap(), h);
    }

    #[test]
    fn a_flattened_head_keeps_the_parent_record_for_its_snapshots() {
        let link = ParentLink {
            pool_id: 1,
            namespace: String::new(),
            image_id: "p".into(),
            snap_id: 3,
            overlap: 4096,
        };
        let mut h = Header::new(
            1 << 20,
            Layout::new(1 << 22, 1 << 22, 1).unwrap(),
            "p".into(),
            1,
            5,
        );
        h.snaps.insert(
            2,
            SnapMeta {
                id: 2,
                name: "s".into(),
                size: 1 << 20,
                protected: false,
                timestamp: 6,
                parent: Some(link.clone()),
            },
        );
        let keys = h.to_keys();
        let p = rbdm_cls::parent::ClsRbdParent::decode(&keys["parent"]).unwrap();
        assert_eq!((p.image_id.as_str(), p.head_overlap), ("p", None));
        assert_eq!(Header::from_keys(&keys).unwrap(), h);
        h.parent = Some(ParentLink { snap_id: 9, ..link });
        assert!(matches!(h.check_links(), Err(Error::Invalid(_))));
    }
}
