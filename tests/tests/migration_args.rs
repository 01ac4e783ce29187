//! `rbdm migration prepare --import-only` as Ceph's `cli_migration.sh` drives it: the
//! positional `SRC@snap` source, every `native` case of `test_import_native_format`, the NBD
//! URIs of `test_import_nbd_stream_qcow2` against a real `qemu-nbd` (localhost:10809 and a
//! unix socket), bounded spec input, and stalled servers timing out.
//!
//! Images are Ceph's size (1025 MiB, not a multiple of the object size) with scaled-down
//! `bench` writes; images are compared as `compare_images` does, by `export`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rbdm_tests::ceph_base::{prepare_from_stdin, sh};
use rbdm_tests::qemu_nbd::{lock_default_port, QemuNbd};
use rbdm_tests::{stderr, Env};

const EINVAL: i32 = libc::EINVAL;
const ENOENT: i32 = libc::ENOENT;
const EBADMSG: i32 = libc::EBADMSG;

/// Ceph's `create_base_image`, scaled: `bench` writes, snapshot `1`, more, `2`, more.
fn base_image(env: &Env, spec: &str) {
    env.ok(&["create", "--size", "1025M", spec]);
    for (total, snap) in [("8M", Some("1")), ("2M", Some("2")), ("4M", None)] {
        env.bench_rand(spec, "4K", total);
        if let Some(s) = snap {
            env.ok(&["snap", "create", &format!("{spec}@{s}")]);
        }
    }
}

/// Ceph's `export_raw_image`: the image (or snapshot) exported to a file named after it.
fn export(env: &Env, spec: &str) -> std::path::PathBuf {
    let path = env.path(&spec.replace('/', "_"));
    let _ = std::fs::remove_file(&path);
    env.ok(&["export", spec, path.to_str().unwrap()]);
    path
}

