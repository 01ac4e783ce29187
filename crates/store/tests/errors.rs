//! The `dir` backend's errors keep their cause as the `source`, not in the message, so a
//! reporter walking the chain (anyhow's `{:#}`, the CLI) prints each cause once.

use std::error::Error as _;

use rbdm_store::dir::DirStore;
use rbdm_store::Error;

/// Every message in the chain, outermost first.
fn chain(e: &Error) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut next = e.source();
    while let Some(s) = next {
        out.push(s.to_string());
        next = s.source();
    }
    out
}

fn each_cause_once(e: &Error) {
    let msgs = chain(e);
    assert!(msgs.len() >= 2, "the cause is kept as the source: {msgs:?}");
    for (i, m) in msgs.iter().enumerate().skip(1) {
        assert!(
            !msgs[..i].iter().any(|outer| outer.contains(m.as_str())),
            "cause {m:?} is printed twice in {msgs:?}"
        );
    }
}

#[test]
fn a_database_error_is_the_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("meta.sqlite"), vec![0x5a; 8192]).expect("garbage db");
    let e = match DirStore::open(dir.path()) {
        Err(e) => e,
        Ok(_) => panic!("a garbage database opened"),
    };
    assert!(matches!(e, Error::Db { .. }), "{e:?}");
    assert_eq!(e.errno(), libc::EIO);
    let sqlite = e.source().map(|s| s.to_string()).unwrap_or_default();
    assert!(
        sqlite.contains("not a database"),
        "SQLite's words are the source: {e:?}"
    );
    assert_eq!(
        rbdm_store::report(&e),
        format!("metadata database: {sqlite}"),
        "SQLite's own words once, not its code's generic text as well"
    );
    each_cause_once(&e);
}

#[test]
fn an_io_error_is_the_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("file");
    let e = match DirStore::open(&file) {
        Err(e) => e,
        Ok(_) => panic!("a regular file opened as a store"),
    };
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    each_cause_once(&e);
}
