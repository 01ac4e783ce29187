//! The `qcow` source format: reads QCOW v1 and QCOW2 v2/v3 images (any cluster size, internal
//! snapshots, backing chains, zlib/zstd compressed clusters, extended L2 entries) over any
//! `Stream`, and answers `list_snaps` from L1/L2 metadata alone.
//!
//! What it is not: a writer, a repair tool, or a refcount checker (refcounts are never read);
//! encrypted images and external data files are refused. Memory stays bounded: L2 tables go
//! through a 32 MiB LRU cache and reads fetch only the requested bytes of each cluster, with
//! physically contiguous clusters coalesced into one stream request.
//!
//! Why not the requested `qcow` crate (NOTES.md): it has no QCOW v1 reader, reads
//! `extended_l2=on` images wrong, panics or aborts on corrupt headers, re-reads whole clusters
//! per request and has no allocation-status API, which `list_snaps` needs.
#![forbid(unsafe_code)]

mod compress;
mod error;
mod header;
mod table;
pub mod testing;

use std::sync::{Arc, Mutex};

use rbdm_registry::{
    push_extent, ExtentState, FormatPlugin, OpenContext, Point, SnapExtent, SourceError,
    SourceImage, SourceSnapshot, Stream,
};

pub use error::QcowError;
pub use header::Compression;

use error::{corrupt, Result};
use header::{check_in_file, read_bytes, Header, MAGIC};
use table::{same_mapping, Kind, Run, Tables};

/// Backing chains deeper than this are refused (QEMU's own default limit is similar).
pub const MAX_CHAIN_DEPTH: usize = 16;
/// All L1 tables of one image (head and snapshots) together stay under this.
const MAX_TOTAL_L1_BYTES: u64 = 256 << 20;
/// `list_snaps` works through this many L1 entries' worth of guest range at a time, which
/// bounds the run lists it holds while walking.
const LIST_WINDOW_L1_ENTRIES: u64 = 64;

/// The image a qcow file's unallocated clusters read through to.
enum Backing {
    Qcow(Box<QcowImage>),
    Raw(Box<dyn Stream>),
}

/// An open qcow image (v1, v2 or v3) and its backing chain.
pub struct QcowImage {
    stream: Box<dyn Stream>,
    header: Header,
    tables: Tables,
    backing: Option<Backing>,
    backing_name: Option<String>,
    /// The last decompressed cluster, keyed by (host offset, compressed size): sequential
    /// small reads inside one compressed cluster decompress it once.
    last_compressed: Mutex<Option<CachedCluster>>,
}

/// A decompressed cluster and where its compressed bytes are: (host offset, size, data).
type CachedCluster = (u64, u64, Arc<Vec<u8>>);

inventory::submit!(FormatPlugin {
    type_name: "qcow",
    description: "a QCOW v1 or QCOW2 v2/v3 image read through a stream (snapshots, backing files, compression)",
    open: open_spec,
});

/// Referenced by `rbdm-plugins` so the linker keeps this crate and its registration.
#[inline(never)]
pub fn link() {}

/// `{"type":"qcow","stream":{...}}`: the spec crate checks the shape (unknown fields, missing
/// stream), the stream's own plugin checks the stream object.
fn open_spec(
    spec: &serde_json::Value,
    ctx: &OpenContext,
) -> rbdm_registry::Result<Box<dyn SourceImage>> {
    rbdm_spec::QcowSpec::from_json(spec, "").map_err(|e| SourceError::BadSpec(e.to_string()))?;
    let stream = rbdm_registry::open_stream(&spec["stream"], "stream", ctx)?;
    open_source(stream)
}

/// Whether the stream starts with the qcow magic (any version).
pub fn probe(stream: &dyn Stream) -> Result<bool> {
    if stream.size() < 4 {
        return Ok(false);
    }
    let mut magic = [0u8; 4];
    stream.read_at(0, &mut magic)?;
    Ok(magic == MAGIC)
}

/// Opens a qcow image and, through `Stream::open_relative`, its backing chain.
pub fn open(stream: Box<dyn Stream>) -> Result<QcowImage> {
    let mut seen = vec![stream.describe()];
    open_chain(stream, 0, &mut seen)
}

/// `open` as the registry's opener wants it.
pub fn open_source(stream: Box<dyn Stream>) -> rbdm_registry::Result<Box<dyn SourceImage>> {
    Ok(Box::new(open(stream)?))
}

