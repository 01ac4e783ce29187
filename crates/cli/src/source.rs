//! `rbdm source info|map|export|plugins`: look at a migration source before migrating it,
//! through the same source-spec `migration prepare` takes (`--source-spec JSON` or
//! `--source-spec-path FILE|-`).
//!
//! What it is for: showing size, format and snapshots; the data and zero extents in the
//! shape of `qemu-img map --output=json`; the raw bytes at the head or a snapshot. What it is
//! not: no format logic; everything goes through `rbdm-registry`'s `SourceImage`.

use std::cell::Cell;
use std::fs::File;
use std::io::Write;

use rbdm_registry::{ExtentState, OpenContext, Point, SnapExtent, SourceError, SourceImage};
use serde_json::Value;

use crate::args::{MapArgs, SourceCmd, SourceExportArgs, SourceSpecArgs};
use crate::ctx::Ctx;
use crate::dest::{out_fail, Dest};
use crate::doc::Doc;
use crate::obj;
use crate::output::{byte_u, ctime, CmdResult, Fail};
use rbdm_transfer::sparse::{write_file_sparse, write_zeros};

/// `list_snaps` is asked this much at a time (the most a caller may ask of a format).
const WINDOW: u64 = 32 << 20;
/// Bytes read at a time by `export`.
const READ_CHUNK: u64 = 4 << 20;

pub fn run(ctx: &Ctx, cmd: &SourceCmd) -> CmdResult {
    match cmd {
        SourceCmd::Info(a) => info(ctx, a),
        SourceCmd::Map(a) => map(ctx, a),
        SourceCmd::Export(a) => export(ctx, a),
        SourceCmd::Plugins => plugins(ctx),
    }
}

fn source_fail(e: &SourceError, context: &str) -> Fail {
    Fail::errno(e.errno(), context, &rbdm_store::report(e))
}

/// The spec's JSON, checked: text that is not JSON is EBADMSG, an invalid spec EINVAL, as in librbd.
fn load_spec(a: &SourceSpecArgs) -> CmdResult<Value> {
    if a.source_spec.is_none() && a.source_spec_path.is_none() {
        return Err(Fail::invalid("give --source-spec or --source-spec-path"));
    }
    let text =
        crate::migration::spec_text(a.source_spec.as_deref(), a.source_spec_path.as_deref())?;
    crate::migration::parse_spec(&text, "invalid source-spec").map(|(v, _)| v)
}

/// Opens the source. The store is opened only when a plugin asks for it (`native`, a
/// `config://` reference); a store that does not open fails the command as any other
/// command's store would, not as a source error.
fn open(ctx: &Ctx, a: &SourceSpecArgs) -> CmdResult<Box<dyn SourceImage>> {
    let v = load_spec(a)?;
    let store_fail = Cell::new(None);
    let oc = OpenContext::new(|| {
        ctx.rbd().cloned().map_err(|f| {
            let e = SourceError::Invalid(f.msg.clone());
            store_fail.set(Some(f));
            e
        })
    });
    match (rbdm_registry::open_source(&v, &oc), store_fail.take()) {
        (Ok(img), _) => Ok(img),
        (Err(_), Some(f)) => Err(f),
        (Err(e), None) => Err(source_fail(&e, "error opening source")),
    }
}

fn info(ctx: &Ctx, a: &SourceSpecArgs) -> CmdResult {
    let img = open(ctx, a)?;
    let snaps = img.snapshots();
    if ctx.formatted() {
        let list = snaps.iter().map(|s| {
            let mut o = obj! {"name" => &s.name, "size" => s.size};
            if let Some(t) = s.timestamp {
                o.set("timestamp", t);
            }
            o
        });
        let doc = obj! {
            "format" => img.format(), "description" => img.describe(), "size" => img.size(),
            "snapshot_count" => snaps.len(), "snapshots" => Doc::list("snapshot", list),
        };
        ctx.emit("source", &doc);
        return Ok(());
    }
    let mut out = format!(
        "source {}:\n\tformat: {}\n\tsize {} ({} bytes)\n\tsnapshot_count: {}\n",
        img.describe(),
        img.format(),
        byte_u(img.size()),
        img.size(),
        snaps.len()
    );
    for s in &snaps {
        let when = s
            .timestamp
            .map(|t| format!(" ({})", ctime(t)))
            .unwrap_or_default();
        out.push_str(&format!(
            "\tsnapshot {}: {}{when}\n",
            s.name,
            byte_u(s.size)
        ));
    }
    print!("{out}");
    Ok(())
}

