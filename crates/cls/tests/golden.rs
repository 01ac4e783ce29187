//! Every record a Pacific 16.2.15 cluster wrote (golden/capture.sh) decodes, means what `rbd`
//! said it means, and re-encodes to the same bytes; the golden records are also the fuzz seeds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rbdm_cls::golden::{self, GoldenData, GoldenObject};
use rbdm_cls::header::{features, op_features};
use rbdm_cls::lock::LockType;
use rbdm_cls::migration::{MigrationHeaderType, MigrationState};
use rbdm_cls::object_map::EXISTS;
use rbdm_cls::snap::{ProtectionStatus, SnapshotNamespace};
use rbdm_cls::trash::{TrashSource, TrashState};
use rbdm_cls::{classify, Place, Record, RecordKind};

const DUMPS: &[&str] = &["rbd.txt", "rbddata.txt"];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/pacific-16.2.15")
}

fn objects(file: &str) -> Vec<GoldenObject> {
    let text = std::fs::read_to_string(golden_dir().join(file)).unwrap();
    golden::parse(&text).unwrap()
}

/// (object, place label, kind, bytes) of every record of every dump.
fn records() -> Vec<(String, String, RecordKind, Vec<u8>)> {
    let mut out = Vec::new();
    for file in DUMPS {
        for obj in objects(file) {
            let who = format!("{file}:{}/{}", obj.namespace, obj.name);
            if let GoldenData::Bytes(b) = &obj.data {
                out.push((
                    who.clone(),
                    "data".into(),
                    classify(&obj.name, Place::Data),
                    b.clone(),
                ));
            }
            for (k, v) in &obj.xattrs {
                let kind = classify(&obj.name, Place::Xattr(k));
                out.push((who.clone(), format!("xattr {k}"), kind, v.clone()));
            }
            for (k, v) in &obj.omap {
                let kind = classify(&obj.name, Place::Omap(k));
                out.push((who.clone(), format!("omap {k}"), kind, v.clone()));
            }
        }
    }
    out
}

#[test]
fn every_golden_record_roundtrips_byte_identical() {
    let mut per_kind: BTreeMap<String, usize> = BTreeMap::new();
    for (who, place, kind, bytes) in records() {
        let rec = Record::decode(kind, &bytes)
            .unwrap_or_else(|e| panic!("{who} {place} as {kind:?}: {e}"));
        assert_eq!(rec.encode(), bytes, "{who} {place} re-encodes differently");
        *per_kind.entry(format!("{kind:?}")).or_default() += 1;
    }
    // the dump holds every structured kind a Pacific image set has (ChildrenV1 is clone v1 only)
    for kind in RecordKind::ALL {
        if kind != RecordKind::ChildrenV1 {
            assert!(
                per_kind.contains_key(&format!("{kind:?}")),
                "no {kind:?} in {per_kind:?}"
            );
        }
    }
}

#[test]
fn raw_records_are_only_those_without_structure() {
    for (who, place, kind, _) in records() {
        if kind == RecordKind::Raw {
            let ok = place.starts_with("omap metadata_")
                || (place == "data"
                    && (who.contains("/rbd_data.")
                        || who.ends_with("/rbd_info")
                        || who.contains("/rbd_header.")
                        || who.ends_with("/rbd_directory")
                        || who.ends_with("/rbd_trash")
                        || who.ends_with("/rbd_namespace")));
            assert!(ok, "{who} {place} is not classified");
        }
    }
}

/// The decoded header of the image `name` in namespace `ns` of pool `rbd`.
struct Image {
    omap: BTreeMap<String, Record>,
    xattrs: BTreeMap<String, Record>,
    id: String,
}

