//! `pool create|init|ls|rm` and `namespace create|rm|ls` (rbd's Pool.cc and Namespace.cc).

use rbdm_image::PoolSpec;

use crate::args::{NsCmd, NsSpecArg, PoolCmd};
use crate::ctx::{check_pool, Ctx};
use crate::doc::Doc;
use crate::obj;
use crate::output::{err, Align, CmdResult, Fail, Table};

fn check_pool_name(name: &str) -> CmdResult {
    if name.is_empty() || name.contains('/') || name.contains('@') {
        return Err(Fail::invalid(format!("invalid pool name '{name}'")));
    }
    Ok(())
}

pub fn pool(ctx: &Ctx, cmd: &PoolCmd) -> CmdResult {
    match cmd {
        PoolCmd::Create(a) => {
            check_pool_name(&a.name)?;
            ctx.rbd()?
                .pool_create(&a.name)
                .map_err(err(format!("error creating pool '{}'", a.name)))
        }
        PoolCmd::Init(a) => {
            check_pool_name(&a.name)?;
            check_pool(ctx, &a.name)?;
            ctx.rbd()?
                .pool_init(&a.name)
                .map_err(err(format!("error initializing pool '{}'", a.name)))
        }
        PoolCmd::Ls => {
            let pools = ctx.rbd()?.pool_list().map_err(err("error listing pools"))?;
            if ctx.formatted() {
                ctx.emit("pools", &pools_doc(ctx, &pools)?);
            } else {
                for p in pools {
                    println!("{p}");
                }
            }
            Ok(())
        }
        PoolCmd::Rm(a) => {
            check_pool_name(&a.name)?;
            check_pool(ctx, &a.name)?;
            ctx.rbd()?
                .pool_remove(&a.name, a.force)
                .map_err(err(format!("error removing pool '{}'", a.name)))
        }
    }
}

/// Each pool's id and name, under the names `ceph osd pool ls detail` gives them
/// (`<pools><pool><pool_id>1</pool_id><pool_name>rbd</pool_name>…`), since scripts take the
/// id from there for a native source-spec's `pool_id`.
fn pools_doc(ctx: &Ctx, pools: &[String]) -> CmdResult<Doc> {
    let store = ctx.rbd()?.store();
    let mut out = Doc::empty_list();
    for name in pools {
        let id = store
            .pool_id(name)
            .map_err(|e| Fail::store(&e, format!("error opening pool '{name}'")))?;
        out.push("pool", obj! {"pool_id" => id, "pool_name" => name});
    }
    Ok(out)
}

fn ns_spec(ctx: &Ctx, a: &NsSpecArg) -> CmdResult<PoolSpec> {
    let spec = ctx.pool_spec(a.spec.as_deref())?;
    if spec.namespace.is_empty() {
        return Err(Fail::invalid("namespace name was not specified"));
    }
    Ok(spec)
}

pub fn namespace(ctx: &Ctx, cmd: &NsCmd) -> CmdResult {
    match cmd {
        NsCmd::Create(a) => {
            let spec = ns_spec(ctx, a)?;
            check_pool(ctx, &spec.pool)?;
            ctx.rbd()?
                .namespace_create(&spec.pool, &spec.namespace)
                .map_err(err("failed to create namespace"))
        }
        NsCmd::Rm(a) => {
            let spec = ns_spec(ctx, a)?;
            check_pool(ctx, &spec.pool)?;
            ctx.rbd()?
                .namespace_remove(&spec.pool, &spec.namespace)
                .map_err(err("failed to remove namespace"))
        }
        NsCmd::Ls(a) => {
            let pool = a
                .pool
                .clone()
                .unwrap_or_else(|| ctx.default_pool().to_string());
            check_pool_name(&pool)?;
            check_pool(ctx, &pool)?;
            let list = ctx
                .rbd()?
                .namespace_list(&pool)
                .map_err(err("listing namespaces failed"))?;
            if ctx.formatted() {
                let v = list.iter().map(|n| obj! {"name" => n});
                ctx.emit("namespaces", &Doc::list("namespace", v));
                return Ok(());
            }
            let mut t = Table::new(&[("NAME", Align::Left, Align::Left)]);
            for n in list {
                t.row(vec![n]);
            }
            if !t.is_empty() {
                print!("{t}");
            }
            Ok(())
        }
    }
}
