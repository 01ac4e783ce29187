//! Project automation, in plain Rust so it runs the same on every machine (rust-analyzer's
//! xtask pattern): `cargo xtask test | tidy | demo | bench | fuzz`.
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
mod needs;
mod tidy;
mod util;

use anyhow::{bail, Result};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test               check the machine has what the tests need (as root, install it with
                     .ci/install), tidy, build everything, run every test (unit, property,
                     integration) with 2 test threads (RUST_TEST_THREADS overrides), then
                     a short smoke run of each fuzz target
  tidy               the source rules (a //! line first, files up to 800 lines, a SAFETY
                     comment on each unsafe, forbid(unsafe_code) where there is none),
                     cargo fmt --check, cargo clippy -D warnings
  demo               a real session on the embedded store, printing each rbdm command
  bench [--vs-ceph] [NAME...]
                     benchmarks, as ratios against a peer measured in the same run
                     (names: image, migration, source, nbd, same-store, live-reads;
                     default: all); --vs-ceph also runs `rbd migration` on a throwaway
                     Ceph cluster (needs Debian's ceph-mon, ceph-osd, radosgw)
  fuzz [--seconds N] [TARGET...] | fuzz --smoke
                     run the cargo-fuzz targets (those in fuzz/Cargo.toml) for N seconds
                     each (default 60), printing libFuzzer's output; --smoke is the short
                     run `test` ends with, one line per target";

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
        "tidy" => tidy::run(),
        "demo" => {
            needs::ensure(needs::Task::Demo)?;
            demo::run()
        }
        "bench" => bench::run(rest),
        "fuzz" => fuzz::run(rest),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

/// Test threads per test binary (cargo runs the binaries one after another). Fixed, not the
/// machine's core count, so a run is the same everywhere: the suite is sized for CI's 2 cores,
/// where its integration tests (real servers, qemu, SIGKILLs) each keep a core busy.
const TEST_THREADS: &str = "2";

fn test(rest: &[String]) -> Result<()> {
    needs::ensure(needs::Task::Test)?;
    // Tidy first: a formatting slip or a lint fails in seconds (a minute or two for clippy on
    // a cold target), not after the suite.
    tidy::run()?;
    util::cargo(&["build", "--workspace", "--bins"])?;
    let mut args = vec!["test", "--workspace", "--no-fail-fast"];
    args.extend(rest.iter().map(String::as_str));
    let threads = std::env::var("RUST_TEST_THREADS").unwrap_or_else(|_| TEST_THREADS.into());
    println!("xtask: running the tests with RUST_TEST_THREADS={threads}");
    util::run(
        util::cargo_command()
            .args(&args)
            .current_dir(util::root())
            .env("RUST_TEST_THREADS", &threads),
    )?;
    fuzz::smoke()
}
