//! An object's rows: loading them under its stripe lock (replaying its journal first), and
//! which stored version a read at a snapshot sees.

use std::fs::File;

use rusqlite::{params, Connection, OptionalExtension};

use super::row_sums::{self, CloneCols, ObjectCols};
use super::stripes::StripeLock;
use super::{files, io_err, sql, uns, DirStore};
use crate::snaps::{self, Version};
use crate::{CloneInfo, Error, Locator, PoolId, Result, SnapId, SnapSet, HEAD};

/// The head row of an object (which also carries the snapset's `seq`).
#[derive(Clone)]
pub(super) struct ObjRow {
    pub(super) id: i64,
    pub(super) seq: SnapId,
    pub(super) exists: bool,
    pub(super) token: Option<String>,
    pub(super) size: u64,
    pub(super) version: u64,
    pub(super) mtime: u64,
    /// Journal rows wait to be applied to the head's file.
    pub(super) pending: bool,
}

pub(super) struct CloneRow {
    pub(super) info: CloneInfo,
    pub(super) token: Option<String>,
    pub(super) version: u64,
    pub(super) mtime: u64,
}

/// One stored version's data: where it is and how big.
pub(super) struct Stored {
    pub(super) token: Option<String>,
    pub(super) size: u64,
    pub(super) version: u64,
    pub(super) mtime: u64,
}

impl DirStore {
    /// Takes the object's stripe lock and loads its row, first replaying any journal rows
    /// (which needs the lock exclusive). Under a shared lock the row may come from the cache,
    /// which the stripe's generation keeps exact (see `stripes`).
    pub(super) fn lock_and_load(
        &self,
        loc: &Locator,
        exclusive: bool,
    ) -> Result<(StripeLock<'_>, Option<ObjRow>)> {
        let lock = self.lock_stripe(loc, exclusive)?;
        if let Some(row) = self.rows.get(loc, &lock) {
            return Ok((lock, row));
        }
        let row = load_row(&self.db(), loc)?;
        match row {
            Some(r) if r.pending && !exclusive => {
                drop(lock);
                self.lock_and_load(loc, true)
            }
            Some(r) if r.pending => {
                self.replay(r.id)?;
                let row = load_row(&self.db(), loc)?;
                Ok((lock, row))
            }
            row => {
                self.rows.put(loc, &lock, &row);
                Ok((lock, row))
            }
        }
    }

