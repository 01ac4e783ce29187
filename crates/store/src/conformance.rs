//! The shared conformance suite every backend runs, so that they all mean the same thing.
//!
//! A backend's test file expands [`conformance_tests!`](crate::conformance_tests) with a setup
//! closure. The setup returns a factory and a guard: the factory opens a new handle (a new
//! client) on the same backing each time it is called, which is how lock and watcher checks get
//! a second client; the guard (a temporary directory, say) lives until the test ends.
//!
//! ```ignore
//! mod mem {
//!     rbdm_store::conformance_tests!(|| {
//!         let store = rbdm_store::mem::MemStore::new();
//!         (move || std::sync::Arc::new(store.handle()) as rbdm_store::StoreRef, ())
//!     });
//! }
//! ```
//!
//! The checks are plain functions taking the factory, so a backend can also call one directly.
//! They panic on failure: this module is test code that ships in the library so that every
//! backend crate can run it.

use std::collections::BTreeMap;

mod missing;
pub use missing::missing_things_say_what;
use missing::{no_key, no_locker, no_object, no_watch};

use crate::{
    Error, Locator, ObjectStore, PoolId, SnapContext, SnapId, StoreRef, WriteOp, HEAD,
    MAX_OBJECT_SIZE,
};

/// Opens a new handle on the backing under test.
pub type Open<'a> = &'a dyn Fn() -> StoreRef;

/// Expands to one `#[test]` per conformance check. The argument is an expression of type
/// `Fn() -> (F, G)` where `F: Fn() -> StoreRef` opens a handle on one backing and `G` is kept
/// alive for the test. Expand it once per module.
#[macro_export]
macro_rules! conformance_tests {
    ($setup:expr) => {
        $crate::conformance_tests!(@each $setup;
            pools, namespaces_isolate, list_objects_sorted_and_filtered, write_and_read,
            write_full_zero_truncate_remove, stat_version_bumps, read_into_matches_read, sparse_read_reports_data_only,
            create_exclusive, compound_op_is_atomic, xattrs, omap, snapshots_read_back,
            snapshots_and_existence, list_snaps_overlap, snap_remove_frees_clones,
            metadata_ops_do_not_clone, locks, watchers, flush_and_handles_share_data, handles_see_each_others_changes,
            bad_input_is_invalid, threads_guarded_counter, missing_things_say_what);
    };
    (@each $setup:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                let (open, _guard) = ($setup)();
                $crate::conformance::$check(&open);
            }
        )*
    };
}

const NOSNAP: SnapContext = SnapContext {
    seq: 0,
    snaps: Vec::new(),
};
const K64: u64 = 64 * 1024;

fn rbd(s: &StoreRef) -> PoolId {
    s.pool_id("rbd").expect("a new store has pool rbd")
}

fn loc(pool: PoolId, name: &str) -> Locator {
    Locator::new(pool, "", name)
}

fn put(s: &StoreRef, l: &Locator, op: WriteOp) {
    s.operate(l, &op, &NOSNAP)
        .unwrap_or_else(|e| panic!("operate on {l}: {e}"));
}

fn put_at(s: &StoreRef, l: &Locator, op: WriteOp, snapc: &SnapContext) {
    s.operate(l, &op, snapc)
        .unwrap_or_else(|e| panic!("operate on {l} with {snapc:?}: {e}"));
}

fn read_all(s: &StoreRef, l: &Locator, snap: SnapId) -> Vec<u8> {
    s.read(l, snap, 0, MAX_OBJECT_SIZE)
        .unwrap_or_else(|e| panic!("read {l}@{snap}: {e}"))
}

fn fill(byte: u8, len: u64) -> Vec<u8> {
    vec![byte; len as usize]
}

fn cat(parts: &[(u8, u64)]) -> Vec<u8> {
    parts.iter().flat_map(|&(b, n)| fill(b, n)).collect()
}

/// A snap context holding `snaps` (any order).
fn ctx(snaps: &[SnapId]) -> SnapContext {
    let mut snaps = snaps.to_vec();
    snaps.sort_unstable_by(|a, b| b.cmp(a));
    SnapContext {
        seq: snaps.first().copied().unwrap_or(0),
        snaps,
    }
}

/// Merges touching ranges so backends that split ranges differently compare equal.
fn normalize(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(o, l) in ranges.iter().filter(|r| r.1 > 0) {
        match out.last_mut() {
            Some(last) if last.0 + last.1 == o => last.1 += l,
            _ => out.push((o, l)),
        }
    }
    out
}

fn assert_err<T: std::fmt::Debug>(r: crate::Result<T>, want: fn(&Error) -> bool, what: &str) {
    match r {
        Err(e) if want(&e) => {}
        other => panic!("{what}: expected a specific error, got {other:?}"),
    }
}

pub fn pools(open: Open) {
    let s = open();
    let pools = s.list_pools().expect("list pools");
    assert!(
        pools.iter().any(|(_, n)| n == "rbd"),
        "pool rbd exists at start: {pools:?}"
    );
    let a = s.create_pool("alpha").expect("create alpha");
    let b = s.create_pool("beta").expect("create beta");
    assert_ne!(a, b);
    assert_err(
        s.create_pool("alpha"),
        |e| matches!(e, Error::Exists(_)),
        "duplicate pool",
    );
    assert_eq!(s.pool_id("beta").expect("id"), b);
    assert_eq!(s.pool_name(a).expect("name"), "alpha");
    let names: Vec<String> = s
        .list_pools()
        .expect("list")
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert!(names.contains(&"alpha".to_string()) && names.contains(&"beta".to_string()));
    put(&s, &loc(a, "o"), WriteOp::new().write(0, b"data"));
    s.remove_pool("alpha").expect("remove alpha");
    assert_err(
        s.pool_id("alpha"),
        |e| matches!(e, Error::NoPool(_)),
        "removed pool id",
    );
    assert_err(
        s.pool_name(a),
        |e| matches!(e, Error::NoPool(_)),
        "removed pool name",
    );
    assert_err(
        s.remove_pool("alpha"),
        |e| matches!(e, Error::NoPool(_)),
        "remove twice",
    );
    assert_err(
        s.list_objects(a, None),
        |e| matches!(e, Error::NoPool(_)),
        "list removed pool",
    );
    assert_err(
        s.read(&loc(a, "o"), HEAD, 0, 4),
        |e| e.errno() == libc::ENOENT,
        "read in removed pool",
    );
    assert_err(
        s.operate(&loc(a, "o"), &WriteOp::new().create(), &NOSNAP),
        |e| matches!(e, Error::NoPool(_)),
        "write in removed pool",
    );
    let again = s.create_pool("alpha").expect("recreate");
    assert!(
        s.list_objects(again, None).expect("list").is_empty(),
        "a recreated pool starts empty"
    );
    let s2 = open();
    assert_eq!(s2.pool_id("beta").expect("second handle sees pool"), b);
}

