//! The `migration` key is Ceph's `MigrationSpec` as librbd writes it (issue 15): the records a
//! Pacific 16.2.15 cluster wrote (`crates/cls/tests/golden/`) decode and re-encode byte for
//! byte, rbdm's prepare writes the same bytes for the same migration (ids and pool ids put
//! in), and a Ceph-made record, without rbdm's own key, is a migration rbdm's status shows.
use rbdm_cls::golden::{self, GoldenObject};
use rbdm_cls::migration::MigrationSpec;
use rbdm_image::migration::{MigrationRecord, MigrationRole, MigrationState};
use rbdm_image::{CreateOptions, Image, ImageSpec, Rbd};

/// What the golden set's `rbd migration prepare --import-only` was given.
const IMPORT_SPEC: &str =
    r#"{"type":"native","pool_name":"rbd","image_name":"snapimg","snap_name":"forimport"}"#;
const SIZE: u64 = 512 << 10;

fn golden_objects() -> Vec<GoldenObject> {
    dump("rbd.txt")
}

fn dump(file: &str) -> Vec<GoldenObject> {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../cls/tests/golden/pacific-16.2.15"
    );
    golden::parse(&std::fs::read_to_string(format!("{dir}/{file}")).unwrap()).unwrap()
}

/// The records of `migration-states.txt`: (moment, header id, bytes).
fn states() -> Vec<(String, String, Vec<u8>)> {
    dump("migration-states.txt")
        .into_iter()
        .map(|o| {
            let id = o.name.strip_prefix("rbd_header.").unwrap().to_string();
            (o.namespace, id, o.omap[0].1.clone())
        })
        .collect()
}

/// The `migration` value of the header of image `name` in the golden dump.
fn golden_record(name: &str) -> Vec<u8> {
    let objs = golden_objects();
    let dir = objs
        .iter()
        .find(|o| o.namespace.is_empty() && o.name == "rbd_directory")
        .unwrap();
    let key = format!("name_{name}");
    let (_, id) = dir.omap.iter().find(|(k, _)| *k == key).unwrap();
    // A `rbd_directory` value is a u32-length string.
    header_record(&objs, std::str::from_utf8(&id[4..]).unwrap())
}

fn header_record(objs: &[GoldenObject], id: &str) -> Vec<u8> {
    let header = format!("rbd_header.{id}");
    let obj = objs.iter().find(|o| o.name == header).unwrap();
    obj.omap
        .iter()
        .find(|(k, _)| k == "migration")
        .unwrap()
        .1
        .clone()
}

/// The source's record: it is in the trash, its header found by the destination's record.
fn golden_source_record() -> Vec<u8> {
    let dst = MigrationSpec::decode(&golden_record("migdst")).unwrap();
    header_record(&golden_objects(), &dst.image_id)
}

fn spec(s: &str) -> ImageSpec {
    ImageSpec::parse(s, "rbd").unwrap()
}

fn store() -> Rbd {
    rbdm_plugins::link();
    rbdm_migration::rbd(rbdm_store::open("mem://").unwrap())
}

fn create(rbd: &Rbd, name: &str) -> Image {
    rbd.create(
        &spec(name).pool_spec(),
        name,
        &CreateOptions::with_size(SIZE),
    )
    .unwrap();
    let img = rbd.open(&spec(name), false).unwrap();
    img.write(0, &[7u8; 4096]).unwrap();
    img
}

fn header_of(rbd: &Rbd, name: &str) -> (Vec<u8>, Option<Vec<u8>>) {
    let h = rbd
        .open_quiet(&spec(name).pool_spec(), Some(name), None, None)
        .unwrap()
        .header()
        .unwrap();
    (h.migration.clone().unwrap(), h.rbdm_migration.clone())
}

