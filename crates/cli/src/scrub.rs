//! `rbdm scrub [POOL]`: checks everything the store keeps for a pool (all pools when none
//! is named) against its checksums, as `ceph pg deep-scrub` does for a placement group, and
//! prints each damaged object. Exits EIO when anything is damaged, so scripts can act on it.

use crate::args::ScrubArgs;
use crate::ctx::Ctx;
use crate::doc::Doc;
use crate::output::{CmdResult, Fail};

pub fn run(ctx: &Ctx, a: &ScrubArgs) -> CmdResult {
    let store = ctx.rbd()?.store();
    let pool = match &a.pool {
        Some(name) => Some(
            store
                .pool_id(name)
                .map_err(|e| Fail::store(&e, "scrub failed"))?,
        ),
        None => None,
    };
    let report = store
        .scrub(pool)
        .map_err(|e| Fail::store(&e, "scrub failed"))?;
    if ctx.formatted() {
        let doc = crate::obj! {
            "objects" => report.objects,
            "bytes" => report.bytes,
            "checksums" => report.checksums,
            "damaged" => Doc::list("object", report.damaged.iter()),
        };
        ctx.emit("scrub", &doc);
    } else {
        for d in &report.damaged {
            println!("damaged: {d}");
        }
        let unchecked = if report.checksums {
            ""
        } else {
            " (this store predates data checksums: only metadata was checked)"
        };
        println!(
            "scrubbed {} objects, {} bytes: {} damaged{unchecked}",
            report.objects,
            report.bytes,
            report.damaged.len()
        );
    }
    if report.damaged.is_empty() {
        return Ok(());
    }
    Err(Fail::errno(
        libc::EIO,
        "scrub found damage",
        &format!("{} damaged", report.damaged.len()),
    ))
}