pub fn namespaces_isolate(open: Open) {
    let s = open();
    let p = rbd(&s);
    let (x, y) = (Locator::new(p, "x", "obj"), Locator::new(p, "y", "obj"));
    put(
        &s,
        &x,
        WriteOp::new()
            .write_full(b"in x")
            .omap_set([("k", b"x".to_vec())]),
    );
    assert_err(
        s.read(&y, HEAD, 0, 10),
        no_object,
        "same name in another namespace",
    );
    put(&s, &y, WriteOp::new().write_full(b"in y!"));
    assert_eq!(read_all(&s, &x, HEAD), b"in x");
    assert_eq!(read_all(&s, &y, HEAD), b"in y!");
    assert!(s.omap_get_keys(&y, &["k"]).expect("omap").is_empty());
    put(&s, &y, WriteOp::new().remove());
    assert_eq!(read_all(&s, &x, HEAD), b"in x");
}

pub fn list_objects_sorted_and_filtered(open: Open) {
    let s = open();
    let p = rbd(&s);
    let names = [
        ("", "b"),
        ("", "a"),
        ("ns2", "a"),
        ("ns1", "z"),
        ("", "c"),
        ("ns1", "m"),
    ];
    for (ns, name) in names {
        put(&s, &Locator::new(p, ns, name), WriteOp::new().create());
    }
    put(&s, &loc(p, "c"), WriteOp::new().remove());
    let all = s.list_objects(p, None).expect("list");
    let got: Vec<(&str, &str)> = all
        .iter()
        .map(|l| (l.namespace.as_str(), l.name.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("", "a"),
            ("", "b"),
            ("ns1", "m"),
            ("ns1", "z"),
            ("ns2", "a")
        ]
    );
    assert!(all.iter().all(|l| l.pool == p));
    let ns1: Vec<String> = s
        .list_objects(p, Some("ns1"))
        .expect("list")
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(ns1, vec!["m", "z"]);
    let default: Vec<String> = s
        .list_objects(p, Some(""))
        .expect("list")
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(default, vec!["a", "b"]);
    assert!(s.list_objects(p, Some("none")).expect("list").is_empty());
}

pub fn write_and_read(open: Open) {
    let s = open();
    let o = loc(rbd(&s), "o");
    assert_err(s.read(&o, HEAD, 0, 1), no_object, "read before create");
    put(&s, &o, WriteOp::new().write(0, b"hello world"));
    assert_eq!(s.read(&o, HEAD, 6, 5).expect("read"), b"world");
    assert_eq!(s.read(&o, HEAD, 6, 100).expect("short read"), b"world");
    assert!(s.read(&o, HEAD, 11, 5).expect("read at end").is_empty());
    assert!(s.read(&o, HEAD, 1000, 5).expect("read past end").is_empty());
    put(&s, &o, WriteOp::new().write(20, b"tail"));
    let want = [&b"hello world"[..], &[0u8; 9], b"tail"].concat();
    assert_eq!(read_all(&s, &o, HEAD), want, "the gap reads as zeros");
    put(&s, &o, WriteOp::new().write(3, b"LO"));
    assert_eq!(s.read(&o, HEAD, 0, 11).expect("read"), b"helLO world");
    // A big write far into the object and a read across it.
    let big: Vec<u8> = (0..3 * K64).map(|i| (i % 251) as u8).collect();
    put(&s, &o, WriteOp::new().write(K64 + 7, &big));
    assert_eq!(s.read(&o, HEAD, K64 + 7, 3 * K64).expect("read big"), big);
    assert_eq!(s.stat(&o, HEAD).expect("stat").size, 4 * K64 + 7);
}

pub fn write_full_zero_truncate_remove(open: Open) {
    let s = open();
    let o = loc(rbd(&s), "o");
    put(&s, &o, WriteOp::new().write(0, &fill(b'a', 100)));
    put(&s, &o, WriteOp::new().write_full(b"short"));
    assert_eq!(
        read_all(&s, &o, HEAD),
        b"short",
        "write_full replaces and shrinks"
    );
    put(&s, &o, WriteOp::new().write_full(&fill(b'b', 50)));
    put(&s, &o, WriteOp::new().zero(10, 10));
    assert_eq!(
        read_all(&s, &o, HEAD),
        cat(&[(b'b', 10), (0, 10), (b'b', 30)])
    );
    put(&s, &o, WriteOp::new().zero(40, 1000));
    assert_eq!(
        s.stat(&o, HEAD).expect("stat").size,
        50,
        "zero does not extend"
    );
    assert_eq!(
        read_all(&s, &o, HEAD),
        cat(&[(b'b', 10), (0, 10), (b'b', 20), (0, 10)])
    );
    put(&s, &o, WriteOp::new().truncate(15));
    assert_eq!(read_all(&s, &o, HEAD), cat(&[(b'b', 10), (0, 5)]));
    put(&s, &o, WriteOp::new().truncate(30));
    assert_eq!(
        read_all(&s, &o, HEAD),
        cat(&[(b'b', 10), (0, 20)]),
        "truncate extends with zeros"
    );
    put(&s, &o, WriteOp::new().remove());
    assert_err(s.read(&o, HEAD, 0, 1), no_object, "read after remove");
    assert_err(s.stat(&o, HEAD), no_object, "stat after remove");
    assert_err(
        s.operate(&o, &WriteOp::new().remove(), &NOSNAP),
        no_object,
        "remove twice",
    );
    put(&s, &o, WriteOp::new().zero(0, 10));
    assert_err(s.stat(&o, HEAD), no_object, "zero does not create");
    put(&s, &o, WriteOp::new().truncate(8));
    assert_eq!(read_all(&s, &o, HEAD), fill(0, 8), "truncate creates");
    put(&s, &o, WriteOp::new().write_full(b""));
    assert_eq!(s.stat(&o, HEAD).expect("stat").size, 0);
    assert!(
        s.list_objects(o.pool, None).expect("list").contains(&o),
        "an empty object exists"
    );
}

