//! The metadata database: opening it (also on a full disk), its schema, and what SQLite's
//! errors mean to callers.
//!
//! On a full disk an existing store must still be readable. Opening it writes nothing (the
//! schema exists, the client row waits for a writer, see `clients`), but the first process to
//! open a WAL database makes its shared-memory index, which needs a page of free space. When
//! that fails and no WAL is left over (a WAL exists while anyone has the store open, or after
//! a crash), every commit is in the database file itself, so it is opened immutable and
//! read-only instead: reads see exactly the last commit, and every write fails with ENOSPC
//! before it starts (`DirStore::writable`).

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::layout;
use super::row_sums::{CloneCols, ObjectCols};
use crate::{Error, Result};

/// Opens the database at `root`; returns it, whether this call made the store, and whether
/// it is the full-disk read-only fallback.
pub(super) fn open(root: &Path) -> Result<(Connection, bool, bool)> {
    match open_writable(root) {
        Ok((conn, fresh)) => Ok((conn, fresh, false)),
        Err(e) if out_of_space(&e) && !wal_left(root) => Ok((open_immutable(root)?, false, true)),
        Err(e) => Err(e.into()),
    }
}

fn open_writable(root: &Path) -> std::result::Result<(Connection, bool), OpenError> {
    let mut conn = Connection::open_with_flags(
        root.join(layout::DB_FILE),
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_WAIT)?;
    conn.set_prepared_statement_cache_capacity(64);
    let mode = switch_to_wal(&conn)?;
    if !mode.eq_ignore_ascii_case("wal") {
        let why = format!("cannot use WAL mode (got {mode})");
        return Err(Error::Db {
            context: DB.into(),
            source: why.into(),
        }
        .into());
    }
    // Every checkpoint fsyncs the WAL and the database. At the default 1000 pages, a
    // stream of 1 MiB journaled writes checkpointed every fourth write; at 64 MiB the
    // journal rows' pages, reused write after write, are mostly copied once.
    conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=16384;")?;
    let fresh = init_schema(&mut conn, root)?;
    Ok((conn, fresh))
}

/// Puts the database in WAL mode (kept in the file, so a no-op after the first time).
/// SQLite answers a journal-mode change that meets another connection's lock with
/// SQLITE_BUSY at once, without calling the busy handler, so processes opening a fresh store
/// together retry here for as long as the busy timeout would have waited.
fn switch_to_wal(conn: &Connection) -> rusqlite::Result<String> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)) {
            Err(e) if busy(&e) && started.elapsed() < BUSY_WAIT => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// How long a statement waits for another process's lock before failing.
const BUSY_WAIT: Duration = Duration::from_secs(30);

fn busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Why opening failed, keeping SQLite's code to tell a full disk from the rest.
enum OpenError {
    Sqlite(rusqlite::Error),
    Store(Error),
}

impl From<rusqlite::Error> for OpenError {
    fn from(e: rusqlite::Error) -> Self {
        OpenError::Sqlite(e)
    }
}

impl From<Error> for OpenError {
    fn from(e: Error) -> Self {
        OpenError::Store(e)
    }
}

impl From<OpenError> for Error {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Sqlite(e) => e.into(),
            OpenError::Store(e) => e,
        }
    }
}

/// A full disk shows as SQLITE_FULL, or as an I/O error growing the shared-memory file.
fn out_of_space(e: &OpenError) -> bool {
    matches!(
        e,
        OpenError::Sqlite(e) if matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure)
        )
    )
}

/// Whether a WAL with content exists (someone has the store open, or crashed with commits
/// not yet copied into the database file).
fn wal_left(root: &Path) -> bool {
    std::fs::metadata(root.join(format!("{}-wal", layout::DB_FILE))).is_ok_and(|m| m.len() > 0)
}

fn open_immutable(root: &Path) -> Result<Connection> {
    let uri = format!(
        "file:{}?immutable=1",
        uri_path(&root.join(layout::DB_FILE).to_string_lossy())
    );
    let conn = Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.set_prepared_statement_cache_capacity(64);
    let made = conn
        .query_row("SELECT 1 FROM meta WHERE key = 'format'", [], |_| Ok(()))
        .optional()?;
    if made.is_none() {
        return Err(Error::Corrupt(format!(
            "{} holds no store",
            root.join(layout::DB_FILE).display()
        )));
    }
    Ok(conn)
}

