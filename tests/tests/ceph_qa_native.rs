//! The `native` section of Ceph's newest `qa/workunits/rbd/cli_migration.sh`
//! (`test_import_native_format`), in our words, on the 1025 MiB base image of
//! `rbdm_tests::ceph_base`: what `cli_migration.rs` does not already cover.
//!
//! - The positional form `migration prepare --import-only rbd/base@2 DST`: a native source
//!   of that image and snapshot, compared at both snapshots right after prepare, aborted.
//! - The pool id taken as a script takes it (`pool ls --format json` and `--format xml`,
//!   read with xmlstarlet), in a spec with `"pool_namespace": ""`; prepare, compare, abort,
//!   prepare, execute, compare, abort (an executed native import aborted).
//! - Every spec Ceph expects to fail, each with librbd's errno (NativeFormat.cc), leaving no
//!   destination behind, and the snapshot id from `snap ls --format xml` as int and string.
//! - Namespaces to namespaces: a source in `rbd/ns1`, imported into `pool2/ns2` by spec and
//!   by the positional `rbd/ns1/src@s` form.
use rbdm_tests::ceph_base::*;
use rbdm_tests::qemu_nbd::xpath;
use rbdm_tests::sparse::Model;
use rbdm_tests::*;

const EINVAL: i32 = 22;
const ENOENT: i32 = 2;
/// What rbdm answers for JSON that does not parse (Ceph: "failed to parse source spec").
const EBADMSG: i32 = 74;

fn import_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["migration", "prepare", "--import-only"];
    all.extend_from_slice(args);
    all
}

fn prepare(env: &Env, args: &[&str]) {
    env.ok(&import_args(args));
}

fn prepare_fails(env: &Env, args: &[&str]) -> std::process::Output {
    env.fails(&import_args(args))
}

fn prepare_spec(env: &Env, spec: &str, dst: &str) {
    prepare(env, &["--source-spec", spec, dst]);
}

/// The id of pool `name` as a script reads it from a listing: in JSON, an object naming
/// the pool (`pool_name` as `ceph osd pool ls detail`, or `name`) with its id.
fn pool_id_from_json(list: &serde_json::Value, name: &str) -> Option<u64> {
    let pool = list.as_array()?.iter().find(|p| {
        p.get("pool_name")
            .or_else(|| p.get("name"))
            .and_then(|n| n.as_str())
            == Some(name)
    })?;
    pool.get("pool_id").or_else(|| pool.get("id"))?.as_u64()
}

/// The pool id from `pool ls --format json` and `--format xml`, which must agree.
fn pool_id(env: &Env, name: &str) -> u64 {
    let json = env.json(&["pool", "ls"]);
    let from_json = pool_id_from_json(&json, name)
        .unwrap_or_else(|| panic!("pool ls --format json names no id for {name}: {json}"));
    let xml = env.ok(&["pool", "ls", "--format", "xml"]);
    let path =
        format!("//pools/pool[pool_name='{name}' or name='{name}']/*[self::pool_id or self::id]");
    let from_xml = xpath(&xml, &path);
    assert_eq!(
        from_xml,
        from_json.to_string(),
        "pool ls --format xml disagrees with json: {xml}"
    );
    from_json
}

/// Ceph's `rbd snap ls IMAGE --format xml | xmlstarlet sel -t -v
/// "//snapshots/snapshot[name='2']/id"`.
fn snap_id_from_xml(env: &Env, image: &str, snap: &str) -> String {
    let xml = env.ok(&["snap", "ls", image, "--format", "xml"]);
    let id = xpath(&xml, &format!("//snapshots/snapshot[name='{snap}']/id"));
    let json = env.json(&["snap", "ls", image]);
    let from_json = json
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == snap))
        .map(|s| s["id"].to_string());
    assert_eq!(Some(&id), from_json.as_ref(), "snap ls xml vs json: {xml}");
    id
}

/// A prepare that must fail naming `cause` and leave the store as it was; its exit code
/// should be `errno`: a different one is returned, so one run lists every difference.
fn refused(env: &Env, what: &str, spec: &str, errno: i32, cause: &str) -> Option<String> {
    let before = env.ok(&["ls", "-l"]);
    let out = prepare_fails(env, &["--source-spec", spec, "refused"]);
    let err = stderr(&out);
    assert!(
        err.to_lowercase().contains(cause),
        "{what}: the error should say {cause:?}: {err}"
    );
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert_eq!(
        env.ok(&["ls", "-l"]),
        before,
        "{what} left something behind"
    );
    env.fails(&["info", "refused"]);
    (out.status.code() != Some(errno)).then(|| format!("{what}: want {errno}, {}", err.trim()))
}

