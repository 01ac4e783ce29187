//! Ceph's `create_base_image` of `qa/workunits/rbd/cli_migration.sh`, scaled for CI: a
//! 1025 MiB image (not a multiple of the 4 MiB object size, the list-snaps edge case Ceph's
//! script is after) with random 4 KiB writes made through a real NBD client, snapshot `1`,
//! more writes, snapshot `2`, more writes; its three exports; and the compare/abort steps
//! the migration scenarios share.
//!
//! Ceph writes 448 MiB of random 4 KiB blocks; we write 1/32 of that (2048, 512 and 1024
//! blocks, 14 MiB in all, a quarter of the later ones over earlier blocks), so the data
//! still lands in nearly every one of the 257 objects, always in the partial tail object,
//! while the images stay sparse.
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::sparse::{file_matches, Model, RandomWrites, Write, BLOCK, MIB};
use crate::{Env, Rng};

/// Ceph's `rbd create --size 1025M`.
pub const SIZE: u64 = 1025 * MIB;

/// `qemu-img convert -f FROM -O TO SRC DST`.
pub fn convert(from: &str, to: &str, src: &str, dst: &str) {
    sh(&["qemu-img", "convert", "-f", from, "-O", to, src, dst]);
}

pub fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Applies `writes` with qemu-io to `target`: a file one write after another (qcow2
/// allocation with thousands of writes in flight costs qemu-io minutes of CPU), an NBD URI
/// all in flight at once (one at a time waits a round trip and a flush each).
pub fn qemu_io(format: &str, target: &str, writes: &[Write]) {
    let (write, flush) = if target.starts_with("nbd") {
        ("aio_write", "aio_flush")
    } else {
        ("write", "flush")
    };
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", format]);
    for (off, len, byte) in writes {
        cmd.arg("-c")
            .arg(format!("{write} -q -P {byte} {off} {len}"));
    }
    let out = cmd.args(["-c", flush, target]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("failed"),
        "qemu-io on {target}: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes to an rbdm image as a client would: through `rbdm nbd export` and qemu-io.
pub fn write_through_nbd(env: &Env, image: &str, writes: &[Write]) {
    let (server, uri) = env.nbd_export(image);
    qemu_io("raw", &uri, writes);
    server.stop();
}

/// The writes of Ceph's `create_base_image`, scaled: before snapshot 1, before 2, after 2.
pub struct Phases(pub [Vec<Write>; 3]);

pub fn phases(seed: u64) -> Phases {
    let mut rng = Rng(seed);
    let first = rng.writes(2048, BLOCK, SIZE, &[]);
    let second = rng.writes(512, BLOCK, SIZE, &first);
    let third = rng.writes(1024, BLOCK, SIZE, &[first.as_slice(), &second].concat());
    Phases([first, second, third])
}

pub struct Base {
    pub env: Env,
    pub snap1: Model,
    pub snap2: Model,
    pub head: Model,
    pub phases: Phases,
    /// `rbdm export` of `base@1`, `base@2` and `base` (Ceph's `export_base_image`).
    pub files: [PathBuf; 3],
}

/// `base` with snapshots `1` and `2` and writes before and after each.
pub fn base() -> Base {
    let env = Env::new();
    let phases = phases(0x0c3f_1025);
    env.ok(&["create", "--size", "1025M", "base"]);
    let mut model = Model::empty(SIZE);
    let mut models = Vec::new();
    for (i, writes) in phases.0.iter().enumerate() {
        write_through_nbd(&env, "base", writes);
        model = model.with(writes);
        models.push(model.clone());
        if i < 2 {
            env.ok(&["snap", "create", &format!("base@{}", i + 1)]);
        }
    }
    let [snap1, snap2, head]: [Model; 3] = models.try_into().ok().unwrap();
    let files = [env.path("base@1"), env.path("base@2"), env.path("base")];
    for (file, want) in files.iter().zip([&snap1, &snap2, &head]) {
        let spec = file.file_name().unwrap().to_str().unwrap();
        env.ok(&["export", spec, file.to_str().unwrap()]);
        file_matches(file, want).unwrap_or_else(|e| panic!("{spec}: {e}"));
    }
    Base {
        env,
        snap1,
        snap2,
        head,
        phases,
        files,
    }
}

/// Ceph's three states as raw files written by qemu-io alone, rbdm not involved: the
/// sources QEMU serves in the nbd scenarios.
pub struct RawBase {
    pub snap1: Model,
    pub snap2: Model,
    pub head: Model,
    /// `img@1`, `img@2` and `img` in the environment's directory.
    pub files: [PathBuf; 3],
}

/// Writes the phases of [`phases`] into three sparse 1025 MiB raw files.
pub fn raw_base(env: &Env) -> RawBase {
    let phases = phases(0x0c3f_1025);
    let files = [env.path("img@1"), env.path("img@2"), env.path("img")];
    let mut models = Vec::new();
    for (i, file) in files.iter().enumerate() {
        crate::make_raw(file, SIZE, &[]);
        let mut model = Model::empty(SIZE);
        for writes in &phases.0[..=i] {
            qemu_io("raw", file.to_str().unwrap(), writes);
            model = model.with(writes);
        }
        models.push(model);
    }
    let [snap1, snap2, head]: [Model; 3] = models.try_into().ok().unwrap();
    RawBase {
        snap1,
        snap2,
        head,
        files,
    }
}

/// Exports `spec` and compares it with `want`.
pub fn check(env: &Env, spec: &str, want: &Model) {
    let p = env.path("check.raw");
    let _ = std::fs::remove_file(&p);
    env.ok(&["export", spec, p.to_str().unwrap()]);
    file_matches(&p, want).unwrap_or_else(|e| panic!("{spec}: {e}"));
}

pub fn check_all(env: &Env, dst: &str, expect: &[(&str, &Model)], stage: &str) {
    for (spec, want) in expect {
        let spec = spec.replace("DST", dst);
        check(env, &spec, want);
        eprintln!("{spec} {stage}: same bytes");
    }
}

/// `migration prepare --import-only --source-spec SPEC DST`, which must succeed.
pub fn prepare_from_spec(env: &Env, source_spec: &str, dst: &str) {
    env.ok(&[
        "migration",
        "prepare",
        "--import-only",
        "--source-spec",
        source_spec,
        dst,
    ]);
}

pub fn prepare_from_file(env: &Env, source_spec: &str, dst: &str) {
    let path = env.path("spec.json");
    std::fs::write(&path, source_spec).unwrap();
    env.ok(&[
        "migration",
        "prepare",
        "--import-only",
        "--source-spec-path",
        path.to_str().unwrap(),
        dst,
    ]);
}

/// `migration prepare --import-only --source-spec-path - DST`, the spec on stdin.
pub fn prepare_from_stdin(env: &Env, source_spec: &str, dst: &str) {
    use std::io::Write as _;
    let args = [
        "migration",
        "prepare",
        "--import-only",
        "--source-spec-path",
        "-",
        dst,
    ];
    let mut child = env
        .command(&args)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("rbdm runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(source_spec.as_bytes())
        .expect("write the spec");
    drop(stdin);
    assert!(
        child.wait().expect("wait").success(),
        "prepare from stdin: {source_spec}"
    );
}

/// After an abort the destination is gone: neither listed nor openable.
pub fn assert_gone(env: &Env, image: &str) {
    let (pool_ns, name) = image.rsplit_once('/').unwrap_or(("rbd", image));
    let ls = env.ok(&["ls", pool_ns]);
    assert!(
        !ls.lines().any(|l| l.trim() == name),
        "{image} still listed after abort: {ls}"
    );
    env.fails(&["info", image]);
}

/// The base image and its snapshots still hold what they held.
pub fn base_intact(b: &Base) {
    check(&b.env, "base@1", &b.snap1);
    check(&b.env, "base@2", &b.snap2);
    check(&b.env, "base", &b.head);
}

pub fn file_spec(format: &str, path: &Path) -> String {
    format!(
        r#"{{"type":"{format}","stream":{{"type":"file","file_path":"{}"}}}}"#,
        path.display()
    )
}