pub fn stat_version_bumps(open: Open) {
    let s = open();
    let o = loc(rbd(&s), "o");
    put(&s, &o, WriteOp::new().write(0, b"abc"));
    let v1 = s.stat(&o, HEAD).expect("stat");
    assert_eq!(v1.size, 3);
    assert!(
        v1.mtime > 1_500_000_000,
        "mtime is seconds since the epoch: {}",
        v1.mtime
    );
    put(&s, &o, WriteOp::new().write(5, b"de"));
    let v2 = s.stat(&o, HEAD).expect("stat");
    assert_eq!(v2.size, 7);
    assert!(v2.version > v1.version);
    put(&s, &o, WriteOp::new().set_xattr("x", b"1"));
    let v3 = s.stat(&o, HEAD).expect("stat");
    assert!(
        v3.version > v2.version,
        "metadata writes bump the version too"
    );
    let failed = s.operate(
        &o,
        &WriteOp::new().cmp_xattr("x", Some(b"2")).write(0, b"zzz"),
        &NOSNAP,
    );
    assert!(failed.is_err());
    assert_eq!(
        s.stat(&o, HEAD).expect("stat").version,
        v3.version,
        "a failed op bumps nothing"
    );
    // Another handle sees the same version; a recreated object never goes back.
    assert_eq!(open().stat(&o, HEAD).expect("stat").version, v3.version);
    put(&s, &o, WriteOp::new().remove());
    put(&s, &o, WriteOp::new().create());
    assert!(s.stat(&o, HEAD).expect("stat").version > v3.version);
}

/// `read_into` fills exactly what `read` returns (holes as zeros over whatever the buffer
/// held), leaves the rest of the buffer alone, and fails where `read` fails.
pub fn read_into_matches_read(open: Open) {
    let s = open();
    let p = rbd(&s);
    let (o, late) = (loc(p, "o"), loc(p, "late"));
    let mut small = [0xee_u8; 16];
    assert_err(
        s.read_into(&o, HEAD, 0, &mut small),
        no_object,
        "read_into before create",
    );
    put(
        &s,
        &o,
        WriteOp::new()
            .write(0, &fill(b'a', K64))
            .write(3 * K64, &fill(b'b', 100)),
    );
    let s1 = s.snap_create(p).expect("snap");
    let snapc = ctx(&[s1]);
    put_at(
        &s,
        &o,
        WriteOp::new()
            .write(K64 / 2, &fill(b'c', 2 * K64))
            .truncate(3 * K64 + 50),
        &snapc,
    );
    put_at(&s, &late, WriteOp::new().write(0, b"new"), &snapc);
    let ranges = [
        (0, 4 * K64 + 7),
        (K64 - 3, K64 + 6),
        (K64 + 5, K64),
        (3 * K64 + 40, 100),
        (5 * K64, 10),
        (0, 0),
        (u64::MAX - 1, 8),
    ];
    for snap in [s1, HEAD] {
        for (off, len) in ranges {
            let want = s.read(&o, snap, off, len).expect("read");
            let mut buf = vec![0xee_u8; len as usize];
            let n = s.read_into(&o, snap, off, &mut buf).expect("read_into");
            assert_eq!(
                n,
                want.len(),
                "read_into at {off}+{len}@{snap} reports what read returns"
            );
            assert!(
                buf[..n] == want[..],
                "read_into at {off}+{len}@{snap} holds what read returns"
            );
            assert!(
                buf[n..].iter().all(|b| *b == 0xee),
                "read_into at {off}+{len}@{snap} wrote past the object"
            );
        }
    }
    let mut hole = [0xee_u8; 8];
    assert_eq!(s.read_into(&o, s1, 2 * K64, &mut hole).expect("hole"), 8);
    assert_eq!(hole, [0; 8], "a hole overwrites the buffer with zeros");
    assert_err(
        s.read_into(&late, s1, 0, &mut small),
        no_object,
        "read_into at a snap before creation",
    );
    assert_eq!(
        s.read_into(&late, HEAD, 0, &mut small)
            .expect("late at head"),
        3
    );
    assert_err(
        s.read_into(&loc(p, "never"), HEAD, 0, &mut small),
        no_object,
        "read_into of unknown object",
    );
}

/// Extents are sorted, disjoint, inside the range, hold the bytes `read` returns, cover every
/// non-zero byte, and avoid `holes`. Backends may report data with block granularity, so the
/// checks use 64 KiB-aligned ranges.
fn check_sparse(s: &StoreRef, o: &Locator, snap: SnapId, off: u64, len: u64, holes: &[(u64, u64)]) {
    let ext = s.sparse_read(o, snap, off, len).expect("sparse_read");
    let full = s.read(o, snap, off, len).expect("read");
    let mut covered = vec![false; full.len()];
    let mut last_end = off;
    for (eo, bytes) in &ext {
        assert!(
            *eo >= last_end,
            "extents sorted and disjoint: {:?}",
            ext.iter().map(|e| (e.0, e.1.len())).collect::<Vec<_>>()
        );
        let rel = (eo - off) as usize;
        assert!(rel + bytes.len() <= full.len(), "extent inside the range");
        assert_eq!(
            &full[rel..rel + bytes.len()],
            &bytes[..],
            "extent bytes equal read"
        );
        covered[rel..rel + bytes.len()]
            .iter_mut()
            .for_each(|c| *c = true);
        for &(ho, hl) in holes {
            assert!(
                eo + bytes.len() as u64 <= ho || *eo >= ho + hl,
                "extent at {eo} overlaps hole {ho}+{hl}"
            );
        }
        last_end = eo + bytes.len() as u64;
    }
    for (i, b) in full.iter().enumerate() {
        assert!(
            *b == 0 || covered[i],
            "byte {} holds data but is in no extent",
            off + i as u64
        );
    }
    let map = s.map_extents(o, snap, off, len).expect("map_extents");
    let from_sparse: Vec<(u64, u64)> = ext.iter().map(|(o, d)| (*o, d.len() as u64)).collect();
    assert_eq!(
        normalize(&map),
        normalize(&from_sparse),
        "map_extents agrees with sparse_read"
    );
}

