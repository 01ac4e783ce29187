//! Import into a new image: raw bytes (export format 1) from a file or a stream, or an
//! export-format-2 stream applied diff by diff. A failed import removes what it created.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use rbdm_image::{CreateOptions, Image, ImageSpec, Rbd};

use crate::diff::{DiffFormat, DiffReader, DiffRecord};
use crate::header::{read_diff_count, ImageHeader};
use crate::sparse::{chunk_size, write_image_sparse};
use crate::wire::{read_full, Input};
use crate::{Error, Problem, Result, Tag};

const FAILED: &str = "import failed";

/// Creates `spec` with `opts`, lets `fill` write it, then flushes and closes it. When any
/// step fails the image is removed again, snapshots and all: a failed import leaves nothing.
pub fn create_filled(
    rbd: &Rbd,
    spec: &ImageSpec,
    opts: &CreateOptions,
    fill: impl FnOnce(&Image) -> Result<()>,
) -> Result<()> {
    rbd.create(&spec.pool_spec(), &spec.image, opts)
        .map_err(Error::image(FAILED))?;
    let r = match rbd.open(spec, false) {
        Ok(image) => {
            let filled = fill(&image).and_then(|()| image.flush().map_err(Error::image(FAILED)));
            let closed = image.close().map_err(Error::image(FAILED));
            filled.and(closed)
        }
        Err(source) => Err(Error::Image {
            context: format!("error opening image {}", spec.image),
            source,
        }),
    };
    match r {
        Err(e) => Err(match remove_partial(rbd, spec) {
            Ok(()) => e,
            Err(cleanup) => Error::Leftover {
                image: spec.to_string(),
                cleanup,
                source: Box::new(e),
            },
        }),
        ok => ok,
    }
}

/// Removes a half-imported image: unprotects and purges its snapshots first.
fn remove_partial(rbd: &Rbd, spec: &ImageSpec) -> rbdm_image::Result<()> {
    if let Ok(image) = rbd.open(spec, false) {
        // Best effort: whatever is left, the remove below reports.
        if let Ok(snaps) = image.snap_list() {
            for s in snaps.iter().filter(|s| s.protected) {
                let _ = image.snap_unprotect(&s.name);
            }
            if !snaps.is_empty() {
                let _ = image.snap_purge();
            }
        }
        let _ = image.close();
    }
    rbd.remove(spec, &mut |_, _| {})
}

/// The size of a raw source file; seeking to the end also sizes block devices, whose
/// metadata length is 0.
pub fn file_size(file: &File, path: &str) -> Result<u64> {
    let mut f = file;
    f.seek(SeekFrom::End(0)).map_err(|source| Error::ReadFile {
        path: path.to_string(),
        source,
    })
}

/// Copies the first `size` bytes of `file` into `image`, reading only its data extents.
pub fn import_raw_file(
    image: &Image,
    file: &File,
    path: &str,
    size: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let chunk = chunk_size(&image.layout());
    let mut buf = vec![0u8; chunk as usize];
    let mut pos = 0;
    while let Some((start, len)) = rbdm_sparse::next_data_or_rest(file, pos, size) {
        let end = start + len;
        let mut off = start;
        while off < end {
            let piece = ((off / chunk + 1) * chunk).min(end);
            let data = &mut buf[..(piece - off) as usize];
            file.read_exact_at(data, off)
                .map_err(|source| Error::ReadFile {
                    path: path.to_string(),
                    source,
                })?;
            write_image_sparse(image, off, data, false).map_err(Error::image(FAILED))?;
            off = piece;
            progress(off, size);
        }
        pos = end;
    }
    Ok(())
}

/// Copies a stream of unknown length into `image`, growing it as data arrives.
pub fn import_raw_stream(
    image: &Image,
    input: &mut dyn Read,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let mut buf = vec![0u8; chunk_size(&image.layout()) as usize];
    let (mut pos, mut size) = (0u64, 0u64);
    loop {
        let n = read_full(input, &mut buf).map_err(|source| Error::ReadFile {
            path: "stdin".into(),
            source,
        })? as u64;
        if n == 0 {
            break;
        }
        // Grow doubling (at most 1 GiB at a time), so a long stream does not pay a header
        // update per chunk.
        if pos + n > size {
            size = (pos + n).max(size.saturating_mul(2).min(pos + n + (1 << 30)));
            resize(image, size)?;
        }
        write_image_sparse(image, pos, &buf[..n as usize], false).map_err(Error::image(FAILED))?;
        pos += n;
        progress(pos, pos);
        if n < buf.len() as u64 {
            break;
        }
    }
    if size != pos {
        resize(image, pos)?;
    }
    Ok(())
}

