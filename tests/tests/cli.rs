//! End-to-end tests of the `rbdm` binary: real processes on a real `dir://` store, raw
//! files made by qemu-img/qemu-io. Build the binary first: `cargo build -p rbdm-cli`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use rbdm_tests::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn images(env: &Env) -> Vec<String> {
    env.ok(&["ls"]).lines().map(str::to_string).collect()
}

fn u64_at(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number '{key}' in {v}"))
}

#[test]
fn layouts_roundtrip_sparse_files() {
    let env = Env::new();
    let size = 64 * MIB;
    let writes = [
        (0, MIB, 0x11),
        (5 * MIB + 512, 300 << 10, 0x22),
        (20 * MIB, 4 * MIB + 4096, 0x33),
        (40 * MIB, 64 << 10, 0x00), // allocated in the file, but zeros: must not cost anything
        (size - MIB, MIB - 4096, 0x44),
    ];
    let data: u64 = writes.iter().filter(|w| w.2 != 0).map(|w| w.1).sum();
    let raw = env.path("disk.raw");
    make_raw(&raw, size, &writes);
    let layouts: [(&str, &[&str], u64, u64, u64); 3] = [
        ("def", &[], 4 * MIB, 4 * MIB, 1),
        ("small", &["--object-size", "1M"], MIB, MIB, 1),
        (
            "striped",
            &[
                "--object-size",
                "64K",
                "--stripe-unit",
                "16K",
                "--stripe-count",
                "3",
            ],
            64 << 10,
            16 << 10,
            3,
        ),
    ];
    for (name, opts, object_size, unit, count) in layouts {
        let raw_s = raw.to_str().unwrap();
        let mut args = vec!["import"];
        args.extend_from_slice(opts);
        args.extend([raw_s, name]);
        env.ok(&args);

        let info = env.json(&["info", name]);
        assert_eq!(u64_at(&info, "size"), size, "{name}");
        assert_eq!(u64_at(&info, "object_size"), object_size, "{name}");
        if count > 1 {
            assert_eq!(
                (u64_at(&info, "stripe_unit"), u64_at(&info, "stripe_count")),
                (unit, count),
                "{name}"
            );
            assert!(env
                .ok(&["info", name])
                .contains("\tstripe unit: 16 KiB\n\tstripe count: 3\n"));
        }

        let out = env.path(&format!("{name}.out"));
        env.ok(&["export", name, out.to_str().unwrap()]);
        files_equal(&raw, &out).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            allocated_bytes(&out) < size / 2,
            "{name}: export is not sparse: {} bytes",
            allocated_bytes(&out)
        );

        let du = env.json(&["du", name]);
        let used = u64_at(&du["images"][0], "used_size");
        assert!(
            used >= data && used < size / 2,
            "{name}: used {used}, data {data}, size {size}"
        );
        assert_eq!(u64_at(&du["images"][0], "provisioned_size"), size);
    }
    // The plain table: one row per image and a total, sizes as rbd prints them.
    let du = env.ok(&["du"]);
    let lines: Vec<&str> = du.lines().collect();
    assert!(
        lines[0].starts_with("NAME")
            && lines[0].contains("PROVISIONED")
            && lines[0].contains("USED"),
        "{du}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<TOTAL>") && l.contains("192 MiB")),
        "{du}"
    );
}

