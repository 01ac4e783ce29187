//! Export of an image: raw bytes (export format 1) to a file, holes kept, or to a stream;
//! or export format 2, the header then one diff per snapshot, oldest first, then the head.

use std::fs::File;
use std::io::Write;

use rbdm_image::{Image, ImageSpec, Rbd};

use crate::diff::{DiffFormat, DiffWriter};
use crate::header::{write_diff_count, write_header};
use crate::sparse::{chunk_size, is_zero, write_file_sparse, write_zeros};
use crate::{Error, Result};

const FAILED: &str = "export error";

/// Allocated extents of the image, sorted and without overlaps, cut at `size`.
fn data_extents(image: &Image, size: u64) -> Result<Vec<(u64, u64)>> {
    let mut ext = image
        .allocated_extents(0, size)
        .map_err(Error::image(FAILED))?;
    ext.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ext.len());
    for (off, len) in ext {
        let end = off.saturating_add(len).min(size);
        let start = out.last().map_or(off, |&(o, l)| off.max(o + l));
        if start < end {
            out.push((start, end - start));
        }
    }
    Ok(out)
}

/// Calls `f` for the pieces of an extent, each at most one chunk and inside one chunk.
fn pieces(off: u64, len: u64, chunk: u64, mut f: impl FnMut(u64, u64) -> Result<()>) -> Result<()> {
    let end = off + len;
    let mut pos = off;
    while pos < end {
        let next = ((pos / chunk + 1) * chunk).min(end);
        f(pos, next - pos)?;
        pos = next;
    }
    Ok(())
}

/// The image into `file`, which is sized to the image and synced; zeros stay holes.
pub fn export_raw_file(
    image: &Image,
    file: &File,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let size = image.size();
    let chunk = chunk_size(&image.layout());
    let mut buf = vec![0u8; chunk as usize];
    for (off, len) in data_extents(image, size)? {
        pieces(off, len, chunk, |pos, n| {
            let data = &mut buf[..n as usize];
            image.read(pos, data).map_err(Error::image(FAILED))?;
            write_file_sparse(file, pos, data).map_err(Error::Write)?;
            progress(pos + n, size);
            Ok(())
        })?;
    }
    file.set_len(size).map_err(Error::Write)?;
    file.sync_all().map_err(Error::Write)
}

/// The image to a stream, holes written as zeros.
pub fn export_raw_stream(
    image: &Image,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let size = image.size();
    let chunk = chunk_size(&image.layout());
    let mut buf = vec![0u8; chunk as usize];
    let mut pos = 0;
    for (off, len) in data_extents(image, size)? {
        write_zeros(out, off - pos).map_err(Error::Write)?;
        pieces(off, len, chunk, |p, n| {
            let data = &mut buf[..n as usize];
            image.read(p, data).map_err(Error::image(FAILED))?;
            out.write_all(data).map_err(Error::Write)?;
            progress(p + n, size);
            Ok(())
        })?;
        pos = off + len;
    }
    write_zeros(out, size - pos).map_err(Error::Write)?;
    out.flush().map_err(Error::Write)
}

/// Export format 2 of `image` (opened at its head from `spec`): snapshots are opened
/// through `rbd`. `progress` counts diffs.
pub fn export_v2(
    rbd: &Rbd,
    spec: &ImageSpec,
    image: &Image,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let info = image.info().map_err(Error::image(FAILED))?;
    let meta: Vec<(String, String)> = image
        .metadata_list()
        .map_err(Error::image(FAILED))?
        .into_iter()
        .collect();
    write_header(out, &info.layout, info.features, &meta)?;
    let snaps = image.snap_list().map_err(Error::image(FAILED))?;
    let steps = snaps.len() as u64 + 1;
    write_diff_count(out, steps)?;
    let mut prev: Option<&str> = None;
    for (i, snap) in snaps.iter().enumerate() {
        let at_snap = rbd
            .open(&spec.with_snap(Some(&snap.name)), true)
            .map_err(Error::image(format!(
                "error opening image {}@{}",
                spec.image, snap.name
            )))?;
        let to = Some((snap.name.as_str(), snap.protected));
        let r = export_diff(&at_snap, prev, to, snap.size, DiffFormat::V2, out);
        let _ = at_snap.close();
        r?;
        prev = Some(&snap.name);
        progress(i as u64 + 1, steps);
    }
    export_diff(image, prev, None, image.size(), DiffFormat::V2, out)?;
    out.flush().map_err(Error::Write)
}

/// One diff of `image` as opened, from snapshot `from` (or from nothing: then every data
/// extent, a clone's parent data included) to `to` (name, protected) or the head.
pub fn export_diff(
    image: &Image,
    from: Option<&str>,
    to: Option<(&str, bool)>,
    size: u64,
    format: DiffFormat,
    out: &mut dyn Write,
) -> Result<()> {
    let mut w = DiffWriter::begin(out, format)?;
    w.snaps(from, to)?;
    w.size(size)?;
    let chunk = chunk_size(&image.layout());
    let mut buf = vec![0u8; chunk as usize];
    for (off, len, exists) in changed_extents(image, from, size)? {
        if !exists {
            w.zero(off, len)?;
            continue;
        }
        pieces(off, len, chunk, |p, n| {
            let data = &mut buf[..n as usize];
            image.read(p, data).map_err(Error::image(FAILED))?;
            match (is_zero(data), from) {
                (false, _) => w.write(p, data),
                (true, Some(_)) => w.zero(p, n),
                // A first diff starts from zeros: nothing to say.
                (true, None) => Ok(()),
            }
        })?;
    }
    w.end()
}

/// `(offset, len, has data)` of what a diff from `from` carries, cut at `size`.
fn changed_extents(image: &Image, from: Option<&str>, size: u64) -> Result<Vec<(u64, u64, bool)>> {
    let Some(name) = from else {
        let all = data_extents(image, size)?;
        return Ok(all.into_iter().map(|(o, l)| (o, l, true)).collect());
    };
    let extents = image
        .diff(Some(name), false)
        .map_err(Error::image(FAILED))?;
    Ok(extents
        .into_iter()
        .filter_map(|e| {
            let end = e.offset.saturating_add(e.len).min(size);
            (e.offset < end).then_some((e.offset, end - e.offset, e.exists))
        })
        .collect())
}
