//! The pool-level records rbdm writes (`rbd_directory`, `rbd_id.<name>`, `rbd_trash`,
//! `rbd_namespace`, a namespace's directory `state`, `rbd_info`) are the bytes a Pacific
//! cluster holds for the same images (golden dump, ids and times normalised), and the raw or
//! rbdm-v1 records an older rbdm wrote are refused by name, never misread.

use std::path::Path;
use std::sync::Arc;

use rbdm_cls::directory::encode_string;
use rbdm_cls::golden::{self, GoldenData, GoldenObject};
use rbdm_cls::trash::{TrashImageSpec, TrashSource, TrashState};
use rbdm_image::{CreateOptions, Error, ImageSpec, PoolSpec, Rbd};
use rbdm_store::{Locator, StoreRef, WriteOp, HEAD};

fn golden_objects() -> Vec<GoldenObject> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../cls/tests/golden/pacific-16.2.15/rbd.txt");
    golden::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn golden_object<'a>(objs: &'a [GoldenObject], ns: &str, name: &str) -> &'a GoldenObject {
    objs.iter()
        .find(|o| o.namespace == ns && o.name == name)
        .unwrap_or_else(|| panic!("golden has no {ns}/{name}"))
}

fn golden_data(o: &GoldenObject) -> Vec<u8> {
    match &o.data {
        GoldenData::Bytes(b) => b.clone(),
        GoldenData::Sha256 { .. } => panic!("{} is dumped as a digest", o.name),
    }
}

/// Ceph's image id in a golden record replaced by ours (both are 12 hex digits).
fn with_id(bytes: &[u8], golden_id: &str, id: &str) -> Vec<u8> {
    assert_eq!(golden_id.len(), id.len());
    let mut out = bytes.to_vec();
    let g = golden_id.as_bytes();
    for i in 0..out.len().saturating_sub(g.len() - 1) {
        if &out[i..i + g.len()] == g {
            out[i..i + g.len()].copy_from_slice(id.as_bytes());
        }
    }
    out
}

struct Pool {
    rbd: Rbd,
    store: StoreRef,
}

impl Pool {
    fn new() -> Pool {
        let store: StoreRef = Arc::new(rbdm_store::mem::MemStore::new());
        let rbd = Rbd::new(store.clone());
        Pool { rbd, store }
    }

    fn loc(&self, ns: &str, name: &str) -> Locator {
        Locator::new(self.store.pool_id("rbd").unwrap(), ns, name)
    }

    fn omap(&self, ns: &str, name: &str) -> Vec<(String, Vec<u8>)> {
        let got = self.store.omap_get(&self.loc(ns, name), "", "", 1000);
        got.unwrap()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("rbdm_"))
            .collect()
    }

    fn data(&self, ns: &str, name: &str) -> Vec<u8> {
        self.store
            .read(&self.loc(ns, name), HEAD, 0, 1 << 20)
            .unwrap()
    }

    fn create(&self, ns: &str, name: &str) -> String {
        let spec = PoolSpec::new("rbd", ns);
        self.rbd
            .create(&spec, name, &CreateOptions::with_size(1 << 20))
            .unwrap();
        let img = self
            .rbd
            .open(
                &ImageSpec::parse(&format!("rbd/{ns}/{name}").replace("//", "/"), "rbd").unwrap(),
                true,
            )
            .unwrap();
        img.id().to_string()
    }

    fn set(&self, ns: &str, object: &str, key: &str, value: &[u8]) {
        let op = WriteOp::new().omap_set([(key.to_string(), value.to_vec())]);
        self.store
            .operate(&self.loc(ns, object), &op, &Default::default())
            .unwrap();
    }
}

#[test]
fn namespace_directory_and_id_object_are_cephs_bytes() {
    let objs = golden_objects();
    let p = Pool::new();
    p.rbd.pool_init("rbd").unwrap();
    p.rbd.namespace_create("rbd", "ns1").unwrap();
    let id = p.create("ns1", "nsimg");
    let gid = "103bc9ebfadc";
    let gdir = golden_object(&objs, "ns1", "rbd_directory");
    let want: Vec<(String, Vec<u8>)> = gdir
        .omap
        .iter()
        .map(|(k, v)| (k.replace(gid, &id), with_id(v, gid, &id)))
        .collect();
    assert_eq!(p.omap("ns1", "rbd_directory"), want, "ns1/rbd_directory");
    let gidobj = golden_data(golden_object(&objs, "ns1", "rbd_id.nsimg"));
    assert_eq!(p.data("ns1", "rbd_id.nsimg"), with_id(&gidobj, gid, &id));
    assert_eq!(
        p.omap("", "rbd_namespace"),
        golden_object(&objs, "", "rbd_namespace").omap
    );
    assert_eq!(
        p.data("", "rbd_info"),
        golden_data(golden_object(&objs, "", "rbd_info"))
    );
}

