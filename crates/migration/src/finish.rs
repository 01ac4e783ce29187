//! The two ends of a migration: `commit` (the source goes) and `abort` (the destination goes,
//! the source comes back with what clients wrote).
//!
//! Both are re-runnable after a kill at any point: each first moves the records to its own
//! state by compare-and-swap (`committing`, `aborting`), which the other refuses to leave, and
//! every later step checks what is there before acting, so a rerun skips what was done.

use std::time::{Duration, Instant};

use rbdm_image::migration::{MigrationRecord, MigrationRole, MigrationState};
use rbdm_image::{Image, ImageSpec, Rbd};

use crate::recover::{self, Pair, Side, EXECUTE_OP};
use crate::{Error, Result};

/// How long `abort` waits for a running `execute` to notice and stop.
const EXECUTE_STOP_WAIT: Duration = Duration::from_secs(60);

/// Moves `img`'s record to state `to` unless `refuse` names the state it is in; returns the
/// record written.
pub(crate) fn swap_state(
    img: &Image,
    to: MigrationState,
    refuse: impl Fn(MigrationState) -> Option<String>,
) -> Result<MigrationRecord> {
    let rec = img.swap_migration_record(|r| {
        let Some(r) = r else {
            return Err(rbdm_image::Error::Invalid(format!(
                "image '{}' is not being migrated",
                img.name()
            )));
        };
        if let Some(why) = refuse(r.state) {
            return Err(rbdm_image::Error::Invalid(why));
        }
        Ok(Some(MigrationRecord {
            state: to,
            state_description: String::new(),
            ..r
        }))
    })?;
    Ok(rec.expect("a record was written"))
}

fn not_while_committing(s: MigrationState) -> Option<String> {
    (s == MigrationState::Committing).then(|| {
        "a commit of this migration is unfinished; run 'rbdm migration commit' again".into()
    })
}

/// `migration abort` (on the destination's or the source's name): from any state before a
/// commit started. A same-store migration writes clients' writes back into the source first.
pub fn abort(rbd: &Rbd, spec: &ImageSpec, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
    let Some(mut pair) = recover::find(rbd, spec)? else {
        return Err(not_migrating(spec));
    };
    if !recover::settle_prepare(rbd, &mut pair)? {
        return Ok(());
    }
    undo(rbd, &mut pair, true, progress)
}

pub(crate) fn not_migrating(spec: &ImageSpec) -> Error {
    Error::Invalid(format!(
        "image '{}' is not being migrated (no migration in progress)",
        spec.image
    ))
}

/// Undoes a migration, each step re-runnable: both records to `aborting`, wait for running
/// executes to stop, clients' writes back (if `write_back`), the destination removed, the
/// source restored from the trash and its record cleared (last: until then a rerun finds it).
pub(crate) fn undo(
    rbd: &Rbd,
    pair: &mut Pair,
    write_back: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let mut _executes = None;
    if let Some(d) = &mut pair.dst {
        let img = d.open(rbd)?;
        d.rec = swap_state(&img, MigrationState::Aborting, not_while_committing)?;
        _executes = Some(stop_executes(&img)?);
    }
    let dst_id = pair.dst.as_ref().map(|d| d.id.clone());
    if let Some(s) = &mut pair.src {
        let img = s.open(rbd)?;
        s.rec = swap_state(&img, MigrationState::Aborting, not_while_committing)?;
        if let (Some(id), Some(p)) = (&dst_id, &s.rec.peer) {
            if p.id.is_empty() {
                // So a rerun finds the destination by id even once its name is gone.
                let mut r = s.rec.clone();
                r.peer = Some(rbdm_image::migration::PeerImage {
                    id: id.clone(),
                    ..p.clone()
                });
                img.set_migration_record(Some(&r))?;
                s.rec = r;
            }
        }
    }
    if let (true, Some(d), Some(s)) = (write_back, &pair.dst, &pair.src) {
        write_back_writes(&d.open(rbd)?, &s.open(rbd)?, progress)?;
    }
    match (&pair.dst, &pair.src) {
        (Some(d), _) => remove_destination(rbd, d)?,
        (None, Some(s)) => {
            // The destination's name may be gone while its header is left (a create or a
            // removal cut short): the id recorded in the source, or a header naming the
            // source, finds it.
            for (pspec, id) in recover::unnamed_destinations(rbd, s)? {
                purge_snaps(&rbd.open_by_id(&pspec, &id, None, false)?)?;
                rbd.remove_id(&pspec, &id, &mut |_, _| {})?;
            }
        }
        (None, None) => {}
    }
    if let Some(s) = &pair.src {
        if let Some(t) = rbd.trash_find(&s.pool, &s.id)? {
            rbd.trash_restore_any(&s.pool, &t, None)?;
        }
        s.open(rbd)?.set_migration_record(None)?;
    }
    Ok(())
}

