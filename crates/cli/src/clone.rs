//! `clone`, `flatten` and `children`: copy-on-write children of a protected snapshot (rbd's
//! Clone.cc, Flatten.cc, Children.cc).

use crate::args::{CloneArgs, SpecArg};
use crate::ctx::{check_namespace, check_pool, close, open, Ctx, Snap};
use crate::doc::Doc;
use crate::layout::create_options;
use crate::obj;
use crate::output::{err, CmdResult};

pub fn clone(ctx: &Ctx, a: &CloneArgs) -> CmdResult {
    let parent = ctx.image_spec(&a.parent, Snap::Must)?;
    let child = ctx.dest_image_spec(&a.child, Snap::No)?;
    let mut opts = create_options(&a.layout, 0, None, None)?;
    check_namespace(ctx, &child.pool_spec())?;
    if let Some(pool) = &opts.data_pool {
        check_pool(ctx, pool)?;
    }
    let source = open(ctx, &parent, true)?;
    opts.size = source.size();
    let _ = source.close();
    ctx.rbd()?
        .clone_image(&parent, &child, &opts)
        .map_err(err("clone error"))
}

pub fn flatten(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::No)?;
    let image = open(ctx, &spec, false)?;
    let mut pc = ctx.progress("Image flatten");
    let r = image.flatten(&mut pc.callback());
    pc.end(r).map_err(err("flatten error"))?;
    close(image)
}

pub fn children(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::Maybe)?;
    let image = open(ctx, &spec, true)?;
    let kids = image.children().map_err(err("listing children failed"))?;
    let _ = image.close();
    if ctx.formatted() {
        let v = kids.iter().map(|c| {
            let mut o =
                obj! {"pool" => &c.pool, "pool_namespace" => &c.namespace, "image" => &c.image_name};
            if c.in_trash {
                o.set("trash", true);
                o.set("id", &c.image_id);
            }
            o
        });
        ctx.emit("children", &Doc::list("child", v));
        return Ok(());
    }
    for c in &kids {
        let ns = if c.namespace.is_empty() {
            String::new()
        } else {
            format!("{}/", c.namespace)
        };
        let trash = if c.in_trash {
            format!(" (trash {})", c.image_id)
        } else {
            String::new()
        };
        println!("{}/{ns}{}{trash}", c.pool, c.image_name);
    }
    Ok(())
}
