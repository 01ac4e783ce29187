//! The one-time upgrade of a header (and its object maps) written before rbdm used Ceph's
//! encodings. An old header is told apart by its `order` value: 8 bytes in rbdm's earlier
//! form, one byte in Ceph's, so no old header is ever read as a new one (or the other way).
//!
//! The upgrade runs where a header is read ([`super::Header::load`] and `update`), so
//! existing stores need no command. Crash-safe and re-runnable: the object maps are
//! rewritten first (each map on its own, recognised by its `RBDMOMAP` magic, so a map
//! already rewritten is left alone), then the header in one write guarded by the old
//! `order` and `generation` values. A crash before that write leaves an old header, which
//! the next read upgrades again; a lost race leaves whatever the winner wrote. A store that
//! cannot be written (opened read-only on a full disk) fails the read with the store's error
//! rather than reading the old form in memory: there is one reader, of Ceph's form.

use rbdm_extent::ObjectMap;
use rbdm_store::{Error as StoreError, Locator, SnapContext, StoreRef, WriteOp, HEAD};

use super::keys::{Keys, GENERATION};
use super::{decode_parent, object_map_name, Header, SnapMeta};
use crate::encoding::{decode_u64, Dec};
use crate::{Error, Result};

/// The scalar keys rbdm's earlier form always wrote; the upgrade removes those Ceph's form
/// leaves out (`flags` when 0, the stripe keys without striping).
const V1_KEYS: &[&str] = &["flags", "stripe_unit", "stripe_count"];

/// Whether `keys` are rbdm's earlier encoding.
pub(super) fn is_rbdm_v1(keys: &Keys) -> bool {
    keys.get("order").is_some_and(|v| v.len() == 8)
}

/// Rewrites the old header `keys` at `loc` (and its maps) in Ceph's encodings. `Ok` also
/// when another process changed the header first: the caller reads it again.
pub(super) fn upgrade(store: &StoreRef, loc: &Locator, keys: &Keys) -> Result<()> {
    let mut h = decode_v1(keys)?;
    upgrade_maps(store, loc, &h)?;
    h.generation = h.generation.wrapping_add(1);
    let new = h.to_keys();
    let stale: Vec<&str> = V1_KEYS
        .iter()
        .copied()
        .filter(|k| keys.contains_key(*k) && !new.contains_key(*k))
        .collect();
    let op = WriteOp::new()
        .assert_exists()
        .omap_cmp("order", keys.get("order").map(Vec::as_slice))
        .omap_cmp(GENERATION, keys.get(GENERATION).map(Vec::as_slice))
        .omap_set(new)
        .omap_rm(stale);
    match store.operate(loc, &op, &SnapContext::default()) {
        Ok(()) | Err(StoreError::Canceled(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Rewrites the head's and each snapshot's `RBDMOMAP` object map as Ceph's `BitVector`. A
/// damaged old map is removed: the image layer rebuilds a missing map from the objects.
fn upgrade_maps(store: &StoreRef, loc: &Locator, h: &Header) -> Result<()> {
    let Some(id) = loc.name.strip_prefix("rbd_header.") else {
        return Ok(());
    };
    let snaps = std::iter::once(None).chain(h.snaps.keys().map(|s| Some(*s)));
    for snap in snaps {
        let mloc = Locator::new(loc.pool, &loc.namespace, &object_map_name(id, snap));
        let buf = match store.read(&mloc, HEAD, 0, u64::MAX >> 1) {
            Ok(buf) => buf,
            Err(StoreError::NoObject { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        if !ObjectMap::is_rbdm_v1(&buf) {
            continue;
        }
        let op = match ObjectMap::decode_rbdm_v1(&buf) {
            Ok(map) => WriteOp::new().write_full(&map.encode()),
            Err(_) => WriteOp::new().remove(),
        };
        store.operate(&mloc, &op, &SnapContext::default())?;
    }
    Ok(())
}

/// Reads rbdm's earlier header: every scalar a u64, `object_prefix` raw bytes, snapshots
/// and the parent in rbdm's own version-1 records.
pub(crate) fn decode_v1(keys: &Keys) -> Result<Header> {
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
    let layout = crate::Layout::new(object_size, num("stripe_unit")?, num("stripe_count")?)
        .map_err(|e| Error::Corrupt(format!("image header layout: {e}")))?;
    let prefix = String::from_utf8(get("object_prefix")?.clone())
        .map_err(|_| Error::Corrupt("image header object_prefix is not UTF-8".into()))?;
    let mut h = Header::new(
        num("size")?,
        layout,
        prefix,
        num("features")?,
        num("create_timestamp")?,
    );
    h.flags = num("flags")?;
    h.snap_seq = num("snap_seq")?;
    h.access_timestamp = num("access_timestamp")?;
    h.modify_timestamp = num("modify_timestamp")?;
    h.generation = num(GENERATION)?;
    if let Some(p) = keys.get("parent") {
        h.parent = Some(decode_parent(&mut Dec::new(p, "parent"))?);
    }
    if keys.contains_key("data_pool_id") {
        h.data_pool_id = Some(num("data_pool_id")? as i64);
    }
    h.migration = keys.get("migration").cloned();
    let snaps = keys.range("snapshot_".to_string()..);
    for (k, v) in snaps.take_while(|(k, _)| k.starts_with("snapshot_")) {
        let s = decode_snap_v1(v, k)?;
        h.snaps.insert(s.id, s);
    }
    Ok(h)
}

fn decode_snap_v1(buf: &[u8], what: &str) -> Result<SnapMeta> {
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