fn open_chain(stream: Box<dyn Stream>, depth: usize, seen: &mut Vec<String>) -> Result<QcowImage> {
    let header = header::parse(&*stream)?;
    let mut l1s: Vec<_> = header.snapshots.iter().map(|s| s.l1).collect();
    l1s.push(header.l1);
    let tables = Tables::new(header.geometry.clone(), &l1s);
    let total = tables.l1_bytes();
    if total > MAX_TOTAL_L1_BYTES {
        return Err(QcowError::Unsupported(format!(
            "the L1 tables of the head and {} snapshots total {total} bytes, over the 256 MiB limit",
            header.snapshots.len()
        )));
    }
    let backing = match &header.backing_file {
        Some(name) => Some(open_backing(
            &*stream,
            name,
            header.backing_format.as_deref(),
            depth,
            seen,
        )?),
        None => None,
    };
    Ok(QcowImage {
        tables,
        backing_name: header.backing_file.clone(),
        header,
        stream,
        backing,
        last_compressed: Mutex::new(None),
    })
}

fn open_backing(
    parent: &dyn Stream,
    name: &str,
    format: Option<&str>,
    depth: usize,
    seen: &mut Vec<String>,
) -> Result<Backing> {
    if depth + 1 >= MAX_CHAIN_DEPTH {
        return Err(QcowError::Backing(format!(
            "backing chain is deeper than {MAX_CHAIN_DEPTH} images at {name:?} (from {})",
            parent.describe()
        )));
    }
    let ctx = format!("backing file {name:?} of {}", parent.describe());
    let stream = parent
        .open_relative(name)
        .map_err(|e| in_context(e, &ctx))?;
    let resolved = stream.describe();
    if seen.contains(&resolved) {
        return Err(QcowError::Backing(format!(
            "backing chain loop: {} -> {resolved}",
            seen.join(" -> ")
        )));
    }
    seen.push(resolved);
    let is_qcow = match format {
        Some("qcow2") | Some("qcow") => true,
        Some("raw") => false,
        Some(other) => {
            return Err(QcowError::Unsupported(format!(
                "{ctx}: backing format {other:?} is not supported (qcow2, qcow and raw are)"
            )))
        }
        None => probe(&*stream)?,
    };
    if !is_qcow {
        return Ok(Backing::Raw(stream));
    }
    match open_chain(stream, depth + 1, seen) {
        Ok(image) => Ok(Backing::Qcow(Box::new(image))),
        Err(QcowError::Corrupt(m)) => Err(QcowError::Corrupt(format!("{ctx}: {m}"))),
        Err(QcowError::Unsupported(m)) => Err(QcowError::Unsupported(format!("{ctx}: {m}"))),
        Err(e) => Err(e),
    }
}

/// Prefixes a stream error with which backing file it concerns, keeping its kind (errno).
fn in_context(e: SourceError, ctx: &str) -> QcowError {
    let e = match e {
        SourceError::NotFound(m) => SourceError::NotFound(format!("{ctx}: {m}")),
        SourceError::PermissionDenied(m) => SourceError::PermissionDenied(format!("{ctx}: {m}")),
        SourceError::Unsupported(m) => SourceError::Unsupported(format!("{ctx}: {m}")),
        SourceError::Invalid(m) => SourceError::Invalid(format!("{ctx}: {m}")),
        SourceError::Corrupt(m) => SourceError::Corrupt(format!("{ctx}: {m}")),
        SourceError::Io { context, source } => SourceError::Io {
            context: format!("{ctx}: {context}"),
            source,
        },
        other => other,
    };
    QcowError::Stream(e)
}

impl QcowImage {
    /// 1, 2 or 3.
    pub fn version(&self) -> u32 {
        self.header.geometry.version
    }
    pub fn cluster_size(&self) -> u64 {
        self.header.geometry.cluster_size()
    }
    pub fn compression(&self) -> Compression {
        self.header.geometry.compression
    }
    pub fn extended_l2(&self) -> bool {
        self.header.geometry.extended_l2
    }
    /// The dirty bit (lazy refcounts): harmless for reading, since refcounts are not used.
    pub fn dirty(&self) -> bool {
        self.header.dirty
    }
    /// The backing file name as stored in the header.
    pub fn backing_file(&self) -> Option<&str> {
        self.backing_name.as_deref()
    }
    /// Images below this one in the backing chain.
    pub fn chain_depth(&self) -> usize {
        match &self.backing {
            Some(Backing::Qcow(b)) => 1 + b.chain_depth(),
            Some(Backing::Raw(_)) => 1,
            None => 0,
        }
    }
    /// Snapshot ids as stored (names are in `snapshots()`).
    pub fn snapshot_ids(&self) -> Vec<String> {
        self.header.snapshots.iter().map(|s| s.id.clone()).collect()
    }

