//! Checksums of metadata values: every xattr and omap row carries a crc32c of its key and
//! value, checked whenever the value is read, so a damaged row fails with EIO naming the
//! object and key instead of changing what the image layer decodes (an image's header, its
//! object map). SQLite's own means cover the rest: `PRAGMA integrity_check` (in `scrub`)
//! finds damaged b-tree pages, but not a flipped byte inside a value, which is what these
//! sums are for. A row with no crc (written before this column existed) is not checked.

use crate::{Error, Locator, Result};

/// The crc of a row: key, a NUL, value (so a value moved to another key does not verify).
pub(super) fn value_crc(key: &str, value: &[u8]) -> i64 {
    let crc = crc32c::crc32c_append(crc32c::crc32c(key.as_bytes()), &[0]);
    i64::from(crc32c::crc32c_append(crc, value))
}

/// `value` if it matches its crc.
pub(super) fn checked(
    loc: &Locator,
    kind: &str,
    key: &str,
    value: Vec<u8>,
    crc: Option<i64>,
) -> Result<Vec<u8>> {
    match crc {
        Some(c) if c != value_crc(key, &value) => Err(Error::Corrupt(format!(
            "{loc} {kind} {key:?}: checksum mismatch in the metadata database"
        ))),
        _ => Ok(value),
    }
}
