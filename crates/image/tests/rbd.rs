//! Directory, trash, namespaces, pools, config-key, metadata, children and the refusals
//! `rbd` makes, on the in-memory store.
use rbdm_image::{features, CreateOptions, Error, ImageSpec, PoolSpec, Rbd, TrashSource};

fn rbd() -> Rbd {
    Rbd::new(rbdm_store::open("mem://").unwrap())
}

fn spec(s: &str) -> ImageSpec {
    ImageSpec::parse(s, "rbd").unwrap()
}

fn no_progress() -> impl FnMut(u64, u64) {
    |_, _| {}
}

#[test]
fn create_list_rename_remove() {
    let r = rbd();
    let pool = PoolSpec::new("rbd", "");
    r.create(&pool, "a", &CreateOptions::with_size(1 << 20))
        .unwrap();
    assert!(matches!(
        r.create(&pool, "a", &CreateOptions::with_size(1 << 20)),
        Err(Error::Exists(_))
    ));
    assert!(matches!(
        r.create(
            &PoolSpec::new("nope", ""),
            "a",
            &CreateOptions::with_size(1)
        ),
        Err(Error::NoPool(p)) if p == "nope"
    ));
    let bad = CreateOptions {
        features: Some(features::OBJECT_MAP),
        ..CreateOptions::with_size(1)
    };
    assert!(matches!(r.create(&pool, "b", &bad), Err(Error::Invalid(_))));
    assert_eq!(r.list(&pool).unwrap(), vec!["a"]);
    r.rename(&pool, "a", "b").unwrap();
    assert_eq!(r.list(&pool).unwrap(), vec!["b"]);
    assert!(matches!(r.open(&spec("a"), true), Err(Error::NoImage { name, .. }) if name == "a"));
    let img = r.open(&spec("b"), false).unwrap();
    img.write(4096, b"hello").unwrap();
    img.snap_create("s").unwrap();
    drop(img);
    assert!(matches!(
        r.remove(&spec("b"), &mut no_progress()),
        Err(Error::NotEmpty(_))
    ));
    let watcher = r.open(&spec("b"), true).unwrap();
    r.open(&spec("b"), false).unwrap().snap_purge().unwrap();
    assert!(
        matches!(
            r.remove(&spec("b"), &mut no_progress()),
            Err(Error::Busy(_))
        ),
        "watchers refuse removal"
    );
    drop(watcher);
    r.remove(&spec("b"), &mut no_progress()).unwrap();
    assert!(r.list(&pool).unwrap().is_empty());
    let leftovers: Vec<_> = r
        .store()
        .list_objects(r.store().pool_id("rbd").unwrap(), None)
        .unwrap()
        .into_iter()
        .filter(|l| {
            l.name.starts_with("rbd_data")
                || l.name.starts_with("rbd_header")
                || l.name.starts_with("rbd_object_map")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn trash_round_trip() {
    let r = rbd();
    let pool = PoolSpec::new("rbd", "");
    r.create(&pool, "t", &CreateOptions::with_size(1 << 20))
        .unwrap();
    let id = r.trash_move(&spec("t"), 3600).unwrap();
    assert!(
        matches!(r.open(&spec("t"), true), Err(Error::NoImage { .. })),
        "trash hides the name"
    );
    assert!(r.open_by_id(&pool, &id, None, true).is_ok());
    let t = r.trash_list(&pool, false).unwrap();
    assert_eq!((t.len(), t[0].name.as_str()), (1, "t"));
    assert!(
        matches!(
            r.trash_remove(&pool, &id, false, &mut no_progress()),
            Err(Error::Busy(_))
        ),
        "deferment"
    );
    r.trash_restore(&pool, &id, Some("t2")).unwrap();
    assert_eq!(r.list(&pool).unwrap(), vec!["t2"]);
    let id = r.trash_move(&spec("t2"), 0).unwrap();
    r.trash_remove(&pool, &id, false, &mut no_progress())
        .unwrap();
    assert!(r.trash_list(&pool, true).unwrap().is_empty());
    r.create(&pool, "m", &CreateOptions::with_size(1 << 20))
        .unwrap();
    let rec = rbdm_image::migration::MigrationRecord {
        role: rbdm_image::migration::MigrationRole::Source,
        state: rbdm_image::migration::MigrationState::Prepared,
        state_description: String::new(),
        peer: None,
        source_spec: String::new(),
        import_only: false,
        flatten: false,
        snap_seqs: vec![],
        overlap: 0,
        copied_upto: 0,
        source_identity: String::new(),
    };
    r.open(&spec("m"), true)
        .unwrap()
        .set_migration_record(Some(&rec))
        .unwrap();
    let id = r
        .trash_move_as(&spec("m"), 0, TrashSource::Migration)
        .unwrap();
    assert!(r.trash_list(&pool, false).unwrap().is_empty());
    assert_eq!(r.trash_list(&pool, true).unwrap().len(), 1);
    assert!(r
        .trash_remove(&pool, &id, true, &mut no_progress())
        .is_err());
    assert!(
        r.trash_restore(&pool, &id, None).is_err(),
        "a live migration's source stays"
    );
    r.open_by_id(&pool, &id, None, true)
        .unwrap()
        .set_migration_record(None)
        .unwrap();
    r.trash_restore(&pool, &id, None).unwrap();
    assert!(
        r.list(&pool).unwrap().contains(&"m".to_string()),
        "an abandoned migration's source comes back"
    );
}

#[test]
fn pools_namespaces_config_key_metadata() {
    let r = rbd();
    r.pool_create("p2").unwrap();
    assert!(matches!(r.pool_create("p2"), Err(Error::Exists(_))));
    assert!(
        r.create(
            &PoolSpec::new("p2", "ns"),
            "x",
            &CreateOptions::with_size(1)
        )
        .is_err(),
        "namespace must exist"
    );
    r.namespace_create("p2", "ns").unwrap();
    r.create(
        &PoolSpec::new("p2", "ns"),
        "x",
        &CreateOptions::with_size(1 << 20),
    )
    .unwrap();
    assert!(
        r.list(&PoolSpec::new("p2", "")).unwrap().is_empty(),
        "namespaces isolate"
    );
    assert_eq!(r.list(&PoolSpec::new("p2", "ns")).unwrap(), vec!["x"]);
    assert!(matches!(
        r.namespace_remove("p2", "ns"),
        Err(Error::Busy(_))
    ));
    assert!(matches!(r.pool_remove("p2", false), Err(Error::Busy(_))));
    r.config_key_set("k", b"v").unwrap();
    assert_eq!(r.config_key_get("k").unwrap(), b"v");
    assert_eq!(r.config_key_list().unwrap(), vec!["k"]);
    assert!(!r.pool_list().unwrap().iter().any(|p| p.starts_with('.')));
    r.config_key_remove("k").unwrap();
    assert!(matches!(r.config_key_get("k"), Err(Error::NoConfigKey(k)) if k == "k"));
    let img = r
        .open(&ImageSpec::parse("p2/ns/x", "rbd").unwrap(), false)
        .unwrap();
    img.metadata_set("conf_a", "1").unwrap();
    assert_eq!(img.metadata_get("conf_a").unwrap(), "1");
    assert_eq!(img.metadata_list().unwrap().len(), 1);
    img.metadata_remove("conf_a").unwrap();
    assert!(img.metadata_get("conf_a").is_err());
    drop(img);
    r.remove(
        &ImageSpec::parse("p2/ns/x", "rbd").unwrap(),
        &mut no_progress(),
    )
    .unwrap();
    r.namespace_remove("p2", "ns").unwrap();
    r.pool_remove("p2", false).unwrap();
    assert_eq!(r.pool_list().unwrap(), vec!["rbd"]);
}

#[test]
fn clones_children_and_protection() {
    let r = rbd();
    let pool = PoolSpec::new("rbd", "");
    r.create(&pool, "parent", &CreateOptions::with_size(8 << 20))
        .unwrap();
    let p = r.open(&spec("parent"), false).unwrap();
    p.write(0, &[7u8; 8192]).unwrap();
    p.snap_create("s").unwrap();
    assert!(
        matches!(
            r.clone_image(
                &spec("parent@s"),
                &spec("child"),
                &CreateOptions::with_size(0)
            ),
            Err(Error::Invalid(_))
        ),
        "unprotected"
    );
    p.snap_protect("s").unwrap();
    r.clone_image(
        &spec("parent@s"),
        &spec("child"),
        &CreateOptions::with_size(0),
    )
    .unwrap();
    p.write(0, &[9u8; 4096]).unwrap();
    let c = r.open(&spec("child"), false).unwrap();
    let mut buf = [0u8; 8192];
    c.read(0, &mut buf).unwrap();
    assert!(
        buf.iter().all(|&b| b == 7),
        "child reads the parent's snapshot"
    );
    let info = c.info().unwrap();
    assert_eq!(
        info.parent
            .as_ref()
            .map(|p| (p.image_name.as_str(), p.snap_name.as_str())),
        Some(("parent", "s"))
    );
    assert_eq!(p.children().unwrap().len(), 1);
    assert!(matches!(p.snap_unprotect("s"), Err(Error::Busy(_))));
    assert!(matches!(p.snap_remove("s"), Err(Error::Busy(_))));
    c.write(100, b"x").unwrap();
    c.flatten(&mut no_progress()).unwrap();
    assert!(c.info().unwrap().parent.is_none());
    c.read(0, &mut buf).unwrap();
    assert_eq!(buf[100], b'x');
    assert!(buf.iter().enumerate().all(|(i, &b)| i == 100 || b == 7));
    assert!(p.children().unwrap().is_empty());
    p.snap_unprotect("s").unwrap();
    p.snap_remove("s").unwrap();
}

#[test]
fn du_and_diff_follow_the_object_map() {
    let r = rbd();
    let pool = PoolSpec::new("rbd", "");
    let opts = CreateOptions {
        layout: Some(rbdm_image::Layout::from_order(20).unwrap()),
        ..CreateOptions::with_size(16 << 20)
    };
    r.create(&pool, "d", &opts).unwrap();
    let img = r.open(&spec("d"), false).unwrap();
    img.write(0, &[1u8; 4096]).unwrap();
    img.write(5 << 20, &[1u8; 4096]).unwrap();
    img.snap_create("a").unwrap();
    img.write(5 << 20, &[2u8; 100]).unwrap();
    img.write(9 << 20, &[2u8; 100]).unwrap();
    img.discard(0, 1 << 20).unwrap();
    let du = img.du().unwrap();
    assert_eq!(
        du.iter().map(|d| d.used).collect::<Vec<_>>(),
        vec![2 << 20, 2 << 20]
    );
    let all = img.diff(None, false).unwrap();
    assert_eq!(
        all.iter()
            .map(|e| (e.offset, e.len, e.exists))
            .collect::<Vec<_>>(),
        vec![(5 << 20, 4096, true), (9 << 20, 100, true)]
    );
    let since = img.diff(Some("a"), false).unwrap();
    assert_eq!(
        since
            .iter()
            .map(|e| (e.offset, e.len, e.exists))
            .collect::<Vec<_>>(),
        vec![(0, 4096, false), (5 << 20, 100, true), (9 << 20, 100, true)]
    );
    let whole = img.diff(Some("a"), true).unwrap();
    assert_eq!(
        whole
            .iter()
            .map(|e| (e.offset, e.len, e.exists))
            .collect::<Vec<_>>(),
        vec![
            (0, 1 << 20, false),
            (5 << 20, 1 << 20, true),
            (9 << 20, 1 << 20, true)
        ]
    );
}

#[test]
fn a_partial_discard_after_a_snapshot_shows_in_diff() {
    let r = rbd();
    r.create(
        &PoolSpec::new("rbd", ""),
        "z",
        &CreateOptions::with_size(8 << 20),
    )
    .unwrap();
    let img = r.open(&spec("z"), false).unwrap();
    img.write(0, &[5u8; 1 << 20]).unwrap();
    img.snap_create("s").unwrap();
    img.discard(0, 65536).unwrap();
    let d = img.diff(Some("s"), false).unwrap();
    assert_eq!(
        d.iter()
            .map(|e| (e.offset, e.len, e.exists))
            .collect::<Vec<_>>(),
        vec![(0, 65536, false)]
    );
}
