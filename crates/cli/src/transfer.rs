//! `import` and `export`: raw files (format 1) and Ceph's export format v2 (header records,
//! then one diff per snapshot, oldest first, then the head), streamed in object-size chunks
//! so memory stays bounded, and sparse both ways: holes are neither read nor written.
//!
//! Format 2, as Ceph's `rbd export --export-format 2` writes it (doc/dev/rbd-export.rst and
//! rbd-diff.rst): "rbd image v2\n"; records tag u8 + le64 length + value ('O' order,
//! 'T' features, 'U' stripe unit, 'C' stripe count, 'M' metadata key/value) ended by 'E';
//! "rbd image diffs v2\n" (not in the doc, but written and required by rbd); le64 number of
//! diffs; each diff "rbd diff v2\n" with 'f' from-snap, 't' to-snap, 'p' protected,
//! 's' size, then 'w' (offset, length, data) and 'z' (offset, length), ended by 'e'.
//! A tag we do not know is refused rather than skipped: a flipped byte must not silently
//! drop data.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use rbdm_image::{Image, ImageSpec, Layout};

use crate::args::{ExportArgs, ImportArgs};
use crate::cmds::{check_namespace, check_pool, create_options, open, Ctx, Snap};
use crate::output::{err, CmdResult, Fail, Progress};

const IMAGE_BANNER: &[u8] = b"rbd image v2\n";
const DIFFS_BANNER: &[u8] = b"rbd image diffs v2\n";
const DIFF_BANNER: &[u8] = b"rbd diff v2\n";
/// Zero detection granularity, as rbd's default sparse size.
const SPARSE: u64 = 4096;

// ---- sparse writing

/// Writes `data` at `off`, skipping 4 KiB blocks that are all zero; with `zero_fill` those
/// blocks are zeroed in the image instead (a later diff over older data).
fn write_sparse(image: &Image, off: u64, data: &[u8], zero_fill: bool) -> rbdm_image::Result<()> {
    let mut i = 0usize;
    while i < data.len() {
        // Blocks follow absolute 4 KiB boundaries so runs line up with objects.
        let block_end = (((off + i as u64) / SPARSE + 1) * SPARSE - off) as usize;
        let end = block_end.min(data.len());
        let zero = is_zero(&data[i..end]);
        let mut j = end;
        while j < data.len() {
            let next = (j + SPARSE as usize).min(data.len());
            if is_zero(&data[j..next]) != zero {
                break;
            }
            j = next;
        }
        if !zero {
            image.write(off + i as u64, &data[i..j])?;
        } else if zero_fill {
            image.write_zeroes(off + i as u64, (j - i) as u64)?;
        }
        i = j;
    }
    Ok(())
}

fn is_zero(buf: &[u8]) -> bool {
    buf.iter().all(|&b| b == 0)
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn chunk_size(layout: &Layout) -> u64 {
    layout.object_size.clamp(SPARSE, 32 << 20)
}

// ---- import

pub fn import(ctx: &Ctx, a: &ImportArgs) -> CmdResult {
    let dest = match (&a.dest, a.path.as_str()) {
        (Some(d), _) => d.clone(),
        (None, "-") => return Err(Fail::invalid("destination image name must be specified")),
        (None, path) => std::path::Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| Fail::invalid(format!("cannot derive an image name from '{path}'")))?,
    };
    let spec = ctx.image_spec(&dest, Snap::No)?;
    if a.export_format == 1 {
        create_options(&a.layout, 0, None, None)?;
    }
    let file = match a.path.as_str() {
        "-" => None,
        path => Some(File::open(path).map_err(|e| Fail::io(&e, format!("error opening {path}")))?),
    };
    check_namespace(ctx, &spec.pool_spec())?;
    if let Some(pool) = &a.layout.data_pool {
        check_pool(ctx, pool)?;
    }
    let mut pc = ctx.progress("Importing image");
    let r = match (a.export_format, file) {
        (2, Some(f)) => {
            let total = f.metadata().map(|m| m.len()).unwrap_or(0);
            import_v2(
                ctx,
                a,
                &spec,
                &mut BufReader::with_capacity(1 << 20, f),
                total,
                &mut pc,
            )
        }
        (2, None) => import_v2(
            ctx,
            a,
            &spec,
            &mut BufReader::with_capacity(1 << 20, std::io::stdin().lock()),
            0,
            &mut pc,
        ),
        (_, Some(f)) => import_raw_file(ctx, a, &spec, &f, &mut pc),
        (_, None) => import_raw_stream(ctx, a, &spec, &mut std::io::stdin().lock(), &mut pc),
    };
    match r {
        Ok(()) => pc.finish(),
        Err(_) => pc.fail(),
    }
    r
}

