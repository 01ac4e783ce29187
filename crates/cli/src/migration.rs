//! `rbdm migration prepare|execute|commit|abort`, worded as `rbd migration` words them.

use std::sync::Mutex;

use rbdm_migration::{ExecuteOptions, PrepareOptions};

use crate::args::{MigrationCmd, MigrationExecuteArgs, MigrationPrepareArgs};
use crate::ctx::{Ctx, Snap};
use crate::layout::create_options;
use crate::output::{CmdResult, Fail, Progress};

fn fail(e: rbdm_migration::Error, context: &str) -> Fail {
    Fail::errno(e.errno(), context, &rbdm_store::report(&e))
}

pub fn run(ctx: &Ctx, cmd: &MigrationCmd) -> CmdResult {
    match cmd {
        MigrationCmd::Prepare(a) => prepare(ctx, a),
        MigrationCmd::Execute(a) => execute(ctx, a),
        MigrationCmd::Commit(a) => {
            let spec = ctx.image_spec(&a.spec, Snap::No)?;
            let mut p = ctx.progress("Commit image migration");
            let r = rbdm_migration::commit(ctx.rbd()?, &spec, a.force);
            conclude(&mut p, r, "committing migration failed")
        }
        MigrationCmd::Abort(a) => {
            let spec = ctx.image_spec(&a.spec, Snap::No)?;
            let mut p = ctx.progress("Abort image migration");
            let r = rbdm_migration::abort(ctx.rbd()?, &spec, &mut p.callback());
            conclude(&mut p, r, "aborting migration failed")
        }
    }
}

/// What an import reads (the source-spec text) and where it goes (the destination spec).
/// `rbd` takes the source either as a spec (`--source-spec`, `--source-spec-path`) or as a
/// positional `[pool/[namespace/]]image@snap`, which means a `native` spec of that snapshot.
fn import_source<'a>(ctx: &Ctx, a: &'a MigrationPrepareArgs) -> CmdResult<(String, &'a str)> {
    let spec_given = a.source_spec.is_some() || a.source_spec_path.is_some();
    match (spec_given, a.specs.as_slice()) {
        (true, [dst]) => Ok((read_spec(a)?, dst)),
        (true, _) => Err(Fail::invalid(
            "a source image and --source-spec/--source-spec-path are exclusive: \
             give the destination only",
        )),
        (false, [src, rest @ ..]) => {
            let src = ctx.image_spec(src, Snap::Must)?;
            let dst = match rest {
                [dst] => dst,
                [] => return Err(Fail::invalid("destination image name must be provided")),
                _ => return Err(Fail::invalid("too many arguments")),
            };
            Ok((native_spec_of(ctx, &src)?, dst))
        }
        (false, []) => Err(Fail::invalid("image name was not specified")),
    }
}

/// The `native` spec `rbd` builds for a positional import source: by pool id, as Ceph does,
/// so the spec in the record survives a pool rename.
fn native_spec_of(ctx: &Ctx, src: &rbdm_image::ImageSpec) -> CmdResult<String> {
    crate::ctx::check_pool(ctx, &src.pool)?;
    let pool_id = ctx
        .rbd()?
        .store()
        .pool_id(&src.pool)
        .map_err(|e| Fail::store(&e, format!("error opening pool {}", src.pool)))?;
    let spec = rbdm_spec::NativeSpec {
        pool: rbdm_spec::PoolRef::Id(pool_id),
        pool_namespace: src.namespace.clone(),
        image_name: src.image.clone(),
        image_id: None,
        snap: src.snap.clone().map(rbdm_spec::SnapRef::Name),
    };
    Ok(spec.to_json().to_string())
}

/// The text of `--source-spec` or `--source-spec-path` (`-` for stdin), read with a size
/// bound so `/dev/zero` or an endless pipe cannot grow memory. Shared with `rbdm source`.
pub(crate) fn spec_text(source_spec: Option<&str>, path: Option<&str>) -> CmdResult<String> {
    match (source_spec, path) {
        (Some(s), None) => {
            rbdm_spec::check_len(s.len()).map_err(|e| input_fail(e, "invalid --source-spec"))?;
            Ok(s.to_string())
        }
        (None, Some("-")) => rbdm_spec::read_spec_text(std::io::stdin().lock())
            .map_err(|e| input_fail(e, "cannot read the source-spec from stdin")),
        (None, Some(p)) => {
            let context = format!("cannot read source-spec file {p}");
            let file = std::fs::File::open(p).map_err(|e| Fail::io(&e, &context))?;
            rbdm_spec::read_spec_text(file).map_err(|e| input_fail(e, &context))
        }
        (Some(_), Some(_)) => Err(Fail::invalid(
            "cannot specify both source-spec and source-spec-path",
        )),
        (None, None) => Err(Fail::invalid("no source-spec given")),
    }
}

/// The spec text, read with a size bound (`/dev/zero` or an endless pipe must not grow
/// memory), then checked: text that is not JSON is EBADMSG, an invalid spec EINVAL (librbd's
/// errnos); an import of a live `native`
/// image EINVAL ("snapshot required for import", librbd's words).
fn read_spec(a: &MigrationPrepareArgs) -> CmdResult<String> {
    let text = spec_text(a.source_spec.as_deref(), a.source_spec_path.as_deref())?;
    check_import_spec(&text)?;
    Ok(text)
}