/// A path as a `file:` URI's path: `%`, `?` and `#` (and anything not printable ASCII)
/// escaped.
fn uri_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'%' | b'?' | b'#') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Makes the schema (and pool `rbd` in a new store) unless it is there; returns whether
/// this call made the store. A database without a store in it over existing data files is
/// a store that lost its metadata (see `layout`): an error, not a new store.
fn init_schema(conn: &mut Connection, root: &Path) -> std::result::Result<bool, OpenError> {
    let made = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE name = 'meta'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some()
        && conn
            .query_row("SELECT 1 FROM meta WHERE key = 'format'", [], |_| Ok(()))
            .optional()?
            .is_some();
    if made {
        // An existing store: nothing to write (so opening works on a full disk), unless it
        // predates the checksum columns.
        upgrade(conn)?;
        return Ok(false);
    }
    if layout::has_data_files(root) {
        return Err(Error::Corrupt(format!(
            "{} holds no store, but {} holds object files",
            root.join(layout::DB_FILE).display(),
            root.join("data").display()
        ))
        .into());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA)?;
    let fresh = tx
        .query_row("SELECT 1 FROM meta WHERE key = 'format'", [], |_| Ok(()))
        .optional()?
        .is_none();
    if fresh {
        tx.execute("INSERT INTO meta(key, value) VALUES ('format', '1')", [])?;
        if !checksums_off() {
            tx.execute(
                "INSERT INTO meta(key, value) VALUES ('checksums', 'crc32c/4k')",
                [],
            )?;
        }
        tx.execute("INSERT INTO pools(name) VALUES ('rbd')", [])?;
    }
    tx.commit()?;
    Ok(fresh)
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            // A full disk is the user's to fix, so it keeps its errno (ENOSPC, as rbd).
            Some(rusqlite::ErrorCode::DiskFull) => Error::Io {
                context: format!("{DB}: {e}"),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            },
            _ => Error::Db {
                context: DB.into(),
                source: Box::new(Sqlite(e)),
            },
        }
    }
}

/// SQLite's error as a `Db` error's source: its own words only. `rusqlite::Error` reports
/// SQLite's generic text for the code as a further source ("Error code 26: File opened that
/// is not a database file"), which a reporter walking the chain would add to every line.
#[derive(Debug)]
struct Sqlite(rusqlite::Error);

impl std::fmt::Display for Sqlite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Sqlite {}

