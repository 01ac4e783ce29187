//! Applying a planned write op: how the data changes (in place, through the journal, or as
//! a new file), and the metadata transaction that makes it so. See the atomicity notes in
//! the parent module.

use std::collections::HashSet;
use std::os::unix::fs::FileExt;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::row_sums::{CloneCols, ObjectCols};
use super::rows::{load_clones, snapset, CloneRow, ObjRow};
use super::sums::{SumsChange, Target};
use super::values::value_crc;
use super::{files, io_err, sql, DirStore};
use crate::host::now_secs;
use crate::plan::{DataStep, MetaStep, Plan};
use crate::snaps;
use crate::{CloneInfo, Error, Locator, Result, SnapContext, SnapSet};

/// A new data file with at least this much written has its writeback started at once.
pub(super) const EARLY_WRITEBACK: u64 = 1 << 20;

/// Bytes a plan writes.
pub(super) fn written(p: &Plan) -> u64 {
    p.steps
        .iter()
        .map(|s| match s {
            DataStep::Write { data, .. } => data.len() as u64,
            _ => 0,
        })
        .sum()
}

impl DirStore {
    /// Applies a planned op (caller holds the stripe lock exclusive and loaded `row`, and
    /// checked the store is writable).
    pub(super) fn apply_plan(
        &self,
        loc: &Locator,
        row: Option<ObjRow>,
        p: &Plan,
        snapc: &SnapContext,
    ) -> Result<()> {
        let clones = match &row {
            Some(r) => load_clones(&self.db(), loc, r.id)?,
            None => Vec::new(),
        };
        let head = row.as_ref().filter(|r| r.exists);
        let mut ss = match &row {
            Some(r) => snapset(r, &clones),
            None => SnapSet::default(),
        };
        let clone = if p.data_touch {
            let removed = match snaps::needs_clone(&ss, snapc, |_| false) {
                Some(_) => self.removed_snaps(loc.pool, ss.seq)?,
                None => HashSet::new(),
            };
            snaps::make_writeable(&mut ss, snapc, |s| removed.contains(&s))
        } else {
            None
        };
        for &(offset, len) in &p.cuts {
            snaps::cut_overlap(&mut ss, offset, len);
        }
        let old_token = head.and_then(|r| r.token.clone());
        let old_size = head.map_or(0, |r| r.size);
        let data = match self.in_place(p, old_token.as_deref(), old_size, clone.is_some())? {
            Some(done) => done,
            None => self.prepare_data(p, old_token.as_deref(), clone.is_some())?,
        };
        let target = match &data {
            DataPlan::NoFile => Target::NoFile,
            DataPlan::Keep => Target::Keep,
            DataPlan::NewFile(t) => Target::NewFile {
                token: t,
                base: old_token.as_deref().filter(|_| clone.is_some() && !p.reset),
            },
            DataPlan::Journal(_) => Target::Journal,
            DataPlan::InPage { .. } => Target::InPlace,
        };
        let sums = self.sums_change(
            loc,
            &p.steps,
            old_token.as_deref(),
            old_size,
            p.size_after,
            target,
            clone.is_some(),
        );
        let committed = sums.and_then(|sums| {
            self.commit_op(Commit {
                loc,
                row: row.as_ref(),
                old_clones: &clones,
                ss: &ss,
                clone: clone.as_ref(),
                plan: p,
                data: &data,
                sums: sums.as_ref(),
            })
        });
        let new_token = match (&committed, &data) {
            (Err(_), DataPlan::NewFile(t)) => {
                self.remove_data(t);
                return committed.map(|_| ());
            }
            (Err(_), _) => return committed.map(|_| ()),
            (Ok(_), DataPlan::NewFile(t)) => Some(t.clone()),
            (Ok(_), DataPlan::Keep | DataPlan::Journal(_) | DataPlan::InPage { .. }) => {
                old_token.clone()
            }
            (Ok(_), DataPlan::NoFile) => None,
        };
        if let (Ok(_), DataPlan::InPage { token, offset }, [DataStep::Write { data, .. }]) =
            (&committed, &data, p.steps.as_slice())
        {
            self.open_data(token)?
                .write_all_at(data, *offset)
                .map_err(io_err(format!("write {token}")))?;
        }
        if let (Ok(Some(journal_id)), DataPlan::Journal(steps)) = (&committed, &data) {
            self.apply_journal(
                *journal_id,
                old_token.as_deref().unwrap_or_default(),
                steps,
                p.size_after,
            )?;
        }
        if let Some(old) = &old_token {
            if clone.is_none() && new_token.as_ref() != Some(old) {
                self.remove_data(old);
            }
        }
        if let Some(t) = new_token {
            self.dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(t);
        }
        Ok(())
    }