pub fn sparse_read_reports_data_only(open: Open) {
    let s = open();
    let o = loc(rbd(&s), "o");
    put(
        &s,
        &o,
        WriteOp::new()
            .write(0, &fill(b'a', K64))
            .write(2 * K64, &fill(b'b', K64)),
    );
    put(&s, &o, WriteOp::new().truncate(4 * K64));
    let ext = s.sparse_read(&o, HEAD, 0, 4 * K64).expect("sparse_read");
    assert!(!ext.is_empty());
    check_sparse(&s, &o, HEAD, 0, 4 * K64, &[(K64, K64), (3 * K64, K64)]);
    check_sparse(&s, &o, HEAD, K64 / 2, 2 * K64, &[(K64, K64)]);
    put(&s, &o, WriteOp::new().zero(2 * K64, K64));
    check_sparse(&s, &o, HEAD, 0, 4 * K64, &[(K64, 3 * K64)]);
    let after: u64 = s
        .sparse_read(&o, HEAD, 0, 4 * K64)
        .expect("sparse")
        .iter()
        .map(|e| e.1.len() as u64)
        .sum();
    assert!(
        (K64..2 * K64).contains(&after),
        "the zeroed range is a hole now ({after} data bytes)"
    );
    assert!(s
        .sparse_read(&o, HEAD, 5 * K64, K64)
        .expect("past end")
        .is_empty());
    put(&s, &o, WriteOp::new().write_full(b""));
    assert!(s.sparse_read(&o, HEAD, 0, K64).expect("empty").is_empty());
}

pub fn create_exclusive(open: Open) {
    let s = open();
    let o = loc(rbd(&s), "o");
    put(
        &s,
        &o,
        WriteOp::new()
            .create_exclusive()
            .omap_set([("owner", b"me".to_vec())]),
    );
    let again = s.operate(
        &o,
        &WriteOp::new()
            .create_exclusive()
            .omap_set([("owner", b"you".to_vec())]),
        &NOSNAP,
    );
    assert_err(
        again,
        |e| matches!(e, Error::Exists(_)),
        "second create_exclusive",
    );
    let from_other = open().operate(&o, &WriteOp::new().create_exclusive(), &NOSNAP);
    assert_err(
        from_other,
        |e| e.errno() == libc::EEXIST,
        "create_exclusive from another client",
    );
    assert_eq!(
        s.omap_get_keys(&o, &["owner"])
            .expect("omap")
            .get("owner")
            .map(Vec::as_slice),
        Some(&b"me"[..])
    );
    put(&s, &o, WriteOp::new().create());
    assert_eq!(
        s.stat(&o, HEAD).expect("stat").size,
        0,
        "create on an existing object changes nothing"
    );
}

pub fn compound_op_is_atomic(open: Open) {
    let s = open();
    let o = loc(rbd(&s), "o");
    put(
        &s,
        &o,
        WriteOp::new()
            .write_full(b"hello")
            .set_xattr("x", b"1")
            .omap_set([("k", b"1".to_vec())]),
    );
    let before = s.stat(&o, HEAD).expect("stat");
    let changes = || {
        WriteOp::new()
            .write(0, b"XXXXXXXX")
            .truncate(3)
            .omap_set([("k2", b"new".to_vec())])
            .omap_rm(["k"])
            .set_xattr("y", b"new")
            .rm_xattr("x")
    };
    let failing = [
        (changes().cmp_xattr("x", Some(b"2")), "CmpXattr mismatch"),
        (changes().cmp_xattr("x", None), "CmpXattr expects absent"),
        (changes().omap_cmp("k", Some(b"2")), "OmapCmp mismatch"),
        (
            changes().omap_cmp("nokey", Some(b"1")),
            "OmapCmp on missing key",
        ),
        (changes().create_exclusive(), "CreateExclusive on existing"),
    ];
    for (op, what) in failing {
        assert!(s.operate(&o, &op, &NOSNAP).is_err(), "{what} must fail");
        assert_eq!(read_all(&s, &o, HEAD), b"hello", "{what}: data untouched");
        assert_eq!(
            s.get_xattrs(&o).expect("xattrs").keys().collect::<Vec<_>>(),
            vec!["x"],
            "{what}: xattrs untouched"
        );
        let omap = s.omap_get(&o, "", "", 10).expect("omap");
        assert_eq!(
            omap,
            vec![("k".to_string(), b"1".to_vec())],
            "{what}: omap untouched"
        );
        assert_eq!(
            s.stat(&o, HEAD).expect("stat").version,
            before.version,
            "{what}: version untouched"
        );
    }
    let absent = loc(o.pool, "absent");
    let r = s.operate(
        &absent,
        &WriteOp::new()
            .write(0, b"x")
            .omap_set([("a", vec![])])
            .assert_exists(),
        &NOSNAP,
    );
    assert_err(r, no_object, "AssertExists on absent object");
    assert_err(
        s.stat(&absent, HEAD),
        no_object,
        "a failed op creates nothing",
    );
    let r = s.operate(&absent, &WriteOp::new().create().remove().remove(), &NOSNAP);
    assert_err(r, no_object, "second remove in one op");
    assert_err(
        s.stat(&absent, HEAD),
        no_object,
        "a failed op creates nothing",
    );
    // All guards pass: everything applies, in order.
    put(
        &s,
        &o,
        changes()
            .cmp_xattr("x", Some(b"1"))
            .omap_cmp("k", Some(b"1"))
            .omap_cmp("k2", None)
            .assert_exists(),
    );
    assert_eq!(read_all(&s, &o, HEAD), b"XXX");
    assert_eq!(
        s.get_xattrs(&o)
            .expect("xattrs")
            .into_iter()
            .collect::<Vec<_>>(),
        vec![("y".to_string(), b"new".to_vec())]
    );
    assert_eq!(
        s.omap_get(&o, "", "", 10).expect("omap"),
        vec![("k2".to_string(), b"new".to_vec())]
    );
}

pub fn xattrs(open: Open) {
    let s = open();
    let o = loc(rbd(&s), "o");
    put(
        &s,
        &o,
        WriteOp::new()
            .set_xattr("a", b"1")
            .set_xattr("b", b"")
            .set_xattr("c", &[0, 255]),
    );
    assert_eq!(s.stat(&o, HEAD).expect("setxattr creates").size, 0);
    assert_eq!(s.get_xattr(&o, "c").expect("get"), vec![0, 255]);
    assert_eq!(s.get_xattr(&o, "b").expect("empty value"), b"");
    assert_err(s.get_xattr(&o, "zz"), no_key, "missing xattr");
    put(
        &s,
        &o,
        WriteOp::new()
            .set_xattr("a", b"2")
            .rm_xattr("c")
            .rm_xattr("never"),
    );
    let all = s.get_xattrs(&o).expect("all");
    let want: BTreeMap<String, Vec<u8>> =
        [("a".to_string(), b"2".to_vec()), ("b".to_string(), vec![])].into();
    assert_eq!(all, want);
    put(&s, &o, WriteOp::new().write(0, b"data"));
    assert_eq!(
        s.get_xattrs(&o).expect("all").len(),
        2,
        "data writes keep xattrs"
    );
    put(&s, &o, WriteOp::new().remove());
    assert_err(s.get_xattrs(&o), no_object, "xattrs of a removed object");
    put(&s, &o, WriteOp::new().create());
    assert!(
        s.get_xattrs(&o).expect("all").is_empty(),
        "a recreated object has no old xattrs"
    );
}