/// What a database error's message says failed; SQLite's own words are its `source`.
const DB: &str = "metadata database";

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pools(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
    snap_seq INTEGER NOT NULL DEFAULT 0, version INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS removed_snaps(pool INTEGER NOT NULL, snap INTEGER NOT NULL,
    PRIMARY KEY(pool, snap)) WITHOUT ROWID;
-- `crc` of objects and clones: of the row's other columns (see `row_sums`); NULL: unchecked.
CREATE TABLE IF NOT EXISTS objects(id INTEGER PRIMARY KEY, pool INTEGER NOT NULL, ns TEXT NOT NULL,
    name TEXT NOT NULL, seq INTEGER NOT NULL, head INTEGER NOT NULL, token TEXT, size INTEGER NOT NULL,
    version INTEGER NOT NULL, mtime INTEGER NOT NULL, crc INTEGER, UNIQUE(pool, ns, name));
CREATE TABLE IF NOT EXISTS clones(oid INTEGER NOT NULL, clone_id INTEGER NOT NULL, snaps TEXT NOT NULL,
    size INTEGER NOT NULL, overlap TEXT NOT NULL, token TEXT, version INTEGER NOT NULL,
    mtime INTEGER NOT NULL, crc INTEGER, PRIMARY KEY(oid, clone_id)) WITHOUT ROWID;
-- `crc`: of key and value (see `values`); NULL in rows from before it existed.
CREATE TABLE IF NOT EXISTS xattrs(oid INTEGER NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL,
    crc INTEGER, PRIMARY KEY(oid, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS omap(oid INTEGER NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
    crc INTEGER, PRIMARY KEY(oid, key)) WITHOUT ROWID;
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
-- A crc32c per 4 KiB block of each data file, by chunks of blocks (see `sums`).
CREATE TABLE IF NOT EXISTS sums(token TEXT NOT NULL, chunk INTEGER NOT NULL, crcs BLOB NOT NULL,
    PRIMARY KEY(token, chunk)) WITHOUT ROWID;
";

/// Whether the store keeps checksums (stores made before them do not, and are read unchecked).
pub(super) fn has_checksums(conn: &Connection) -> Result<bool> {
    Ok(conn
        .query_row("SELECT 1 FROM meta WHERE key = 'checksums'", [], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Brings a store made by an older version up to the schema, once, in one transaction:
/// value checksums (`crc` of xattrs and omap, left NULL: unchecked, and the `sums` table,
/// unused there: its data files have no sums, see `has_checksums`), then row checksums
/// (`crc` of objects and clones, computed for every existing row). Opening a current store
/// writes nothing.
fn upgrade(conn: &mut Connection) -> rusqlite::Result<()> {
    if has_column(conn, "omap", "crc")? && has_column(conn, "objects", "crc")? {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Another process may have upgraded it meanwhile: each step checks again.
    if !has_column(&tx, "omap", "crc")? {
        tx.execute_batch(
            "ALTER TABLE xattrs ADD COLUMN crc INTEGER; ALTER TABLE omap ADD COLUMN crc INTEGER;",
        )?;
        tx.execute_batch(SCHEMA)?;
    }
    if !has_column(&tx, "objects", "crc")? {
        tx.execute_batch(
            "ALTER TABLE objects ADD COLUMN crc INTEGER; ALTER TABLE clones ADD COLUMN crc INTEGER;",
        )?;
        sum_existing_rows(&tx)?;
    }
    tx.commit()
}

fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
        .exists([table, column])
}

/// Gives every objects and clones row its crc (the upgrade to row checksums).
fn sum_existing_rows(tx: &Connection) -> rusqlite::Result<()> {
    let mut update = tx.prepare("UPDATE objects SET crc = ?2 WHERE id = ?1")?;
    let mut st = tx.prepare(
        "SELECT id, pool, ns, name, seq, head, token, size, version, mtime FROM objects",
    )?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let (ns, name, token): (String, String, Option<String>) = (r.get(2)?, r.get(3)?, r.get(6)?);
        let cols = ObjectCols {
            id: r.get(0)?,
            pool: r.get(1)?,
            ns: &ns,
            name: &name,
            seq: r.get(4)?,
            head: r.get(5)?,
            token: token.as_deref(),
            size: r.get(7)?,
            version: r.get(8)?,
            mtime: r.get(9)?,
        };
        update.execute(params![cols.id, cols.crc()])?;
    }
    let mut update = tx.prepare("UPDATE clones SET crc = ?3 WHERE oid = ?1 AND clone_id = ?2")?;
    let mut st = tx
        .prepare("SELECT oid, clone_id, snaps, size, overlap, token, version, mtime FROM clones")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let (snaps, overlap, token): (String, String, Option<String>) =
            (r.get(2)?, r.get(4)?, r.get(5)?);
        let cols = CloneCols {
            oid: r.get(0)?,
            clone_id: r.get(1)?,
            snaps: &snaps,
            size: r.get(3)?,
            overlap: &overlap,
            token: token.as_deref(),
            version: r.get(6)?,
            mtime: r.get(7)?,
        };
        update.execute(params![cols.oid, cols.clone_id, cols.crc()])?;
    }
    Ok(())
}

/// `RBDM_STORE_CHECKSUMS=off` makes new stores without data checksums, as stores were before
/// them: only for measuring what checksums cost (`cargo xtask bench image`).
fn checksums_off() -> bool {
    std::env::var_os("RBDM_STORE_CHECKSUMS").is_some_and(|v| v == "off")
}
