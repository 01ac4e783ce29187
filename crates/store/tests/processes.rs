//! The `dir` store shared by real processes: SIGKILL in the middle of writes, watchers and
//! locks of a killed process, and a guarded counter raced by two processes.
//! The other process is `examples/store_child.rs`, built here on first use.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use rbdm_store::{dir::DirStore, Locator, ObjectStore, SnapContext, WriteOp, HEAD};

// Must match examples/store_child.rs.
const OBJECTS: u64 = 4;
const OBJ: u64 = 1 << 20;
const CHUNK: u64 = 64 << 10;

/// The child binary, built with the same cargo, profile and target directory as this test
/// (cargo does not hand tests the path of an example).
fn child_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps/<test>");
        let bin = profile_dir.join("examples").join("store_child");
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo.args([
            "build",
            "--quiet",
            "--example",
            "store_child",
            "--manifest-path",
        ]);
        cargo.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        if let Some(target) = profile_dir.parent() {
            cargo.env("CARGO_TARGET_DIR", target);
        }
        let status = cargo
            .status()
            .expect("run cargo build --example store_child");
        assert!(
            status.success() || bin.exists(),
            "building store_child failed"
        );
        bin
    })
}

fn spawn(root: &Path, job: &str, arg: &str) -> Child {
    Command::new(child_bin())
        .arg(root)
        .args([job, arg])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn store_child")
}

/// Waits for the child's first line of output.
fn first_line(child: &mut Child) -> String {
    let out = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .expect("read child output");
    assert!(!line.is_empty(), "child exited before it was ready");
    line.trim().to_string()
}

fn kill(mut child: Child) {
    child.kill().expect("SIGKILL child");
    // Reaped, so its /proc entry is gone as it is for any dead process.
    child.wait().expect("wait child");
}

/// Cheap per-run randomness for kill timing (the point is variety, not quality).
fn random_below(n: u64, salt: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (u64::from(nanos) ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % n
}

/// Every chunk holds one value; at head that value matches the omap record written in the
/// same op. Returns the head's version.
fn check_object(s: &DirStore, loc: &Locator) -> u64 {
    let ss = s.list_snaps(loc).expect("list_snaps");
    assert_eq!(ss.head_size, Some(OBJ), "{loc} head size");
    let omap = s.omap_get(loc, "", "c", usize::MAX).expect("omap");
    let versions = ss.clones.iter().map(|c| c.id).chain([HEAD]);
    for snap in versions {
        let data = s.read(loc, snap, 0, OBJ).expect("read");
        assert_eq!(data.len() as u64, OBJ, "{loc}@{snap} size");
        for (i, chunk) in data.chunks(CHUNK as usize).enumerate() {
            let v = chunk[0];
            assert!(v != 0, "{loc}@{snap} chunk {i} lost its data");
            assert!(
                chunk.iter().all(|b| *b == v),
                "{loc}@{snap} chunk {i} is torn"
            );
            if snap == HEAD {
                let recorded = omap
                    .iter()
                    .find(|(k, _)| *k == format!("c{i}"))
                    .map(|(_, v)| v.as_slice());
                assert_eq!(
                    recorded,
                    Some(&[v][..]),
                    "{loc} chunk {i}: data and omap from different ops"
                );
            }
        }
    }
    // Overlap claims must hold after recovery too.
    for (i, c) in ss.clones.iter().enumerate() {
        let mine = s.read(loc, c.id, 0, OBJ).expect("read clone");
        let next = s
            .read(loc, ss.clones.get(i + 1).map_or(HEAD, |n| n.id), 0, OBJ)
            .expect("read next");
        for &(o, l) in &c.overlap {
            assert_eq!(
                mine[o as usize..(o + l) as usize],
                next[o as usize..(o + l) as usize],
                "{loc} clone {} overlap",
                c.id
            );
        }
    }
    s.stat(loc, HEAD).expect("stat").version
}

fn data_files(root: &Path) -> usize {
    let subs = std::fs::read_dir(root.join("data")).expect("data dir");
    subs.flatten()
        .map(|d| std::fs::read_dir(d.path()).map_or(0, |e| e.count()))
        .sum()
}

#[test]
fn sigkill_during_writes_leaves_whole_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let mut last_version = 0;
    for round in 0..6u64 {
        let mut child = spawn(root, "writer", &(round + 1).to_string());
        assert_eq!(first_line(&mut child), "ready");
        std::thread::sleep(Duration::from_millis(20 + random_below(400, round)));
        kill(child);
        let s = DirStore::open(root).expect("reopen after SIGKILL");
        let pool = s.pool_id("rbd").expect("pool");
        let mut newest = 0;
        let mut clones = 0;
        for i in 0..OBJECTS {
            let loc = Locator::new(pool, "", &format!("obj{i}"));
            match s.stat(&loc, HEAD) {
                Ok(_) => newest = newest.max(check_object(&s, &loc)),
                Err(e) => assert!(e.is_no_object(), "{loc}: {e}"),
            }
            clones += s.list_snaps(&loc).map_or(0, |ss| ss.clones.len());
        }
        eprintln!("round {round}: newest version {newest}, {clones} clones");
        assert!(
            newest > last_version,
            "round {round}: the writer made progress"
        );
        last_version = newest;
        // The first registration after a crash (a writer's, here `client()`'s) sweeps the
        // dead writer's orphans: one file per version.
        s.client();
        let existing = (0..OBJECTS)
            .filter(|i| {
                s.stat(&Locator::new(pool, "", &format!("obj{i}")), HEAD)
                    .is_ok()
            })
            .count();
        assert_eq!(
            data_files(root),
            existing + clones,
            "round {round}: no orphaned data files"
        );
    }
}

