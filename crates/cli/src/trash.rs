//! `trash mv|ls|restore|rm` (rbd's Trash.cc).

use std::time::{SystemTime, UNIX_EPOCH};

use rbdm_image::PoolSpec;

use crate::args::{SpecArg, TrashCmd, TrashLsArgs, TrashRestoreArgs, TrashRmArgs};
use crate::ctx::{check_namespace, Ctx, Snap};
use crate::doc::Doc;
use crate::listing::parent_string;
use crate::obj;
use crate::output::{ctime, err, Align, CmdResult, Fail, Table};

pub fn run(ctx: &Ctx, cmd: &TrashCmd) -> CmdResult {
    match cmd {
        TrashCmd::Mv(a) => trash_mv(ctx, a),
        TrashCmd::Ls(a) => trash_ls(ctx, a),
        TrashCmd::Restore(a) => trash_restore(ctx, a),
        TrashCmd::Rm(a) => trash_rm(ctx, a),
    }
}

pub fn trash_mv(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::No)?;
    ctx.rbd()?
        .trash_move(&spec, 0)
        .map_err(err("deferred delete error"))?;
    Ok(())
}

pub fn trash_ls(ctx: &Ctx, a: &TrashLsArgs) -> CmdResult {
    let ps = ctx.pool_spec(a.pool_spec.as_deref())?;
    check_namespace(ctx, &ps)?;
    let entries = ctx
        .rbd()?
        .trash_list(&ps, a.all)
        .map_err(err("trash list"))?;
    let status = |e: &rbdm_image::TrashEntry| {
        if e.deferment_end <= now() {
            format!("expired at {}", ctime(e.deferment_end))
        } else {
            format!("protected until {}", ctime(e.deferment_end))
        }
    };
    if !a.long {
        if ctx.formatted() {
            let v = entries
                .iter()
                .map(|e| obj! {"id" => &e.id, "name" => &e.name});
            ctx.emit("trash", &Doc::list("image", v));
        } else {
            for e in &entries {
                println!("{} {}", e.id, e.name);
            }
        }
        return Ok(());
    }
    let mut t = Table::new(&[
        ("ID", Align::Left, Align::Left),
        ("NAME", Align::Left, Align::Left),
        ("SOURCE", Align::Left, Align::Left),
        ("DELETED_AT", Align::Left, Align::Left),
        ("STATUS", Align::Left, Align::Left),
        ("PARENT", Align::Left, Align::Left),
    ]);
    let mut out = Doc::empty_list();
    for e in &entries {
        let parent = ctx
            .rbd()?
            .open_by_id(&ps, &e.id, None, true)
            .ok()
            .and_then(|img| {
                let p = img.info().ok().and_then(|i| i.parent);
                let _ = img.close();
                p
            })
            .map(|p| parent_string(&p))
            .unwrap_or_default();
        let mut o = obj! {"id" => &e.id, "name" => &e.name, "source" => e.source.name(),
        "deleted_at" => ctime(e.deleted_at), "status" => status(e)};
        // rbd leaves the key out for an image with no parent.
        if !parent.is_empty() {
            o.set("parent", &parent);
        }
        out.push("image", o);
        t.row(vec![
            e.id.clone(),
            e.name.clone(),
            e.source.to_string(),
            ctime(e.deleted_at),
            status(e),
            parent,
        ]);
    }
    if ctx.formatted() {
        ctx.emit("trash", &out);
    } else if !t.is_empty() {
        print!("{t}");
    }
    Ok(())
}

/// `[pool/[namespace/]]image-id`.
fn trash_spec(ctx: &Ctx, s: &str) -> CmdResult<(PoolSpec, String)> {
    let spec = ctx.image_spec(s, Snap::No)?;
    let id = spec.image.clone();
    Ok((spec.pool_spec(), id))
}

pub fn trash_restore(ctx: &Ctx, a: &TrashRestoreArgs) -> CmdResult {
    let (ps, id) = trash_spec(ctx, &a.spec)?;
    if let Some(name) = &a.image {
        if name.is_empty() || name.contains('/') || name.contains('@') {
            return Err(Fail::invalid(format!("invalid image name '{name}'")));
        }
    }
    ctx.rbd()?
        .trash_restore(&ps, &id, a.image.as_deref())
        .map_err(err("restore error"))
}

pub fn trash_rm(ctx: &Ctx, a: &TrashRmArgs) -> CmdResult {
    let (ps, id) = trash_spec(ctx, &a.spec)?;
    let rbd = ctx.rbd()?;
    let mut pc = ctx.progress("Removing image");
    let r = rbd.trash_remove(&ps, &id, a.force, &mut pc.callback());
    pc.end(r).map_err(err("remove error"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
