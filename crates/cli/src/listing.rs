//! `rbdm ls [-l]` and `rbdm info`: the two listings that describe images, in plain text,
//! json and xml, with rbd's keys in rbd's order.

use rbdm_image::{features, Image, PoolSpec};

use crate::args::{LsArgs, SpecArg};
use crate::ctx::{check_namespace, open, Ctx, Snap};
use crate::doc::Doc;
use crate::layout::feature_names;
use crate::obj;
use crate::output::{byte_u, ctime, err, Align, CmdResult, Fail, Table};

pub fn ls(ctx: &Ctx, a: &LsArgs) -> CmdResult {
    let ps = ctx.pool_spec(a.pool_spec.as_deref())?;
    check_namespace(ctx, &ps)?;
    let names = ctx.rbd()?.list(&ps).map_err(err("listing images failed"))?;
    if !a.long {
        if ctx.formatted() {
            ctx.emit("images", &Doc::list("name", &names));
        } else {
            for n in &names {
                println!("{n}");
            }
        }
        return Ok(());
    }
    let mut table = Table::new(&[
        ("NAME", Align::Left, Align::Left),
        ("SIZE", Align::Left, Align::Right),
        ("PARENT", Align::Left, Align::Left),
        ("FMT", Align::Left, Align::Right),
        ("PROT", Align::Left, Align::Left),
        ("LOCK", Align::Left, Align::Left),
    ]);
    let mut out = Doc::empty_list();
    for name in &names {
        // An image removed between list and open is skipped, as rbd does.
        let image = match ctx.rbd()?.open(&ps.image(name), true) {
            Ok(image) => image,
            Err(e) if e.errno() == libc::ENOENT => continue,
            Err(e) => {
                eprintln!(
                    "rbdm: {}",
                    Fail::image(&e, format!("error opening {name}")).msg
                );
                continue;
            }
        };
        long_rows(ctx, &ps, name, &image, &mut table, &mut out)?;
        let _ = image.close();
    }
    if ctx.formatted() {
        ctx.emit("images", &out);
    } else if !names.is_empty() {
        print!("{table}");
    }
    Ok(())
}

pub fn parent_string(p: &rbdm_image::ParentInfo) -> String {
    let ns = if p.namespace.is_empty() {
        String::new()
    } else {
        format!("{}/", p.namespace)
    };
    format!("{}/{ns}{}@{}", p.pool, p.image_name, p.snap_name)
}

fn parent_doc(p: &rbdm_image::ParentInfo) -> Doc {
    obj! {"pool" => &p.pool, "pool_namespace" => &p.namespace, "image" => &p.image_name,
    "snapshot" => &p.snap_name}
}

fn long_rows(
    ctx: &Ctx,
    ps: &PoolSpec,
    name: &str,
    image: &Image,
    table: &mut Table,
    out: &mut Doc,
) -> CmdResult {
    let info = image
        .info()
        .map_err(err(format!("error processing image {name}")))?;
    let lock = lock_type(image);
    let parent = info.parent.as_ref();
    // Keys in rbd's order: the parent comes before the format.
    let mut obj = obj! {"image" => name, "id" => &info.id, "size" => info.size};
    if let Some(p) = parent {
        obj.set("parent", parent_doc(p));
    }
    obj.set("format", 2u64);
    if let Some(l) = &lock {
        obj.set(
            "lock_type",
            if l == "excl" { "exclusive" } else { "shared" },
        );
    }
    out.push("image", obj);
    table.row(vec![
        name.to_string(),
        byte_u(info.size),
        parent.map(parent_string).unwrap_or_default(),
        "2".into(),
        String::new(),
        lock.unwrap_or_default(),
    ]);
    let snaps = image
        .snap_list()
        .map_err(err(format!("error processing image {name}")))?;
    for s in snaps {
        // A snapshot keeps the parent it had when it was taken.
        let snap_parent = ctx
            .rbd()?
            .open(&ps.image(name).with_snap(Some(&s.name)), true)
            .ok()
            .and_then(|img| {
                let p = img.info().ok().and_then(|i| i.parent);
                let _ = img.close();
                p
            });
        let mut obj = obj! {"image" => name, "id" => &info.id, "snapshot" => &s.name,
        "snapshot_id" => s.id, "size" => s.size};
        if let Some(p) = &snap_parent {
            obj.set("parent", parent_doc(p));
        }
        obj.set("format", 2u64);
        obj.set("protected", if s.protected { "true" } else { "false" });
        out.push("snapshot", obj);
        table.row(vec![
            format!("{name}@{}", s.name),
            byte_u(s.size),
            snap_parent.as_ref().map(parent_string).unwrap_or_default(),
            "2".into(),
            if s.protected {
                "yes".into()
            } else {
                String::new()
            },
            String::new(),
        ]);
    }
    Ok(())
}

/// "excl"/"shr" when someone holds a lock on the image: the managed exclusive lock of a
/// writer, or an advisory lock (`lock add`), as rbd shows both.
fn lock_type(image: &Image) -> Option<String> {
    let locks = image.image_locks().ok()?;
    let first = locks.first()?;
    Some(if first.exclusive { "excl" } else { "shr" }.into())
}