#[test]
fn watchers_and_locks_of_a_killed_process_go_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = DirStore::open(dir.path()).expect("open");
    let loc = Locator::new(s.pool_id("rbd").expect("pool"), "", "rbd_header.abc");
    s.operate(&loc, &WriteOp::new().create(), &SnapContext::default())
        .expect("create");
    let mut child = spawn(dir.path(), "watch", "rbd_header.abc");
    let line = first_line(&mut child);
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let [cookie, client] = fields[..] else {
        panic!("unexpected child output {line:?}")
    };
    let watchers = s.list_watchers(&loc).expect("watchers");
    assert_eq!(watchers.len(), 1);
    assert_eq!(
        (
            watchers[0].cookie,
            watchers[0].client.id,
            watchers[0].client.pid
        ),
        (cookie, client, child.id())
    );
    let busy = s.lock(&loc, "rbd_lock", "parent", "", true);
    assert!(
        matches!(busy, Err(rbdm_store::Error::Busy(_))),
        "the child holds the lock: {busy:?}"
    );
    assert_eq!(
        s.list_lockers(&loc, "rbd_lock").expect("lockers")[0]
            .client
            .id,
        client
    );
    kill(child);
    assert!(
        s.list_watchers(&loc).expect("watchers").is_empty(),
        "a killed watcher is not listed"
    );
    assert!(
        s.list_lockers(&loc, "rbd_lock")
            .expect("lockers")
            .is_empty(),
        "a killed holder is not listed"
    );
    s.lock(&loc, "rbd_lock", "parent", "", true)
        .expect("the dead holder's lock is broken");
}

/// The children also race to create the store: nobody opened it before them.
#[test]
fn two_processes_never_lose_a_guarded_increment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("fresh");
    let per_child = 150;
    let children: Vec<Child> = (0..2)
        .map(|_| spawn(&root, "count", &per_child.to_string()))
        .collect();
    for mut c in children {
        assert!(c.wait().expect("wait").success(), "child failed");
    }
    let s = DirStore::open(&root).expect("open");
    assert_eq!(
        s.list_pools().expect("pools"),
        vec![(1, "rbd".to_string())],
        "one store was created, once"
    );
    let loc = Locator::new(1, "", "counter");
    let n = s
        .omap_get_keys(&loc, &["n"])
        .expect("counter")
        .remove("n")
        .expect("counter set");
    assert_eq!(n, (2 * per_child).to_string().into_bytes());
}

/// Processes that open one fresh store at the same moment all get it: none fails with
/// "database is locked" (SQLite's WAL switch does not wait for another's lock by itself).
#[test]
fn processes_creating_one_store_at_once_all_open_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    for round in 0..40 {
        let root = dir.path().join(format!("fresh{round}"));
        let children: Vec<Child> = (0..6).map(|_| spawn(&root, "count", "1")).collect();
        for mut c in children {
            assert!(
                c.wait().expect("wait").success(),
                "round {round}: a child failed"
            );
        }
        let s = DirStore::open(&root).expect("open");
        assert_eq!(s.list_pools().expect("pools"), vec![(1, "rbd".to_string())]);
    }
}
