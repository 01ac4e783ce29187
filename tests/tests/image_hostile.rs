//! Image-level operations under hostile conditions (issue 13): a `flatten` killed with SIGKILL
//! at seeded random moments, sizes at the edge of what an image can address, snapshots taken
//! while an NBD client writes.
//!
//! Each test runs the real `rbdm` binary on a real `dir://` store; build it first with
//! `cargo build -p rbdm-cli`.

use std::process::{Command, Stdio};
use std::time::Duration;

use rbdm_tests::*;

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;

/// Copies the store of `from` into a fresh environment, so each trial starts from the same
/// state without paying for the import again.
fn copy_env(from: &Env) -> Env {
    let to = Env::new();
    let st = Command::new("cp")
        .arg("-a")
        .arg(from.path("store"))
        .arg(to.path("store"))
        .status()
        .expect("cp runs");
    assert!(st.success(), "cp -a of the store failed");
    to
}

/// A clone `c` of `a@s1` (512 objects of 16 KiB, random data), 1 MiB of it rewritten and
/// then snapshotted as `c@cs1`. Returns the env and what `c@cs1` (and the head) must read.
fn clone_with_snapshot() -> (Env, Vec<u8>) {
    let env = Env::new();
    let size = 8 * MIB;
    let data = pseudo_random(size as usize, 0x5eed_f1a7);
    let raw = env.path("a.raw");
    std::fs::write(&raw, &data).unwrap();
    env.ok(&["import", "--object-size", "16K", raw.to_str().unwrap(), "a"]);
    env.ok(&["snap", "create", "a@s1"]);
    env.ok(&["snap", "protect", "a@s1"]);
    env.ok(&["clone", "a@s1", "c"]);
    env.ok(&[
        "bench",
        "--io-type",
        "write",
        "--io-size",
        "64K",
        "--io-total",
        "1M",
        "c",
    ]);
    env.ok(&["snap", "create", "c@cs1"]);
    let mut want = data;
    apply_bench(&mut want, 64 * KIB, MIB);
    (env, want)
}

fn export_is(env: &Env, spec: &str, want: &[u8]) -> Result<(), String> {
    let out = env.path(&format!("{}.out", spec.replace('@', "_")));
    env.ok(&["export", spec, out.to_str().unwrap()]);
    let r = file_is(&out, want);
    let _ = std::fs::remove_file(&out);
    r.map_err(|e| format!("{spec}: {e}"))
}

/// Issue 13 point 1: `flatten` killed at a random moment, then re-run, must leave the clone's
/// snapshot reading exactly what it read before (no zeros for the object in flight).
#[test]
fn killed_flatten_keeps_the_clone_snapshot() {
    let (base, want) = clone_with_snapshot();
    let trials: u64 = std::env::var("RBDM_KILL_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut rng = Rng(0x00f1_a77e_4b11_1ed5);
    let mut interrupted = 0;
    let mut failures = Vec::new();
    for trial in 0..trials {
        let env = copy_env(&base);
        let delay = 50 + rng.below(850);
        let mut child = Killed(
            env.command(&["flatten", "c"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("flatten starts"),
        );
        std::thread::sleep(Duration::from_millis(delay));
        let finished = child.0.try_wait().expect("poll flatten").is_some();
        drop(child); // SIGKILL if still running
        if !finished {
            interrupted += 1;
        }
        // A kill after the parent link went leaves nothing to flatten, and rbd refuses then.
        let rerun = env.rbdm(&["flatten", "c"]);
        if !rerun.status.success() {
            let info = env.ok(&["info", "c"]);
            assert!(
                !info.contains("parent:"),
                "re-run failed: {}",
                stderr(&rerun)
            );
        }
        for (spec, w) in [("c@cs1", &want), ("c", &want)] {
            if let Err(e) = export_is(&env, spec, w) {
                failures.push(format!("trial {trial} (kill after {delay} ms): {e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        interrupted * 2 >= trials,
        "only {interrupted} of {trials} kills landed during flatten"
    );
}
