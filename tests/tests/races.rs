//! Races between real `rbdm` processes on one migration: `execute` ∥ `abort` and
//! `execute` ∥ `commit`, started at seeded random offsets. No snapshot may be lost, the state
//! `status` shows never goes backwards, and whatever wins, the user's next command finishes
//! the job. `RBDM_RACE_RUNS` sets the runs per pair (default 20: each run is a few processes
//! on 2 shared cores; the 50 is `RBDM_RACE_RUNS=50`).

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::{Fixture, Rng};
use rbdm_tests::{stderr, Killed};

fn runs() -> u64 {
    std::env::var("RBDM_RACE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

const EXECUTE: &[&str] = &["migration", "execute", "--bandwidth-limit", "8M", "dst"];

/// Order of the states a migration moves through; aborting is a dead end of its own.
fn rank(state: &str) -> u32 {
    match state {
        "prepared" => 0,
        "executing" => 1,
        "executed" => 2,
        "committing" => 3,
        "aborting" => 10,
        _ => 20,
    }
}

/// Samples `status` of `dst` while `busy` runs and checks no state follows a later one.
fn watch_states(f: &Fixture, children: &mut [Child], trial: &str) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(s) = f.state("dst") {
            if seen.last() != Some(&s) {
                if let Some(last) = seen.last() {
                    assert!(
                        rank(&s) >= rank(last),
                        "{trial}: state went from {last} back to {s} (seen {seen:?})"
                    );
                }
                seen.push(s);
            }
        }
        let running = children
            .iter_mut()
            .map(|c| c.try_wait())
            .filter(|w| matches!(w, Ok(None)))
            .count();
        if running == 0 || Instant::now() > deadline {
            break;
        }
    }
    seen
}

fn start(f: &Fixture, args: &[&str]) -> Child {
    f.env
        .command(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("rbdm starts")
}

fn outcome(c: Child) -> (bool, String) {
    let out = c.wait_with_output().expect("wait");
    (out.status.success(), stderr(&out))
}

/// Runs `first` and, after a random offset, `second`; returns both outcomes.
fn race(
    f: &Fixture,
    rng: &mut Rng,
    first: &[&str],
    second: &[&str],
    trial: &str,
) -> [(bool, String); 2] {
    let a = start(f, first);
    std::thread::sleep(Duration::from_millis(rng.below(400)));
    let b = start(f, second);
    let mut both = [a, b];
    watch_states(f, &mut both, trial);
    let [a, b] = both;
    [outcome(a), outcome(b)]
}

#[test]
fn execute_racing_abort_never_loses_the_source() {
    let mut rng = Rng(0x0ab0_47ed);
    for i in 0..runs() {
        let f = Fixture::new(3, rng.next_u64());
        f.env.ok(&["migration", "prepare", "src", "dst"]);
        let trial = format!("execute | abort run {i}");
        let [_exec, (aborted, why)] = race(
            &f,
            &mut rng,
            EXECUTE,
            &["migration", "abort", "dst"],
            &trial,
        );
        if !aborted {
            // The documented recovery: run abort again.
            let again = f.env.rbdm(&["migration", "abort", "dst"]);
            assert!(
                again.status.success(),
                "{trial}: abort failed ({why}), and again: {}",
                stderr(&again)
            );
        }
        f.source_intact(&trial);
        f.gone("dst", &trial);
        f.fsck_clean(&trial);
    }
}

#[test]
fn execute_racing_commit_commits_only_what_was_copied() {
    let mut rng = Rng(0xc0_4417);
    for i in 0..runs() {
        let f = Fixture::new(3, rng.next_u64());
        f.env.ok(&["migration", "prepare", "src", "dst"]);
        let trial = format!("execute | commit run {i}");
        let [(executed, why), (committed, _)] = race(
            &f,
            &mut rng,
            EXECUTE,
            &["migration", "commit", "dst"],
            &trial,
        );
        assert!(executed, "{trial}: execute failed: {why}");
        if !committed {
            f.env.ok(&["migration", "commit", "dst"]);
        }
        f.migrated("dst", &trial);
        f.fsck_clean(&trial);
    }
}

/// A killed execute leaves no process holding it: abort goes straight on.
#[test]
fn abort_after_a_killed_execute_does_not_wait() {
    let f = Fixture::new(2, 7);
    f.env.ok(&["migration", "prepare", "src", "dst"]);
    let c = Killed(start(&f, EXECUTE));
    std::thread::sleep(Duration::from_millis(150));
    drop(c);
    let t = Instant::now();
    f.env.ok(&["migration", "abort", "dst"]);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "abort waited {:?}",
        t.elapsed()
    );
    f.source_intact("abort after kill");
}
