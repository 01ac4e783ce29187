//! The embedded `dir` backend: object data in sparse files, metadata in SQLite (WAL mode), so
//! that several processes can share one store at once.
//!
//! Layout: `<root>/meta.sqlite`, `<root>/data/<xx>/<token>` (one file per object version, named
//! by a random token), `<root>/locks/<n>` (striped lock files, each holding its stripe's
//! generation counter).
//!
//! Concurrency: every operation on an object holds `flock` on the object's lock stripe
//! (exclusive to change it, shared to read it), each holder through its own open file
//! description so that threads of one process exclude each other too; metadata changes are
//! one `BEGIN IMMEDIATE` transaction. Reads reuse head rows cached under the stripe's
//! generation, which every exclusive holder bumps first (see `stripes`).
//! A stripe lock is never taken while the database is held, so the two cannot deadlock.
//!
//! Atomicity across SIGKILL: a change that replaces the data (new object, full overwrite,
//! clone-on-write) writes a new file and then commits metadata naming it; the old file is
//! deleted after the commit, unless a clone keeps it. A change to part of an existing file is
//! written to the `journal` table in the same transaction as its metadata, then applied to
//! the file, then the journal row is deleted. Every operation on an object first replays its
//! journal rows (applying steps again is harmless), which is the whole of crash recovery.
//! Files a crashed process left unreferenced are swept by the next open.

mod clients;
mod files;
mod stripes;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use self::stripes::{RowCache, StripeLock, Stripes};
use crate::plan::{self, DataStep, MetaStep, Plan, View};
use crate::snaps::{self, Version};
use crate::{
    ClientInfo, CloneInfo, Error, Locator, LockInfo, ObjectStat, ObjectStore, PoolId, Result,
    SnapContext, SnapId, SnapSet, Watcher, WriteOp, HEAD,
};

pub(crate) use clients::{hostname, now_secs};

const LOCK_STRIPES: u64 = 64;
/// Data files `flush` holds open at once.
const FLUSH_BATCH: usize = 256;
/// A new data file with at least this much written has its writeback started at once.
const EARLY_WRITEBACK: u64 = 1 << 20;

/// Bytes a plan writes.
fn written(p: &Plan) -> u64 {
    p.steps
        .iter()
        .map(|s| match s {
            DataStep::Write { data, .. } => data.len() as u64,
            _ => 0,
        })
        .sum()
}

