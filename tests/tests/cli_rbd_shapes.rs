//! The CLI as an operator of Ceph's `rbd` sees it: `--format xml` read by `xmlstarlet` (as
//! Ceph's QA reads it) says what `--format json` says, advisory locks (`lock add|ls|rm`),
//! progress lines on a stderr that is no terminal, the destination pool of two-image
//! commands, and rbd's wording of a missing argument.
//!
//! (The managed lock of a writer in `lock ls` is checked in cli.rs, next to `status`.)
//! Expected shapes come from Ceph 16.2.15's `rbd` (captured in /work/prompts/ceph-outputs).
//! Needs `xmlstarlet` (.ci/install) and the binary (`cargo build -p rbdm-cli`).

use std::process::{Command, Stdio};

use rbdm_tests::*;
use serde_json::Value;

/// `xmlstarlet sel -t -v XPATH` over `xml`, one value a line.
fn xpaths(xml: &str, paths: &[String]) -> Vec<String> {
    let mut cmd = Command::new("xmlstarlet");
    cmd.args(["sel", "-T", "-t"]);
    for p in paths {
        cmd.args(["-v", p, "-n"]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("xmlstarlet runs (apt-get install xmlstarlet)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(xml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() || out.status.code() == Some(1),
        "xmlstarlet failed on {xml}: {}",
        stderr(&out)
    );
    stdout(&out).lines().map(str::to_string).collect()
}

/// For every leaf of `v` (JSON), the XPath of the same value in rbd's XML and the text it
/// must have; for every object and array, the count of its children.
fn expectations(v: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            out.push((format!("count({path}/*)"), m.len().to_string()));
            for (k, v) in m {
                expectations(v, &format!("{path}/{k}"), out);
            }
        }
        Value::Array(a) => {
            out.push((format!("count({path}/*)"), a.len().to_string()));
            for (i, v) in a.iter().enumerate() {
                expectations(v, &format!("{path}/*[{}]", i + 1), out);
            }
        }
        Value::String(s) => out.push((path.to_string(), s.clone())),
        Value::Null => out.push((path.to_string(), String::new())),
        other => out.push((path.to_string(), other.to_string())),
    }
}

/// Runs `args` in json and in xml (compact and pretty) and requires the XML, as xmlstarlet
/// reads it, to hold the JSON's every value under its key, below root element `root`.
fn xml_matches_json(env: &Env, args: &[&str], root: &str) {
    let json = env.json(args);
    let mut want = Vec::new();
    expectations(&json, &format!("/{root}"), &mut want);
    for pretty in [false, true] {
        let mut all = args.to_vec();
        all.extend(["--format", "xml"]);
        if pretty {
            all.push("--pretty-format");
        }
        let xml = env.ok(&all);
        assert!(
            !xml.starts_with("<?xml"),
            "rbd prints no declaration: {xml}"
        );
        let paths: Vec<String> = want.iter().map(|(p, _)| p.clone()).collect();
        let got = xpaths(&xml, &paths);
        let want_values: Vec<&str> = want.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(
            got, want_values,
            "rbdm {all:?}:\n{xml}\njson: {json}\npaths: {paths:?}"
        );
    }
}

/// An image with data, snapshots `s1` (protected) and `2`, a clone, metadata that needs
/// escaping, a namespace, a trashed image and a lock.
fn populated() -> Env {
    let env = Env::new();
    env.ok(&["pool", "create", "cli"]);
    env.ok(&["create", "-s", "8M", "img"]);
    env.bench_write("img", "64K", "1M");
    env.ok(&["snap", "create", "img@s1"]);
    env.ok(&["snap", "create", "img@2"]);
    env.ok(&["snap", "protect", "img@s1"]);
    env.ok(&["clone", "img@s1", "kid"]);
    env.ok(&["image-meta", "set", "img", "k1", "v<1>&\"x\"/'y'"]);
    env.ok(&["image-meta", "set", "img", "k2", "plain"]);
    env.ok(&["namespace", "create", "rbd/ns1"]);
    env.ok(&["create", "-s", "4M", "gone"]);
    env.ok(&["trash", "mv", "gone"]);
    env.ok(&["config-key", "set", "a/b", "c"]);
    env.ok(&["lock", "add", "img", "fence"]);
    env
}

