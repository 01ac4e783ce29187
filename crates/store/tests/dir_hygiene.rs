//! The `dir` backend's hygiene (issue 13, points 11–13): what opening writes, when a root
//! becomes a new store, the modes of what it creates. The CLI-level checks (umask, a full
//! disk) are in `tests/tests/store_hygiene.rs`.

use rbdm_store::dir::DirStore;
use rbdm_store::{Locator, ObjectStore, SnapContext, WriteOp, HEAD};

fn clients(root: &std::path::Path) -> i64 {
    let db = rusqlite::Connection::open(root.join("meta.sqlite")).expect("open db");
    db.query_row("SELECT COUNT(*) FROM clients", [], |r| r.get(0))
        .expect("count")
}

#[test]
fn reading_registers_no_client_writing_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = Locator::new(1, "", "obj");
    {
        let s = DirStore::open(dir.path()).expect("open");
        s.operate(
            &o,
            &WriteOp::new().write(0, b"abc"),
            &SnapContext::default(),
        )
        .expect("write");
        assert_eq!(clients(dir.path()), 1, "a writer registers");
    }
    assert_eq!(clients(dir.path()), 0, "closing unregisters");
    let s = DirStore::open(dir.path()).expect("open");
    assert_eq!(s.read(&o, HEAD, 0, 3).expect("read"), b"abc");
    assert_eq!(s.list_objects(1, None).expect("ls").len(), 1);
    s.list_watchers(&o).expect("watchers");
    assert_eq!(clients(dir.path()), 0, "a reader wrote a client row");
    let cookie = s.watch(&o).expect("watch");
    assert_eq!(clients(dir.path()), 1, "a watcher registers");
    assert_eq!(s.list_watchers(&o).expect("watchers")[0].cookie, cookie);
}

#[test]
fn a_root_with_data_but_no_database_is_not_a_new_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("store");
    let o = Locator::new(1, "", "obj");
    DirStore::open(&root)
        .expect("create")
        .operate(
            &o,
            &WriteOp::new().write(0, b"abc"),
            &SnapContext::default(),
        )
        .expect("write");
    std::fs::remove_file(root.join("meta.sqlite")).expect("rm db");
    let Err(e) = DirStore::open(&root) else {
        panic!("opened a store whose database is gone");
    };
    assert_eq!(e.errno(), libc::EIO);
    assert!(e.to_string().contains("meta.sqlite"), "{e}");
    assert!(!root.join("meta.sqlite").exists(), "made a new database");
    // An empty database file over object files is the same loss.
    std::fs::write(root.join("meta.sqlite"), b"").expect("empty db");
    let Err(e) = DirStore::open(&root) else {
        panic!("opened an emptied database as a new store");
    };
    assert!(e.to_string().contains("object files"), "{e}");
}

/// The data files of a store, largest first.
fn data_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(root.join("data"))
        .expect("data")
        .flatten()
    {
        for f in std::fs::read_dir(sub.path()).expect("sub").flatten() {
            out.push(f.path());
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).map_or(0, |m| m.len())));
    out
}

fn flip(path: &std::path::Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read");
    f.write_all_at(&[b[0] ^ 0x10], at).expect("write");
}

#[test]
fn a_flipped_data_byte_fails_the_read_naming_object_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = DirStore::open(dir.path()).expect("open");
    let o = Locator::new(1, "", "obj");
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    s.operate(&o, &WriteOp::new().write(0, &data), &SnapContext::default())
        .expect("write");
    // Rewrites of every kind keep the sums right: in place, journaled, partial blocks.
    let nosnap = SnapContext::default();
    s.operate(
        &o,
        &WriteOp::new().tearable().write(8192, &[7; 8192]),
        &nosnap,
    )
    .expect("in place");
    s.operate(
        &o,
        &WriteOp::new().write(100, &[9; 10]).zero(20000, 5000),
        &nosnap,
    )
    .expect("journaled");
    let mut want = data.clone();
    want[8192..16384].fill(7);
    want[100..110].fill(9);
    want[20000..25000].fill(0);
    assert_eq!(s.read(&o, HEAD, 0, 4 << 20).expect("read"), want);
    let files = data_files(dir.path());
    assert_eq!(files.len(), 1);
    flip(&files[0], 3 * 4096 + 17);
    for (off, len) in [(0, 4 << 20), (3 * 4096 + 100, 1), (3 * 4096, 4096)] {
        let e = s
            .read(&o, HEAD, off, len)
            .expect_err("read of a damaged block");
        assert_eq!(e.errno(), libc::EIO);
        let msg = e.to_string();
        assert!(
            msg.contains("1/obj") && msg.contains("offset 12288"),
            "{msg}"
        );
    }
    let mut buf = vec![0u8; 8192];
    assert!(s.read_into(&o, HEAD, 8192, &mut buf).is_err(), "read_into");
    assert!(s.sparse_read(&o, HEAD, 0, 1 << 20).is_err(), "sparse_read");
    // Blocks around it still read.
    assert_eq!(s.read(&o, HEAD, 0, 12288).expect("before"), want[..12288]);
    assert_eq!(
        s.read(&o, HEAD, 16384, 4096).expect("after"),
        want[16384..20480]
    );
    // A write over the damaged block's neighbour refuses to launder it into new sums.
    let e = s
        .operate(&o, &WriteOp::new().write(3 * 4096 + 1, &[1]), &nosnap)
        .expect_err("read-modify-write of a damaged block");
    assert_eq!(e.errno(), libc::EIO);
}

