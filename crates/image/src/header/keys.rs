//! The header's omap keys in Ceph's encodings (`rbdm_cls`), as `cls_rbd` writes them: `order`
//! one byte, `object_prefix` a u32-length string, timestamps `utime_t`, `snapshot_<id>` as
//! `cls_rbd_snap` v8, `parent` as `cls_rbd_parent` v2, the other scalars u64 (`data_pool_id`
//! i64). Keys Ceph may leave out read as Ceph's defaults: `flags` 0, `stripe_unit`/
//! `stripe_count` the object size and 1, `op_features` 0, timestamps 0.
//!
//! `generation` is rbdm's own key (the interim update guard, see `crates/cls/DESIGN.md`);
//! Ceph ignores it, absent reads as 0.

use std::collections::BTreeMap;

use rbdm_cls::denc::{whole, Encoder};
use rbdm_cls::directory::encode_string;
use rbdm_cls::header::{
    snap_children_key, snap_id_of_key, snapshot_key, SNAPSHOT_PREFIX, SNAP_CHILDREN_PREFIX,
};
use rbdm_cls::parent::{decode_snap_children, encode_snap_children, ClsRbdParent};
use rbdm_cls::snap::{ClsRbdSnap, ProtectionStatus, SnapshotNamespace};
use rbdm_cls::{DecodeError, UTime};

use super::{Header, ParentLink, SnapMeta};
pub(super) use crate::encoding::u64_value;
use crate::{features, Error, Layout, Result};

pub(super) type Keys = BTreeMap<String, Vec<u8>>;

/// rbdm's update guard: compared and bumped by every `Header::update`.
pub(super) const GENERATION: &str = "generation";

/// `h` as header keys. A snapshot whose record is in `base` (the keys as read) keeps the
/// fields rbdm does not model (namespace, flags, nanoseconds, an unprotecting state), so
/// rewriting a snapshot Ceph made loses nothing of it; its `child_count` is the size of its
/// `snap_children` set, as `child_attach`/`child_detach` keep them together.
pub(super) fn encode(h: &Header, base: &Keys) -> Keys {
    let mut m = Keys::new();
    let mut put = |k: &str, v: Vec<u8>| {
        m.insert(k.to_string(), v);
    };
    put("size", u64_value(h.size));
    put("order", vec![h.layout.order()]);
    if h.features & features::STRIPINGV2 != 0 || h.layout.is_striped() {
        put("stripe_unit", u64_value(h.layout.stripe_unit));
        put("stripe_count", u64_value(h.layout.stripe_count));
    }
    put("object_prefix", encode_string(&h.object_prefix));
    put("features", u64_value(h.features));
    // Written only when set, as Ceph's `set_flags` / `op_features_set` leave them.
    if h.flags != 0 {
        put("flags", u64_value(h.flags));
    }
    if h.op_features != 0 {
        put("op_features", u64_value(h.op_features));
    }
    put("snap_seq", u64_value(h.snap_seq));
    put("create_timestamp", time_value(h.create_timestamp));
    put("access_timestamp", time_value(h.access_timestamp));
    put("modify_timestamp", time_value(h.modify_timestamp));
    put(GENERATION, u64_value(h.generation));
    if let Some(p) = parent_record(h) {
        put("parent", p.encode());
    }
    if let Some(id) = h.data_pool_id {
        put("data_pool_id", id.to_le_bytes().to_vec());
    }
    if let Some(limit) = h.snap_limit {
        put("snap_limit", u64_value(limit));
    }
    if let Some(mig) = &h.migration {
        put("migration", mig.clone());
    }
    if let Some(own) = &h.rbdm_migration {
        put(crate::migration::RBDM_KEY, own.clone());
    }
    for s in h.snaps.values() {
        let key = snapshot_key(s.id);
        let old = base.get(&key).and_then(|b| ClsRbdSnap::decode(b).ok());
        let children = h
            .snap_children
            .get(&s.id)
            .map_or(0, |c| u32::try_from(c.len()).unwrap_or(u32::MAX));
        put(&key, snap_record(s, old, children).encode());
    }
    for (id, set) in h.snap_children.iter().filter(|(_, c)| !c.is_empty()) {
        let set: Vec<_> = set.iter().cloned().collect();
        put(&snap_children_key(*id), encode_snap_children(&set));
    }
    m
}

/// The one `parent` record: the head's link, else (the head flattened, snapshots still
/// reading through) a snapshot's link with no head overlap, as Ceph's `remove_parent` leaves
/// it. All links of an image name the same parent ([`Header::check_links`]).
fn parent_record(h: &Header) -> Option<ClsRbdParent> {
    let link = h
        .parent
        .as_ref()
        .or_else(|| h.snaps.values().find_map(|s| s.parent.as_ref()))?;
    Some(ClsRbdParent {
        pool_id: link.pool_id,
        pool_namespace: link.namespace.clone(),
        image_id: link.image_id.clone(),
        snap_id: link.snap_id,
        head_overlap: h.parent.as_ref().map(|p| p.overlap),
    })
}