#[test]
fn xml_says_what_json_says() {
    let env = populated();
    let listings: [(&[&str], &str); 17] = [
        (&["ls"], "images"),
        (&["ls", "-l"], "images"),
        (&["info", "img"], "image"),
        (&["info", "img@s1"], "image"),
        (&["info", "kid"], "image"),
        (&["snap", "ls", "img"], "snapshots"),
        (&["du"], "stats"),
        (&["du", "img"], "stats"),
        (&["diff", "img"], "extents"),
        (&["trash", "ls"], "trash"),
        (&["trash", "ls", "-l"], "trash"),
        (&["children", "img@s1"], "children"),
        (&["image-meta", "list", "img"], "metadatas"),
        (&["pool", "ls"], "pools"),
        (&["namespace", "ls"], "namespaces"),
        (&["config-key", "ls"], "keys"),
        (&["lock", "ls", "img"], "locks"),
    ];
    for (args, root) in listings {
        xml_matches_json(&env, args, root);
    }
    xml_matches_json(&env, &["status", "img"], "status");
}

#[test]
fn ceph_qa_reads_snapshot_ids_and_pool_ids_from_xml() {
    let env = populated();
    // cli_migration.sh: rbd snap ls IMAGE --format xml | xmlstarlet sel -t -v
    // "//snapshots/snapshot[name='2']/id"
    let xml = env.ok(&["snap", "ls", "img", "--format", "xml"]);
    let id = xpaths(&xml, &["//snapshots/snapshot[name='2']/id".into()]);
    let snaps = env.json(&["snap", "ls", "img"]);
    let want = snaps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "2")
        .unwrap()["id"]
        .to_string();
    assert_eq!(id, [want]);
    // As `ceph osd pool ls detail --format xml` names them.
    let xml = env.ok(&["pool", "ls", "--format", "xml"]);
    let ids = xpaths(
        &xml,
        &[
            "//pools/pool[pool_name='rbd']/pool_id".into(),
            "//pools/pool[pool_name='cli']/pool_id".into(),
        ],
    );
    assert_eq!(ids.len(), 2, "{xml}");
    assert_ne!(ids[0], ids[1]);
    assert!(ids.iter().all(|i| i.parse::<u64>().is_ok()), "{ids:?}");
}

#[test]
fn json_has_rbds_keys_in_rbds_order() {
    let env = populated();
    let info = env.json(&["info", "kid"]);
    assert_eq!(info["parent"]["trash"], Value::Bool(false));
    // A parent moved to the trash stays the parent; info says where it is, as rbd does.
    env.ok(&["create", "-s", "4M", "tp"]);
    env.ok(&["snap", "create", "tp@s"]);
    env.ok(&["snap", "protect", "tp@s"]);
    env.ok(&["clone", "tp@s", "tk"]);
    env.ok(&["trash", "mv", "tp"]);
    let tk = env.json(&["info", "tk"]);
    assert_eq!(tk["parent"]["trash"], Value::Bool(true), "{tk}");
    let id = tk["parent"]["id"].as_str().unwrap();
    let plain = env.ok(&["info", "tk"]);
    assert!(
        plain.contains(&format!("\tparent: rbd/tp@s (trash {id})\n")),
        "{plain}"
    );
    let du = env.json(&["du", "img"]);
    let rows = du["images"].as_array().unwrap();
    let snaps = env.json(&["snap", "ls", "img"]);
    for row in rows.iter().filter(|r| r.get("snapshot").is_some()) {
        let snap = snaps
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == row["snapshot"])
            .unwrap();
        assert_eq!(row["snapshot_id"], snap["id"], "{row}");
    }
    // Key order as Ceph 16.2.15 prints `ls -l --format json` (text, since order matters).
    let text = env.ok(&["ls", "-l", "--format", "json"]);
    let keys = |obj: &str| -> Vec<String> {
        let start = text.find(obj).unwrap();
        let end = start + text[start..].find("\"format\"").unwrap();
        text[start..end]
            .split(['{', ','])
            .filter_map(|p| {
                p.split_once("\":")
                    .map(|(k, _)| k.trim_matches('"').to_string())
            })
            .collect()
    };
    assert_eq!(
        keys("{\"image\":\"kid\""),
        [
            "image",
            "id",
            "size",
            "parent",
            "pool",
            "pool_namespace",
            "image",
            "snapshot"
        ]
    );
    assert_eq!(
        keys("{\"image\":\"img\",\"id\""),
        ["image", "id", "size"],
        "{text}"
    );
    assert!(
        text.contains("\"format\":2,\"lock_type\":\"exclusive\""),
        "{text}"
    );
}

