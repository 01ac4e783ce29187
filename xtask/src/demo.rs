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
    println!("# the store lives in {}; every command below takes --store {store}", dir.join("store").display());
    let r = Rbdm { bin: rbdm, store };

    r.run(&["import", "--object-size", "1M", path(&src), "rbd/demo"])?;
    r.run(&["info", "rbd/demo"])?;
    r.run(&["du", "rbd/demo"])?;
    r.run(&["snap", "create", "rbd/demo@before"])?;
    r.run(&["bench", "--io-type", "write", "--io-size", "64K", "--io-total", "4M", "--io-pattern", "seq", "rbd/demo"])?;
    r.run(&["snap", "ls", "rbd/demo"])?;
    r.run(&["diff", "--from-snap", "before", "rbd/demo"])?;
    let before = dir.join("before.raw");
    r.run(&["export", "rbd/demo@before", path(&before)])?;
    same_bytes(&src, &before)?;
    println!("# rbd/demo@before is byte-identical to {}", src.display());
    r.run(&["status", "rbd/demo"])?;
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
        util::run(Command::new(&self.bin).env("RBDM_STORE", &self.store).args(args))
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("scratch paths are UTF-8")
}

/// A 64 MiB raw disk with a few data regions and holes, made by QEMU's tools when present.
fn make_source(src: &Path) -> Result<()> {
    let writes = [(0, 0x11, MIB), (5 * MIB, 0x22, 3 * MIB), (40 * MIB + 4096, 0x33, 512 * 1024)];
    if util::have("qemu-io") {
        util::output(Command::new("qemu-img").args(["create", "-f", "raw", path(src), "64M"]))?;
        for (off, pat, len) in writes {
            util::output(Command::new("qemu-io").args(["-f", "raw", "-c", &format!("write -P {pat} {off} {len}"), path(src)]))?;
        }
        return Ok(());
    }
    let f = std::fs::File::create(src)?;
    f.set_len(64 * MIB)?;
    for (off, pat, len) in writes {
        std::os::unix::fs::FileExt::write_all_at(&f, &vec![pat as u8; len as usize], off)?;
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
            bail!("{} and {} differ near offset {off}", a.display(), b.display());
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