fn resize(image: &Image, size: u64) -> Result<()> {
    image
        .resize(size, true, &mut |_, _| {})
        .map_err(Error::image(FAILED))
}

/// Applies the rest of an export-format-2 stream (after [`crate::header::read_header`]) to
/// the new `image`: the header's metadata, then every diff, then checks nothing follows.
/// `progress` gets the stream offset after each diff.
pub fn import_v2<R: Read>(
    input: &mut Input<R>,
    image: &Image,
    header: &ImageHeader,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    for (k, v) in &header.meta {
        image.metadata_set(k, v).map_err(Error::image(FAILED))?;
    }
    let count = read_diff_count(input)?;
    let mut last_snap = None;
    for i in 0..count {
        apply_diff(input, DiffFormat::V2, image, &mut last_snap, i == 0)?;
        progress(input.pos());
    }
    let at = input.pos();
    if !input.at_end()? {
        return Err(Error::corrupt(at, None, Problem::Trailing));
    }
    Ok(())
}

/// Applies one diff to `image`, which must be at snapshot `last_snap` (what 'f' names):
/// resizes at 's', writes the extents, then takes the 't' snapshot, protected if 'p' says
/// so, and records it in `last_snap`. On a `fresh` image zero blocks need not be written.
pub fn apply_diff<R: Read>(
    input: &mut Input<R>,
    format: DiffFormat,
    image: &Image,
    last_snap: &mut Option<String>,
    fresh: bool,
) -> Result<()> {
    let mut reader = DiffReader::begin(input, format, image.size())?;
    let mut buf = Vec::new();
    let (mut to, mut protected) = (None, false);
    loop {
        match reader.next_record()? {
            (at, DiffRecord::FromSnap(name)) => check_from(at, &name, last_snap.as_deref())?,
            (_, DiffRecord::ToSnap(name)) => to = Some(name),
            (_, DiffRecord::Protected(p)) => protected = p,
            (_, DiffRecord::Size(size)) if size != image.size() => resize(image, size)?,
            (_, DiffRecord::Size(_)) => {}
            (_, DiffRecord::Write { offset, len }) => {
                write_data(&mut reader, image, (offset, len), &mut buf, !fresh)?
            }
            (_, DiffRecord::Zero { offset, len }) => image
                .write_zeroes(offset, len)
                .map_err(Error::image(FAILED))?,
            (_, DiffRecord::End) => break,
        }
    }
    if let Some(name) = to {
        take_snapshot(image, &name, protected)?;
        *last_snap = Some(name);
    }
    Ok(())
}

fn check_from(at: u64, name: &str, have: Option<&str>) -> Result<()> {
    if have == Some(name) {
        return Ok(());
    }
    let problem = Problem::FromSnap {
        name: name.to_string(),
        have: have.unwrap_or("(none)").to_string(),
    };
    Err(Error::corrupt(
        at,
        Some(Tag(crate::diff::tag::FROM_SNAP)),
        problem,
    ))
}

/// Streams a write's data into the image a piece at a time, each piece inside one chunk so
/// writes line up with objects; `zero_fill` zeroes the all-zero blocks.
fn write_data<R: Read>(
    reader: &mut DiffReader<'_, R>,
    image: &Image,
    (offset, len): (u64, u64),
    buf: &mut Vec<u8>,
    zero_fill: bool,
) -> Result<()> {
    let chunk = chunk_size(&image.layout());
    buf.resize(chunk as usize, 0);
    let (mut pos, end) = (offset, offset + len);
    while pos < end {
        let k = (end - pos).min(chunk - pos % chunk) as usize;
        let (_, data) = reader.data(&mut buf[..k])?;
        write_image_sparse(image, pos, data, zero_fill).map_err(Error::image(FAILED))?;
        pos += k as u64;
    }
    Ok(())
}

fn take_snapshot(image: &Image, name: &str, protected: bool) -> Result<()> {
    image.snap_create(name).map_err(Error::image(format!(
        "{FAILED}: creating snapshot '{name}'"
    )))?;
    if protected {
        image.snap_protect(name).map_err(Error::image(format!(
            "{FAILED}: protecting snapshot '{name}'"
        )))?;
    }
    Ok(())
}