    /// A lone write inside one page of the head's file, within its size, is done in place
    /// and without the journal, after the metadata commit: the kernel copies one page in one
    /// step, so a SIGKILL leaves it all old or all new, and the sums committed first accept
    /// both (see `sums`). This is the common case of small random writes (NBD clients' 4 KiB
    /// writes). A tearable op (a client's block write) may span pages: a crash may leave
    /// some pages new, as a disk may.
    pub(super) fn in_place(
        &self,
        p: &Plan,
        old_token: Option<&str>,
        old_size: u64,
        cloning: bool,
    ) -> Result<Option<DataPlan>> {
        const PAGE: u64 = 4096;
        let (Some(token), false, false) = (old_token, cloning, p.reset) else {
            return Ok(None);
        };
        let [DataStep::Write { offset, data }] = p.steps.as_slice() else {
            return Ok(None);
        };
        let (offset, len) = (*offset, data.len() as u64);
        let one_page = offset / PAGE == (offset + len - 1) / PAGE;
        if len == 0
            || !(one_page || p.tearable)
            || offset + len > old_size
            || p.size_after != old_size
        {
            return Ok(None);
        }
        let f = self.open_data(token)?;
        if f.metadata().map_err(io_err("stat data"))?.len() < offset + len {
            return Ok(None);
        }
        Ok(Some(DataPlan::InPage {
            token: token.to_string(),
            offset,
        }))
    }

    /// Decides how the data changes and writes any new file (before the metadata commit).
    pub(super) fn prepare_data(
        &self,
        p: &Plan,
        old_token: Option<&str>,
        cloning: bool,
    ) -> Result<DataPlan> {
        if !p.exists_after || (p.reset && p.steps.is_empty() && p.size_after == 0) {
            return Ok(DataPlan::NoFile);
        }
        if p.reset {
            return self.new_file(None, p);
        }
        match old_token {
            // The head must not share its file with the clone that keeps the old data.
            Some(old) if cloning => self.new_file(Some(old), p),
            _ if p.data_unchanged() => Ok(DataPlan::Keep),
            Some(_) => Ok(DataPlan::Journal(files::encode_steps(&p.steps))),
            // All hole so far: holes read as zeros, so an empty file is the same base.
            None => self.new_file(None, p),
        }
    }

    pub(super) fn new_file(&self, base: Option<&str>, p: &Plan) -> Result<DataPlan> {
        let (token, f) = self.create_data()?;
        let filled = (|| {
            if let Some(old) = base {
                let src = self.open_data(old)?;
                let size = src.metadata().map_err(io_err("stat data"))?.len();
                files::copy_sparse(&src, &f, size)
                    .map_err(io_err(format!("copy {old} to {token}")))?;
            }
            files::apply_steps(&f, &p.steps, p.size_after).map_err(io_err(format!("write {token}")))
        })();
        match filled {
            Ok(()) => {
                // A bulk store-level write (a migration's copy, an import) is flushed later in
                // one go; starting its writeback now overlaps the disk with the work that
                // follows, so that flush has little left to wait for. Clients' writes are left
                // to the page cache: they may be rewritten soon.
                if !p.tearable && written(p) >= EARLY_WRITEBACK {
                    files::start_writeback(&f);
                }
                Ok(DataPlan::NewFile(token))
            }
            Err(e) => {
                self.remove_data(&token);
                Err(e)
            }
        }
    }

