//! `cargo xtask demo`: a real session on the embedded store, printing every `rbdm` command so a
//! user can repeat it by hand. It checks its own results: a mismatch fails the demo.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util;

const MIB: u64 = 1 << 20;

pub fn run() -> Result<()> {
    util::cargo(&["build", "-p", "rbdm-cli"])?;
    let rbdm = util::root().join("target/debug/rbdm");
    let dir = util::scratch("demo")?;
    let store = format!("dir://{}", dir.join("store").display());
    let src = dir.join("disk.raw");
    make_source(&src)?;
    println!(
        "# the store lives in {}; every command below runs with RBDM_STORE={store}",
        dir.join("store").display()
    );
    let r = Rbdm { bin: rbdm, store };

    println!("\n# 1. a source image with data and two snapshots");
    r.run(&["import", path(&src), "rbd/vm1"])?;
    r.run(&["snap", "create", "rbd/vm1@monday"])?;
    r.run(&[
        "bench",
        "--io-type",
        "write",
        "--io-size",
        "64K",
        "--io-total",
        "4M",
        "--io-pattern",
        "seq",
        "rbd/vm1",
    ])?;
    r.run(&["snap", "create", "rbd/vm1@tuesday"])?;
    let monday = dir.join("monday.raw");
    let tuesday = dir.join("tuesday.raw");
    r.run(&["export", "rbd/vm1@monday", path(&monday)])?;
    r.run(&["export", "rbd/vm1@tuesday", path(&tuesday)])?;
    r.run(&["pool", "create", "fast"])?;

    println!("\n# 2. live migration to another pool with 1 MiB objects");
    r.run(&[
        "migration",
        "prepare",
        "--object-size",
        "1M",
        "rbd/vm1",
        "fast/vm1",
    ])?;
    r.run(&["status", "fast/vm1"])?;
    r.run(&["trash", "ls", "--all", "rbd"])?;

    println!("\n# 3. a client uses the destination over NBD while execute copies");
    let mut server = r.spawn(&["nbd", "export", "fast/vm1", "--bind", "127.0.0.1:0"])?;
    let uri = server.uri()?;
    let mut exec = r.spawn(&[
        "migration",
        "execute",
        "--bandwidth-limit",
        "32M",
        "fast/vm1",
    ])?;
    for (off, pat) in [(60 * MIB, 0x71), (MIB / 2, 0x72)] {
        let cmds = [
            format!("write -P {pat} {off} 65536"),
            format!("read -P {pat} {off} 65536"),
        ];
        println!("$ qemu-io -f raw -c '{}' -c '{}' {uri}", cmds[0], cmds[1]);
        util::output(
            Command::new("qemu-io").args(["-f", "raw", "-c", &cmds[0], "-c", &cmds[1], &uri]),
        )?;
    }
    exec.wait_ok()?;
    server.stop()?;
    r.run(&["status", "fast/vm1"])?;

    println!("\n# 4. commit, then check every snapshot against the source's bytes");
    r.run(&["migration", "commit", "fast/vm1"])?;
    for (snap, want) in [("fast/vm1@monday", &monday), ("fast/vm1@tuesday", &tuesday)] {
        let got = dir.join("check.raw");
        let _ = std::fs::remove_file(&got);
        r.run(&["export", snap, path(&got)])?;
        same_bytes(want, &got)?;
        println!("# {snap} is byte-identical to the source's snapshot");
    }
    r.run(&["info", "fast/vm1"])?;
    r.run(&["du", "fast/vm1"])?;
    println!("demo: done");
    Ok(())
}

struct Rbdm {
    bin: PathBuf,
    store: String,
}

impl Rbdm {
    fn run(&self, args: &[&str]) -> Result<()> {
        println!("$ rbdm {}", args.join(" "));
        util::run(
            Command::new(&self.bin)
                .env("RBDM_STORE", &self.store)
                .args(args),
        )
    }

    /// Starts `rbdm` in the background, as a user would with `&`.
    fn spawn(&self, args: &[&str]) -> Result<Background> {
        println!("$ rbdm {} &", args.join(" "));
        let child = Command::new(&self.bin)
            .env("RBDM_STORE", &self.store)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start rbdm {}", args.join(" ")))?;
        Ok(Background(child))
    }
}

struct Background(std::process::Child);

impl Background {
    /// The first line the process prints (the NBD export's URI).
    fn uri(&mut self) -> Result<String> {
        use std::io::BufRead;
        let out = self.0.stdout.take().context("no stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line)?;
        Ok(line.trim().to_string())
    }
    fn wait_ok(&mut self) -> Result<()> {
        let st = self.0.wait()?;
        if !st.success() {
            bail!("background rbdm failed: {st}");
        }
        Ok(())
    }
    /// SIGTERM, as a user stops an export, and waits for the clean exit.
    fn stop(&mut self) -> Result<()> {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        self.wait_ok()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("scratch paths are UTF-8")
}

/// A 64 MiB raw disk with a few data regions and holes, made by QEMU's tools (the demo checks
/// for them before it starts).
fn make_source(src: &Path) -> Result<()> {
    let writes = [
        (0, 0x11, MIB),
        (5 * MIB, 0x22, 3 * MIB),
        (40 * MIB + 4096, 0x33, 512 * 1024),
    ];
    util::output(Command::new("qemu-img").args(["create", "-f", "raw", path(src), "64M"]))?;
    for (off, pat, len) in writes {
        util::output(Command::new("qemu-io").args([
            "-f",
            "raw",
            "-c",
            &format!("write -P {pat} {off} {len}"),
            path(src),
        ]))?;
    }
    Ok(())
}

fn same_bytes(a: &Path, b: &Path) -> Result<()> {
    let mut fa = std::fs::File::open(a).with_context(|| format!("open {}", a.display()))?;
    let mut fb = std::fs::File::open(b).with_context(|| format!("open {}", b.display()))?;
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut off = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            bail!(
                "{} and {} differ near offset {off}",
                a.display(),
                b.display()
            );
        }
        if na == 0 {
            return Ok(());
        }
        off += na as u64;
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        let k = f.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}