    /// Applies the object's journal rows in order, deleting each once applied.
    pub(super) fn replay(&self, oid: i64) -> Result<()> {
        self.writable()?;
        let rows: Vec<(i64, String, i64, Vec<u8>)> = {
            let db = self.db();
            let mut st = db.prepare_cached(
                "SELECT id, token, size, steps FROM journal WHERE oid = ?1 ORDER BY id",
            )?;
            let rows = st.query_map([oid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (id, token, size, steps) in rows {
            let steps = files::decode_steps(&steps)?;
            let steps: Vec<_> = steps.iter().map(files::OwnedStep::as_step).collect();
            let f = self.open_data(&token)?;
            files::apply_steps(&f, &steps, uns(size))
                .map_err(io_err(format!("replay journal into {token}")))?;
            self.db()
                .prepare_cached("DELETE FROM journal WHERE id = ?1")?
                .execute([id])?;
        }
        Ok(())
    }

    /// `NoObject` for `loc` at `snap`, or `NoPool` when the pool is gone too.
    pub(super) fn not_found(&self, loc: &Locator, snap: SnapId) -> Error {
        match pool_exists(&self.db(), loc.pool) {
            Ok(false) => Error::NoPool(loc.pool.to_string()),
            Ok(true) => Error::no_object(loc, snap),
            Err(e) => e,
        }
    }

    /// The version of the object a read at `snap` sees (caller holds the stripe lock).
    pub(super) fn stored_at(
        &self,
        loc: &Locator,
        row: Option<ObjRow>,
        snap: SnapId,
    ) -> Result<Stored> {
        let Some(row) = row else {
            return Err(self.not_found(loc, snap));
        };
        if snap == HEAD || snap > row.seq {
            return match row.exists {
                true => Ok(Stored {
                    token: row.token,
                    size: row.size,
                    version: row.version,
                    mtime: row.mtime,
                }),
                false => Err(Error::no_object(loc, snap)),
            };
        }
        let clones = load_clones(&self.db(), loc, row.id)?;
        let ss = snapset(&row, &clones);
        let found = match snaps::version_at(&ss, snap) {
            Version::Head => Some(Stored {
                token: row.token,
                size: row.size,
                version: row.version,
                mtime: row.mtime,
            }),
            Version::Clone(id) => clones
                .into_iter()
                .find(|c| c.info.id == id)
                .map(|c| Stored {
                    token: c.token,
                    size: c.info.size,
                    version: c.version,
                    mtime: c.mtime,
                }),
            Version::Absent => None,
        };
        found.ok_or_else(|| Error::no_object(loc, snap))
    }

    /// Opens the data of what `snap` sees, holding the stripe lock shared meanwhile.
    pub(super) fn open_version(
        &self,
        loc: &Locator,
        snap: SnapId,
    ) -> Result<(StripeLock<'_>, Stored, Option<File>)> {
        let (lock, row) = self.lock_and_load(loc, false)?;
        let stored = self.stored_at(loc, row, snap)?;
        let file = stored
            .token
            .as_deref()
            .map(|t| self.open_data(t))
            .transpose()?;
        Ok((lock, stored, file))
    }

    /// Data extents of a version within `[offset, offset+len)`, clipped to its size.
    pub(super) fn extents_of(
        stored: &Stored,
        file: Option<&File>,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, u64)>> {
        let end = offset.saturating_add(len).min(stored.size);
        match file {
            Some(f) if offset < end => {
                rbdm_sparse::data_extents(f, offset, end).map_err(io_err("seek data"))
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Runs `f` in a read transaction after checking the object exists at head.
    pub(super) fn with_head<T>(
        &self,
        loc: &Locator,
        f: impl FnOnce(&Connection, i64) -> Result<T>,
    ) -> Result<T> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let oid: Option<i64> = tx
            .prepare_cached(
                "SELECT id FROM objects WHERE pool = ?1 AND ns = ?2 AND name = ?3 AND head = 1",
            )?
            .query_row(params![loc.pool, loc.namespace, loc.name], |r| r.get(0))
            .optional()?;
        let out = match oid {
            Some(oid) => f(&tx, oid),
            None if !pool_exists(&tx, loc.pool)? => Err(Error::NoPool(loc.pool.to_string())),
            None => Err(Error::no_object(loc, HEAD)),
        };
        tx.commit()?;
        out
    }
}

pub(super) fn pool_exists(conn: &Connection, pool: PoolId) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM pools WHERE id = ?1")?
        .query_row([pool], |_| Ok(()))
        .optional()?
        .is_some())
}

pub(super) fn load_row(conn: &Connection, loc: &Locator) -> Result<Option<ObjRow>> {
    let mut st = conn.prepare_cached(
        "SELECT id, seq, head, token, size, version, mtime, EXISTS(SELECT 1 FROM journal j WHERE j.oid = o.id), crc
         FROM objects o WHERE pool = ?1 AND ns = ?2 AND name = ?3",
    )?;
    let row = st
        .query_row(params![loc.pool, loc.namespace, loc.name], |r| {
            let row = ObjRow {
                id: r.get(0)?,
                seq: uns(r.get(1)?),
                exists: r.get(2)?,
                token: r.get(3)?,
                size: uns(r.get(4)?),
                version: uns(r.get(5)?),
                mtime: uns(r.get(6)?),
                pending: r.get(7)?,
            };
            Ok((row, r.get::<_, Option<i64>>(8)?))
        })
        .optional()?;
    let Some((row, crc)) = row else {
        return Ok(None);
    };
    row_sums::check(loc, "object", crc, object_cols(loc, &row).crc())?;
    Ok(Some(row))
}

/// The columns of an object row, for its crc.
pub(super) fn object_cols<'a>(loc: &'a Locator, row: &'a ObjRow) -> ObjectCols<'a> {
    ObjectCols {
        id: row.id,
        pool: loc.pool,
        ns: &loc.namespace,
        name: &loc.name,
        seq: sql(row.seq),
        head: row.exists,
        token: row.token.as_deref(),
        size: sql(row.size),
        version: sql(row.version),
        mtime: sql(row.mtime),
    }
}

/// The clones of object `oid` (`loc`, named in errors), sorted by id.
pub(super) fn load_clones(conn: &Connection, loc: &Locator, oid: i64) -> Result<Vec<CloneRow>> {
    let mut st = conn.prepare_cached(
        "SELECT clone_id, snaps, size, overlap, token, version, mtime, crc FROM clones WHERE oid = ?1",
    )?;
    let raw = st.query_map([oid], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, Option<i64>>(7)?,
        ))
    })?;
    let mut out = Vec::new();
    for item in raw {
        let (id, snaps_text, size, overlap, token, version, mtime, crc) = item?;
        let cols = CloneCols {
            oid,
            clone_id: id,
            snaps: &snaps_text,
            size,
            overlap: &overlap,
            token: token.as_deref(),
            version,
            mtime,
        };
        row_sums::check(loc, &format!("clone {}", uns(id)), crc, cols.crc())?;
        out.push(CloneRow {
            info: CloneInfo {
                id: uns(id),
                snaps: snaps::decode_snaps(&snaps_text)?,
                size: uns(size),
                overlap: snaps::decode_ranges(&overlap)?,
            },
            token,
            version: uns(version),
            mtime: uns(mtime),
        });
    }
    // Sorted here, not in SQL: ids above i64::MAX would sort wrong as signed integers.
    out.sort_by_key(|c| c.info.id);
    Ok(out)
}

impl CloneRow {
    /// The columns of this clone's row of object `oid` with `snaps` and `overlap` as they
    /// will be stored, for its crc.
    pub(super) fn cols<'a>(&'a self, oid: i64, snaps: &'a str, overlap: &'a str) -> CloneCols<'a> {
        CloneCols {
            oid,
            clone_id: sql(self.info.id),
            snaps,
            size: sql(self.info.size),
            overlap,
            token: self.token.as_deref(),
            version: sql(self.version),
            mtime: sql(self.mtime),
        }
    }
}

pub(super) fn snapset(row: &ObjRow, clones: &[CloneRow]) -> SnapSet {
    SnapSet {
        seq: row.seq,
        clones: clones.iter().map(|c| c.info.clone()).collect(),
        head_size: row.exists.then_some(row.size),
    }
}
