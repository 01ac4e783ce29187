//! `create`, `rm`, `resize`, `rename` and `status`: whole images (rbd's Create.cc,
//! Remove.cc, Resize.cc, Rename.cc, Status.cc).

use crate::args::{CreateArgs, ResizeArgs, SpecArg, TwoSpecs};
use crate::ctx::{check_namespace, check_pool, close, open, Ctx, Snap};
use crate::doc::Doc;
use crate::layout::create_options;
use crate::obj;
use crate::output::{err, CmdResult, Fail};

pub fn create(ctx: &Ctx, a: &CreateArgs) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::No)?;
    let opts = create_options(&a.layout, a.size.unwrap_or(0), None, None)?;
    check_namespace(ctx, &spec.pool_spec())?;
    if let Some(pool) = &opts.data_pool {
        check_pool(ctx, pool)?;
    }
    ctx.rbd()?
        .create(&spec.pool_spec(), &spec.image, &opts)
        .map_err(err("create error"))
}

pub fn rm(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::No)?;
    let rbd = ctx.rbd()?;
    let mut pc = ctx.progress("Removing image");
    let r = rbd.remove(&spec, &mut pc.callback());
    pc.end(r).map_err(err("delete error"))
}

pub fn resize(ctx: &Ctx, a: &ResizeArgs) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::No)?;
    let size = a.size.unwrap_or(0);
    let image = open(ctx, &spec, false)?;
    if size < image.size() && !a.allow_shrink {
        let _ = image.close();
        return Err(Fail::invalid(
            "shrinking an image is only allowed with the --allow-shrink flag",
        ));
    }
    let mut pc = ctx.progress("Resizing image");
    let r = image.resize(size, a.allow_shrink, &mut pc.callback());
    pc.end(r).map_err(err("resize error"))?;
    close(image)
}

pub fn rename(ctx: &Ctx, a: &TwoSpecs) -> CmdResult {
    let src = ctx.image_spec(&a.src, Snap::No)?;
    let dest = ctx.renamed_spec(&src, &a.dest, Snap::No)?;
    if src.pool_spec() != dest.pool_spec() {
        return Err(Fail::invalid("mv/rename across pools not supported"));
    }
    ctx.rbd()?
        .rename(&src.pool_spec(), &src.image, &dest.image)
        .map_err(err("rename error"))
}

pub fn status(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::No)?;
    let image = open(ctx, &spec, true)?;
    let me = ctx.rbd()?.store().client().id;
    let watchers = image.watchers().map_err(err("show status failed"))?;
    let _ = image.close();
    // Our own read-only open is no one's business.
    let watchers: Vec<_> = watchers.into_iter().filter(|w| w.client.id != me).collect();
    let addr = |w: &rbdm_image::Watcher| format!("{}:0/{}", w.client.host, w.client.pid);
    let migration = rbdm_migration::status(ctx.rbd()?, &spec)
        .map_err(|e| Fail::errno(e.errno(), "show status failed", &rbdm_store::report(&e)))?;
    if ctx.formatted() {
        let v = watchers
            .iter()
            .map(|w| obj! {"address" => addr(w), "client" => w.client.id, "cookie" => w.cookie});
        let mut out = obj! {"watchers" => Doc::list("watcher", v)};
        if let Some(m) = &migration {
            out.set("migration", crate::status::migration_doc(m));
        }
        ctx.emit("status", &out);
        return Ok(());
    }
    if watchers.is_empty() {
        println!("Watchers: none");
    } else {
        println!("Watchers:");
        for w in &watchers {
            println!(
                "\twatcher={} client.{} cookie={}",
                addr(w),
                w.client.id,
                w.cookie
            );
        }
    }
    if let Some(m) = migration {
        println!("Migration:");
        println!("\tsource: {}", m.source);
        println!("\tdestination: {}", m.destination);
        println!("\tstate: {}", m.state);
    }
    Ok(())
}
