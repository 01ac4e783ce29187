//! The embedded store's hygiene through the `rbdm` binary (issue 13, points 11–13): a private
//! store whatever the umask, reads on a full disk, a lost database is an error, and damaged
//! data or metadata is reported (EIO), never returned as data. Build the binary first:
//! `cargo build -p rbdm-cli`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rbdm_tests::*;

const MIB: u64 = 1 << 20;

/// The umask most users have: files 0644 and directories 0755 unless the store says otherwise.
fn usual_umask() {
    // SAFETY: umask only sets the process's file mode mask; it cannot fail.
    unsafe { libc::umask(0o022) };
}

fn store_root(env: &Env) -> PathBuf {
    PathBuf::from(env.store.trim_start_matches("dir://"))
}

/// Every path under `root` (itself included) with its permission bits.
fn modes(root: &Path) -> Vec<(PathBuf, u32, bool)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p).expect("stat");
        out.push((p.clone(), m.permissions().mode() & 0o7777, m.is_dir()));
        if m.is_dir() {
            for e in std::fs::read_dir(&p).expect("read dir") {
                todo.push(e.expect("entry").path());
            }
        }
    }
    out
}

#[test]
fn store_is_private_at_umask_022() {
    usual_umask();
    let env = Env::new();
    let raw = env.path("disk.raw");
    make_raw(&raw, 8 * MIB, &[(0, 3 * MIB, 0x5a)]);
    env.ok(&["import", raw.to_str().unwrap(), "img"]);
    env.ok(&["config-key", "set", "s3/secret", "hunter2"]);
    env.ok(&["snap", "create", "img@s1"]);
    // A process that keeps the store open, so the WAL and shared-memory files exist.
    let (server, _uri) = env.nbd_export("img");
    let all = modes(&store_root(&env));
    drop(server);
    let names: Vec<String> = all
        .iter()
        .map(|(p, _, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "meta.sqlite",
        "meta.sqlite-wal",
        "meta.sqlite-shm",
        "data",
        "locks",
    ] {
        assert!(names.iter().any(|n| n == want), "no {want} in the store");
    }
    let files = all.iter().filter(|(_, _, dir)| !dir).count();
    assert!(files > 5, "only {files} files: the check saw too little");
    let wrong: Vec<String> = all
        .iter()
        .filter(|(_, mode, dir)| *mode != if *dir { 0o700 } else { 0o600 })
        .map(|(p, mode, _)| format!("{} {mode:o}", p.display()))
        .collect();
    assert!(wrong.is_empty(), "not private: {wrong:?}");
}

#[test]
fn a_lost_database_is_an_error_not_an_empty_store() {
    let env = Env::new();
    let raw = env.path("disk.raw");
    make_raw(&raw, 4 * MIB, &[(0, MIB, 0x11)]);
    env.ok(&["import", raw.to_str().unwrap(), "img"]);
    let root = store_root(&env);
    for name in ["meta.sqlite", "meta.sqlite-wal", "meta.sqlite-shm"] {
        let _ = std::fs::remove_file(root.join(name));
    }
    for args in [
        &["ls"][..],
        &["create", "--size", "1M", "new"],
        &["pool", "ls"],
    ] {
        let out = env.fails(args);
        assert_eq!(out.status.code(), Some(libc::EIO), "rbdm {args:?}");
        let err = stderr(&out);
        assert!(err.contains("meta.sqlite"), "rbdm {args:?}: {err}");
    }
    assert!(
        !root.join("meta.sqlite").exists(),
        "a failed open made a new database"
    );

    // An emptied database (say, truncated) over object files is the same loss.
    std::fs::write(root.join("meta.sqlite"), b"").expect("truncate");
    let out = env.fails(&["ls"]);
    assert_eq!(out.status.code(), Some(libc::EIO));
    assert!(stderr(&out).contains("object files"), "{}", stderr(&out));

    // A root that does not exist, or is empty, is a new store.
    let fresh = Env::new();
    assert_eq!(fresh.ok(&["ls"]), "");
    let empty = Env::new();
    std::fs::create_dir_all(store_root(&empty)).expect("mkdir");
    empty.ok(&["create", "--size", "1M", "a"]);
    assert_eq!(empty.ok(&["ls"]).trim(), "a");
}

/// A tmpfs of `size` bytes mounted on a fresh directory, unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: u64) -> Option<SmallFs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallFs { dir })
    }

    /// Fills the file system up: writes until ENOSPC.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.dir.path().join("filler")).expect("filler");
        let block = vec![0xffu8; 64 << 10];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                    break;
                }
            }
        }
        let mut small = vec![0u8; 512];
        while f.write(&small).is_ok_and(|n| n > 0) {}
        small.clear();
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn reads_work_on_a_full_disk_and_writes_fail_enospc() {
    let Some(fs) = SmallFs::mount(24 * MIB) else {
        eprintln!("skipped: cannot mount a tmpfs (not root?)");
        return;
    };
    let mut env = Env::new();
    env.store = format!("dir://{}", fs.dir.path().join("store").display());
    let size = 8 * MIB;
    let writes = [(0, 3 * MIB, 0x21), (5 * MIB + 4096, MIB, 0x42)];
    let raw = env.path("disk.raw");
    make_raw(&raw, size, &writes);
    env.ok(&["import", raw.to_str().unwrap(), "img"]);
    env.ok(&["snap", "create", "img@s1"]);
    fs.fill();

    assert_eq!(env.ok(&["ls"]).trim(), "img");
    assert!(env.ok(&["info", "img"]).contains("size 8 MiB"));
    assert!(env.ok(&["snap", "ls", "img"]).contains("s1"));
    let out = env.path("out.raw");
    env.ok(&["export", "img", out.to_str().unwrap()]);
    file_is(&out, &raw_contents(size, &writes)).expect("head exports whole");
    std::fs::remove_file(&out).expect("rm");
    env.ok(&["export", "img@s1", out.to_str().unwrap()]);
    file_is(&out, &raw_contents(size, &writes)).expect("snapshot exports whole");

    let big = env.path("big.raw");
    make_raw(&big, 16 * MIB, &[(0, 16 * MIB, 0x77)]);
    let failed = env.fails(&["import", big.to_str().unwrap(), "img2"]);
    assert_eq!(
        failed.status.code(),
        Some(libc::ENOSPC),
        "{}",
        stderr(&failed)
    );

    // Room again: what was there is intact and the store takes writes.
    std::fs::remove_file(fs.dir.path().join("filler")).expect("rm filler");
    std::fs::remove_file(&out).expect("rm");
    env.ok(&["export", "img", out.to_str().unwrap()]);
    file_is(&out, &raw_contents(size, &writes)).expect("intact after ENOSPC");
    let _ = env.rbdm(&["rm", "img2"]);
    env.ok(&["create", "--size", "1M", "after"]);
}

