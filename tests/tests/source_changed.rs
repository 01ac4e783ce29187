//! A raw file source changed between `migration prepare` and a later process that opens it
//! (issue 13): `execute`, a client reading through (`export`), `status` all fail with EIO
//! naming the file and what changed; nothing reads as zeros or as the new bytes; `abort`
//! still works (it needs no source). librbd checks nothing here; we record the file's size,
//! times and inode at prepare and compare them at every open.
//!
//! Why it can fail: without the check, each change below opens fine in a new process (the
//! file stream only checks from its own open on): the export would succeed with the new
//! bytes (or zeros past a truncation) and the execute would copy them.
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rbdm_tests::*;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 8 * MIB;
const EIO: i32 = 5;

fn spec(path: &Path) -> String {
    format!(
        r#"{{"type":"raw","stream":{{"type":"file","file_path":"{}"}}}}"#,
        path.display()
    )
}

fn prepare(env: &Env, source: &Path) {
    let spec = spec(source);
    env.ok(&[
        "migration",
        "prepare",
        "--import-only",
        "--source-spec",
        &spec,
        "dst",
    ]);
}

/// Fails with EIO, naming the file and the change, without a panic.
fn fails_changed(env: &Env, args: &[&str], file: &Path, what: &str, change: &str) {
    let out = env.fails(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EIO), "{change}: {args:?}: {err}");
    assert!(
        err.contains(&file.display().to_string())
            && err.contains("changed since the migration was prepared")
            && err.contains(what)
            && !err.contains("panicked"),
        "{change}: {args:?}: {err}"
    );
}

/// Timestamps are as coarse as the kernel's clock tick: let one pass before a change.
fn later() {
    std::thread::sleep(std::time::Duration::from_millis(20));
}

type Change = fn(&Env, &Path);

fn rewrite_one_byte(_: &Env, p: &Path) {
    later();
    let f = File::options().write(true).open(p).unwrap();
    f.write_all_at(&[0xee], 3 * MIB + 17).unwrap();
}

fn truncate_to_half(_: &Env, p: &Path) {
    later();
    File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_len(SIZE / 2)
        .unwrap();
}

/// Same name, same size, same bytes: only the inode tells.
fn replace_with_a_copy(env: &Env, p: &Path) {
    let copy = env.path("copy.raw");
    std::fs::copy(p, &copy).unwrap();
    std::fs::rename(&copy, p).unwrap();
}

#[test]
fn a_raw_file_changed_after_prepare_fails_every_later_open() {
    let writes = [
        (0, MIB, 0x11),
        (3 * MIB, MIB, 0x33),
        (7 * MIB, MIB / 2, 0x77),
    ];
    let changes: [(&str, Change, &str); 3] = [
        ("one byte rewritten", rewrite_one_byte, "modified"),
        (
            "truncated",
            truncate_to_half,
            "4194304 bytes, 8388608 before",
        ),
        ("replaced by a copy", replace_with_a_copy, "replaced"),
    ];
    for (change, apply, what) in changes {
        let env = Env::new();
        let source = env.path("source.raw");
        make_raw(&source, SIZE, &writes);
        prepare(&env, &source);
        apply(&env, &source);
        let out = env.path("out.raw");
        let out_s = out.to_str().unwrap();
        fails_changed(&env, &["export", "dst", out_s], &source, what, change);
        fails_changed(&env, &["status", "dst"], &source, what, change);
        fails_changed(
            &env,
            &["migration", "execute", "dst"],
            &source,
            what,
            change,
        );
        // Still refused after the failed execute (state `executing`).
        fails_changed(&env, &["export", "dst", out_s], &source, what, change);
        env.ok(&["migration", "abort", "dst"]);
        env.fails(&["info", "dst"]);
        eprintln!("{change}: refused everywhere, aborted");
    }
}

#[test]
fn an_unchanged_raw_file_migrates_in_separate_processes() {
    let env = Env::new();
    let writes = [(MIB, 64 << 10, 0x5a), (5 * MIB, MIB, 0xa5)];
    let source = env.path("source.raw");
    make_raw(&source, SIZE, &writes);
    prepare(&env, &source);
    // Reading a file changes its atime only: no check may count that.
    let out = env.path("prepared.raw");
    env.ok(&["export", "dst", out.to_str().unwrap()]);
    file_is(&out, &raw_contents(SIZE, &writes)).unwrap();
    assert!(env.ok(&["status", "dst"]).contains("state: prepared"));
    env.ok(&["migration", "execute", "dst"]);
    env.ok(&["migration", "commit", "dst"]);
    // Committed: the file is no longer the source; changing it changes nothing.
    truncate_to_half(&env, &source);
    let out = env.path("committed.raw");
    env.ok(&["export", "dst", out.to_str().unwrap()]);
    file_is(&out, &raw_contents(SIZE, &writes)).unwrap();
}
