//! Clone v2 bookkeeping as librbd and `cls_rbd` keep it: the parent's `snap_children_<id>`
//! set and `child_count`, CLONE_PARENT/CLONE_CHILD and OPERATIONS, measured against the
//! golden header of a Pacific clone parent.

mod pacific;

use std::collections::BTreeMap;

use rbdm_cls::header::{op_features, snap_children_key, snapshot_key};
use rbdm_cls::snap::ClsRbdSnap;
use rbdm_image::header::header_name;
use rbdm_image::{features, CreateOptions, Image, ImageSpec, PoolSpec, Rbd};
use rbdm_store::{Locator, SnapContext, WriteOp};

type Keys = BTreeMap<String, Vec<u8>>;

fn spec(s: &str) -> ImageSpec {
    ImageSpec::parse(s, "rbd").unwrap()
}

fn no_progress() -> impl FnMut(u64, u64) {
    |_, _| {}
}

fn pool(r: &Rbd) -> i64 {
    r.store().pool_id("rbd").unwrap()
}

fn header_keys(r: &Rbd, img: &Image) -> Keys {
    let loc = Locator::new(pool(r), "", &header_name(img.id()));
    r.store()
        .omap_get(&loc, "", "", usize::MAX)
        .unwrap()
        .into_iter()
        .collect()
}

fn u64_key(keys: &Keys, k: &str) -> u64 {
    keys.get(k)
        .map_or(0, |v| u64::from_le_bytes(v[..].try_into().unwrap()))
}

/// The golden parent's `snap_children_0000000000000005`: one child, id `102fbebd7f83`, pool 1.
fn golden_snap_children() -> Vec<u8> {
    pacific::omap_of("rbd_header.102547b0a039")
        .remove("snap_children_0000000000000005")
        .unwrap()
}

/// `bytes` with the golden's child id and pool replaced by this store's (same lengths).
fn normalised(bytes: &[u8], pool: i64, id: &str) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let at = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let i = at(&out, b"102fbebd7f83").unwrap();
    out[i..i + 12].copy_from_slice(id.as_bytes());
    let p = at(&out, &1i64.to_le_bytes()).unwrap();
    out[p..p + 8].copy_from_slice(&pool.to_le_bytes());
    out
}

fn child_count(keys: &Keys, snap: u64) -> u32 {
    ClsRbdSnap::decode(&keys[&snapshot_key(snap)])
        .unwrap()
        .child_count
}

fn parent_with_snap(r: &Rbd) -> (Image, u64) {
    let pool = PoolSpec::new("rbd", "");
    r.create(&pool, "parent", &CreateOptions::with_size(1 << 20))
        .unwrap();
    let p = r.open(&spec("parent"), false).unwrap();
    let sid = p.snap_create("s").unwrap();
    p.snap_protect("s").unwrap();
    (p, sid)
}

fn clone(r: &Rbd, name: &str) -> Image {
    r.clone_image(&spec("parent@s"), &spec(name), &CreateOptions::with_size(0))
        .unwrap();
    r.open(&spec(name), false).unwrap()
}

#[test]
fn clones_are_counted_in_the_parents_header_as_ceph_counts_them() {
    let r = Rbd::new(rbdm_store::open("mem://").unwrap());
    let (p, sid) = parent_with_snap(&r);
    let c1 = clone(&r, "c1");
    let keys = header_keys(&r, &p);
    assert_eq!(
        keys[&snap_children_key(sid)],
        normalised(&golden_snap_children(), pool(&r), c1.id())
    );
    assert_eq!(child_count(&keys, sid), 1);
    assert_eq!(u64_key(&keys, "op_features"), op_features::CLONE_PARENT);
    assert_ne!(u64_key(&keys, "features") & features::OPERATIONS, 0);
    let ckeys = header_keys(&r, &c1);
    assert_eq!(u64_key(&ckeys, "op_features"), op_features::CLONE_CHILD);
    assert_ne!(u64_key(&ckeys, "features") & features::OPERATIONS, 0);

    let c2 = clone(&r, "c2");
    assert_eq!(child_count(&header_keys(&r, &p), sid), 2);
    assert_eq!(p.children().unwrap().len(), 2);

    drop(c2);
    r.remove(&spec("c2"), &mut no_progress()).unwrap();
    let keys = header_keys(&r, &p);
    assert_eq!(child_count(&keys, sid), 1);
    assert_eq!(
        keys[&snap_children_key(sid)],
        normalised(&golden_snap_children(), pool(&r), c1.id())
    );

    c1.flatten(&mut no_progress()).unwrap();
    let keys = header_keys(&r, &p);
    assert_eq!(child_count(&keys, sid), 0);
    assert!(!keys.contains_key(&snap_children_key(sid)));
    assert!(!keys.contains_key("op_features"), "CLONE_PARENT cleared");
    assert_eq!(u64_key(&keys, "features") & features::OPERATIONS, 0);
    let ckeys = header_keys(&r, &c1);
    assert!(!ckeys.contains_key("op_features"), "CLONE_CHILD cleared");
    assert_eq!(u64_key(&ckeys, "features") & features::OPERATIONS, 0);
    assert!(p.children().unwrap().is_empty());
}

