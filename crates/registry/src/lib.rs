//! The source-plugin registry: the traits a migration source is read through, and the two
//! `inventory` collections (formats and streams) that plugins register into by `type` name.
//!
//! What it is for: `Stream` (bytes with a size, optionally knowing its holes), `SourceImage`
//! (a snapshot-aware, sparse-aware image: `list_snaps` tells what changed where), and the
//! plugin descriptors, and the [`OpenContext`] every open gets (the one way a plugin reaches
//! the store and its `config://` values). What it is not: no format or stream code lives here
//! (see `plugins/`), and no spec parsing beyond handing each plugin its JSON.
//!
//! [`conformance`] holds the contract checks every plugin crate's tests run.
//!
//! Traits are synchronous: every stream underneath is blocking (files, `ureq`, an NBD socket);
//! the copy engine gets parallelism from threads, so no async runtime is pulled in.
#![forbid(unsafe_code)]

use std::cell::OnceCell;
use std::fmt;

/// An error and its causes on one line, as a user is shown it (a context variant's message
/// leaves its cause to its `source`).
pub use rbdm_image::report;
use rbdm_image::Rbd;

pub mod conformance;

/// What went wrong reading a source. `errno()` is what `rbdm` exits with, as `rbd` does.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The spec's text is not JSON (EBADMSG, as librbd reports a spec it cannot parse).
    #[error("{0}")]
    Malformed(String),
    /// The spec is JSON but not a valid spec: a missing, mistyped or conflicting value
    /// (EINVAL, as librbd's format and stream parsers report them).
    #[error("{0}")]
    BadSpec(String),
    /// An unknown format or stream type, or a feature we refuse (ENOSYS).
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// The source's bytes are not a valid image: says what, and at which offset when known.
    #[error("{0}")]
    Corrupt(String),
    /// The remote object changed while we read it (ETag/Last-Modified/size).
    #[error("{0}")]
    Changed(String),
    /// The cause is the `source`, not part of the message (see `rbdm_store::report`).
    #[error("{context}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// A server answered something we cannot use (status, missing header, ignored Range).
    #[error("{0}")]
    Remote(String),
    #[error("{0}")]
    Invalid(String),
}

impl SourceError {
    pub fn errno(&self) -> i32 {
        match self {
            SourceError::Malformed(_) => libc::EBADMSG,
            SourceError::BadSpec(_) => libc::EINVAL,
            SourceError::Unsupported(_) => libc::ENOSYS,
            SourceError::NotFound(_) => libc::ENOENT,
            SourceError::PermissionDenied(_) => libc::EACCES,
            SourceError::Invalid(_) => libc::EINVAL,
            SourceError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            SourceError::Corrupt(_) | SourceError::Changed(_) | SourceError::Remote(_) => libc::EIO,
        }
    }
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        SourceError::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = SourceError> = std::result::Result<T, E>;

/// An extent that a stream knows the allocation state of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamExtent {
    pub offset: u64,
    pub len: u64,
    /// `true`: reads as zeros (a hole).
    pub zero: bool,
}

/// A readable byte source with a known size (a file, an HTTP or S3 object, an NBD export).
pub trait Stream: Send + Sync {
    /// Size in bytes, known at open.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; reading past the end is an error, never a short read.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Fills several buffers at once: streams that pay per request (HTTP, S3) coalesce
    /// adjacent ranges into one request. The default reads them one by one.
    fn read_vectored_at(&self, reads: &mut [(u64, &mut [u8])]) -> Result<()> {
        for (off, buf) in reads.iter_mut() {
            self.read_at(*off, buf)?;
        }
        Ok(())
    }
    /// Allocation of `[offset, offset+len)` when the stream knows it (NBD block status, file
    /// SEEK_HOLE); `None` when it does not. Extents are sorted and cover the range.
    fn extents(&self, _offset: u64, _len: u64) -> Option<Result<Vec<StreamExtent>>> {
        None
    }
    /// Opens another object of the same stream type named relative to this one (a qcow2
    /// backing file): a sibling path for `file`, a sibling URL for `http`/`s3`. Refused with a
    /// reason where that is not possible or would escape the stream's base.
    fn open_relative(&self, name: &str) -> Result<Box<dyn Stream>> {
        Err(SourceError::Unsupported(format!(
            "{}: cannot open related file {name:?}",
            self.describe()
        )))
    }
    /// Says what this is, for messages (`file /path/x.qcow2`), without secrets.
    fn describe(&self) -> String;
}