#[test]
fn pacific_records_decode_and_encode_byte_for_byte() {
    for name in ["migsrc", "migdst", "migimp"] {
        let raw = if name == "migsrc" {
            golden_source_record()
        } else {
            golden_record(name)
        };
        let rec = MigrationRecord::decode(&raw, None).unwrap();
        assert_eq!(rec.encode(), raw, "{name}");
        assert_eq!(rec.encode_rbdm(), None, "{name}: nothing of rbdm's to keep");
        assert_eq!(rec.state, MigrationState::Prepared);
        let peer = rec.peer.as_ref().map(|p| p.name.as_str());
        match name {
            "migsrc" => assert_eq!((rec.role, peer), (MigrationRole::Source, Some("migdst"))),
            "migdst" => {
                assert_eq!(
                    (rec.role, peer),
                    (MigrationRole::Destination, Some("migsrc"))
                );
                assert!(!rec.import_only);
                assert_eq!(rec.overlap, SIZE);
                assert!(
                    rec.source_spec.contains(r#""type":"native""#),
                    "{}",
                    rec.source_spec
                );
            }
            _ => {
                assert!(rec.import_only && rec.flatten && rec.peer.is_none());
                assert_eq!(rec.snap_seqs, vec![(4, 8), (5, 9), (7, 10)]);
                assert_eq!(rec.point_of(Some(9)), Some(1));
            }
        }
    }
}

#[test]
fn a_same_store_prepare_writes_what_librbd_writes() {
    let rbd = store();
    let src = create(&rbd, "migsrc");
    let src_id = src.id().to_string();
    drop(src);
    let opts = rbdm_migration::PrepareOptions::default();
    rbdm_migration::prepare(&rbd, &spec("migsrc"), &spec("migdst"), &opts).unwrap();
    let pool = rbd.store().pool_id("rbd").unwrap();
    let dst = rbd.open(&spec("migdst"), true).unwrap();

    let mut want = MigrationSpec::decode(&golden_record("migdst")).unwrap();
    want.pool_id = pool;
    want.image_id = src_id.clone();
    let (got, own) = header_of(&rbd, "migdst");
    assert_eq!(got, want.encode(), "destination");
    assert_eq!(own, None);

    let src = rbd
        .open_quiet(&spec("migsrc").pool_spec(), None, Some(&src_id), None)
        .unwrap();
    let got = src.header().unwrap().migration.clone().unwrap();
    let mut want = MigrationSpec::decode(&got).unwrap();
    assert_eq!(
        (want.image_name.as_str(), want.image_id.as_str()),
        ("migdst", dst.id())
    );
    // Everything but the destination's id and pool is what Pacific wrote.
    let golden_src = golden_source_record();
    want.pool_id = 1;
    want.image_id = MigrationSpec::decode(&golden_src).unwrap().image_id;
    assert_eq!(want.encode(), golden_src, "source");
}

#[test]
fn an_import_writes_what_librbd_writes() {
    let rbd = store();
    let img = create(&rbd, "snapimg");
    let mut src_ids = Vec::new();
    for s in ["s1", "s2", "forimport"] {
        src_ids.push(img.snap_create(s).unwrap());
    }
    drop(img);
    rbdm_migration::prepare_import(&rbd, IMPORT_SPEC, &spec("migimp"), None).unwrap();
    let dst = rbd.open(&spec("migimp"), true).unwrap();
    let dst_ids: Vec<u64> = dst.snap_list().unwrap().iter().map(|s| s.id).collect();

    let mut want = MigrationSpec::decode(&golden_record("migimp")).unwrap();
    want.snap_seqs = src_ids.into_iter().zip(dst_ids).collect();
    let (got, _) = header_of(&rbd, "migimp");
    assert_eq!(got, want.encode());
}

/// `rbd migration prepare --import-only` made it; rbdm has written nothing beside it.
#[test]
fn a_ceph_made_import_is_shown_by_status() {
    let rbd = store();
    let img = create(&rbd, "snapimg");
    img.snap_create("forimport").unwrap();
    drop(img);
    let dst = create(&rbd, "migimp");
    let raw = golden_record("migimp");
    dst.update_header(|h| {
        h.migration = Some(raw.clone());
        Ok(())
    })
    .unwrap();
    drop(dst);
    let st = rbdm_migration::status(&rbd, &spec("migimp"))
        .unwrap()
        .unwrap();
    assert!(st.import_only);
    assert_eq!(st.state, "prepared");
    assert!(
        st.source.contains(r#""snap_name":"forimport""#),
        "{}",
        st.source
    );
    let rec = rbd
        .open(&spec("migimp"), true)
        .unwrap()
        .migration_record()
        .unwrap()
        .unwrap();
    assert_eq!((rec.copied_upto, rec.source_identity.as_str()), (0, ""));
}

#[test]
fn pacific_records_of_every_state_decode_and_encode_byte_for_byte() {
    for (moment, id, raw) in states() {
        let rec = MigrationRecord::decode(&raw, None).unwrap();
        assert_eq!(rec.encode(), raw, "{moment} {id}");
        assert_eq!(rec.state.name(), moment, "{id}");
        match id.as_str() {
            "10113c315f02" => assert_eq!(rec.role, MigrationRole::Source),
            "10193bdca68e" => assert_eq!(rec.snap_seqs, vec![(4, 5)]),
            _ => {
                assert_eq!(rec.snap_seqs, vec![(7, 9), (8, 10)]);
                assert_eq!(rec.point_of(Some(10)), Some(1));
            }
        }
    }
}

/// The same steps as the dump's: both records at `executed` are Pacific's, ids put in (librbd
/// keeps the state in both, and a Ceph client reads an image-to-image migration's from the
/// source's); a commit then leaves neither key.
#[test]
fn a_same_store_execute_ends_where_librbd_ends() {
    let rbd = store();
    let img = create(&rbd, "msrc");
    let (src_id, snap) = (img.id().to_string(), img.snap_create("a").unwrap());
    drop(img);
    let opts = rbdm_migration::PrepareOptions::default();
    rbdm_migration::prepare(&rbd, &spec("msrc"), &spec("mdst"), &opts).unwrap();
    let exec = rbdm_migration::ExecuteOptions {
        concurrency: 1,
        bandwidth_limit: None,
    };
    rbdm_migration::execute(&rbd, &spec("mdst"), &exec, &|_, _| {}).unwrap();
    let pool = rbd.store().pool_id("rbd").unwrap();
    let dst = rbd.open(&spec("mdst"), true).unwrap();
    let dst_snap = dst.snap_list().unwrap()[0].id;
    let src = rbd
        .open_quiet(&spec("msrc").pool_spec(), None, Some(&src_id), None)
        .unwrap();
    let got = |img: &Image| img.header().unwrap().migration.clone().unwrap();
    let mut compared = 0;
    for (moment, id, raw) in states() {
        let mut want = MigrationSpec::decode(&raw).unwrap();
        want.pool_id = pool;
        let (img, peer) = match (moment.as_str(), id.as_str()) {
            ("executed", "10113c315f02") => (&src, dst.id()),
            ("executed", "10193bdca68e") => (&dst, src_id.as_str()),
            _ => continue,
        };
        want.image_id = peer.to_string();
        if !want.snap_seqs.is_empty() {
            want.snap_seqs = vec![(snap, dst_snap)];
        }
        assert_eq!(got(img), want.encode(), "{id}");
        compared += 1;
    }
    assert_eq!(compared, 2);
    drop((src, dst));
    rbdm_migration::commit(&rbd, &spec("mdst"), false).unwrap();
    let h = rbd.open(&spec("mdst"), true).unwrap().header().unwrap();
    assert!(h.migration.is_none() && h.rbdm_migration.is_none());
}
