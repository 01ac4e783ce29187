//! Crash consistency: the real `rbdm` process is SIGKILLed at seeded random moments of
//! migration `prepare` (same-store with many snapshots, and import-only), `execute`,
//! `commit` and `abort` (here), and of the image operations (`crash/ops.rs`); then the
//! recovery a user would try runs, and every image and snapshot must hold exactly the
//! expected bytes, the documented recovery must work, `status`, `ls`, `info`, `snap ls` and
//! `trash ls` must tell the truth, and `fsck` must find no object that no image owns.
//!
//! `RBDM_CRASH_TRIALS` sets the trials per command (default 20), `RBDM_CRASH_SEED` the seed
//! (printed on failure, so a failing trial can be replayed).

mod common;
#[path = "crash/model.rs"]
mod model;
#[path = "crash/ops.rs"]
mod ops;

use std::time::{Duration, Instant};

use common::{Fixture, Rng, OBJ};
use rbdm_tests::{stderr, Killed};

fn trials() -> u64 {
    std::env::var("RBDM_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

fn seed(salt: u64) -> u64 {
    std::env::var("RBDM_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_c0de)
        ^ salt
}

/// Runs `args` to completion once (unkilled) and returns how long it took: the window the
/// kills are spread over.
fn timed(f: &Fixture, args: &[&str]) -> Duration {
    let t = Instant::now();
    f.env.ok(args);
    t.elapsed()
}

/// Starts `args` and SIGKILLs it after `delay` (or lets it finish, if it is quicker).
fn kill_after(f: &Fixture, args: &[&str], delay: Duration) -> bool {
    kill_child(f.env.command(args).spawn().expect("rbdm starts"), delay)
}

/// SIGKILLs `child` after `delay` unless it ends first; whether it was killed.
fn kill_child(child: std::process::Child, delay: Duration) -> bool {
    let mut k = Killed(child);
    let end = Instant::now() + delay;
    while Instant::now() < end {
        if let Ok(Some(_)) = k.0.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let killed = matches!(k.0.try_wait(), Ok(None));
    drop(k);
    killed
}

fn delay(rng: &mut Rng, window: Duration) -> Duration {
    let us = (window.as_micros() as u64 * 12 / 10).max(1);
    Duration::from_micros(rng.below(us))
}

/// After a kill, `status` of an existing name must answer (it settles what it finds).
fn status_answers(f: &Fixture, name: &str, trial: &str) {
    let out = f.env.rbdm(&["status", name]);
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(libc::ENOENT),
        "{trial}: status {name} failed ({code:?}): {}",
        stderr(&out)
    );
}

fn run_trials(what: &str, salt: u64, mut trial: impl FnMut(&mut Rng, u64)) {
    let mut rng = Rng(seed(salt) | 1);
    let start = Instant::now();
    for i in 0..trials() {
        trial(&mut rng, i);
    }
    eprintln!("{what}: {} trials in {:?}", trials(), start.elapsed());
}

/// A source with 3 snapshots (from `seed`), prepared for migration to `dst`.
fn prepared(seed: u64) -> Fixture {
    let f = Fixture::new(3, seed);
    f.env.ok(&["migration", "prepare", "src", "dst"]);
    f
}

/// The same, executed too: what commit and abort start from.
fn executed(seed: u64) -> Fixture {
    let f = prepared(seed);
    f.env.ok(&["migration", "execute", "dst"]);
    f
}

#[test]
fn killed_prepare_with_many_snapshots_rolls_back_or_forward() {
    let probe = Fixture::new(40, 1);
    let window = timed(&probe, &["migration", "prepare", "src", "dst"]);
    run_trials("prepare", 1, |rng, i| {
        let f = Fixture::new(40, rng.next_u64());
        let trial = format!("prepare trial {i} (seed {})", seed(1));
        kill_after(
            &f,
            &["migration", "prepare", "src", "dst"],
            delay(rng, window),
        );
        status_answers(&f, "dst", &trial);
        if rng.below(2) == 0 {
            // Roll back: abort (by either name) leaves the source as it was.
            let by = if rng.below(2) == 0 { "dst" } else { "src" };
            let out = f.env.rbdm(&["migration", "abort", by]);
            let not_started = stderr(&out).contains("not being migrated");
            assert!(
                out.status.success() || not_started,
                "{trial}: abort {by} failed: {}",
                stderr(&out)
            );
            f.source_intact(&trial);
            f.gone("dst", &trial);
        } else {
            // Forward: prepare again (or, if it had finished, go on), execute, commit.
            let out = f.env.rbdm(&["migration", "prepare", "src", "dst"]);
            if !out.status.success() {
                assert!(
                    f.state("dst").as_deref() == Some("prepared"),
                    "{trial}: prepare again failed and dst is not prepared: {}",
                    stderr(&out)
                );
            }
            f.env.ok(&["migration", "execute", "dst"]);
            f.env.ok(&["migration", "commit", "dst"]);
            f.migrated("dst", &trial);
        }
        f.fsck_clean(&trial);
    });
}

/// `migration prepare --import-only --source-spec SPEC dst`.
fn import_args(spec: &str) -> [&str; 6] {
    [
        "migration",
        "prepare",
        "--import-only",
        "--source-spec",
        spec,
        "dst",
    ]
}

#[test]
fn killed_import_prepare_is_undone_or_redone() {
    let probe = Fixture::new(0, 2);
    let spec = probe.raw_spec();
    let window = timed(&probe, &import_args(&spec));
    run_trials("import prepare", 2, |rng, i| {
        let f = Fixture::new(0, rng.next_u64());
        let spec = f.raw_spec();
        let args = import_args(&spec);
        let trial = format!("import trial {i} (seed {})", seed(2));
        kill_after(&f, &args, delay(rng, window));
        status_answers(&f, "dst", &trial);
        if rng.below(2) == 0 {
            let out = f.env.rbdm(&["migration", "abort", "dst"]);
            assert!(
                out.status.success()
                    || stderr(&out).contains("not being migrated")
                    || stderr(&out).contains("does not exist"),
                "{trial}: abort failed: {}",
                stderr(&out)
            );
            f.gone("dst", &trial);
        } else {
            let out = f.env.rbdm(&args);
            if !out.status.success() {
                assert_eq!(
                    f.state("dst").as_deref(),
                    Some("prepared"),
                    "{trial}: {}",
                    stderr(&out)
                );
            }
            f.env.ok(&["migration", "execute", "dst"]);
            f.env.ok(&["migration", "commit", "dst"]);
            f.head_is("dst", &f.raw, &trial);
        }
        f.fsck_clean(&trial);
    });
}

#[test]
fn killed_execute_resumes_or_aborts() {
    let args = ["migration", "execute", "--bandwidth-limit", "4M", "dst"];
    let probe = prepared(3);
    let window = timed(&probe, &args);
    run_trials("execute", 3, |rng, i| {
        let f = prepared(rng.next_u64());
        let trial = format!("execute trial {i} (seed {})", seed(3));
        kill_after(&f, &args, delay(rng, window));
        status_answers(&f, "dst", &trial);
        if rng.below(2) == 0 {
            let out = f.env.rbdm(&["migration", "execute", "dst"]);
            assert!(
                out.status.success() || stderr(&out).contains("already executed"),
                "{trial}: execute again failed: {}",
                stderr(&out)
            );
            assert_eq!(f.state("dst").as_deref(), Some("executed"), "{trial}");
            f.env.ok(&["migration", "commit", "dst"]);
            f.migrated("dst", &trial);
        } else {
            f.env.ok(&["migration", "abort", "dst"]);
            f.source_intact(&trial);
            f.gone("dst", &trial);
        }
        f.fsck_clean(&trial);
    });
}

#[test]
fn killed_commit_is_finished_by_commit() {
    let probe = executed(4);
    let window = timed(&probe, &["migration", "commit", "dst"]);
    run_trials("commit", 4, |rng, i| {
        let f = executed(rng.next_u64());
        let trial = format!("commit trial {i} (seed {})", seed(4));
        kill_after(&f, &["migration", "commit", "dst"], delay(rng, window));
        status_answers(&f, "dst", &trial);
        // Abort must refuse once a commit started removing the source.
        if f.state("dst").as_deref() == Some("committing") {
            let a = f.env.rbdm(&["migration", "abort", "dst"]);
            assert!(
                !a.status.success(),
                "{trial}: abort went over an unfinished commit"
            );
        }
        let out = f.env.rbdm(&["migration", "commit", "dst"]);
        assert!(
            out.status.success() || stderr(&out).contains("not being migrated"),
            "{trial}: commit again failed: {}",
            stderr(&out)
        );
        f.migrated("dst", &trial);
        f.fsck_clean(&trial);
    });
}

#[test]
fn killed_abort_is_finished_by_abort() {
    let probe = executed(5);
    let window = timed(&probe, &["migration", "abort", "dst"]);
    run_trials("abort", 5, |rng, i| {
        let f = prepared(rng.next_u64());
        if rng.below(2) == 0 {
            f.env.ok(&["migration", "execute", "dst"]);
        }
        let trial = format!("abort trial {i} (seed {})", seed(5));
        kill_after(&f, &["migration", "abort", "dst"], delay(rng, window));
        status_answers(&f, "dst", &trial);
        // Commit must refuse while an abort is unfinished.
        if f.state("dst").as_deref() == Some("aborting") {
            let c = f.env.rbdm(&["migration", "commit", "dst"]);
            assert!(
                !c.status.success(),
                "{trial}: commit went over an unfinished abort"
            );
        }
        let by = if rng.below(2) == 0 { "dst" } else { "src" };
        let out = f.env.rbdm(&["migration", "abort", by]);
        assert!(
            out.status.success() || stderr(&out).contains("not being migrated"),
            "{trial}: abort again failed: {}",
            stderr(&out)
        );
        f.source_intact(&trial);
        f.gone("dst", &trial);
        f.fsck_clean(&trial);
    });
}

#[test]
fn fsck_reports_what_no_image_owns() {
    let f = Fixture::new(2, 6);
    f.fsck_clean("fresh store");
    // A data object of an image id nobody lists: exactly what a cut-short removal leaves.
    let store = rbdm_store::open(&f.env.store).unwrap();
    let pool = store.pool_id("rbd").unwrap();
    let stray = rbdm_store::Locator::new(pool, "", "rbd_data.0123456789ab.0000000000000000");
    store
        .operate(
            &stray,
            &rbdm_store::WriteOp::new().write(0, &[1u8; OBJ as usize]),
            &Default::default(),
        )
        .unwrap();
    let out = f.env.rbdm(&["fsck"]);
    assert_eq!(out.status.code(), Some(libc::EUCLEAN), "{}", stderr(&out));
    assert!(rbdm_tests::stdout(&out).contains("rbd/rbd_data.0123456789ab.0000000000000000"));
}
