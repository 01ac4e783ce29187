//! Checksums of metadata values: every xattr and omap row carries a crc32c of its key and
//! value, checked whenever the value is read, so a damaged row fails with EIO naming the
//! object and key instead of changing what the image layer decodes (an image's header, its
//! object map). SQLite's own means cover the rest: `PRAGMA integrity_check` (in `scrub`)
//! finds damaged b-tree pages, but not a flipped byte inside a value, which is what these
//! sums are for. A row with no crc (written before this column existed) is not checked.

use rusqlite::{params, Connection, OptionalExtension};

use crate::{Error, Locator, Result};

/// Which table a value lives in: the query that fetches one row's value and crc by object id
/// and key, and the name errors give it.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Xattr,
    Omap,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Xattr => "xattr",
            Kind::Omap => "omap key",
        }
    }

    fn query(self) -> &'static str {
        match self {
            Kind::Xattr => "SELECT value, crc FROM xattrs WHERE oid = ?1 AND name = ?2",
            Kind::Omap => "SELECT value, crc FROM omap WHERE oid = ?1 AND key = ?2",
        }
    }
}

/// The value of one xattr or omap key of object `oid`, checked against its crc.
pub(super) fn fetch(
    conn: &Connection,
    loc: &Locator,
    kind: Kind,
    oid: i64,
    key: &str,
) -> Result<Option<Vec<u8>>> {
    let row: Option<(Vec<u8>, Option<i64>)> = conn
        .prepare_cached(kind.query())?
        .query_row(params![oid, key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    row.map(|(v, crc)| checked(loc, kind, key, v, crc))
        .transpose()
}

/// The crc of a row: key, a NUL, value (so a value moved to another key does not verify).
pub(super) fn value_crc(key: &str, value: &[u8]) -> i64 {
    let crc = crc32c::crc32c_append(crc32c::crc32c(key.as_bytes()), &[0]);
    i64::from(crc32c::crc32c_append(crc, value))
}

/// `value` if it matches its crc.
pub(super) fn checked(
    loc: &Locator,
    kind: Kind,
    key: &str,
    value: Vec<u8>,
    crc: Option<i64>,
) -> Result<Vec<u8>> {
    match crc {
        Some(c) if c != value_crc(key, &value) => Err(Error::Corrupt(format!(
            "{loc} {} {key:?}: checksum mismatch in the metadata database",
            kind.name()
        ))),
        _ => Ok(value),
    }
}
