//! `migration execute`: the copy, with its state changes compare-and-swapped on the record.
//!
//! An execute holds the `execute` op lock shared on the destination while it runs (so several
//! may resume one copy together), moves `prepared`/`executing` to `executing`, checkpoints
//! only while the record still says `executing`, and writes `executed` only over its own
//! `executing`: an `abort` (which sets `aborting`, then waits for the lock) stops it at its
//! next checkpoint instead of being overwritten. A same-store source's record follows the
//! destination's `executing` and `executed`, as librbd's does.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rbdm_image::migration::{MigrationRecord, MigrationRole, MigrationState};
use rbdm_image::{ImageSpec, Rbd};

use crate::finish::not_migrating;
use crate::recover::{self, EXECUTE_OP};
use crate::{identity, open_recorded, Error, Result};

pub struct ExecuteOptions {
    pub concurrency: usize,
    pub bandwidth_limit: Option<u64>,
}

fn refuse(name: &str, s: MigrationState) -> Option<String> {
    match s {
        MigrationState::Prepared | MigrationState::Executing => None,
        MigrationState::Executed => Some(format!("migration of '{name}' is already executed")),
        MigrationState::Aborting => Some(format!("migration of '{name}' is being aborted")),
        MigrationState::Committing => Some(format!("migration of '{name}' is being committed")),
        MigrationState::Preparing => Some(format!("migration of '{name}' is being prepared")),
    }
}

/// `migration execute`: copies what is left; `progress(done, total)` in objects.
pub fn execute(
    rbd: &Rbd,
    spec: &ImageSpec,
    opts: &ExecuteOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<()> {
    let Some(mut pair) = recover::find(rbd, spec)? else {
        return Err(not_migrating(spec));
    };
    if !recover::settle_prepare(rbd, &mut pair)? {
        return Err(not_migrating(spec));
    }
    let d = match &pair.dst {
        Some(d) if d.rec.role == MigrationRole::Destination => d,
        _ => return Err(not_migrating(spec)),
    };
    let img = d.open(rbd)?;
    let _running = img.op_lock(EXECUTE_OP, false)?;
    let before = d.rec.state;
    let rec = crate::finish::swap_state(&img, MigrationState::Executing, |s| refuse(&d.name, s))?;
    tell_source(rbd, &pair, MigrationState::Executing)?;
    let source = open_recorded(rbd, &rec)?;
    let run_opts = rbdm_copy::RunOptions {
        concurrency: opts.concurrency,
        bandwidth_limit: opts.bandwidth_limit,
        start: rec.copied_upto,
        resumed: before == MigrationState::Executing,
    };
    let total = AtomicU64::new(1);
    let stop = AtomicBool::new(false);
    let checkpoint = |mark: u64| {
        let t = total.load(Ordering::Relaxed).max(1);
        let r = img.swap_migration_record(|r| match r {
            Some(r) if r.state == MigrationState::Executing => Ok(Some(MigrationRecord {
                copied_upto: r.copied_upto.max(mark),
                state_description: format!("{}% complete", (mark.min(t) * 100) / t),
                ..r
            })),
            _ => Err(rbdm_image::Error::Invalid("state changed".into())),
        });
        if r.is_err() {
            // Another process moved the state on (an abort): stop, never write over it.
            stop.store(true, Ordering::Relaxed);
        }
    };
    let report = |done: u64, t: u64| {
        total.store(t, Ordering::Relaxed);
        progress(done, t);
    };
    let ran = rbdm_copy::run(&img, &*source, &rec, &run_opts, &report, &checkpoint, &stop);
    if stop.load(Ordering::Relaxed) {
        return Err(Error::Busy(format!(
            "migration of '{}' was aborted while executing",
            d.name
        )));
    }
    ran?;
    // The file stream checked its file on every read since the open; this covers a change
    // after the last read (a copy of a file changed before it ended is no copy of it).
    identity::check(&rec.source_spec, &rec.source_identity)?;
    // `executed` lets commit delete the source: every copy must be on disk before it says so,
    // also those of an earlier, killed run and clients' copy-ups in other processes.
    img.flush_all()?;
    crate::finish::swap_state(&img, MigrationState::Executed, |s| {
        (s != MigrationState::Executing).then(|| {
            format!(
                "migration of '{}' is {}: not marked executed",
                d.name,
                s.name()
            )
        })
    })?;
    tell_source(rbd, &pair, MigrationState::Executed)?;
    Ok(())
}

/// Moves a same-store source's record on with the destination's (after it, so the source
/// never claims more than the destination holds), as librbd keeps both: a Ceph client reads
/// an image-to-image migration's state from the source's record. Only from the states an
/// execute passes through; an abort or commit that got there first is left alone.
fn tell_source(rbd: &Rbd, pair: &recover::Pair, to: MigrationState) -> Result<()> {
    let Some(s) = &pair.src else {
        return Ok(());
    };
    s.open(rbd)?.swap_migration_record(|r| match r {
        Some(r)
            if matches!(
                r.state,
                MigrationState::Prepared | MigrationState::Executing
            ) =>
        {
            Ok(Some(MigrationRecord {
                state: to,
                state_description: String::new(),
                ..r
            }))
        }
        other => Ok(other),
    })?;
    Ok(())
}
