//! `cargo xtask tidy`, as rust-analyzer's: the rules every source file keeps (a `//!` line
//! first, a length limit, a `// SAFETY:` comment on every `unsafe`, `#![forbid(unsafe_code)]`
//! in every crate without any, every fuzz target listed), then `cargo fmt --check` and
//! clippy with warnings denied. `cargo xtask test` runs it first.

mod lexer;
mod rules;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::{fuzz, util};
use rules::{Length, Problem};

/// Files over [`rules::MAX_LINES`] today, each with its line count as a ceiling it must not
/// grow past. A file that is split leaves this list (tidy fails until it does), so the list
/// only shrinks.
const LONG_FILES: &[(&str, usize)] = &[
    ("crates/image/src/image.rs", 1954),
    ("crates/store/src/conformance.rs", 1395),
    ("plugins/stream-nbd/src/client.rs", 900),
];

/// Where the workspace's Rust sources live.
const SOURCE_DIRS: &[&str] = &["crates", "plugins", "tests", "xtask", "fuzz"];

/// Directories of generated files, never sources.
const SKIPPED_DIRS: &[&str] = &["target", "corpus", "artifacts", "coverage"];

/// `cargo xtask tidy`: the file rules and formatting (seconds), then clippy (seconds when
/// the target is warm; a check build of the workspace when cold).
pub fn run() -> Result<()> {
    files()?;
    fmt()?;
    clippy()
}

/// The file rules over the whole workspace, printing warnings and problems.
fn files() -> Result<()> {
    let report = check(&util::root())?;
    for w in &report.warnings {
        println!("tidy: warning: {w}");
    }
    for p in &report.problems {
        println!("tidy: {p}");
    }
    if !report.problems.is_empty() {
        bail!("tidy: {} problem(s), listed above", report.problems.len());
    }
    println!(
        "tidy: {} source files keep the rules ({} long file(s) excepted)",
        report.files,
        LONG_FILES.len()
    );
    Ok(())
}

fn fmt() -> Result<()> {
    let fuzz_manifest = util::root().join("fuzz/Cargo.toml");
    let checks: [&[&str]; 2] = [
        &["fmt", "--all", "--check"],
        &[
            "fmt",
            "--manifest-path",
            path_str(&fuzz_manifest)?,
            "--check",
        ],
    ];
    for args in checks {
        util::cargo(args)
            .context("tidy: formatting differs (diff above): run `cargo fmt --all`")?;
    }
    Ok(())
}

/// Clippy on every target with warnings denied.
fn clippy() -> Result<()> {
    util::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
    .context("tidy: clippy found problems (listed above)")
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// What the file rules found.
#[derive(Debug, Default)]
pub struct Report {
    pub files: usize,
    pub problems: Vec<Problem>,
    pub warnings: Vec<String>,
}

/// Checks every source file under `root`.
pub fn check(root: &Path) -> Result<Report> {
    let mut report = Report::default();
    let mut seen_long = Vec::new();
    for file in sources(root)? {
        let rel = relative(root, &file);
        let text = read(&file)?;
        report.files += 1;
        report.problems.extend(rules::doc_line(&rel, &text));
        let tokens = lexer::tokens(&text);
        report
            .problems
            .extend(rules::safety_comments(&rel, &text, &tokens));
        if is_limited(&rel) {
            let ceiling = LONG_FILES.iter().find(|(p, _)| *p == rel).map(|e| e.1);
            if ceiling.is_some() {
                seen_long.push(rel.clone());
            }
            match rules::length(&rel, text.lines().count(), ceiling) {
                Length::Fine => {}
                Length::Warning(w) => report.warnings.push(w),
                Length::Problem(p) => report.problems.push(p),
            }
        }
    }
    for (path, _) in LONG_FILES
        .iter()
        .filter(|(p, _)| !seen_long.iter().any(|s| s == p))
    {
        report.problems.push(Problem {
            path: path.to_string(),
            line: 1,
            rule: "file-length",
            message: "listed in LONG_FILES but not found: remove it from the list".into(),
        });
    }
    report.problems.extend(forbid_unsafe(root)?);
    report.problems.extend(fuzz_targets_listed(root)?);
    Ok(report)
}

/// The length limit holds for library and binary sources, not for tests or tooling.
fn is_limited(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    parts.len() > 3 && matches!(parts[0], "crates" | "plugins") && parts[2] == "src"
}

/// Every package root (`src/lib.rs`, `src/main.rs`, `src/bin/*.rs`) of a package whose
/// `src` holds no `unsafe` forbids it.
fn forbid_unsafe(root: &Path) -> Result<Vec<Problem>> {
    let mut out = Vec::new();
    for pkg in packages(root)? {
        let src = pkg.join("src");
        let files = walk(&src)?;
        let mut any_unsafe = false;
        for f in &files {
            any_unsafe |= rules::has_unsafe(&lexer::tokens(&read(f)?));
        }
        if any_unsafe {
            continue;
        }
        for f in files.iter().filter(|f| is_crate_root(&src, f)) {
            out.extend(rules::forbids_unsafe(&relative(root, f), &read(f)?));
        }
    }
    Ok(out)
}

fn is_crate_root(src: &Path, file: &Path) -> bool {
    file == src.join("lib.rs")
        || file == src.join("main.rs")
        || file.parent() == Some(&src.join("bin"))
}

/// The workspace's packages: `crates/*`, `plugins/*`, `xtask`, `tests`.
fn packages(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![root.join("xtask"), root.join("tests")];
    for group in ["crates", "plugins"].map(|g| root.join(g)) {
        if !group.is_dir() {
            continue;
        }
        for e in list_dir(&group)? {
            if e.join("Cargo.toml").is_file() {
                out.push(e);
            }
        }
    }
    Ok(out)
}

/// A file in `fuzz/fuzz_targets` with no `[[bin]]` in `fuzz/Cargo.toml` would never run:
/// `cargo xtask fuzz` and the smoke find their targets there.
fn fuzz_targets_listed(root: &Path) -> Result<Vec<Problem>> {
    let manifest = read(&root.join("fuzz/Cargo.toml"))?;
    let bins = fuzz::bins(&manifest);
    let mut out = Vec::new();
    for f in list_dir(&root.join("fuzz/fuzz_targets"))? {
        let rel = relative(&root.join("fuzz"), &f);
        if !bins.iter().any(|b| b.path == rel) {
            out.push(Problem {
                path: format!("fuzz/{rel}"),
                line: 1,
                rule: "fuzz-target",
                message: "no [[bin]] in fuzz/Cargo.toml has this path: it is never fuzzed".into(),
            });
        }
    }
    for b in bins
        .iter()
        .filter(|b| !root.join("fuzz").join(&b.path).is_file())
    {
        out.push(Problem {
            path: "fuzz/Cargo.toml".into(),
            line: b.line,
            rule: "fuzz-target",
            message: format!(
                "[[bin]] {:?} names {:?}, which does not exist",
                b.name, b.path
            ),
        });
    }
    Ok(out)
}

/// Every `.rs` file under the source directories, sorted.
fn sources(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for d in SOURCE_DIRS {
        out.extend(walk(&root.join(d))?);
    }
    Ok(out)
}

/// `.rs` files under `dir`, skipping hidden and generated directories; none if it is absent.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    for p in list_dir(dir)? {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        if p.is_dir() {
            if !name.starts_with('.') && !SKIPPED_DIRS.contains(&name.as_ref()) {
                out.extend(walk(&p)?);
            }
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
    Ok(out)
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        out.push(
            e.with_context(|| format!("cannot list {}", dir.display()))?
                .path(),
        );
    }
    out.sort();
    Ok(out)
}

