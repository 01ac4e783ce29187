//! `cargo xtask fuzz`: coverage-guided fuzzing of every parser of untrusted bytes, with
//! cargo-fuzz on stable (`--sanitizer none`, see NOTES.md), and the short smoke run CI does.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util;

/// Seconds each target runs in the smoke that `cargo xtask test` ends with.
const SMOKE_SECONDS: u64 = 10;

pub fn run(args: &[String]) -> Result<()> {
    let mut seconds = 60;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--seconds" {
            let v = it.next().context("--seconds needs a number")?;
            seconds = v
                .parse()
                .with_context(|| format!("--seconds {v:?} is not a number"))?;
        } else {
            targets.push(a.clone());
        }
    }
    if targets.is_empty() {
        targets = list_targets()?;
    }
    require_cargo_fuzz()?;
    for t in &targets {
        run_target(t, seconds)?;
    }
    Ok(())
}

/// The smoke run at the end of `cargo xtask test`. CI installs cargo-fuzz, so there a missing
/// one is an error; on a developer's machine it is only skipped, saying how to install it.
pub fn smoke() -> Result<()> {
    if !has_cargo_fuzz() {
        if std::env::var_os("CI").is_some() {
            bail!("cargo-fuzz is not installed; .ci/run must install it");
        }
        eprintln!("xtask: fuzz smoke skipped: cargo-fuzz not installed (cargo install cargo-fuzz)");
        return Ok(());
    }
    for t in list_targets()? {
        run_target(&t, SMOKE_SECONDS)?;
    }
    Ok(())
}

fn run_target(target: &str, seconds: u64) -> Result<()> {
    let fuzz_dir = util::root().join("fuzz");
    let corpus = fuzz_dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    println!("xtask: fuzzing {target} for {seconds} s");
    util::run(
        Command::new("cargo")
            .current_dir(&fuzz_dir)
            .args(["fuzz", "run", "--sanitizer", "none", target])
            .arg(&corpus)
            .arg(fuzz_dir.join("seeds").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=2048"),
    )
}

/// Targets are the files in fuzz/fuzz_targets.
fn list_targets() -> Result<Vec<String>> {
    let dir = util::root().join("fuzz/fuzz_targets");
    let mut names = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "rs") {
            names.push(
                p.file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    names.sort();
    Ok(names)
}

fn has_cargo_fuzz() -> bool {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn require_cargo_fuzz() -> Result<()> {
    if !has_cargo_fuzz() {
        bail!("cargo-fuzz is not installed: cargo install cargo-fuzz");
    }
    Ok(())
}
