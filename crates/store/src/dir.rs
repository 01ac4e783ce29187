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
//! A client's write inside the file's size commits first and then rewrites the file in place;
//! the crc32c sums of each 4 KiB block (see `sums`), committed with the metadata of every
//! change, accept the old and the new bytes of such a block, so a torn write reads old or new.
//! Files a crashed process left unreferenced are swept when the next writer registers.
//!
//! Files: `db` (opening, schema), `layout` (the root, modes), `clients` (who is alive),
//! `rows` (an object's rows, what a read sees), `write` (applying a write op), `trim`
//! (snapshot trimming), `sweep` (orphan files), `holders` (locks, watchers), `sync`
//! (durability), `sums` (data checksums), `crc` (crc32c of many blocks at once), `values`
//! (metadata value checksums), `row_sums` (object and clone row checksums), `scrub`, `files`
//! (sparse file primitives), `stripes` (stripe locks, row cache).

mod clients;
mod crc;
mod db;
mod files;
mod holders;
mod layout;
mod row_sums;
mod rows;
mod scrub;
mod stripes;
mod sums;
mod sweep;
mod sync;
mod trim;
mod values;
mod write;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use self::rows::{load_clones, pool_exists, snapset, ObjRow};
use self::stripes::{RowCache, StripeLock, Stripes};
use self::values::Kind;
use crate::plan::{self, View};
use crate::snaps;
use crate::{
    ClientInfo, Error, Locator, LockInfo, ObjectStat, ObjectStore, PoolId, Result, ScrubReport,
    SnapContext, SnapId, SnapSet, Watcher, WriteOp, HEAD,
};

const LOCK_STRIPES: u64 = 64;
/// The cookie of a watch a full disk kept from being written down (real ones start at 1).
const UNRECORDED_WATCH: u64 = 0;

pub struct DirStore {
    root: PathBuf,
    conn: Mutex<Connection>,
    /// Opened on a full disk that had no room for SQLite's shared-memory file (see `db`).
    read_only: bool,
    /// Data blocks carry crc32c sums, checked on read (see `sums`).
    checksums: bool,
    client: clients::Registration,
    /// Files written since the last `flush`, to fsync then.
    dirty: Mutex<BTreeSet<String>>,
    stripes: Stripes,
    /// Head rows (or their absence), valid while their stripe's generation holds.
    rows: RowCache<Locator, Option<ObjRow>>,
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

impl DirStore {
    /// Opens a store at `root`, creating it if the root does not exist or is empty (see
    /// `layout`). Safe to call from several processes at once; the first open creates pool
    /// `rbd`. Opening writes nothing to an existing store: the client row is registered
    /// by the first operation that needs one (see `clients`), so reads work on a full disk.
    pub fn open(root: &Path) -> Result<Self> {
        layout::prepare_root(root)?;
        let (conn, fresh, read_only) = db::open(root)?;
        let checksums = db::has_checksums(&conn)?;
        layout::create_layout(root)?;
        if fresh {
            make_fan_out(root)?;
        }
        Ok(DirStore {
            root: root.to_path_buf(),
            conn: Mutex::new(conn),
            read_only,
            checksums,
            client: clients::Registration::new(),
            dirty: Mutex::new(BTreeSet::new()),
            stripes: Stripes::new(root.join("locks"), LOCK_STRIPES),
            rows: RowCache::new(),
        })
    }

    /// This handle's client row, registered now if it is not yet; a first registration
    /// also reaps dead clients and sweeps what they left.
    fn me(&self) -> Result<&ClientInfo> {
        self.writable()?;
        let (me, reaped) = self.client.get_or_register(&mut self.db())?;
        if reaped {
            // Best effort: a failed sweep leaves garbage files, never wrong data.
            let _ = self.sweep_orphans();
        }
        Ok(me)
    }

    /// Fails with ENOSPC on a store opened read-only for want of space, before any change.
    fn writable(&self) -> Result<()> {
        if !self.read_only {
            return Ok(());
        }
        Err(Error::Io {
            context: format!(
                "{} was opened read-only: the disk was full",
                self.root.display()
            ),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        })
    }

