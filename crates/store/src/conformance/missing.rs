//! Conformance of what a backend says is missing: an object, an xattr, a lock holder or a
//! watch each have their own error, naming what was asked for, with RADOS's errno.

use super::{rbd, Open};
use crate::{Error, Locator, WriteOp, HEAD};

pub(super) fn no_object(e: &Error) -> bool {
    matches!(e, Error::NoObject { .. })
}

pub(super) fn no_key(e: &Error) -> bool {
    matches!(e, Error::NoKey { .. })
}

pub(super) fn no_locker(e: &Error) -> bool {
    matches!(e, Error::NoLocker { .. })
}

pub(super) fn no_watch(e: &Error) -> bool {
    matches!(e, Error::NoWatch { .. })
}

fn expect_err<T: std::fmt::Debug>(r: crate::Result<T>, what: &str) -> Error {
    match r {
        Err(e) => e,
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
    }
}

/// Each absence is its own variant with the locator and the name it was asked for, maps to
/// its own errno (ENOENT for an object, a lock holder or a watch; ENODATA for an xattr), and
/// says what was missing in its message.
pub fn missing_things_say_what(open: Open) {
    let (s, other) = (open(), open());
    let o = Locator::new(rbd(&s), "ns", "o");
    match expect_err(s.read(&o, HEAD, 0, 1), "read of an absent object") {
        Error::NoObject { loc, snap: None } if *loc == o => {}
        e => panic!("read of an absent object: {e:?}"),
    }
    let e = expect_err(s.get_xattr(&o, "a"), "xattr of an absent object");
    assert!(e.is_no_object(), "xattr of an absent object: {e:?}");
    assert_eq!(e.errno(), libc::ENOENT);
    assert!(e.to_string().contains("ns/o"), "names the object: {e}");

    let snap = s.snap_create(o.pool).expect("snap");
    let at_snap = crate::SnapContext {
        seq: snap,
        snaps: vec![snap],
    };
    s.operate(&o, &WriteOp::new().create(), &at_snap)
        .expect("create after the snap");
    match expect_err(s.stat(&o, snap), "stat at a snap before creation") {
        Error::NoObject {
            loc,
            snap: Some(at),
        } if *loc == o && at == snap => {}
        e => panic!("stat at a snap before creation: {e:?}"),
    }

    let e = expect_err(s.get_xattr(&o, "zz"), "missing xattr");
    match &e {
        Error::NoKey { loc, name } if **loc == o && name == "zz" => {}
        e => panic!("missing xattr: {e:?}"),
    }
    assert_eq!(e.errno(), libc::ENODATA);
    assert_eq!(libc::ENODATA, 61, "Linux's ENODATA, as rbd reports it");
    assert!(e.to_string().contains("\"zz\""), "names the xattr: {e}");

    s.lock(&o, "L", "c", "", true).expect("lock");
    let other_id = other.client().id;
    let e = expect_err(other.unlock(&o, "L", "c"), "unlock by another client");
    match &e {
        Error::NoLocker {
            loc,
            lock,
            client,
            cookie,
        } if **loc == o && lock == "L" && *client == other_id && cookie == "c" => {}
        e => panic!("unlock by another client: {e:?}"),
    }
    assert_eq!(e.errno(), libc::ENOENT);

    let e = expect_err(s.unwatch(&o, 777), "unwatch of an unknown cookie");
    match &e {
        Error::NoWatch { loc, cookie: 777 } if **loc == o => {}
        e => panic!("unwatch of an unknown cookie: {e:?}"),
    }
    assert_eq!(e.errno(), libc::ENOENT);

    let e = expect_err(s.pool_id("no-such-pool"), "unknown pool");
    assert!(matches!(e, Error::NoPool(_)), "unknown pool: {e:?}");
    assert_eq!(e.errno(), libc::ENOENT);
}