fn flip_byte(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read");
    f.write_all_at(&[b[0] ^ 0x04], at).expect("write");
}

fn data_files(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = modes(&root.join("data"))
        .into_iter()
        .filter(|(_, _, dir)| !dir)
        .map(|(p, _, _)| p)
        .collect();
    out.sort();
    out
}

fn cp_a(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(ok.success());
}

/// Flipped bytes in object files and in `meta.sqlite` (issue 13, point 13): an export either
/// reads exactly what was written or fails; a damaged object file always fails it (EIO), and
/// `scrub` names the damage and exits EIO.
#[test]
fn damage_fails_reads_and_scrub_never_changes_exported_bytes() {
    let env = Env::new();
    let size = 16 * MIB;
    let writes = [(0, 5 * MIB, 0x31), (9 * MIB + 512, 3 * MIB, 0x62)];
    let raw = env.path("disk.raw");
    make_raw(&raw, size, &writes);
    env.ok(&["import", raw.to_str().unwrap(), "img"]);
    env.ok(&["snap", "create", "img@s1"]);
    env.ok(&["image-meta", "set", "img", "owner", "alice"]);
    let want = raw_contents(size, &writes);
    let scrub = env.ok(&["scrub", "rbd"]);
    assert!(scrub.contains(": 0 damaged"), "{scrub}");
    let root = store_root(&env);
    let pristine = env.path("pristine");
    cp_a(&root, &pristine);
    let out = env.path("out.raw");
    let mut rng = Rng(13);
    let (mut failed, mut same) = (0, 0);
    for trial in 0..40 {
        cp_a(&pristine, &root);
        let in_db = trial % 2 == 1;
        let target = if in_db {
            root.join("meta.sqlite")
        } else {
            let files = data_files(&root);
            files[rng.below(files.len() as u64) as usize].clone()
        };
        let len = std::fs::metadata(&target).expect("stat").len();
        let at = rng.below(len);
        flip_byte(&target, at);
        let _ = std::fs::remove_file(&out);
        let export = env.rbdm(&["export", "img", out.to_str().unwrap()]);
        let what = format!("trial {trial}: byte {at} of {}", target.display());
        if export.status.success() {
            file_is(&out, &want).unwrap_or_else(|e| panic!("{what}: exported changed bytes: {e}"));
            same += 1;
        } else {
            failed += 1;
            assert_eq!(
                export.status.code(),
                Some(libc::EIO),
                "{what}: {}",
                stderr(&export)
            );
        }
        // Scrub reads every object (also those export does not, such as the object map).
        let scrub = env.rbdm(&["scrub"]);
        if !in_db {
            assert_eq!(
                scrub.status.code(),
                Some(libc::EIO),
                "{what}: scrub {}",
                stdout(&scrub)
            );
            let name = target.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                stdout(&scrub).contains(&name),
                "{what}: scrub {}",
                stdout(&scrub)
            );
        } else if !export.status.success() {
            assert!(
                !scrub.status.success(),
                "{what}: export failed, scrub passed"
            );
        }
    }
    eprintln!("40 flips: {failed} failed (EIO), {same} exported unchanged");
}
