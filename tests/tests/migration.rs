//! Live migration end to end with real processes: same-store (with snapshots and a layout
//! change), abort with clients' writes, import-only from raw and qcow2 files, a qemu-io client
//! on the NBD export of the destination while `execute` runs, `execute` SIGKILLed and resumed,
//! a source that fails mid-execute, and the bad inputs that must change nothing.
use std::process::Command;
use std::time::{Duration, Instant};

use rbdm_tests::ceph_base::{prepare_from_file, prepare_from_spec};
use rbdm_tests::*;

const MIB: u64 = 1 << 20;

fn raw_file_spec(path: &std::path::Path) -> String {
    format!(
        r#"{{"type":"raw","stream":{{"type":"file","file_path":"{}"}}}}"#,
        path.display()
    )
}

fn export(env: &Env, spec: &str, name: &str) -> std::path::PathBuf {
    let p = env.path(name);
    let _ = std::fs::remove_file(&p);
    env.ok(&["export", spec, p.to_str().unwrap()]);
    p
}

fn state(env: &Env, image: &str) -> String {
    let v = env.json(&["status", image]);
    v["migration"]["state"]
        .as_str()
        .unwrap_or("none")
        .to_string()
}

/// A source image with data, two snapshots and changes after each.
fn source_with_history(env: &Env) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let writes = [
        (0, 5 * MIB, 0x11),
        (20 * MIB + 4096, MIB, 0x22),
        (60 * MIB, 4 * MIB, 0x33),
    ];
    let raw = env.path("src.raw");
    make_raw(&raw, 64 * MIB, &writes);
    env.ok(&["import", raw.to_str().unwrap(), "src"]);
    let s1 = raw_contents(64 * MIB, &writes);
    env.ok(&["snap", "create", "src@s1"]);
    env.bench_write("src", "1M", "3M");
    let mut s2 = s1.clone();
    apply_bench(&mut s2, MIB, 3 * MIB);
    env.ok(&["snap", "create", "src@s2"]);
    env.ok(&["resize", "--size", "80M", "src"]);
    let mut head = s2.clone();
    head.resize(80 * MIB as usize, 0);
    (s1, s2, head)
}

fn check_image(env: &Env, spec: &str, want: &[u8], tag: &str) {
    let p = export(env, spec, &format!("{tag}.raw"));
    file_is(&p, want).unwrap_or_else(|e| panic!("{spec} ({tag}): {e}"));
}

#[test]
fn same_store_with_snapshots_and_a_new_layout() {
    let env = Env::new();
    let (s1, s2, head) = source_with_history(&env);
    env.ok(&["migration", "prepare", "--object-size", "1M", "src", "dst"]);
    let info = env.fails(&["info", "src"]);
    assert_eq!(info.status.code(), Some(2), "the source left the directory");
    assert!(env.ok(&["trash", "ls", "--all"]).contains("src"));
    assert!(
        !env.ok(&["trash", "ls"]).contains("src"),
        "migration sources are hidden without --all"
    );
    assert_eq!(state(&env, "dst"), "prepared");
    for (spec, want) in [("dst@s1", &s1), ("dst@s2", &s2), ("dst", &head)] {
        check_image(&env, spec, want, "before");
    }
    env.ok(&["migration", "execute", "dst"]);
    assert_eq!(state(&env, "dst"), "executed");
    env.ok(&["migration", "commit", "dst"]);
    assert_eq!(state(&env, "dst"), "none");
    for (spec, want) in [("dst@s1", &s1), ("dst@s2", &s2), ("dst", &head)] {
        check_image(&env, spec, want, "after");
    }
    assert!(env
        .ok(&["info", "dst"])
        .contains("order 20 (1 MiB objects)"));
    assert!(
        !env.ok(&["trash", "ls", "--all"]).contains("src"),
        "commit removed the source"
    );
}

#[test]
fn abort_puts_clients_writes_back_into_the_source() {
    let env = Env::new();
    let (s1, s2, mut head) = source_with_history(&env);
    env.ok(&["migration", "prepare", "src", "dst"]);
    env.ok(&["migration", "execute", "dst"]);
    // A client writes into the destination after the copy.
    env.bench_write("dst", "256K", "2M");
    apply_bench(&mut head, 256 * 1024, 2 * MIB);
    env.ok(&["migration", "abort", "dst"]);
    env.fails(&["info", "dst"]);
    for (spec, want) in [("src@s1", &s1), ("src@s2", &s2), ("src", &head)] {
        check_image(&env, spec, want, "aborted");
    }
    // And the restored source is writable and can be migrated again.
    env.bench_write("src", "4K", "4K");
    env.ok(&["migration", "prepare", "src"]);
    env.ok(&["migration", "abort", "src"]);
    assert!(env.ok(&["ls"]).contains("src"));
}

