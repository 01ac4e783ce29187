//! Checksums of the rows that say where an object's data is: each `objects` and `clones` row
//! carries a crc32c of all its other columns, checked whenever the row is loaded, so that a
//! damaged size, token or snapshot list fails with EIO naming the object instead of pointing
//! a read at the wrong bytes (as `values` does for xattr and omap rows, and `sums` for data).
//! A row with no crc (written before this column existed, see `db::upgrade`) is not checked.

use crate::{Error, Locator, Result};

/// Column values in a fixed encoding, for a crc: integers as 8 bytes, text NUL-ended, an
/// absent text as a lone tag byte (so `None` and `Some("")` differ).
#[derive(Default)]
struct Encoder(Vec<u8>);

impl Encoder {
    fn int(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn text(mut self, v: &str) -> Self {
        self.0.extend_from_slice(v.as_bytes());
        self.0.push(0);
        self
    }

    fn opt_text(mut self, v: Option<&str>) -> Self {
        match v {
            Some(t) => {
                self.0.push(1);
                self.text(t)
            }
            None => {
                self.0.push(0);
                self
            }
        }
    }

    fn crc(self) -> i64 {
        i64::from(crc32c::crc32c(&self.0))
    }
}

/// An `objects` row's columns, as stored.
pub(super) struct ObjectCols<'a> {
    pub id: i64,
    pub pool: i64,
    pub ns: &'a str,
    pub name: &'a str,
    pub seq: i64,
    pub head: bool,
    pub token: Option<&'a str>,
    pub size: i64,
    pub version: i64,
    pub mtime: i64,
}

impl ObjectCols<'_> {
    pub fn crc(&self) -> i64 {
        Encoder::default()
            .int(self.id)
            .int(self.pool)
            .text(self.ns)
            .text(self.name)
            .int(self.seq)
            .int(i64::from(self.head))
            .opt_text(self.token)
            .int(self.size)
            .int(self.version)
            .int(self.mtime)
            .crc()
    }
}

/// A `clones` row's columns, as stored (`snaps` and `overlap` in their text encoding).
pub(super) struct CloneCols<'a> {
    pub oid: i64,
    pub clone_id: i64,
    pub snaps: &'a str,
    pub size: i64,
    pub overlap: &'a str,
    pub token: Option<&'a str>,
    pub version: i64,
    pub mtime: i64,
}

impl CloneCols<'_> {
    pub fn crc(&self) -> i64 {
        Encoder::default()
            .int(self.oid)
            .int(self.clone_id)
            .text(self.snaps)
            .int(self.size)
            .text(self.overlap)
            .opt_text(self.token)
            .int(self.version)
            .int(self.mtime)
            .crc()
    }
}

/// Fails with EIO naming the object when a row's stored crc is not the one of its columns.
pub(super) fn check(loc: &Locator, what: &str, stored: Option<i64>, actual: i64) -> Result<()> {
    match stored {
        Some(c) if c != actual => Err(Error::Corrupt(format!(
            "{loc}: checksum mismatch in its {what} row of the metadata database"
        ))),
        _ => Ok(()),
    }
}