fn snap_record(s: &SnapMeta, old: Option<ClsRbdSnap>, child_count: u32) -> ClsRbdSnap {
    let keep = old.filter(|o| o.id == s.id);
    let status = match (&keep, s.protected) {
        (_, false) => ProtectionStatus::Unprotected,
        (Some(o), true) if o.protection_status != ProtectionStatus::Unprotected => {
            o.protection_status
        }
        (_, true) => ProtectionStatus::Protected,
    };
    let nsec = keep
        .as_ref()
        .filter(|o| u64::from(o.timestamp.sec) == s.timestamp)
        .map_or(0, |o| o.timestamp.nsec);
    ClsRbdSnap {
        id: s.id,
        name: s.name.clone(),
        image_size: s.size,
        protection_status: status,
        legacy_parent: None,
        flags: keep.as_ref().map_or(0, |o| o.flags),
        timestamp: UTime {
            sec: utime_sec(s.timestamp),
            nsec,
        },
        namespace: keep
            .as_ref()
            .map_or(SnapshotNamespace::User, |o| o.namespace.clone()),
        child_count,
        parent_overlap: s.parent.as_ref().map(|p| p.overlap),
    }
}

pub(super) fn decode(keys: &Keys) -> Result<Header> {
    let get = |k: &str| -> Result<&Vec<u8>> {
        keys.get(k)
            .ok_or_else(|| Error::Corrupt(format!("image header has no '{k}' key")))
    };
    let u64_of = |k: &'static str| -> Result<Option<u64>> {
        keys.get(k)
            .map(|v| whole(k, v, |d| d.u64()).map_err(|e| corrupt(k, e)))
            .transpose()
    };
    let time = |k: &'static str| -> Result<u64> {
        Ok(keys
            .get(k)
            .map(|v| whole(k, v, UTime::decode).map_err(|e| corrupt(k, e)))
            .transpose()?
            .map_or(0, |t| t.sec.into()))
    };
    let need = |k: &'static str| -> Result<u64> {
        whole(k, get(k)?, |d| d.u64()).map_err(|e| corrupt(k, e))
    };
    let order = whole("order", get("order")?, |d| d.u8()).map_err(|e| corrupt("order", e))?;
    let object_size = 1u64
        .checked_shl(order.into())
        .filter(|_| order < 64)
        .unwrap_or(0);
    let layout = Layout::new(
        object_size,
        u64_of("stripe_unit")?.unwrap_or(object_size),
        u64_of("stripe_count")?.unwrap_or(1),
    )
    .map_err(|e| Error::Corrupt(format!("image header layout: {e}")))?;
    let prefix = whole("object_prefix", get("object_prefix")?, |d| d.string())
        .map_err(|e| corrupt("object_prefix", e))?;
    let mut h = Header::new(need("size")?, layout, prefix, need("features")?, 0);
    h.create_timestamp = time("create_timestamp")?;
    h.access_timestamp = time("access_timestamp")?;
    h.modify_timestamp = time("modify_timestamp")?;
    h.flags = u64_of("flags")?.unwrap_or(0);
    h.op_features = u64_of("op_features")?.unwrap_or(0);
    h.snap_seq = need("snap_seq")?;
    h.snap_limit = u64_of("snap_limit")?;
    h.generation = u64_of(GENERATION)?.unwrap_or(0);
    if let Some(v) = keys.get("data_pool_id") {
        h.data_pool_id =
            Some(whole("data_pool_id", v, |d| d.i64()).map_err(|e| corrupt("data_pool_id", e))?);
    }
    h.migration = keys.get("migration").cloned();
    h.rbdm_migration = keys.get(crate::migration::RBDM_KEY).cloned();
    let parent = keys
        .get("parent")
        .map(|v| ClsRbdParent::decode(v).map_err(|e| corrupt("parent", e)))
        .transpose()?;
    decode_snaps(keys, parent, &mut h)?;
    decode_snap_children_keys(keys, &mut h)?;
    Ok(h)
}

/// The `snap_children_<id>` sets (clone v2's children of each snapshot).
fn decode_snap_children_keys(keys: &Keys, h: &mut Header) -> Result<()> {
    for (k, v) in keys.range(SNAP_CHILDREN_PREFIX.to_string()..) {
        if !k.starts_with(SNAP_CHILDREN_PREFIX) {
            break;
        }
        let id = snap_id_of_key(k)
            .ok_or_else(|| Error::Corrupt(format!("image header key '{k}': no snapshot id")))?;
        let set = decode_snap_children(v).map_err(|e| corrupt(k, e))?;
        if !set.is_empty() {
            h.snap_children.insert(id, set.into_iter().collect());
        }
    }
    Ok(())
}

