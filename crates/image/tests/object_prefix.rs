//! Data objects are named by the header's `object_prefix`, not rebuilt from the image id:
//! librbd gives an image with a data pool the prefix `rbd_data.<pool id>.<id>`, and rbdm must
//! read and write the objects Ceph's clients wrote under it.
use rbdm_image::{CreateOptions, ImageSpec, PoolSpec, Rbd};
use rbdm_store::{Locator, HEAD};

#[test]
fn data_objects_follow_the_headers_object_prefix() {
    let r = Rbd::new(rbdm_store::open("mem://").unwrap());
    r.create(
        &PoolSpec::new("rbd", ""),
        "a",
        &CreateOptions::with_size(8 << 20),
    )
    .unwrap();
    let spec = ImageSpec::parse("a", "rbd").unwrap();
    let img = r.open(&spec, false).unwrap();
    let prefix = format!("rbd_data.7.{}", img.id());
    img.update_header(|h| {
        h.object_prefix = prefix.clone();
        Ok(())
    })
    .unwrap();
    drop(img);

    let img = r.open(&spec, false).unwrap();
    img.write(4 << 20, b"under ceph's prefix").unwrap();
    let pool = r.store().pool_id("rbd").unwrap();
    let ours = Locator::new(pool, "", &format!("{prefix}.0000000000000001"));
    assert_eq!(
        r.store().read(&ours, HEAD, 0, 19).unwrap(),
        b"under ceph's prefix"
    );
    let old = Locator::new(pool, "", &format!("rbd_data.{}.0000000000000001", img.id()));
    assert!(
        r.store().stat(&old, HEAD).is_err(),
        "nothing written under rbdm's own prefix"
    );
    let mut back = vec![0; 19];
    img.read(4 << 20, &mut back).unwrap();
    assert_eq!(back, b"under ceph's prefix");
}

#[test]
fn an_image_with_a_data_pool_is_named_as_librbd_names_it() {
    let r = Rbd::new(rbdm_store::open("mem://").unwrap());
    r.pool_create("data").unwrap();
    let opts = CreateOptions {
        data_pool: Some("data".into()),
        ..CreateOptions::with_size(8 << 20)
    };
    r.create(&PoolSpec::new("rbd", ""), "d", &opts).unwrap();
    let img = r
        .open(&ImageSpec::parse("d", "rbd").unwrap(), false)
        .unwrap();
    let own = r.store().pool_id("rbd").unwrap();
    let prefix = format!("rbd_data.{own}.{}", img.id());
    assert_eq!(img.header().unwrap().object_prefix, prefix);
    img.write(0, b"in the data pool").unwrap();
    let data = r.store().pool_id("data").unwrap();
    let loc = Locator::new(data, "", &format!("{prefix}.0000000000000000"));
    assert_eq!(
        r.store().read(&loc, HEAD, 0, 16).unwrap(),
        b"in the data pool"
    );
    drop(img);
    assert_eq!(
        r.fsck(None).unwrap(),
        vec![],
        "fsck knows the data pool's objects"
    );
}