    fn head(&self) -> usize {
        self.header.snapshots.len()
    }

    fn points(&self) -> usize {
        self.header.snapshots.len() + 1
    }

    fn point_index(&self, point: Point) -> Result<usize> {
        match point {
            Point::Head => Ok(self.head()),
            Point::Snap(i) if i < self.header.snapshots.len() => Ok(i),
            Point::Snap(i) => Err(QcowError::Invalid(format!(
                "snapshot index {i} does not exist: the image has {} snapshots",
                self.header.snapshots.len()
            ))),
        }
    }

    fn point_size(&self, p: usize) -> u64 {
        self.header
            .snapshots
            .get(p)
            .map(|s| s.disk_size)
            .unwrap_or(self.header.size)
    }

    /// Reads at point index `p`: bytes past that point's size are zeros.
    fn read_point(&self, p: usize, offset: u64, buf: &mut [u8]) -> Result<()> {
        let size = self.point_size(p);
        let valid = size.saturating_sub(offset).min(buf.len() as u64);
        let (inside, beyond) = buf.split_at_mut(valid as usize);
        beyond.fill(0);
        if valid == 0 {
            return Ok(());
        }
        let runs = self.tables.map(&*self.stream, p, offset, valid)?;
        let mut data: Vec<(u64, &mut [u8])> = Vec::new();
        let mut rest = inside;
        for run in &runs {
            let (part, tail) = std::mem::take(&mut rest).split_at_mut(run.len as usize);
            rest = tail;
            match run.kind {
                Kind::Zero => part.fill(0),
                Kind::Unalloc => self.read_backing(run.offset, part)?,
                Kind::Data { host } => {
                    let what = format!("data for guest offset {}", run.offset);
                    check_in_file(&*self.stream, host, run.len, &what)?;
                    data.push((host, part));
                }
                Kind::Compressed { host, size } => self.read_compressed(run, host, size, part)?,
            }
        }
        if !data.is_empty() {
            self.stream.read_vectored_at(&mut data)?;
        }
        Ok(())
    }

    fn read_backing(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match &self.backing {
            None => buf.fill(0),
            Some(Backing::Qcow(b)) => b.read_point(b.head(), offset, buf)?,
            Some(Backing::Raw(s)) => {
                let valid = s.size().saturating_sub(offset).min(buf.len() as u64) as usize;
                let (inside, beyond) = buf.split_at_mut(valid);
                beyond.fill(0);
                if valid > 0 {
                    s.read_at(offset, inside)?;
                }
            }
        }
        Ok(())
    }

    fn read_compressed(&self, run: &Run, host: u64, size: u64, buf: &mut [u8]) -> Result<()> {
        let cs = self.cluster_size();
        let cluster_start = run.offset & !(cs - 1);
        let cluster = self.compressed_cluster(host, size, cluster_start)?;
        let from = (run.offset - cluster_start) as usize;
        match cluster.get(from..from + buf.len()) {
            Some(src) => buf.copy_from_slice(src),
            None => {
                return corrupt(format!(
                    "compressed run at guest offset {} crosses its cluster",
                    run.offset
                ))
            }
        }
        Ok(())
    }

    fn compressed_cluster(&self, host: u64, size: u64, guest: u64) -> Result<Arc<Vec<u8>>> {
        {
            let cached = self
                .last_compressed
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some((h, s, data)) = cached.as_ref() {
                if *h == host && *s == size {
                    return Ok(data.clone());
                }
            }
        }
        let what = || {
            format!(
                "compressed cluster for guest offset {guest} (host offset {host}, {size} bytes)"
            )
        };
        let file = self.stream.size();
        if host >= file || size == 0 {
            return corrupt(format!("{}: outside the file ({file} bytes)", what()));
        }
        // The last sector of the last compressed cluster may be cut short by the end of file.
        let input = read_bytes(&*self.stream, host, size.min(file - host), &what())?;
        let mut out = vec![0u8; self.cluster_size() as usize];
        compress::decompress(self.compression(), &input, &mut out, &what)?;
        let out = Arc::new(out);
        *self
            .last_compressed
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((host, size, out.clone()));
        Ok(out)
    }