    pub(super) fn apply_journal(
        &self,
        id: i64,
        token: &str,
        steps: &[u8],
        size: u64,
    ) -> Result<()> {
        let owned = files::decode_steps(steps)?;
        let steps: Vec<_> = owned.iter().map(files::OwnedStep::as_step).collect();
        let f = self.open_data(token)?;
        files::apply_steps(&f, &steps, size).map_err(io_err(format!("write {token}")))?;
        self.db()
            .prepare_cached("DELETE FROM journal WHERE id = ?1")?
            .execute([id])?;
        Ok(())
    }

    /// The metadata transaction of an op; returns the journal row id if one was written.
    fn commit_op(&self, c: Commit<'_>) -> Result<Option<i64>> {
        let Commit {
            loc,
            row,
            old_clones,
            ss,
            clone,
            plan: p,
            data,
            sums,
        } = c;
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: Option<i64> = tx
            .prepare_cached(
                "UPDATE pools SET version = version + 1 WHERE id = ?1 RETURNING version",
            )?
            .query_row([loc.pool], |r| r.get(0))
            .optional()?;
        let Some(version) = version else {
            return Err(Error::NoPool(loc.pool.to_string()));
        };
        if !p.exists_after {
            tx.prepare_cached("DELETE FROM watchers WHERE pool = ?1 AND ns = ?2 AND name = ?3")?
                .execute(params![loc.pool, loc.namespace, loc.name])?;
        }
        if !p.exists_after && ss.clones.is_empty() {
            if let Some(r) = row {
                for table in [
                    "DELETE FROM objects WHERE id = ?1",
                    "DELETE FROM xattrs WHERE oid = ?1",
                    "DELETE FROM omap WHERE oid = ?1",
                ] {
                    tx.prepare_cached(table)?.execute([r.id])?;
                }
            }
            if let Some(sums) = sums {
                sums.save(&tx)?;
            }
            tx.commit()?;
            return Ok(None);
        }
        let token = match data {
            DataPlan::NewFile(t) => Some(t.as_str()),
            DataPlan::Keep | DataPlan::Journal(_) | DataPlan::InPage { .. } => {
                row.and_then(|r| r.token.as_deref())
            }
            DataPlan::NoFile => None,
        };
        let (size, mtime) = (sql(p.size_after), sql(now_secs()));
        let oid = match row {
            Some(r) => r.id,
            None => tx
                .prepare_cached(
                    "INSERT INTO objects(pool, ns, name, seq, head, size, version, mtime)
                     VALUES (?1, ?2, ?3, 0, 0, 0, 0, 0) RETURNING id",
                )?
                .query_row(params![loc.pool, loc.namespace, loc.name], |r| r.get(0))?,
        };
        let cols = ObjectCols {
            id: oid,
            pool: loc.pool,
            ns: &loc.namespace,
            name: &loc.name,
            seq: sql(ss.seq),
            head: p.exists_after,
            token,
            size,
            version,
            mtime,
        };
        tx.prepare_cached(
            "UPDATE objects SET seq = ?2, head = ?3, token = ?4, size = ?5, version = ?6, mtime = ?7, crc = ?8 WHERE id = ?1",
        )?
        .execute(params![oid, cols.seq, cols.head, token, size, version, mtime, cols.crc()])?;
        for c in &ss.clones {
            let before = old_clones.iter().find(|o| o.info.id == c.id);
            match (before, row) {
                (None, Some(r)) if clone.is_some_and(|n| n.id == c.id) => {
                    let (snaps, overlap) = (
                        snaps::encode_snaps(&c.snaps),
                        snaps::encode_ranges(&c.overlap),
                    );
                    let cols = CloneCols {
                        oid,
                        clone_id: sql(c.id),
                        snaps: &snaps,
                        size: sql(c.size),
                        overlap: &overlap,
                        token: r.token.as_deref(),
                        version: sql(r.version),
                        mtime: sql(r.mtime),
                    };
                    tx.prepare_cached(
                        "INSERT INTO clones(oid, clone_id, snaps, size, overlap, token, version, mtime, crc)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )?
                    .execute(params![
                        oid,
                        cols.clone_id,
                        snaps,
                        cols.size,
                        overlap,
                        r.token,
                        cols.version,
                        cols.mtime,
                        cols.crc()
                    ])?;
                }
                (Some(b), _) if b.info.overlap != c.overlap => {
                    let (snaps, overlap) = (
                        snaps::encode_snaps(&b.info.snaps),
                        snaps::encode_ranges(&c.overlap),
                    );
                    let crc = b.cols(oid, &snaps, &overlap).crc();
                    tx.prepare_cached(
                        "UPDATE clones SET overlap = ?3, crc = ?4 WHERE oid = ?1 AND clone_id = ?2",
                    )?
                    .execute(params![oid, sql(c.id), overlap, crc])?;
                }
                _ => {}
            }
        }
        apply_meta(&tx, oid, &p.meta)?;
        let journal = match data {
            DataPlan::Journal(steps) => Some(
                tx.prepare_cached("INSERT INTO journal(oid, token, size, steps) VALUES (?1, ?2, ?3, ?4) RETURNING id")?
                    .query_row(params![oid, token, size, steps], |r| r.get(0))?,
            ),
            _ => None,
        };
        if let Some(sums) = sums {
            sums.save(&tx)?;
        }
        tx.commit()?;
        Ok(journal)
    }
}

/// What one op's metadata transaction writes: the object as it was loaded (its row and
/// clones), its new snap set and the clone the op makes, the plan, where the data went and
/// the checksum change.
struct Commit<'a> {
    loc: &'a Locator,
    row: Option<&'a ObjRow>,
    old_clones: &'a [CloneRow],
    ss: &'a SnapSet,
    clone: Option<&'a CloneInfo>,
    plan: &'a Plan<'a>,
    data: &'a DataPlan,
    sums: Option<&'a SumsChange>,
}