#[test]
fn root_directory_and_trash_entry_are_cephs_bytes() {
    let objs = golden_objects();
    let p = Pool::new();
    let id = p.create("", "plain");
    let gid = "101b3d02296f";
    let gdir = golden_object(&objs, "", "rbd_directory");
    for key in ["name_plain".to_string(), format!("id_{gid}")] {
        let want = gdir.omap.iter().find(|(k, _)| *k == key).unwrap();
        let ours = p.omap("", "rbd_directory");
        let got = ours.iter().find(|(k, _)| *k == key.replace(gid, &id));
        assert_eq!(
            got.map(|(_, v)| v.clone()),
            Some(with_id(&want.1, gid, &id)),
            "{key}"
        );
    }
    // The root directory has no state key: Ceph's `pool init` writes none.
    assert!(p
        .omap("", "rbd_directory")
        .iter()
        .all(|(k, _)| k != "state"));
    let tid = p.create("", "trashed");
    p.rbd
        .trash_move(&ImageSpec::parse("trashed", "rbd").unwrap(), 0)
        .unwrap();
    let gtrash = golden_object(&objs, "", "rbd_trash");
    let (_, gbytes) = gtrash
        .omap
        .iter()
        .find(|(k, _)| k == "id_1035246cf194")
        .unwrap();
    let ours = p.omap("", "rbd_trash");
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].0, format!("id_{tid}"));
    let mut spec = TrashImageSpec::decode(&ours[0].1).unwrap();
    assert_eq!(
        (spec.source, spec.name.as_str(), spec.state),
        (TrashSource::User, "trashed", TrashState::Normal)
    );
    assert_eq!(spec.deletion_time, spec.deferment_end_time);
    // With Ceph's times, the same bytes.
    let g = TrashImageSpec::decode(gbytes).unwrap();
    spec.deletion_time = g.deletion_time;
    spec.deferment_end_time = g.deferment_end_time;
    assert_eq!(spec.encode(), *gbytes);
    assert_eq!(
        p.rbd.trash_list(&PoolSpec::new("rbd", ""), false).unwrap()[0].source,
        TrashSource::User
    );
}

#[test]
fn rename_moves_the_id_object_and_both_entries() {
    let p = Pool::new();
    let id = p.create("", "a");
    let spec = PoolSpec::new("rbd", "");
    p.rbd.rename(&spec, "a", "b").unwrap();
    assert_eq!(p.data("", "rbd_id.b"), encode_string(&id));
    assert!(p.store.stat(&p.loc("", "rbd_id.a"), HEAD).is_err());
    assert_eq!(
        p.omap("", "rbd_directory"),
        vec![
            (format!("id_{id}"), encode_string("b")),
            ("name_b".into(), encode_string(&id)),
        ]
    );
    let other = p.create("", "c");
    let taken = p.rbd.rename(&spec, "c", "b").unwrap_err();
    assert!(matches!(taken, Error::Exists(_)), "{taken}");
    assert_eq!(
        p.data("", "rbd_id.b"),
        encode_string(&id),
        "b's id object stays"
    );
    assert_eq!(p.data("", "rbd_id.c"), encode_string(&other));
}

#[test]
fn an_id_object_no_name_owns_is_taken_over_by_create() {
    // What a rename killed after its first step leaves.
    let p = Pool::new();
    let op = WriteOp::new().write_full(&encode_string("0123456789ab"));
    p.store
        .operate(&p.loc("", "rbd_id.x"), &op, &Default::default())
        .unwrap();
    let id = p.create("", "x");
    assert_eq!(p.data("", "rbd_id.x"), encode_string(&id));
    let again = p
        .rbd
        .create(
            &PoolSpec::new("rbd", ""),
            "x",
            &CreateOptions::with_size(1 << 20),
        )
        .unwrap_err();
    assert!(matches!(again, Error::Exists(_)), "{again}");
}

fn open_err(p: &Pool, name: &str) -> Error {
    match p.rbd.open(&ImageSpec::parse(name, "rbd").unwrap(), true) {
        Ok(_) => panic!("{name} opened"),
        Err(e) => e,
    }
}

#[test]
fn old_raw_directory_values_are_refused_by_name() {
    let p = Pool::new();
    p.set("", "rbd_directory", "name_old", b"0123456789ab");
    p.set("", "rbd_directory", "id_0123456789ab", b"old");
    let err = open_err(&p, "old");
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("name_old"), "{err}");
    assert!(err.to_string().contains("older"), "{err}");
    let spec = PoolSpec::new("rbd", "");
    let by_id = p.rbd.image_name(&spec, "0123456789ab").unwrap_err();
    assert!(matches!(by_id, Error::Unsupported(_)), "{by_id}");
    // A Ceph value that is merely damaged is corruption, not an old store.
    p.set("", "rbd_directory", "name_bad", b"\x0c\0\0\0short");
    let bad = open_err(&p, "bad");
    assert!(matches!(bad, Error::Corrupt(_)), "{bad}");
}