pub fn omap(open: Open) {
    let s = open();
    let o = loc(rbd(&s), "o");
    assert_err(
        s.omap_get(&o, "", "", 10),
        no_object,
        "omap of absent object",
    );
    let kv = |k: &str| (k.to_string(), format!("v{k}").into_bytes());
    put(
        &s,
        &o,
        WriteOp::new()
            .omap_set(["b1", "a2", "c", "a1", "b2"].map(|k| (k, format!("v{k}").into_bytes()))),
    );
    let keys = |v: Vec<(String, Vec<u8>)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        s.omap_get(&o, "", "", 100).expect("all"),
        ["a1", "a2", "b1", "b2", "c"].map(kv).to_vec()
    );
    assert_eq!(
        keys(s.omap_get(&o, "a1", "", 2).expect("after a1")),
        vec!["a2", "b1"]
    );
    assert_eq!(
        keys(s.omap_get(&o, "", "b", 10).expect("prefix b")),
        vec!["b1", "b2"]
    );
    assert_eq!(
        keys(s.omap_get(&o, "b1", "b", 10).expect("prefix after")),
        vec!["b2"]
    );
    assert_eq!(
        keys(s.omap_get(&o, "a", "b", 1).expect("prefix max")),
        vec!["b1"]
    );
    assert!(s.omap_get(&o, "", "d", 10).expect("no match").is_empty());
    assert!(s.omap_get(&o, "", "", 0).expect("max 0").is_empty());
    assert_eq!(
        keys(s.omap_get(&o, "b", "", usize::MAX).expect("max huge")),
        vec!["b1", "b2", "c"]
    );
    let got = s.omap_get_keys(&o, &["a1", "zz", "c"]).expect("keys");
    assert_eq!(
        got,
        [kv("a1"), kv("c")].into_iter().collect::<BTreeMap<_, _>>()
    );
    put(
        &s,
        &o,
        WriteOp::new()
            .omap_rm(["a1", "nope"])
            .omap_set([("a2", b"changed".to_vec())]),
    );
    assert_eq!(
        s.omap_get(&o, "", "a", 10).expect("a"),
        vec![("a2".to_string(), b"changed".to_vec())]
    );
    put(
        &s,
        &o,
        WriteOp::new().omap_clear().omap_set([("new", vec![])]),
    );
    assert_eq!(
        keys(s.omap_get(&o, "", "", 10).expect("after clear")),
        vec!["new"]
    );
    let unicode = "ключ";
    put(&s, &o, WriteOp::new().omap_set([(unicode, vec![1])]));
    assert_eq!(
        keys(s.omap_get(&o, "new", "", 10).expect("unicode")),
        vec![unicode]
    );
}

pub fn snapshots_read_back(open: Open) {
    let s = open();
    let p = rbd(&s);
    let o = loc(p, "o");
    put(&s, &o, WriteOp::new().write_full(&fill(b'1', 8192)));
    let s1 = s.snap_create(p).expect("snap 1");
    put_at(
        &s,
        &o,
        WriteOp::new().write(0, &fill(b'2', 4096)),
        &ctx(&[s1]),
    );
    let s2 = s.snap_create(p).expect("snap 2");
    assert!(s2 > s1, "snap ids grow");
    put_at(
        &s,
        &o,
        WriteOp::new().write(4096, &fill(b'3', 8192)),
        &ctx(&[s1, s2]),
    );
    assert_eq!(read_all(&s, &o, s1), fill(b'1', 8192));
    assert_eq!(read_all(&s, &o, s2), cat(&[(b'2', 4096), (b'1', 4096)]));
    assert_eq!(read_all(&s, &o, HEAD), cat(&[(b'2', 4096), (b'3', 8192)]));
    assert_eq!(s.stat(&o, s1).expect("stat s1").size, 8192);
    assert_eq!(s.stat(&o, HEAD).expect("stat head").size, 12288);
    assert_eq!(
        s.read(&o, s2, 4000, 200).expect("partial"),
        cat(&[(b'2', 96), (b'1', 104)])
    );
    check_sparse(&s, &o, s1, 0, 8192, &[]);
    // Writes with the same context again do not clone again.
    put_at(&s, &o, WriteOp::new().write(0, b"x"), &ctx(&[s1, s2]));
    assert_eq!(s.list_snaps(&o).expect("snaps").clones.len(), 2);
    assert_eq!(read_all(&s, &o, s2), cat(&[(b'2', 4096), (b'1', 4096)]));
    // Another client reads the same history.
    assert_eq!(read_all(&open(), &o, s1), fill(b'1', 8192));
    // A truncate after a third snap keeps the old size at that snap.
    let s3 = s.snap_create(p).expect("snap 3");
    put_at(&s, &o, WriteOp::new().truncate(10), &ctx(&[s1, s2, s3]));
    assert_eq!(s.stat(&o, s3).expect("stat s3").size, 12288);
    assert_eq!(s.stat(&o, HEAD).expect("stat").size, 10);
}

pub fn snapshots_and_existence(open: Open) {
    let s = open();
    let p = rbd(&s);
    let (late, gone, keep) = (loc(p, "late"), loc(p, "gone"), loc(p, "keep"));
    put(
        &s,
        &gone,
        WriteOp::new()
            .write_full(b"old data")
            .omap_set([("k", b"v".to_vec())]),
    );
    put(&s, &keep, WriteOp::new().write_full(b"keep"));
    let s1 = s.snap_create(p).expect("snap");
    put_at(&s, &late, WriteOp::new().write_full(b"new"), &ctx(&[s1]));
    assert_err(
        s.read(&late, s1, 0, 10),
        no_object,
        "object created after the snap, read at it",
    );
    assert_err(
        s.stat(&late, s1),
        no_object,
        "stat at a snap before creation",
    );
    assert_eq!(read_all(&s, &late, HEAD), b"new");
    put_at(&s, &gone, WriteOp::new().remove(), &ctx(&[s1]));
    assert_err(s.read(&gone, HEAD, 0, 10), no_object, "removed at head");
    assert_eq!(
        read_all(&s, &gone, s1),
        b"old data",
        "removed at head, still there at the snap"
    );
    let names: Vec<String> = s
        .list_objects(p, None)
        .expect("list")
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(
        names,
        vec!["keep", "late"],
        "list_objects shows head objects only"
    );
    let ss = s
        .list_snaps(&gone)
        .expect("list_snaps of removed object with clone");
    assert_eq!(ss.head_size, None);
    assert_eq!(ss.clones.len(), 1);
    assert_eq!(ss.clones[0].snaps, vec![s1]);
    assert_eq!(ss.clones[0].size, 8);
    // Recreate at head: the snap still reads the old data.
    put_at(&s, &gone, WriteOp::new().write_full(b"reborn"), &ctx(&[s1]));
    assert_eq!(read_all(&s, &gone, s1), b"old data");
    assert_eq!(read_all(&s, &gone, HEAD), b"reborn");
    assert!(
        s.omap_get(&gone, "", "", 10).expect("omap").is_empty(),
        "the old head's omap is gone"
    );
    // An object never written after the snap reads its head at the snap.
    assert_eq!(read_all(&s, &keep, s1), b"keep");
    assert!(s.list_snaps(&keep).expect("snaps").clones.is_empty());
    assert_err(
        s.list_snaps(&loc(p, "never")),
        no_object,
        "list_snaps of unknown object",
    );
}