pub fn info(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::Maybe)?;
    let image = open(ctx, &spec, true)?;
    let info = image.info().map_err(err("info"))?;
    let protected = match &spec.snap {
        Some(name) => {
            let snaps = image.snap_list().map_err(err("info"))?;
            Some(snaps.iter().any(|s| &s.name == name && s.protected))
        }
        None => None,
    };
    let _ = image.close();
    let layout = info.layout;
    let objects = layout.object_count(info.size);
    let flags: Vec<&str> = [(1u64, "object map invalid"), (2, "fast diff invalid")]
        .iter()
        .filter(|(bit, _)| info.flags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    let parent_in_trash = info.parent.as_ref().map(|p| in_trash(ctx, p));
    if ctx.formatted() {
        let doc = info_doc(&info, &flags, protected, parent_in_trash);
        ctx.emit("image", &doc);
        return Ok(());
    }
    let mut s = format!(
        "rbd image '{}':\n\tsize {} in {objects} objects\n\torder {} ({} objects)\n\tsnapshot_count: {}\n\tid: {}\n",
        info.name,
        byte_u(info.size),
        layout.order(),
        byte_u(layout.object_size),
        info.snapshot_count,
        info.id
    );
    if let Some(dp) = &info.data_pool {
        s += &format!("\tdata_pool: {dp}\n");
    }
    s += &format!(
        "\tblock_name_prefix: {}\n\tformat: 2\n",
        info.block_name_prefix
    );
    s += &format!(
        "\tfeatures: {}\n\top_features: \n\tflags: {}\n",
        feature_names(info.features).join(", "),
        flags.join(", ")
    );
    s += &format!("\tcreate_timestamp: {}\n", ctime(info.create_timestamp));
    s += &format!("\taccess_timestamp: {}\n", ctime(info.access_timestamp));
    s += &format!("\tmodify_timestamp: {}\n", ctime(info.modify_timestamp));
    if let Some(p) = protected {
        s += &format!("\tprotected: {}\n", if p { "True" } else { "False" });
    }
    if let Some(p) = &info.parent {
        // As rbd: `parent: rbd/tp@s (trash 117d318afc76)` for a parent in the trash.
        let trash = match parent_in_trash {
            Some(true) => format!(" (trash {})", p.image_id),
            _ => String::new(),
        };
        s += &format!(
            "\tparent: {}{trash}\n\toverlap: {}\n",
            parent_string(p),
            byte_u(p.overlap)
        );
    }
    if info.features & features::STRIPINGV2 != 0 || layout.is_striped() {
        s += &format!(
            "\tstripe unit: {}\n\tstripe count: {}\n",
            byte_u(layout.stripe_unit),
            layout.stripe_count
        );
    }
    print!("{s}");
    Ok(())
}

/// `rbd info --format json|xml`, keys in rbd's order.
fn info_doc(
    info: &rbdm_image::ImageInfo,
    flags: &[&str],
    protected: Option<bool>,
    parent_in_trash: Option<bool>,
) -> Doc {
    let layout = info.layout;
    let mut v = obj! {
        "name" => &info.name, "id" => &info.id, "size" => info.size,
        "objects" => layout.object_count(info.size), "order" => layout.order(),
        "object_size" => layout.object_size, "snapshot_count" => info.snapshot_count,
    };
    if let Some(dp) = &info.data_pool {
        v.set("data_pool", dp);
    }
    v.set("block_name_prefix", &info.block_name_prefix);
    v.set("format", 2u64);
    v.set(
        "features",
        Doc::list("feature", feature_names(info.features)),
    );
    v.set("op_features", Doc::list("op_feature", Vec::<Doc>::new()));
    v.set("flags", Doc::list("flag", flags.iter().copied()));
    v.set("create_timestamp", ctime(info.create_timestamp));
    v.set("access_timestamp", ctime(info.access_timestamp));
    v.set("modify_timestamp", ctime(info.modify_timestamp));
    if let Some(p) = protected {
        v.set("protected", if p { "true" } else { "false" });
    }
    if let Some(p) = &info.parent {
        v.set(
            "parent",
            obj! {"pool" => &p.pool, "pool_namespace" => &p.namespace, "image" => &p.image_name,
            "id" => &p.image_id, "snapshot" => &p.snap_name,
            "trash" => parent_in_trash.unwrap_or(false), "overlap" => p.overlap},
        );
    }
    if info.features & features::STRIPINGV2 != 0 || layout.is_striped() {
        v.set("stripe_unit", layout.stripe_unit);
        v.set("stripe_count", layout.stripe_count);
    }
    v
}

/// Whether a clone's parent image has been moved to the trash (it stays a parent there).
fn in_trash(ctx: &Ctx, p: &rbdm_image::ParentInfo) -> bool {
    let Ok(rbd) = ctx.rbd() else { return false };
    rbd.trash_list(&PoolSpec::new(&p.pool, &p.namespace), true)
        .map(|list| list.iter().any(|e| e.id == p.image_id))
        .unwrap_or(false)
}
