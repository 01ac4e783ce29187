//! Helpers every xtask command shares: the workspace root, running commands and timing them,
//! scratch directories, a child process that is stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}

/// Runs cargo in the workspace root, streaming its output; fails on a non-zero exit.
pub fn cargo(args: &[&str]) -> Result<()> {
    run(cargo_command().args(args).current_dir(root()))
}

/// Variables `cargo run` sets for xtask that describe xtask itself. A build script that
/// reads one (ring's reads `CARGO_MANIFEST_DIR`) is rerun whenever it differs from the last
/// build's, so passed on they made every `cargo xtask` rebuild ring and all above it twice.
const RUN_ONLY_VARS: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "OUT_DIR",
];

/// A command running the cargo that runs xtask (`CARGO`, so the same toolchain builds
/// everything), without the variables that describe the xtask package.
pub fn cargo_command() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_") || RUN_ONLY_VARS.contains(&k.as_ref()) {
            cmd.env_remove(k.as_ref());
        }
    }
    cmd
}

/// Runs a command, streaming its output; fails naming the command on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = show(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout; fails with its stderr on a non-zero exit.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = show(cmd);
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command quietly and returns how long it took.
pub fn timed(cmd: &mut Command) -> Result<Duration> {
    let start = Instant::now();
    output(cmd)?;
    Ok(start.elapsed())
}

pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.contains(' ') || a.is_empty() {
            s.push_str(&format!(" '{a}'"));
        } else {
            s.push(' ');
            s.push_str(&a);
        }
    }
    s
}

pub fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Builds the release `rbdm` binary and returns its path (under `CARGO_TARGET_DIR` when set,
/// where cargo put it).
pub fn release_rbdm() -> Result<PathBuf> {
    cargo(&["build", "--release", "-p", "rbdm-cli"])?;
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root().join(dir),
        _ => root().join("target"),
    };
    Ok(target.join("release/rbdm"))
}

/// A scratch directory under target/, emptied first.
pub fn scratch(name: &str) -> Result<PathBuf> {
    let dir = root().join("target/xtask").join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// A child process stopped with SIGTERM (SIGKILL after 10 s) when dropped, so a failing bench
/// leaves no server behind.
pub struct Guard(pub std::process::Child);

impl Guard {
    /// Sends SIGTERM and waits for the exit (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: signals a child we spawned and have not reaped, by its pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.stop();
        }
    }
}

/// Runs a command (stdout discarded); returns its wall time and the CPU time (user + system)
/// it used, which a machine shared with other work disturbs less than the wall time.
pub fn timed_cpu(cmd: &mut Command) -> Result<(Duration, Duration)> {
    let shown = show(cmd);
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    // Drained on a thread so a chatty child never blocks on a full pipe.
    let mut err = child.stderr.take().context("no stderr pipe")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut text);
        text
    });
    let pid = libc::pid_t::try_from(child.id()).context("child pid out of range")?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for the child just spawned; the pointers are to live locals.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    let _ = child.try_wait();
    let stderr = reader.join().unwrap_or_default();
    if rc != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{shown} failed (wait status {status})\n{stderr}");
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Ok((wall, tv(usage.ru_utime) + tv(usage.ru_stime)))
}

/// Runs a `qemu-img bench` command and returns the seconds it reports for its run.
pub fn qemu_bench_seconds(cmd: &mut Command) -> Result<f64> {
    let out = output(cmd)?;
    out.lines()
        .find_map(|l| {
            l.strip_prefix("Run completed in ")?
                .strip_suffix(" seconds.")?
                .parse::<f64>()
                .ok()
        })
        .with_context(|| format!("no 'Run completed in' line from {}:\n{out}", show(cmd)))
}

/// A raw file of `size` bytes (a multiple of 4 MiB), every byte written by `qemu-img bench`
/// with pattern 0x5a, so reads of it hit data.
pub fn full_raw(path: &Path, size: u64) -> Result<()> {
    output(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "raw"])
            .arg(path)
            .arg(size.to_string()),
    )?;
    let count = (size >> 22).to_string();
    output(
        Command::new("qemu-img")
            .args([
                "bench",
                "-f",
                "raw",
                "-w",
                "--pattern",
                "90",
                "-s",
                "4M",
                "-c",
                &count,
            ])
            .arg(path),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cargo sets these for a test as for `cargo run`: the inner cargo must not see them.
    #[test]
    fn inner_cargo_does_not_see_the_xtask_package() {
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let cmd = cargo_command();
        let removed: Vec<String> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        for k in ["CARGO_MANIFEST_DIR", "CARGO_PKG_NAME", "CARGO_PKG_VERSION"] {
            assert!(removed.iter().any(|r| r == k), "{k} kept: {removed:?}");
        }
        assert!(!removed.iter().any(|r| r == "CARGO_HOME" || r == "PATH"));
    }
}
