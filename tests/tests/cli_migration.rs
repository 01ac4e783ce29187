//! Ceph's own migration scenarios (`qa/workunits/rbd/cli_migration.sh`), rewritten against
//! rbdm at Ceph's size: a 1025 MiB base image (not a multiple of the 4 MiB object size, the
//! list-snaps edge case Ceph's script is after) with random 4 KiB writes, snapshot `1`, more
//! writes, snapshot `2`, more writes. Imported as `native` by pool name, pool id and namespace
//! with `snap_name`/`snap_id`; qcow v1; qcow2 with internal snapshots; raw with a snapshot
//! list, a destination snapshot and client writes before execute; the nbd stream from
//! qemu-nbd; and the specs that must fail. Every import is compared after prepare (before
//! execute), after execute and after commit. As in Ceph's script, each scenario also aborts
//! one prepared import after comparing it (nothing may be left, the source is compared
//! again); the nbd one aborts an executed import as well.
//!
//! Ceph writes 448 MiB of random 4 KiB blocks; we write 1/32 of that (2048, 512 and 1024
//! blocks, 14 MiB in all, a quarter of the later ones over earlier blocks) through a real
//! NBD client, so the data still lands in nearly every one of the 257 objects, always in
//! the partial tail object, while the images stay sparse. Expected contents are a
//! sparse model (4 KiB block → fill byte); an exported file is compared with it in chunks,
//! reading only the file's data segments, so time and memory follow allocated data, not the
//! 1 GiB size.
use std::path::Path;
use std::process::Command;

use rbdm_tests::ceph_base::*;
use rbdm_tests::sparse::*;
use rbdm_tests::*;

/// Ceph's sequence for one import: prepare → compare → execute → compare → commit →
/// compare. With `abort_first`, the first prepare (from a spec file) is aborted after the
/// compare, nothing may be left, the closure checks the source, and the import is prepared
/// again (inline spec) before it goes on.
fn migrate(
    env: &Env,
    source_spec: &str,
    dst: &str,
    expect: &[(&str, &Model)],
    abort_first: Option<&dyn Fn()>,
) {
    if let Some(source_intact) = abort_first {
        prepare_from_file(env, source_spec, dst);
        check_all(env, dst, expect, "prepared");
        env.ok(&["migration", "abort", dst]);
        assert_gone(env, dst);
        source_intact();
    }
    prepare_from_spec(env, source_spec, dst);
    if abort_first.is_none() {
        check_all(env, dst, expect, "prepared");
    }
    env.ok(&["migration", "execute", dst]);
    check_all(env, dst, expect, "executed");
    env.ok(&["migration", "commit", dst]);
    check_all(env, dst, expect, "committed");
}