#[test]
fn scrub_reports_each_damaged_object_and_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = DirStore::open(dir.path()).expect("open");
    let nosnap = SnapContext::default();
    for i in 0..4 {
        let o = Locator::new(1, "", &format!("obj{i}"));
        let op = WriteOp::new()
            .write(0, &vec![i as u8 + 1; 64 << 10])
            .set_xattr("x", b"xattr value")
            .omap_set([("k".to_string(), b"omap value".to_vec())]);
        s.operate(&o, &op, &nosnap).expect("write");
    }
    let clean = s.scrub(Some(1)).expect("scrub");
    assert!(clean.damaged.is_empty(), "{:?}", clean.damaged);
    assert_eq!((clean.objects, clean.bytes), (4, 4 * (64 << 10)));
    assert!(clean.checksums);
    drop(s);

    // Damage obj1's data, and a metadata value of another object in the database.
    let sizes: Vec<_> = data_files(dir.path());
    flip(&sizes[1], 40000);
    let db = rusqlite::Connection::open(dir.path().join("meta.sqlite")).expect("db");
    let n = db
        .execute(
            "UPDATE omap SET value = CAST('omap valuf' AS BLOB) WHERE oid = (SELECT id FROM objects WHERE name = 'obj3')",
            [],
        )
        .expect("damage omap");
    assert_eq!(n, 1);
    drop(db);
    let s = DirStore::open(dir.path()).expect("open");
    let report = s.scrub(None).expect("scrub");
    assert_eq!(report.damaged.len(), 2, "{:?}", report.damaged);
    assert!(
        report.damaged.iter().any(|d| d.contains("offset 36864")),
        "{:?}",
        report.damaged
    );
    assert!(
        report
            .damaged
            .iter()
            .any(|d| d.contains("1/obj3") && d.contains("\"k\"")),
        "{:?}",
        report.damaged
    );
    let o3 = Locator::new(1, "", "obj3");
    assert_eq!(
        s.omap_get_keys(&o3, &["k"])
            .expect_err("damaged value")
            .errno(),
        libc::EIO
    );
}

/// An object with a head and one clone (snapshot 1), data in two extents with a hole between.
fn object_with_clone(s: &DirStore) -> Locator {
    let o = Locator::new(1, "", "obj");
    let snapc = |seq: u64| rbdm_store::SnapContext {
        seq,
        snaps: (1..=seq).rev().collect(),
    };
    s.operate(
        &o,
        &WriteOp::new()
            .write(0, &[1; 8192])
            .write(1 << 20, &[2; 8192]),
        &snapc(0),
    )
    .expect("write");
    assert_eq!(s.snap_create(1).expect("snap"), 1);
    s.operate(&o, &WriteOp::new().write(0, &[3; 4096]), &snapc(1))
        .expect("write after the snapshot");
    o
}

fn sql(root: &std::path::Path, q: &str) -> usize {
    let db = rusqlite::Connection::open(root.join("meta.sqlite")).expect("db");
    db.execute_batch("PRAGMA busy_timeout=5000")
        .expect("timeout");
    db.execute(q, []).expect(q)
}

/// A read through a damaged `objects` or `clones` row fails with EIO naming the object.
fn reads_fail_naming(s: &DirStore, o: &Locator, snap: u64) {
    let e = s
        .read(o, snap, 0, 4096)
        .expect_err("read through a damaged row");
    assert_eq!(e.errno(), libc::EIO, "{e}");
    assert!(e.to_string().contains("1/obj"), "{e}");
}

