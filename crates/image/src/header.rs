//! The image header: what `rbd_header.<id>` holds, as omap keys named as Ceph names them
//! (`size`, `order`, `features`, `snap_seq`, `snapshot_<id>`, `parent`, ...), plus a
//! `generation` key every update compares and bumps, so that several processes changing one
//! header never lose each other's changes (the update is retried on a lost race).

use std::collections::{BTreeMap, BTreeSet};

use rbdm_store::{Error as StoreError, Locator, PoolId, SnapContext, SnapId, StoreRef, WriteOp};

use crate::encoding::{decode_u64, u64_value, Dec, Enc};
use crate::{features, Error, Layout, Result};

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapMeta {
    pub id: SnapId,
    pub name: String,
    pub size: u64,
    pub protected: bool,
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
    pub snap_seq: SnapId,
    /// By snap id (so oldest first).
    pub snaps: BTreeMap<SnapId, SnapMeta>,
    pub parent: Option<ParentLink>,
    pub data_pool_id: Option<PoolId>,
    /// The migration record (owned by the migration crate; opaque here).
    pub migration: Option<Vec<u8>>,
    /// rbdm's own part of the migration record (`rbdm_migration`; see `migration/record.rs`).
    pub rbdm_migration: Option<Vec<u8>>,
    pub create_timestamp: u64,
    pub access_timestamp: u64,
    pub modify_timestamp: u64,
    pub generation: u64,
    /// Whether the header object holds `rbdm_intent.*` keys (unfinished operations, see
    /// [`crate::intent`]); kept here so an open finds out without reading them a second time.
    pub has_intents: bool,
}

pub const METADATA_PREFIX: &str = "metadata_";
const SNAP_PREFIX: &str = "snapshot_";

pub fn header_name(id: &str) -> String {
    format!("rbd_header.{id}")
}
pub fn id_object_name(name: &str) -> String {
    format!("rbd_id.{name}")
}
pub fn data_prefix(id: &str) -> String {
    format!("rbd_data.{id}")
}
pub fn data_name(id: &str, object_no: u64) -> String {
    format!("rbd_data.{id}.{object_no:016x}")
}
pub fn object_map_name(id: &str, snap: Option<SnapId>) -> String {
    match snap {
        Some(s) => format!("rbd_object_map.{id}.{s:016x}"),
        None => format!("rbd_object_map.{id}"),
    }
}

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

fn encode_snap(s: &SnapMeta) -> Vec<u8> {
    Enc::new()
        .versioned(1, 1, |e| {
            e.u64(s.id)
                .str(&s.name)
                .u64(s.size)
                .bool(s.protected)
                .u64(s.timestamp);
            match &s.parent {
                Some(p) => e.bool(true).bytes(&encode_parent(p)),
                None => e.bool(false),
            };
        })
        .finish()
}

fn decode_snap(buf: &[u8], what: &str) -> Result<SnapMeta> {
    let mut d = Dec::new(buf, what);
    let (_, mut b) = d.versioned(1)?;
    let mut s = SnapMeta {
        id: b.u64()?,
        name: b.str()?,
        size: b.u64()?,
        protected: b.bool()?,
        timestamp: b.u64()?,
        parent: None,
    };
    if b.bool()? {
        let raw = b.bytes()?;
        s.parent = Some(decode_parent(&mut Dec::new(raw, what))?);
    }
    Ok(s)
}