#[test]
fn import_only_from_raw_and_qcow2_keeps_holes_and_snapshots() {
    let env = Env::new();
    let raw = env.path("disk.raw");
    let writes = [(MIB, 2 * MIB, 0x41), (40 * MIB, 64 * 1024, 0x42)];
    make_raw(&raw, 64 * MIB, &writes);
    let qcow = env.path("disk.qcow2");
    let q = |args: &[&str]| {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    q(&[
        "qemu-img",
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow.to_str().unwrap(),
    ]);
    q(&[
        "qemu-img",
        "snapshot",
        "-c",
        "before",
        qcow.to_str().unwrap(),
    ]);
    q(&[
        "qemu-io",
        "-f",
        "qcow2",
        "-c",
        "write -P 0x43 2M 2M",
        qcow.to_str().unwrap(),
    ]);
    let mut after = raw_contents(64 * MIB, &writes);
    after[2 * MIB as usize..4 * MIB as usize].fill(0x43);

    let spec = raw_file_spec(&raw);
    prepare_from_spec(&env, &spec, "fromraw");
    check_image(&env, "fromraw", &raw_contents(64 * MIB, &writes), "raw-pre");
    env.ok(&["migration", "execute", "fromraw"]);
    env.ok(&["migration", "commit", "fromraw"]);
    check_image(
        &env,
        "fromraw",
        &raw_contents(64 * MIB, &writes),
        "raw-post",
    );
    let du = env.json(&["du", "fromraw"]);
    let used = du["images"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(|i| i["used_size"].as_u64())
        .unwrap_or(u64::MAX);
    assert!(used <= 3 * 4 * MIB, "raw import stays sparse: used {used}");

    let spec = format!(
        r#"{{"type":"qcow","stream":{{"type":"file","file_path":"{}"}}}}"#,
        qcow.display()
    );
    prepare_from_file(&env, &spec, "fromqcow");
    env.ok(&["migration", "execute", "fromqcow"]);
    env.ok(&["migration", "commit", "fromqcow"]);
    check_image(
        &env,
        "fromqcow@before",
        &raw_contents(64 * MIB, &writes),
        "qcow-snap",
    );
    check_image(&env, "fromqcow", &after, "qcow-head");
    assert!(
        raw.exists() && qcow.exists(),
        "import-only never touches the source"
    );
}

fn qemu_io(uri: &str, cmds: &[String]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for x in cmds {
        c.arg("-c").arg(x);
    }
    let out = c.arg(uri).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && !text.contains("Pattern verification failed")
            && !text.contains("failed"),
        "qemu-io {cmds:?}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn qemu_io_writes_through_nbd_while_execute_runs() {
    let env = Env::new();
    let raw = env.path("big.raw");
    let writes = [(0, 24 * MIB, 0x51), (40 * MIB, 8 * MIB, 0x52)];
    make_raw(&raw, 64 * MIB, &writes);
    let spec = raw_file_spec(&raw);
    prepare_from_spec(&env, &spec, "live");
    let (_server, uri) = env.nbd_export("live");
    // Slow enough that the client's writes land both before and after the copy passes them.
    let mut exec = env
        .command(&[
            "migration",
            "execute",
            "--bandwidth-limit",
            "16M",
            "--concurrency",
            "2",
            "live",
        ])
        .spawn()
        .unwrap();
    let mut want = raw_contents(64 * MIB, &writes);
    for (i, off) in [60 * MIB, MIB + 512, 41 * MIB, 20 * MIB - 4096]
        .iter()
        .enumerate()
    {
        let byte = 0x60 + i as u8;
        qemu_io(
            &uri,
            &[
                format!("write -P {byte} {off} 8192"),
                format!("read -P {byte} {off} 8192"),
            ],
        );
        want[*off as usize..*off as usize + 8192].fill(byte);
        std::thread::sleep(Duration::from_millis(300));
    }
    qemu_io(&uri, &[format!("read -P 0x52 {} 4096", 44 * MIB)]);
    assert!(exec.wait().unwrap().success(), "execute failed");
    drop(_server);
    env.ok(&["migration", "commit", "live"]);
    check_image(&env, "live", &want, "live");
}

#[test]
fn execute_survives_sigkill_and_resumes() {
    let env = Env::new();
    let raw = env.path("k.raw");
    let writes = [(0, 40 * MIB, 0x71), (50 * MIB, 10 * MIB, 0x72)];
    make_raw(&raw, 64 * MIB, &writes);
    let spec = raw_file_spec(&raw);
    prepare_from_spec(&env, &spec, "k");
    for round in 0..3 {
        let mut c = env
            .command(&["migration", "execute", "--bandwidth-limit", "8M", "k"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(400 + 300 * round));
        let _ = c.kill();
        let _ = c.wait();
        let st = state(&env, "k");
        assert!(st.starts_with("executing"), "after kill {round}: {st}");
    }
    let start = Instant::now();
    env.ok(&["migration", "execute", "k"]);
    assert!(start.elapsed() < Duration::from_secs(30));
    env.ok(&["migration", "commit", "k"]);
    check_image(&env, "k", &raw_contents(64 * MIB, &writes), "resumed");
}

#[test]
fn a_failing_source_fails_execute_and_abort_cleans_up() {
    let env = Env::new();
    let raw = env.path("t.raw");
    make_raw(&raw, 32 * MIB, &[(0, 32 * MIB, 0x7e)]);
    let qcow = env.path("t.qcow2");
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow)
        .output()
        .unwrap();
    assert!(out.status.success());
    let spec = format!(
        r#"{{"type":"qcow","stream":{{"type":"file","file_path":"{}"}}}}"#,
        qcow.display()
    );
    prepare_from_spec(&env, &spec, "t");
    // Cut the file after prepare: the data clusters at the end are gone.
    let f = std::fs::OpenOptions::new().write(true).open(&qcow).unwrap();
    f.set_len(8 * MIB).unwrap();
    let out = env.fails(&["migration", "execute", "t"]);
    assert!(!stderr(&out).is_empty());
    // `status` opens the source while the copy is unfinished (as librbd does), so it fails
    // with the file's change, which also says the state did not become `executed`.
    let out = env.fails(&["status", "t"]);
    assert_eq!(out.status.code(), Some(libc::EIO), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("changed since the migration was prepared"),
        "{}",
        stderr(&out)
    );
    env.ok(&["migration", "abort", "t"]);
    assert!(!env.ok(&["ls"]).contains('t'));
}

#[test]
fn bad_inputs_are_refused_and_change_nothing() {
    let env = Env::new();
    let raw = env.path("b.raw");
    make_raw(&raw, 8 * MIB, &[(0, MIB, 1)]);
    env.ok(&["import", raw.to_str().unwrap(), "existing"]);
    let before = env.ok(&["ls", "-l"]);
    let file_spec =
        |p: &str| format!(r#"{{"type":"raw","stream":{{"type":"file","file_path":"{p}"}}}}"#);
    let good = file_spec(raw.to_str().unwrap());
    let cases: Vec<(Vec<String>, i32)> = vec![
        (
            vec![
                "--import-only".into(),
                "--source-spec".into(),
                "{not json".into(),
                "x".into(),
            ],
            74,
        ),
        (
            vec![
                "--import-only".into(),
                "--source-spec".into(),
                r#"{"type":"vmdk","stream":{"type":"file","file_path":"/x"}}"#.into(),
                "x".into(),
            ],
            38,
        ),
        (
            vec![
                "--import-only".into(),
                "--source-spec".into(),
                file_spec("/nonexistent/disk.raw"),
                "x".into(),
            ],
            2,
        ),
        (
            vec![
                "--import-only".into(),
                "--source-spec".into(),
                good.clone(),
                "existing".into(),
            ],
            17,
        ),
        (
            vec![
                "--import-only".into(),
                "--source-spec".into(),
                good.clone(),
                "a".into(),
                "b".into(),
            ],
            22,
        ),
        (vec!["missing".into(), "x".into()], 2),
        (
            vec![
                "existing".into(),
                "existing2".into(),
                "--object-size".into(),
                "3M".into(),
            ],
            22,
        ),
    ];
    for (args, code) in cases {
        let mut all = vec!["migration", "prepare"];
        all.extend(args.iter().map(String::as_str));
        let out = env.fails(&all);
        assert_eq!(out.status.code(), Some(code), "{all:?}: {}", stderr(&out));
        assert!(
            stderr(&out).starts_with("rbdm: "),
            "{all:?}: {}",
            stderr(&out)
        );
        assert_eq!(env.ok(&["ls", "-l"]), before, "{all:?} changed the store");
    }
    assert_eq!(
        env.fails(&["migration", "execute", "existing"])
            .status
            .code(),
        Some(22)
    );
    assert_eq!(
        env.fails(&["migration", "commit", "existing"])
            .status
            .code(),
        Some(22)
    );
    prepare_from_spec(&env, &good, "m");
    assert_eq!(
        env.fails(&["migration", "commit", "m"]).status.code(),
        Some(22),
        "commit before execute"
    );
    // A source open read-write by another client is refused.
    let mut bench = env
        .command(&[
            "bench",
            "--io-type",
            "write",
            "--io-total",
            "10G",
            "existing",
        ])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.ok(&["status", "existing"]).contains("none") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let out = env.fails(&["migration", "prepare", "existing", "other"]);
    assert_eq!(out.status.code(), Some(16), "{}", stderr(&out));
    let _ = bench.kill();
    let _ = bench.wait();
    assert!(env.ok(&["ls"]).contains("existing"));
}

#[test]
fn commit_force_moves_clone_children_to_the_destination() {
    let env = Env::new();
    let raw = env.path("p.raw");
    let writes = [(0, 3 * MIB, 0x21)];
    make_raw(&raw, 16 * MIB, &writes);
    env.ok(&["import", raw.to_str().unwrap(), "parent"]);
    env.ok(&["snap", "create", "parent@base"]);
    env.ok(&["snap", "protect", "parent@base"]);
    env.ok(&["clone", "parent@base", "child"]);
    env.ok(&["migration", "prepare", "parent", "moved"]);
    env.ok(&["migration", "execute", "moved"]);
    let out = env.fails(&["migration", "commit", "moved"]);
    assert_eq!(out.status.code(), Some(16), "{}", stderr(&out));
    env.ok(&["migration", "commit", "--force", "moved"]);
    assert!(
        env.ok(&["info", "child"])
            .contains("parent: rbd/moved@base"),
        "{}",
        env.ok(&["info", "child"])
    );
    assert!(env.ok(&["children", "moved@base"]).contains("child"));
    check_image(&env, "child", &raw_contents(16 * MIB, &writes), "child");
    assert!(!env.ok(&["trash", "ls", "--all"]).contains("parent"));
}

/// The NOTES.md shape in small: a qcow2 and a raw disk with holes.
fn remote_disks(env: &Env) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let raw = env.path("web.raw");
    let writes = [
        (0, MIB, 0x31),
        (9 * MIB, 3 * MIB, 0x32),
        (30 * MIB - 4096, 8192, 0x33),
    ];
    make_raw(&raw, 32 * MIB, &writes);
    let qcow = env.path("web.qcow2");
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow)
        .output()
        .unwrap();
    assert!(out.status.success());
    (raw, qcow, raw_contents(32 * MIB, &writes))
}

fn import(env: &Env, spec: &str, name: &str, want: &[u8]) {
    prepare_from_spec(env, spec, name);
    env.ok(&["migration", "execute", name]);
    env.ok(&["migration", "commit", name]);
    check_image(env, name, want, name);
}

#[test]
fn import_only_over_http_and_s3_and_nbd() {
    let env = Env::new();
    let (raw, qcow, want) = remote_disks(&env);
    let web = servers::nginx(env.dir.path());
    for (format, file) in [("raw", "web.raw"), ("qcow", "web.qcow2")] {
        let spec = format!(
            r#"{{"type":"{format}","stream":{{"type":"http","url":"{}"}}}}"#,
            web.url(file)
        );
        import(&env, &spec, &format!("http-{format}"), &want);
    }
    let missing = format!(
        r#"{{"type":"raw","stream":{{"type":"http","url":"{}"}}}}"#,
        web.url("nope.raw")
    );
    assert_eq!(
        env.fails(&[
            "migration",
            "prepare",
            "--import-only",
            "--source-spec",
            &missing,
            "x"
        ])
        .status
        .code(),
        Some(2)
    );

    let (s3, ak, sk) = servers::moto(&[("disk.qcow2", &qcow), ("disk.raw", &raw)]);
    env.ok(&["config-key", "set", "s3/secret", &sk]);
    let url = format!("http://127.0.0.1:{}/images/disk.qcow2", s3.port);
    let spec = format!(
        r#"{{"type":"qcow","stream":{{"type":"s3","url":"{url}","access_key":"{ak}","secret_key":"config://s3/secret"}}}}"#
    );
    import(&env, &spec, "s3-qcow", &want);
    assert!(
        !env.ok(&["status", "s3-qcow"]).contains(&sk),
        "secrets never printed"
    );
    let bad = format!(
        r#"{{"type":"qcow","stream":{{"type":"s3","url":"{url}","access_key":"{ak}","secret_key":"wrong"}}}}"#
    );
    let out = env.fails(&[
        "migration",
        "prepare",
        "--import-only",
        "--source-spec",
        &bad,
        "y",
    ]);
    assert_eq!(out.status.code(), Some(13), "{}", stderr(&out));
    assert!(!env.ok(&["ls"]).contains('y'));

    // Anything qemu-nbd serves: here a vmdk, holes reported by block status.
    let vmdk = env.path("d.vmdk");
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vmdk"])
        .arg(&raw)
        .arg(&vmdk)
        .output()
        .unwrap();
    assert!(out.status.success());
    let sock = env.path("qnbd.sock");
    let mut qnbd = Killed(
        Command::new("qemu-nbd")
            .args(["-f", "vmdk", "-r", "-t", "--socket"])
            .arg(&sock)
            .arg(&vmdk)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let spec = format!(
        r#"{{"type":"raw","stream":{{"type":"nbd","uri":"nbd+unix:///?socket={}"}}}}"#,
        sock.display()
    );
    import(&env, &spec, "from-nbd", &want);
    let _ = qnbd.0.kill();
    let du = env.json(&["du", "from-nbd"]);
    let used = du["images"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(|i| i["used_size"].as_u64())
        .unwrap_or(u64::MAX);
    assert!(used <= 4 * 4 * MIB, "holes kept through nbd: used {used}");
}

#[test]
fn a_migrated_clone_keeps_its_parent_unless_flattened() {
    let env = Env::new();
    let raw = env.path("pp.raw");
    let writes = [(0, 6 * MIB, 0x44), (10 * MIB, MIB, 0x45)];
    make_raw(&raw, 16 * MIB, &writes);
    env.ok(&["import", raw.to_str().unwrap(), "gold"]);
    env.ok(&["snap", "create", "gold@v1"]);
    env.ok(&["snap", "protect", "gold@v1"]);
    let want = raw_contents(16 * MIB, &writes);
    for (child, flatten) in [("c1", false), ("c2", true)] {
        env.ok(&["clone", "gold@v1", child]);
        // The clone's own data, and a range it hides from the parent (written as zeros).
        env.bench_write(child, "64K", "128K");
        let mut mine = want.clone();
        apply_bench(&mut mine, 64 * 1024, 128 * 1024);
        let mut args = vec!["migration", "prepare", "--object-size", "1M"];
        if flatten {
            args.push("--flatten");
        }
        let dst = format!("{child}-moved");
        args.extend([child, dst.as_str()]);
        env.ok(&args);
        env.ok(&["migration", "execute", &dst]);
        env.ok(&["migration", "commit", &dst]);
        let info = env.ok(&["info", &dst]);
        assert_eq!(
            info.contains("parent: rbd/gold@v1"),
            !flatten,
            "{child}: {info}"
        );
        check_image(&env, &dst, &mine, child);
        if !flatten {
            assert!(env.ok(&["children", "gold@v1"]).contains(&dst));
        }
    }
}

/// Abort from `prepared` and from an `execute` killed midway, each after a client wrote
/// through NBD into regions copied and not yet copied: the source gets the writes, keeps its
/// snapshots, and the destination is gone. (From `executed`: the test above.)
#[test]
fn abort_from_prepared_and_from_a_killed_execute_keeps_clients_writes() {
    let env = Env::new();
    let (s1, s2, mut head) = source_with_history(&env);
    for (round, kill_execute) in [(0u8, false), (1, true)] {
        env.ok(&["migration", "prepare", "src", "dst"]);
        if kill_execute {
            let mut c = env
                .command(&[
                    "migration",
                    "execute",
                    "--bandwidth-limit",
                    "8M",
                    "--concurrency",
                    "1",
                    "dst",
                ])
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(900));
            let _ = c.kill();
            let _ = c.wait();
            assert!(state(&env, "dst").starts_with("executing"));
        }
        let (server, uri) = env.nbd_export("dst");
        let byte = 0x70 + round;
        // Near the start (copied when execute ran) and near the end (not yet copied).
        for off in [MIB + 512, 70 * MIB + 4096] {
            qemu_io(
                &uri,
                &[
                    format!("write -P {byte} {off} 12288"),
                    format!("read -P {byte} {off} 12288"),
                ],
            );
            head[off as usize..off as usize + 12288].fill(byte);
        }
        drop(server);
        env.ok(&["migration", "abort", "dst"]);
        env.fails(&["info", "dst"]);
        let tag = format!("abort{round}");
        for (spec, want) in [("src@s1", &s1), ("src@s2", &s2), ("src", &head)] {
            check_image(&env, spec, want, &tag);
        }
        assert!(
            !env.ok(&["trash", "ls", "--all"]).contains("src"),
            "the source left the trash"
        );
    }
}
