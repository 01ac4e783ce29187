//! `rbdm fsck [POOL]`: lists objects no image owns (what a cut-short operation left), one per
//! line with the reason, and exits non-zero (EUCLEAN, "structure needs cleaning") if any.

use crate::args::FsckArgs;
use crate::ctx::Ctx;
use crate::doc::Doc;
use crate::output::{err, CmdResult, Fail};

pub fn run(ctx: &Ctx, a: &FsckArgs) -> CmdResult {
    let rbd = ctx.rbd()?;
    let found = rbd.fsck(a.pool.as_deref()).map_err(err("fsck failed"))?;
    if ctx.formatted() {
        let list = Doc::list(
            "orphan",
            found
                .iter()
                .map(|f| crate::obj! {"object" => &f.object, "problem" => &f.problem}),
        );
        ctx.emit("orphans", &list);
    } else {
        for f in &found {
            println!("{}: {}", f.object, f.problem);
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    Err(Fail::new(
        libc::EUCLEAN,
        format!("fsck: {} object(s) owned by no image", found.len()),
    ))
}