fn read(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
}

fn relative(root: &Path, p: &Path) -> String {
    let rel = p.strip_prefix(root).unwrap_or(p);
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules hold for this repository, so `cargo test` fails on a broken one as
    /// `cargo xtask tidy` does.
    #[test]
    fn this_repository_keeps_the_rules() {
        let report = check(&util::root()).unwrap();
        let problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
        assert!(
            problems.is_empty(),
            "tidy problems:\n{}",
            problems.join("\n")
        );
        assert!(report.files > 100, "only {} files found", report.files);
    }

    #[test]
    fn limited_paths() {
        assert!(is_limited("crates/image/src/image.rs"));
        assert!(is_limited("plugins/stream-nbd/src/a/b.rs"));
        assert!(!is_limited("crates/store/tests/processes.rs"));
        assert!(!is_limited("xtask/src/main.rs"));
        assert!(!is_limited("tests/src/lib.rs"));
    }

    #[test]
    fn a_broken_tree_is_reported_file_by_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let w = |rel: &str, text: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        w("crates/a/Cargo.toml", "");
        w("crates/a/src/lib.rs", "//! Safe.\nmod m;\n");
        w("crates/a/src/m.rs", "fn f() {}\n");
        w("crates/b/Cargo.toml", "");
        w(
            "crates/b/src/main.rs",
            "//! Unsafe.\nfn main() { unsafe { f() } }\n",
        );
        w(
            "crates/b/src/big.rs",
            &format!("//! Big.\n{}", "\n".repeat(rules::MAX_LINES)),
        );
        w("crates/a/target/debug/gen.rs", "no doc, generated\n");
        w("fuzz/Cargo.toml", "[[bin]]\nname = \"t\"\npath = \"fuzz_targets/t.rs\"\n\n[[bin]]\nname = \"gone\"\npath = \"fuzz_targets/gone.rs\"\n");
        w("fuzz/fuzz_targets/t.rs", "//! T.\n");
        w("fuzz/fuzz_targets/new.rs", "//! New.\n");
        let report = check(root).unwrap();
        let (stale, got): (Vec<String>, Vec<String>) = report
            .problems
            .iter()
            .map(|p| format!("{}:{} {}", p.path, p.line, p.rule))
            .partition(|g| LONG_FILES.iter().any(|(p, _)| g.starts_with(p)));
        // This tree has none of the excepted files, so every exception is stale.
        assert_eq!(stale.len(), LONG_FILES.len(), "{stale:#?}");
        let want = [
            "crates/a/src/m.rs:1 doc-line",
            "crates/b/src/big.rs:801 file-length",
            "crates/b/src/main.rs:2 safety-comment",
            "crates/a/src/lib.rs:1 forbid-unsafe",
            "fuzz/fuzz_targets/new.rs:1 fuzz-target",
            "fuzz/Cargo.toml:5 fuzz-target",
        ];
        assert_eq!(got, want);
    }
}
