//! `import` and `export`: arguments, the destination image or file, and progress; the
//! stream formats and the copying are `rbdm-transfer`'s.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read};

use rbdm_image::ImageSpec;
use rbdm_transfer::header::read_header;
use rbdm_transfer::wire::Input;
use rbdm_transfer::{export as ex, import as im, Error};

use crate::args::{ExportArgs, ImportArgs, LayoutArgs};
use crate::ctx::{check_namespace, check_pool, open, Ctx, Snap};
use crate::dest::Dest;
use crate::layout::create_options;
use crate::output::{CmdResult, Fail, Progress};

/// Streams are read and written through buffers of this size.
const BUFFER: usize = 1 << 20;

/// A codec error as rbd words it: "<op>: (errno) strerror: detail".
fn fail(e: &Error, op: &str) -> Fail {
    match e {
        Error::Image { context, source } => Fail::image(source, context),
        Error::Leftover {
            image,
            cleanup,
            source,
        } => {
            let mut f = fail(source, op);
            let cleanup = rbdm_store::report(cleanup);
            let note = format!("; the partial image {image} could not be removed: {cleanup}");
            f.msg.push_str(&note);
            f
        }
        Error::Corrupt { .. } => Fail::errno(e.errno(), op, &e.to_string()),
        Error::Read { source, .. } | Error::Write(source) | Error::ReadFile { source, .. } => {
            Fail::io(source, format!("{op}: {e}"))
        }
    }
}

fn import_fail(e: Error) -> Fail {
    fail(&e, "import failed")
}

fn export_fail(e: Error) -> Fail {
    fail(&e, "export error")
}

/// The image name: given, or the file name of the path.
fn import_dest(a: &ImportArgs) -> CmdResult<String> {
    match (&a.dest, a.path.as_str()) {
        (Some(d), _) => Ok(d.clone()),
        (None, "-") => Err(Fail::invalid("destination image name must be specified")),
        (None, path) => std::path::Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| Fail::invalid(format!("cannot derive an image name from '{path}'"))),
    }
}

pub fn import(ctx: &Ctx, a: &ImportArgs) -> CmdResult {
    let spec = ctx.image_spec(&import_dest(a)?, Snap::No)?;
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
                BufReader::with_capacity(BUFFER, f),
                total,
                &mut pc,
            )
        }
        (2, None) => {
            let stdin = BufReader::with_capacity(BUFFER, std::io::stdin().lock());
            import_v2(ctx, a, &spec, stdin, 0, &mut pc)
        }
        (_, Some(f)) => import_raw_file(ctx, a, &spec, &f, &mut pc),
        (_, None) => import_raw_stream(ctx, &a.layout, &spec, &mut pc),
    };
    pc.end(r)
}

fn import_raw_file(
    ctx: &Ctx,
    a: &ImportArgs,
    spec: &ImageSpec,
    file: &File,
    pc: &mut Progress,
) -> CmdResult {
    let size = im::file_size(file, &a.path).map_err(import_fail)?;
    let opts = create_options(&a.layout, size, None, None)?;
    im::create_filled(ctx.rbd()?, spec, &opts, |image| {
        im::import_raw_file(image, file, &a.path, size, &mut pc.callback())
    })
    .map_err(import_fail)
}

fn import_raw_stream(
    ctx: &Ctx,
    layout: &LayoutArgs,
    spec: &ImageSpec,
    pc: &mut Progress,
) -> CmdResult {
    let opts = create_options(layout, 0, None, None)?;
    im::create_filled(ctx.rbd()?, spec, &opts, |image| {
        im::import_raw_stream(image, &mut std::io::stdin().lock(), &mut pc.callback())
    })
    .map_err(import_fail)
}

/// The header decides the layout and features (flags given override them), then the diffs
/// fill the new image. `total` is the stream's length when known, for progress.
fn import_v2(
    ctx: &Ctx,
    a: &ImportArgs,
    spec: &ImageSpec,
    reader: impl Read,
    total: u64,
    pc: &mut Progress,
) -> CmdResult {
    let mut input = Input::new(reader);
    let header = read_header(&mut input).map_err(import_fail)?;
    let base = header.layout().map_err(import_fail)?;
    let opts = create_options(&a.layout, 0, base, header.features)?;
    im::create_filled(ctx.rbd()?, spec, &opts, |image| {
        let mut progress = |pos: u64| pc.update(pos, total.max(pos));
        im::import_v2(&mut input, image, &header, &mut progress)
    })
    .map_err(import_fail)
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
    let rbd = ctx.rbd()?;
    let r = dest.fill(ctx.progress("Exporting image"), |dest, pc| {
        let progress = &mut pc.callback();
        let stdout = || BufWriter::with_capacity(BUFFER, std::io::stdout().lock());
        match (dest, a.export_format) {
            (Dest::File(f, _), 1) => ex::export_raw_file(&image, f, progress),
            (Dest::Stdout, 1) => ex::export_raw_stream(&image, &mut stdout(), progress),
            (Dest::File(f, _), _) => {
                let out = &mut BufWriter::with_capacity(BUFFER, f);
                ex::export_v2(rbd, &spec, &image, out, progress)
            }
            (Dest::Stdout, _) => ex::export_v2(rbd, &spec, &image, &mut stdout(), progress),
        }
        .map_err(export_fail)
    });
    let _ = image.close();
    r
}
