//! The `raw` source format: a thick raw image (`rbd export --export-format 1`) over any
//! stream, with an optional list of raw snapshot exports, oldest first:
//! `{"type":"raw","stream":{...},"snapshots":[{"type":"raw","name":"s1","stream":{...}}, ...]}`.
//!
//! What it is for: `list_snaps` that keeps holes holes and copies only differences. Where the
//! stream knows its holes they are zero without a read; everything else is read and checked in
//! 4 KiB blocks: all-zero blocks are `Zero`, and after the first point, blocks equal to the
//! previous point's are `Unchanged`. Memory is two 1 MiB buffers per call, whatever the range.
//! What it is not: a format prober, and not RBD export format v2.
#![forbid(unsafe_code)]

use rbdm_registry::{
    open_stream, FormatPlugin, OpenContext, Point, Result, SnapExtent, SourceError, SourceImage,
    SourceSnapshot, Stream,
};
use rbdm_spec::RawSpec;

mod cache;
mod classify;

use cache::ChunkCache;
use classify::{classify, Side};

inventory::submit!(FormatPlugin {
    type_name: "raw",
    description: "a thick raw image over a stream, with optional raw snapshot exports",
    open: open_spec,
});

/// Referenced by `rbdm-plugins` so the linker keeps this crate and its registration.
#[inline(never)]
pub fn link() {}

fn open_spec(spec: &serde_json::Value, ctx: &OpenContext) -> Result<Box<dyn SourceImage>> {
    let parsed = RawSpec::from_json(spec, "").map_err(|e| SourceError::BadSpec(e.to_string()))?;
    let head = open_stream(&spec["stream"], "stream", ctx)?;
    let mut snaps = Vec::with_capacity(parsed.snapshots.len());
    for (i, s) in parsed.snapshots.iter().enumerate() {
        let stream = open_stream(
            &spec["snapshots"][i]["stream"],
            &format!("snapshots[{i}].stream"),
            ctx,
        )?;
        snaps.push((s.name.clone(), stream));
    }
    Ok(Box::new(RawImage::new(head, snaps)))
}

/// The zero/unchanged check works on blocks of this size, aligned to absolute offsets.
pub const BLOCK: u64 = 4096;
/// Bytes read per side at a time.
pub const CHUNK: u64 = 1 << 20;

/// A raw image: one stream per point, snapshots oldest first, then the head.
pub struct RawImage {
    points: Vec<Box<dyn Stream>>,
    names: Vec<String>,
    scanned: ChunkCache,
    /// Per point: the stream cannot report holes, so finding zeros means reading.
    blind: Vec<bool>,
}

impl RawImage {
    pub fn new(head: Box<dyn Stream>, snapshots: Vec<(String, Box<dyn Stream>)>) -> Self {
        let (names, mut points): (Vec<String>, Vec<Box<dyn Stream>>) =
            snapshots.into_iter().unzip();
        points.push(head);
        let blind = points.iter().map(|s| s.extents(0, 0).is_none()).collect();
        RawImage {
            points,
            names,
            scanned: ChunkCache::default(),
            blind,
        }
    }

    fn stream(&self, point: Point) -> Result<&dyn Stream> {
        let i = match point {
            Point::Snap(i) if i < self.names.len() => i,
            Point::Snap(i) => {
                return Err(SourceError::Invalid(format!(
                    "no snapshot #{i} in the raw source"
                )))
            }
            Point::Head => self.names.len(),
        };
        Ok(&*self.points[i])
    }

    /// One point's extents over `[offset, offset+len)`, compared with the point before it.
    fn point_extents(&self, i: usize, offset: u64, len: u64) -> Result<Vec<SnapExtent>> {
        let cur = &*self.points[i];
        let end = offset.saturating_add(len).min(cur.size());
        if offset >= end {
            return Ok(Vec::new());
        }
        let cur_sides = sides(cur, offset, end)?;
        let prev_sides = match i.checked_sub(1).map(|p| &*self.points[p]) {
            Some(prev) => {
                let prev_end = end.min(prev.size()).max(offset);
                let mut s = sides(prev, offset, prev_end)?;
                s.push((prev_end, end, Side::Absent));
                s
            }
            None => vec![(offset, end, Side::Absent)],
        };
        let prev = i.checked_sub(1).map(|p| &*self.points[p]);
        // Each point's data is scanned as the current point once: that is what the copy
        // reads next. The previous point's bytes (read again here to compare) are not kept.
        let keep = |cur: bool, offset: u64, data: &[u8]| {
            if cur {
                self.scanned.keep(i, offset, data);
            }
        };
        classify(cur, prev, &cur_sides, &prev_sides, &keep)
    }
}

