//! `cargo xtask bench migration`: import-only migration of NOTES.md's disk shape (1 GiB, 369
//! MiB allocated) from qcow2 and raw files, timed against `qemu-img convert -O raw` of the
//! same file in the same run, and printed beside Ceph Pacific's figures from NOTES.md.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::util;

const MIB: u64 = 1 << 20;

/// 369 one-MiB extents spread over 1 GiB (a fixed pseudo-random choice, so runs compare).
fn extents() -> Vec<u64> {
    let mut slots: Vec<u64> = (0..1024).collect();
    let mut x: u64 = 0x9e37_79b9;
    for i in (1..slots.len()).rev() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        slots.swap(i, (x >> 33) as usize % (i + 1));
    }
    let mut chosen = slots[..369].to_vec();
    chosen.sort_unstable();
    chosen
}

fn make_disk(raw: &Path, qcow: &Path) -> Result<()> {
    util::output(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "raw"])
            .arg(raw)
            .arg("1G"),
    )?;
    let exts = extents();
    for chunk in exts.chunks(64) {
        let mut c = Command::new("qemu-io");
        c.args(["-f", "raw"]);
        for slot in chunk {
            c.arg("-c").arg(format!(
                "write -P {} {} {}",
                slot % 251 + 1,
                slot * MIB,
                MIB
            ));
        }
        util::output(c.arg(raw))?;
    }
    util::output(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(raw)
            .arg(qcow),
    )?;
    Ok(())
}

