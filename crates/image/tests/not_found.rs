//! Each missing thing is its own error, all ENOENT, with the message `rbd` users see.
use rbdm_image::{CreateOptions, Error, ImageSpec, PoolSpec, Rbd};

fn rbd() -> Rbd {
    let r = Rbd::new(rbdm_store::open("mem://").unwrap());
    r.create(
        &PoolSpec::new("rbd", ""),
        "a",
        &CreateOptions::with_size(1 << 20),
    )
    .unwrap();
    r
}

/// `e` is ENOENT, counts as not found, and says `msg`.
fn missing(e: Error, msg: &str) -> Error {
    assert_eq!(e.errno(), libc::ENOENT, "{e}");
    assert!(e.is_not_found(), "{e:?}");
    assert_eq!(e.to_string(), msg);
    e
}

#[test]
fn a_missing_pool_is_not_a_missing_image() {
    let r = rbd();
    let e = r.open(&ImageSpec::parse("nope/a", "rbd").unwrap(), true);
    let e = missing(e.err().unwrap(), "pool 'nope' does not exist");
    assert!(matches!(e, Error::NoPool(p) if p == "nope"));
    let e = r.open(&ImageSpec::parse("rbd/b", "rbd").unwrap(), true);
    let e = missing(e.err().unwrap(), "image 'b' does not exist in rbd");
    assert!(e.is_no_image());
    assert!(matches!(e, Error::NoImage { pool: Some(p), name } if p == "rbd" && name == "b"));
}

#[test]
fn namespace_snapshot_metadata_config_key_trash_and_lock() {
    let r = rbd();
    let e = r.list(&PoolSpec::new("rbd", "ns")).unwrap_err();
    let e = missing(e, "namespace 'rbd/ns' does not exist");
    assert!(matches!(e, Error::NoNamespace(_)));
    let e = r.open(&ImageSpec::parse("rbd/a@s", "rbd").unwrap(), true);
    let e = missing(e.err().unwrap(), "snapshot 'a@s' does not exist");
    assert!(matches!(e, Error::NoSnap { image, snap } if image == "a" && snap == "s"));
    let img = r
        .open(&ImageSpec::parse("rbd/a", "rbd").unwrap(), false)
        .unwrap();
    let e = missing(
        img.metadata_get("k").unwrap_err(),
        "image 'a' has no metadata key 'k'",
    );
    assert!(matches!(e, Error::NoMetadata { .. }));
    let e = missing(
        img.lock_remove("l", "client.7").unwrap_err(),
        "no lock 'l' held by client.7",
    );
    assert!(matches!(e, Error::NoLock { client: 7, .. }));
    let e = missing(
        r.config_key_get("k").unwrap_err(),
        "config-key 'k' does not exist",
    );
    assert!(matches!(e, Error::NoConfigKey(_)));
    let e = r
        .trash_restore(&PoolSpec::new("rbd", ""), "1234", None)
        .unwrap_err();
    let e = missing(e, "image id '1234' is not in the trash of rbd");
    assert!(matches!(e, Error::NoTrashEntry { id, .. } if id == "1234"));
}

#[test]
fn other_errors_are_not_not_found() {
    let e = Error::Store(rbdm_store::Error::NoPool("p".into()));
    assert_eq!(e.errno(), libc::ENOENT);
    assert!(
        !e.is_not_found(),
        "the store's own errors are matched as such"
    );
    assert!(!Error::Busy("b".into()).is_not_found());
}