fn image(ns: &str, name: &str) -> Image {
    let objs = objects("rbd.txt");
    let find = |n: &str| {
        objs.iter()
            .find(|o| o.namespace == ns && o.name == n)
            .unwrap()
    };
    let dir = find("rbd_directory");
    let (_, id) = dir
        .omap
        .iter()
        .find(|(k, _)| *k == format!("name_{name}"))
        .unwrap();
    let Record::Str(id) = Record::decode(RecordKind::Str, id).unwrap() else {
        unreachable!()
    };
    let header = find(&format!("rbd_header.{id}"));
    let decode_all = |kv: &[(String, Vec<u8>)], omap: bool| {
        kv.iter()
            .map(|(k, v)| {
                let place = if omap {
                    Place::Omap(k)
                } else {
                    Place::Xattr(k)
                };
                let kind = classify(&header.name, place);
                (k.clone(), Record::decode(kind, v).unwrap())
            })
            .collect()
    };
    Image {
        omap: decode_all(&header.omap, true),
        xattrs: decode_all(&header.xattrs, false),
        id,
    }
}

fn u64_of(img: &Image, key: &str) -> u64 {
    match img.omap[key] {
        Record::U64(v) => v,
        ref other => panic!("{key}: {other:?}"),
    }
}

#[test]
fn plain_and_striped_headers_say_what_rbd_info_said() {
    let plain = image("", "plain");
    assert_eq!(u64_of(&plain, "size"), 1536 << 10);
    assert_eq!(plain.omap["order"], Record::U8(22));
    assert_eq!(
        plain.omap["object_prefix"],
        Record::Str(format!("rbd_data.{}", plain.id))
    );
    assert_eq!(
        plain.omap["metadata_owner"],
        Record::Raw(b"rbdm-golden".to_vec())
    );
    assert!(
        !plain.omap.contains_key("stripe_unit"),
        "no striping keys without STRIPINGV2"
    );
    let Record::Lock(lock) = &plain.xattrs["lock.rbd_lock"] else {
        panic!()
    };
    assert_eq!(lock.lock_type, LockType::Shared);
    assert_eq!(lock.tag, "golden-tag");
    assert_eq!(lock.lockers[0].cookie, "golden-cookie");

    let striped = image("", "striped");
    assert_eq!(u64_of(&striped, "stripe_unit"), 64 << 10);
    assert_eq!(u64_of(&striped, "stripe_count"), 4);
    assert_ne!(u64_of(&striped, "features") & features::STRIPINGV2, 0);
}