#[test]
fn import_from_stdin_and_export_to_stdout() {
    let env = Env::new();
    let size = 9 * MIB + 4096; // not a multiple of the object size
    let writes = [
        (4096, 8192, 0x5c),
        (3 * MIB, 2 * MIB, 0x7e),
        (size - 4096, 4096, 0x01),
    ];
    let raw = env.path("in.raw");
    make_raw(&raw, size, &writes);
    let file = std::fs::File::open(&raw).unwrap();
    let out = env.rbdm_with_stdin(
        &["import", "--object-size", "1M", "-", "piped"],
        Stdio::from(file),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(u64_at(&env.json(&["info", "piped"]), "size"), size);

    let out = env.rbdm(&["export", "piped", "-"]);
    assert!(out.status.success(), "{}", stderr(&out));
    bytes_equal(&out.stdout, &raw_contents(size, &writes)).unwrap();
    let copy = env.path("copy.raw");
    env.ok(&["export", "piped", copy.to_str().unwrap()]);
    files_equal(&raw, &copy).unwrap();
    // rbd never overwrites an export target.
    let again = env.fails(&["export", "piped", copy.to_str().unwrap()]);
    assert_eq!(
        again.status.code(),
        Some(libc::EEXIST),
        "{}",
        stderr(&again)
    );
}

/// Contents after each step of `snapshot_history`, from the bench write pattern.
fn snapshot_history(env: &Env) -> Vec<(Option<&'static str>, Vec<u8>)> {
    env.ok(&["create", "--size", "16M", "--object-size", "1M", "hist"]);
    let mut img = vec![0u8; 16 * MIB as usize];
    let bench = |io: &str, total: &str| {
        env.ok(&[
            "bench",
            "--io-type",
            "write",
            "--io-pattern",
            "seq",
            "--io-size",
            io,
            "--io-total",
            total,
            "--io-threads",
            "4",
            "hist",
        ]);
    };
    bench("64K", "4M");
    apply_bench(&mut img, 64 << 10, 4 * MIB);
    env.ok(&["snap", "create", "hist@s1"]);
    env.ok(&["snap", "protect", "hist@s1"]);
    let s1 = img.clone();

    bench("4K", "8M");
    apply_bench(&mut img, 4096, 8 * MIB);
    env.ok(&["snap", "create", "hist@s2"]);
    let s2 = img.clone();

    // Shrink then grow: what lay beyond 6 MiB must read back as zeros.
    env.ok(&["resize", "--allow-shrink", "--size", "6M", "hist"]);
    env.ok(&["resize", "--size", "20M", "hist"]);
    img.truncate(6 * MIB as usize);
    img.resize(20 * MIB as usize, 0);
    bench("1M", "2M");
    apply_bench(&mut img, MIB, 2 * MIB);
    vec![(Some("s1"), s1), (Some("s2"), s2), (None, img)]
}

fn check_contents(env: &Env, image: &str, history: &[(Option<&str>, Vec<u8>)]) {
    for (snap, want) in history {
        let spec = match snap {
            Some(s) => format!("{image}@{s}"),
            None => image.to_string(),
        };
        let out = env.path(&format!("{}.raw", spec.replace('@', "_")));
        env.ok(&["export", &spec, out.to_str().unwrap()]);
        file_is(&out, want).unwrap_or_else(|e| panic!("{spec}: {e}"));
    }
}

#[test]
fn snapshots_and_export_format_2() {
    let env = Env::new();
    let history = snapshot_history(&env);
    check_contents(&env, "hist", &history);

    let snaps = env.json(&["snap", "ls", "hist"]);
    let names: Vec<&str> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["s1", "s2"]);

    let v2 = env.path("hist.v2");
    env.ok(&[
        "export",
        "--export-format",
        "2",
        "hist",
        v2.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&v2).unwrap();
    assert!(bytes.starts_with(b"rbd image v2\n"));
    env.ok(&[
        "import",
        "--export-format",
        "2",
        v2.to_str().unwrap(),
        "copy",
    ]);
    check_contents(&env, "copy", &history);
    let snaps = env.json(&["snap", "ls", "copy"]);
    let got: Vec<(String, String)> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["protected"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("s1".to_string(), "true".to_string()),
            ("s2".to_string(), "false".to_string())
        ]
    );
    assert_eq!(u64_at(&env.json(&["info", "copy"]), "object_size"), MIB);

    // Through pipes as well: export to stdout, import from stdin.
    let out = env.rbdm(&["export", "--export-format", "2", "hist", "-"]);
    assert!(out.status.success(), "{}", stderr(&out));
    bytes_equal(&out.stdout, &bytes).unwrap();
    let file = std::fs::File::open(&v2).unwrap();
    let out = env.rbdm_with_stdin(
        &["import", "--export-format", "2", "-", "piped"],
        Stdio::from(file),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    check_contents(&env, "piped", &history);

    // A truncated stream: refused, and nothing is left behind.
    let cut = env.path("cut.v2");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = env.fails(&[
        "import",
        "--export-format",
        "2",
        cut.to_str().unwrap(),
        "bad1",
    ]);
    assert!(stderr(&out).contains("byte"), "{}", stderr(&out));
    assert!(!images(&env).contains(&"bad1".to_string()));

    // A flipped tag: the first data record of the first diff ('t' s1, 'p', 's', then 'w').
    let diff = bytes
        .windows(12)
        .position(|w| w == b"rbd diff v2\n")
        .unwrap();
    let pos = diff + 12 + (1 + 8 + 4 + 2) + (1 + 8 + 1) + (1 + 8 + 8);
    assert_eq!(bytes[pos], b'w', "layout of the stream changed");
    let mut flipped = bytes.clone();
    flipped[pos] = b'X';
    let bad = env.path("flipped.v2");
    std::fs::write(&bad, &flipped).unwrap();
    let out = env.fails(&[
        "import",
        "--export-format",
        "2",
        bad.to_str().unwrap(),
        "bad2",
    ]);
    assert_eq!(out.status.code(), Some(libc::EBADMSG), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("byte {pos}")),
        "{}",
        stderr(&out)
    );
    // As rbd: the progress line ends "...failed.", then one error line.
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with("\rImporting image: ") && lines[0].ends_with("% complete...failed."),
        "{err:?}"
    );
    assert!(!images(&env).contains(&"bad2".to_string()));
    assert!(!env.ok(&["trash", "ls", "--all"]).contains("bad2"));
}