fn fails_with(env: &Env, args: &[&str], code: i32, line: &str) {
    let out = env.fails(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "rbdm {args:?}: {}",
        stderr(&out)
    );
    assert_eq!(stderr(&out), format!("rbdm: {line}\n"), "rbdm {args:?}");
}

#[test]
fn advisory_locks_fence_as_rbd_lock() {
    let env = populated();
    // The lock outlives the `lock add` process, and excludes any other.
    let locks = env.json(&["lock", "ls", "img"]);
    let locker = locks[0]["locker"].as_str().unwrap().to_string();
    assert_eq!(locks[0]["id"], "fence");
    assert!(locker.starts_with("client."), "{locks}");
    let plain = env.ok(&["lock", "ls", "img"]);
    let lines: Vec<&str> = plain.lines().collect();
    assert_eq!(lines[0], "There is 1 exclusive lock on this image.");
    assert!(
        lines[1].starts_with("Locker ") && lines[1].contains("  ID  "),
        "{plain}"
    );
    assert!(
        lines[2].starts_with(&format!("{locker}  fence  ")),
        "{plain}"
    );
    // It fences writers: librbd's maintenance operations fail with EROFS there (its writes
    // wait for good); rbdm refuses both.
    let write = [
        "bench",
        "--io-type",
        "write",
        "--io-size",
        "4K",
        "--io-total",
        "4K",
        "img",
    ];
    let out = env.fails(&write);
    assert_eq!(out.status.code(), Some(30), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("fenced by lock 'fence'"),
        "{}",
        stderr(&out)
    );
    for change in [
        &["image-meta", "set", "img", "k3", "v"][..],
        &["snap", "create", "img@x"],
        &["rm", "img"],
    ] {
        let out = env.fails(change);
        assert_eq!(out.status.code(), Some(30), "{change:?}: {}", stderr(&out));
    }
    let busy = "lock is already held by someone else";
    fails_with(&env, &["lock", "add", "img", "fence"], 16, busy);
    fails_with(&env, &["lock", "add", "img", "other"], 16, busy);
    fails_with(
        &env,
        &["lock", "add", "--shared", "t", "img", "x"],
        16,
        busy,
    );
    // Shared locks share a tag.
    env.ok(&["lock", "add", "--shared", "tag1", "kid", "l1"]);
    env.ok(&["lock", "add", "--shared", "tag1", "kid", "l2"]);
    fails_with(
        &env,
        &["lock", "add", "--shared", "tag2", "kid", "l3"],
        16,
        "lock is already held by someone else with a different tag",
    );
    fails_with(&env, &["lock", "add", "kid", "l4"], 16, busy);
    fails_with(
        &env,
        &["lock", "add", "--shared", "", "kid", "l5"],
        22,
        "locking failed: (22) Invalid argument: shared lock tag is empty",
    );
    let plain = env.ok(&["lock", "ls", "kid"]);
    assert!(
        plain.starts_with("There are 2 shared locks on this image.\nLock tag: tag1\nLocker "),
        "{plain}"
    );
    let long = env.ok(&["ls", "-l"]);
    let kid_row = long.lines().find(|l| l.starts_with("kid ")).unwrap();
    assert!(kid_row.trim_end().ends_with("shr"), "{long}");
    // Removal names the lock and its locker.
    let out = env.fails(&["lock", "rm", "img", "fence", "notaclient"]);
    assert_eq!(out.status.code(), Some(22), "{}", stderr(&out));
    let out = env.fails(&["lock", "rm", "img", "fence", "client.999999"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).starts_with("rbdm: releasing lock failed: (2) No such file"));
    env.ok(&["lock", "rm", "img", "fence", &locker]);
    assert_eq!(env.ok(&["lock", "ls", "img"]), "");
    env.ok(&write);
    assert_eq!(env.json(&["lock", "ls", "img"]), serde_json::json!([]));
    fails_with(
        &env,
        &["lock", "rm", "img", "fence", &locker],
        2,
        &format!(
        "releasing lock failed: (2) No such file or directory: no lock 'fence' held by {locker}"
    ),
    );
    // Locks are not image data: metadata and info still read the header.
    assert_eq!(env.json(&["image-meta", "list", "img"])["k2"], "plain");
    env.ok(&["lock", "add", "img", "again"]);
    assert_eq!(env.json(&["info", "img"])["name"], "img");
}

