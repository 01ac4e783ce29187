//! A RADOS-shaped object store: the one trait every rbdm layer above talks to.
//!
//! What it is for: pools and namespaces of named objects holding sparse byte data, xattrs and
//! an omap (sorted key/value); self-managed snapshots with RADOS semantics (a write carries a
//! snap context, the first write after a new snapshot preserves the old state as a clone);
//! compound write ops that apply atomically or not at all; advisory locks and watchers.
//! Backends: `dir` (the embedded default: object data in sparse files, metadata in SQLite in
//! WAL mode so several processes share one store) and `mem` (in process, for tests and models).
//! Every backend runs the shared conformance suite in [`conformance`].
//!
//! What it is not: it knows nothing of images, striping or headers (that is `rbdm-image`).
//!
//! The trait is synchronous on purpose. Every backend we have is blocking underneath (files,
//! SQLite; librados would be called through its blocking API or a completion); an async trait
//! (`async-trait`) would force a runtime and a blocking pool under every caller for no gain.
//! Callers that want many operations in flight use threads (the store is `Send + Sync`).

use std::collections::BTreeMap;
use std::sync::Arc;

mod admit;
pub mod conformance;
pub mod dir;
mod host;
pub mod mem;
mod plan;
pub mod snaps;

/// Pool ids, as in RADOS (`int64_t`).
pub type PoolId = i64;
/// Snapshot ids, as in RADOS (`snapid_t`).
pub type SnapId = u64;
/// The snap id that names the live object (`CEPH_NOSNAP`).
pub const HEAD: SnapId = u64::MAX - 1;
/// No object grows past this (RADOS's `osd_max_object_size` default); a write or truncate
/// beyond it fails with `Invalid`. Keeps a bad offset from allocating or reading terabytes.
pub const MAX_OBJECT_SIZE: u64 = 128 << 20;

/// Where an object lives: pool, namespace ("" is the default namespace), name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locator {
    pub pool: PoolId,
    pub namespace: String,
    pub name: String,
}

impl Locator {
    pub fn new(pool: PoolId, namespace: &str, name: &str) -> Self {
        Locator {
            pool,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

/// `pool/name`, or `pool/namespace/name` outside the default namespace (for error messages).
impl std::fmt::Display for Locator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.pool, self.name)
        } else {
            write!(f, "{}/{}/{}", self.pool, self.namespace, self.name)
        }
    }
}

/// The snapshot context a write carries (RADOS `SnapContext`): `seq` is the newest snap id the
/// writer knows of, `snaps` the existing snapshots, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapContext {
    pub seq: SnapId,
    pub snaps: Vec<SnapId>,
}

/// One step of a compound write op. Guards (`AssertExists`, `CreateExclusive`, `CmpXattr`,
/// `OmapCmp`) are checked first, in order; if any fails nothing is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Fail with `NoObject` unless the object exists at head.
    AssertExists,
    /// Create the object; fail with `Exists` if it already exists at head.
    CreateExclusive,
    /// Create the object if it does not exist (an empty object); never fails.
    Create,
    /// Fail with `Canceled` unless xattr `name` equals `value` (`None`: must be absent).
    CmpXattr {
        name: String,
        value: Option<Vec<u8>>,
    },
    /// Fail with `Canceled` unless omap key `key` equals `value` (`None`: must be absent).
    OmapCmp {
        key: String,
        value: Option<Vec<u8>>,
    },
    /// Write bytes at an offset (extends the object; creates it if needed).
    Write {
        offset: u64,
        data: Vec<u8>,
    },
    /// Replace the whole data with these bytes.
    WriteFull(Vec<u8>),
    /// Make a range read as zeros, deallocating it (a hole); does not extend the object.
    Zero {
        offset: u64,
        len: u64,
    },
    /// Set the data size, cutting or extending with a hole.
    Truncate(u64),
    /// Remove the object at head (its clones stay for the snapshots that need them).
    Remove,
    SetXattr {
        name: String,
        value: Vec<u8>,
    },
    RmXattr(String),
    OmapSet(Vec<(String, Vec<u8>)>),
    OmapRm(Vec<String>),
    OmapClear,
}