/// Waits until no `execute` runs on `img` (they stop at their next checkpoint, seeing the
/// record in a state they may not leave), and keeps new ones out while the lock is held.
fn stop_executes(img: &Image) -> Result<rbdm_image::intent::OpLock> {
    let start = Instant::now();
    loop {
        match img.op_lock(EXECUTE_OP, true) {
            Ok(l) => return Ok(l),
            Err(rbdm_image::Error::Busy(_)) if start.elapsed() < EXECUTE_STOP_WAIT => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(rbdm_image::Error::Busy(_)) => {
                return Err(Error::Busy(format!(
                    "'migration execute' of '{}' did not stop within {} s; run abort again",
                    img.name(),
                    EXECUTE_STOP_WAIT.as_secs()
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn purge_snaps(img: &Image) -> Result<()> {
    for s in img.snap_list()? {
        if s.protected {
            img.snap_unprotect(&s.name)?;
        }
    }
    Ok(img.snap_purge()?)
}

/// Removes a destination with its snapshots and copy bookkeeping; `Busy`, before anything is
/// removed, while a client has it open.
pub(crate) fn remove_destination(rbd: &Rbd, d: &Side) -> Result<()> {
    let quiet = rbd.open_quiet(&d.pool, None, Some(&d.id), None)?;
    // An execute that just stopped may still be dropping its watch.
    let mut open = quiet.watchers()?.len();
    for _ in 0..40 {
        if open == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        open = quiet.watchers()?.len();
    }
    drop(quiet);
    if open > 0 {
        return Err(Error::Busy(format!(
            "destination image '{}' is open by {open} client(s); close it and run abort again",
            d.name
        )));
    }
    let img = d.open(rbd)?;
    rbdm_copy::forget_progress(&img)?;
    purge_snaps(&img)?;
    drop(img);
    Ok(rbd.remove_id(&d.pool, &d.id, &mut |_, _| {})?)
}

/// Copies into `src` every range of `dst`'s head that differs from it: the clients' writes.
fn write_back_writes(dst: &Image, src: &Image, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
    let h = dst.header()?;
    let size = h.size.min(src.size());
    let count = h.layout.object_count(size);
    const CHUNK: usize = 4096;
    for object_no in 0..count {
        progress(object_no, count);
        if !crate::holds_head_data(dst, &dst.data_loc(&h, object_no))? {
            continue;
        }
        for (off, len) in h.layout.object_extents_in_image(object_no, size) {
            let mut a = vec![0u8; len as usize];
            let mut b = vec![0u8; len as usize];
            dst.read(off, &mut a)?;
            src.read(off, &mut b)?;
            for (i, (x, y)) in a.chunks(CHUNK).zip(b.chunks(CHUNK)).enumerate() {
                if x != y {
                    let at = off + (i * CHUNK) as u64;
                    if x.iter().all(|&v| v == 0) {
                        src.write_zeroes(at, x.len() as u64)?;
                    } else {
                        src.write(at, x)?;
                    }
                }
            }
        }
    }
    progress(count, count);
    src.flush()?;
    Ok(())
}

/// `migration commit`: only once executed (or to finish a commit cut short). `force`
/// re-points the source's clone children.
pub fn commit(rbd: &Rbd, spec: &ImageSpec, force: bool) -> Result<()> {
    let Some(mut pair) = recover::find(rbd, spec)? else {
        return Err(not_migrating(spec));
    };
    if !recover::settle_prepare(rbd, &mut pair)? {
        return Err(not_migrating(spec));
    }
    let Some(d) = pair
        .dst
        .as_ref()
        .filter(|d| d.rec.role == MigrationRole::Destination)
    else {
        return Err(not_migrating(spec));
    };
    if pair.any(MigrationState::Aborting) {
        return Err(Error::Invalid(format!(
            "an abort of the migration of '{}' is unfinished; run 'rbdm migration abort' again",
            d.name
        )));
    }
    if !matches!(
        d.rec.state,
        MigrationState::Executed | MigrationState::Committing
    ) {
        return Err(Error::Invalid(format!(
            "migration of '{}' is not executed (state: {}); run 'rbdm migration execute' first",
            d.name,
            d.rec.state.name()
        )));
    }
    let img = d.open(rbd)?;
    let src = match &pair.src {
        Some(s) => Some((s, s.open(rbd)?)),
        None => None,
    };
    let children = match &src {
        Some((_, s)) => s.children()?,
        None => Vec::new(),
    };
    if !children.is_empty() && !force {
        return Err(Error::Busy(format!(
            "source image '{}' has {} clone child(ren); use --force to re-point them to '{}'",
            pair.src.as_ref().map(|s| s.name.as_str()).unwrap_or(""),
            children.len(),
            d.name
        )));
    }
    let refuse = |s: MigrationState| {
        (!matches!(s, MigrationState::Executed | MigrationState::Committing))
            .then(|| format!("migration of '{}' is {}, not executed", d.name, s.name()))
    };
    swap_state(&img, MigrationState::Committing, refuse)?;
    if let Some((s, simg)) = src {
        swap_state(&simg, MigrationState::Committing, |_| None)?;
        if !children.is_empty() {
            rbd.reparent_children(&simg, &img)?;
        }
        purge_snaps(&simg)?;
        drop(simg);
        rbd.remove_id(&s.pool, &s.id, &mut |_, _| {})?;
    } else if let (false, Some(p)) = (d.rec.import_only, &d.rec.peer) {
        // The source's header is gone (a commit cut short): only its trash entry may be left.
        let pool = rbd
            .store()
            .pool_name(p.pool_id)
            .map_err(rbdm_image::Error::from)?;
        rbd.remove_id(
            &rbdm_image::PoolSpec::new(&pool, &p.namespace),
            &p.id,
            &mut |_, _| {},
        )?;
    }
    // Before the record goes: a commit cut short here is run again and finds it gone.
    rbdm_copy::forget_progress(&img)?;
    // Maps were not kept while objects arrived from other processes: none is better than a
    // stale one if this commit is cut short (readers rebuild an absent map from the objects).
    img.drop_object_maps()?;
    img.set_migration_record(None)?;
    img.rebuild_object_maps()?;
    Ok(())
}