#[test]
fn progress_lines_on_a_pipe_as_rbd() {
    let env = Env::new();
    env.ok(&["create", "-s", "16M", "--object-size", "1M", "p"]);
    env.bench_write("p", "1M", "16M");
    env.ok(&["snap", "create", "p@s"]);
    env.ok(&["snap", "protect", "p@s"]);
    env.ok(&["clone", "p@s", "c"]);
    let file = env.path("p.raw");
    let file = file.to_str().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["export", "p", file], "Exporting image"),
        (&["export", "p", "-"], "Exporting image"),
        (&["import", file, "q"], "Importing image"),
        (&["snap", "rollback", "p@s"], "Rolling back to snapshot"),
        (&["flatten", "c"], "Image flatten"),
        (&["rm", "q"], "Removing image"),
    ];
    for (args, label) in cases {
        let out = env.rbdm(args); // stderr is a pipe here, not a terminal
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.ends_with(&format!("\r{label}: 100% complete...done.\n")),
            "{args:?}: {err:?}"
        );
        // Every update is `\r<label>: N% complete...` with N growing, none at 0%.
        let mut last = 0;
        for part in err.trim_end().split('\r').filter(|p| !p.is_empty()) {
            let rest = part
                .strip_prefix(&format!("{label}: "))
                .unwrap_or_else(|| panic!("{err:?}"));
            let pc: u64 = rest.split('%').next().unwrap().parse().unwrap();
            assert!(
                pc > last || (pc == 100 && rest.ends_with("done.")),
                "{err:?}"
            );
            last = pc;
        }
    }
    let mut quiet = vec!["--no-progress"];
    quiet.extend(["export", "p", "-"]);
    let out = env.rbdm(&quiet);
    assert!(out.status.success());
    assert_eq!(stderr(&out), "");
}

#[test]
fn two_image_commands_place_the_second_as_rbd() {
    let env = Env::new();
    env.ok(&["pool", "create", "cli"]);
    env.ok(&["create", "-s", "4M", "cli/c1"]);
    env.ok(&["snap", "create", "cli/c1@s1"]);
    env.ok(&["snap", "protect", "cli/c1@s1"]);
    // -p names the parent's pool only; the child goes to the default pool...
    env.ok(&["-p", "cli", "clone", "c1@s1", "c2"]);
    assert_eq!(env.ok(&["ls", "rbd"]), "c2\n");
    assert_eq!(env.ok(&["ls", "cli"]), "c1\n");
    // ...unless --dest-pool names another.
    env.ok(&["-p", "cli", "--dest-pool", "cli", "clone", "c1@s1", "c3"]);
    assert_eq!(env.ok(&["ls", "cli"]), "c1\nc3\n");
    // rename keeps the source's pool for the new name.
    env.ok(&["-p", "cli", "rename", "c3", "c4"]);
    assert_eq!(env.ok(&["ls", "cli"]), "c1\nc4\n");
}

#[test]
fn missing_arguments_worded_as_rbd() {
    let env = Env::new();
    env.ok(&["create", "-s", "4M", "img"]);
    env.ok(&["snap", "create", "img@s"]);
    let cases: [(&[&str], &str); 18] = [
        (
            &["snap", "rename", "img@s"],
            "destination image name was not specified",
        ),
        (&["trash", "rm"], "image id was not specified"),
        (
            &["image-meta", "get", "img"],
            "metadata key was not specified",
        ),
        (&["namespace", "create"], "namespace name was not specified"),
        (&["info"], "image name was not specified"),
        (&["rm"], "image name was not specified"),
        (&["snap", "create"], "image name was not specified"),
        (&["snap", "ls"], "image name was not specified"),
        (&["flatten"], "image name was not specified"),
        (&["resize", "-s", "1G"], "image name was not specified"),
        (&["create", "-s", "1M"], "image name was not specified"),
        (
            &["clone", "img@s"],
            "destination image name was not specified",
        ),
        (
            &["rename", "img"],
            "destination image name was not specified",
        ),
        (&["export", "img"], "path was not specified"),
        (
            &["image-meta", "set", "img"],
            "metadata key was not specified",
        ),
        (&["create", "x"], "must specify --size <M/G/T>"),
        (&["lock", "add", "img"], "lock id was not specified"),
        (&["lock", "rm", "img", "id"], "locker was not specified"),
    ];
    for (args, line) in cases {
        fails_with(&env, args, 22, line);
    }
    fails_with(
        &env,
        &["snap", "create", "img"],
        22,
        "snapshot name was not specified",
    );
    fails_with(
        &env,
        &["clone", "img", "x"],
        22,
        "snapshot name was not specified",
    );
}