pub struct DirStore {
    root: PathBuf,
    conn: Mutex<Connection>,
    client: ClientInfo,
    /// Files written since the last `flush`, to fsync then.
    dirty: Mutex<BTreeSet<String>>,
    stripes: Stripes,
    /// Head rows (or their absence), valid while their stripe's generation holds.
    rows: RowCache<Locator, Option<ObjRow>>,
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Db(e.to_string())
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// SQLite integers are signed; ids and sizes keep their bits through the cast.
fn sql(v: u64) -> i64 {
    v as i64
}

fn uns(v: i64) -> u64 {
    v as u64
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pools(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
    snap_seq INTEGER NOT NULL DEFAULT 0, version INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS removed_snaps(pool INTEGER NOT NULL, snap INTEGER NOT NULL,
    PRIMARY KEY(pool, snap)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects(id INTEGER PRIMARY KEY, pool INTEGER NOT NULL, ns TEXT NOT NULL,
    name TEXT NOT NULL, seq INTEGER NOT NULL, head INTEGER NOT NULL, token TEXT, size INTEGER NOT NULL,
    version INTEGER NOT NULL, mtime INTEGER NOT NULL, UNIQUE(pool, ns, name));
CREATE TABLE IF NOT EXISTS clones(oid INTEGER NOT NULL, clone_id INTEGER NOT NULL, snaps TEXT NOT NULL,
    size INTEGER NOT NULL, overlap TEXT NOT NULL, token TEXT, version INTEGER NOT NULL,
    mtime INTEGER NOT NULL, PRIMARY KEY(oid, clone_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS xattrs(oid INTEGER NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY(oid, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS omap(oid INTEGER NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY(oid, key)) WITHOUT ROWID;
-- Rows live only between a commit and the file write that follows it, so the table stays
-- tiny and needs no index; ids grow while rows exist, which is all replay order needs.
CREATE TABLE IF NOT EXISTS journal(id INTEGER PRIMARY KEY, oid INTEGER NOT NULL,
    token TEXT NOT NULL, size INTEGER NOT NULL, steps BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS clients(id INTEGER PRIMARY KEY AUTOINCREMENT, host TEXT NOT NULL,
    pid INTEGER NOT NULL, starttime INTEGER NOT NULL, since INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS locks(pool INTEGER NOT NULL, ns TEXT NOT NULL, name TEXT NOT NULL,
    lock_name TEXT NOT NULL, client INTEGER NOT NULL, cookie TEXT NOT NULL, description TEXT NOT NULL,
    exclusive INTEGER NOT NULL, PRIMARY KEY(pool, ns, name, lock_name, client, cookie)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS watchers(cookie INTEGER PRIMARY KEY AUTOINCREMENT, pool INTEGER NOT NULL,
    ns TEXT NOT NULL, name TEXT NOT NULL, client INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS watchers_obj ON watchers(pool, ns, name);
";

/// The head row of an object (which also carries the snapset's `seq`).
#[derive(Clone)]
struct ObjRow {
    id: i64,
    seq: SnapId,
    exists: bool,
    token: Option<String>,
    size: u64,
    version: u64,
    mtime: u64,
    /// Journal rows wait to be applied to the head's file.
    pending: bool,
}

struct CloneRow {
    info: CloneInfo,
    token: Option<String>,
    version: u64,
    mtime: u64,
}

/// One stored version's data: where it is and how big.
struct Stored {
    token: Option<String>,
    size: u64,
    version: u64,
    mtime: u64,
}

impl DirStore {
    /// Opens (creating if needed) a store at `root`. Safe to call from several processes at
    /// once; the first open creates pool `rbd`.
    pub fn open(root: &Path) -> Result<Self> {
        create_layout(root)?;
        let mut conn = Connection::open(root.join("meta.sqlite"))?;
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.set_prepared_statement_cache_capacity(64);
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Db(format!("cannot use WAL mode (got {mode})")));
        }
        // Every checkpoint fsyncs the WAL and the database. At the default 1000 pages, a
        // stream of 1 MiB journaled writes checkpointed every fourth write; at 64 MiB the
        // journal rows' pages, reused write after write, are mostly copied once.
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=16384;")?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(SCHEMA)?;
        let fresh = tx
            .query_row("SELECT 1 FROM meta WHERE key = 'format'", [], |_| Ok(()))
            .optional()?
            .is_none();
        if fresh {
            tx.execute("INSERT INTO meta(key, value) VALUES ('format', '1')", [])?;
            tx.execute("INSERT INTO pools(name) VALUES ('rbd')", [])?;
        }
        let me = clients::Me::current();
        let since = now_secs();
        let id: i64 = tx.query_row(
            "INSERT INTO clients(host, pid, starttime, since) VALUES (?1, ?2, ?3, ?4) RETURNING id",
            params![me.host, me.pid, sql(me.starttime), sql(since)],
            |r| r.get(0),
        )?;
        let dead = clients::reap_dead(&tx, &me)?;
        tx.commit()?;
        if fresh {
            make_fan_out(root)?;
        }
        let store = DirStore {
            root: root.to_path_buf(),
            conn: Mutex::new(conn),
            client: ClientInfo {
                id: uns(id),
                host: me.host,
                pid: me.pid,
                since,
            },
            dirty: Mutex::new(BTreeSet::new()),
            stripes: Stripes::new(root.join("locks"), LOCK_STRIPES),
            rows: RowCache::new(),
        };
        if !dead.is_empty() {
            // Best effort: a failed sweep leaves garbage files, never wrong data.
            let _ = store.sweep_orphans();
        }
        Ok(store)
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path_of(&self, token: &str) -> PathBuf {
        self.root
            .join("data")
            .join(token.get(..2).unwrap_or("00"))
            .join(token)
    }

    fn open_data(&self, token: &str) -> Result<File> {
        let path = self.path_of(token);
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::Io {
                context: format!("open {}", path.display()),
                source: e,
            })
    }

    /// A fresh data file; its token ends with our client id so a sweep knows whose it was.
    fn create_data(&self) -> Result<(String, File)> {
        loop {
            let token = format!("{:016x}-{:x}", random_u64(), self.client.id);
            let path = self.path_of(&token);
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)
            {
                Ok(f) => return Ok((token, f)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                // A store made before fan-out directories were made up front lacks some.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if let Some(parent) = path.parent() {
                        fs::create_dir_all(parent)
                            .map_err(io_err(format!("create {}", parent.display())))?;
                    }
                    let f = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .mode(0o644)
                        .open(&path);
                    match f {
                        Ok(f) => return Ok((token, f)),
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                        Err(e) => {
                            return Err(Error::Io {
                                context: format!("create {}", path.display()),
                                source: e,
                            })
                        }
                    }
                }
                Err(e) => {
                    return Err(Error::Io {
                        context: format!("create {}", path.display()),
                        source: e,
                    })
                }
            }
        }
    }

    fn remove_data(&self, token: &str) {
        // A leftover file is garbage, not an error: the sweep will find it.
        let _ = fs::remove_file(self.path_of(token));
    }

    fn lock_stripe(&self, loc: &Locator, exclusive: bool) -> Result<StripeLock<'_>> {
        self.stripes
            .lock(stripe_hash(loc) % LOCK_STRIPES, exclusive)
    }

    /// Takes the object's stripe lock and loads its row, first replaying any journal rows
    /// (which needs the lock exclusive). Under a shared lock the row may come from the cache,
    /// which the stripe's generation keeps exact (see `stripes`).
    fn lock_and_load(
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
    fn replay(&self, oid: i64) -> Result<()> {
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

    fn not_found(&self, loc: &Locator) -> Error {
        match pool_exists(&self.db(), loc.pool) {
            Ok(false) => Error::NoPool(loc.pool.to_string()),
            Ok(true) => Error::NotFound(loc.to_string()),
            Err(e) => e,
        }
    }

    /// The version of the object a read at `snap` sees (caller holds the stripe lock).
    fn stored_at(&self, loc: &Locator, row: Option<ObjRow>, snap: SnapId) -> Result<Stored> {
        let Some(row) = row else {
            return Err(self.not_found(loc));
        };
        if snap == HEAD || snap > row.seq {
            return match row.exists {
                true => Ok(Stored {
                    token: row.token,
                    size: row.size,
                    version: row.version,
                    mtime: row.mtime,
                }),
                false => Err(Error::NotFound(loc.to_string())),
            };
        }
        let clones = load_clones(&self.db(), row.id)?;
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
        found.ok_or_else(|| Error::NotFound(format!("{loc}@{snap}")))
    }

    /// Opens the data of what `snap` sees, holding the stripe lock shared meanwhile.
    fn open_version(
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
    fn extents_of(
        stored: &Stored,
        file: Option<&File>,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, u64)>> {
        let end = offset.saturating_add(len).min(stored.size);
        match file {
            Some(f) if offset < end => {
                files::data_extents(f, offset, end).map_err(io_err("seek data"))
            }
            _ => Ok(Vec::new()),
        }
    }

    fn removed_snaps(&self, pool: PoolId, above: SnapId) -> Result<HashSet<SnapId>> {
        let db = self.db();
        let mut st =
            db.prepare_cached("SELECT snap FROM removed_snaps WHERE pool = ?1 AND snap > ?2")?;
        let rows = st.query_map(params![pool, sql(above)], |r| r.get::<_, i64>(0))?;
        Ok(rows.map(|r| r.map(uns)).collect::<Result<_, _>>()?)
    }

    /// Deletes data files nobody references whose writer is gone: a crashed process's new
    /// files, or old files it had not deleted yet. A writer that was registered when the
    /// snapshot below was taken may still be working, and one registered later has a larger
    /// id (ids only grow), so only files of writers that were gone by then are touched; and
    /// nothing makes a file referenced again once its writer is gone.
    fn sweep_orphans(&self) -> Result<()> {
        let (referenced, live, max_id) = {
            let mut db = self.db();
            let tx = db.transaction()?;
            let referenced: HashSet<String> = tx
                .prepare(
                    "SELECT token FROM objects WHERE token IS NOT NULL UNION SELECT token FROM clones
                     WHERE token IS NOT NULL UNION SELECT token FROM journal",
                )?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let live: HashSet<u64> = tx
                .prepare("SELECT id FROM clients")?
                .query_map([], |r| r.get::<_, i64>(0))?
                .map(|r| r.map(uns))
                .collect::<Result<_, _>>()?;
            let max_id: i64 = tx.query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'clients'",
                [],
                |r| r.get(0),
            )?;
            tx.commit()?;
            (referenced, live, uns(max_id))
        };
        for sub in fs::read_dir(self.root.join("data")).map_err(io_err("read data dir"))? {
            let Ok(sub) = sub else { continue };
            let Ok(entries) = fs::read_dir(sub.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let writer = name
                    .rsplit_once('-')
                    .and_then(|(_, c)| u64::from_str_radix(c, 16).ok());
                let gone = writer.is_some_and(|w| w <= max_id && !live.contains(&w));
                if gone && !referenced.contains(&name) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }

    /// Applies a planned op (caller holds the stripe lock exclusive and loaded `row`).
    fn apply_plan(
        &self,
        loc: &Locator,
        row: Option<ObjRow>,
        p: &Plan,
        snapc: &SnapContext,
    ) -> Result<()> {
        let clones = match &row {
            Some(r) => load_clones(&self.db(), r.id)?,
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
        let data = match self.write_in_page(p, old_token.as_deref(), old_size, clone.is_some())? {
            Some(done) => done,
            None => self.prepare_data(p, old_token.as_deref(), clone.is_some())?,
        };
        let committed = self.commit_op(loc, row.as_ref(), &clones, &ss, clone.as_ref(), p, &data);
        let new_token = match (&committed, &data) {
            (Err(_), DataPlan::NewFile(t)) => {
                self.remove_data(t);
                return committed.map(|_| ());
            }
            (Err(_), DataPlan::InPage { token, offset, old }) => {
                // The metadata did not commit: put the page back as it was.
                if let Ok(f) = self.open_data(token) {
                    let _ = f.write_all_at(old, *offset);
                }
                return committed.map(|_| ());
            }
            (Err(_), _) => return committed.map(|_| ()),
            (Ok(_), DataPlan::NewFile(t)) => Some(t.clone()),
            (Ok(_), DataPlan::Keep | DataPlan::Journal(_) | DataPlan::InPage { .. }) => {
                old_token.clone()
            }
            (Ok(_), DataPlan::NoFile) => None,
        };
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
    /// before the metadata commit and without the journal: the kernel copies one page in one
    /// step, so a SIGKILL leaves it all old or all new, and a failed commit puts the old bytes
    /// back. This is the common case of small random writes (NBD clients' 4 KiB writes).
    /// A tearable op (a client's block write) may span pages: a crash may leave some pages
    /// new, as a disk may.
    fn write_in_page(
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
        let mut old = vec![0u8; len as usize];
        f.read_exact_at(&mut old, offset)
            .map_err(io_err(format!("read {token}")))?;
        f.write_all_at(data, offset)
            .map_err(io_err(format!("write {token}")))?;
        Ok(Some(DataPlan::InPage {
            token: token.to_string(),
            offset,
            old,
        }))
    }

    /// Decides how the data changes and writes any new file (before the metadata commit).
    fn prepare_data(&self, p: &Plan, old_token: Option<&str>, cloning: bool) -> Result<DataPlan> {
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

    fn new_file(&self, base: Option<&str>, p: &Plan) -> Result<DataPlan> {
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

    fn apply_journal(&self, id: i64, token: &str, steps: &[u8], size: u64) -> Result<()> {
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
    #[allow(clippy::too_many_arguments)]
    fn commit_op(
        &self,
        loc: &Locator,
        row: Option<&ObjRow>,
        old_clones: &[CloneRow],
        ss: &SnapSet,
        clone: Option<&CloneInfo>,
        p: &Plan,
        data: &DataPlan,
    ) -> Result<Option<i64>> {
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
            Some(r) => {
                tx.prepare_cached(
                    "UPDATE objects SET seq = ?2, head = ?3, token = ?4, size = ?5, version = ?6, mtime = ?7 WHERE id = ?1",
                )?
                .execute(params![r.id, sql(ss.seq), p.exists_after, token, size, version, mtime])?;
                r.id
            }
            None => tx
                .prepare_cached(
                    "INSERT INTO objects(pool, ns, name, seq, head, token, size, version, mtime)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING id",
                )?
                .query_row(
                    params![
                        loc.pool,
                        loc.namespace,
                        loc.name,
                        sql(ss.seq),
                        p.exists_after,
                        token,
                        size,
                        version,
                        mtime
                    ],
                    |r| r.get(0),
                )?,
        };
        for c in &ss.clones {
            let before = old_clones.iter().find(|o| o.info.id == c.id);
            match (before, row) {
                (None, Some(r)) if clone.is_some_and(|n| n.id == c.id) => {
                    tx.prepare_cached(
                        "INSERT INTO clones(oid, clone_id, snaps, size, overlap, token, version, mtime)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )?
                    .execute(params![
                        oid,
                        sql(c.id),
                        snaps::encode_snaps(&c.snaps),
                        sql(c.size),
                        snaps::encode_ranges(&c.overlap),
                        r.token,
                        sql(r.version),
                        sql(r.mtime)
                    ])?;
                }
                (Some(b), _) if b.info.overlap != c.overlap => {
                    tx.prepare_cached(
                        "UPDATE clones SET overlap = ?3 WHERE oid = ?1 AND clone_id = ?2",
                    )?
                    .execute(params![
                        oid,
                        sql(c.id),
                        snaps::encode_ranges(&c.overlap)
                    ])?;
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
        tx.commit()?;
        Ok(journal)
    }

    /// Drops `snap` from one object's clones, freeing those no snap needs.
    fn trim_object(&self, pool: PoolId, ns: &str, name: &str, snap: SnapId) -> Result<()> {
        let loc = Locator::new(pool, ns, name);
        let (_lock, row) = self.lock_and_load(&loc, true)?;
        let Some(row) = row else { return Ok(()) };
        let clones = load_clones(&self.db(), row.id)?;
        let mut ss = snapset(&row, &clones);
        let freed = snaps::remove_snap(&mut ss, snap);
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut freed_tokens = Vec::new();
        for id in &freed {
            tx.prepare_cached("DELETE FROM clones WHERE oid = ?1 AND clone_id = ?2")?
                .execute(params![row.id, sql(*id)])?;
            if let Some(t) = clones
                .iter()
                .find(|c| c.info.id == *id)
                .and_then(|c| c.token.clone())
            {
                freed_tokens.push(t);
            }
        }
        for c in &ss.clones {
            tx.prepare_cached(
                "UPDATE clones SET snaps = ?3, overlap = ?4 WHERE oid = ?1 AND clone_id = ?2",
            )?
            .execute(params![
                row.id,
                sql(c.id),
                snaps::encode_snaps(&c.snaps),
                snaps::encode_ranges(&c.overlap)
            ])?;
        }
        if !row.exists && ss.clones.is_empty() {
            for table in [
                "DELETE FROM objects WHERE id = ?1",
                "DELETE FROM xattrs WHERE oid = ?1",
                "DELETE FROM omap WHERE oid = ?1",
            ] {
                tx.prepare_cached(table)?.execute([row.id])?;
            }
        }
        tx.commit()?;
        drop(db);
        for t in freed_tokens {
            self.remove_data(&t);
        }
        Ok(())
    }

    /// Runs `f` in a read transaction after checking the object exists at head.
    fn with_head<T>(
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
            None => Err(Error::NotFound(loc.to_string())),
        };
        tx.commit()?;
        out
    }

    fn alive(&self, client: &ClientInfo, starttime: Option<u64>) -> bool {
        client.id == self.client.id || clients::is_alive(client, starttime)
    }
}

enum DataPlan {
    /// The object ends with no data file (absent, or empty).
    NoFile,
    /// The head keeps its current file unchanged.
    Keep,
    /// A new file, already written, replaces the head's.
    NewFile(String),
    /// The head's file changes in place through the journal (encoded steps).
    Journal(Vec<u8>),
    /// One page of the head's file was already rewritten in place; `old` undoes it.
    InPage {
        token: String,
        offset: u64,
        old: Vec<u8>,
    },
}

/// The 256 data subdirectories (by a token's first two hex digits), made once with the store
/// so that writing the first objects is not also making directories (about 5% of a fresh
/// import's time went to `mkdir`).
fn make_fan_out(root: &Path) -> Result<()> {
    for i in 0..256 {
        let dir = root.join("data").join(format!("{i:02x}"));
        fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
    }
    Ok(())
}

fn create_layout(root: &Path) -> Result<()> {
    for sub in ["data", "locks"] {
        fs::create_dir_all(root.join(sub))
            .map_err(io_err(format!("create {}", root.join(sub).display())))?;
    }
    Ok(())
}

/// FNV-1a over the locator: stable across processes, unlike std's hasher.
fn stripe_hash(loc: &Locator) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = loc.pool.to_le_bytes();
    for b in bytes
        .iter()
        .chain([0u8].iter())
        .chain(loc.namespace.as_bytes())
        .chain([0u8].iter())
        .chain(loc.name.as_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Unique enough for file names (creation is exclusive, so a collision only retries).
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn pool_exists(conn: &Connection, pool: PoolId) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM pools WHERE id = ?1")?
        .query_row([pool], |_| Ok(()))
        .optional()?
        .is_some())
}

fn load_row(conn: &Connection, loc: &Locator) -> Result<Option<ObjRow>> {
    let mut st = conn.prepare_cached(
        "SELECT id, seq, head, token, size, version, mtime, EXISTS(SELECT 1 FROM journal j WHERE j.oid = o.id)
         FROM objects o WHERE pool = ?1 AND ns = ?2 AND name = ?3",
    )?;
    let row = st
        .query_row(params![loc.pool, loc.namespace, loc.name], |r| {
            Ok(ObjRow {
                id: r.get(0)?,
                seq: uns(r.get(1)?),
                exists: r.get(2)?,
                token: r.get(3)?,
                size: uns(r.get(4)?),
                version: uns(r.get(5)?),
                mtime: uns(r.get(6)?),
                pending: r.get(7)?,
            })
        })
        .optional()?;
    Ok(row)
}

fn load_clones(conn: &Connection, oid: i64) -> Result<Vec<CloneRow>> {
    let mut st = conn.prepare_cached(
        "SELECT clone_id, snaps, size, overlap, token, version, mtime FROM clones WHERE oid = ?1",
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
        ))
    })?;
    let mut out = Vec::new();
    for item in raw {
        let (id, snaps_text, size, overlap, token, version, mtime) = item?;
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

fn snapset(row: &ObjRow, clones: &[CloneRow]) -> SnapSet {
    SnapSet {
        seq: row.seq,
        clones: clones.iter().map(|c| c.info.clone()).collect(),
        head_size: row.exists.then_some(row.size),
    }
}

fn apply_meta(conn: &Connection, oid: i64, meta: &[MetaStep]) -> Result<()> {
    for step in meta {
        match *step {
            MetaStep::SetXattr(name, value) => {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO xattrs(oid, name, value) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![oid, name, value])?;
            }
            MetaStep::RmXattr(name) => {
                conn.prepare_cached("DELETE FROM xattrs WHERE oid = ?1 AND name = ?2")?
                    .execute(params![oid, name])?;
            }
            MetaStep::OmapSet(kv) => {
                let mut st = conn.prepare_cached(
                    "INSERT OR REPLACE INTO omap(oid, key, value) VALUES (?1, ?2, ?3)",
                )?;
                for (k, v) in kv {
                    st.execute(params![oid, k, v])?;
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

impl Drop for DirStore {
    fn drop(&mut self) {
        let id = sql(self.client.id);
        let db = self.db();
        for q in [
            "DELETE FROM locks WHERE client = ?1",
            "DELETE FROM watchers WHERE client = ?1",
            "DELETE FROM clients WHERE id = ?1",
        ] {
            let _ = db.execute(q, [id]);
        }
    }
}

impl ObjectStore for DirStore {
    fn create_pool(&self, name: &str) -> Result<PoolId> {
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if tx
            .query_row("SELECT 1 FROM pools WHERE name = ?1", [name], |_| Ok(()))
            .optional()?
            .is_some()
        {
            return Err(Error::Exists(format!("pool {name}")));
        }
        let id = tx.query_row(
            "INSERT INTO pools(name) VALUES (?1) RETURNING id",
            [name],
            |r| r.get(0),
        )?;
        tx.commit()?;
        Ok(id)
    }

    fn remove_pool(&self, name: &str) -> Result<()> {
        // Every stripe held exclusively (and so bumped) across the change: no handle keeps a
        // cached row of the removed pool. Taken in order and before the database, as always.
        let all = (0..LOCK_STRIPES)
            .map(|i| self.stripes.lock(i, true))
            .collect::<Result<Vec<_>>>()?;
        let tokens: Vec<String> = {
            let mut db = self.db();
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let id: Option<i64> = tx
                .query_row("SELECT id FROM pools WHERE name = ?1", [name], |r| r.get(0))
                .optional()?;
            let Some(id) = id else {
                return Err(Error::NoPool(name.to_string()));
            };
            let tokens = tx
                .prepare(
                    "SELECT token FROM objects WHERE pool = ?1 AND token IS NOT NULL UNION
                     SELECT c.token FROM clones c JOIN objects o ON o.id = c.oid WHERE o.pool = ?1 AND c.token IS NOT NULL",
                )?
                .query_map([id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for table in ["xattrs", "omap", "clones", "journal"] {
                tx.execute(
                    &format!(
                        "DELETE FROM {table} WHERE oid IN (SELECT id FROM objects WHERE pool = ?1)"
                    ),
                    [id],
                )?;
            }
            for table in ["objects", "removed_snaps", "locks", "watchers"] {
                tx.execute(&format!("DELETE FROM {table} WHERE pool = ?1"), [id])?;
            }
            tx.execute("DELETE FROM pools WHERE id = ?1", [id])?;
            tx.commit()?;
            tokens
        };
        drop(all);
        for t in tokens {
            self.remove_data(&t);
        }
        Ok(())
    }

    fn list_pools(&self) -> Result<Vec<(PoolId, String)>> {
        let db = self.db();
        let mut st = db.prepare_cached("SELECT id, name FROM pools ORDER BY id")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn pool_id(&self, name: &str) -> Result<PoolId> {
        let db = self.db();
        let id = db
            .prepare_cached("SELECT id FROM pools WHERE name = ?1")?
            .query_row([name], |r| r.get(0))
            .optional()?;
        id.ok_or_else(|| Error::NoPool(name.to_string()))
    }

    fn pool_name(&self, id: PoolId) -> Result<String> {
        let db = self.db();
        let name = db
            .prepare_cached("SELECT name FROM pools WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        name.ok_or_else(|| Error::NoPool(id.to_string()))
    }

    fn list_objects(&self, pool: PoolId, namespace: Option<&str>) -> Result<Vec<Locator>> {
        let mut db = self.db();
        let tx = db.transaction()?;
        if !pool_exists(&tx, pool)? {
            return Err(Error::NoPool(pool.to_string()));
        }
        let mut st = tx.prepare_cached(
            "SELECT ns, name FROM objects WHERE pool = ?1 AND head = 1 AND (?2 IS NULL OR ns = ?2) ORDER BY ns, name",
        )?;
        let rows = st.query_map(params![pool, namespace], |r| {
            Ok(Locator {
                pool,
                namespace: r.get(0)?,
                name: r.get(1)?,
            })
        })?;
        let out = rows.collect::<Result<_, _>>()?;
        drop(st);
        tx.commit()?;
        Ok(out)
    }

    fn snap_create(&self, pool: PoolId) -> Result<SnapId> {
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let seq: Option<i64> = tx
            .query_row(
                "UPDATE pools SET snap_seq = snap_seq + 1 WHERE id = ?1 RETURNING snap_seq",
                [pool],
                |r| r.get(0),
            )
            .optional()?;
        let seq = seq.ok_or_else(|| Error::NoPool(pool.to_string()))?;
        tx.commit()?;
        Ok(uns(seq))
    }

    fn snap_remove(&self, pool: PoolId, snap: SnapId) -> Result<()> {
        let objects: Vec<(String, String)> = {
            let mut db = self.db();
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let seq: Option<i64> = tx
                .query_row("SELECT snap_seq FROM pools WHERE id = ?1", [pool], |r| {
                    r.get(0)
                })
                .optional()?;
            let seq = uns(seq.ok_or_else(|| Error::NoPool(pool.to_string()))?);
            if snap == 0 || snap > seq {
                return Err(Error::Invalid(format!(
                    "pool {pool}: snapshot {snap} was never created"
                )));
            }
            tx.execute(
                "INSERT OR IGNORE INTO removed_snaps(pool, snap) VALUES (?1, ?2)",
                params![pool, sql(snap)],
            )?;
            let objects = tx
                .prepare(
                    "SELECT DISTINCT o.ns, o.name FROM objects o JOIN clones c ON c.oid = o.id
                     WHERE o.pool = ?1 AND (',' || c.snaps || ',') LIKE ('%,' || ?2 || ',%')",
                )?
                .query_map(params![pool, snap.to_string()], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<Result<_, _>>()?;
            tx.commit()?;
            objects
        };
        for (ns, name) in objects {
            self.trim_object(pool, &ns, &name, snap)?;
        }
        Ok(())
    }

    fn operate(&self, loc: &Locator, op: &WriteOp, snapc: &SnapContext) -> Result<()> {
        snaps::validate_snapc(snapc)?;
        let (_lock, row) = self.lock_and_load(loc, true)?;
        let head_id = row.as_ref().filter(|r| r.exists).map(|r| r.id);
        let lookup = |sql: &str, key: &str| -> Result<Option<Vec<u8>>> {
            let Some(oid) = head_id else { return Ok(None) };
            let db = self.db();
            let value = db
                .prepare_cached(sql)?
                .query_row(params![oid, key], |r| r.get(0))
                .optional()?;
            Ok(value)
        };
        let xattr = |n: &str| lookup("SELECT value FROM xattrs WHERE oid = ?1 AND name = ?2", n);
        let omap = |k: &str| lookup("SELECT value FROM omap WHERE oid = ?1 AND key = ?2", k);
        let view = View {
            exists: head_id.is_some(),
            size: row.as_ref().filter(|r| r.exists).map_or(0, |r| r.size),
            xattr: &xattr,
            omap: &omap,
        };
        let mut p = plan::plan(loc, &op.ops, &view)?;
        p.tearable = op.tearable;
        if !p.mutates {
            if row.is_none() && !pool_exists(&self.db(), loc.pool)? {
                return Err(Error::NoPool(loc.pool.to_string()));
            }
            return Ok(());
        }
        self.apply_plan(loc, row, &p, snapc)
    }

    fn read(&self, loc: &Locator, snap: SnapId, offset: u64, len: u64) -> Result<Vec<u8>> {
        let (_lock, stored, file) = self.open_version(loc, snap)?;
        files::read_at(file.as_ref(), offset, len, stored.size).map_err(|e| Error::Io {
            context: format!("read {loc}"),
            source: e,
        })
    }

    fn read_into(&self, loc: &Locator, snap: SnapId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let (_lock, stored, file) = self.open_version(loc, snap)?;
        files::read_into(file.as_ref(), offset, buf, stored.size).map_err(|e| Error::Io {
            context: format!("read {loc}"),
            source: e,
        })
    }

    fn sparse_read(
        &self,
        loc: &Locator,
        snap: SnapId,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        let (_lock, stored, file) = self.open_version(loc, snap)?;
        let extents = Self::extents_of(&stored, file.as_ref(), offset, len)?;
        extents
            .into_iter()
            .map(|(o, l)| {
                Ok((
                    o,
                    files::read_at(file.as_ref(), o, l, stored.size)
                        .map_err(io_err(format!("read {loc}")))?,
                ))
            })
            .collect()
    }

    fn map_extents(
        &self,
        loc: &Locator,
        snap: SnapId,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, u64)>> {
        let (_lock, stored, file) = self.open_version(loc, snap)?;
        Self::extents_of(&stored, file.as_ref(), offset, len)
    }

    fn stat(&self, loc: &Locator, snap: SnapId) -> Result<ObjectStat> {
        let (_lock, row) = self.lock_and_load(loc, false)?;
        let s = self.stored_at(loc, row, snap)?;
        Ok(ObjectStat {
            size: s.size,
            version: s.version,
            mtime: s.mtime,
        })
    }

    fn list_snaps(&self, loc: &Locator) -> Result<SnapSet> {
        let (_lock, row) = self.lock_and_load(loc, false)?;
        let Some(row) = row else {
            return Err(self.not_found(loc));
        };
        let clones = load_clones(&self.db(), row.id)?;
        Ok(snapset(&row, &clones))
    }

    fn get_xattr(&self, loc: &Locator, name: &str) -> Result<Vec<u8>> {
        let value = self.with_head(loc, |db, oid| {
            let st = db.prepare_cached("SELECT value FROM xattrs WHERE oid = ?1 AND name = ?2");
            Ok(st?.query_row(params![oid, name], |r| r.get(0)).optional()?)
        })?;
        value.ok_or_else(|| Error::NotFound(format!("{loc} xattr {name:?}")))
    }

    fn get_xattrs(&self, loc: &Locator) -> Result<BTreeMap<String, Vec<u8>>> {
        self.with_head(loc, |db, oid| {
            let mut st = db.prepare_cached("SELECT name, value FROM xattrs WHERE oid = ?1")?;
            let rows = st.query_map([oid], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn omap_get(
        &self,
        loc: &Locator,
        start_after: &str,
        prefix: &str,
        max: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        self.with_head(loc, |db, oid| {
            let mut st = db
                .prepare_cached("SELECT key, value FROM omap WHERE oid = ?1 AND key > ?2 AND key >= ?3 ORDER BY key")?;
            let mut rows = st.query(params![oid, start_after, prefix])?;
            let mut out = Vec::new();
            while out.len() < max {
                let Some(r) = rows.next()? else { break };
                let key: String = r.get(0)?;
                if !key.starts_with(prefix) {
                    break;
                }
                out.push((key, r.get(1)?));
            }
            Ok(out)
        })
    }

    fn omap_get_keys(&self, loc: &Locator, keys: &[&str]) -> Result<BTreeMap<String, Vec<u8>>> {
        self.with_head(loc, |db, oid| {
            let mut st = db.prepare_cached("SELECT value FROM omap WHERE oid = ?1 AND key = ?2")?;
            let mut out = BTreeMap::new();
            for k in keys {
                if let Some(v) = st.query_row(params![oid, k], |r| r.get(0)).optional()? {
                    out.insert(k.to_string(), v);
                }
            }
            Ok(out)
        })
    }

    fn client(&self) -> ClientInfo {
        self.client.clone()
    }

    fn lock(
        &self,
        loc: &Locator,
        name: &str,
        cookie: &str,
        description: &str,
        exclusive: bool,
    ) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if !pool_exists(&tx, loc.pool)? {
            return Err(Error::NoPool(loc.pool.to_string()));
        }
        let holders = lockers(&tx, loc, name)?;
        let mut live = Vec::new();
        for (info, starttime) in holders {
            if self.alive(&info.client, starttime) {
                live.push(info);
            } else {
                tx.prepare_cached(
                    "DELETE FROM locks WHERE pool = ?1 AND ns = ?2 AND name = ?3 AND lock_name = ?4 AND client = ?5",
                )?
                .execute(params![loc.pool, loc.namespace, loc.name, name, sql(info.client.id)])?;
            }
        }
        if live
            .iter()
            .any(|h| h.client.id == self.client.id && h.cookie == cookie)
        {
            return Err(Error::Exists(format!(
                "{loc} lock {name:?} cookie {cookie:?}"
            )));
        }
        if !live.is_empty() && (exclusive || live.iter().any(|h| h.exclusive)) {
            return Err(Error::Busy(format!("{loc} lock {name:?}")));
        }
        tx.prepare_cached(
            "INSERT INTO locks(pool, ns, name, lock_name, client, cookie, description, exclusive)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            loc.pool,
            loc.namespace,
            loc.name,
            name,
            sql(self.client.id),
            cookie,
            description,
            exclusive
        ])?;
        tx.commit()?;
        Ok(())
    }

    fn unlock(&self, loc: &Locator, name: &str, cookie: &str) -> Result<()> {
        self.break_lock(loc, name, self.client.id, cookie)
    }

    fn break_lock(&self, loc: &Locator, name: &str, client_id: u64, cookie: &str) -> Result<()> {
        let db = self.db();
        let n = db
            .prepare_cached(
                "DELETE FROM locks WHERE pool = ?1 AND ns = ?2 AND name = ?3 AND lock_name = ?4 AND client = ?5 AND cookie = ?6",
            )?
            .execute(params![loc.pool, loc.namespace, loc.name, name, sql(client_id), cookie])?;
        if n == 0 {
            return Err(Error::NotFound(format!(
                "{loc} lock {name:?} held by client {client_id} cookie {cookie:?}"
            )));
        }
        Ok(())
    }

    fn list_lockers(&self, loc: &Locator, name: &str) -> Result<Vec<LockInfo>> {
        let db = self.db();
        if !pool_exists(&db, loc.pool)? {
            return Err(Error::NoPool(loc.pool.to_string()));
        }
        let holders = lockers(&db, loc, name)?;
        Ok(holders
            .into_iter()
            .filter(|(h, start)| self.alive(&h.client, *start))
            .map(|(h, _)| h)
            .collect())
    }

    fn watch(&self, loc: &Locator) -> Result<u64> {
        let mut db = self.db();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists = tx
            .prepare_cached(
                "SELECT 1 FROM objects WHERE pool = ?1 AND ns = ?2 AND name = ?3 AND head = 1",
            )?
            .query_row(params![loc.pool, loc.namespace, loc.name], |_| Ok(()))
            .optional()?;
        if exists.is_none() {
            return Err(Error::NotFound(loc.to_string()));
        }
        let cookie: i64 = tx
            .prepare_cached("INSERT INTO watchers(pool, ns, name, client) VALUES (?1, ?2, ?3, ?4) RETURNING cookie")?
            .query_row(params![loc.pool, loc.namespace, loc.name, sql(self.client.id)], |r| r.get(0))?;
        tx.commit()?;
        Ok(uns(cookie))
    }

    fn unwatch(&self, loc: &Locator, cookie: u64) -> Result<()> {
        let db = self.db();
        let n = db
            .prepare_cached(
                "DELETE FROM watchers WHERE cookie = ?1 AND pool = ?2 AND ns = ?3 AND name = ?4",
            )?
            .execute(params![sql(cookie), loc.pool, loc.namespace, loc.name])?;
        if n == 0 {
            return Err(Error::NotFound(format!("{loc} watch {cookie}")));
        }
        Ok(())
    }

    fn list_watchers(&self, loc: &Locator) -> Result<Vec<Watcher>> {
        self.with_head(loc, |db, _| {
            let mut st = db.prepare_cached(
                "SELECT w.cookie, c.id, c.host, c.pid, c.since, c.starttime FROM watchers w JOIN clients c ON c.id = w.client
                 WHERE w.pool = ?1 AND w.ns = ?2 AND w.name = ?3 ORDER BY w.cookie",
            )?;
            let rows = st.query_map(params![loc.pool, loc.namespace, loc.name], |r| {
                let client = ClientInfo { id: uns(r.get(1)?), host: r.get(2)?, pid: r.get(3)?, since: uns(r.get(4)?) };
                Ok((Watcher { client, cookie: uns(r.get(0)?) }, Some(uns(r.get(5)?))))
            })?;
            let all: Vec<(Watcher, Option<u64>)> = rows.collect::<Result<_, _>>()?;
            Ok(all.into_iter().filter(|(w, start)| self.alive(&w.client, *start)).map(|(w, _)| w).collect())
        })
    }

    /// `syncfs` on the store's file system: the data files written by any process (their
    /// names are not known here), and the database with its WAL.
    fn flush_all(&self) -> Result<()> {
        self.flush()?;
        let root =
            File::open(&self.root).map_err(io_err(format!("open {}", self.root.display())))?;
        // SAFETY: syncfs on a descriptor we own; no memory is passed.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&root)) } != 0 {
            return Err(Error::Io {
                context: format!("syncfs {}", self.root.display()),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        let tokens = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()));
        let mut dirs = BTreeSet::new();
        let tokens: Vec<&String> = tokens.iter().collect();
        // Batches bound the open descriptors. Writeback of a whole batch is started before the
        // first fsync, so the disk sees it all at once instead of one file per fsync round trip
        // (256 dirty 4 MiB objects: 0.7 s of fsyncs in turn before this).
        for batch in tokens.chunks(FLUSH_BATCH) {
            let mut open = Vec::with_capacity(batch.len());
            for t in batch {
                let path = self.path_of(t);
                match File::open(&path) {
                    Ok(f) => {
                        files::start_writeback(&f);
                        open.push((path, f));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(Error::Io {
                            context: format!("open {}", path.display()),
                            source: e,
                        })
                    }
                }
            }
            for (path, f) in open {
                f.sync_all().map_err(|e| Error::Io {
                    context: format!("fsync {}", path.display()),
                    source: e,
                })?;
                if let Some(parent) = path.parent() {
                    dirs.insert(parent.to_path_buf());
                }
            }
        }
        // Committed metadata lives in the WAL until a checkpoint copies it into the database
        // (SQLite fsyncs the database itself when it checkpoints). Never open `meta.sqlite`
        // here: closing any descriptor of it drops every POSIX lock this process holds on it,
        // SQLite's shared lock included, and another process closing its connection then
        // takes itself for the last one and deletes the WAL under us (our later commits went
        // to an unlinked file: issue 13 point 7). SQLite locks the WAL file through `-shm`,
        // never the WAL itself, so its descriptor is safe to open and close.
        dirs.insert(self.root.join("meta.sqlite-wal"));
        dirs.insert(self.root.clone());
        for path in dirs {
            match File::open(&path) {
                Ok(f) => f
                    .sync_all()
                    .map_err(io_err(format!("fsync {}", path.display())))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::Io {
                        context: format!("open {}", path.display()),
                        source: e,
                    })
                }
            }
        }
        Ok(())
    }
}

/// Holders of a lock with their start time (for the liveness check).
fn lockers(conn: &Connection, loc: &Locator, name: &str) -> Result<Vec<(LockInfo, Option<u64>)>> {
    let mut st = conn.prepare_cached(
        "SELECT l.cookie, l.description, l.exclusive, l.client, c.host, c.pid, c.since, c.starttime
         FROM locks l LEFT JOIN clients c ON c.id = l.client
         WHERE l.pool = ?1 AND l.ns = ?2 AND l.name = ?3 AND l.lock_name = ?4 ORDER BY l.client, l.cookie",
    )?;
    let rows = st.query_map(params![loc.pool, loc.namespace, loc.name, name], |r| {
        // A holder whose client row is gone is dead (no start time).
        let client = ClientInfo {
            id: uns(r.get(3)?),
            host: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
            pid: r.get::<_, Option<u32>>(5)?.unwrap_or(0),
            since: r.get::<_, Option<i64>>(6)?.map_or(0, uns),
        };
        let info = LockInfo {
            name: name.to_string(),
            client,
            cookie: r.get(0)?,
            description: r.get(1)?,
            exclusive: r.get(2)?,
        };
        Ok((info, r.get::<_, Option<i64>>(7)?.map(uns)))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
