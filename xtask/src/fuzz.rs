//! `cargo xtask fuzz`: coverage-guided fuzzing of every parser of untrusted bytes, with
//! cargo-fuzz on stable (`--sanitizer none`, see NOTES.md), and the short smoke run CI does.
//! The targets are the `[[bin]]` entries of fuzz/Cargo.toml: adding one there (as
//! `cargo fuzz add` does) adds it to both.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::util;

/// Seconds each target runs in the smoke that `cargo xtask test` ends with.
const SMOKE_SECONDS: u64 = 10;

/// Lines of a failed run's log shown on the terminal.
const TAIL_LINES: usize = 40;

pub fn run(args: &[String]) -> Result<()> {
    let mut seconds = 60;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--smoke" {
            return smoke();
        }
        if a == "--seconds" {
            let v = it.next().context("--seconds needs a number")?;
            seconds = v
                .parse()
                .with_context(|| format!("--seconds {v:?} is not a number"))?;
        } else {
            targets.push(a.clone());
        }
    }
    let known = list_targets()?;
    if let Some(t) = targets.iter().find(|t| !known.contains(t)) {
        bail!(
            "no fuzz target {t:?} in fuzz/Cargo.toml (targets: {})",
            known.join(", ")
        );
    }
    if targets.is_empty() {
        targets = known;
    }
    require_cargo_fuzz()?;
    for t in &targets {
        println!("xtask: fuzzing {t} for {seconds} s");
        util::run(&mut run_command(t, seconds)?)?;
    }
    Ok(())
}

/// The smoke run at the end of `cargo xtask test`: every target for a few seconds, one line
/// each; libFuzzer's own output goes to a log, whose tail is shown only when a target fails.
pub fn smoke() -> Result<()> {
    require_cargo_fuzz()?;
    let logs = util::root().join("target/xtask/fuzz");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let targets = list_targets()?;
    let start = Instant::now();
    quiet(
        fuzz_command().args(["build", "--sanitizer", "none"]),
        &logs.join("build.log"),
    )
    .context("fuzz smoke: building the targets failed")?;
    println!(
        "fuzz smoke: built {} targets in {:.1} s",
        targets.len(),
        start.elapsed().as_secs_f64()
    );
    for t in &targets {
        let log = logs.join(format!("{t}.log"));
        let start = Instant::now();
        let result = quiet(&mut run_command(t, SMOKE_SECONDS)?, &log);
        let secs = start.elapsed().as_secs_f64();
        let runs = std::fs::read_to_string(&log)
            .ok()
            .and_then(|text| runs_done(&text))
            .map_or_else(|| "?".to_string(), |n| n.to_string());
        let verdict = if result.is_ok() { "ok" } else { "FAILED" };
        println!("fuzz smoke: {t:<16} {runs:>10} runs {secs:>6.1} s  {verdict}");
        result.with_context(|| format!("fuzz smoke: target {t} failed"))?;
    }
    Ok(())
}

/// `cargo fuzz run` of one target for `seconds`, on its corpus and its seeds (when it has
/// any).
fn run_command(target: &str, seconds: u64) -> Result<Command> {
    let fuzz_dir = util::root().join("fuzz");
    let corpus = fuzz_dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus)
        .with_context(|| format!("cannot create {}", corpus.display()))?;
    let mut cmd = fuzz_command();
    cmd.args(["run", "--sanitizer", "none", target])
        .arg(&corpus);
    let seeds = fuzz_dir.join("seeds").join(target);
    if seeds.is_dir() {
        cmd.arg(seeds);
    }
    cmd.arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-rss_limit_mb=2048");
    Ok(cmd)
}

fn fuzz_command() -> Command {
    let mut cmd = util::cargo_command();
    cmd.current_dir(util::root().join("fuzz")).arg("fuzz");
    cmd
}