/// The point `--snap` names (or the head), and that point's size.
fn point_of(img: &dyn SourceImage, snap: Option<&str>) -> CmdResult<(Point, u64)> {
    let Some(name) = snap else {
        return Ok((Point::Head, img.size()));
    };
    let snaps = img.snapshots();
    match snaps.iter().position(|s| s.name == name) {
        Some(i) => Ok((Point::Snap(i), snaps[i].size)),
        None => Err(Fail::errno(
            libc::ENOENT,
            format!("snapshot '{name}' not found in the source"),
            "",
        )),
    }
}

/// One point's absolute state over a window: `Unchanged` replaced by what the earlier
/// points say, so every extent is data (`true`) or zeros (`false`).
fn resolve(lists: &[Vec<SnapExtent>], upto: usize) -> Vec<(u64, u64, bool)> {
    let mut cur: Vec<(u64, u64, bool)> = Vec::new();
    for list in lists.iter().take(upto + 1) {
        let mut next = Vec::with_capacity(list.len());
        for e in list {
            match e.state {
                ExtentState::Data => next.push((e.offset, e.len, true)),
                ExtentState::Zero => next.push((e.offset, e.len, false)),
                ExtentState::Unchanged => inherit(&cur, e.offset, e.offset + e.len, &mut next),
            }
        }
        cur = next;
    }
    cur
}

/// The parts of `prev` inside `[a, b)`, zeros where `prev` says nothing.
fn inherit(prev: &[(u64, u64, bool)], a: u64, b: u64, out: &mut Vec<(u64, u64, bool)>) {
    let mut pos = a;
    for &(o, l, data) in prev {
        let (s, e) = (o.max(pos), (o + l).min(b));
        if s >= e {
            continue;
        }
        if s > pos {
            out.push((pos, s - pos, false));
        }
        out.push((s, e - s, data));
        pos = e;
    }
    if pos < b {
        out.push((pos, b - pos, false));
    }
}

fn point_index(img: &dyn SourceImage, p: Point) -> usize {
    match p {
        Point::Snap(i) => i,
        Point::Head => img.snapshots().len(),
    }
}

/// Calls `f` with the merged data/zero extents of `point` over `[0, size)`, window by window.
fn walk(
    img: &dyn SourceImage,
    point: Point,
    size: u64,
    mut f: impl FnMut(u64, u64, bool) -> CmdResult,
) -> CmdResult {
    let k = point_index(img, point);
    let mut pending: Option<(u64, u64, bool)> = None;
    let mut pos = 0;
    while pos < size {
        let n = WINDOW.min(size - pos);
        let lists = img
            .list_snaps(pos, n)
            .map_err(|e| source_fail(&e, "error reading source"))?;
        let mut covered = pos;
        for (o, l, data) in resolve(&lists, k) {
            pending = match pending {
                Some((po, pl, pd)) if pd == data && po + pl == o => Some((po, pl + l, pd)),
                Some(p) => {
                    f(p.0, p.1, p.2)?;
                    Some((o, l, data))
                }
                None => Some((o, l, data)),
            };
            covered = o + l;
        }
        if covered != pos + n {
            return Err(Fail::errno(
                libc::EIO,
                "error reading source",
                "the format did not describe the whole range",
            ));
        }
        pos += n;
    }
    match pending {
        Some(p) => f(p.0, p.1, p.2),
        None => Ok(()),
    }
}