#[test]
fn registering_a_child_twice_counts_it_once() {
    let r = Rbd::new(rbdm_store::open("mem://").unwrap());
    let (p, sid) = parent_with_snap(&r);
    let c = clone(&r, "c");
    let link = c.header().unwrap().parent.clone().unwrap();
    r.child_register(&link, &PoolSpec::new("rbd", ""), c.id())
        .unwrap();
    assert_eq!(child_count(&header_keys(&r, &p), sid), 1);
    assert_eq!(p.children().unwrap().len(), 1);
}

#[test]
fn children_in_the_earlier_rbd_children_registry_are_still_listed_and_detached() {
    let r = Rbd::new(rbdm_store::open("mem://").unwrap());
    let (p, sid) = parent_with_snap(&r);
    let c = clone(&r, "c");
    // As a store made before clone v2 bookkeeping holds it: no `snap_children`, an
    // `rbd_children` key instead.
    let ploc = Locator::new(pool(&r), "", &header_name(p.id()));
    let none = SnapContext::default();
    r.store()
        .operate(
            &ploc,
            &WriteOp::new().omap_rm([snap_children_key(sid)]),
            &none,
        )
        .unwrap();
    let old = format!(
        "child_\x01{}\x01{sid:016x}\x01{}\x01\x01{}",
        p.id(),
        pool(&r),
        c.id()
    );
    let children = Locator::new(pool(&r), "", "rbd_children");
    r.store()
        .operate(
            &children,
            &WriteOp::new().omap_set([(old, Vec::new())]),
            &none,
        )
        .unwrap();
    let listed = p.children().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].image_name, "c");
    c.flatten(&mut no_progress()).unwrap();
    assert!(p.children().unwrap().is_empty());
    assert!(r
        .store()
        .omap_get(&children, "", "", usize::MAX)
        .unwrap()
        .is_empty());
}

/// A clone checks protection before it attaches; an unprotect that slips in between must not
/// leave it attached to an unprotected snapshot (which `snap rm` would then remove).
#[test]
fn a_clone_does_not_attach_to_a_snapshot_unprotected_meanwhile() {
    let r = Rbd::new(rbdm_store::open("mem://").unwrap());
    let p = PoolSpec::new("rbd", "");
    r.create(&p, "parent", &CreateOptions::with_size(1 << 22))
        .unwrap();
    let parent = r.open(&spec("parent"), false).unwrap();
    let sid = parent.snap_create("s").unwrap();
    parent.snap_protect("s").unwrap();
    r.create(&p, "child", &CreateOptions::with_size(1 << 22))
        .unwrap();
    let child = r.open(&spec("child"), true).unwrap();
    // The unprotect lands after the clone's check and before its attach.
    parent.snap_unprotect("s").unwrap();
    let link = rbdm_image::header::ParentLink {
        pool_id: pool(&r),
        namespace: String::new(),
        image_id: parent.id().to_string(),
        snap_id: sid,
        overlap: 1 << 22,
    };
    let late = r.child_register(&link, &p, child.id()).unwrap_err();
    assert!(matches!(late, rbdm_image::Error::Busy(_)), "{late}");
    assert!(parent.children().unwrap().is_empty());
    parent.snap_remove("s").unwrap();
}