impl Header {
    pub fn new(size: u64, layout: Layout, object_prefix: String, features: u64, now: u64) -> Self {
        Header {
            size,
            layout,
            object_prefix,
            features,
            flags: 0,
            snap_seq: 0,
            snaps: BTreeMap::new(),
            parent: None,
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

    pub fn to_keys(&self) -> BTreeMap<String, Vec<u8>> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: Vec<u8>| {
            m.insert(k.to_string(), v);
        };
        put("size", u64_value(self.size));
        put("order", u64_value(self.layout.order() as u64));
        put("stripe_unit", u64_value(self.layout.stripe_unit));
        put("stripe_count", u64_value(self.layout.stripe_count));
        put("object_prefix", self.object_prefix.as_bytes().to_vec());
        put("features", u64_value(self.features));
        put("flags", u64_value(self.flags));
        put("snap_seq", u64_value(self.snap_seq));
        put("create_timestamp", u64_value(self.create_timestamp));
        put("access_timestamp", u64_value(self.access_timestamp));
        put("modify_timestamp", u64_value(self.modify_timestamp));
        put("generation", u64_value(self.generation));
        if let Some(p) = &self.parent {
            put("parent", encode_parent(p));
        }
        if let Some(id) = self.data_pool_id {
            put("data_pool_id", u64_value(id as u64));
        }
        if let Some(mig) = &self.migration {
            put("migration", mig.clone());
        }
        if let Some(own) = &self.rbdm_migration {
            put(crate::migration::RBDM_KEY, own.clone());
        }
        for s in self.snaps.values() {
            put(&format!("{SNAP_PREFIX}{:016x}", s.id), encode_snap(s));
        }
        m
    }

    pub fn from_keys(keys: &BTreeMap<String, Vec<u8>>) -> Result<Self> {
        let get = |k: &str| -> Result<&Vec<u8>> {
            keys.get(k)
                .ok_or_else(|| Error::Corrupt(format!("image header has no '{k}' key")))
        };
        let num = |k: &str| -> Result<u64> { decode_u64(get(k)?, k) };
        let order = num("order")?;
        let object_size = 1u64
            .checked_shl(order as u32)
            .filter(|_| order < 64)
            .unwrap_or(0);
        let layout = Layout::new(object_size, num("stripe_unit")?, num("stripe_count")?)
            .map_err(|e| Error::Corrupt(format!("image header layout: {e}")))?;
        let mut h = Header::new(
            num("size")?,
            layout,
            String::from_utf8(get("object_prefix")?.clone())
                .map_err(|_| Error::Corrupt("image header object_prefix is not UTF-8".into()))?,
            num("features")?,
            num("create_timestamp")?,
        );
        h.flags = num("flags")?;
        h.snap_seq = num("snap_seq")?;
        h.access_timestamp = num("access_timestamp")?;
        h.modify_timestamp = num("modify_timestamp")?;
        h.generation = num("generation")?;
        if let Some(p) = keys.get("parent") {
            h.parent = Some(decode_parent(&mut Dec::new(p, "parent"))?);
        }
        if keys.contains_key("data_pool_id") {
            h.data_pool_id = Some(num("data_pool_id")? as i64);
        }
        h.migration = keys.get("migration").cloned();
        h.rbdm_migration = keys.get(crate::migration::RBDM_KEY).cloned();
        for (k, v) in keys.range(SNAP_PREFIX.to_string()..) {
            if !k.starts_with(SNAP_PREFIX) {
                break;
            }
            let s = decode_snap(v, k)?;
            h.snaps.insert(s.id, s);
        }
        Ok(h)
    }

    /// Reads the header at `loc`; `NotFound` if there is none.
    pub fn load(store: &StoreRef, loc: &Locator) -> Result<Header> {
        let (keys, has_intents) = load_keys(store, loc)?;
        let mut h = Header::from_keys(&keys)?;
        h.has_intents = has_intents;
        Ok(h)
    }

    /// Writes a new header; `Exists` if one is there.
    pub fn create(&self, store: &StoreRef, loc: &Locator) -> Result<()> {
        self.check_size(self.size)?;
        let op = WriteOp::new().create_exclusive().omap_set(self.to_keys());
        store.operate(loc, &op, &SnapContext::default())?;
        Ok(())
    }

    /// Read-modify-write with the generation guard; `change` may run several times.
    pub fn update<T>(
        store: &StoreRef,
        loc: &Locator,
        mut change: impl FnMut(&mut Header) -> Result<T>,
    ) -> Result<(Header, T)> {
        loop {
            let old = Header::load(store, loc)?;
            let mut new = old.clone();
            let out = change(&mut new)?;
            if (new.size, new.features) != (old.size, old.features) {
                new.check_size(new.size)?;
            }
            new.generation = old.generation + 1;
            let new_keys = new.to_keys();
            let stale = stale_keys(&old, &new);
            let op = WriteOp::new()
                .assert_exists()
                .omap_cmp("generation", Some(&u64_value(old.generation)))
                .omap_set(new_keys)
                .omap_rm(stale);
            match store.operate(loc, &op, &SnapContext::default()) {
                Ok(()) => return Ok((new, out)),
                Err(StoreError::Canceled(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
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

/// Keys an update removes are those the old header had and the new one lacks.
pub fn stale_keys(old: &Header, new: &Header) -> BTreeSet<String> {
    let n = new.to_keys();
    old.to_keys()
        .into_keys()
        .filter(|k| !n.contains_key(k))
        .collect()
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
        assert_eq!(Header::from_keys(&h.to_keys()).unwrap(), h);
        let mut keys = h.to_keys();
        keys.insert("order".into(), u64_value(99));
        assert!(matches!(Header::from_keys(&keys), Err(Error::Corrupt(_))));
        keys.remove("size");
        assert!(matches!(Header::from_keys(&keys), Err(Error::Corrupt(_))));
    }
}