/// What a stream holds over `[offset, end)`: holes where it knows them, data elsewhere;
/// sorted, covering the range exactly, whatever the stream returned.
fn sides(s: &dyn Stream, offset: u64, end: u64) -> Result<Vec<(u64, u64, Side)>> {
    if offset >= end {
        return Ok(Vec::new());
    }
    let known = match s.extents(offset, end - offset) {
        None => Vec::new(),
        Some(r) => r?,
    };
    let mut out = Vec::new();
    let mut pos = offset;
    for e in known.iter().filter(|e| e.zero) {
        let (a, b) = (e.offset.max(pos), e.offset.saturating_add(e.len).min(end));
        if a >= b {
            continue;
        }
        if a > pos {
            out.push((pos, a, Side::Data));
        }
        out.push((a, b, Side::Hole));
        pos = b;
    }
    if pos < end {
        out.push((pos, end, Side::Data));
    }
    Ok(out)
}

impl SourceImage for RawImage {
    fn format(&self) -> &str {
        "raw"
    }

    fn size(&self) -> u64 {
        self.points.last().map_or(0, |s| s.size())
    }

    fn snapshots(&self) -> Vec<SourceSnapshot> {
        self.names
            .iter()
            .zip(&self.points)
            .map(|(name, s)| SourceSnapshot {
                name: name.clone(),
                size: s.size(),
                timestamp: None,
            })
            .collect()
    }

    fn read(&self, point: Point, offset: u64, buf: &mut [u8]) -> Result<()> {
        let s = self.stream(point)?;
        let index = match point {
            Point::Snap(i) => i,
            Point::Head => self.names.len(),
        };
        if self.scanned.fill(index, offset, buf) {
            return Ok(());
        }
        let size = s.size();
        let n = if offset >= size {
            0
        } else {
            buf.len()
                .min((size - offset).min(usize::MAX as u64) as usize)
        };
        buf[n..].fill(0);
        if n > 0 {
            s.read_at(offset, &mut buf[..n])?;
        }
        Ok(())
    }

    fn list_snaps(&self, offset: u64, len: u64) -> Result<Vec<Vec<SnapExtent>>> {
        (0..self.points.len())
            .map(|i| self.point_extents(i, offset, len))
            .collect()
    }

    /// Known only when every point's stream reports its holes: then whatever is not a hole
    /// at some point may hold data.
    fn allocated(&self, offset: u64, len: u64) -> Option<Result<Vec<(u64, u64)>>> {
        if self.blind.iter().any(|&b| b) {
            return None;
        }
        let mut out = Vec::new();
        for s in &self.points {
            let end = offset.saturating_add(len).min(s.size());
            match sides(&**s, offset, end) {
                Ok(parts) => out.extend(
                    parts
                        .into_iter()
                        .filter(|p| matches!(p.2, Side::Data))
                        .map(|(from, to, _)| (from, to - from)),
                ),
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(out))
    }

    fn scan_cost(&self, offset: u64, len: u64) -> u64 {
        let span = |s: &dyn Stream| {
            offset
                .saturating_add(len)
                .min(s.size())
                .saturating_sub(offset)
        };
        let mut cost = 0;
        for (i, s) in self.points.iter().enumerate() {
            if self.blind[i] {
                cost += span(&**s);
                // Compared with the point before: that one is read again.
                if i > 0 && self.blind[i - 1] {
                    cost += span(&*self.points[i - 1]).min(span(&**s));
                }
            }
        }
        cost
    }

    fn describe(&self) -> String {
        let head = self.points.last().map(|s| s.describe()).unwrap_or_default();
        match self.names.len() {
            0 => format!("raw over {head}"),
            n => format!("raw over {head}, {n} snapshot(s)"),
        }
    }
}

#[cfg(test)]
mod tests;