#[test]
fn pool_id_snap_id_every_refused_native_spec_and_the_positional_source() {
    let b = base();
    let env = &b.env;
    let at_both = [("DST@1", &b.snap1), ("DST@2", &b.snap2), ("DST", &b.snap2)];

    // Ceph's spec file: the pool by the id a listing gives, an empty namespace.
    let id = pool_id(env, "rbd");
    let by_id =
        |rest: &str| format!(r#"{{"type":"native","pool_id":{id},"image_name":"base"{rest}}}"#);
    let spec = format!(
        r#"{{"type":"native","pool_id":{id},"pool_namespace":"","image_name":"base","snap_name":"2"}}"#
    );
    prepare_from_file(env, &spec, "by_id");
    check_all(env, "by_id", &at_both[..2], "prepared (pool id)");
    env.ok(&["migration", "abort", "by_id"]);
    assert_gone(env, "by_id");
    prepare_from_file(env, &spec, "by_id");
    env.ok(&["migration", "execute", "by_id"]);
    check_all(env, "by_id", &at_both[..2], "executed (pool id)");
    env.ok(&["migration", "abort", "by_id"]);
    assert_gone(env, "by_id");
    base_intact(&b);

    // The snapshot id as a script reads it, passed as an int and as a string.
    let snap_id = snap_id_from_xml(env, "base", "2");
    for spec in [
        by_id(&format!(r#","snap_id":{snap_id}"#)),
        by_id(&format!(r#","snap_id":"{snap_id}""#)),
    ] {
        prepare_spec(env, &spec, "by_snap_id");
        check(env, "by_snap_id@2", &b.snap2);
        env.ok(&["migration", "abort", "by_snap_id"]);
        assert_gone(env, "by_snap_id");
    }

    // Ceph's expect_false cases, with the errno librbd gives each.
    let cases = [
        ("no snapshot", by_id(""), EINVAL, "snapshot required"),
        (
            "invalid JSON",
            by_id(r#","snap_name":non-existing"#),
            EBADMSG,
            "json",
        ),
        (
            "unknown snap name",
            by_id(r#","snap_name":"non-existing""#),
            ENOENT,
            "non-existing",
        ),
        (
            "snap name a number",
            by_id(r#","snap_name":123456"#),
            EINVAL,
            "snap_name",
        ),
        (
            "unknown snap id",
            by_id(r#","snap_id":123456"#),
            ENOENT,
            "123456",
        ),
        (
            "unknown snap id, string",
            by_id(r#","snap_id":"123456""#),
            ENOENT,
            "123456",
        ),
        (
            "snap id not a number",
            by_id(r#","snap_id":"foobar""#),
            EINVAL,
            "snap_id",
        ),
        (
            "snap name and id",
            by_id(r#","snap_name":"2","snap_id":1"#),
            EINVAL,
            "snap",
        ),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|(what, spec, errno, cause)| refused(env, what, spec, *errno, cause))
        .collect();

    // `rbd migration prepare --import-only rbd/image1@2 image2`: the snapshot's history.
    prepare(env, &["rbd/base@2", "positional"]);
    check_all(env, "positional", &at_both, "prepared (positional)");
    env.ok(&["migration", "abort", "positional"]);
    assert_gone(env, "positional");
    // A positional source and a spec together are ambiguous.
    let spec = r#"{"type":"native","pool_name":"rbd","image_name":"base","snap_name":"2"}"#;
    let out = prepare_fails(env, &["--source-spec", spec, "rbd/base@2", "both"]);
    assert_eq!(out.status.code(), Some(EINVAL), "{}", stderr(&out));
    env.fails(&["info", "both"]);
    base_intact(&b);
    assert!(
        wrong.is_empty(),
        "errnos unlike librbd's:\n{}",
        wrong.join("\n")
    );
}

/// Imports `rbd/ns1/src@s` into `pool2/ns2/DST` twice, by a spec naming the namespace and by
/// the positional form, each through prepare, execute and commit.
#[test]
fn namespace_to_namespace() {
    let env = Env::new();
    let phases = phases(0x5eed_0a5e);
    env.ok(&["namespace", "create", "rbd/ns1"]);
    env.ok(&["pool", "create", "pool2"]);
    env.ok(&["namespace", "create", "pool2/ns2"]);
    env.ok(&["create", "--size", "1025M", "rbd/ns1/src"]);
    write_through_nbd(&env, "rbd/ns1/src", &phases.0[0]);
    env.ok(&["snap", "create", "rbd/ns1/src@s"]);
    let at_s = Model::empty(SIZE).with(&phases.0[0]);
    // Written after the snapshot: an import of `@s` must not see it.
    write_through_nbd(&env, "rbd/ns1/src", &phases.0[1]);
    let head = at_s.with(&phases.0[1]);

    let spec = r#"{"type":"native","pool_name":"rbd","pool_namespace":"ns1","image_name":"src","snap_name":"s"}"#;
    for (dst, how) in [
        ("pool2/ns2/by_spec", ["--source-spec", spec]),
        ("pool2/ns2/positional", ["rbd/ns1/src@s", ""]),
    ] {
        let mut args: Vec<&str> = how.iter().copied().filter(|a| !a.is_empty()).collect();
        args.push(dst);
        prepare(&env, &args);
        let expect = [("DST@s", &at_s), ("DST", &at_s)];
        check_all(&env, dst, &expect, "prepared");
        assert!(
            env.ok(&["ls", "pool2/ns2"])
                .lines()
                .any(|l| dst.ends_with(l.trim())),
            "{dst} not listed in pool2/ns2"
        );
        assert!(env.ok(&["ls"]).trim().is_empty(), "{dst} landed in rbd");
        env.ok(&["migration", "execute", dst]);
        env.ok(&["migration", "commit", dst]);
        check_all(&env, dst, &expect, "committed");
    }
    check(&env, "rbd/ns1/src", &head);
    check(&env, "rbd/ns1/src@s", &at_s);
}