fn map(ctx: &Ctx, a: &MapArgs) -> CmdResult {
    let img = open(ctx, &a.spec)?;
    let (point, size) = point_of(&*img, a.snap.as_deref())?;
    let mut lines = Vec::new();
    walk(&*img, point, size, |o, l, data| {
        let offset = if data {
            format!(", \"offset\": {o}")
        } else {
            String::new()
        };
        lines.push(format!(
            "{{ \"start\": {o}, \"length\": {l}, \"depth\": 0, \"present\": {data}, \"zero\": {}, \"data\": {data}, \"compressed\": false{offset}}}",
            !data
        ));
        Ok(())
    })?;
    // qemu-img's layout and keys, one extent per line; holes are "present": false, as qemu
    // prints unallocated clusters of a qcow2.
    let mut out = std::io::stdout().lock();
    let text = format!("[{}]\n", lines.join(",\n"));
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| Fail::io(&e, "error writing the map"))
}

fn export(ctx: &Ctx, a: &SourceExportArgs) -> CmdResult {
    let img = open(ctx, &a.spec)?;
    let (point, size) = point_of(&*img, a.snap.as_deref())?;
    let dest = Dest::create(&a.path)?;
    dest.fill(ctx.progress("Exporting source"), |dest, pc| match dest {
        Dest::File(f, _) => export_file(&*img, point, size, f, &mut |d| pc.update(d, size)),
        Dest::Stdout => export_stream(
            &*img,
            point,
            size,
            &mut std::io::stdout().lock(),
            &mut |d| pc.update(d, size),
        ),
    })
}

/// Reads `[o, o+l)` of the point in pieces and hands each to `f`.
fn read_pieces(
    img: &dyn SourceImage,
    point: Point,
    o: u64,
    l: u64,
    buf: &mut [u8],
    f: &mut dyn FnMut(u64, &[u8]) -> CmdResult,
) -> CmdResult {
    let mut pos = o;
    while pos < o + l {
        let n = READ_CHUNK.min(o + l - pos) as usize;
        img.read(point, pos, &mut buf[..n])
            .map_err(|e| source_fail(&e, "export error"))?;
        f(pos, &buf[..n])?;
        pos += n as u64;
    }
    Ok(())
}

fn export_file(
    img: &dyn SourceImage,
    point: Point,
    size: u64,
    file: &File,
    progress: &mut dyn FnMut(u64),
) -> CmdResult {
    let mut buf = vec![0u8; READ_CHUNK as usize];
    walk(img, point, size, |o, l, data| {
        if data {
            read_pieces(img, point, o, l, &mut buf, &mut |pos, bytes| {
                write_file_sparse(file, pos, bytes).map_err(out_fail)
            })?;
        }
        progress(o + l);
        Ok(())
    })?;
    file.set_len(size).map_err(out_fail)?;
    file.sync_all().map_err(out_fail)
}

fn export_stream(
    img: &dyn SourceImage,
    point: Point,
    size: u64,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> CmdResult {
    let mut buf = vec![0u8; READ_CHUNK as usize];
    walk(img, point, size, |o, l, data| {
        if data {
            read_pieces(img, point, o, l, &mut buf, &mut |_, bytes| {
                out.write_all(bytes).map_err(out_fail)
            })?;
        } else {
            write_zeros(out, l).map_err(out_fail)?;
        }
        progress(o + l);
        Ok(())
    })?;
    out.flush().map_err(out_fail)
}

fn plugins(ctx: &Ctx) -> CmdResult {
    let (formats, streams) = rbdm_plugins::linked();
    if ctx.formatted() {
        let list = |item: &str, v: &[(&str, &str)]| {
            Doc::list(
                item,
                v.iter()
                    .map(|(n, d)| obj! {"name" => *n, "description" => *d}),
            )
        };
        let doc =
            obj! {"formats" => list("format", &formats), "streams" => list("stream", &streams)};
        ctx.emit("plugins", &doc);
        return Ok(());
    }
    let mut out = String::from("formats:\n");
    for (n, d) in &formats {
        out.push_str(&format!("\t{n}: {d}\n"));
    }
    out.push_str("streams:\n");
    for (n, d) in &streams {
        out.push_str(&format!("\t{n}: {d}\n"));
    }
    print!("{out}");
    Ok(())
}
