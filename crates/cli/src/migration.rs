//! `rbdm migration prepare|execute|commit|abort`, worded as `rbd migration` words them.

use std::io::Read;
use std::sync::Mutex;

use rbdm_migration::{ExecuteOptions, PrepareOptions};

use crate::args::{MigrationCmd, MigrationExecuteArgs, MigrationPrepareArgs};
use crate::cmds::{create_options, Ctx, Snap};
use crate::output::{CmdResult, Fail, Progress};

fn fail(e: rbdm_migration::Error, context: &str) -> Fail {
    Fail::errno(e.errno(), context, &e.to_string())
}

pub fn run(ctx: &Ctx, cmd: &MigrationCmd) -> CmdResult {
    match cmd {
        MigrationCmd::Prepare(a) => prepare(ctx, a),
        MigrationCmd::Execute(a) => execute(ctx, a),
        MigrationCmd::Commit(a) => {
            let spec = ctx.image_spec(&a.spec, Snap::No)?;
            rbdm_migration::commit(ctx.rbd()?, &spec, a.force)
                .map_err(|e| fail(e, "committing migration failed"))?;
            eprintln!("Commit image migration: 100% complete...done.");
            Ok(())
        }
        MigrationCmd::Abort(a) => {
            let spec = ctx.image_spec(&a.spec, Snap::No)?;
            let mut p = ctx.progress("Abort image migration");
            let r = rbdm_migration::abort(ctx.rbd()?, &spec, &mut p.callback());
            conclude(&mut p, r, "aborting migration failed")
        }
    }
}

fn read_spec(a: &MigrationPrepareArgs) -> CmdResult<String> {
    match (&a.source_spec, &a.source_spec_path) {
        (Some(s), None) => Ok(s.clone()),
        (None, Some(p)) if p == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| Fail::io(&e, "cannot read the source-spec from stdin"))?;
            Ok(s)
        }
        (None, Some(p)) => std::fs::read_to_string(p)
            .map_err(|e| Fail::io(&e, format!("cannot read source-spec file {p}"))),
        (Some(_), Some(_)) => Err(Fail::invalid(
            "give only one of --source-spec and --source-spec-path",
        )),
        (None, None) => Err(Fail::invalid(
            "--import-only needs --source-spec or --source-spec-path",
        )),
    }
}

fn prepare(ctx: &Ctx, a: &MigrationPrepareArgs) -> CmdResult {
    if a.import_only {
        // Ceph silently ignores a second name here; we refuse it.
        let [dst] = a.specs.as_slice() else {
            return Err(Fail::invalid(format!(
                "--import-only takes exactly one image (the destination), got {}",
                a.specs.len()
            )));
        };
        let spec_text = read_spec(a)?;
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
                        &e.to_string(),
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
    let (src, dst) = match a.specs.as_slice() {
        [s] => (s, s),
        [s, d] => (s, d),
        _ => return Err(Fail::invalid("expected SOURCE_IMAGE [DEST_IMAGE]")),
    };
    let src = ctx.image_spec(src, Snap::No)?;
    let dst = ctx.image_spec(dst, Snap::No)?;
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