/// Creates the destination and opens it; the caller removes it again if anything fails.
fn create_dest(ctx: &Ctx, spec: &ImageSpec, opts: &rbdm_image::CreateOptions) -> CmdResult<Image> {
    ctx.rbd()?
        .create(&spec.pool_spec(), &spec.image, opts)
        .map_err(err("import failed"))?;
    match open(ctx, spec, false) {
        Ok(image) => Ok(image),
        Err(e) => {
            remove_partial(ctx, spec);
            Err(e)
        }
    }
}

/// Runs `body` on the new image; on failure the image is removed, snapshots and all.
fn fill_or_remove(
    ctx: &Ctx,
    spec: &ImageSpec,
    image: Image,
    body: impl FnOnce(&Image) -> CmdResult,
) -> CmdResult {
    let r = body(&image).and_then(|()| image.flush().map_err(err("import failed")));
    let closed = image.close().map_err(err("import failed"));
    let r = r.and(closed);
    if r.is_err() {
        remove_partial(ctx, spec);
    }
    r
}

fn remove_partial(ctx: &Ctx, spec: &ImageSpec) {
    let Ok(rbd) = ctx.rbd() else { return };
    if let Ok(image) = rbd.open(spec, false) {
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
    if let Err(e) = rbd.remove(spec, &mut |_, _| {}) {
        eprintln!("rbdm: could not remove the partial image {spec}: {e}");
    }
}

fn io_fail(what: &str) -> impl FnOnce(std::io::Error) -> Fail + '_ {
    move |e| Fail::io(&e, format!("import failed: error reading {what}"))
}

fn import_raw_file(
    ctx: &Ctx,
    a: &ImportArgs,
    spec: &ImageSpec,
    file: &File,
    pc: &mut Progress,
) -> CmdResult {
    // Seeking to the end also sizes block devices, whose metadata length is 0.
    let size = (&*file).seek(SeekFrom::End(0)).map_err(io_fail(&a.path))?;
    let opts = create_options(&a.layout, size, None, None)?;
    let image = create_dest(ctx, spec, &opts)?;
    let chunk = chunk_size(&image.layout());
    fill_or_remove(ctx, spec, image, |image| {
        let mut buf = vec![0u8; chunk as usize];
        let mut pos = 0;
        while let Some((start, end)) = next_data(file, pos, size) {
            let mut off = start;
            while off < end {
                let piece = ((off / chunk + 1) * chunk).min(end);
                let data = &mut buf[..(piece - off) as usize];
                file.read_exact_at(data, off).map_err(io_fail(&a.path))?;
                write_sparse(image, off, data, false).map_err(err("import failed"))?;
                off = piece;
                pc.update(off, size);
            }
            pos = end;
        }
        Ok(())
    })
}