/// A point in a source image's history: a snapshot (by index into `snapshots()`) or the head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Point {
    Snap(usize),
    Head,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSnapshot {
    pub name: String,
    /// The image size at that snapshot.
    pub size: u64,
    /// Seconds since the Unix epoch, when the source knows it.
    pub timestamp: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtentState {
    /// Holds data: read it.
    Data,
    /// Reads as zeros.
    Zero,
    /// The same bytes as at the previous point (never used for the first point).
    Unchanged,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapExtent {
    pub offset: u64,
    pub len: u64,
    pub state: ExtentState,
}

/// Appends `[offset, offset+len)` in `state` to a `list_snaps` answer being built in order,
/// merged into the last extent when it touches it in the same state, so formats answer with
/// the fewest extents. An empty extent is dropped.
pub fn push_extent(out: &mut Vec<SnapExtent>, offset: u64, len: u64, state: ExtentState) {
    if len == 0 {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.state == state && last.offset + last.len == offset {
            last.len += len;
            return;
        }
    }
    out.push(SnapExtent { offset, len, state });
}

/// A source image: snapshots oldest first, then the head.
pub trait SourceImage: Send + Sync {
    /// The format's type name (`qcow`, `raw`, `native`).
    fn format(&self) -> &str;
    /// Head size in bytes.
    fn size(&self) -> u64;
    /// Oldest first.
    fn snapshots(&self) -> Vec<SourceSnapshot>;
    /// Fills `buf` from `offset` at `point`; bytes past that point's size read as zeros.
    fn read(&self, point: Point, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// For every point (each snapshot oldest first, then the head), the state of each part of
    /// `[offset, offset+len)`: sorted, disjoint extents covering exactly that range (clipped to
    /// nothing beyond that point's size). Must not read data where metadata suffices.
    fn list_snaps(&self, offset: u64, len: u64) -> Result<Vec<Vec<SnapExtent>>>;
    /// For a source that is a clone of a parent the destination also links to: per point,
    /// whether the source's own storage holds anything in `[offset, offset+len)` (false: reads
    /// there go to the parent). `None` (the default): no parent, or not known; everything
    /// with data is copied.
    fn owns(&self, _offset: u64, _len: u64) -> Result<Option<Vec<bool>>> {
        Ok(None)
    }
    /// Where any point (a snapshot or the head) may hold data in `[offset, offset+len)`:
    /// `(offset, len)` ranges, possibly overlapping and in any order (a union over points),
    /// from metadata alone (no data reads). Outside them every point reads as zeros, so a copy
    /// need not look there. `None` (the default):
    /// not known cheaply, every part must be asked through `list_snaps`.
    fn allocated(&self, _offset: u64, _len: u64) -> Option<Result<Vec<(u64, u64)>>> {
        None
    }
    /// Bytes `list_snaps` over `[offset, offset+len)` reads from the source to tell data from
    /// zeros (a stream that cannot report holes). 0, the default, when metadata tells.
    fn scan_cost(&self, _offset: u64, _len: u64) -> u64 {
        0
    }
    /// Human-readable description for `source info` (without secrets).
    fn describe(&self) -> String {
        self.format().to_string()
    }
}

impl fmt::Debug for dyn Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// What a plugin may need besides its own JSON when it opens: the store's [`Rbd`] (for
/// `native`, which reads images in it) and its config-key values (`config://KEY`). The store
/// is opened on the first ask, so a spec that needs neither opens without one.
pub struct OpenContext<'a> {
    open_rbd: Box<dyn Fn() -> Result<Rbd> + 'a>,
    rbd: OnceCell<Rbd>,
}

impl<'a> OpenContext<'a> {
    /// A context whose store is what `open_rbd` returns, called on the first ask (again after
    /// a failure). The `Rbd` given is the one plugins use, opener included, so a `native`
    /// source that is itself a migration destination reads through to its own source.
    pub fn new(open_rbd: impl Fn() -> Result<Rbd> + 'a) -> Self {
        OpenContext {
            open_rbd: Box::new(open_rbd),
            rbd: OnceCell::new(),
        }
    }

    /// A context without a store: `native` and `config://` references are refused.
    pub fn without_store() -> OpenContext<'static> {
        OpenContext::new(|| Err(SourceError::Invalid("no store is open".into())))
    }

    /// The store's `Rbd`, opened now if it was not yet.
    pub fn rbd(&self) -> Result<&Rbd> {
        if let Some(rbd) = self.rbd.get() {
            return Ok(rbd);
        }
        let rbd = (self.open_rbd)()?;
        Ok(self.rbd.get_or_init(|| rbd))
    }

    /// The value of config-key `key`, for a `config://KEY` reference: `NotFound` naming the
    /// key when it is not set; `Invalid` when it is not UTF-8 (never altered to fit) or
    /// cannot be read.
    pub fn config_key(&self, key: &str) -> Result<String> {
        let bytes = self
            .rbd()?
            .config_key_get(key)
            .map_err(|e| match e.errno() {
                libc::ENOENT => SourceError::NotFound(format!("config-key {key:?} does not exist")),
                _ => {
                    SourceError::Invalid(format!("config-key {key:?}: {}", rbdm_image::report(&e)))
                }
            })?;
        String::from_utf8(bytes)
            .map_err(|_| SourceError::Invalid(format!("config-key {key:?} is not UTF-8")))
    }
}

/// A stream type: `{"type": NAME, ...}` inside a format's `"stream"` object.
pub struct StreamPlugin {
    pub type_name: &'static str,
    pub description: &'static str,
    /// Opens the stream described by `spec` (the whole stream object, `type` included).
    /// `path` names the object in the full spec (`stream`, `snapshots[1].stream`) for errors.
    pub open:
        fn(spec: &serde_json::Value, path: &str, ctx: &OpenContext) -> Result<Box<dyn Stream>>,
}

/// A format type: the top-level `{"type": NAME, ...}` of a source-spec.
pub struct FormatPlugin {
    pub type_name: &'static str,
    pub description: &'static str,
    /// Opens the source image described by the whole spec.
    pub open: fn(spec: &serde_json::Value, ctx: &OpenContext) -> Result<Box<dyn SourceImage>>,
}

inventory::collect!(StreamPlugin);
inventory::collect!(FormatPlugin);

/// Every linked stream plugin, sorted by name.
pub fn streams() -> Vec<&'static StreamPlugin> {
    let mut v: Vec<_> = inventory::iter::<StreamPlugin>.into_iter().collect();
    v.sort_by_key(|p| p.type_name);
    v
}