/// The snapshots, and the head's and each snapshot's parent link. A pre-Nautilus snapshot
/// carries its parent inline; without a `parent` key the first such link names the parent
/// for all, so every link of the image is the same parent (as it is in Ceph).
fn decode_snaps(keys: &Keys, parent: Option<ClsRbdParent>, h: &mut Header) -> Result<()> {
    let mut records = Vec::new();
    for (k, v) in keys.range(SNAPSHOT_PREFIX.to_string()..) {
        if !k.starts_with(SNAPSHOT_PREFIX) {
            break;
        }
        let s = ClsRbdSnap::decode(v).map_err(|e| corrupt(k, e))?;
        if snap_id_of_key(k) != Some(s.id) {
            return Err(Error::Corrupt(format!(
                "image header key '{k}' holds snapshot {}",
                s.id
            )));
        }
        records.push(s);
    }
    // Only the `parent` key speaks for the head; an inline parent's overlap is its snapshot's.
    let head_overlap = parent.as_ref().and_then(|p| p.head_overlap);
    let spec = parent.or_else(|| records.iter().find_map(|s| s.legacy_parent.clone()));
    let link = |overlap: u64| {
        spec.as_ref().map(|p| ParentLink {
            pool_id: p.pool_id,
            namespace: p.pool_namespace.clone(),
            image_id: p.image_id.clone(),
            snap_id: p.snap_id,
            overlap,
        })
    };
    h.parent = head_overlap.and_then(link);
    for s in records {
        let overlap = s.parent_overlap.or_else(|| {
            s.legacy_parent
                .as_ref()
                .map(|p| p.head_overlap.unwrap_or(0))
        });
        h.snaps.insert(
            s.id,
            SnapMeta {
                id: s.id,
                name: s.name,
                size: s.image_size,
                // unprotecting is still not removable
                protected: s.protection_status != ProtectionStatus::Unprotected,
                timestamp: s.timestamp.sec.into(),
                parent: overlap.and_then(link),
            },
        );
    }
    Ok(())
}

fn corrupt(key: &str, e: DecodeError) -> Error {
    Error::Corrupt(format!("image header key '{key}': {e}"))
}

/// Seconds as a `utime_t` with 0 nanoseconds (rbdm keeps seconds only).
fn time_value(sec: u64) -> Vec<u8> {
    let mut e = Encoder::new();
    UTime {
        sec: utime_sec(sec),
        nsec: 0,
    }
    .encode(&mut e);
    e.into_bytes()
}

/// `utime_t` seconds are 32 bits (until 2106); later times saturate.
fn utime_sec(sec: u64) -> u32 {
    u32::try_from(sec).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_with(snap: ClsRbdSnap) -> Keys {
        let h = Header::new(
            1 << 20,
            Layout::new(1 << 22, 1 << 22, 1).unwrap(),
            "p".into(),
            1,
            5,
        );
        let mut keys = h.to_keys();
        keys.insert(snapshot_key(snap.id), snap.encode());
        keys
    }

    fn snap(id: u64) -> ClsRbdSnap {
        ClsRbdSnap {
            id,
            name: "s".into(),
            image_size: 4096,
            protection_status: ProtectionStatus::Unprotecting,
            legacy_parent: None,
            flags: 0,
            timestamp: UTime { sec: 7, nsec: 8 },
            namespace: SnapshotNamespace::User,
            child_count: 0,
            parent_overlap: None,
        }
    }

    #[test]
    fn an_inline_parent_is_the_snapshots_not_the_heads() {
        let inline = ClsRbdParent {
            pool_id: 1,
            pool_namespace: String::new(),
            image_id: "par".into(),
            snap_id: 2,
            head_overlap: Some(512),
        };
        let keys = keys_with(ClsRbdSnap {
            legacy_parent: Some(inline),
            ..snap(3)
        });
        let h = decode(&keys).unwrap();
        assert_eq!(h.parent, None);
        let link = h.snaps[&3].parent.as_ref().unwrap();
        assert_eq!((link.image_id.as_str(), link.overlap), ("par", 512));
        assert_eq!(decode(&h.to_keys()).unwrap(), h);
    }

    #[test]
    fn unprotecting_is_protected_and_a_rewrite_keeps_it() {
        let keys = keys_with(snap(3));
        let h = decode(&keys).unwrap();
        assert!(h.snaps[&3].protected);
        let again = ClsRbdSnap::decode(&encode(&h, &keys)[&snapshot_key(3)]).unwrap();
        assert_eq!(again, snap(3));
        // without the record as read, rbdm writes its own defaults
        let fresh = ClsRbdSnap::decode(&h.to_keys()[&snapshot_key(3)]).unwrap();
        assert_eq!(fresh.protection_status, ProtectionStatus::Protected);
        assert_eq!(fresh.timestamp, UTime { sec: 7, nsec: 0 });
    }

    #[test]
    fn a_snapshot_under_another_key_is_corrupt() {
        let mut keys = keys_with(snap(3));
        let v = keys.remove(&snapshot_key(3)).unwrap();
        keys.insert(snapshot_key(4), v);
        assert!(matches!(decode(&keys), Err(Error::Corrupt(_))));
    }
}
