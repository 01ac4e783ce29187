//! The nbd sections of Ceph's newest `qa/workunits/rbd/cli_migration.sh`, in our words:
//!
//! - `test_import_nbd_stream_qcow2`: a `qemu-nbd --fork` of a qcow2 on NBD's default port,
//!   reached as `nbd://localhost`, `nbd://`, and (only when the server has that export name)
//!   `nbd:///myexport` / `nbd://localhost/myexport`; then every URI Ceph expects to fail.
//! - `test_import_nbd_stream_raw`: raw over three unix sockets (the head and a snapshot
//!   list), a destination snapshot and a client's random writes before execute.
//! - `test_import_nbd_stream_disconnected`: the server killed during `execute`: the copy
//!   fails, `status` fails (ECONNREFUSED), `abort` works with the server still down; killed
//!   again, `status` fails until it is restarted, and the copy resumes to `executed`.
//!   Ceph uses 20 GiB of random bytes; CI uses 256 MiB (`RBDM_FULL=1` for Ceph's size).
//! - `test_import_qcow_format`'s first step: `qemu-img convert -O qcow` of an
//!   `rbdm nbd export` of the 1025 MiB base image (the step that hung), byte-compared.
//!
//! Port 10809 is taken by one test at a time ([`lock_default_port`]). qemu-nbd binds
//! 127.0.0.1 only: nothing here listens off loopback.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rbdm_tests::ceph_base::*;
use rbdm_tests::qemu_nbd::*;
use rbdm_tests::sparse::Model;
use rbdm_tests::*;

// The errnos librbd's NBDStream gives (what libnbd reports, EINVAL for a bad spec).
const EINVAL: i32 = 22;
const ENOENT: i32 = 2;
const ECONNREFUSED: i32 = 111;
const MIB: u64 = 1 << 20;

/// Whether to run at Ceph's own sizes (slow: 20 GiB of random data).
fn full() -> bool {
    std::env::var_os("RBDM_FULL").is_some_and(|v| v == "1")
}