/// Every linked format plugin, sorted by name.
pub fn formats() -> Vec<&'static FormatPlugin> {
    let mut v: Vec<_> = inventory::iter::<FormatPlugin>.into_iter().collect();
    v.sort_by_key(|p| p.type_name);
    v
}

fn type_of<'a>(spec: &'a serde_json::Value, path: &str) -> Result<&'a str> {
    let obj = spec
        .as_object()
        .ok_or_else(|| SourceError::BadSpec(format!("{path}: expected a JSON object")))?;
    match obj.get("type") {
        Some(serde_json::Value::String(t)) => Ok(t),
        Some(_) => Err(SourceError::BadSpec(format!(
            "{}type: expected a string",
            dotted(path)
        ))),
        None => Err(SourceError::BadSpec(format!(
            "{}type: missing",
            dotted(path)
        ))),
    }
}

fn dotted(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}.")
    }
}

/// Opens the stream object at `path` of a spec through the plugin its `type` names.
pub fn open_stream(
    spec: &serde_json::Value,
    path: &str,
    ctx: &OpenContext,
) -> Result<Box<dyn Stream>> {
    let t = type_of(spec, path)?;
    let plugin = streams()
        .into_iter()
        .find(|p| p.type_name == t)
        .ok_or_else(|| {
            SourceError::Unsupported(format!("{}type: unknown stream type {t:?}", dotted(path)))
        })?;
    (plugin.open)(spec, path, ctx)
}

/// Opens a whole source-spec through the format plugin its `type` names.
pub fn open_source(spec: &serde_json::Value, ctx: &OpenContext) -> Result<Box<dyn SourceImage>> {
    let t = type_of(spec, "")?;
    let plugin = formats()
        .into_iter()
        .find(|p| p.type_name == t)
        .ok_or_else(|| SourceError::Unsupported(format!("type: unknown format {t:?}")))?;
    (plugin.open)(spec, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_resolve_by_one_policy() {
        let rbd = Rbd::new(rbdm_store::open("mem://").unwrap());
        rbd.config_key_set("s3/ak", b"AKIA").unwrap();
        rbd.config_key_set("s3/bin", &[0x41, 0xff]).unwrap();
        let ctx = OpenContext::new(|| Ok(rbd.clone()));
        assert_eq!(ctx.config_key("s3/ak").unwrap(), "AKIA");
        match ctx.config_key("s3/none") {
            Err(SourceError::NotFound(m)) => assert!(m.contains("s3/none"), "{m}"),
            r => panic!("a missing key: {r:?}"),
        }
        match ctx.config_key("s3/bin") {
            Err(SourceError::Invalid(m)) => assert!(m.contains("not UTF-8"), "{m}"),
            r => panic!("a key that is not UTF-8: {r:?}"),
        }
        assert!(OpenContext::without_store().config_key("s3/ak").is_err());
    }

    #[test]
    fn the_store_is_opened_once_and_only_when_asked() {
        let opened = std::cell::Cell::new(0);
        let ctx = OpenContext::new(|| {
            opened.set(opened.get() + 1);
            Ok(Rbd::new(rbdm_store::open("mem://").unwrap()))
        });
        assert_eq!(opened.get(), 0);
        ctx.rbd().unwrap();
        ctx.config_key("x").unwrap_err();
        assert_eq!(opened.get(), 1);
    }

    #[test]
    fn push_extent_merges_touching_runs_of_one_state() {
        let mut out = Vec::new();
        push_extent(&mut out, 0, 10, ExtentState::Data);
        push_extent(&mut out, 10, 0, ExtentState::Zero);
        push_extent(&mut out, 10, 5, ExtentState::Data);
        push_extent(&mut out, 15, 5, ExtentState::Zero);
        push_extent(&mut out, 30, 5, ExtentState::Zero);
        let got: Vec<(u64, u64, ExtentState)> =
            out.iter().map(|e| (e.offset, e.len, e.state)).collect();
        assert_eq!(
            got,
            [
                (0, 15, ExtentState::Data),
                (15, 5, ExtentState::Zero),
                (30, 5, ExtentState::Zero)
            ]
        );
    }
}