#[test]
fn native_sources_by_pool_name_id_and_namespace() {
    let b = base();
    let env = &b.env;
    // As in Ceph, the destination gets snapshots `1` and `2` itself, its head holding
    // snapshot 2's data.
    let spec = r#"{"type":"native","pool_name":"rbd","image_name":"base","snap_name":"2"}"#;
    migrate(
        env,
        spec,
        "by_name",
        &[("DST@1", &b.snap1), ("DST@2", &b.snap2), ("DST", &b.snap2)],
        None,
    );
    let snaps = env.json(&["snap", "ls", "base"]);
    let id2 = snaps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "2")
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    // Ceph's spec file: by pool id, with an empty namespace; the one import it aborts. The
    // only pool, so its id is the first one handed out.
    let spec = format!(
        r#"{{"type":"native","pool_id":1,"pool_namespace":"","image_name":"base","snap_id":{id2}}}"#
    );
    migrate(
        env,
        &spec,
        "by_id",
        &[("DST@1", &b.snap1), ("DST@2", &b.snap2), ("DST", &b.snap2)],
        Some(&|| base_intact(&b)),
    );
    // The live head is refused, as in Ceph: an import's source must not change under it.
    let spec = r#"{"type":"native","pool_name":"rbd","image_name":"base"}"#;
    let out = env.fails(&[
        "migration",
        "prepare",
        "--import-only",
        "--source-spec",
        spec,
        "whole",
    ]);
    assert_eq!(out.status.code(), Some(22), "{}", stderr(&out));
    assert!(stderr(&out).contains("snapshot required for import"));
    assert!(!env.rbdm(&["info", "whole"]).status.success());
    // A source in a namespace, into another namespace.
    env.ok(&["namespace", "create", "rbd/ns1"]);
    env.ok(&["namespace", "create", "rbd/ns2"]);
    env.ok(&["import", b.files[2].to_str().unwrap(), "rbd/ns1/base"]);
    env.ok(&["snap", "create", "rbd/ns1/base@now"]);
    let spec = r#"{"type":"native","pool_name":"rbd","pool_namespace":"ns1","image_name":"base","snap_name":"now"}"#;
    migrate(
        env,
        spec,
        "rbd/ns2/dst",
        &[("DST@now", &b.head), ("DST", &b.head)],
        None,
    );
    check(env, "rbd/ns1/base", &b.head);
    // The source is never modified by an import.
    base_intact(&b);
}

#[test]
fn qcow_v1_and_qcow2_with_internal_snapshots() {
    let b = base();
    let env = &b.env;
    // Ceph converts the base's head to qcow v1.
    let q1 = env.path("base.qcow");
    let q1s = q1.to_str().unwrap();
    convert("raw", "qcow", b.files[2].to_str().unwrap(), q1s);
    let before = std::fs::read(&q1).unwrap();
    migrate(
        env,
        &file_spec("qcow", &q1),
        "from_v1",
        &[("DST", &b.head)],
        Some(&|| assert!(std::fs::read(&q1).unwrap() == before, "qcow v1 modified")),
    );

    // Ceph builds this one with qemu's own tools: writes, snapshot, writes, snapshot, writes.
    let q2 = env.path("base.qcow2");
    let q2s = q2.to_str().unwrap();
    sh(&["qemu-img", "create", "-q", "-f", "qcow2", q2s, "1025M"]);
    for (i, writes) in b.phases.0.iter().enumerate() {
        qemu_io("qcow2", q2s, writes);
        if i < 2 {
            sh(&["qemu-img", "snapshot", "-c", &format!("snap{}", i + 1), q2s]);
        }
    }
    let raw = env.path("qcow2-head.raw");
    convert("qcow2", "raw", q2s, raw.to_str().unwrap());
    let intact = || file_matches(&raw, &b.head).unwrap();
    intact();
    migrate(
        env,
        &file_spec("qcow", &q2),
        "from_qcow2",
        &[
            ("DST@snap1", &b.snap1),
            ("DST@snap2", &b.snap2),
            ("DST", &b.head),
        ],
        Some(&|| {
            sh(&["qemu-img", "check", "-q", q2s]);
            convert("qcow2", "raw", q2s, raw.to_str().unwrap());
            intact();
        }),
    );
}