    /// Our client id, or 0 (no client has it) before we registered.
    fn my_id(&self) -> u64 {
        self.client.id()
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
            let token = format!("{:016x}-{:x}", random_u64(), self.me()?.id);
            let path = self.path_of(&token);
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(layout::FILE_MODE)
                .open(&path)
            {
                Ok(f) => {
                    layout::set_mode(&f, layout::FILE_MODE)
                        .map_err(io_err(format!("chmod {}", path.display())))?;
                    return Ok((token, f));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                // A store made before fan-out directories were made up front lacks some.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if let Some(parent) = path.parent() {
                        layout::make_dir(parent)?;
                    }
                    let f = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .mode(layout::FILE_MODE)
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
}

/// The 256 data subdirectories (by a token's first two hex digits), made once with the store
/// so that writing the first objects is not also making directories (about 5% of a fresh
/// import's time went to `mkdir`).
fn make_fan_out(root: &Path) -> Result<()> {
    for i in 0..256 {
        layout::make_dir(&root.join("data").join(format!("{i:02x}")))?;
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

impl Drop for DirStore {
    fn drop(&mut self) {
        let Some(id) = self.client.registered().map(|c| sql(c.id)) else {
            return;
        };
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

impl DirStore {
    /// Objects of a pool (one namespace or all) whose row matches `filter`, sorted.
    fn list_where(
        &self,
        pool: PoolId,
        namespace: Option<&str>,
        filter: &str,
    ) -> Result<Vec<Locator>> {
        let mut db = self.db();
        let tx = db.transaction()?;
        if !pool_exists(&tx, pool)? {
            return Err(Error::NoPool(pool.to_string()));
        }
        let mut st = tx.prepare_cached(&format!(
            "SELECT o.ns, o.name FROM objects o WHERE o.pool = ?1 AND {filter} AND (?2 IS NULL OR o.ns = ?2) ORDER BY o.ns, o.name"
        ))?;
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
}

impl ObjectStore for DirStore {
    fn create_pool(&self, name: &str) -> Result<PoolId> {
        self.writable()?;
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
        self.writable()?;
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
            if self.checksums {
                for t in &tokens {
                    let t: &String = t;
                    sums::drop_rows(&tx, t)?;
                }
            }
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
        self.list_where(pool, namespace, "o.head = 1")
    }

    fn list_all_objects(&self, pool: PoolId, namespace: Option<&str>) -> Result<Vec<Locator>> {
        self.list_where(
            pool,
            namespace,
            "(o.head = 1 OR EXISTS (SELECT 1 FROM clones c WHERE c.oid = o.id))",
        )
    }

    fn snap_create(&self, pool: PoolId) -> Result<SnapId> {
        self.writable()?;
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
        self.writable()?;
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
        let lookup = |kind: Kind, key: &str| -> Result<Option<Vec<u8>>> {
            let Some(oid) = head_id else { return Ok(None) };
            values::fetch(&self.db(), loc, kind, oid, key)
        };
        let xattr = |n: &str| lookup(Kind::Xattr, n);
        let omap = |k: &str| lookup(Kind::Omap, k);
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
        self.writable()?;
        self.apply_plan(loc, row, &p, snapc)
    }

    fn read(&self, loc: &Locator, snap: SnapId, offset: u64, len: u64) -> Result<Vec<u8>> {
        let (_lock, stored, file) = self.open_version(loc, snap)?;
        let n = offset
            .saturating_add(len)
            .min(stored.size)
            .saturating_sub(offset);
        let mut data = vec![0u8; n as usize];
        self.read_checked(loc, &stored, file.as_ref(), offset, &mut data)?;
        Ok(data)
    }

    fn read_into(&self, loc: &Locator, snap: SnapId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let (_lock, stored, file) = self.open_version(loc, snap)?;
        self.read_checked(loc, &stored, file.as_ref(), offset, buf)
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
        let pieces = extents
            .into_iter()
            .map(|(o, l)| {
                let data = files::read_at(file.as_ref(), o, l, stored.size)
                    .map_err(io_err(format!("read {loc}")))?;
                Ok((o, data))
            })
            .collect::<Result<Vec<_>>>()?;
        self.verify_pieces(loc, &stored, file.as_ref(), &pieces)?;
        Ok(pieces)
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
            return Err(self.not_found(loc, HEAD));
        };
        let clones = load_clones(&self.db(), loc, row.id)?;
        Ok(snapset(&row, &clones))
    }

    fn get_xattr(&self, loc: &Locator, name: &str) -> Result<Vec<u8>> {
        let value = self.with_head(loc, |db, oid| {
            values::fetch(db, loc, Kind::Xattr, oid, name)
        })?;
        value.ok_or_else(|| Error::no_key(loc, name))
    }

    fn get_xattrs(&self, loc: &Locator) -> Result<BTreeMap<String, Vec<u8>>> {
        self.with_head(loc, |db, oid| {
            let mut st = db.prepare_cached("SELECT name, value, crc FROM xattrs WHERE oid = ?1")?;
            let rows = st.query_map([oid], |r| {
                Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
            })?;
            let mut out = BTreeMap::new();
            for row in rows {
                let (name, v, crc) = row?;
                let v = values::checked(loc, Kind::Xattr, &name, v, crc)?;
                out.insert(name, v);
            }
            Ok(out)
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
                .prepare_cached("SELECT key, value, crc FROM omap WHERE oid = ?1 AND key > ?2 AND key >= ?3 ORDER BY key")?;
            let mut rows = st.query(params![oid, start_after, prefix])?;
            let mut out = Vec::new();
            while out.len() < max {
                let Some(r) = rows.next()? else { break };
                let key: String = r.get(0)?;
                if !key.starts_with(prefix) {
                    break;
                }
                let v = values::checked(loc, Kind::Omap, &key, r.get(1)?, r.get(2)?)?;
                out.push((key, v));
            }
            Ok(out)
        })
    }

    fn omap_get_keys(&self, loc: &Locator, keys: &[&str]) -> Result<BTreeMap<String, Vec<u8>>> {
        self.with_head(loc, |db, oid| {
            let mut out = BTreeMap::new();
            for k in keys {
                if let Some(v) = values::fetch(db, loc, Kind::Omap, oid, k)? {
                    out.insert(k.to_string(), v);
                }
            }
            Ok(out)
        })
    }

    /// Registers the client if it is not yet; on a store that cannot take the row (a full
    /// disk), an unregistered client with id 0, which owns nothing.
    fn client(&self) -> ClientInfo {
        match self.me() {
            Ok(me) => me.clone(),
            Err(_) => self.client.unregistered(),
        }
    }

    fn unlock(&self, loc: &Locator, name: &str, cookie: &str) -> Result<()> {
        self.break_lock(loc, name, self.my_id(), cookie)
    }

    fn lock(
        &self,
        loc: &Locator,
        name: &str,
        cookie: &str,
        description: &str,
        exclusive: bool,
    ) -> Result<()> {
        self.do_lock(loc, name, cookie, description, exclusive)
    }

    fn break_lock(&self, loc: &Locator, name: &str, client_id: u64, cookie: &str) -> Result<()> {
        self.do_break_lock(loc, name, client_id, cookie)
    }

    fn list_lockers(&self, loc: &Locator, name: &str) -> Result<Vec<LockInfo>> {
        self.do_list_lockers(loc, name)
    }

    fn watch(&self, loc: &Locator) -> Result<u64> {
        self.do_watch(loc)
    }

    fn unwatch(&self, loc: &Locator, cookie: u64) -> Result<()> {
        self.do_unwatch(loc, cookie)
    }

    fn list_watchers(&self, loc: &Locator) -> Result<Vec<Watcher>> {
        self.do_list_watchers(loc)
    }

    fn flush_all(&self) -> Result<()> {
        self.do_flush_all()
    }

    fn flush(&self) -> Result<()> {
        self.do_flush()
    }

    fn scrub(&self, pool: Option<PoolId>) -> Result<ScrubReport> {
        self.do_scrub(pool)
    }
}
