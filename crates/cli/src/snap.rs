//! `snap create|ls|rm|protect|unprotect|rollback|purge|rename` (rbd's Snap.cc).

use rbdm_image::Image;

use crate::args::{SnapCmd, SpecArg, TwoSpecs};
use crate::ctx::{close, open, Ctx, Snap};
use crate::doc::Doc;
use crate::obj;
use crate::output::{byte_u, ctime, err, Align, CmdResult, Fail, Table};

pub fn run(ctx: &Ctx, cmd: &SnapCmd) -> CmdResult {
    match cmd {
        SnapCmd::Create(a) => snap_create(ctx, a),
        SnapCmd::Ls(a) => snap_ls(ctx, a),
        SnapCmd::Rm(a) => snap_rm(ctx, a),
        SnapCmd::Protect(a) => snap_protect(ctx, a),
        SnapCmd::Unprotect(a) => snap_unprotect(ctx, a),
        SnapCmd::Rollback(a) => snap_rollback(ctx, a),
        SnapCmd::Purge(a) => snap_purge(ctx, a),
        SnapCmd::Rename(a) => snap_rename(ctx, a),
    }
}

/// Opens the head of a `image@snap` spec for writing, returning the snapshot name too.
fn open_for_snap(ctx: &Ctx, s: &str) -> CmdResult<(Image, String)> {
    let spec = ctx.image_spec(s, Snap::Must)?;
    let snap = spec.snap.clone().unwrap_or_default();
    Ok((open(ctx, &spec.with_snap(None), false)?, snap))
}

pub fn snap_create(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let (image, snap) = open_for_snap(ctx, &a.spec)?;
    image
        .snap_create(&snap)
        .map_err(err("failed to create snapshot"))?;
    close(image)
}

pub fn snap_ls(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::No)?;
    let image = open(ctx, &spec, true)?;
    let snaps = image.snap_list().map_err(err("failed to list snapshots"))?;
    let _ = image.close();
    if ctx.formatted() {
        let v = snaps.iter().map(|s| {
            obj! {"id" => s.id, "name" => &s.name, "size" => s.size,
            "protected" => if s.protected { "true" } else { "false" },
            "timestamp" => ctime(s.timestamp)}
        });
        ctx.emit("snapshots", &Doc::list("snapshot", v));
        return Ok(());
    }
    let mut t = Table::new(&[
        ("SNAPID", Align::Left, Align::Right),
        ("NAME", Align::Left, Align::Left),
        ("SIZE", Align::Left, Align::Right),
        ("PROTECTED", Align::Left, Align::Left),
        ("TIMESTAMP", Align::Left, Align::Left),
    ]);
    for s in &snaps {
        let prot = if s.protected { "yes" } else { "" };
        t.row(vec![
            s.id.to_string(),
            s.name.clone(),
            byte_u(s.size),
            prot.into(),
            ctime(s.timestamp),
        ]);
    }
    if !t.is_empty() {
        print!("{t}");
    }
    Ok(())
}

pub fn snap_rm(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let (image, snap) = open_for_snap(ctx, &a.spec)?;
    match image.snap_remove(&snap) {
        Ok(()) => close(image),
        Err(e) if e.errno() == libc::EBUSY => {
            let _ = image.close();
            Err(Fail::new(
                libc::EBUSY,
                format!("snapshot '{snap}' is protected from removal."),
            ))
        }
        Err(e) => {
            let _ = image.close();
            Err(Fail::image(&e, "failed to remove snapshot"))
        }
    }
}

pub fn snap_protect(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let (image, snap) = open_for_snap(ctx, &a.spec)?;
    image
        .snap_protect(&snap)
        .map_err(err("protecting snap failed"))?;
    close(image)
}

pub fn snap_unprotect(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let (image, snap) = open_for_snap(ctx, &a.spec)?;
    image
        .snap_unprotect(&snap)
        .map_err(err("unprotecting snap failed"))?;
    close(image)
}

pub fn snap_rollback(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let (image, snap) = open_for_snap(ctx, &a.spec)?;
    let mut pc = ctx.progress("Rolling back to snapshot");
    let r = image.snap_rollback(&snap, &mut pc.callback());
    pc.end(r).map_err(err("rollback failed"))?;
    close(image)
}

pub fn snap_purge(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::No)?;
    let image = open(ctx, &spec, false)?;
    let snaps = image.snap_list().map_err(err("removing snaps failed"))?;
    if let Some(s) = snaps.iter().find(|s| s.protected) {
        let _ = image.close();
        return Err(Fail::new(
            libc::EBUSY,
            format!("snapshot '{}' is protected from removal.", s.name),
        ));
    }
    if snaps.is_empty() {
        return close(image);
    }
    let mut pc = ctx.progress("Removing all snapshots");
    let r = image.snap_purge();
    pc.end(r).map_err(err("removing snaps failed"))?;
    close(image)
}

pub fn snap_rename(ctx: &Ctx, a: &TwoSpecs) -> CmdResult {
    let src = ctx.image_spec(&a.src, Snap::Must)?;
    let dest = if a.dest.contains('@') {
        ctx.renamed_spec(&src, &a.dest, Snap::Must)?
    } else {
        src.with_snap(Some(&a.dest))
    };
    if src.pool_spec() != dest.pool_spec() {
        return Err(Fail::invalid(
            "source and destination pool must be the same",
        ));
    }
    if src.image != dest.image {
        return Err(Fail::invalid(
            "source and destination image name must be the same",
        ));
    }
    let image = open(ctx, &src.with_snap(None), false)?;
    let (from, to) = (src.snap.unwrap_or_default(), dest.snap.unwrap_or_default());
    image
        .snap_rename(&from, &to)
        .map_err(err("renaming snap failed"))?;
    close(image)
}
