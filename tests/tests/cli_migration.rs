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
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rbdm_tests::*;

const MIB: u64 = 1 << 20;
/// Ceph's `rbd create --size 1025M`.
const SIZE: u64 = 1025 * MIB;
/// Every write in these scenarios covers whole blocks of this size.
const BLOCK: u64 = 4096;
/// How much of an exported file is compared at a time.
const CHUNK: u64 = 4 * MIB;

/// Expected image contents: the fill byte of every written block; the rest reads as zeros.
#[derive(Clone)]
struct Model {
    size: u64,
    blocks: BTreeMap<u64, u8>,
}

/// `(offset, length, byte)`, block-aligned.
type Write = (u64, u64, u8);

impl Model {
    fn empty(size: u64) -> Self {
        Model {
            size,
            blocks: BTreeMap::new(),
        }
    }

    fn with(&self, writes: &[Write]) -> Self {
        let mut next = self.clone();
        for &(off, len, byte) in writes {
            assert!(off % BLOCK == 0 && len % BLOCK == 0 && off + len <= self.size);
            for b in off / BLOCK..(off + len) / BLOCK {
                next.blocks.insert(b, byte);
            }
        }
        next
    }

    /// The expected bytes of `[off, off + buf.len())`.
    fn fill(&self, off: u64, buf: &mut [u8]) {
        buf.fill(0);
        let end = off + buf.len() as u64;
        for (&b, &byte) in self.blocks.range(off / BLOCK..end.div_ceil(BLOCK)) {
            let from = (b * BLOCK).max(off);
            let to = ((b + 1) * BLOCK).min(end);
            buf[(from - off) as usize..(to - off) as usize].fill(byte);
        }
    }

    /// The first offset in `[from, to)` the model says is not zero.
    fn nonzero_in(&self, from: u64, to: u64) -> Option<u64> {
        self.blocks
            .range(from / BLOCK..to.div_ceil(BLOCK))
            .find(|(_, &byte)| byte != 0)
            .map(|(&b, _)| (b * BLOCK).max(from))
    }
}

/// Random writes for a client to make.
trait RandomWrites {
    fn writes(&mut self, count: usize, len: u64, size: u64, earlier: &[Write]) -> Vec<Write>;
}

impl RandomWrites for Rng {
    /// `count` writes of `len` bytes at distinct random `len`-aligned offsets (distinct, so
    /// their order in flight does not matter), each with its own non-zero byte; one in four
    /// rewrites a block of `earlier` (random picks alone would rarely hit one twice), and
    /// the last one lands in the image's final, partial object.
    fn writes(&mut self, count: usize, len: u64, size: u64, earlier: &[Write]) -> Vec<Write> {
        let slots = size / len;
        let tail_slots = MIB / len;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let slot = if out.len() + 1 == count {
                slots - 1 - self.next_u64() % tail_slots
            } else if !earlier.is_empty() && out.len() % 4 == 1 {
                earlier[(self.next_u64() % earlier.len() as u64) as usize].0 / len
            } else {
                self.next_u64() % slots
            };
            if seen.insert(slot) {
                out.push((slot * len, len, (self.next_u64() % 255 + 1) as u8));
            }
        }
        out
    }
}

/// `Ok` when the file at `path` holds exactly what `want` says. Holes are zeros by
/// definition, so only the file's data segments are read.
fn file_matches(path: &Path, want: &Model) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len != want.size {
        return Err(format!("{len} bytes, expected {}", want.size));
    }
    let (mut got, mut exp) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
    let mut pos = 0;
    while pos < len {
        let (data, hole) = next_data(&file, pos, len);
        if let Some(at) = want.nonzero_in(pos, data) {
            return Err(format!("a hole at byte {at}, where data was written"));
        }
        let mut off = data;
        while off < hole {
            let n = (CHUNK - off % CHUNK).min(hole - off) as usize;
            file.read_exact_at(&mut got[..n], off)
                .map_err(|e| format!("read at {off}: {e}"))?;
            want.fill(off, &mut exp[..n]);
            if got[..n] != exp[..n] {
                let i = (0..n).find(|&i| got[i] != exp[i]).unwrap_or(0);
                return Err(format!(
                    "first difference at byte {}: {:#04x}, expected {:#04x}",
                    off + i as u64,
                    got[i],
                    exp[i]
                ));
            }
            off += n as u64;
        }
        pos = hole;
    }
    Ok(())
}

/// The next data segment `[data, hole)` at or after `pos` (`(len, len)` when none is left).
/// Where the file system cannot tell, everything is data.
fn next_data(file: &File, pos: u64, len: u64) -> (u64, u64) {
    let fd = file.as_raw_fd();
    // SAFETY: lseek on a descriptor we own; it only moves the file offset.
    let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
    if data < 0 {
        let nxio = std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO);
        return if nxio { (len, len) } else { (pos, len) };
    }
    // SAFETY: as above.
    let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
    let hole = if hole < 0 {
        len
    } else {
        (hole as u64).min(len)
    };
    (data as u64, hole)
}

/// `qemu-img convert -f FROM -O TO SRC DST`.
fn convert(from: &str, to: &str, src: &str, dst: &str) {
    sh(&["qemu-img", "convert", "-f", from, "-O", to, src, dst]);
}