/// Each clone's overlap must be exactly where it reads equal to the next newer version
/// (given writes that always change the bytes they touch).
fn check_overlap_against_data(s: &StoreRef, o: &Locator) {
    let ss = s.list_snaps(o).expect("list_snaps");
    for (i, c) in ss.clones.iter().enumerate() {
        let mine = read_all(s, o, c.id);
        assert_eq!(mine.len() as u64, c.size, "clone {} size", c.id);
        let next = match ss.clones.get(i + 1) {
            Some(n) => read_all(s, o, n.id),
            None if ss.head_size.is_some() => read_all(s, o, HEAD),
            None => Vec::new(),
        };
        for &(off, len) in &c.overlap {
            let (a, b) = (off as usize, (off + len) as usize);
            assert!(
                b <= mine.len() && b <= next.len(),
                "overlap {off}+{len} inside both versions"
            );
            assert_eq!(
                mine[a..b],
                next[a..b],
                "clone {} overlap {off}+{len} equals the next version",
                c.id
            );
        }
    }
}

pub fn list_snaps_overlap(open: Open) {
    let s = open();
    let p = rbd(&s);
    let o = loc(p, "o");
    put(&s, &o, WriteOp::new().write_full(&fill(b'a', 4 * K64)));
    let s1 = s.snap_create(p).expect("snap");
    put_at(
        &s,
        &o,
        WriteOp::new().write(0, &fill(b'b', K64)),
        &ctx(&[s1]),
    );
    let ss = s.list_snaps(&o).expect("list_snaps");
    assert_eq!(ss.head_size, Some(4 * K64));
    assert!(ss.seq >= s1);
    assert_eq!(ss.clones.len(), 1);
    let c = &ss.clones[0];
    assert_eq!((c.id, c.snaps.clone(), c.size), (s1, vec![s1], 4 * K64));
    assert_eq!(normalize(&c.overlap), vec![(K64, 3 * K64)]);
    put_at(
        &s,
        &o,
        WriteOp::new().write(2 * K64, &fill(b'c', K64)),
        &ctx(&[s1]),
    );
    put_at(&s, &o, WriteOp::new().zero(3 * K64 + 100, 100), &ctx(&[s1]));
    let ss = s.list_snaps(&o).expect("list_snaps");
    assert_eq!(
        normalize(&ss.clones[0].overlap),
        vec![(K64, K64), (3 * K64, 100), (3 * K64 + 200, K64 - 200)]
    );
    check_overlap_against_data(&s, &o);
    let s2 = s.snap_create(p).expect("snap 2");
    put_at(
        &s,
        &o,
        WriteOp::new().truncate(3 * K64 + 10),
        &ctx(&[s1, s2]),
    );
    let ss = s.list_snaps(&o).expect("list_snaps");
    assert_eq!(ss.clones.len(), 2);
    assert_eq!(
        normalize(&ss.clones[0].overlap),
        vec![(K64, K64), (3 * K64, 100), (3 * K64 + 200, K64 - 200)],
        "older clone frozen"
    );
    assert_eq!(
        normalize(&ss.clones[1].overlap),
        vec![(0, 3 * K64 + 10)],
        "truncate cuts the newest clone's overlap"
    );
    assert_eq!(ss.head_size, Some(3 * K64 + 10));
    check_overlap_against_data(&s, &o);
    put_at(
        &s,
        &o,
        WriteOp::new().write_full(b"all new"),
        &ctx(&[s1, s2]),
    );
    assert!(
        s.list_snaps(&o).expect("list_snaps").clones[1]
            .overlap
            .is_empty(),
        "write_full overlaps nothing"
    );
    check_overlap_against_data(&s, &o);
}

pub fn snap_remove_frees_clones(open: Open) {
    let s = open();
    let p = rbd(&s);
    let (o, gone) = (loc(p, "o"), loc(p, "gone"));
    put(&s, &o, WriteOp::new().write_full(&fill(b'a', 3 * K64)));
    put(&s, &gone, WriteOp::new().write_full(b"bye"));
    let s1 = s.snap_create(p).expect("snap 1");
    put_at(
        &s,
        &o,
        WriteOp::new().write(0, &fill(b'b', K64)),
        &ctx(&[s1]),
    );
    put_at(&s, &gone, WriteOp::new().remove(), &ctx(&[s1]));
    let s2 = s.snap_create(p).expect("snap 2");
    put_at(
        &s,
        &o,
        WriteOp::new().write(2 * K64, &fill(b'c', K64)),
        &ctx(&[s1, s2]),
    );
    assert_eq!(s.list_snaps(&o).expect("snaps").clones.len(), 2);
    // Removing the newer snap folds its clone away; the older clone now compares with head.
    s.snap_remove(p, s2).expect("remove s2");
    let ss = s.list_snaps(&o).expect("snaps");
    assert_eq!(ss.clones.iter().map(|c| c.id).collect::<Vec<_>>(), vec![s1]);
    assert_eq!(normalize(&ss.clones[0].overlap), vec![(K64, K64)]);
    check_overlap_against_data(&s, &o);
    assert_eq!(
        read_all(&s, &o, s1),
        fill(b'a', 3 * K64),
        "the remaining snap still reads right"
    );
    s.snap_remove(p, s1).expect("remove s1");
    let ss = s.list_snaps(&o).expect("snaps");
    assert!(ss.clones.is_empty(), "all clones freed: {ss:?}");
    assert_eq!(
        read_all(&s, &o, HEAD),
        cat(&[(b'b', K64), (b'a', K64), (b'c', K64)])
    );
    assert_err(
        s.list_snaps(&gone),
        no_object,
        "a removed object whose clones are freed is gone",
    );
    s.snap_remove(p, s1)
        .expect("removing a removed snap again is fine");
    assert_err(
        s.snap_remove(p, s2 + 100),
        |e| matches!(e, Error::Invalid(_)),
        "snap never created",
    );
    // A stale context that still names the removed snaps makes no clone for them.
    put_at(&s, &o, WriteOp::new().write(0, b"x"), &ctx(&[s1, s2]));
    assert!(s.list_snaps(&o).expect("snaps").clones.is_empty());
    let s3 = s.snap_create(p).expect("snap 3");
    assert!(s3 > s2, "snap ids are never reused");
}

