//! What `cargo xtask test` and `cargo xtask demo` need on the machine, checked before they
//! start: `.ci/install --check` holds the one list. When something is missing, root runs
//! `.ci/install` (the same script CI runs); anyone else is told the one command to run and
//! the task fails, so no test is ever skipped for want of a tool.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util;

/// Which task's needs: the demo's are a subset of the tests'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    Test,
    Demo,
}

impl Task {
    fn name(self) -> &'static str {
        match self {
            Task::Test => "test",
            Task::Demo => "demo",
        }
    }
}

/// What to do after a check.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Ready,
    Install,
    Refuse(String),
}

/// Directories where Debian puts servers (nginx is /usr/sbin/nginx), which a user's PATH
/// often lacks although the tests find their servers on PATH.
const SBIN: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// Makes sure everything `task` needs is there, installing it as root.
pub fn ensure(task: Task) -> Result<()> {
    add_sbin_to_path();
    let missing = check(task)?;
    match decide(task, &missing, is_root()) {
        Step::Ready => Ok(()),
        Step::Refuse(msg) => bail!("{msg}"),
        Step::Install => {
            println!("xtask: missing, installing as root with .ci/install:\n{missing}");
            util::run(script().arg(task.name())).context(".ci/install failed")?;
            let still = check(task)?;
            if !still.is_empty() {
                bail!(".ci/install ran, but these are still missing:\n{still}");
            }
            Ok(())
        }
    }
}

fn decide(task: Task, missing: &str, root: bool) -> Step {
    if missing.is_empty() {
        Step::Ready
    } else if root {
        Step::Install
    } else {
        Step::Refuse(format!(
            "`cargo xtask {}` needs what this machine lacks:\n{missing}\n\
             install it with (once):\n\n    sudo .ci/install\n",
            task.name()
        ))
    }
}

/// The `missing: ...` lines of `.ci/install --check`, empty when nothing is.
fn check(task: Task) -> Result<String> {
    let mut cmd = script();
    cmd.args(["--check", task.name()]);
    let shown = util::show(&cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    let text = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
    match out.status.code() {
        Some(0) => Ok(String::new()),
        Some(1) if !text.is_empty() => Ok(text),
        _ => bail!(
            "{shown} failed: {}\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn script() -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(util::root().join(".ci/install"));
    cmd
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Appends the sbin directories missing from PATH, for the check and for every test process
/// started after it.
fn add_sbin_to_path() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<_> = std::env::split_paths(&path).collect();
    for d in SBIN {
        if !dirs.iter().any(|p| p.as_os_str() == *d) && std::path::Path::new(d).is_dir() {
            dirs.push(d.into());
        }
    }
    if let Ok(joined) = std::env::join_paths(dirs) {
        // Still one thread here: xtask sets this before it starts anything.
        std::env::set_var("PATH", joined);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_missing_is_ready() {
        assert_eq!(decide(Task::Test, "", false), Step::Ready);
        assert_eq!(decide(Task::Demo, "", true), Step::Ready);
    }

    #[test]
    fn root_installs_others_are_told_the_command() {
        let missing = "missing: nginx (Debian package nginx-light)";
        assert_eq!(decide(Task::Test, missing, true), Step::Install);
        let Step::Refuse(msg) = decide(Task::Demo, missing, false) else {
            panic!("a user cannot install");
        };
        assert!(
            msg.contains("cargo xtask demo") && msg.contains(missing),
            "{msg}"
        );
        assert!(msg.contains("    sudo .ci/install\n"), "{msg}");
    }

    /// The script's check is the list: on this machine (set up by it) nothing is missing,
    /// and with a PATH holding only bash the demo's two QEMU tools are, one line each.
    #[test]
    fn the_install_script_checks_by_command() {
        assert_eq!(check(Task::Demo).unwrap(), "");
        let bin = tempfile::tempdir().unwrap();
        let bash = std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|d| d.join("bash"))
            .find(|p| p.is_file())
            .unwrap();
        std::os::unix::fs::symlink(bash, bin.path().join("bash")).unwrap();
        let out = script()
            .args(["--check", "demo"])
            .env("PATH", bin.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "missing: qemu-img (Debian package qemu-utils)",
                "missing: qemu-io (Debian package qemu-utils)"
            ]
        );
    }
}