pub(super) enum DataPlan {
    /// The object ends with no data file (absent, or empty).
    NoFile,
    /// The head keeps its current file unchanged.
    Keep,
    /// A new file, already written, replaces the head's.
    NewFile(String),
    /// The head's file changes in place through the journal (encoded steps).
    Journal(Vec<u8>),
    /// The head's file is rewritten in place at `offset` once the metadata committed.
    InPage { token: String, offset: u64 },
}

pub(super) fn apply_meta(conn: &Connection, oid: i64, meta: &[MetaStep]) -> Result<()> {
    for step in meta {
        match *step {
            MetaStep::SetXattr(name, value) => {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO xattrs(oid, name, value, crc) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![oid, name, value, value_crc(name, value)])?;
            }
            MetaStep::RmXattr(name) => {
                conn.prepare_cached("DELETE FROM xattrs WHERE oid = ?1 AND name = ?2")?
                    .execute(params![oid, name])?;
            }
            MetaStep::OmapSet(kv) => {
                let mut st = conn.prepare_cached(
                    "INSERT OR REPLACE INTO omap(oid, key, value, crc) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (k, v) in kv {
                    st.execute(params![oid, k, v, value_crc(k, v)])?;
                }
            }
            MetaStep::OmapRm(keys) => {
                let mut st = conn.prepare_cached("DELETE FROM omap WHERE oid = ?1 AND key = ?2")?;
                for k in keys {
                    st.execute(params![oid, k])?;
                }
            }
            MetaStep::OmapClear => {
                conn.prepare_cached("DELETE FROM omap WHERE oid = ?1")?
                    .execute([oid])?;
            }
            MetaStep::ClearAll => {
                conn.prepare_cached("DELETE FROM omap WHERE oid = ?1")?
                    .execute([oid])?;
                conn.prepare_cached("DELETE FROM xattrs WHERE oid = ?1")?
                    .execute([oid])?;
            }
        }
    }
    Ok(())
}