/// The spec's JSON and what it says, as librbd checks them: text that is not JSON is
/// EBADMSG; JSON that is no valid spec, EINVAL. Shared with `rbdm source`.
pub(crate) fn parse_spec(
    text: &str,
    context: &str,
) -> CmdResult<(serde_json::Value, rbdm_spec::SourceSpec)> {
    let json: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Fail::errno(libc::EBADMSG, context, &format!("malformed JSON: {e}")))?;
    let spec = rbdm_spec::SourceSpec::from_json(&json)
        .map_err(|e| Fail::errno(libc::EINVAL, context, &e.to_string()))?;
    Ok((json, spec))
}

fn check_import_spec(text: &str) -> CmdResult {
    let context = "preparing import migration failed";
    let (_, spec) = parse_spec(text, context)?;
    spec.check_import()
        .map_err(|e| Fail::errno(libc::EINVAL, context, &e.to_string()))
}

fn input_fail(e: rbdm_spec::InputError, context: &str) -> Fail {
    match e {
        rbdm_spec::InputError::Io(io) => Fail::io(&io, context),
        rbdm_spec::InputError::TooLong => Fail::errno(libc::EFBIG, context, &e.to_string()),
        rbdm_spec::InputError::NotUtf8 => Fail::errno(libc::EINVAL, context, &e.to_string()),
    }
}

fn prepare(ctx: &Ctx, a: &MigrationPrepareArgs) -> CmdResult {
    if a.import_only {
        let (spec_text, dst) = import_source(ctx, a)?;
        let dst = ctx.image_spec(dst, Snap::No)?;
        let layout_given = a.layout.object_size.is_some()
            || a.layout.order.is_some()
            || a.layout.stripe_unit.is_some()
            || a.layout.stripe_count.is_some()
            || !a.layout.features.is_empty()
            || a.layout.data_pool.is_some();
        let create = if layout_given {
            Some(create_options(&a.layout, 0, None, None)?)
        } else {
            None
        };
        let rbd = ctx.rbd()?;
        let create = match create {
            Some(mut c) => {
                let src = rbdm_migration::open_source_spec(rbd, &spec_text).map_err(|e| {
                    Fail::errno(
                        e.errno(),
                        "preparing import migration failed",
                        &rbdm_store::report(&e),
                    )
                })?;
                c.size = src.size();
                Some(c)
            }
            None => None,
        };
        return rbdm_migration::prepare_import(rbd, &spec_text, &dst, create.as_ref())
            .map_err(|e| fail(e, "preparing import migration failed"));
    }
    if a.source_spec.is_some() || a.source_spec_path.is_some() {
        return Err(Fail::invalid(
            "--source-spec and --source-spec-path need --import-only",
        ));
    }
    // As rbd's ARGUMENT_MODIFIER_DEST: -p/--namespace name the source only; a named
    // destination takes --dest-pool/--dest-namespace, else the default pool. Without one,
    // the image migrates in place (same pool, namespace and name).
    let (src, dst) = match a.specs.as_slice() {
        [s] => {
            let src = ctx.image_spec(s, Snap::No)?;
            (src.clone(), src)
        }
        [s, d] => (
            ctx.image_spec(s, Snap::No)?,
            ctx.dest_image_spec(d, Snap::No)?,
        ),
        _ => return Err(Fail::invalid("expected SOURCE_IMAGE [DEST_IMAGE]")),
    };
    let rbd = ctx.rbd()?;
    let source = rbd.open(&src, true).map_err(crate::output::err(format!(
        "error opening image {}",
        src.image
    )))?;
    let info = source
        .info()
        .map_err(crate::output::err("preparing migration failed"))?;
    drop(source);
    let create = create_options(&a.layout, info.size, Some(info.layout), Some(info.features))?;
    let create = rbdm_image::CreateOptions {
        data_pool: create.data_pool.or(info.data_pool),
        ..create
    };
    let opts = PrepareOptions {
        create: Some(create),
        flatten: a.flatten,
    };
    rbdm_migration::prepare(rbd, &src, &dst, &opts)
        .map_err(|e| fail(e, "preparing migration failed"))
}

fn execute(ctx: &Ctx, a: &MigrationExecuteArgs) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::No)?;
    if a.concurrency == 0 {
        return Err(Fail::invalid("--concurrency must be at least 1"));
    }
    let progress = Mutex::new(ctx.progress("Image migration"));
    let opts = ExecuteOptions {
        concurrency: a.concurrency,
        bandwidth_limit: a.bandwidth_limit,
    };
    let report = |done: u64, total: u64| {
        progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(done, total)
    };
    let r = rbdm_migration::execute(ctx.rbd()?, &spec, &opts, &report);
    let mut p = progress.into_inner().unwrap_or_else(|e| e.into_inner());
    conclude(&mut p, r, "migration failed")
}

/// Ends the progress line with `done.` or `failed.` as the outcome says.
fn conclude(p: &mut Progress, r: rbdm_migration::Result<()>, context: &str) -> CmdResult {
    match r {
        Ok(()) => {
            p.finish();
            Ok(())
        }
        Err(e) => {
            p.fail();
            Err(fail(e, context))
        }
    }
}