/// A compound write op, applied atomically (all steps or none, also across a SIGKILL).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteOp {
    pub ops: Vec<Op>,
    /// The op's data may be found half-written after a crash, page by page, as a block
    /// device's writes may (a client's write into an image). Metadata stays atomic. Lets a
    /// backend write data in place instead of through a redo journal.
    pub tearable: bool,
}

impl WriteOp {
    pub fn new() -> Self {
        Self::default()
    }
    /// See [`WriteOp::tearable`].
    pub fn tearable(mut self) -> Self {
        self.tearable = true;
        self
    }
    pub fn push(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }
    pub fn assert_exists(self) -> Self {
        self.push(Op::AssertExists)
    }
    pub fn create_exclusive(self) -> Self {
        self.push(Op::CreateExclusive)
    }
    pub fn create(self) -> Self {
        self.push(Op::Create)
    }
    pub fn cmp_xattr(self, name: &str, value: Option<&[u8]>) -> Self {
        self.push(Op::CmpXattr {
            name: name.into(),
            value: value.map(<[u8]>::to_vec),
        })
    }
    pub fn omap_cmp(self, key: &str, value: Option<&[u8]>) -> Self {
        self.push(Op::OmapCmp {
            key: key.into(),
            value: value.map(<[u8]>::to_vec),
        })
    }
    pub fn write(self, offset: u64, data: &[u8]) -> Self {
        self.push(Op::Write {
            offset,
            data: data.to_vec(),
        })
    }
    pub fn write_full(self, data: &[u8]) -> Self {
        self.push(Op::WriteFull(data.to_vec()))
    }
    pub fn zero(self, offset: u64, len: u64) -> Self {
        self.push(Op::Zero { offset, len })
    }
    pub fn truncate(self, size: u64) -> Self {
        self.push(Op::Truncate(size))
    }
    pub fn remove(self) -> Self {
        self.push(Op::Remove)
    }
    pub fn set_xattr(self, name: &str, value: &[u8]) -> Self {
        self.push(Op::SetXattr {
            name: name.into(),
            value: value.to_vec(),
        })
    }
    pub fn rm_xattr(self, name: &str) -> Self {
        self.push(Op::RmXattr(name.into()))
    }
    pub fn omap_set<K: Into<String>>(self, kv: impl IntoIterator<Item = (K, Vec<u8>)>) -> Self {
        self.push(Op::OmapSet(
            kv.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        ))
    }
    pub fn omap_rm<K: Into<String>>(self, keys: impl IntoIterator<Item = K>) -> Self {
        self.push(Op::OmapRm(keys.into_iter().map(Into::into).collect()))
    }
    pub fn omap_clear(self) -> Self {
        self.push(Op::OmapClear)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectStat {
    pub size: u64,
    /// Bumped by every successful write op on the object (RADOS user_version); lets a
    /// cached reader (an open image's header) notice another process changed it.
    pub version: u64,
    /// Seconds since the Unix epoch of the last write.
    pub mtime: u64,
}

/// One preserved version of an object (RADOS `clone_info`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloneInfo {
    /// The snap context `seq` at the time the clone was made.
    pub id: SnapId,
    /// The snapshots this clone holds the data for, oldest first.
    pub snaps: Vec<SnapId>,
    pub size: u64,
    /// Ranges `(offset, len)` where this clone is known to equal the next newer version
    /// (the next clone, or head). Lets diff and deep copy skip unchanged data.
    pub overlap: Vec<(u64, u64)>,
}

/// All versions of an object (RADOS `snap_set_t`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapSet {
    /// The seq of the last snap context applied to this object.
    pub seq: SnapId,
    /// Clones, oldest first.
    pub clones: Vec<CloneInfo>,
    /// Size at head, `None` if the object does not exist at head.
    pub head_size: Option<u64>,
}