    fn list_window(&self) -> u64 {
        let g = &self.header.geometry;
        (LIST_WINDOW_L1_ENTRIES << g.l1_shift()).max(g.cluster_size())
    }

    fn list_snaps_inner(&self, offset: u64, len: u64) -> Result<Vec<Vec<SnapExtent>>> {
        let mut out = vec![Vec::new(); self.points()];
        // Nothing lies past the largest point: stop there, not at the caller's (maybe huge) end.
        let largest = (0..self.points())
            .map(|p| self.point_size(p))
            .max()
            .unwrap_or(0);
        let end = offset.saturating_add(len).min(largest);
        let window = self.list_window();
        let mut pos = offset;
        while pos < end {
            let window_end = pos.saturating_add(window - pos % window).min(end);
            let mut prev: Vec<Run> = Vec::new();
            for (p, extents) in out.iter_mut().enumerate() {
                let point_end = window_end.min(self.point_size(p));
                let runs = if pos < point_end {
                    self.tables.map(&*self.stream, p, pos, point_end - pos)?
                } else {
                    Vec::new()
                };
                self.states(&runs, &prev, extents)?;
                prev = runs;
            }
            pos = window_end;
        }
        Ok(out)
    }

    /// States of `runs`, `Unchanged` where `prev` (the previous point's runs over the same
    /// window, possibly shorter) maps the same bytes.
    fn states(&self, runs: &[Run], prev: &[Run], out: &mut Vec<SnapExtent>) -> Result<()> {
        let mut j = 0;
        for run in runs {
            let mut at = run.offset;
            while at < run.end() {
                while j < prev.len() && prev[j].end() <= at {
                    j += 1;
                }
                match prev.get(j) {
                    Some(pr) if pr.offset <= at => {
                        let seg_end = run.end().min(pr.end());
                        if same_mapping(run, pr, at) {
                            push_extent(out, at, seg_end - at, ExtentState::Unchanged);
                        } else {
                            self.own_state(run, at, seg_end, out)?;
                        }
                        at = seg_end;
                    }
                    next => {
                        let seg_end = next.map(|pr| pr.offset.min(run.end())).unwrap_or(run.end());
                        self.own_state(run, at, seg_end, out)?;
                        at = seg_end;
                    }
                }
            }
        }
        Ok(())
    }

    fn own_state(&self, run: &Run, from: u64, to: u64, out: &mut Vec<SnapExtent>) -> Result<()> {
        match run.kind {
            Kind::Data { .. } | Kind::Compressed { .. } => {
                push_extent(out, from, to - from, ExtentState::Data)
            }
            Kind::Zero => push_extent(out, from, to - from, ExtentState::Zero),
            Kind::Unalloc => self.backing_states(from, to - from, out)?,
        }
        Ok(())
    }

    fn backing_states(&self, offset: u64, len: u64, out: &mut Vec<SnapExtent>) -> Result<()> {
        let end = offset + len;
        match &self.backing {
            None => push_extent(out, offset, len, ExtentState::Zero),
            Some(Backing::Qcow(b)) => b.head_states(offset, len, out)?,
            Some(Backing::Raw(s)) => {
                let valid_end = end.min(s.size()).max(offset);
                raw_states(&**s, offset, valid_end - offset, out)?;
                push_extent(out, valid_end, end - valid_end, ExtentState::Zero);
            }
        }
        Ok(())
    }

    /// Data/Zero states of the head (this image as a backing file): no `Unchanged`.
    fn head_states(&self, offset: u64, len: u64, out: &mut Vec<SnapExtent>) -> Result<()> {
        let end = offset + len;
        let valid_end = end.min(self.header.size).max(offset);
        let mut pos = offset;
        let window = self.list_window();
        while pos < valid_end {
            let window_end = pos.saturating_add(window - pos % window).min(valid_end);
            for run in self
                .tables
                .map(&*self.stream, self.head(), pos, window_end - pos)?
            {
                self.own_state(&run, run.offset, run.end(), out)?;
            }
            pos = window_end;
        }
        push_extent(out, valid_end, end - valid_end, ExtentState::Zero);
        Ok(())
    }
}

