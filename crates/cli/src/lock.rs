//! `rbdm lock ls|add|rm`: advisory image locks, worded and formatted as `rbd lock`
//! (`There is 1 exclusive lock on this image.`, a `Locker  ID  Address` table, json/xml
//! `<locks><lock><id>…</id><locker>…</locker><address>…</address></lock></locks>`).

use rbdm_image::advisory::{is_other_tag, ImageLock};

use crate::args::{LockAddArgs, LockCmd, LockLsArgs, LockRmArgs};
use crate::ctx::{open, Ctx, Snap};
use crate::doc::Doc;
use crate::obj;
use crate::output::{Align, CmdResult, Fail, Table};

pub fn run(ctx: &Ctx, cmd: &LockCmd) -> CmdResult {
    match cmd {
        LockCmd::Ls(a) => list(ctx, a),
        LockCmd::Add(a) => add(ctx, a),
        LockCmd::Rm(a) => remove(ctx, a),
    }
}

fn list(ctx: &Ctx, a: &LockLsArgs) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::No)?;
    let image = open(ctx, &spec, true)?;
    let locks = image.image_locks();
    let _ = image.close();
    let locks = locks.map_err(|e| Fail::image(&e, "listing locks failed"))?;
    if ctx.formatted() {
        let v = locks
            .iter()
            .map(|l| obj! {"id" => &l.id, "locker" => l.locker(), "address" => &l.address});
        ctx.emit("locks", &Doc::list("lock", v));
        return Ok(());
    }
    print!("{}", plain(&locks));
    Ok(())
}

/// rbd's plain listing; nothing at all when no one holds a lock.
fn plain(locks: &[ImageLock]) -> String {
    let Some(first) = locks.first() else {
        return String::new();
    };
    let n = locks.len();
    let kind = if first.exclusive {
        "exclusive"
    } else {
        "shared"
    };
    let (verb, plural) = if n == 1 { ("is", "") } else { ("are", "s") };
    let mut out = format!("There {verb} {n} {kind} lock{plural} on this image.\n");
    if !first.exclusive {
        out.push_str(&format!("Lock tag: {}\n", first.tag));
    }
    let mut t = Table::new(&[
        ("Locker", Align::Left, Align::Left),
        ("ID", Align::Left, Align::Left),
        ("Address", Align::Left, Align::Left),
    ]);
    for l in locks {
        t.row(vec![l.locker(), l.id.clone(), l.address.clone()]);
    }
    out.push_str(&t.to_string());
    out
}

fn add(ctx: &Ctx, a: &LockAddArgs) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::No)?;
    let image = open(ctx, &spec, true)?;
    let r = image.lock_add(&a.id, a.shared.as_deref());
    let _ = image.close();
    r.map_err(|e| match e.errno() {
        // rbd words a refusal without the errno text.
        libc::EBUSY if is_other_tag(&e) => Fail::new(
            libc::EBUSY,
            "lock is already held by someone else with a different tag",
        ),
        libc::EBUSY => Fail::new(libc::EBUSY, "lock is already held by someone else"),
        _ => Fail::image(&e, "locking failed"),
    })
}

fn remove(ctx: &Ctx, a: &LockRmArgs) -> CmdResult {
    let spec = ctx.image_spec(&a.spec, Snap::No)?;
    let image = open(ctx, &spec, true)?;
    let r = image.lock_remove(&a.id, &a.locker);
    let _ = image.close();
    r.map_err(|e| Fail::image(&e, "releasing lock failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(id: &str, tag: &str, client: u64) -> ImageLock {
        ImageLock {
            id: id.into(),
            tag: tag.into(),
            exclusive: tag.is_empty(),
            client_id: client,
            address: format!("h:0/{client}"),
            managed: false,
        }
    }

    #[test]
    fn plain_as_rbd() {
        // Shapes from Ceph 16.2.15 (`rbd lock ls`), see /work/prompts/ceph-outputs/lock-ls-*.
        assert_eq!(plain(&[]), "");
        assert_eq!(
            plain(&[lock("mylock", "", 4305)]),
            "There is 1 exclusive lock on this image.\n\
             Locker       ID      Address \n\
             client.4305  mylock  h:0/4305\n"
        );
        let two = plain(&[lock("l1", "tag1", 1), lock("l2", "tag1", 22)]);
        assert!(two.starts_with("There are 2 shared locks on this image.\nLock tag: tag1\nLocker "));
    }
}
