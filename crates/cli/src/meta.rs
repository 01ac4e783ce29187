//! `image-meta get|set|rm|ls` and `config-key get|set|rm|ls`: an image's key/value
//! metadata and the store-wide settings (rbd's ImageMeta.cc and Config.cc).

use crate::args::{ConfigKeyCmd, MetaCmd, SpecArg};
use crate::ctx::{close, open, Ctx, Snap};
use crate::doc::Doc;
use crate::output::{err, Align, CmdResult, Fail, Table};

pub fn image_meta(ctx: &Ctx, cmd: &MetaCmd) -> CmdResult {
    match cmd {
        MetaCmd::Set(a) => {
            let image = open(ctx, &ctx.image_spec(&a.spec, Snap::No)?, false)?;
            image
                .metadata_set(&a.key, &a.value)
                .map_err(err("setting metadata failed"))?;
            close(image)
        }
        MetaCmd::Get(a) => {
            let image = open(ctx, &ctx.image_spec(&a.spec, Snap::No)?, true)?;
            let v = image
                .metadata_get(&a.key)
                .map_err(err(format!("failed to get metadata {} of image", a.key)))?;
            let _ = image.close();
            println!("{v}");
            Ok(())
        }
        MetaCmd::Rm(a) => {
            let image = open(ctx, &ctx.image_spec(&a.spec, Snap::No)?, false)?;
            image
                .metadata_remove(&a.key)
                .map_err(err("removing metadata failed"))?;
            close(image)
        }
        MetaCmd::Ls(a) => meta_ls(ctx, a),
    }
}

fn meta_ls(ctx: &Ctx, a: &SpecArg) -> CmdResult {
    let image = open(ctx, &ctx.image_spec(&a.spec, Snap::No)?, true)?;
    let pairs = image
        .metadata_list()
        .map_err(err("listing metadata failed"))?;
    let _ = image.close();
    if ctx.formatted() {
        // rbd names each XML element after its key.
        let doc = Doc::Obj(pairs.into_iter().map(|(k, v)| (k, Doc::Str(v))).collect());
        ctx.emit("metadatas", &doc);
        return Ok(());
    }
    if pairs.is_empty() {
        println!("There are 0 metadata on this image.");
        return Ok(());
    }
    let one = pairs.len() == 1;
    println!(
        "There {} {} {} on this image:\n",
        if one { "is" } else { "are" },
        pairs.len(),
        if one { "metadatum" } else { "metadata" }
    );
    let mut t = Table::new(&[
        ("Key", Align::Left, Align::Left),
        ("Value", Align::Left, Align::Left),
    ]);
    for (k, v) in pairs {
        t.row(vec![k, v]);
    }
    print!("{t}");
    Ok(())
}

pub fn config_key(ctx: &Ctx, cmd: &ConfigKeyCmd) -> CmdResult {
    match cmd {
        ConfigKeyCmd::Set(a) => {
            let value = match (&a.value, &a.in_file) {
                (_, Some(path)) => std::fs::read(path)
                    .map_err(|e| Fail::io(&e, format!("error reading {path}")))?,
                (Some(v), None) => v.clone().into_bytes(),
                (None, None) => return Err(Fail::invalid("a value or --in-file is required")),
            };
            ctx.rbd()?
                .config_key_set(&a.key, &value)
                .map_err(err(format!("error setting key '{}'", a.key)))
        }
        ConfigKeyCmd::Get(a) => {
            let v = ctx
                .rbd()?
                .config_key_get(&a.key)
                .map_err(err(format!("error getting key '{}'", a.key)))?;
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&v);
            let _ = out.write_all(b"\n");
            Ok(())
        }
        ConfigKeyCmd::Rm(a) => ctx
            .rbd()?
            .config_key_remove(&a.key)
            .map_err(err(format!("error removing key '{}'", a.key))),
        ConfigKeyCmd::Ls => {
            let keys = ctx
                .rbd()?
                .config_key_list()
                .map_err(err("error listing keys"))?;
            if ctx.formatted() {
                ctx.emit("keys", &Doc::list("key", &keys));
            } else {
                for k in keys {
                    println!("{k}");
                }
            }
            Ok(())
        }
    }
}
