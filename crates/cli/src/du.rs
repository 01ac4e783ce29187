//! `du` and `diff`: space used per image and snapshot, and extents changed since a
//! snapshot, from the object map (rbd's DiskUsage.cc and Diff.cc).

use crate::args::{DiffArgs, DuArgs};
use crate::ctx::{check_namespace, open, Ctx, Snap};
use crate::doc::Doc;
use crate::obj;
use crate::output::{byte_u, err, Align, CmdResult, Fail, Table};

pub fn du(ctx: &Ctx, a: &DuArgs) -> CmdResult {
    let (ps, only, snap) = match &a.spec {
        Some(s) => {
            let spec = ctx.image_spec(s, Snap::Maybe)?;
            (
                spec.pool_spec(),
                Some(spec.image.clone()),
                spec.snap.clone(),
            )
        }
        None => (ctx.pool_spec(None)?, None, None),
    };
    check_namespace(ctx, &ps)?;
    let names = ctx.rbd()?.list(&ps).map_err(err("du failed"))?;
    if let Some(name) = &only {
        if !names.contains(name) {
            return Err(Fail::new(
                libc::ENOENT,
                format!("du failed: specified image {name} is not found."),
            ));
        }
    }
    let mut t = Table::new(&[
        ("NAME", Align::Left, Align::Left),
        ("PROVISIONED", Align::Left, Align::Right),
        ("USED", Align::Left, Align::Right),
    ]);
    let mut out = Doc::empty_list();
    let (mut rows, mut total_prov, mut total_used) = (0, 0u64, 0u64);
    for name in names
        .iter()
        .filter(|n| only.as_ref().is_none_or(|o| o == *n))
    {
        let image = match ctx.rbd()?.open(&ps.image(name), true) {
            Ok(image) => image,
            Err(e) if e.errno() == libc::ENOENT => continue,
            Err(e) => return Err(Fail::image(&e, format!("error opening {name}"))),
        };
        let entries = image.du().map_err(err("du failed"))?;
        let id = image.info().map(|i| i.id).unwrap_or_default();
        let snap_ids = image.snap_list().map_err(err("du failed"))?;
        let _ = image.close();
        check_du_snaps(&entries, snap.as_deref(), a.from_snap.as_deref())?;
        let mut started = a.from_snap.is_none();
        for e in &entries {
            if !started {
                started = e.snap.as_deref() == a.from_snap.as_deref();
                continue;
            }
            let label = match &e.snap {
                Some(s) => format!("{name}@{s}"),
                None => name.clone(),
            };
            t.row(vec![label, byte_u(e.provisioned), byte_u(e.used)]);
            let mut o = obj! {"name" => name, "id" => &id};
            if let Some(s) = &e.snap {
                o.set("snapshot", s);
                if let Some(info) = snap_ids.iter().find(|i| &i.name == s) {
                    o.set("snapshot_id", info.id);
                }
            }
            o.set("provisioned_size", e.provisioned);
            o.set("used_size", e.used);
            out.push("image", o);
            rows += 1;
            total_used += e.used;
            if e.snap.is_none() || snap.is_some() {
                total_prov += e.provisioned;
            }
            if snap.is_some() && e.snap == snap {
                break;
            }
        }
    }
    if ctx.formatted() {
        let mut v = obj! {"images" => out};
        if only.is_none() {
            v.set("total_provisioned_size", total_prov);
            v.set("total_used_size", total_used);
        }
        ctx.emit("stats", &v);
        return Ok(());
    }
    if rows > 1 {
        t.row(vec![
            "<TOTAL>".into(),
            byte_u(total_prov),
            byte_u(total_used),
        ]);
    }
    if !names.is_empty() {
        print!("{t}");
    }
    Ok(())
}

fn check_du_snaps(
    entries: &[rbdm_image::DuEntry],
    snap: Option<&str>,
    from: Option<&str>,
) -> CmdResult {
    for name in [snap, from].into_iter().flatten() {
        if !entries.iter().any(|e| e.snap.as_deref() == Some(name)) {
            return Err(Fail::new(
                libc::ENOENT,
                format!("du failed: specified snapshot {name} is not found."),
            ));
        }
    }
    Ok(())
}

pub fn diff(ctx: &Ctx, a: &DiffArgs) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::Maybe)?;
    let image = open(ctx, &spec, true)?;
    let extents = image
        .diff(a.from_snap.as_deref(), a.whole_object)
        .map_err(err("diff error"))?;
    let _ = image.close();
    if ctx.formatted() {
        let v = extents.iter().map(|e| {
            obj! {"offset" => e.offset, "length" => e.len,
            "exists" => if e.exists { "true" } else { "false" }}
        });
        ctx.emit("extents", &Doc::list("extent", v));
        return Ok(());
    }
    let mut t = Table::new(&[
        ("Offset", Align::Left, Align::Left),
        ("Length", Align::Left, Align::Left),
        ("Type", Align::Left, Align::Left),
    ]);
    for e in &extents {
        t.row(vec![
            e.offset.to_string(),
            e.len.to_string(),
            if e.exists { "data" } else { "zero" }.into(),
        ]);
    }
    print!("{t}");
    Ok(())
}