pub fn metadata_ops_do_not_clone(open: Open) {
    let s = open();
    let p = rbd(&s);
    let o = loc(p, "o");
    put(&s, &o, WriteOp::new().write_full(b"data"));
    let s1 = s.snap_create(p).expect("snap");
    let c = ctx(&[s1]);
    put_at(
        &s,
        &o,
        WriteOp::new()
            .set_xattr("a", b"1")
            .omap_set([("k", b"v".to_vec())])
            .omap_rm(["x"]),
        &c,
    );
    put_at(
        &s,
        &o,
        WriteOp::new().rm_xattr("a").omap_clear().create(),
        &c,
    );
    assert!(
        s.list_snaps(&o).expect("snaps").clones.is_empty(),
        "xattr/omap ops do not clone"
    );
    put_at(&s, &o, WriteOp::new().write(0, b"D"), &c);
    assert_eq!(
        s.list_snaps(&o).expect("snaps").clones.len(),
        1,
        "the first data write clones"
    );
    assert_eq!(read_all(&s, &o, s1), b"data");
}

pub fn locks(open: Open) {
    let (a, b) = (open(), open());
    assert_ne!(
        a.client().id,
        b.client().id,
        "each handle is its own client"
    );
    assert_eq!(a.client().pid, std::process::id());
    let o = loc(rbd(&a), "rbd_header.1");
    put(&a, &o, WriteOp::new().create());
    let name = "rbd_lock";
    a.lock(&o, name, "c1", "auto", true)
        .expect("exclusive lock");
    assert_err(
        b.lock(&o, name, "c2", "", true),
        |e| matches!(e, Error::Busy(_)),
        "second exclusive",
    );
    assert_err(
        b.lock(&o, name, "c2", "", false),
        |e| matches!(e, Error::Busy(_)),
        "shared over exclusive",
    );
    assert_err(
        a.lock(&o, name, "c1", "", true),
        |e| matches!(e, Error::Exists(_)),
        "same client and cookie again",
    );
    let lockers = b.list_lockers(&o, name).expect("lockers");
    assert_eq!(lockers.len(), 1);
    let l = &lockers[0];
    assert_eq!(
        (
            l.client.id,
            l.cookie.as_str(),
            l.description.as_str(),
            l.exclusive,
            l.name.as_str()
        ),
        (a.client().id, "c1", "auto", true, name)
    );
    assert_err(
        b.unlock(&o, name, "c1"),
        no_locker,
        "unlock of another client's lock",
    );
    a.unlock(&o, name, "c1").expect("unlock");
    assert!(b.list_lockers(&o, name).expect("lockers").is_empty());
    assert_err(a.unlock(&o, name, "c1"), no_locker, "unlock twice");
    b.lock(&o, name, "c2", "", true).expect("lock after unlock");
    a.break_lock(&o, name, b.client().id, "c2").expect("break");
    assert!(a.list_lockers(&o, name).expect("lockers").is_empty());
    assert_err(
        a.break_lock(&o, name, b.client().id, "c2"),
        no_locker,
        "break twice",
    );
    // Shared locks stack; exclusive waits for all of them.
    a.lock(&o, name, "s1", "", false).expect("shared a");
    b.lock(&o, name, "s2", "", false).expect("shared b");
    assert_eq!(a.list_lockers(&o, name).expect("lockers").len(), 2);
    assert_err(
        a.lock(&o, name, "x", "", true),
        |e| matches!(e, Error::Busy(_)),
        "exclusive over shared",
    );
    a.lock(&o, "other", "x", "", true)
        .expect("locks are per name");
    // A dead client's lock does not block and is not listed.
    drop(b);
    assert_eq!(
        a.list_lockers(&o, name).expect("lockers").len(),
        1,
        "dead holder not listed"
    );
    let c = open();
    c.unlock(&o, name, "s1").expect_err("c is not a");
    a.unlock(&o, name, "s1").expect("unlock a");
    c.lock(&o, name, "c3", "", true)
        .expect("a dead holder's lock is broken");
    assert_eq!(
        a.list_lockers(&o, name).expect("lockers")[0].client.id,
        c.client().id
    );
}

pub fn watchers(open: Open) {
    let (a, b) = (open(), open());
    let o = loc(rbd(&a), "o");
    assert_err(a.watch(&o), no_object, "watch of absent object");
    put(&a, &o, WriteOp::new().create());
    let c1 = a.watch(&o).expect("watch");
    let c2 = b.watch(&o).expect("watch");
    assert_ne!(c1, c2);
    let mut ws = a.list_watchers(&o).expect("watchers");
    ws.sort_by_key(|w| w.cookie);
    let mut want = vec![(a.client().id, c1), (b.client().id, c2)];
    want.sort_by_key(|w| w.1);
    assert_eq!(
        ws.iter()
            .map(|w| (w.client.id, w.cookie))
            .collect::<Vec<_>>(),
        want
    );
    assert!(ws.iter().all(|w| w.client.pid == std::process::id()));
    a.unwatch(&o, c1).expect("unwatch");
    assert_err(a.unwatch(&o, c1), no_watch, "unwatch twice");
    assert_eq!(
        b.list_watchers(&o)
            .expect("watchers")
            .iter()
            .map(|w| w.cookie)
            .collect::<Vec<_>>(),
        vec![c2]
    );
    drop(b);
    assert!(
        a.list_watchers(&o).expect("watchers").is_empty(),
        "a dead client's watch is gone"
    );
    assert_err(
        a.list_watchers(&loc(o.pool, "absent")),
        no_object,
        "watchers of absent object",
    );
}

