//! The lock-admission rule of RBD's `lock` class, written once for every backend: whether a
//! client may take a lock, given the live holders it has.

use crate::{Error, Locator, Result};

/// One live holder of a lock, as the rule sees it.
pub(crate) struct Holder<'a> {
    pub client: u64,
    pub cookie: &'a str,
    pub exclusive: bool,
}

/// `Ok` when client `me` may take lock `name` on `loc` with `cookie`: `Exists` if it already
/// holds it with that cookie, `Busy` if anyone holds it and either side wants it exclusive.
/// Dead holders must be dropped from `live` first (their locks count as broken).
pub(crate) fn admit_lock<'a>(
    loc: &Locator,
    name: &str,
    me: u64,
    cookie: &str,
    exclusive: bool,
    live: impl IntoIterator<Item = Holder<'a>>,
) -> Result<()> {
    let (mut any, mut any_exclusive, mut mine) = (false, false, false);
    for h in live {
        any = true;
        any_exclusive |= h.exclusive;
        mine |= h.client == me && h.cookie == cookie;
    }
    // Holding it already is reported before anyone else holding it: a retry by the holder
    // learns it has the lock rather than that the lock is busy.
    if mine {
        return Err(Error::Exists(format!(
            "{loc} lock {name:?} cookie {cookie:?}"
        )));
    }
    if any && (exclusive || any_exclusive) {
        return Err(Error::Busy(format!("{loc} lock {name:?}")));
    }
    Ok(())
}