fn sh(args: &[&str]) {
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
fn qemu_io(format: &str, target: &str, writes: &[Write]) {
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
fn write_through_nbd(env: &Env, image: &str, writes: &[Write]) {
    let (server, uri) = env.nbd_export(image);
    qemu_io("raw", &uri, writes);
    server.stop();
}

/// The writes of Ceph's `create_base_image`, scaled: before snapshot 1, before 2, after 2.
struct Phases([Vec<Write>; 3]);

fn phases(seed: u64) -> Phases {
    let mut rng = Rng(seed);
    let first = rng.writes(2048, BLOCK, SIZE, &[]);
    let second = rng.writes(512, BLOCK, SIZE, &first);
    let third = rng.writes(1024, BLOCK, SIZE, &[first.as_slice(), &second].concat());
    Phases([first, second, third])
}

struct Base {
    env: Env,
    snap1: Model,
    snap2: Model,
    head: Model,
    phases: Phases,
    /// `rbdm export` of `base@1`, `base@2` and `base` (Ceph's `export_base_image`).
    files: [PathBuf; 3],
}

/// `base` with snapshots `1` and `2` and writes before and after each.
fn base() -> Base {
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

/// Exports `spec` and compares it with `want`.
fn check(env: &Env, spec: &str, want: &Model) {
    let p = env.path("check.raw");
    let _ = std::fs::remove_file(&p);
    env.ok(&["export", spec, p.to_str().unwrap()]);
    file_matches(&p, want).unwrap_or_else(|e| panic!("{spec}: {e}"));
}

fn check_all(env: &Env, dst: &str, expect: &[(&str, &Model)], stage: &str) {
    for (spec, want) in expect {
        let spec = spec.replace("DST", dst);
        check(env, &spec, want);
        eprintln!("{spec} {stage}: same bytes");
    }
}

fn prepare_from_file(env: &Env, source_spec: &str, dst: &str) {
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
    env.ok(&[
        "migration",
        "prepare",
        "--import-only",
        "--source-spec",
        source_spec,
        dst,
    ]);
    if abort_first.is_none() {
        check_all(env, dst, expect, "prepared");
    }
    env.ok(&["migration", "execute", dst]);
    check_all(env, dst, expect, "executed");
    env.ok(&["migration", "commit", dst]);
    check_all(env, dst, expect, "committed");
}

/// After an abort the destination is gone: neither listed nor openable.
fn assert_gone(env: &Env, image: &str) {
    let (pool_ns, name) = image.rsplit_once('/').unwrap_or(("rbd", image));
    let ls = env.ok(&["ls", pool_ns]);
    assert!(
        !ls.lines().any(|l| l.trim() == name),
        "{image} still listed after abort: {ls}"
    );
    env.fails(&["info", image]);
}

/// The base image and its snapshots still hold what they held.
fn base_intact(b: &Base) {
    check(&b.env, "base@1", &b.snap1);
    check(&b.env, "base@2", &b.snap2);
    check(&b.env, "base", &b.head);
}

fn file_spec(format: &str, path: &Path) -> String {
    format!(
        r#"{{"type":"{format}","stream":{{"type":"file","file_path":"{}"}}}}"#,
        path.display()
    )
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
    // The head of the source, whole history.
    let spec = r#"{"type":"native","pool_name":"rbd","image_name":"base"}"#;
    migrate(
        env,
        spec,
        "whole",
        &[("DST@1", &b.snap1), ("DST@2", &b.snap2), ("DST", &b.head)],
        None,
    );
    // A source in a namespace, into another namespace.
    env.ok(&["namespace", "create", "rbd/ns1"]);
    env.ok(&["namespace", "create", "rbd/ns2"]);
    env.ok(&["import", b.files[2].to_str().unwrap(), "rbd/ns1/base"]);
    let spec = r#"{"type":"native","pool_name":"rbd","pool_namespace":"ns1","image_name":"base"}"#;
    migrate(env, spec, "rbd/ns2/dst", &[("DST", &b.head)], None);
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
    let mut child = env
        .command(&[
            "migration",
            "prepare",
            "--import-only",
            "--source-spec-path",
            "-",
            "dst",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "prepare from stdin");
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
    env.ok(&[
        "migration",
        "prepare",
        "--import-only",
        "--source-spec",
        &spec,
        "aborted",
    ]);
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
            r#"{"type":"native","pool_name":"nopool","image_name":"base"}"#,
            2,
        ),
        (
            r#"{"type":"native","pool_name":"rbd","pool_id":1,"image_name":"base"}"#,
            74,
        ),
        (r#"{"type":"native","pool_name":"rbd"}"#, 74),
        (
            r#"{"type":"qcow","stream":{"type":"file","file_path":"/etc/hostname"}}"#,
            5,
        ),
        (r#"{"type":"qcow","stream":{"type":"file"}}"#, 74),
        (r#"{"type":"raw","stream":{"type":"nosuch"}}"#, 38),
        (
            r#"{"type":"raw","stream":{"type":"file","file_path":"/x"},"extra":1}"#,
            74,
        ),
        (r#"[]"#, 74),
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