#[test]
fn snapshots_and_clone_v2_bookkeeping() {
    let parent = image("", "snapimg");
    let snaps: Vec<_> = parent
        .omap
        .values()
        .filter_map(|r| match r {
            Record::Snapshot(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    let names: Vec<_> = snaps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["s1", "s2", "forimport"]);
    let s2 = &snaps[1];
    assert_eq!(s2.protection_status, ProtectionStatus::Protected);
    assert_eq!(s2.child_count, 1);
    assert_eq!(s2.namespace, SnapshotNamespace::User);
    assert_eq!(u64_of(&parent, "op_features"), op_features::CLONE_PARENT);
    let Record::SnapChildren(children) = &parent.omap[&format!("snap_children_{:016x}", s2.id)]
    else {
        panic!()
    };

    let child = image("", "child");
    assert_eq!(children[0].image_id, child.id);
    assert_eq!(u64_of(&child, "op_features"), op_features::CLONE_CHILD);
    assert_ne!(u64_of(&child, "features") & features::OPERATIONS, 0);
    let Record::Parent(p) = &child.omap["parent"] else {
        panic!()
    };
    assert_eq!(
        (p.pool_id, p.image_id.as_str(), p.snap_id),
        (1, parent.id.as_str(), s2.id)
    );
    assert_eq!(p.head_overlap, Some(512 << 10));
}

#[test]
fn trash_migration_data_pool_and_exclusive_lock() {
    let objs = objects("rbd.txt");
    let trash = objs.iter().find(|o| o.name == "rbd_trash").unwrap();
    let specs: Vec<_> = trash
        .omap
        .iter()
        .map(
            |(_, v)| match Record::decode(RecordKind::Trash, v).unwrap() {
                Record::Trash(t) => t,
                _ => unreachable!(),
            },
        )
        .collect();
    assert!(specs
        .iter()
        .any(|t| t.name == "trashed" && t.source == TrashSource::User));
    assert!(specs
        .iter()
        .any(|t| t.name == "migsrc" && t.source == TrashSource::Migration));
    assert!(specs.iter().all(|t| t.state == TrashState::Normal));

    let dst = image("", "migdst");
    let Record::Migration(m) = &dst.omap["migration"] else {
        panic!()
    };
    assert_eq!(m.header_type, MigrationHeaderType::Destination);
    assert_eq!(
        (m.image_name.as_str(), m.state),
        ("migsrc", MigrationState::Prepared)
    );
    let imp = image("", "migimp");
    let Record::Migration(m) = &imp.omap["migration"] else {
        panic!()
    };
    assert_eq!(m.pool_id, -1);
    assert!(
        m.source_spec.contains("\"type\":\"native\""),
        "{}",
        m.source_spec
    );
    assert_eq!(m.snap_seqs.len(), 3);

    let dp = image("", "dpimg");
    assert_eq!(dp.omap["data_pool_id"], Record::I64(2));
    assert_ne!(u64_of(&dp, "features") & features::DATA_POOL, 0);

    let locked = image("", "locked");
    let Record::Lock(lock) = &locked.xattrs["lock.rbd_lock"] else {
        panic!()
    };
    assert_eq!(
        (lock.lock_type, lock.tag.as_str()),
        (LockType::Exclusive, "internal")
    );
    assert!(lock.lockers[0].cookie.starts_with("auto "));
    assert_eq!(lock.lockers[0].name.kind, 8, "a client");
}

#[test]
fn object_maps_decode_with_valid_crcs() {
    let plain = image("", "plain");
    let objs = objects("rbd.txt");
    let om = objs
        .iter()
        .find(|o| o.name == format!("rbd_object_map.{}", plain.id))
        .unwrap();
    let GoldenData::Bytes(b) = &om.data else {
        panic!()
    };
    let Record::ObjectMap(map) = Record::decode(RecordKind::ObjectMap, b).unwrap() else {
        panic!()
    };
    assert_eq!(map.len(), 1);
    assert_eq!(map.get(0), Some(EXISTS));
    let mut bad = b.clone();
    bad[18] ^= 0x80;
    assert!(Record::decode(RecordKind::ObjectMap, &bad).is_err());
}

#[test]
fn namespace_image_lives_in_its_own_directory() {
    let img = image("ns1", "nsimg");
    assert_eq!(u64_of(&img, "size"), 256 << 10);
    let objs = objects("rbd.txt");
    let nsdir = objs.iter().find(|o| o.name == "rbd_namespace").unwrap();
    assert_eq!(nsdir.omap, [("name_ns1".to_string(), vec![])]);
}

/// The fuzz seeds are the golden records: one file per distinct (kind, bytes), the first
/// byte selecting the kind as the fuzz target reads it. `RBDM_WRITE_FUZZ_SEEDS=1` rewrites
/// them; otherwise the test fails when they are stale.
#[test]
fn fuzz_seeds_are_the_golden_records() {
    let mut seeds: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (_, _, kind, bytes) in records() {
        if kind == RecordKind::Raw && bytes.len() > 64 {
            continue;
        }
        let mut seed = vec![kind.index() as u8];
        seed.extend_from_slice(&bytes);
        let name = format!("{kind:?}-{:08x}", fnv1a(&seed)).to_lowercase();
        seeds.insert(name, seed);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/cls_records");
    if std::env::var_os("RBDM_WRITE_FUZZ_SEEDS").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, seed) in &seeds {
            std::fs::write(dir.join(name), seed).unwrap();
        }
    }
    let mut on_disk = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("run with RBDM_WRITE_FUZZ_SEEDS=1") {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        on_disk.insert(name, std::fs::read(entry.path()).unwrap());
    }
    assert!(
        on_disk == seeds,
        "fuzz/seeds/cls_records is stale: RBDM_WRITE_FUZZ_SEEDS=1"
    );
}

/// A stable file name for a seed (FNV-1a, 32 bits).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}
