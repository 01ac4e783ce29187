//! `Header` against a store: an update of a header Ceph made changes only what it must, and
//! a header (with its object maps) in rbdm's earlier encoding is upgraded on first read,
//! never misread.

mod pacific;

use std::collections::BTreeMap;

use rbdm_cls::snap::ClsRbdSnap;
use rbdm_extent::{Layout, ObjectMap, ObjectState};
use rbdm_image::header::{Header, ParentLink, SnapMeta};
use rbdm_image::Error;
use rbdm_store::{Locator, SnapContext, StoreRef, WriteOp, HEAD};

type Keys = BTreeMap<String, Vec<u8>>;

fn store() -> (StoreRef, i64) {
    let s = rbdm_store::open("mem://").unwrap();
    let pool = s.pool_id("rbd").unwrap();
    (s, pool)
}

fn all_keys(s: &StoreRef, loc: &Locator) -> Keys {
    s.omap_get(loc, "", "", usize::MAX)
        .unwrap()
        .into_iter()
        .collect()
}

fn put(s: &StoreRef, loc: &Locator, keys: Keys) {
    let op = WriteOp::new().create().omap_set(keys);
    s.operate(loc, &op, &SnapContext::default()).unwrap();
}

/// The golden `snapimg` header (snapshots s1, s2 protected with a clone, forimport).
fn golden_snapimg() -> Keys {
    pacific::omap_of("rbd_header.102547b0a039")
}

#[test]
fn an_update_of_a_ceph_header_rewrites_only_what_changed() {
    let (s, pool) = store();
    let loc = Locator::new(pool, "", "rbd_header.102547b0a039");
    let ceph = golden_snapimg();
    put(&s, &loc, ceph.clone());
    let (h, ()) = Header::update(&s, &loc, |h| {
        h.snaps.get_mut(&5).unwrap().name = "renamed".into();
        Ok(())
    })
    .unwrap();
    assert_eq!(h.generation, 1);
    let now = all_keys(&s, &loc);
    for (k, v) in &ceph {
        if k != "snapshot_0000000000000005" {
            assert_eq!(now.get(k), Some(v), "{k} was rewritten");
        }
    }
    assert_eq!(now["generation"], 1u64.to_le_bytes());
    assert_eq!(now.len(), ceph.len() + 1, "only the guard key is added");
    // the renamed snapshot keeps what rbdm does not model: child count, nanoseconds
    let before = ClsRbdSnap::decode(&ceph["snapshot_0000000000000005"]).unwrap();
    let after = ClsRbdSnap::decode(&now["snapshot_0000000000000005"]).unwrap();
    assert_eq!(after.name, "renamed");
    assert_eq!(after.child_count, 1);
    assert_eq!(
        after,
        ClsRbdSnap {
            name: "renamed".into(),
            ..before
        }
    );
    // a removed snapshot's key goes; keys rbdm does not know stay
    Header::update(&s, &loc, |h| {
        h.snaps.remove(&4);
        Ok(())
    })
    .unwrap();
    let now = all_keys(&s, &loc);
    assert!(!now.contains_key("snapshot_0000000000000004"));
    assert_eq!(
        now["snap_children_0000000000000005"],
        ceph["snap_children_0000000000000005"]
    );
    assert_eq!(now["op_features"], ceph["op_features"]);
}

/// rbdm's earlier header encoding, as the code before Ceph's encodings wrote it.
mod v1 {
    use super::Keys;

    fn u64v(v: u64) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn versioned(body: Vec<u8>) -> Vec<u8> {
        let mut out = vec![1, 1];
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend(body);
        out
    }

    /// pool 3, ns "", image "par", snap 4, overlap 4096.
    pub fn parent() -> Vec<u8> {
        let mut b = u64v(3);
        string(&mut b, "");
        string(&mut b, "par");
        b.extend(u64v(4));
        b.extend(u64v(4096));
        versioned(b)
    }

    /// Snapshot 7 "s", 1 MiB, protected, at second 1234, with the parent.
    pub fn snapshot() -> Vec<u8> {
        let mut b = u64v(7);
        string(&mut b, "s");
        b.extend(u64v(1 << 20));
        b.push(1);
        b.extend(u64v(1234));
        b.push(1);
        let p = parent();
        b.extend_from_slice(&(p.len() as u32).to_le_bytes());
        b.extend(p);
        versioned(b)
    }

    pub fn header() -> Keys {
        let mut m = Keys::new();
        for (k, v) in [
            ("size", 1 << 20),
            ("order", 22),
            ("stripe_unit", 4 << 20),
            ("stripe_count", 1),
            ("features", 61),
            ("flags", 0),
            ("snap_seq", 7),
            ("create_timestamp", 1000),
            ("access_timestamp", 1001),
            ("modify_timestamp", 1002),
            ("generation", 5),
        ] {
            m.insert(k.to_string(), u64v(v));
        }
        m.insert("object_prefix".into(), b"rbd_data.abc".to_vec());
        m.insert("parent".into(), parent());
        m.insert("snapshot_0000000000000007".into(), snapshot());
        m.insert("metadata_owner".into(), b"me".to_vec());
        m
    }

