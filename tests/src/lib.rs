//! Helpers shared by the integration tests: a throwaway store, the built `rbdm` binary, raw
//! disk files made by QEMU's own tools, and file comparisons.
//!
//! What it is for: running real processes against a real `dir://` store. What it is not: no
//! assertions about rbdm's behaviour live here; each test states what it expects.
//!
//! The binary is not built by `cargo test -p rbdm-tests` (a test crate cannot depend on a
//! binary): run `cargo build -p rbdm-cli` first, with the same target dir and profile.

pub mod ceph_base;
pub mod qemu_nbd;
pub mod servers;
pub mod sparse;

/// Deterministic bytes that do not compress or repeat (xorshift), for test objects.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// `target/<profile>/rbdm`, next to the directory holding the test executable (`deps/`).
pub fn rbdm_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("rbdm"));
    match bin {
        Some(bin) if bin.exists() => bin,
        _ => panic!(
            "no rbdm binary next to {}: run `cargo build -p rbdm-cli` first",
            exe.display()
        ),
    }
}

/// Deterministic random numbers (xorshift64), so a failure can be replayed from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A child process, killed (SIGKILL) when dropped unless stopped first.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Killed {
    /// SIGTERM, as a user stops `rbdm nbd export`, and wait for a clean exit.
    pub fn stop(mut self) {
        // SAFETY: signals the child we spawned and still own.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let status = self.0.wait().expect("wait for the child");
        assert!(status.success(), "{:?} exited with {status}", self.0);
    }
}

/// A temporary directory holding a fresh store (`dir://<tmp>/store`) and scratch files.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub store: String,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = format!("dir://{}", dir.path().join("store").display());
        Env { dir, store }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A command for `rbdm args...` on this store (through `RBDM_STORE`, as a user would).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(rbdm_bin());
        cmd.args(args)
            .env("RBDM_STORE", &self.store)
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null());
        cmd
    }

    pub fn rbdm(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("rbdm runs")
    }

    pub fn rbdm_with_stdin(&self, args: &[&str], stdin: Stdio) -> Output {
        self.command(args).stdin(stdin).output().expect("rbdm runs")
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.rbdm(args);
        assert!(
            out.status.success(),
            "rbdm {args:?} failed ({:?}): {}",
            out.status.code(),
            stderr(&out)
        );
        stdout(&out)
    }

    /// Runs and requires failure; returns the output.
    pub fn fails(&self, args: &[&str]) -> Output {
        let out = self.rbdm(args);
        assert!(
            !out.status.success(),
            "rbdm {args:?} should have failed, printed: {}",
            stdout(&out)
        );
        out
    }

    /// Starts `rbdm nbd export IMAGE` on a free loopback port; returns it with the URI it
    /// prints once it listens.
    pub fn nbd_export(&self, image: &str) -> (Killed, String) {
        let mut child = self
            .command(&["nbd", "export", image, "--bind", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("rbdm nbd export starts");
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
        }
        (Killed(child), line.trim().to_string())
    }

    /// `rbdm bench --io-type write` on `image` (sequential, rbd's default pattern), which must
    /// succeed: the data of a test image, as Ceph's QA scripts write theirs.
    pub fn bench_write(&self, image: &str, io_size: &str, total: &str) {
        self.ok(&[
            "bench",
            "--io-type",
            "write",
            "--io-size",
            io_size,
            "--io-total",
            total,
            image,
        ]);
    }

    /// `rbdm bench --io-type write --io-pattern rand` on `image`, which must succeed.
    pub fn bench_rand(&self, image: &str, io_size: &str, total: &str) {
        self.ok(&[
            "bench",
            "--io-type",
            "write",
            "--io-pattern",
            "rand",
            "--io-size",
            io_size,
            "--io-total",
            total,
            image,
        ]);
    }

    /// Runs with `--format json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        let text = self.ok(&all);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("rbdm {all:?} printed bad JSON ({e}): {text}"))
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A sparse raw file of `size` bytes made by `qemu-img create -f raw`, with each
/// `(offset, len, byte)` written by `qemu-io -c 'write -P byte offset len'`.
pub fn make_raw(path: &Path, size: u64, writes: &[(u64, u64, u8)]) {
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(path)
        .arg(size.to_string()));
    if writes.is_empty() {
        return;
    }
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for (off, len, byte) in writes {
        cmd.arg("-c")
            .arg(format!("write -P {byte:#04x} {off} {len}"));
    }
    run(cmd.arg(path));
}

/// What `make_raw` leaves in a file, in memory.
pub fn raw_contents(size: u64, writes: &[(u64, u64, u8)]) -> Vec<u8> {
    let mut buf = vec![0u8; size as usize];
    for (off, len, byte) in writes {
        buf[*off as usize..(*off + *len) as usize].fill(*byte);
    }
    buf
}

/// Applies what `rbdm bench --io-type write --io-pattern seq` writes: IO block `i` of
/// `io_size` bytes holds `(i as u8) ^ 0x5a`, for `total / io_size` blocks from offset 0,
/// wrapping at the image size (which rewrites the same bytes).
pub fn apply_bench(buf: &mut [u8], io_size: u64, total: u64) {
    let blocks = (buf.len() as u64 / io_size).min(total / io_size);
    for i in 0..blocks {
        let start = (i * io_size) as usize;
        buf[start..start + io_size as usize].fill((i as u8) ^ 0x5a);
    }
}

/// `Ok` when both files hold the same bytes; else where they first differ.
pub fn files_equal(a: &Path, b: &Path) -> Result<(), String> {
    let (la, lb) = (len(a), len(b));
    if la != lb {
        return Err(format!(
            "{} is {la} bytes, {} is {lb}",
            a.display(),
            b.display()
        ));
    }
    let (mut fa, mut fb) = (open(a), open(b));
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut pos = 0u64;
    loop {
        let n = fa.read(&mut ba).expect("read");
        if n == 0 {
            return Ok(());
        }
        fb.read_exact(&mut bb[..n]).expect("read");
        // A slice compare (memcmp) first: a byte loop costs seconds a GiB in debug builds.
        if ba[..n] != bb[..n] {
            let i = (0..n).find(|&i| ba[i] != bb[i]).unwrap_or(0);
            return Err(format!("first difference at byte {}", pos + i as u64));
        }
        pos += n as u64;
    }
}

/// `Ok` when the file holds exactly `want`.
pub fn file_is(path: &Path, want: &[u8]) -> Result<(), String> {
    let got = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    bytes_equal(&got, want)
}

pub fn bytes_equal(got: &[u8], want: &[u8]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!("{} bytes, expected {}", got.len(), want.len()));
    }
    match got.iter().zip(want).position(|(a, b)| a != b) {
        Some(i) => Err(format!(
            "first difference at byte {i}: {:#04x}, expected {:#04x}",
            got[i], want[i]
        )),
        None => Ok(()),
    }
}

fn open(p: &Path) -> File {
    File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn len(p: &Path) -> u64 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .len()
}

/// Bytes the file system really allocated to the file (`st_blocks * 512`).
pub fn allocated_bytes(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .blocks()
        * 512
}