/// Runs `cmd` with its stdout and stderr in `log`; on failure prints the log's tail.
fn quiet(cmd: &mut Command, log: &Path) -> Result<()> {
    let shown = util::show(cmd);
    let file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let status = cmd
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    println!("--- last lines of {} ---", log.display());
    for l in &lines[lines.len().saturating_sub(TAIL_LINES)..] {
        println!("{l}");
    }
    println!("--- end of {} ---", log.display());
    bail!(
        "{shown} failed: {status} (full output in {})",
        log.display()
    )
}

/// The number of runs libFuzzer reports at the end (`Done 123 runs in 10 second(s)`).
fn runs_done(log: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix("Done ")?.split(' ').next()?.parse().ok())
}

/// A `[[bin]]` of fuzz/Cargo.toml: a fuzz target.
#[derive(Debug, PartialEq, Eq)]
pub struct Bin {
    pub name: String,
    /// Relative to fuzz/, as written.
    pub path: String,
    /// The line of its `[[bin]]` header.
    pub line: usize,
}

/// The `[[bin]]` entries of a cargo-fuzz manifest, read line by line: `cargo fuzz add`
/// writes each as a table of `key = "value"` lines, and the manifest keeps that shape.
pub fn bins(manifest: &str) -> Vec<Bin> {
    let mut out: Vec<Bin> = Vec::new();
    let mut in_bin = false;
    for (i, raw) in manifest.lines().enumerate() {
        let l = raw.trim();
        if l.starts_with('[') {
            in_bin = l == "[[bin]]";
            if in_bin {
                out.push(Bin {
                    name: String::new(),
                    path: String::new(),
                    line: i + 1,
                });
            }
            continue;
        }
        let Some((key, value)) = l.split_once('=') else {
            continue;
        };
        let Some(bin) = out.last_mut().filter(|_| in_bin) else {
            continue;
        };
        let value = value.trim().trim_matches('"').to_string();
        match key.trim() {
            "name" => bin.name = value,
            "path" => bin.path = value,
            _ => {}
        }
    }
    out
}

/// The fuzz targets: the `[[bin]]` entries of fuzz/Cargo.toml, sorted (tidy checks that
/// every file in fuzz/fuzz_targets has one).
fn list_targets() -> Result<Vec<String>> {
    let path = util::root().join("fuzz/Cargo.toml");
    let manifest = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut names: Vec<String> = bins(&manifest).into_iter().map(|b| b.name).collect();
    if names.is_empty() {
        bail!("{} has no [[bin]] entries: no fuzz targets", path.display());
    }
    names.sort();
    Ok(names)
}

fn require_cargo_fuzz() -> Result<()> {
    let ok = util::cargo_command()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        bail!(
            "cargo-fuzz is not installed: run `sudo .ci/install` (or `cargo install cargo-fuzz`)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_are_read_from_the_manifest() {
        let m = "[package]\nname = \"rbdm-fuzz\"\n\n[[bin]]\nname = \"a\"\npath = \"fuzz_targets/a.rs\"\n\
                 test = false\n\n[dependencies.x]\npath = \"../x\"\n\n[[bin]]\nname = \"b\"\n\
                 path = \"fuzz_targets/b.rs\"\n";
        let bins = bins(m);
        let got: Vec<(&str, &str, usize)> = bins
            .iter()
            .map(|b| (b.name.as_str(), b.path.as_str(), b.line))
            .collect();
        assert_eq!(
            got,
            [
                ("a", "fuzz_targets/a.rs", 4),
                ("b", "fuzz_targets/b.rs", 12)
            ]
        );
    }

    #[test]
    fn every_target_of_this_repository_is_found() {
        let names = list_targets().unwrap();
        for t in [
            "image_header",
            "nbd_reply",
            "object_map",
            "qcow_header",
            "qcow_read",
            "spec",
        ] {
            assert!(names.iter().any(|n| n == t), "{t} missing from {names:?}");
        }
    }

    #[test]
    fn runs_are_read_from_libfuzzers_last_line() {
        let log = "#2\tINITED cov: 5\n#1048576\tpulse  cov: 9\nDone 1234567 runs in 11 second(s)\n";
        assert_eq!(runs_done(log), Some(1234567));
        assert_eq!(runs_done("==1== ERROR: libFuzzer: deadly signal\n"), None);
    }
}