/// Ceph's `compare_images`: `dst` exported holds the bytes of the file `want` (by `cmp`, as
/// the script does: a byte loop in a debug build takes seconds per GiB).
fn compare(env: &Env, want: &Path, dst: &str) {
    let got = export(env, dst);
    let out = Command::new("cmp").arg(want).arg(&got).output().unwrap();
    assert!(
        out.status.success(),
        "{dst}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = std::fs::remove_file(got);
}

fn prepare(env: &Env, args: &[&str]) -> Output {
    let mut all = vec!["migration", "prepare", "--import-only"];
    all.extend_from_slice(args);
    env.rbdm(&all)
}

/// The command fails with `code` and leaves the image list as it was.
fn refused(env: &Env, args: &[&str], code: i32, says: &str) {
    let before = env.ok(&["ls", "-l"]);
    let out = prepare(env, args);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
    assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    assert_eq!(env.ok(&["ls", "-l"]), before, "{args:?} changed the store");
}

fn spec_with(pool: &str, snap: &str) -> String {
    format!(r#"{{"type": "native", {pool}, "image_name": "image1"{snap}}}"#)
}

#[test]
fn positional_source_at_a_snapshot_is_a_native_import_of_it() {
    let env = Env::new();
    base_image(&env, "image1");
    let (s1, s2) = (export(&env, "image1@1"), export(&env, "image1@2"));

    // `rbd migration prepare --import-only rbd/image1@2 image2`: both snapshots, head = @2.
    assert!(prepare(&env, &["rbd/image1@2", "image2"]).status.success());
    compare(&env, &s1, "image2@1");
    compare(&env, &s2, "image2@2");
    compare(&env, &s2, "image2");
    let status = env.json(&["status", "image2"]);
    let spec = serde_json::to_string(&status).unwrap();
    assert!(
        spec.contains("snap_name") && spec.contains("image1"),
        "{spec}"
    );
    env.ok(&["migration", "abort", "image2"]);

    // The rbd rules around it.
    refused(
        &env,
        &["image1", "image2"],
        EINVAL,
        "snapshot name was not specified",
    );
    refused(
        &env,
        &["image1@2"],
        EINVAL,
        "destination image name must be provided",
    );
    refused(&env, &["image1@nope", "image2"], ENOENT, "nope");
    refused(&env, &["nopool/image1@2", "image2"], ENOENT, "nopool");
    let spec = spec_with(r#""pool_name": "rbd""#, r#", "snap_name": "2""#);
    refused(
        &env,
        &["image1@2", "image2", "--source-spec", &spec],
        EINVAL,
        "exclusive",
    );
    let out = env.rbdm(&["migration", "prepare", "image1@2", "image2"]);
    assert_eq!(out.status.code(), Some(EINVAL), "{}", stderr(&out));

    // pool/namespace/image@snap, into another namespace; and -p/--namespace defaults.
    env.ok(&["namespace", "create", "rbd/ns1"]);
    env.ok(&["namespace", "create", "rbd/ns2"]);
    env.ok(&["import", s2.to_str().unwrap(), "rbd/ns1/img"]);
    env.ok(&["snap", "create", "rbd/ns1/img@s"]);
    assert!(prepare(&env, &["rbd/ns1/img@s", "rbd/ns2/copy"])
        .status
        .success());
    env.ok(&["migration", "execute", "rbd/ns2/copy"]);
    env.ok(&["migration", "commit", "rbd/ns2/copy"]);
    compare(&env, &s2, "rbd/ns2/copy@s");
    compare(&env, &s2, "rbd/ns2/copy");
    let out = env.rbdm(&[
        "--namespace",
        "ns1",
        "migration",
        "prepare",
        "--import-only",
        "img@s",
        "copy2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    compare(&env, &s2, "rbd/ns1/copy2");
    // The source is never touched by an import.
    compare(&env, &s2, "rbd/ns1/img");
}

#[test]
fn native_specs_of_cephs_script() {
    let env = Env::new();
    base_image(&env, "image1");
    let (s1, s2) = (export(&env, "image1@1"), export(&env, "image1@2"));
    let pools = env.json(&["pool", "ls"]);
    let pool_id = pools
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "rbd"))
        .and_then(|p| p["id"].as_i64())
        .unwrap_or(1);
    let by_id = format!(r#""pool_id": {pool_id}"#);

    // The spec file of the script: pool id, empty namespace, snap_name "2".
    let file = env.path("spec.json");
    std::fs::write(
        &file,
        format!(
            "{{\n  \"type\": \"native\",\n  {by_id},\n  \"pool_namespace\": \"\",\n  \
             \"image_name\": \"image1\",\n  \"snap_name\": \"2\"\n}}\n"
        ),
    )
    .unwrap();
    let from_file = ["--source-spec-path", file.to_str().unwrap(), "image2"];
    assert!(prepare(&env, &from_file).status.success());
    compare(&env, &s1, "image2@1");
    compare(&env, &s2, "image2@2");
    env.ok(&["migration", "abort", "image2"]);

    let fails: [(String, i32, &str); 7] = [
        (
            spec_with(&by_id, ""),
            EINVAL,
            "snapshot required for import",
        ),
        (
            spec_with(&by_id, r#", "snap_name": non-existing"#),
            EBADMSG,
            "JSON",
        ),
        (
            spec_with(&by_id, r#", "snap_name": "non-existing""#),
            ENOENT,
            "non-existing",
        ),
        (
            spec_with(&by_id, r#", "snap_name": 123456"#),
            EINVAL,
            "snap_name",
        ),
        (
            spec_with(&by_id, r#", "snap_id": 123456"#),
            ENOENT,
            "123456",
        ),
        (
            spec_with(&by_id, r#", "snap_id": "123456""#),
            ENOENT,
            "123456",
        ),
        (
            spec_with(&by_id, r#", "snap_id": "foobar""#),
            EINVAL,
            "snap_id",
        ),
    ];
    for (spec, code, says) in &fails {
        refused(&env, &["--source-spec", spec, "image2"], *code, says);
    }

    let snaps = env.json(&["snap", "ls", "image1"]);
    let snap_id = snaps
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "2"))
        .and_then(|s| s["id"].as_u64())
        .expect("snapshot 2 listed with its id");
    for snap in [
        format!(r#", "snap_id": {snap_id}"#),
        format!(r#", "snap_id": "{snap_id}""#),
        r#", "snap_name": "2""#.to_string(),
    ] {
        let spec = spec_with(&by_id, &snap);
        let out = prepare(&env, &["--source-spec", &spec, "image2"]);
        assert!(out.status.success(), "{spec}: {}", stderr(&out));
        compare(&env, &s2, "image2@2");
        env.ok(&["migration", "abort", "image2"]);
    }
    let spec = spec_with(r#""pool_name": "rbd""#, r#", "snap_name": "2""#);
    assert!(prepare(&env, &["--source-spec", &spec, "image2"])
        .status
        .success());
    env.ok(&["migration", "execute", "image2"]);
    env.ok(&["migration", "commit", "image2"]);
    compare(&env, &s1, "image2@1");
    compare(&env, &s2, "image2@2");
    compare(&env, &s2, "image2");
}

/// `rbdm migration prepare --import-only --source-spec-path PATH dst` with at most 1 GiB of
/// address space (more than that is the bug), killed after 30 s.
fn prepare_limited(env: &Env, path: &str, stdin: Stdio) -> (Output, Duration) {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--as={}", 1u64 << 30))
        .arg(rbdm_tests::rbdm_bin())
        .args([
            "migration",
            "prepare",
            "--import-only",
            "--source-spec-path",
            path,
            "dst",
        ])
        .env("RBDM_STORE", &env.store)
        .stdin(stdin);
    run_for(cmd, Duration::from_secs(30))
}

/// Runs `cmd` (stdin as set), killing it after `limit`; its output and how long it ran.
fn run_for(mut cmd: Command, limit: Duration) -> (Output, Duration) {
    let t = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait_with_output().unwrap(), t.elapsed())
}

#[test]
fn spec_input_is_bounded_and_errors_are_short() {
    let env = Env::new();
    // An endless file and an endless stdin: refused at the limit, without growing memory.
    let (out, took) = prepare_limited(&env, "/dev/zero", Stdio::null());
    assert_eq!(out.status.code(), Some(libc::EFBIG), "{}", stderr(&out));
    assert!(stderr(&out).contains("1 MiB"), "{}", stderr(&out));
    assert!(took < Duration::from_secs(10), "{took:?}");
    let zero = std::fs::File::open("/dev/zero").unwrap();
    let (out, _) = prepare_limited(&env, "-", zero.into());
    assert_eq!(out.status.code(), Some(libc::EFBIG), "{}", stderr(&out));

    // A 100 MB spec file: the same, quickly, and the error quotes none of it.
    let big = env.path("big.json");
    let mut f = std::fs::File::create(&big).unwrap();
    f.write_all(br#"{"type": "raw", "stream": {"type": "http", "url": ""#)
        .unwrap();
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..100 {
        f.write_all(&chunk).unwrap();
    }
    f.write_all(br#""}}"#).unwrap();
    drop(f);
    let (out, took) = prepare_limited(&env, big.to_str().unwrap(), Stdio::null());
    assert_eq!(out.status.code(), Some(libc::EFBIG), "{}", stderr(&out));
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(stderr(&out).len() < 1000, "{} bytes", stderr(&out).len());

    // Within the limit but a bad value: the message quotes a short excerpt.
    let long = "a".repeat(100_000);
    for spec in [
        format!(r#"{{"type": "raw", "stream": {{"type": "http", "url": "{long}"}}}}"#),
        format!(r#"{{"type": "raw", "stream": {{"type": "nbd", "uri": "{long}"}}}}"#),
        format!(r#"{{"type": "{long}x", "stream": 1}}"#),
    ] {
        let out = prepare(&env, &["--source-spec", &spec, "dst"]);
        assert!(!out.status.success());
        assert!(
            stderr(&out).len() < 1000,
            "{} bytes: {}",
            stderr(&out).len(),
            &stderr(&out)[..200]
        );
    }
    assert_eq!(env.ok(&["ls"]), "");
}

/// Builds a 1 GiB qcow2 as Ceph's `test_import_qcow2_format` does (`qemu-img bench` writes of
/// pattern 65), and its raw conversion to compare against.
fn qcow2_base(env: &Env) -> (std::path::PathBuf, std::path::PathBuf) {
    let qcow = env.path("image2.qcow2");
    let raw = env.path("image2.raw");
    let q = qcow.to_str().unwrap();
    sh(&["qemu-img", "create", "-q", "-f", "qcow2", q, "1G"]);
    sh(&[
        "qemu-img",
        "bench",
        "-f",
        "qcow2",
        "-w",
        "-c",
        "2048",
        "-d",
        "16",
        "--pattern",
        "65",
        "-s",
        "4096",
        "-S",
        "524288",
        "-o",
        "4096",
        q,
    ]);
    sh(&[
        "qemu-img",
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        q,
        raw.to_str().unwrap(),
    ]);
    (qcow, raw)
}

fn nbd_spec(uri: &str) -> String {
    format!(r#"{{"type": "raw", "stream": {{"type": "nbd", "uri": "{uri}"}}}}"#)
}

/// Ceph's `test_import_nbd_stream_qcow2`, every URI and every expect-false case.
#[test]
fn nbd_uris_as_libnbd_reads_them_against_qemu_nbd() {
    let _port = lock_default_port();
    let env = Env::new();
    let (qcow, raw) = qcow2_base(&env);
    let file = env.path("spec.json");
    std::fs::write(&file, nbd_spec("nbd://localhost")).unwrap();
    let path = file.to_str().unwrap();
    {
        let _server = QemuNbd::on_default_port(&[], &qcow, "qcow2", env.dir.path());
        prepare_from_stdin(&env, &nbd_spec("nbd://localhost"), "image3");
        compare(&env, &raw, "image3");
        env.ok(&["migration", "abort", "image3"]);
        assert!(prepare(&env, &["--source-spec-path", path, "image3"])
            .status
            .success());
        env.ok(&["migration", "execute", "image3"]);
        env.ok(&["migration", "commit", "image3"]);
        compare(&env, &raw, "image3");
        env.ok(&["rm", "image3"]);
        // The shortest URI: localhost, port 10809, export "".
        let out = prepare(&env, &["--source-spec", &nbd_spec("nbd://"), "image3"]);
        assert!(out.status.success(), "{}", stderr(&out));
        env.ok(&["migration", "abort", "image3"]);
        for uri in ["nbd:///myexport", "nbd://localhost/myexport"] {
            refused(
                &env,
                &["--source-spec", &nbd_spec(uri), "image3"],
                ENOENT,
                "myexport",
            );
        }
    }
    {
        let _server = QemuNbd::on_default_port(
            &["--export-name", "myexport"],
            &qcow,
            "qcow2",
            env.dir.path(),
        );
        for uri in [
            "nbd:///myexport",
            "nbd://localhost/myexport",
            "nbd://127.0.0.1:10809/myexport",
        ] {
            let out = prepare(&env, &["--source-spec", &nbd_spec(uri), "image3"]);
            assert!(out.status.success(), "{uri}: {}", stderr(&out));
            compare(&env, &raw, "image3");
            env.ok(&["migration", "abort", "image3"]);
        }
    }
    // No server, no URI, a number, empty, no scheme, a name that does not resolve.
    let shortest = nbd_spec("nbd://");
    let refusals = [
        (
            vec!["--source-spec-path", path],
            libc::ECONNREFUSED,
            "nbd://localhost",
        ),
        (
            vec!["--source-spec", &shortest],
            libc::ECONNREFUSED,
            "nbd://",
        ),
    ];
    for (args, code, says) in refusals {
        let mut all = args.clone();
        all.push("image3");
        refused(&env, &all, code, says);
    }
    let bad_specs = [
        r#"{"type": "raw", "stream": {"type": "nbd"}}"#.to_string(),
        r#"{"type": "raw", "stream": {"type": "nbd", "uri": 123456}}"#.to_string(),
        nbd_spec(""),
        nbd_spec("foo.example.com"),
    ];
    for spec in &bad_specs {
        refused(&env, &["--source-spec", spec, "image3"], EINVAL, "uri");
    }
    let t = Instant::now();
    let out = prepare(
        &env,
        &[
            "--source-spec",
            &nbd_spec("nbd://foo.example.com"),
            "image3",
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("foo.example.com"), "{}", stderr(&out));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(env.ok(&["ls"]), "");
}

/// Ceph's `test_import_nbd_stream_raw`: `nbd+unix:///?socket=PATH`, and a named export.
#[test]
fn nbd_unix_sockets_with_and_without_an_export_name() {
    let env = Env::new();
    let (qcow, raw) = qcow2_base(&env);
    let sock = env.path("qemu-nbd-image2");
    let _plain = QemuNbd::on_socket(&raw, "raw", &sock);
    let spec = nbd_spec(&format!("nbd+unix:///?socket={}", sock.display()));
    assert!(prepare(&env, &["--source-spec", &spec, "image3"])
        .status
        .success());
    compare(&env, &raw, "image3");
    env.ok(&["migration", "execute", "image3"]);
    env.ok(&["migration", "commit", "image3"]);
    compare(&env, &raw, "image3");
    let named = env.path("qemu-nbd-named");
    let _named = QemuNbd::on_socket_with(&["--export-name", "disk a"], &qcow, "qcow2", &named);
    let spec = nbd_spec(&format!("nbd+unix:///disk%20a?socket={}", named.display()));
    let out = prepare(&env, &["--source-spec", &spec, "named"]);
    assert!(out.status.success(), "{}", stderr(&out));
    compare(&env, &raw, "named");
    let wrong = nbd_spec(&format!("nbd+unix:///other?socket={}", named.display()));
    refused(&env, &["--source-spec", &wrong, "other"], ENOENT, "other");
}

/// An HTTP server that serves `data` until `stall` is set; from then on it answers a range
/// with its headers and 4 KiB of the body, then holds the connection silent.
fn stalling_http(data: Vec<u8>, stall: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let data = std::sync::Arc::new(data);
    std::thread::spawn(move || {
        for sock in listener.incoming().flatten() {
            let (data, stall) = (data.clone(), stall.clone());
            std::thread::spawn(move || serve_http(sock, &data, &stall));
        }
    });
    port
}

fn serve_http(sock: TcpStream, data: &[u8], stall: &std::sync::atomic::AtomicBool) {
    let mut reader = BufReader::new(sock.try_clone().unwrap());
    let mut out = sock;
    loop {
        let mut range = None;
        let mut line = String::new();
        let mut first = true;
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" && !first {
                break;
            }
            first = false;
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                let (a, b) = v.trim().split_once('-').unwrap();
                range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap()));
            }
        }
        let (a, b) = range.unwrap_or((0, data.len() - 1));
        let b = b.min(data.len() - 1);
        let head = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{}\r\n\
             Content-Length: {}\r\nETag: \"v1\"\r\n\r\n",
            data.len(),
            b - a + 1
        );
        if out.write_all(head.as_bytes()).is_err() {
            return;
        }
        if stall.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = out.write_all(&data[a..(a + 4096).min(b + 1)]);
            std::thread::sleep(Duration::from_secs(600));
            return;
        }
        if out.write_all(&data[a..=b]).is_err() {
            return;
        }
    }
}

/// `migration execute [args] dst` with a 1 s stream timeout: it fails with ETIMEDOUT well
/// before the harness would kill it; its message.
fn execute_times_out(env: &Env, args: &[&str]) -> String {
    let mut all = vec!["migration", "execute"];
    all.extend_from_slice(args);
    all.push("dst");
    let mut cmd = env.command(&all);
    cmd.env(rbdm_spec::STREAM_TIMEOUT_ENV, "1");
    let (out, took) = run_for(cmd, Duration::from_secs(60));
    let msg = stderr(&out);
    assert_eq!(out.status.code(), Some(libc::ETIMEDOUT), "{took:?}: {msg}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    msg
}

/// Issue 13 point 9: a server that stops sending mid-body fails `execute` with ETIMEDOUT in
/// bounded time, naming the stream and the bytes it waited for.
#[test]
fn a_stalled_http_server_times_out_execute() {
    let env = Env::new();
    let data = rbdm_tests::pseudo_random(64 << 20, 9);
    let stall = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = stalling_http(data, stall.clone());
    let url = format!("http://127.0.0.1:{port}/image.raw");
    let spec = format!(r#"{{"type": "raw", "stream": {{"type": "http", "url": "{url}"}}}}"#);
    assert!(prepare(&env, &["--source-spec", &spec, "dst"])
        .status
        .success());
    stall.store(true, std::sync::atomic::Ordering::SeqCst);
    let msg = execute_times_out(&env, &[]);
    assert!(msg.contains(&url) && msg.contains("bytes"), "{msg}");
    env.ok(&["migration", "abort", "dst"]);
}

/// The same for NBD: `qemu-nbd` stopped (SIGSTOP) in the middle of `execute` keeps its
/// connection open but never answers; a new connection gets no handshake either.
#[test]
fn a_stalled_nbd_server_times_out_execute() {
    let env = Env::new();
    let raw = env.path("src.raw");
    std::fs::write(&raw, rbdm_tests::pseudo_random(64 << 20, 5)).unwrap();
    let sock = env.path("stall.sock");
    let (server, _) = QemuNbd::on_socket(&raw, "raw", &sock);
    let spec = nbd_spec(&format!("nbd+unix:///?socket={}", sock.display()));
    assert!(prepare(&env, &["--source-spec", &spec, "dst"])
        .status
        .success());
    let pid = server.pid();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        // SAFETY: signals the qemu-nbd child this test spawned and still owns.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
    });
    let msg = execute_times_out(&env, &["--bandwidth-limit", "4M"]);
    stopper.join().unwrap();
    // SAFETY: as above; the child is killed when `server` drops.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(msg.contains("nbd+unix") && msg.contains(" at "), "{msg}");
    env.ok(&["migration", "abort", "dst"]);
}