    /// `RBDMOMAP`, count, packed bits, crc32 of all before.
    pub fn object_map(states: &[u8]) -> Vec<u8> {
        let mut out = b"RBDMOMAP".to_vec();
        out.extend(u64v(states.len() as u64));
        let mut bits = vec![0u8; states.len().div_ceil(4)];
        for (i, s) in states.iter().enumerate() {
            bits[i / 4] |= s << (6 - 2 * (i % 4));
        }
        out.extend(bits);
        let crc = crc32fast::hash(&out);
        out.extend(crc.to_le_bytes());
        out
    }
}

fn expected_upgraded() -> Header {
    let link = ParentLink {
        pool_id: 3,
        namespace: String::new(),
        image_id: "par".into(),
        snap_id: 4,
        overlap: 4096,
    };
    let layout = Layout::new(4 << 20, 4 << 20, 1).unwrap();
    let mut h = Header::new(1 << 20, layout, "rbd_data.abc".into(), 61, 1000);
    h.access_timestamp = 1001;
    h.modify_timestamp = 1002;
    h.snap_seq = 7;
    h.generation = 6;
    h.parent = Some(link.clone());
    h.snaps.insert(
        7,
        SnapMeta {
            id: 7,
            name: "s".into(),
            size: 1 << 20,
            protected: true,
            timestamp: 1234,
            parent: Some(link),
        },
    );
    h
}

#[test]
fn an_old_header_is_refused_by_the_decoder_and_upgraded_by_load() {
    assert!(matches!(
        Header::from_keys(&v1::header()),
        Err(Error::Corrupt(_))
    ));
    let (s, pool) = store();
    let loc = Locator::new(pool, "", "rbd_header.abc");
    put(&s, &loc, v1::header());
    let head_map = Locator::new(pool, "", "rbd_object_map.abc");
    let snap_map = Locator::new(pool, "", "rbd_object_map.abc.0000000000000007");
    let write = |l: &Locator, b: &[u8]| {
        s.operate(l, &WriteOp::new().write_full(b), &SnapContext::default())
            .unwrap()
    };
    write(&head_map, &v1::object_map(&[1, 3, 0, 2, 1]));
    write(&snap_map, &v1::object_map(&[1]));

    let h = Header::load(&s, &loc).unwrap();
    assert_eq!(h, expected_upgraded());
    let keys = all_keys(&s, &loc);
    assert_eq!(keys["order"], [22]);
    assert_eq!(&keys["object_prefix"][..4], &[12, 0, 0, 0]);
    for gone in ["flags", "stripe_unit", "stripe_count"] {
        assert!(!keys.contains_key(gone), "{gone} kept");
    }
    assert_eq!(keys["metadata_owner"], b"me");
    let snap = ClsRbdSnap::decode(&keys["snapshot_0000000000000007"]).unwrap();
    assert_eq!(
        (snap.timestamp.sec, snap.parent_overlap),
        (1234, Some(4096))
    );
    assert_eq!(Header::from_keys(&keys).unwrap(), h);

    let map = ObjectMap::decode(&s.read(&head_map, HEAD, 0, 1 << 20).unwrap()).unwrap();
    let states: Vec<ObjectState> = (0..map.len()).map(|i| map.get(i)).collect();
    use ObjectState::*;
    assert_eq!(states, [Exists, ExistsClean, Nonexistent, Pending, Exists]);
    let snap_bytes = s.read(&snap_map, HEAD, 0, 1 << 20).unwrap();
    assert_eq!(ObjectMap::decode(&snap_bytes).unwrap().get(0), Exists);

    // re-running changes nothing: the header is already in the new form
    let again = Header::load(&s, &loc).unwrap();
    assert_eq!(again, h);
    assert_eq!(all_keys(&s, &loc), keys);
}

#[test]
fn a_crash_after_the_maps_finishes_on_the_next_read() {
    // The maps were rewritten, then the process died before the header write.
    let (s, pool) = store();
    let loc = Locator::new(pool, "", "rbd_header.abc");
    put(&s, &loc, v1::header());
    let head_map = Locator::new(pool, "", "rbd_object_map.abc");
    let mut m = ObjectMap::new(2);
    m.set(1, ObjectState::Exists);
    let new_map = m.encode();
    s.operate(
        &head_map,
        &WriteOp::new().write_full(&new_map),
        &SnapContext::default(),
    )
    .unwrap();
    // an update (not only a load) upgrades first, then applies its change
    let (h, ()) = Header::update(&s, &loc, |h| {
        h.size = 2 << 20;
        Ok(())
    })
    .unwrap();
    assert_eq!(h.size, 2 << 20);
    assert_eq!(h.generation, 7, "upgrade bumped 5 to 6, the update to 7");
    assert_eq!(all_keys(&s, &loc)["order"], [22]);
    assert_eq!(s.read(&head_map, HEAD, 0, 1 << 20).unwrap(), new_map);
}

#[test]
fn a_damaged_old_map_is_removed_for_the_image_to_rebuild() {
    let (s, pool) = store();
    let loc = Locator::new(pool, "", "rbd_header.abc");
    put(&s, &loc, v1::header());
    let head_map = Locator::new(pool, "", "rbd_object_map.abc");
    let mut bad = v1::object_map(&[1, 1]);
    bad[16] ^= 0xff;
    s.operate(
        &head_map,
        &WriteOp::new().write_full(&bad),
        &SnapContext::default(),
    )
    .unwrap();
    Header::load(&s, &loc).unwrap();
    assert!(s.read(&head_map, HEAD, 0, 1 << 20).is_err());
}