fn nbd_spec(uri: &str) -> String {
    format!(r#"{{"type":"raw","stream":{{"type":"nbd","uri":"{uri}"}}}}"#)
}

/// A prepare that must fail within `limit`, leaving nothing; with an exit code other than
/// `errno` (when given) it says so, for the test to list every difference at its end.
fn refused(env: &Env, what: &str, spec: &str, errno: Option<i32>, limit: Duration) -> Wrong {
    refused_by(env, &mut env.command(&[]), what, spec, errno, limit)
}

/// As [`refused`], with rbdm run by `cmd` (e.g. inside a network namespace).
fn refused_by(
    env: &Env,
    cmd: &mut Command,
    what: &str,
    spec: &str,
    errno: Option<i32>,
    limit: Duration,
) -> Wrong {
    let before = env.ok(&["ls", "-l"]);
    let start = Instant::now();
    let out = output_within(
        cmd.args([
            "migration",
            "prepare",
            "--import-only",
            "--source-spec",
            spec,
        ])
        .arg("refused"),
        limit,
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{what}: {spec} was accepted");
    assert!(
        !err.contains("panicked") && !err.trim().is_empty(),
        "{what}: {err}"
    );
    eprintln!("{what}: refused in {:?}: {}", start.elapsed(), err.trim());
    assert_eq!(
        env.ok(&["ls", "-l"]),
        before,
        "{what} left something behind"
    );
    env.fails(&["info", "refused"]);
    errno
        .filter(|&e| out.status.code() != Some(e))
        .map(|e| format!("{what}: want {e}, {}", err.trim()))
}

/// An exit code unlike librbd's, described.
type Wrong = Option<String>;

/// rbdm in a network namespace of its own when the system allows one (only a loopback
/// that is down: a name lookup cannot leave the machine), with the name that goes with
/// it; else `foo.example.invalid`, a name no resolver may answer (RFC 6761).
fn isolated_rbdm(env: &Env) -> (Command, &'static str) {
    let ok = Command::new("unshare")
        .args(["-n", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("no network namespace here: resolving foo.example.invalid instead");
        return (env.command(&[]), "foo.example.invalid");
    }
    let mut cmd = Command::new("unshare");
    cmd.arg("-n")
        .arg(rbdm_bin())
        .env("RBDM_STORE", &env.store)
        .stdin(std::process::Stdio::null());
    (cmd, "foo.example.com")
}

#[test]
fn qcow2_on_the_default_port_export_names_and_refused_uris() {
    let _port = lock_default_port();
    let env = Env::new();
    let raw = raw_base(&env);
    let qcow2 = env.path("img.qcow2");
    convert(
        "raw",
        "qcow2",
        raw.files[2].to_str().unwrap(),
        qcow2.to_str().unwrap(),
    );
    let dir = env.dir.path();
    let server = QemuNbd::on_default_port(&[], &qcow2, "qcow2", dir);
    let head = [("DST", &raw.head)];

    // `nbd://localhost`: from stdin, compared, aborted; from a file, the whole way.
    let spec = nbd_spec("nbd://localhost");
    prepare_from_stdin(&env, &spec, "dst");
    check_all(&env, "dst", &head, "prepared (stdin)");
    env.ok(&["migration", "abort", "dst"]);
    assert_gone(&env, "dst");
    prepare_from_file(&env, &spec, "dst");
    check_all(&env, "dst", &head, "prepared");
    env.ok(&["migration", "execute", "dst"]);
    check_all(&env, "dst", &head, "executed");
    env.ok(&["migration", "commit", "dst"]);
    check_all(&env, "dst", &head, "committed");
    env.ok(&["rm", "dst"]);

    // The shortest URI: localhost, port 10809, the default (empty) export name.
    prepare_from_spec(&env, &nbd_spec("nbd://"), "dst");
    check_all(&env, "dst", &head, "prepared (nbd://)");
    env.ok(&["migration", "abort", "dst"]);
    assert_gone(&env, "dst");

    // The server has no export of that name.
    let limit = Duration::from_secs(30);
    let mut wrong = Vec::new();
    for uri in ["nbd:///myexport", "nbd://localhost/myexport"] {
        let spec = nbd_spec(uri);
        wrong.push(refused(
            &env,
            "unknown export name",
            &spec,
            Some(ENOENT),
            limit,
        ));
    }
    server.kill();
    let server = QemuNbd::on_default_port(&["--export-name", "myexport"], &qcow2, "qcow2", dir);
    for uri in ["nbd:///myexport", "nbd://localhost/myexport"] {
        prepare_from_spec(&env, &nbd_spec(uri), "dst");
        check_all(&env, "dst", &head, uri);
        env.ok(&["migration", "abort", "dst"]);
        assert_gone(&env, "dst");
    }
    server.kill();

    // Nothing listens any more.
    let down = Some(ECONNREFUSED);
    wrong.push(refused(&env, "server not running", &spec, down, limit));
    wrong.push(refused(
        &env,
        "server not running",
        &nbd_spec("nbd://"),
        down,
        limit,
    ));
    let bad = [
        (
            "no URI",
            r#"{"type":"raw","stream":{"type":"nbd"}}"#.to_string(),
        ),
        (
            "URI a number",
            r#"{"type":"raw","stream":{"type":"nbd","uri":123456}}"#.to_string(),
        ),
        ("empty URI", nbd_spec("")),
        ("no scheme", nbd_spec("foo.example.com")),
    ];
    for (what, spec) in &bad {
        wrong.push(refused(&env, what, spec, Some(EINVAL), limit));
    }
    // A host that does not resolve: fails fast, without traffic off the machine. (Ceph says
    // EIO only because libnbd gives no errno for a failed lookup: any error will do.)
    let (mut cmd, host) = isolated_rbdm(&env);
    let spec = nbd_spec(&format!("nbd://{host}"));
    refused_by(&env, &mut cmd, "unresolvable host", &spec, None, limit);
    let wrong: Vec<String> = wrong.into_iter().flatten().collect();
    assert!(
        wrong.is_empty(),
        "errnos unlike librbd's:\n{}",
        wrong.join("\n")
    );
}

/// The raw spec of `test_import_nbd_stream_raw`: the head and snapshots `snap1`, `snap2`,
/// each from its own qemu-nbd socket.
fn snapshot_list_spec(uris: &[String; 3]) -> String {
    let stream = |uri: &str| format!(r#"{{"type":"nbd","uri":"{uri}"}}"#);
    format!(
        r#"{{"type":"raw","stream":{},"snapshots":[{{"type":"raw","name":"snap1","stream":{}}},{{"type":"raw","name":"snap2","stream":{}}}]}}"#,
        stream(&uris[2]),
        stream(&uris[0]),
        stream(&uris[1])
    )
}

#[test]
fn raw_over_unix_sockets_with_snapshots_a_destination_snapshot_and_writes() {
    let env = Env::new();
    let raw = raw_base(&env);
    let mut servers = Vec::new();
    let mut uris = Vec::new();
    for (i, file) in raw.files.iter().enumerate() {
        let (server, uri) = QemuNbd::on_socket(file, "raw", &env.path(&format!("q{i}.sock")));
        servers.push(server);
        uris.push(uri);
    }
    let spec = snapshot_list_spec(&uris.try_into().unwrap());
    let snaps = [
        ("DST@snap1", &raw.snap1),
        ("DST@snap2", &raw.snap2),
        ("DST@head", &raw.head),
    ];

    prepare_from_file(&env, &spec, "dst");
    env.ok(&["snap", "create", "dst@head"]);
    env.bench_rand("dst", "32K", "4M");
    check_all(&env, "dst", &snaps, "written, prepared");
    env.ok(&["migration", "abort", "dst"]);
    assert_gone(&env, "dst");

    prepare_from_stdin(&env, &spec, "dst");
    env.ok(&["snap", "create", "dst@head"]);
    env.bench_rand("dst", "64K", "8M");
    check_all(&env, "dst", &snaps, "written, prepared (stdin)");
    // What the client wrote is random; what it reads back must stay that through the copy.
    let written = env.path("written.raw");
    env.ok(&["export", "dst", written.to_str().unwrap()]);
    assert!(
        files_equal(&written, &raw.files[2]).is_err(),
        "the bench wrote nothing"
    );
    let same_head = |stage: &str| {
        let now = env.path("now.raw");
        let _ = std::fs::remove_file(&now);
        env.ok(&["export", "dst", now.to_str().unwrap()]);
        files_equal(&now, &written).unwrap_or_else(|e| panic!("dst {stage}: {e}"));
    };
    env.ok(&["migration", "execute", "dst"]);
    check_all(&env, "dst", &snaps, "executed");
    same_head("executed");
    env.ok(&["migration", "commit", "dst"]);
    drop(servers);
    check_all(&env, "dst", &snaps, "committed, servers gone");
    same_head("committed");
}

/// Fills `path` with `size` random bytes, as Ceph's `dd if=/dev/urandom`.
fn random_file(path: &Path, size: u64) {
    let mut src = std::fs::File::open("/dev/urandom").unwrap();
    let mut dst = std::fs::File::create(path).unwrap();
    let n = std::io::copy(&mut std::io::Read::take(&mut src, size), &mut dst).unwrap();
    assert_eq!(n, size);
}

/// `qemu-img compare` of `file` with what `rbdm nbd export IMAGE` serves (Ceph compares
/// with `rbd:rbd/IMAGE`; this qemu-img has no rbd driver).
fn compare_export(env: &Env, image: &str, file: &Path, stage: &str) {
    let (server, uri) = env.nbd_export(image);
    let out = output_within(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(file)
            .arg(&uri),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "{image} {stage}: qemu-img compare: {}{}",
        stdout(&out),
        stderr(&out)
    );
    server.stop();
}

fn status(env: &Env, image: &str) -> String {
    env.ok(&["status", image])
}

/// Ceph's `expect_false rbd status DEST` with the server down: opening a destination opens
/// its source, so `status` fails with the error of connecting to it (librbd's NBDStream
/// passes on libnbd's errno: ECONNREFUSED), naming the source, and changes nothing.
fn status_fails_with_the_server_down(env: &Env, image: &str) {
    let out = env.fails(&["status", image]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(ECONNREFUSED), "status: {err}");
    assert!(
        err.contains("migration source") && err.contains(image) && !err.contains("panicked"),
        "status: {err}"
    );
}

/// Starts `execute` and SIGKILLs the source server once the copy runs; `execute` must
/// then fail, in bounded time.
fn execute_while_server_dies(env: &Env, image: &str, server: QemuNbd, limit: Option<&str>) {
    let mut args = vec!["migration", "execute", image];
    if let Some(limit) = limit {
        args.extend(["--bandwidth-limit", limit]);
    }
    let mut child = env
        .command(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !status(env, image).contains("state: executing") {
        assert!(child.try_wait().unwrap().is_none(), "execute ended at once");
        assert!(Instant::now() < deadline, "execute never started copying");
        std::thread::sleep(Duration::from_millis(50));
    }
    let wait = if full() { 5 + Rng(0x5eed).below(35) } else { 1 };
    std::thread::sleep(Duration::from_secs(wait));
    assert!(
        child.try_wait().unwrap().is_none(),
        "execute finished before the kill"
    );
    server.kill();
    let start = Instant::now();
    let out = loop {
        if child.try_wait().unwrap().is_some() {
            break child.wait_with_output().unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "execute still runs 60 s after its source died"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        !out.status.success(),
        "execute succeeded without its source"
    );
    eprintln!(
        "execute failed {:?} after the kill: {}",
        start.elapsed(),
        stderr(&out).trim()
    );
}

#[test]
fn server_disappears_while_importing() {
    let _port = lock_default_port();
    let env = Env::new();
    // Throttled so the kill lands mid-copy (Ceph's 20 GiB takes long enough unthrottled).
    let (size, limit) = if full() {
        (20 * 1024 * MIB, None)
    } else {
        (256 * MIB, Some("32M"))
    };
    let large = env.path("large.raw");
    random_file(&large, size);
    let dir = env.dir.path();
    let serve = || QemuNbd::on_default_port(&[], &large, "raw", dir);
    let spec = nbd_spec("nbd://localhost");

    // Server disappears while importing: abort.
    let server = serve();
    prepare_from_file(&env, &spec, "dst");
    assert!(status(&env, "dst").contains("state: prepared"));
    compare_export(&env, "dst", &large, "prepared");
    execute_while_server_dies(&env, "dst", server, limit);
    status_fails_with_the_server_down(&env, "dst");
    // An import-only abort needs no source: it works with the server still down.
    env.ok(&["migration", "abort", "dst"]);
    assert_gone(&env, "dst");

    // Server disappears while importing: resume once it is back.
    let server = serve();
    prepare_from_file(&env, &spec, "dst");
    assert!(status(&env, "dst").contains("state: prepared"));
    compare_export(&env, "dst", &large, "prepared");
    execute_while_server_dies(&env, "dst", server, limit);
    status_fails_with_the_server_down(&env, "dst");
    let server = serve();
    let st = status(&env, "dst");
    assert!(st.contains("state: executing"), "{st}");
    compare_export(&env, "dst", &large, "interrupted");
    env.ok(&["migration", "execute", "dst"]);
    let st = status(&env, "dst");
    assert!(st.contains("state: executed"), "{st}");
    compare_export(&env, "dst", &large, "executed");
    env.ok(&["migration", "commit", "dst"]);
    let st = status(&env, "dst");
    assert!(!st.contains("Migration:"), "{st}");
    server.kill();
    compare_export(&env, "dst", &large, "committed, server gone");
}

#[test]
fn qemu_img_convert_to_qcow_of_an_nbd_export_of_the_base_image() {
    let b = base();
    let env = &b.env;
    let qcow = env.path("base.qcow");
    let (server, uri) = env.nbd_export("base");
    let start = Instant::now();
    // What hung: QEMU asks block status for the rest of the image, one extent at a time.
    let out = output_within(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow", &uri])
            .arg(&qcow),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "qemu-img convert: {}", stderr(&out));
    eprintln!(
        "qemu-img convert -O qcow of the export: {:?}",
        start.elapsed()
    );
    server.stop();
    let info = output_within(
        Command::new("qemu-img")
            .args(["info", "-f", "qcow"])
            .arg(&qcow),
        Duration::from_secs(30),
    );
    assert!(info.status.success(), "qemu-img info: {}", stderr(&info));

    let spec = format!(
        r#"{{"type":"qcow","stream":{{"type":"file","file_path":"{}"}}}}"#,
        qcow.display()
    );
    let head: [(&str, &Model); 1] = [("DST", &b.head)];
    prepare_from_file(env, &spec, "from_qcow");
    check_all(env, "from_qcow", &head, "prepared");
    env.ok(&["migration", "execute", "from_qcow"]);
    env.ok(&["migration", "commit", "from_qcow"]);
    check_all(env, "from_qcow", &head, "committed");
}