pub fn run(rbdm: &Path) -> Result<()> {
    let dir = util::scratch("bench-migration")?;
    let (raw, qcow) = (dir.join("disk.raw"), dir.join("disk.qcow2"));
    make_disk(&raw, &qcow)?;
    let out = dir.join("converted.raw");
    // Warm the page cache for both sides alike.
    util::output(
        Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(&qcow)
            .arg(&out),
    )?;
    let _ = std::fs::remove_file(&out);
    let mut peers = Vec::new();
    for _ in 0..3 {
        let _ = std::fs::remove_file(&out);
        peers.push(util::timed(
            Command::new("qemu-img")
                .args(["convert", "-f", "qcow2", "-O", "raw"])
                .arg(&qcow)
                .arg(&out),
        )?);
    }
    let peer = median(peers);
    println!(
        "\nbench migration: import-only, 1 GiB disk with 369 MiB allocated, same run, median of 3"
    );
    println!(
        "  peer: qemu-img convert -O raw of the qcow2: {:.2} s",
        peer.as_secs_f64()
    );
    sparse_tib(rbdm)?;
    let web = rbdm_tests::servers::nginx(&dir);
    let (s3, ak, sk) = rbdm_tests::servers::moto(&[("disk.qcow2", &qcow), ("disk.raw", &raw)]);
    let ceph = [
        ("qcow+file", 0.55),
        ("raw+file", 1.61),
        ("qcow+http", 1.40),
        ("raw+http", 3.13),
        ("qcow+s3", 9.39),
        ("raw+s3", 3.75),
    ];
    for (format, file) in [("qcow", "disk.qcow2"), ("raw", "disk.raw")] {
        let streams = [
            (
                "file",
                format!(
                    r#"{{"type":"file","file_path":"{}"}}"#,
                    dir.join(file).display()
                ),
            ),
            (
                "http",
                format!(r#"{{"type":"http","url":"{}"}}"#, web.url(file)),
            ),
            (
                "s3",
                format!(
                    r#"{{"type":"s3","url":"http://127.0.0.1:{}/images/{file}","access_key":"{ak}","secret_key":"{sk}"}}"#,
                    s3.port
                ),
            ),
        ];
        for (stream, sspec) in streams {
            let spec = format!(r#"{{"type":"{format}","stream":{sspec}}}"#);
            let name = format!("{format}+{stream}");
            // moto (the signature-checking S3 server the tests use) copies the object on each
            // ranged GET, so its rows measure moto: one run only.
            let rounds = if stream == "s3" { 1 } else { 3 };
            let (t, used) = import(rbdm, &dir, &name, &spec, rounds)?;
            let ceph_s = ceph
                .iter()
                .find(|c| c.0 == name)
                .map(|c| c.1)
                .unwrap_or(0.0);
            row(&name, t, peer, ceph_s, &used);
        }
    }
    Ok(())
}

/// Median execute time of three imports of `spec`, and what `du` says is used.
fn import(
    rbdm: &Path,
    dir: &Path,
    name: &str,
    spec: &str,
    rounds: usize,
) -> Result<(Duration, String)> {
    let mut times = Vec::new();
    let mut used = String::new();
    for round in 0..rounds {
        let store = format!(
            "dir://{}",
            dir.join(format!("store-{name}-{round}")).display()
        );
        let rb = |args: &[&str]| {
            let mut c = Command::new(rbdm);
            c.env("RBDM_STORE", &store).args(args);
            c
        };
        util::output(&mut rb(&[
            "migration",
            "prepare",
            "--import-only",
            "--source-spec",
            spec,
            "img",
        ]))?;
        times.push(util::timed(&mut rb(&["migration", "execute", "img"]))?);
        util::output(&mut rb(&["migration", "commit", "img"]))?;
        let du = util::output(&mut rb(&["du", "img"]))?;
        used = du
            .lines()
            .last()
            .unwrap_or("")
            .split_whitespace()
            .skip(3)
            .collect::<Vec<_>>()
            .join(" ");
        let _ = std::fs::remove_dir_all(dir.join(format!("store-{name}-{round}")));
    }
    Ok((median(times), used))
}

fn row(format: &str, t: Duration, peer: Duration, ceph: f64, used: &str) {
    println!(
        "  {format:<10} execute {:>6.2} s   ratio to qemu-img {:.2}x   Ceph Pacific (NOTES.md) {ceph:.2} s   du used: {used}",
        t.as_secs_f64(),
        t.as_secs_f64() / peer.as_secs_f64()
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Peak memory and time of `execute` on a 1 TiB qcow2 with three small extents: cost must
/// follow the data, not the virtual size (target: under 128 MiB).
pub fn sparse_tib(rbdm: &Path) -> Result<()> {
    let dir = util::scratch("bench-migration-tib")?;
    let qcow = dir.join("tib.qcow2");
    util::output(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&qcow)
            .arg("1T"),
    )?;
    util::output(
        Command::new("qemu-io")
            .args([
                "-f",
                "qcow2",
                "-c",
                "write -P 7 0 1M",
                "-c",
                "write -P 8 500G 1M",
                "-c",
                "write -P 9 1023G 4M",
            ])
            .arg(&qcow),
    )?;
    let store = format!("dir://{}", dir.join("store").display());
    let spec = format!(
        r#"{{"type":"qcow","stream":{{"type":"file","file_path":"{}"}}}}"#,
        qcow.display()
    );
    util::output(Command::new(rbdm).env("RBDM_STORE", &store).args([
        "migration",
        "prepare",
        "--import-only",
        "--source-spec",
        &spec,
        "tib",
    ]))?;
    let start = std::time::Instant::now();
    let mut child = Command::new(rbdm)
        .env("RBDM_STORE", &store)
        .args(["migration", "execute", "tib"])
        .spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 on our own child fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for the child we just spawned; pointers are to live locals.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let took = start.elapsed();
    let _ = child.try_wait();
    if rc != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        anyhow::bail!("rbdm migration execute on the 1 TiB image failed (status {status})");
    }
    println!(
        "  1 TiB sparse qcow2 (6 MiB of data): execute {:.2} s, peak RSS {} MiB (target: under 128 MiB)",
        took.as_secs_f64(),
        usage.ru_maxrss / 1024
    );
    Ok(())
}
