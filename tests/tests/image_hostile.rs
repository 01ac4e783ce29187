//! Image-level operations under hostile conditions (issue 13): a `flatten` killed with SIGKILL
//! at seeded random moments, sizes at the edge of what an image can address, snapshots taken
//! while an NBD client writes.
//!
//! Each test runs the real `rbdm` binary on a real `dir://` store; build it first with
//! `cargo build -p rbdm-cli`.

use std::process::{Command, Stdio};
use std::time::Duration;

use rbdm_tests::ceph_base::prepare_from_spec;
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
    env.bench_write("c", "64K", "1M");
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

/// The byte count `rbdm` parses from a size argument (a bare number is MiB for `--size`).
fn size_arg_bytes(arg: &str) -> Option<u64> {
    let (num, shift) = match arg.strip_suffix('B') {
        Some(n) => (n, 0),
        None => match arg.chars().last()? {
            'K' => (&arg[..arg.len() - 1], 10),
            'M' => (&arg[..arg.len() - 1], 20),
            'G' => (&arg[..arg.len() - 1], 30),
            'T' => (&arg[..arg.len() - 1], 40),
            'P' => (&arg[..arg.len() - 1], 50),
            'E' => (&arg[..arg.len() - 1], 60),
            _ => (arg, 20),
        },
    };
    num.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// Sizes at the edges of what an image addresses: the object map's 256,000,000 objects
/// (librbd's limit) and a signed 64-bit offset.
fn edge_sizes(rng: &mut Rng) -> String {
    const FIXED: &[&str] = &[
        "0",
        "1",
        "4K",
        "1E",
        "8E",
        "15E",
        "16E",
        "8191P",
        "8192P",
        "976562G",
        "976563G",
        "999999T",
        "1000000000000000000000",
    ];
    match rng.below(3) {
        0 => FIXED[rng.below(FIXED.len() as u64) as usize].to_string(),
        1 => format!("{}B", rng.next_u64() >> rng.below(64)),
        _ => format!(
            "{}B",
            (i64::MAX as u64).wrapping_add(rng.below(3)).wrapping_sub(1)
        ),
    }
}

/// Issue 13 point 5: `create`/`resize` with seeded random sizes near the limits never abort,
/// refuse with EINVAL (object map) or EFBIG (offset) naming the limit, change nothing when
/// they refuse, and leave an image every later command can use.
#[test]
fn huge_sizes_are_refused_before_anything_changes() {
    let env = Env::new();
    env.ok(&["create", "--size", "4M", "--object-size", "4K", "small"]);
    let mut rng = Rng(0x0005_1ce0_fb16);
    let mut created = 0;
    for trial in 0..60 {
        let arg = edge_sizes(&mut rng);
        let with_map = rng.below(2) == 0;
        let order = ["4K", "4M", "32M"][rng.below(3) as usize];
        let name = format!("img{trial}");
        let mut args = vec!["create", "--size", &arg, "--object-size", order];
        if !with_map {
            args.extend(["--image-feature", "layering"]);
        }
        args.push(&name);
        let out = env.rbdm(&args);
        let code = out.status.code();
        assert!(
            code.is_some(),
            "create {arg} died: {:?} {}",
            out.status,
            stderr(&out)
        );
        if out.status.success() {
            created += 1;
            let bytes = size_arg_bytes(&arg).expect("accepted sizes parse");
            let info = env.json(&["info", &name]);
            assert_eq!(info["size"].as_u64(), Some(bytes), "{info}");
            env.ok(&["snap", "create", &format!("{name}@s")]);
            env.ok(&["du", &name]);
            env.ok(&["snap", "purge", &name]);
            env.ok(&["rm", "--no-progress", &name]);
        } else {
            assert!(
                [libc::EINVAL, libc::EFBIG].contains(&code.unwrap()),
                "create --size {arg}: exit {code:?}: {}",
                stderr(&out)
            );
            assert!(stderr(&out).contains("size"), "{}", stderr(&out));
            assert!(!env.ok(&["ls"]).contains(&name), "{name} half-created");
        }
        // Resizing the small image: refused without a trace, or done.
        let out = env.rbdm(&[
            "resize",
            "--allow-shrink",
            "--no-progress",
            "--size",
            &arg,
            "small",
        ]);
        assert!(
            out.status.code().is_some(),
            "resize {arg} died: {}",
            stderr(&out)
        );
        let size = env.json(&["info", "small"])["size"].as_u64().unwrap();
        if out.status.success() {
            assert_eq!(Some(size), size_arg_bytes(&arg));
            env.ok(&["du", "small"]);
            env.ok(&[
                "resize",
                "--allow-shrink",
                "--no-progress",
                "--size",
                "4M",
                "small",
            ]);
        } else {
            let code = out.status.code().unwrap();
            assert!(
                [libc::EINVAL, libc::EFBIG].contains(&code),
                "resize {arg}: {code}"
            );
            assert_eq!(size, 4 * MIB, "a refused resize {arg} changed the size");
        }
    }
    // The two limits, each named.
    let out = env.fails(&["create", "--size", "1E", "big"]);
    assert_eq!(out.status.code(), Some(libc::EINVAL));
    assert!(stderr(&out).contains("object map"), "{}", stderr(&out));
    let out = env.fails(&[
        "create",
        "--size",
        "9223372036854775808B",
        "--image-feature",
        "layering",
        "big",
    ]);
    assert_eq!(out.status.code(), Some(libc::EFBIG));
    assert!(stderr(&out).contains("2^63 - 1"), "{}", stderr(&out));
    // Ceph's limit exactly: 256,000,000 objects of 4 MiB is accepted, one byte more is not.
    let max = format!("{}B", 256_000_000u64 << 22);
    env.ok(&["create", "--size", &max, "edge"]);
    env.ok(&["snap", "create", "edge@s"]);
    env.ok(&["du", "edge"]);
    let over = format!("{}B", (256_000_000u64 << 22) + 1);
    let out = env.fails(&["resize", "--size", &over, "edge"]);
    assert_eq!(out.status.code(), Some(libc::EINVAL), "{}", stderr(&out));
    assert!(created > 0, "no trial created an image");
}

/// Issue 13 point 7: `snap create` while an NBD client writes. Every snapshot after the first
/// failed with EIO "open …/data/…: No such file": the server's `flush` opened and closed
/// `meta.sqlite` to fsync it, which dropped its SQLite locks; the `snap create` process, on
/// closing, then took itself for the last connection and deleted the WAL, and the server went
/// on committing into the unlinked WAL (its writes invisible to every other process, and the
/// files it freed still named by the rows others saw). Checks the snapshots and that every
/// byte the client wrote is there for another process.
#[test]
fn snapshots_while_an_nbd_client_writes() {
    let env = Env::new();
    env.ok(&["create", "--size", "64M", "--object-size", "64K", "w"]);
    let (server, uri) = env.nbd_export("w");
    let mut io = Command::new("qemu-io");
    io.args(["-f", "raw"]);
    for k in 1..=40u64 {
        io.arg("-c")
            .arg(format!("write -P {k} {}M 4M", (k % 16) * 4));
    }
    let mut writer = Killed(
        io.arg(&uri)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-io runs"),
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut failed = Vec::new();
    for i in 0..15 {
        let out = env.rbdm(&["snap", "create", &format!("w@s{i}")]);
        if !out.status.success() {
            failed.push(format!("s{i}: {}", stderr(&out).trim()));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let status = writer.0.wait().expect("qemu-io ends");
    assert!(status.success(), "qemu-io failed: {status}");
    // Another process reads what the client wrote while the server still runs.
    let mut want = vec![0u8; 64 * MIB as usize];
    for k in 1..=40u64 {
        let off = ((k % 16) * 4 * MIB) as usize;
        want[off..off + 4 * MIB as usize].fill(k as u8);
    }
    let out = env.path("w.raw");
    env.ok(&["export", "w", out.to_str().unwrap()]);
    server.stop();
    assert!(failed.is_empty(), "{failed:#?}");
    file_is(&out, &want).unwrap();
}

/// Issue 13 point 3: a raw file source truncated, or rewritten in place, while `execute`
/// copies it (bandwidth-limited so the change lands mid-copy) fails execute with EIO; the
/// migration is never `executed`.
#[test]
fn a_source_that_changes_during_execute_fails_it() {
    let env = Env::new();
    let size = 64 * MIB;
    for (case, change) in ["truncate", "rewrite"].iter().enumerate() {
        let raw = env.path(&format!("src{case}.raw"));
        std::fs::write(&raw, pseudo_random(size as usize, 77 + case as u64)).unwrap();
        let spec = format!(
            r#"{{"type":"raw","stream":{{"type":"file","file_path":"{}"}}}}"#,
            raw.display()
        );
        let name = format!("dst{case}");
        prepare_from_spec(&env, &spec, &name);
        let exec = env
            .command(&["migration", "execute", "--bandwidth-limit", "8M", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("execute starts");
        std::thread::sleep(Duration::from_millis(1500));
        let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
        match *change {
            "truncate" => f.set_len(63 * MIB).unwrap(),
            _ => std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 4096], 60 * MIB).unwrap(),
        }
        let out = exec.wait_with_output().expect("execute ends");
        assert_eq!(
            out.status.code(),
            Some(libc::EIO),
            "{change}: execute must fail: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("changed"),
            "{change}: {}",
            stderr(&out)
        );
        // Not `executed`: a destination still copying opens its source for `status` (as
        // librbd), and the pinned source no longer matches, so status fails too.
        let status = env.fails(&["status", &name]);
        assert_eq!(status.status.code(), Some(libc::EIO), "{change}: status");
        assert!(
            stderr(&status).contains("changed since the migration was prepared"),
            "{change}: {}",
            stderr(&status)
        );
    }
}
