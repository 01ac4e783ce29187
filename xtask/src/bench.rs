//! `cargo xtask bench`: every figure is a ratio against a peer measured in the same run on the
//! same disk, so numbers from different machines can be compared.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::util;

const BENCHES: &[&str] = &["image", "migration", "source"];

pub fn run(args: &[String]) -> Result<()> {
    let names: Vec<&str> = if args.is_empty() { BENCHES.to_vec() } else { args.iter().map(String::as_str).collect() };
    for n in &names {
        if !BENCHES.contains(n) {
            bail!("unknown bench {n:?}; known: {}", BENCHES.join(", "));
        }
    }
    let rbdm = util::release_rbdm()?;
    for n in names {
        match n {
            "image" => image(&rbdm)?,
            "migration" => crate::bench_migration::run(&rbdm)?,
            "source" => crate::bench_source::run(&rbdm)?,
            _ => unreachable!("checked above"),
        }
    }
    Ok(())
}

/// Issue 2: sequential write then read of a 1 GiB image through the image API (`rbdm bench`,
/// 4 MiB I/Os), against `dd` of a plain file with the same I/O size on the same disk.
fn image(rbdm: &Path) -> Result<()> {
    let dir = util::scratch("bench-image")?;
    let store = format!("dir://{}", dir.join("store").display());
    let plain = dir.join("plain.img");
    let rb = |args: &[&str]| -> Command {
        let mut c = Command::new(rbdm);
        c.env("RBDM_STORE", &store).args(args);
        c
    };
    util::output(&mut rb(&["create", "--size", "1G", "bench"]))?;

    let dd_write = util::timed(Command::new("dd").args([
        "if=/dev/zero",
        &format!("of={}", plain.display()),
        "bs=4M",
        "count=256",
        "conv=fdatasync",
    ]))?;
    let rb_write = util::timed(&mut rb(&[
        "bench", "--io-type", "write", "--io-size", "4M", "--io-threads", "1", "--io-total", "1G", "--io-pattern",
        "seq", "bench",
    ]))?;
    let dd_read =
        util::timed(Command::new("dd").args([&format!("if={}", plain.display()), "of=/dev/null", "bs=4M"]))?;
    let rb_read = util::timed(&mut rb(&[
        "bench", "--io-type", "read", "--io-size", "4M", "--io-threads", "1", "--io-total", "1G", "--io-pattern",
        "seq", "bench",
    ]))?;
    println!("\nbench image: 1 GiB sequential, 4 MiB I/Os, same disk, same run (target: within 1.5x of dd)");
    row("write", rb_write, dd_write);
    row("read", rb_read, dd_read);
    Ok(())
}

fn row(what: &str, ours: Duration, peer: Duration) {
    let gib_s = |d: Duration| 1.0 / d.as_secs_f64();
    println!(
        "  {what:<6} rbdm {:>6.2} s ({:>5.2} GiB/s)   dd {:>6.2} s ({:>5.2} GiB/s)   ratio {:.2}x",
        ours.as_secs_f64(),
        gib_s(ours),
        peer.as_secs_f64(),
        gib_s(peer),
        ours.as_secs_f64() / peer.as_secs_f64()
    );
}