#[test]
fn old_trash_entries_are_refused_by_name() {
    let p = Pool::new();
    // rbdm's v1: {name, source string, u64 seconds, u64 seconds}
    let mut old = vec![1u8, 1, 0, 0, 0, 0];
    for s in ["t", "USER"] {
        old.extend_from_slice(&(s.len() as u32).to_le_bytes());
        old.extend_from_slice(s.as_bytes());
    }
    old.extend_from_slice(&1_700_000_000u64.to_le_bytes());
    old.extend_from_slice(&1_700_000_000u64.to_le_bytes());
    let len = (old.len() - 6) as u32;
    old[2..6].copy_from_slice(&len.to_le_bytes());
    p.set("", "rbd_trash", "id_0123456789ab", &old);
    let err = p
        .rbd
        .trash_list(&PoolSpec::new("rbd", ""), true)
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    assert!(
        err.to_string().contains("trash entry 0123456789ab"),
        "{err}"
    );
}

#[test]
fn namespace_remove_takes_its_directory() {
    let p = Pool::new();
    p.rbd.namespace_create("rbd", "ns").unwrap();
    assert_eq!(
        p.omap("ns", "rbd_directory"),
        vec![("state".to_string(), vec![0])]
    );
    p.rbd.namespace_remove("rbd", "ns").unwrap();
    assert!(p.store.stat(&p.loc("ns", "rbd_directory"), HEAD).is_err());
    assert!(p.rbd.namespace_list("rbd").unwrap().is_empty());
}

#[test]
fn a_trash_removal_marks_the_entry_removing_first() {
    let p = Pool::new();
    let spec = PoolSpec::new("rbd", "");
    let id = p.create("", "t");
    let img = p
        .rbd
        .open(&ImageSpec::parse("t", "rbd").unwrap(), false)
        .unwrap();
    img.snap_create("s").unwrap();
    drop(img);
    p.rbd
        .trash_move(&ImageSpec::parse("t", "rbd").unwrap(), 0)
        .unwrap();
    let state = || {
        let entry = p.omap("", "rbd_trash");
        TrashImageSpec::decode(&entry[0].1).unwrap().state
    };
    // Refused (a snapshot): the entry stays as it was, and may be restored.
    let refused = p
        .rbd
        .trash_remove(&spec, &id, true, &mut |_, _| {})
        .unwrap_err();
    assert!(matches!(refused, Error::NotEmpty(_)), "{refused}");
    assert_eq!(state(), TrashState::Normal);
    // A removal cut short after marking the entry: restore refuses it, `trash rm` finishes.
    let entry = p.omap("", "rbd_trash").remove(0);
    let mut marked = TrashImageSpec::decode(&entry.1).unwrap();
    marked.state = TrashState::Removing;
    p.set("", "rbd_trash", &entry.0, &marked.encode());
    let busy = p.rbd.trash_restore(&spec, &id, None).unwrap_err();
    assert!(matches!(busy, Error::Busy(_)), "{busy}");
    let listed = p.rbd.trash_list(&spec, false).unwrap();
    assert_eq!(listed[0].state, TrashState::Removing);
    let img = p.rbd.open_by_id(&spec, &id, None, false).unwrap();
    img.snap_remove("s").unwrap();
    drop(img);
    p.rbd
        .trash_remove(&spec, &id, false, &mut |_, _| {})
        .unwrap();
    assert!(p.omap("", "rbd_trash").is_empty());
}

#[test]
fn a_marked_entry_whose_removal_is_refused_is_restorable_again() {
    let p = Pool::new();
    let spec = PoolSpec::new("rbd", "");
    let id = p.create("", "t");
    let img = p
        .rbd
        .open(&ImageSpec::parse("t", "rbd").unwrap(), false)
        .unwrap();
    img.snap_create("s").unwrap();
    drop(img);
    // Not expired for an hour, and marked as a killed `trash rm` leaves it.
    p.rbd
        .trash_move(&ImageSpec::parse("t", "rbd").unwrap(), 3600)
        .unwrap();
    let entry = p.omap("", "rbd_trash").remove(0);
    let mut marked = TrashImageSpec::decode(&entry.1).unwrap();
    marked.state = TrashState::Removing;
    p.set("", "rbd_trash", &entry.0, &marked.encode());
    // The started removal is finished without --force, and refused by the snapshot...
    let refused = p
        .rbd
        .trash_remove(&spec, &id, false, &mut |_, _| {})
        .unwrap_err();
    assert!(matches!(refused, Error::NotEmpty(_)), "{refused}");
    // ...which leaves the entry as librbd does: normal, so it can be restored.
    let listed = p.rbd.trash_list(&spec, false).unwrap();
    assert_eq!(listed[0].state, TrashState::Normal);
    p.rbd.trash_restore(&spec, &id, None).unwrap();
    p.rbd
        .open(&ImageSpec::parse("t", "rbd").unwrap(), true)
        .unwrap();
}