/// Who a process is, for locks and watchers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    /// A store-unique client id (like RADOS's `client.4123`).
    pub id: u64,
    pub host: String,
    pub pid: u32,
    /// Seconds since the Unix epoch when the client opened the store.
    pub since: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    pub name: String,
    pub client: ClientInfo,
    pub cookie: String,
    pub description: String,
    pub exclusive: bool,
}

/// What a scrub found: how much it checked, and one line per damaged object or page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Objects whose every version, xattr and omap value was read and checked.
    pub objects: u64,
    /// Data bytes read and checked against their checksums.
    pub bytes: u64,
    /// What is damaged, each naming the object (or the database) and what failed.
    pub damaged: Vec<String>,
    /// Whether this store keeps data checksums at all (stores made before them do not).
    pub checksums: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watcher {
    pub client: ClientInfo,
    pub cookie: u64,
}

/// Errors name what failed and carry what was missing; `errno()` gives the Ceph/POSIX code,
/// one to one with what RADOS returns for the same failure. Locators are boxed to keep the
/// error (and every error that wraps it) small.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such object (at `snap`, when a snapshot was read): ENOENT.
    #[error("{loc}{}: no such object", at_snap(.snap))]
    NoObject {
        loc: Box<Locator>,
        snap: Option<SnapId>,
    },
    /// The object exists but has no xattr `name` (RADOS getxattr's ENODATA). Omap reads leave
    /// absent keys out instead, as RADOS's do.
    #[error("{loc}: no such xattr {name:?}")]
    NoKey { loc: Box<Locator>, name: String },
    /// Lock `lock` is not held by `client` with `cookie`: ENOENT, as RADOS's `cls_lock` says.
    #[error("{loc}: lock {lock:?} is not held by client {client} with cookie {cookie:?}")]
    NoLocker {
        loc: Box<Locator>,
        lock: String,
        client: u64,
        cookie: String,
    },
    /// No watch with this cookie on the object: ENOENT.
    #[error("{loc}: no watch {cookie}")]
    NoWatch { loc: Box<Locator>, cookie: u64 },
    #[error("pool {0}: no such pool")]
    NoPool(String),
    #[error("{0}: already exists")]
    Exists(String),
    #[error("{0}: busy")]
    Busy(String),
    #[error("{0}: comparison failed")]
    Canceled(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// The cause is the `source`, not part of the message, so a reporter that walks the
    /// chain prints it once.
    #[error("{context}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// The metadata database failed; its own error (SQLite's) is the `source`.
    #[error("{context}")]
    Db {
        context: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn at_snap(snap: &Option<SnapId>) -> String {
    snap.map(|s| format!("@{s}")).unwrap_or_default()
}

impl Error {
    /// `NoObject` for `loc` at `snap`, naming the snapshot unless it is `HEAD`.
    pub fn no_object(loc: &Locator, snap: SnapId) -> Self {
        Error::NoObject {
            loc: Box::new(loc.clone()),
            snap: (snap != HEAD).then_some(snap),
        }
    }
    pub fn no_key(loc: &Locator, name: &str) -> Self {
        Error::NoKey {
            loc: Box::new(loc.clone()),
            name: name.to_string(),
        }
    }
    pub fn no_locker(loc: &Locator, lock: &str, client: u64, cookie: &str) -> Self {
        Error::NoLocker {
            loc: Box::new(loc.clone()),
            lock: lock.to_string(),
            client,
            cookie: cookie.to_string(),
        }
    }
    pub fn no_watch(loc: &Locator, cookie: u64) -> Self {
        Error::NoWatch {
            loc: Box::new(loc.clone()),
            cookie,
        }
    }
    pub fn errno(&self) -> i32 {
        match self {
            Error::NoObject { .. }
            | Error::NoLocker { .. }
            | Error::NoWatch { .. }
            | Error::NoPool(_) => libc::ENOENT,
            Error::NoKey { .. } => libc::ENODATA,
            Error::Exists(_) => libc::EEXIST,
            Error::Busy(_) => libc::EBUSY,
            Error::Canceled(_) => libc::ECANCELED,
            Error::Invalid(_) => libc::EINVAL,
            // Out of space is the user's to fix, so it keeps its errno; other I/O is EIO.
            Error::Io { source, .. }
                if matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) =>
            {
                libc::ENOSPC
            }
            Error::Corrupt(_) | Error::Io { .. } | Error::Db { .. } => libc::EIO,
        }
    }
    /// The object itself is missing (not one of its keys, locks or watches).
    pub fn is_no_object(&self) -> bool {
        matches!(self, Error::NoObject { .. })
    }
}

/// An error's message followed by its causes', outermost first, joined by ": " as anyhow's
/// `{:#}` joins them. rbdm's errors keep a cause as their `source` rather than in their own
/// message, so this is how a message that names everything is made (the CLI's error lines).
pub fn report(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The object store. All methods are safe to call from many threads and many processes.
pub trait ObjectStore: Send + Sync {
    // ---- pools and namespaces
    fn create_pool(&self, name: &str) -> Result<PoolId>;
    /// Removes a pool and everything in it.
    fn remove_pool(&self, name: &str) -> Result<()>;
    fn list_pools(&self) -> Result<Vec<(PoolId, String)>>;
    /// `NoPool` if absent.
    fn pool_id(&self, name: &str) -> Result<PoolId>;
    /// `NoPool` if absent.
    fn pool_name(&self, id: PoolId) -> Result<String>;
    /// Objects that exist at head in a pool, sorted by (namespace, name); `namespace: None`
    /// lists every namespace.
    fn list_objects(&self, pool: PoolId, namespace: Option<&str>) -> Result<Vec<Locator>>;

    /// As `list_objects`, plus objects that exist only as clones (their head was removed
    /// while a snapshot still needed them): what a consistency check must account for.
    fn list_all_objects(&self, pool: PoolId, namespace: Option<&str>) -> Result<Vec<Locator>>;

    // ---- self-managed snapshots (per pool, as RADOS)
    /// Allocates a new snap id, greater than every id given before in this pool.
    fn snap_create(&self, pool: PoolId) -> Result<SnapId>;
    /// Removes a snap id: clones that only this snap needed are freed.
    fn snap_remove(&self, pool: PoolId, snap: SnapId) -> Result<()>;

    // ---- objects
    /// Applies a compound write op atomically. The first data or removal step after a snapshot
    /// newer than the object's `SnapSet::seq` (and listed in `snapc.snaps`) preserves the
    /// object's current state as a clone first, as RADOS does. Metadata-only steps (xattr,
    /// omap) do not clone: RBD keeps those at head only.
    fn operate(&self, loc: &Locator, op: &WriteOp, snapc: &SnapContext) -> Result<()>;
    /// Reads up to `len` bytes at `offset` of the object at `snap` (`HEAD` for the live object);
    /// short at the end of the object, holes read as zeros. `NoObject` if it did not exist then.
    fn read(&self, loc: &Locator, snap: SnapId, offset: u64, len: u64) -> Result<Vec<u8>>;
    /// `read` of `buf.len()` bytes straight into `buf`, for callers that read big blocks into
    /// a buffer they own (no allocation, no second copy). Returns how many bytes the object
    /// has there (`buf[..n]`, holes as zeros); `buf[n..]` is left as it was, for the caller
    /// to zero-fill or not. Backends should override this default, which goes through `read`.
    fn read_into(&self, loc: &Locator, snap: SnapId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let data = self.read(loc, snap, offset, buf.len() as u64)?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Ok(n)
    }
    /// Like `read` but returns only the extents that hold data, as `(offset, bytes)`, sorted.
    fn sparse_read(
        &self,
        loc: &Locator,
        snap: SnapId,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>>;
    /// The extents `(offset, len)` of `[offset, offset + len)` that hold data at `snap`, sorted,
    /// without reading the data. Backends should override this default, which reads.
    fn map_extents(
        &self,
        loc: &Locator,
        snap: SnapId,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, u64)>> {
        Ok(self
            .sparse_read(loc, snap, offset, len)?
            .into_iter()
            .map(|(o, d)| (o, d.len() as u64))
            .collect())
    }
    /// `NoObject` if the object did not exist at `snap`.
    fn stat(&self, loc: &Locator, snap: SnapId) -> Result<ObjectStat>;
    /// Every version of the object; `NoObject` if neither head nor any clone exists.
    fn list_snaps(&self, loc: &Locator) -> Result<SnapSet>;
    /// `NoKey` if the object has no such xattr, `NoObject` if there is no object.
    fn get_xattr(&self, loc: &Locator, name: &str) -> Result<Vec<u8>>;
    fn get_xattrs(&self, loc: &Locator) -> Result<BTreeMap<String, Vec<u8>>>;
    /// Up to `max` omap entries with keys `> start_after` that begin with `prefix`, sorted.
    fn omap_get(
        &self,
        loc: &Locator,
        start_after: &str,
        prefix: &str,
        max: usize,
    ) -> Result<Vec<(String, Vec<u8>)>>;
    /// The values of these keys; absent keys are left out.
    fn omap_get_keys(&self, loc: &Locator, keys: &[&str]) -> Result<BTreeMap<String, Vec<u8>>>;

    // ---- advisory locks (RBD's `lock` class) and watchers
    /// This handle's identity.
    fn client(&self) -> ClientInfo;
    /// Takes lock `name` on the object for this client. `Busy` if another live client holds it
    /// exclusively (or at all, for an exclusive request). Locks of dead clients are broken.
    fn lock(
        &self,
        loc: &Locator,
        name: &str,
        cookie: &str,
        description: &str,
        exclusive: bool,
    ) -> Result<()>;
    /// `NoLocker` if this client does not hold it with this cookie.
    fn unlock(&self, loc: &Locator, name: &str, cookie: &str) -> Result<()>;
    fn break_lock(&self, loc: &Locator, name: &str, client_id: u64, cookie: &str) -> Result<()>;
    /// Live holders only.
    fn list_lockers(&self, loc: &Locator, name: &str) -> Result<Vec<LockInfo>>;
    /// Registers this client as a watcher of the object; returns the watch cookie.
    fn watch(&self, loc: &Locator) -> Result<u64>;
    fn unwatch(&self, loc: &Locator, cookie: u64) -> Result<()>;
    /// Live watchers only (a watcher whose process died is dropped).
    fn list_watchers(&self, loc: &Locator) -> Result<Vec<Watcher>>;

    /// Reads and checks everything the store keeps for a pool (all pools if `None`): every
    /// version of every object against its checksums, every metadata value, and the
    /// metadata store's own integrity. Damage is reported, not an error.
    fn scrub(&self, pool: Option<PoolId>) -> Result<ScrubReport> {
        let _ = pool;
        Err(Error::Invalid(
            "this store keeps no checksums to scrub".into(),
        ))
    }

    /// Makes every completed write durable on stable storage (fsync). Completed writes already
    /// survive the death of the process (SIGKILL) without this; `flush` is for power loss.
    fn flush(&self) -> Result<()>;
    /// As `flush`, but for the writes of every client, also of other processes and of ones
    /// that died before flushing (a migration about to let its source go needs all of them).
    fn flush_all(&self) -> Result<()> {
        self.flush()
    }
}

pub type StoreRef = Arc<dyn ObjectStore>;

/// Opens a store by URI: `dir:///path` (created if missing, with a pool `rbd`) or `mem://`.
pub fn open(uri: &str) -> Result<StoreRef> {
    if let Some(path) = uri.strip_prefix("dir://") {
        if path.is_empty() {
            return Err(Error::Invalid(format!("store URI {uri:?} has no path")));
        }
        return Ok(Arc::new(dir::DirStore::open(std::path::Path::new(path))?));
    }
    if uri == "mem://" || uri.starts_with("mem://") {
        return Ok(Arc::new(mem::MemStore::new()));
    }
    Err(Error::Invalid(format!(
        "store URI {uri:?}: expected dir:///PATH or mem://"
    )))
}