#[test]
fn clones_read_parent_data_until_flattened() {
    let env = Env::new();
    let size = 8 * MIB;
    let writes = [(0, 3 * MIB, 0x61), (6 * MIB, MIB, 0x62)];
    let raw = env.path("parent.raw");
    make_raw(&raw, size, &writes);
    env.ok(&["import", raw.to_str().unwrap(), "parent"]);
    env.ok(&["snap", "create", "parent@base"]);
    env.fails(&["clone", "parent@base", "early"]); // not protected yet
    env.ok(&["snap", "protect", "parent@base"]);
    env.ok(&["clone", "parent@base", "child"]);
    env.ok(&["clone", "parent@base", "child2"]);

    let info = env.ok(&["info", "child"]);
    assert!(
        info.contains("\tparent: rbd/parent@base\n\toverlap: 8 MiB\n"),
        "{info}"
    );
    let kids = env.ok(&["children", "parent@base"]);
    let mut kids: Vec<&str> = kids.lines().collect();
    kids.sort();
    assert_eq!(kids, ["rbd/child", "rbd/child2"]);
    let listing = env.ok(&["ls", "-l"]);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("child ") && l.contains("rbd/parent@base")),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("parent@base ") && l.contains(" yes")),
        "{listing}"
    );

    let out = env.path("child.raw");
    env.ok(&["export", "child", out.to_str().unwrap()]);
    files_equal(&raw, &out).unwrap();

    // Writing the child copies up; the parent does not change.
    env.bench_write("child", "64K", "1M");
    let mut want = raw_contents(size, &writes);
    apply_bench(&mut want, 64 << 10, MIB);
    let out = env.path("child2.raw");
    env.ok(&["export", "child", out.to_str().unwrap()]);
    file_is(&out, &want).unwrap();
    let out = env.path("base.raw");
    env.ok(&["export", "parent@base", out.to_str().unwrap()]);
    files_equal(&raw, &out).unwrap();

    let busy = env.fails(&["snap", "unprotect", "parent@base"]);
    assert_eq!(busy.status.code(), Some(libc::EBUSY), "{}", stderr(&busy));
    env.ok(&["flatten", "child"]);
    assert!(!env.ok(&["info", "child"]).contains("parent:"));
    let out = env.path("flat.raw");
    env.ok(&["export", "child", out.to_str().unwrap()]);
    file_is(&out, &want).unwrap();
    let busy = env.fails(&["snap", "unprotect", "parent@base"]);
    assert_eq!(
        busy.status.code(),
        Some(libc::EBUSY),
        "child2 still depends on it"
    );
    env.ok(&["rm", "child2"]);
    env.ok(&["snap", "unprotect", "parent@base"]);
    env.ok(&["snap", "rm", "parent@base"]);
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn status_shows_a_running_bench_until_it_is_killed() {
    let env = Env::new();
    env.ok(&["create", "--size", "64M", "busy"]);
    let mut bench = env
        .command(&[
            "bench",
            "--io-type",
            "write",
            "--io-size",
            "4K",
            "--io-threads",
            "2",
            "--io-total",
            "10G",
            "busy",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut status = String::new();
    wait_for("a watcher", || {
        status = env.ok(&["status", "busy"]);
        status.contains("watcher=")
    });
    let line = status.lines().find(|l| l.contains("watcher=")).unwrap();
    assert!(
        line.starts_with("\twatcher=") && line.contains(" client.") && line.contains(" cookie="),
        "{status}"
    );
    assert!(
        line.contains(&format!(":0/{} ", bench.id())),
        "the watcher is the bench process: {status}"
    );
    assert!(images(&env).contains(&"busy".to_string()));
    assert!(env.ok(&["info", "busy"]).contains("rbd image 'busy'"));
    // A writer holds the exclusive lock: `ls -l` shows it, as rbd does.
    wait_for("the lock", || {
        env.ok(&["ls", "-l"])
            .lines()
            .any(|l| l.starts_with("busy ") && l.ends_with("excl"))
    });
    // `lock ls` shows that managed lock (id `auto <n>`), and `lock add` cannot take it.
    let locks = env.json(&["lock", "ls", "busy"]);
    assert!(
        locks[0]["id"].as_str().unwrap().starts_with("auto "),
        "{locks}"
    );
    let added = env.fails(&["lock", "add", "busy", "x"]);
    assert_eq!(added.status.code(), Some(libc::EBUSY), "{}", stderr(&added));
    let rm = env.fails(&["rm", "busy"]);
    assert_eq!(rm.status.code(), Some(libc::EBUSY), "{}", stderr(&rm));
    assert!(
        bench.try_wait().unwrap().is_none(),
        "the bench ended too early"
    );

    bench.kill().unwrap(); // SIGKILL
    bench.wait().unwrap();
    wait_for("the watcher to go", || {
        env.ok(&["status", "busy"]) == "Watchers: none\n"
    });
    assert_eq!(
        env.json(&["status", "busy"])["watchers"],
        serde_json::json!([])
    );
    assert!(
        !env.ok(&["ls", "-l"]).contains("excl"),
        "a dead client's lock is not shown"
    );
    assert_eq!(env.ok(&["lock", "ls", "busy"]), "");
    env.ok(&["rm", "busy"]);
    assert!(images(&env).is_empty());
}

#[test]
fn trash_metadata_namespaces_pools_config_keys() {
    let env = Env::new();
    // trash
    env.ok(&["create", "--size", "1M", "t1"]);
    env.ok(&["trash", "mv", "t1"]);
    assert!(images(&env).is_empty());
    let trash = env.ok(&["trash", "ls"]);
    let (id, name) = trash.trim_end().split_once(' ').unwrap();
    assert_eq!(name, "t1");
    env.ok(&["trash", "restore", id]);
    assert_eq!(images(&env), ["t1"]);
    env.ok(&["trash", "mv", "t1"]);
    let id = env.json(&["trash", "ls"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.ok(&["trash", "rm", &id]);
    assert_eq!(env.ok(&["trash", "ls"]), "");
    assert!(images(&env).is_empty());

    // image metadata
    env.ok(&["create", "--size", "1M", "m"]);
    env.ok(&["image-meta", "set", "m", "colour", "blue"]);
    env.ok(&["image-meta", "set", "m", "shape", "round"]);
    assert_eq!(env.ok(&["image-meta", "get", "m", "colour"]), "blue\n");
    assert_eq!(
        env.json(&["image-meta", "list", "m"]),
        serde_json::json!({"colour": "blue", "shape": "round"})
    );
    assert!(env
        .ok(&["image-meta", "ls", "m"])
        .starts_with("There are 2 metadata on this image:"));
    env.ok(&["image-meta", "rm", "m", "colour"]);
    let gone = env.fails(&["image-meta", "get", "m", "colour"]);
    assert_eq!(gone.status.code(), Some(libc::ENOENT));

    // pools and namespaces
    env.ok(&["pool", "create", "p2"]);
    assert!(env.ok(&["pool", "ls"]).lines().any(|l| l == "p2"));
    env.ok(&["create", "--size", "1M", "p2/img"]);
    env.ok(&["namespace", "create", "p2/ns1"]);
    assert_eq!(
        env.json(&["namespace", "ls", "p2"]),
        serde_json::json!([{"name": "ns1"}])
    );
    env.ok(&["create", "--size", "1M", "p2/ns1/x"]);
    assert_eq!(env.ok(&["ls", "p2/ns1"]), "x\n");
    assert_eq!(env.ok(&["ls", "-p", "p2", "--namespace", "ns1"]), "x\n");
    assert_eq!(env.ok(&["ls", "p2"]), "img\n");
    assert!(env
        .ok(&["info", "--pool", "p2", "img"])
        .contains("rbd image 'img'"));
    env.fails(&["namespace", "rm", "p2/ns1"]); // not empty
    env.ok(&["rm", "p2/ns1/x"]);
    env.ok(&["namespace", "rm", "p2/ns1"]);
    assert_eq!(env.ok(&["namespace", "ls", "p2"]), "");
    env.fails(&["pool", "rm", "p2"]); // holds an image
    env.ok(&["rm", "p2/img"]);
    env.ok(&["pool", "rm", "p2"]);
    assert!(!env.ok(&["pool", "ls"]).lines().any(|l| l == "p2"));

    // config-key
    env.ok(&["config-key", "set", "a/b", "123"]);
    assert_eq!(env.ok(&["config-key", "get", "a/b"]), "123\n");
    assert_eq!(env.json(&["config-key", "ls"]), serde_json::json!(["a/b"]));
    env.ok(&["config-key", "rm", "a/b"]);
    env.fails(&["config-key", "get", "a/b"]);

    // rename, snapshot rename, diff
    env.ok(&["rename", "m", "m2"]);
    assert_eq!(images(&env), ["m2"]);
    env.ok(&["snap", "create", "m2@a"]);
    env.ok(&["snap", "rename", "m2@a", "m2@b"]);
    assert_eq!(env.json(&["snap", "ls", "m2"])[0]["name"], "b");
    env.bench_write("m2", "4K", "64K");
    let diff = env.json(&["diff", "--from-snap", "b", "m2"]);
    let data: u64 = diff
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["exists"] == "true")
        .map(|e| u64_at(e, "length"))
        .sum();
    assert!(data >= 64 << 10, "{diff}");
    assert!(env.ok(&["diff", "m2"]).starts_with("Offset"));
}

/// Everything a bad command could have changed, as the user sees it.
fn state(env: &Env) -> String {
    [
        env.ok(&["ls", "-l"]),
        env.ok(&["snap", "ls", "keep"]),
        env.ok(&["pool", "ls"]),
        env.ok(&["trash", "ls", "--all"]),
        env.ok(&["namespace", "ls"]),
        env.ok(&["image-meta", "ls", "keep"]),
        env.ok(&["du"]),
    ]
    .join("\n--\n")
}

#[test]
fn bad_arguments_change_nothing() {
    let env = Env::new();
    env.ok(&["create", "--size", "8M", "keep"]);
    env.ok(&["snap", "create", "keep@s"]);
    env.ok(&["snap", "protect", "keep@s"]);
    let existing = env.path("exists.raw");
    make_raw(&existing, MIB, &[]);
    let existing = existing.to_str().unwrap().to_string();
    let missing = env.path("missing.raw").to_str().unwrap().to_string();
    let before = state(&env);

    let e = |code: i32| Some(code);
    let cases: Vec<(Vec<&str>, &str, Option<i32>)> = vec![
        (
            vec!["create", "--size", "1M", "nopool/x"],
            "nopool",
            e(libc::ENOENT),
        ),
        (
            vec!["create", "--size", "1Q", "x"],
            "suffix",
            e(libc::EINVAL),
        ),
        (
            vec!["create", "--size", "1.5G", "x"],
            "1.5G",
            e(libc::EINVAL),
        ),
        (
            vec!["create", "--size", "1M", "--object-size", "3M", "x"],
            "power of two",
            e(libc::EINVAL),
        ),
        (
            vec!["create", "--size", "1M", "--object-size", "64M", "x"],
            "power of two",
            e(libc::EINVAL),
        ),
        (
            vec![
                "create",
                "--size",
                "1M",
                "--object-size",
                "64K",
                "--stripe-unit",
                "48K",
                "--stripe-count",
                "2",
                "x",
            ],
            "factor",
            e(libc::EINVAL),
        ),
        (
            vec!["create", "--size", "1M", "--stripe-unit", "16K", "x"],
            "stripe-unit",
            e(libc::EINVAL),
        ),
        (
            vec!["create", "--size", "1M", "--order", "30", "x"],
            "order",
            e(libc::EINVAL),
        ),
        (
            vec!["create", "--size", "1M", "--image-feature", "bogus", "x"],
            "bogus",
            e(libc::EINVAL),
        ),
        (
            vec![
                "create",
                "--size",
                "1M",
                "--image-feature",
                "object-map",
                "x",
            ],
            "exclusive-lock",
            e(libc::EINVAL),
        ),
        (
            vec!["create", "--size", "1M", "--data-pool", "nopool", "x"],
            "nopool",
            e(libc::ENOENT),
        ),
        (vec!["create", "x"], "--size", e(libc::EINVAL)),
        (
            vec!["create", "--size", "1M", "a/b/c/d"],
            "a/b/c/d",
            e(libc::EINVAL),
        ),
        (
            vec!["create", "--size", "1M", "keep"],
            "exists",
            e(libc::EEXIST),
        ),
        (vec!["snap", "rm", "keep@s"], "protected", e(libc::EBUSY)),
        (
            vec!["snap", "create", "keep"],
            "snapshot name",
            e(libc::EINVAL),
        ),
        (
            vec!["snap", "create", "keep@s"],
            "create snapshot",
            e(libc::EEXIST),
        ),
        (vec!["rm", "keep"], "snapshots", e(libc::ENOTEMPTY)),
        (
            vec!["resize", "--size", "1M", "keep"],
            "allow-shrink",
            e(libc::EINVAL),
        ),
        (vec!["info", "nosuch"], "nosuch", e(libc::ENOENT)),
        (vec!["clone", "keep@nosnap", "x"], "keep", None),
        (
            vec!["import", &missing, "x"],
            "missing.raw",
            e(libc::ENOENT),
        ),
        (
            vec!["import", "--export-format", "3", &existing, "x"],
            "export-format",
            e(libc::EINVAL),
        ),
        (
            vec!["import", "--export-format", "2", &existing, "x"],
            "byte 0",
            e(libc::EBADMSG),
        ),
        (
            vec!["import", "--object-size", "3M", &existing, "x"],
            "power of two",
            e(libc::EINVAL),
        ),
        (
            vec!["export", "keep", &existing],
            "File exists",
            e(libc::EEXIST),
        ),
        (
            vec!["bench", "--io-type", "write", "--io-size", "0", "keep"],
            "io-size",
            e(libc::EINVAL),
        ),
        (
            vec!["bench", "--io-type", "fly", "keep"],
            "fly",
            e(libc::EINVAL),
        ),
        (vec!["ls", "nopool"], "nopool", e(libc::ENOENT)),
        (vec!["frobnicate"], "frobnicate", e(libc::EINVAL)),
        (
            vec!["image-meta", "set", "keep", "k"],
            "VALUE",
            e(libc::EINVAL),
        ),
        (vec!["trash", "restore", "nosuchid"], "restore", None),
    ];
    assert!(cases.len() >= 15);
    for (args, needle, code) in &cases {
        let out = env.fails(args);
        let err = stderr(&out);
        assert!(
            err.to_lowercase().contains(&needle.to_lowercase()),
            "rbdm {args:?}: stderr lacks {needle:?}: {err}"
        );
        if let Some(code) = code {
            assert_eq!(out.status.code(), Some(*code), "rbdm {args:?}: {err}");
        }
        if err.starts_with("rbdm: ") {
            assert_eq!(err.lines().count(), 1, "rbdm {args:?}: one line: {err}");
        }
        assert_eq!(state(&env), before, "rbdm {args:?} changed something");
    }
    // The error line has rbd's shape.
    let out = env.fails(&["info", "nosuch"]);
    assert!(
        stderr(&out).starts_with("rbdm: error opening image nosuch: (2) No such file or directory"),
        "{}",
        stderr(&out)
    );
}
