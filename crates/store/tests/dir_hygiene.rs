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