/// The next data extent at or after `pos`, from SEEK_DATA/SEEK_HOLE; where the file system
/// cannot tell, everything left is data.
fn next_data(file: &File, pos: u64, size: u64) -> Option<(u64, u64)> {
    if pos >= size {
        return None;
    }
    let fd = file.as_raw_fd();
    // SAFETY: lseek on a descriptor we own; positional reads do not depend on the offset.
    let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
    if data < 0 {
        let errno = std::io::Error::last_os_error().raw_os_error();
        return if errno == Some(libc::ENXIO) {
            None
        } else {
            Some((pos, size))
        };
    }
    let data = data as u64;
    if data >= size {
        return None;
    }
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
    let hole = if hole < 0 {
        size
    } else {
        (hole as u64).min(size)
    };
    Some((data, hole.max(data)))
}

fn import_raw_stream(
    ctx: &Ctx,
    a: &ImportArgs,
    spec: &ImageSpec,
    input: &mut dyn Read,
    pc: &mut Progress,
) -> CmdResult {
    let opts = create_options(&a.layout, 0, None, None)?;
    let image = create_dest(ctx, spec, &opts)?;
    let chunk = chunk_size(&image.layout());
    fill_or_remove(ctx, spec, image, |image| {
        let mut buf = vec![0u8; chunk as usize];
        let mut pos = 0u64;
        let mut size = 0u64;
        loop {
            let n = read_full(input, &mut buf).map_err(io_fail("stdin"))? as u64;
            if n == 0 {
                break;
            }
            // The size is unknown up front: grow as data arrives, doubling (at most 1 GiB
            // at a time) so a long stream does not pay a header update per chunk.
            if pos + n > size {
                size = (pos + n).max(size.saturating_mul(2).min(pos + n + (1 << 30)));
                image
                    .resize(size, false, &mut |_, _| {})
                    .map_err(err("import failed"))?;
            }
            write_sparse(image, pos, &buf[..n as usize], false).map_err(err("import failed"))?;
            pos += n;
            pc.update(pos, pos);
            if n < buf.len() as u64 {
                break;
            }
        }
        if size != pos {
            image
                .resize(pos, true, &mut |_, _| {})
                .map_err(err("import failed"))?;
        }
        Ok(())
    })
}

/// A reader that knows its byte offset, so a corrupt stream is reported where it breaks.
struct Stream<'a> {
    r: &'a mut dyn Read,
    pos: u64,
}

fn corrupt(at: u64, msg: impl std::fmt::Display) -> Fail {
    Fail::errno(
        libc::EBADMSG,
        "import failed",
        &format!("export stream corrupt at byte {at}: {msg}"),
    )
}