#[test]
fn a_damaged_object_or_clone_row_fails_with_eio_naming_the_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = object_with_clone(&DirStore::open(dir.path()).expect("open"));
    let s = DirStore::open(dir.path()).expect("open");
    assert_eq!(s.read(&o, 1, 0, 1).expect("snapshot"), [1]);
    assert_eq!(s.read(&o, HEAD, 0, 1).expect("head"), [3]);
    drop(s);
    // The size of the head row, as a flipped bit in the database would change it.
    assert_eq!(
        sql(
            dir.path(),
            "UPDATE objects SET size = size + 4096 WHERE name = 'obj'"
        ),
        1
    );
    let s = DirStore::open(dir.path()).expect("open");
    reads_fail_naming(&s, &o, HEAD);
    assert_eq!(s.stat(&o, HEAD).expect_err("stat").errno(), libc::EIO);
    assert!(s
        .scrub(None)
        .expect("scrub")
        .damaged
        .iter()
        .any(|d| d.contains("object row")));
    drop(s);
    sql(
        dir.path(),
        "UPDATE objects SET size = size - 4096 WHERE name = 'obj'",
    );
    let s = DirStore::open(dir.path()).expect("open");
    assert_eq!(s.read(&o, HEAD, 0, 1).expect("restored"), [3]);
    drop(s);
    // The clone's snapshot list.
    assert_eq!(sql(dir.path(), "UPDATE clones SET snaps = '2'"), 1);
    let s = DirStore::open(dir.path()).expect("open");
    reads_fail_naming(&s, &o, 1);
    let e = s.list_snaps(&o).expect_err("list_snaps");
    assert!(e.to_string().contains("clone 1 row"), "{e}");
}

#[test]
fn a_store_from_before_row_checksums_is_upgraded_once_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = object_with_clone(&DirStore::open(dir.path()).expect("open"));
    // As a store made before the columns existed.
    sql(dir.path(), "ALTER TABLE objects DROP COLUMN crc");
    sql(dir.path(), "ALTER TABLE clones DROP COLUMN crc");
    let s = DirStore::open(dir.path()).expect("open an old store");
    assert_eq!(s.read(&o, 1, 0, 1).expect("snapshot"), [1]);
    assert_eq!(s.read(&o, HEAD, 4096, 1).expect("head"), [1]);
    drop(s);
    let crcs = |table: &str| -> i64 {
        let db = rusqlite::Connection::open(dir.path().join("meta.sqlite")).expect("db");
        db.query_row(&format!("SELECT COUNT(crc) FROM {table}"), [], |r| r.get(0))
            .expect("count")
    };
    assert_eq!((crcs("objects"), crcs("clones")), (1, 1), "rows summed");
    // The upgrade's sums are checked like any.
    sql(dir.path(), "UPDATE clones SET size = 1");
    reads_fail_naming(&DirStore::open(dir.path()).expect("open"), &o, 1);
}

#[test]
fn a_sparse_read_checks_every_extent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = DirStore::open(dir.path()).expect("open");
    let o = object_with_clone(&s);
    let got = s.sparse_read(&o, 1, 0, 2 << 20).expect("sparse read");
    assert_eq!(got.len(), 2, "two extents");
    // Damage the second extent of the snapshot's file (the clone kept the original file).
    let files = data_files(dir.path());
    let clone_file = files
        .iter()
        .find(|p| {
            use std::os::unix::fs::FileExt;
            let mut b = [0u8; 1];
            std::fs::File::open(p)
                .expect("open")
                .read_exact_at(&mut b, 0)
                .is_ok()
                && b == [1]
        })
        .expect("the snapshot's file");
    flip(clone_file, (1 << 20) + 5000);
    let e = s
        .sparse_read(&o, 1, 0, 2 << 20)
        .expect_err("damage in the 2nd extent");
    assert_eq!(e.errno(), libc::EIO);
    assert!(e.to_string().contains("offset 1052672"), "{e}");
    assert_eq!(s.read(&o, 1, 0, 8192).expect("first extent"), [1; 8192]);
}

#[test]
fn a_flipped_byte_in_the_last_block_or_a_partial_one_fails_the_read() {
    // 4 MiB and 4 KiB and 100 bytes: 1025 whole blocks and a partial one; the whole ones
    // are checked many at once (see dir/crc.rs), the partial one on its own.
    let size = (4 << 20) + 4096 + 100;
    let data: Vec<u8> = (0..size as u32).map(|i| (i % 253) as u8).collect();
    for (at, block) in [
        ((4 << 20) + 4095, "the last whole block"),
        ((4 << 20) + 4096 + 99, "the partial block"),
        ((4 << 20) - 1, "a whole block"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = DirStore::open(dir.path()).expect("open");
        let o = Locator::new(1, "", "obj");
        s.operate(&o, &WriteOp::new().write(0, &data), &SnapContext::default())
            .expect("write");
        assert_eq!(s.read(&o, HEAD, 0, size).expect("read"), data);
        flip(&data_files(dir.path())[0], at);
        let block_at = format!("offset {}", at / 4096 * 4096);
        for (off, len) in [(0, size), (at / 4096 * 4096, 4096), (at, 1)] {
            let Err(e) = s.read(&o, HEAD, off, len) else {
                panic!("byte {at} ({block}) damaged, yet the read at {off} returned data");
            };
            assert_eq!(e.errno(), libc::EIO, "byte {at} ({block}), read at {off}");
            assert!(e.to_string().contains(&block_at), "{e}");
        }
    }
}
