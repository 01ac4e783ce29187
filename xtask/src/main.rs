//! Project automation, in plain Rust so it runs the same on every machine (rust-analyzer's
//! xtask pattern): `cargo xtask test | demo | bench | fuzz`.
//!
//! What it is not: a build system. It calls cargo and the QEMU tools, and prints what it runs.

mod bench;
mod bench_live;
mod bench_migration;
mod bench_nbd_map;
mod bench_source;
mod ceph;
mod demo;
mod fuzz;
mod util;

use anyhow::{bail, Result};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test               build everything and run every test (unit, property, integration),
                     then a short smoke run of each fuzz target
  demo               a real session on the embedded store, printing each rbdm command
  bench [--vs-ceph] [NAME...]
                     benchmarks, as ratios against a peer measured in the same run
                     (names: image, migration, source, nbd, same-store, live-reads;
                     default: all); --vs-ceph also runs `rbd migration` on a throwaway
                     Ceph cluster (needs Debian's ceph-mon, ceph-osd, radosgw)
  fuzz [--seconds N] [TARGET...]
                     run the cargo-fuzz targets for N seconds each (default 60)";

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        println!("{USAGE}");
        return Ok(());
    };
    let rest = &args[1..];
    match cmd.as_str() {
        "test" => test(rest),
        "demo" => demo::run(),
        "bench" => bench::run(rest),
        "fuzz" => fuzz::run(rest),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

fn test(rest: &[String]) -> Result<()> {
    util::cargo(&["build", "--workspace", "--bins"])?;
    let mut args = vec!["test", "--workspace", "--no-fail-fast"];
    args.extend(rest.iter().map(String::as_str));
    util::cargo(&args)?;
    fuzz::smoke()
}