impl Stream<'_> {
    fn exact(&mut self, buf: &mut [u8], what: &str) -> CmdResult {
        let at = self.pos;
        let n = read_full(self.r, buf)
            .map_err(|e| Fail::io(&e, "import failed: error reading the stream"))?;
        self.pos += n as u64;
        if n < buf.len() {
            return Err(corrupt(at, format!("stream ends inside {what}")));
        }
        Ok(())
    }
    fn u8(&mut self, what: &str) -> CmdResult<u8> {
        let mut b = [0u8; 1];
        self.exact(&mut b, what)?;
        Ok(b[0])
    }
    fn u32(&mut self, what: &str) -> CmdResult<u32> {
        let mut b = [0u8; 4];
        self.exact(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self, what: &str) -> CmdResult<u64> {
        let mut b = [0u8; 8];
        self.exact(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }
    fn string(&mut self, what: &str) -> CmdResult<String> {
        let at = self.pos;
        let len = self.u32(what)?;
        if len > 1 << 20 {
            return Err(corrupt(at, format!("{what} length {len} is implausible")));
        }
        let mut b = vec![0u8; len as usize];
        self.exact(&mut b, what)?;
        String::from_utf8(b).map_err(|_| corrupt(at, format!("{what} is not UTF-8")))
    }
    fn banner(&mut self, expected: &[u8]) -> CmdResult {
        let at = self.pos;
        let mut b = vec![0u8; expected.len()];
        let what =
            String::from_utf8_lossy(expected.strip_suffix(b"\n").unwrap_or(expected)).into_owned();
        self.exact(&mut b, &format!("the banner \"{what}\""))?;
        if b != expected {
            return Err(corrupt(at, format!("expected the banner \"{what}\"")));
        }
        Ok(())
    }
    /// The le64 length of a fixed-size record, which must be `want`.
    fn record_len(&mut self, tag: u8, want: u64) -> CmdResult {
        let at = self.pos;
        let len = self.u64("a record length")?;
        if len != want {
            return Err(corrupt(
                at,
                format!("record '{}' has length {len}, expected {want}", tag as char),
            ));
        }
        Ok(())
    }
}

#[derive(Default)]
struct V2Header {
    order: Option<u64>,
    features: Option<u64>,
    stripe_unit: Option<u64>,
    stripe_count: Option<u64>,
    meta: Vec<(String, String)>,
}

fn read_header(s: &mut Stream) -> CmdResult<V2Header> {
    s.banner(IMAGE_BANNER)?;
    let mut h = V2Header::default();
    loop {
        let at = s.pos;
        let tag = s.u8("a header record tag")?;
        match tag {
            b'E' => return Ok(h),
            b'O' | b'T' | b'U' | b'C' | b'F' => {
                s.record_len(tag, 8)?;
                let v = s.u64("a header record")?;
                match tag {
                    b'O' => h.order = Some(v),
                    b'T' => h.features = Some(v),
                    b'U' => h.stripe_unit = Some(v),
                    b'C' => h.stripe_count = Some(v),
                    _ if v != 2 => {
                        return Err(corrupt(at, format!("image format {v} is not supported")))
                    }
                    _ => {}
                }
            }
            b'M' => {
                let len_at = s.pos;
                let len = s.u64("a record length")?;
                let start = s.pos;
                let key = s.string("a metadata key")?;
                let value = s.string("a metadata value")?;
                if s.pos - start != len {
                    return Err(corrupt(
                        len_at,
                        format!("metadata record length {len} does not match its contents"),
                    ));
                }
                h.meta.push((key, value));
            }
            _ => {
                return Err(corrupt(
                    at,
                    format!("unknown header record tag {}", show_tag(tag)),
                ))
            }
        }
    }
}

fn show_tag(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}' (0x{tag:02x})", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}

fn header_layout(h: &V2Header, at: u64) -> CmdResult<Option<Layout>> {
    let Some(order) = h.order else {
        return Ok(None);
    };
    if !(12..=25).contains(&order) {
        return Err(corrupt(at, format!("image order {order} is out of range")));
    }
    let object_size = 1u64 << order;
    let unit = h.stripe_unit.unwrap_or(object_size);
    let count = h.stripe_count.unwrap_or(1);
    Layout::new(object_size, unit, count)
        .map(Some)
        .map_err(|e| corrupt(at, e))
}

fn import_v2(
    ctx: &Ctx,
    a: &ImportArgs,
    spec: &ImageSpec,
    input: &mut dyn Read,
    total: u64,
    pc: &mut Progress,
) -> CmdResult {
    let mut s = Stream { r: input, pos: 0 };
    let h = read_header(&mut s)?;
    let base = header_layout(&h, 0)?;
    let opts = create_options(&a.layout, 0, base, h.features)?;
    let image = create_dest(ctx, spec, &opts)?;
    fill_or_remove(ctx, spec, image, |image| {
        for (k, v) in &h.meta {
            image.metadata_set(k, v).map_err(err("import failed"))?;
        }
        s.banner(DIFFS_BANNER)?;
        let count = s.u64("the number of diffs")?;
        let mut last_snap: Option<String> = None;
        for i in 0..count {
            import_diff(&mut s, image, &mut last_snap, i == 0)?;
            pc.update(s.pos, total.max(s.pos));
        }
        let mut extra = [0u8; 1];
        if read_full(s.r, &mut extra).map_err(|e| Fail::io(&e, "import failed"))? != 0 {
            return Err(corrupt(s.pos, "unexpected data after the last diff"));
        }
        Ok(())
    })
}

fn import_diff(
    s: &mut Stream,
    image: &Image,
    last_snap: &mut Option<String>,
    first: bool,
) -> CmdResult {
    s.banner(DIFF_BANNER)?;
    let chunk = chunk_size(&image.layout());
    let mut buf = Vec::new();
    let mut to: Option<String> = None;
    let mut protected = false;
    let mut size = image.size();
    loop {
        let at = s.pos;
        let tag = s.u8("a diff record tag")?;
        match tag {
            b'f' | b't' => {
                let len_at = s.pos;
                let len = s.u64("a record length")?;
                let name = s.string("a snapshot name")?;
                if len != 4 + name.len() as u64 {
                    return Err(corrupt(
                        len_at,
                        format!("snapshot record length {len} does not match its name"),
                    ));
                }
                if tag == b't' {
                    to = Some(name);
                } else if last_snap.as_deref() != Some(name.as_str()) {
                    let have = last_snap.as_deref().unwrap_or("(none)");
                    return Err(corrupt(
                        at,
                        format!("diff starts at snapshot '{name}', but the image is at '{have}'"),
                    ));
                }
            }
            b'p' => {
                s.record_len(tag, 1)?;
                protected = s.u8("a protection flag")? != 0;
            }
            b's' => {
                s.record_len(tag, 8)?;
                size = s.u64("an image size")?;
                if size != image.size() {
                    image
                        .resize(size, true, &mut |_, _| {})
                        .map_err(err("import failed"))?;
                }
            }
            b'w' | b'z' => {
                let len_at = s.pos;
                let len = s.u64("a record length")?;
                let off = s.u64("an extent offset")?;
                let n = s.u64("an extent length")?;
                let want = if tag == b'w' {
                    n.checked_add(16)
                } else {
                    Some(16)
                };
                if want != Some(len) {
                    return Err(corrupt(
                        len_at,
                        format!(
                            "record '{}' has length {len}, inconsistent with its extent",
                            tag as char
                        ),
                    ));
                }
                if off.checked_add(n).is_none_or(|end| end > size) {
                    return Err(corrupt(
                        at,
                        format!("extent {off}+{n} lies beyond the image size {size}"),
                    ));
                }
                if tag == b'z' {
                    image.write_zeroes(off, n).map_err(err("import failed"))?;
                    continue;
                }
                let mut done = 0;
                while done < n {
                    let k = (n - done).min(chunk - (off + done) % chunk);
                    buf.resize(k as usize, 0);
                    s.exact(&mut buf, "extent data")?;
                    write_sparse(image, off + done, &buf, !first).map_err(err("import failed"))?;
                    done += k;
                }
            }
            b'e' => break,
            _ => {
                return Err(corrupt(
                    at,
                    format!("unknown diff record tag {}", show_tag(tag)),
                ))
            }
        }
    }
    if let Some(name) = to {
        image
            .snap_create(&name)
            .map_err(err(format!("import failed: creating snapshot '{name}'")))?;
        if protected {
            image
                .snap_protect(&name)
                .map_err(err(format!("import failed: protecting snapshot '{name}'")))?;
        }
        *last_snap = Some(name);
    }
    Ok(())
}

// ---- export

/// Where an export goes: a new file or stdout.
pub(crate) enum Dest {
    Stdout,
    File(File, String),
}

impl Dest {
    /// `-` is stdout; a path is created, never overwritten: rbd opens it with O_EXCL too.
    pub(crate) fn create(path: &str) -> CmdResult<Dest> {
        match path {
            "-" => Ok(Dest::Stdout),
            path => match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(f) => Ok(Dest::File(f, path.to_string())),
                Err(e) => Err(Fail::io(&e, format!("export error: error opening {path}"))),
            },
        }
    }

    /// Runs `write` under the progress line `pc`; a file it failed to fill is removed, so a
    /// failed export leaves nothing that looks like a whole one.
    pub(crate) fn fill(
        &self,
        mut pc: Progress,
        write: impl FnOnce(&Dest, &mut Progress) -> CmdResult,
    ) -> CmdResult {
        let r = write(self, &mut pc);
        match &r {
            Ok(()) => pc.finish(),
            Err(_) => {
                pc.fail();
                if let Dest::File(_, path) = self {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        r
    }
}

pub fn export(ctx: &Ctx, a: &ExportArgs) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::Maybe)?;
    if a.export_format == 2 && spec.snap.is_some() {
        return Err(Fail::invalid(
            "export format 2 carries every snapshot: give the image, not a snapshot",
        ));
    }
    let image = open(ctx, &spec, true)?;
    let dest = match Dest::create(&a.path) {
        Ok(d) => d,
        Err(e) => {
            let _ = image.close();
            return Err(e);
        }
    };
    let r = dest.fill(ctx.progress("Exporting image"), |dest, pc| {
        match (dest, a.export_format) {
            (Dest::File(f, _), 1) => export_raw_file(&image, f, pc),
            (Dest::Stdout, 1) => export_raw_stream(
                &image,
                &mut BufWriter::with_capacity(1 << 20, std::io::stdout().lock()),
                pc,
            ),
            (Dest::File(f, _), _) => export_v2(
                ctx,
                &spec,
                &image,
                &mut BufWriter::with_capacity(1 << 20, f),
                pc,
            ),
            (Dest::Stdout, _) => export_v2(
                ctx,
                &spec,
                &image,
                &mut BufWriter::with_capacity(1 << 20, std::io::stdout().lock()),
                pc,
            ),
        }
    });
    let _ = image.close();
    r
}

pub(crate) fn out_fail(e: std::io::Error) -> Fail {
    Fail::io(&e, "export error: error writing the output")
}

/// Allocated extents of the image, sorted and without overlaps, cut at `size`.
fn data_extents(image: &Image, size: u64) -> CmdResult<Vec<(u64, u64)>> {
    let mut ext = image
        .allocated_extents(0, size)
        .map_err(err("export error"))?;
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

/// Calls `f` for the pieces of `extent`, each at most one chunk and inside one chunk.
fn pieces(off: u64, len: u64, chunk: u64, mut f: impl FnMut(u64, u64) -> CmdResult) -> CmdResult {
    let end = off + len;
    let mut pos = off;
    while pos < end {
        let next = ((pos / chunk + 1) * chunk).min(end);
        f(pos, next - pos)?;
        pos = next;
    }
    Ok(())
}

fn export_raw_file(image: &Image, file: &File, pc: &mut Progress) -> CmdResult {
    let size = image.size();
    let chunk = chunk_size(&image.layout());
    let mut buf = vec![0u8; chunk as usize];
    for (off, len) in data_extents(image, size)? {
        pieces(off, len, chunk, |pos, n| {
            let data = &mut buf[..n as usize];
            image.read(pos, data).map_err(err("export error"))?;
            write_file_sparse(file, pos, data).map_err(out_fail)?;
            pc.update(pos + n, size);
            Ok(())
        })?;
    }
    file.set_len(size).map_err(out_fail)?;
    file.sync_all().map_err(out_fail)
}

/// Writes `data` at `off` of `file`, leaving 4 KiB blocks of zeros as holes.
pub(crate) fn write_file_sparse(file: &File, off: u64, data: &[u8]) -> std::io::Result<()> {
    // Runs of non-zero blocks go out as one write: a write per 4 KiB block cost 2-4x the
    // time of `qemu-img convert` into tmpfs.
    let mut run: Option<usize> = None;
    for (i, block) in data.chunks(SPARSE as usize).enumerate() {
        match (is_zero(block), run) {
            (false, None) => run = Some(i * SPARSE as usize),
            (true, Some(start)) => {
                file.write_all_at(&data[start..i * SPARSE as usize], off + start as u64)?;
                run = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run {
        file.write_all_at(&data[start..], off + start as u64)?;
    }
    Ok(())
}

pub(crate) fn write_zeros(out: &mut dyn Write, mut n: u64) -> std::io::Result<()> {
    let zeros = [0u8; 64 << 10];
    while n > 0 {
        let k = n.min(zeros.len() as u64) as usize;
        out.write_all(&zeros[..k])?;
        n -= k as u64;
    }
    Ok(())
}

fn export_raw_stream(image: &Image, out: &mut dyn Write, pc: &mut Progress) -> CmdResult {
    let size = image.size();
    let chunk = chunk_size(&image.layout());
    let mut buf = vec![0u8; chunk as usize];
    let mut pos = 0;
    for (off, len) in data_extents(image, size)? {
        write_zeros(out, off - pos).map_err(out_fail)?;
        pieces(off, len, chunk, |p, n| {
            let data = &mut buf[..n as usize];
            image.read(p, data).map_err(err("export error"))?;
            out.write_all(data).map_err(out_fail)?;
            pc.update(p + n, size);
            Ok(())
        })?;
        pos = off + len;
    }
    write_zeros(out, size - pos).map_err(out_fail)?;
    out.flush().map_err(out_fail)
}

fn put(out: &mut dyn Write, bytes: &[u8]) -> CmdResult {
    out.write_all(bytes).map_err(out_fail)
}

fn put_u64_record(out: &mut dyn Write, tag: u8, v: u64) -> CmdResult {
    put(out, &[tag])?;
    put(out, &8u64.to_le_bytes())?;
    put(out, &v.to_le_bytes())
}

fn put_string_record(out: &mut dyn Write, tag: u8, s: &str) -> CmdResult {
    put(out, &[tag])?;
    put(out, &(4 + s.len() as u64).to_le_bytes())?;
    put(out, &(s.len() as u32).to_le_bytes())?;
    put(out, s.as_bytes())
}

fn export_v2(
    ctx: &Ctx,
    spec: &ImageSpec,
    image: &Image,
    out: &mut dyn Write,
    pc: &mut Progress,
) -> CmdResult {
    let info = image.info().map_err(err("export error"))?;
    let layout = info.layout;
    put(out, IMAGE_BANNER)?;
    put_u64_record(out, b'O', layout.order() as u64)?;
    put_u64_record(out, b'T', info.features)?;
    put_u64_record(out, b'U', layout.stripe_unit)?;
    put_u64_record(out, b'C', layout.stripe_count)?;
    for (k, v) in image.metadata_list().map_err(err("export error"))? {
        put(out, b"M")?;
        put(out, &(8 + k.len() as u64 + v.len() as u64).to_le_bytes())?;
        for s in [&k, &v] {
            put(out, &(s.len() as u32).to_le_bytes())?;
            put(out, s.as_bytes())?;
        }
    }
    put(out, b"E")?;
    let snaps = image.snap_list().map_err(err("export error"))?;
    put(out, DIFFS_BANNER)?;
    put(out, &(snaps.len() as u64 + 1).to_le_bytes())?;
    let mut prev: Option<String> = None;
    let steps = snaps.len() as u64 + 1;
    for (i, snap) in snaps.iter().enumerate() {
        let at_snap = open(ctx, &spec.with_snap(Some(&snap.name)), true)?;
        let to = Some((snap.name.as_str(), snap.protected));
        let r = export_diff(&at_snap, prev.as_deref(), to, snap.size, out);
        let _ = at_snap.close();
        r?;
        prev = Some(snap.name.clone());
        pc.update(i as u64 + 1, steps);
    }
    export_diff(image, prev.as_deref(), None, image.size(), out)?;
    out.flush().map_err(out_fail)
}

/// One "rbd diff v2" from `from` (or from nothing) to the image as opened.
fn export_diff(
    image: &Image,
    from: Option<&str>,
    to: Option<(&str, bool)>,
    size: u64,
    out: &mut dyn Write,
) -> CmdResult {
    put(out, DIFF_BANNER)?;
    if let Some(name) = from {
        put_string_record(out, b'f', name)?;
    }
    if let Some((name, protected)) = to {
        put_string_record(out, b't', name)?;
        put(out, b"p")?;
        put(out, &1u64.to_le_bytes())?;
        put(out, &[protected as u8])?;
    }
    put_u64_record(out, b's', size)?;
    // The first diff carries all data (parent data of a clone included); later ones only
    // what changed since the previous snapshot.
    let extents: Vec<(u64, u64, bool)> = match from {
        None => data_extents(image, size)?
            .into_iter()
            .map(|(o, l)| (o, l, true))
            .collect(),
        Some(name) => image
            .diff(Some(name), false)
            .map_err(err("export error"))?
            .into_iter()
            .filter_map(|e| {
                let end = e.offset.saturating_add(e.len).min(size);
                (e.offset < end).then_some((e.offset, end - e.offset, e.exists))
            })
            .collect(),
    };
    let chunk = chunk_size(&image.layout());
    let mut buf = vec![0u8; chunk as usize];
    for (off, len, exists) in extents {
        if !exists {
            put_zero(out, off, len)?;
            continue;
        }
        pieces(off, len, chunk, |p, n| {
            let data = &mut buf[..n as usize];
            image.read(p, data).map_err(err("export error"))?;
            if is_zero(data) {
                return if from.is_some() {
                    put_zero(out, p, n)
                } else {
                    Ok(())
                };
            }
            put(out, b"w")?;
            put(out, &(16 + n).to_le_bytes())?;
            put(out, &p.to_le_bytes())?;
            put(out, &n.to_le_bytes())?;
            put(out, data)
        })?;
    }
    put(out, b"e")
}

fn put_zero(out: &mut dyn Write, off: u64, len: u64) -> CmdResult {
    put(out, b"z")?;
    put(out, &16u64.to_le_bytes())?;
    put(out, &off.to_le_bytes())?;
    put(out, &len.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_writes_keep_bytes_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = File::create(&path).unwrap();
        let mut data = vec![0u8; 64 << 10];
        data[100..5000].fill(1); // blocks 0-1
        data[16 << 10..(16 << 10) + 1].fill(2); // block 4
        data[(60 << 10) + 7..].fill(3); // last block
        write_file_sparse(&file, 8192, &data).unwrap();
        file.set_len(8192 + data.len() as u64).unwrap();
        let got = std::fs::read(&path).unwrap();
        assert!(got[..8192].iter().all(|&b| b == 0));
        assert!(got[8192..] == data[..]);
    }

    #[test]
    fn header_roundtrip_and_corruption() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(IMAGE_BANNER);
        put_u64_record(&mut bytes, b'O', 22).unwrap();
        put_u64_record(&mut bytes, b'T', 1).unwrap();
        bytes.extend_from_slice(b"E");
        let mut r: &[u8] = &bytes;
        let h = read_header(&mut Stream { r: &mut r, pos: 0 }).unwrap();
        assert_eq!((h.order, h.features), (Some(22), Some(1)));

        let mut flipped = bytes.clone();
        flipped[IMAGE_BANNER.len()] = b'X';
        let mut r: &[u8] = &flipped;
        let e = read_header(&mut Stream { r: &mut r, pos: 0 })
            .err()
            .unwrap();
        assert_eq!(e.code, libc::EBADMSG);
        assert!(
            e.msg.contains(&format!("byte {}", IMAGE_BANNER.len())),
            "{}",
            e.msg
        );

        let mut r: &[u8] = &bytes[..bytes.len() - 3];
        let e = read_header(&mut Stream { r: &mut r, pos: 0 })
            .err()
            .unwrap();
        assert!(e.msg.contains("stream ends inside"), "{}", e.msg);
    }
}