impl QcowImage {
    /// Appends to `out`, in order, the parts of `[offset, offset+len)` where point `p` may
    /// hold data: its own data and compressed clusters, and the backing chain's data where
    /// it has none. Metadata only: unallocated L1 spans cost nothing.
    fn allocated_at(
        &self,
        p: usize,
        offset: u64,
        len: u64,
        out: &mut Vec<(u64, u64)>,
    ) -> Result<()> {
        let end = offset.saturating_add(len).min(self.point_size(p));
        let window = self.list_window();
        let mut pos = offset;
        while pos < end {
            let window_end = pos.saturating_add(window - pos % window).min(end);
            for run in self.tables.map(&*self.stream, p, pos, window_end - pos)? {
                match run.kind {
                    Kind::Data { .. } | Kind::Compressed { .. } => {
                        push_range(out, run.offset, run.len)
                    }
                    Kind::Zero => {}
                    Kind::Unalloc => self.backing_allocated(run.offset, run.len, out)?,
                }
            }
            pos = window_end;
        }
        Ok(())
    }

    fn backing_allocated(&self, offset: u64, len: u64, out: &mut Vec<(u64, u64)>) -> Result<()> {
        match &self.backing {
            None => {}
            Some(Backing::Qcow(b)) => b.allocated_at(b.head(), offset, len, out)?,
            Some(Backing::Raw(s)) => {
                let valid = s.size().saturating_sub(offset).min(len);
                let mut states = Vec::new();
                raw_states(&**s, offset, valid, &mut states)?;
                for e in states.iter().filter(|e| e.state == ExtentState::Data) {
                    push_range(out, e.offset, e.len);
                }
            }
        }
        Ok(())
    }
}

/// Appends a range to ranges built in order, merged into the last one when it touches it.
fn push_range(out: &mut Vec<(u64, u64)>, offset: u64, len: u64) {
    match out.last_mut() {
        Some(last) if last.0 + last.1 == offset => last.1 += len,
        _ if len > 0 => out.push((offset, len)),
        _ => {}
    }
}

/// A raw backing file is data throughout, except where its stream knows of holes.
fn raw_states(s: &dyn Stream, offset: u64, len: u64, out: &mut Vec<SnapExtent>) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let end = offset + len;
    let mut pos = offset;
    if let Some(Ok(extents)) = s.extents(offset, len) {
        for e in extents {
            let from = e.offset.max(pos);
            let to = e.offset.saturating_add(e.len).min(end);
            if from >= to {
                continue;
            }
            // A gap the stream did not describe is treated as data: never lose bytes.
            push_extent(out, pos, from - pos, ExtentState::Data);
            let state = if e.zero {
                ExtentState::Zero
            } else {
                ExtentState::Data
            };
            push_extent(out, from, to - from, state);
            pos = to;
        }
    }
    push_extent(out, pos, end - pos, ExtentState::Data);
    Ok(())
}

impl SourceImage for QcowImage {
    fn format(&self) -> &str {
        "qcow"
    }

    fn size(&self) -> u64 {
        self.header.size
    }

    fn snapshots(&self) -> Vec<SourceSnapshot> {
        self.header
            .snapshots
            .iter()
            .map(|s| SourceSnapshot {
                name: if s.name.is_empty() {
                    s.id.clone()
                } else {
                    s.name.clone()
                },
                size: s.disk_size,
                timestamp: (s.date_sec != 0).then_some(u64::from(s.date_sec)),
            })
            .collect()
    }

    fn read(&self, point: Point, offset: u64, buf: &mut [u8]) -> rbdm_registry::Result<()> {
        let p = self.point_index(point)?;
        Ok(self.read_point(p, offset, buf)?)
    }

    fn list_snaps(&self, offset: u64, len: u64) -> rbdm_registry::Result<Vec<Vec<SnapExtent>>> {
        Ok(self.list_snaps_inner(offset, len)?)
    }

    fn allocated(&self, offset: u64, len: u64) -> Option<rbdm_registry::Result<Vec<(u64, u64)>>> {
        let mut out = Vec::new();
        let found =
            (0..self.points()).try_for_each(|p| self.allocated_at(p, offset, len, &mut out));
        Some(found.map(|()| out).map_err(Into::into))
    }

    fn describe(&self) -> String {
        let g = &self.header.geometry;
        let mut d = if g.version == 1 {
            "qcow v1".to_string()
        } else {
            format!("qcow2 v{}", g.version)
        };
        d += &format!(", {} byte clusters", g.cluster_size());
        if g.extended_l2 {
            d += ", extended L2";
        }
        if g.compression == Compression::Zstd {
            d += ", zstd";
        }
        if !self.header.snapshots.is_empty() {
            d += &format!(", {} snapshots", self.header.snapshots.len());
        }
        if let Some(name) = &self.backing_name {
            d += &format!(", backing file {name:?}");
        }
        d
    }
}
