//! A snapshot's object map rebuilt from the store (it was missing, damaged or refused) counts
//! the objects that exist only as clones: those whose head was discarded after the snapshot.
use rbdm_image::header::object_map_name;
use rbdm_image::{CreateOptions, ImageSpec, PoolSpec, Rbd};
use rbdm_store::{Locator, SnapContext, WriteOp};

const OBJ: u64 = 4 << 20;

#[test]
fn a_rebuilt_snapshot_map_keeps_objects_whose_head_is_gone() {
    let r = Rbd::new(rbdm_store::open("mem://").unwrap());
    r.create(
        &PoolSpec::new("rbd", ""),
        "a",
        &CreateOptions::with_size(4 * OBJ),
    )
    .unwrap();
    let img = r
        .open(&ImageSpec::parse("a", "rbd").unwrap(), false)
        .unwrap();
    img.write(OBJ, b"kept by the snapshot").unwrap();
    let sid = img.snap_create("s").unwrap();
    img.discard(OBJ, OBJ).unwrap();
    let pool = r.store().pool_id("rbd").unwrap();
    let map = Locator::new(pool, "", &object_map_name(img.id(), Some(sid)));
    r.store()
        .operate(&map, &WriteOp::new().remove(), &SnapContext::default())
        .unwrap();
    drop(img);

    let snap = r
        .open(&ImageSpec::parse("a@s", "rbd").unwrap(), true)
        .unwrap();
    let mut back = vec![0; 20];
    snap.read(OBJ, &mut back).unwrap();
    assert_eq!(back, b"kept by the snapshot");
    assert_eq!(
        snap.allocated_extents(0, 4 * OBJ).unwrap(),
        vec![(OBJ, 20)],
        "the rebuilt map must not hide the clone"
    );
    let du = r
        .open(&ImageSpec::parse("a", "rbd").unwrap(), true)
        .unwrap()
        .du()
        .unwrap();
    let at_s = du.iter().find(|d| d.snap.as_deref() == Some("s")).unwrap();
    assert!(at_s.used > 0, "du of the snapshot counts the clone: {du:?}");
}