pub fn flush_and_handles_share_data(open: Open) {
    let (a, b) = (open(), open());
    let o = loc(rbd(&a), "o");
    put(&a, &o, WriteOp::new().write(0, b"from a"));
    a.flush().expect("flush");
    assert_eq!(read_all(&b, &o, HEAD), b"from a");
    put(&b, &o, WriteOp::new().write(0, b"FROM B"));
    b.flush().expect("flush");
    assert_eq!(read_all(&a, &o, HEAD), b"FROM B");
    let p = b.create_pool("shared").expect("pool");
    assert_eq!(a.pool_id("shared").expect("seen by a"), p);
    let sa = a.snap_create(p).expect("snap a");
    let sb = b.snap_create(p).expect("snap b");
    assert!(sb > sa, "snap ids grow across clients");
}

/// A handle that has read an object sees every later change another handle (another
/// process) makes to it: data, size, version, removal, creation, snapshots, pool removal.
/// Backends that cache what they read must still pass this.
pub fn handles_see_each_others_changes(open: Open) {
    let (a, b) = (open(), open());
    let p = rbd(&a);
    let (o, x) = (loc(p, "o"), loc(p, "x"));
    put(&b, &o, WriteOp::new().write_full(&fill(b'1', 8192)));
    assert_eq!(read_all(&a, &o, HEAD), fill(b'1', 8192));
    let v1 = a.stat(&o, HEAD).expect("stat").version;
    put(&b, &o, WriteOp::new().write(100, b"two"));
    assert_eq!(
        a.read(&o, HEAD, 99, 5).expect("read"),
        [b'1', b't', b'w', b'o', b'1'],
        "an in-place change"
    );
    assert!(
        a.stat(&o, HEAD).expect("stat").version > v1,
        "a sees the new version"
    );
    put(&b, &o, WriteOp::new().truncate(10));
    assert_eq!(
        a.stat(&o, HEAD).expect("stat").size,
        10,
        "a sees the new size"
    );
    let mut buf = [0u8; 64];
    assert_eq!(a.read_into(&o, HEAD, 0, &mut buf).expect("read_into"), 10);
    assert_err(a.read(&x, HEAD, 0, 4), no_object, "x is absent");
    put(&b, &x, WriteOp::new().write_full(b"born"));
    assert_eq!(
        read_all(&a, &x, HEAD),
        b"born",
        "a sees an object created after it looked"
    );
    let s1 = b.snap_create(p).expect("snap");
    put_at(&b, &x, WriteOp::new().write_full(b"grown"), &ctx(&[s1]));
    assert_eq!(read_all(&a, &x, HEAD), b"grown");
    assert_eq!(
        read_all(&a, &x, s1),
        b"born",
        "a sees the clone made by b's write"
    );
    put_at(&b, &x, WriteOp::new().remove(), &ctx(&[s1]));
    assert_err(a.read(&x, HEAD, 0, 4), no_object, "a sees the removal");
    assert_err(a.stat(&x, HEAD), no_object, "a sees the removal in stat");
    let q = b.create_pool("gone").expect("pool");
    let y = loc(q, "y");
    put(&b, &y, WriteOp::new().write_full(b"doomed"));
    assert_eq!(read_all(&a, &y, HEAD), b"doomed");
    b.remove_pool("gone").expect("remove pool");
    assert_err(
        a.read(&y, HEAD, 0, 6),
        |e| e.errno() == libc::ENOENT,
        "a read in a pool b removed",
    );
    assert_err(
        a.read_into(&y, HEAD, 0, &mut buf),
        |e| e.errno() == libc::ENOENT,
        "read_into in a removed pool",
    );
}

pub fn bad_input_is_invalid(open: Open) {
    let s = open();
    let o = loc(rbd(&s), "o");
    let invalid = |e: &Error| matches!(e, Error::Invalid(_));
    assert_err(
        s.operate(&o, &WriteOp::new().truncate(MAX_OBJECT_SIZE + 1), &NOSNAP),
        invalid,
        "huge truncate",
    );
    assert_err(
        s.operate(&o, &WriteOp::new().write(u64::MAX - 2, b"abc"), &NOSNAP),
        invalid,
        "offset overflow",
    );
    let bad = SnapContext {
        seq: 1,
        snaps: vec![1, 2],
    };
    assert_err(
        s.operate(&o, &WriteOp::new().create(), &bad),
        invalid,
        "unsorted snap context",
    );
    let bad = SnapContext {
        seq: 1,
        snaps: vec![5],
    };
    assert_err(
        s.operate(&o, &WriteOp::new().create(), &bad),
        invalid,
        "snap newer than seq",
    );
    assert_err(s.stat(&o, HEAD), no_object, "nothing was created");
    assert_err(
        s.snap_create(9999),
        |e| matches!(e, Error::NoPool(_)),
        "snap in unknown pool",
    );
    put(&s, &o, WriteOp::new().write(0, b"x"));
    assert!(s
        .read(&o, HEAD, u64::MAX - 1, u64::MAX)
        .expect("read far")
        .is_empty());
}

/// Many threads over one handle and over several handles increment one counter with a
/// compare guard; no increment is lost.
pub fn threads_guarded_counter(open: Open) {
    let first = open();
    let o = loc(rbd(&first), "counter");
    put(&first, &o, WriteOp::new().omap_set([("n", b"0".to_vec())]));
    let per_thread = 25;
    let stores = [first.clone(), first.clone(), open(), open()];
    std::thread::scope(|scope| {
        for s in &stores {
            let o = &o;
            scope.spawn(move || {
                for _ in 0..per_thread {
                    increment(s.as_ref(), o);
                }
            });
        }
    });
    let v = first.omap_get_keys(&o, &["n"]).expect("read counter");
    assert_eq!(
        v.get("n").map(Vec::as_slice),
        Some((stores.len() * per_thread).to_string().as_bytes())
    );
}

/// One guarded increment of omap key `n`, retried on a lost race (also used by the
/// multi-process test).
pub fn increment(s: &dyn ObjectStore, o: &Locator) {
    loop {
        let cur = match s.omap_get_keys(o, &["n"]) {
            Ok(mut kv) => kv.remove("n"),
            Err(e) if e.is_no_object() => None,
            Err(e) => panic!("read counter: {e}"),
        };
        let n: u64 = cur
            .as_deref()
            .and_then(|c| std::str::from_utf8(c).ok()?.parse().ok())
            .unwrap_or(0);
        let op = WriteOp::new()
            .omap_cmp("n", cur.as_deref())
            .omap_set([("n", (n + 1).to_string().into_bytes())]);
        match s.operate(o, &op, &NOSNAP) {
            Ok(()) => return,
            Err(Error::Canceled(_)) => continue,
            Err(e) => panic!("increment: {e}"),
        }
    }
}