#[test]
fn raw_with_a_snapshot_list_a_destination_snapshot_and_writes_before_execute() {
    let b = base();
    let env = &b.env;
    let [s1, s2, head] = &b.files;
    let intact = || {
        file_matches(s1, &b.snap1).unwrap();
        file_matches(s2, &b.snap2).unwrap();
        file_matches(head, &b.head).unwrap();
    };
    // The head alone, the spec read from stdin as Ceph's script does once.
    let spec = file_spec("raw", head);
    prepare_from_stdin(env, &spec, "dst");
    check(env, "dst", &b.head);
    env.ok(&["migration", "abort", "dst"]);
    assert_gone(env, "dst");
    intact();

    let stream = |p: &Path| format!(r#"{{"type":"file","file_path":"{}"}}"#, p.display());
    let spec = format!(
        r#"{{"type":"raw","stream":{},"snapshots":[{{"type":"raw","name":"snap1","stream":{}}},{{"type":"raw","name":"snap2","stream":{}}}]}}"#,
        stream(head),
        stream(s1),
        stream(s2)
    );
    prepare_from_file(env, &spec, "dst");
    // A snapshot of the destination, then a client's writes (Ceph: 32 KiB random, 32 MiB;
    // ours 4 MiB), before execute: each write copies its objects up from the source first.
    env.ok(&["snap", "create", "dst@head"]);
    let writes = Rng(0x32_4b).writes(128, 32 * 1024, SIZE, &[]);
    write_through_nbd(env, "dst", &writes);
    let written = b.head.with(&writes);
    let expect = [
        ("DST@snap1", &b.snap1),
        ("DST@snap2", &b.snap2),
        ("DST@head", &b.head),
        ("DST", &written),
    ];
    check_all(env, "dst", &expect, "written, before execute");
    env.ok(&["migration", "execute", "dst"]);
    check_all(env, "dst", &expect, "executed");
    env.ok(&["migration", "commit", "dst"]);
    check_all(env, "dst", &expect, "committed");
    intact();
}

#[test]
fn nbd_stream_from_qemu_nbd_and_an_abort() {
    let b = base();
    let env = &b.env;
    let raw = &b.files[2];
    let sock = env.path("q.sock");
    let _q = Killed(
        Command::new("qemu-nbd")
            .args(["-f", "raw", "-r", "-t", "--socket"])
            .arg(&sock)
            .arg(raw)
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let spec = format!(
        r#"{{"type":"raw","stream":{{"type":"nbd","uri":"nbd+unix:///?socket={}"}}}}"#,
        sock.display()
    );
    let intact = || file_matches(raw, &b.head).unwrap();
    migrate(env, &spec, "from_nbd", &[("DST", &b.head)], None);
    // The same import, aborted after execute: nothing is left and the source is untouched.
    prepare_from_spec(env, &spec, "aborted");
    env.ok(&["migration", "execute", "aborted"]);
    check(env, "aborted", &b.head);
    env.ok(&["migration", "abort", "aborted"]);
    assert_gone(env, "aborted");
    intact();
    // The committed import no longer needs the server.
    drop(_q);
    check(env, "from_nbd", &b.head);
}

#[test]
fn specs_that_must_fail() {
    let b = base();
    let env = &b.env;
    let before = env.ok(&["ls", "-l"]);
    let cases = [
        (
            r#"{"type":"native","pool_name":"rbd","image_name":"base","snap_name":"nope"}"#,
            2,
        ),
        (
            r#"{"type":"native","pool_name":"nopool","image_name":"base","snap_name":"1"}"#,
            2,
        ),
        (
            r#"{"type":"native","pool_name":"rbd","pool_id":1,"image_name":"base"}"#,
            22,
        ),
        (r#"{"type":"native","pool_name":"rbd"}"#, 22),
        (
            r#"{"type":"qcow","stream":{"type":"file","file_path":"/etc/hostname"}}"#,
            5,
        ),
        (r#"{"type":"qcow","stream":{"type":"file"}}"#, 22),
        (r#"{"type":"raw","stream":{"type":"nosuch"}}"#, 38),
        (
            r#"{"type":"raw","stream":{"type":"file","file_path":"/x"},"extra":1}"#,
            22,
        ),
        (r#"[]"#, 22),
    ];
    for (spec, code) in cases {
        let out = env.fails(&[
            "migration",
            "prepare",
            "--import-only",
            "--source-spec",
            spec,
            "bad",
        ]);
        assert_eq!(out.status.code(), Some(code), "{spec}: {}", stderr(&out));
        assert_eq!(env.ok(&["ls", "-l"]), before, "{spec} changed the store");
    }
    base_intact(&b);
}
