//! `cargo xtask bench source`: reading a 4 GiB qcow2 with 50% of it allocated through our
//! decoder, over `file` and over `http` (nginx), against `qemu-img convert -O raw` of the same
//! file into tmpfs in the same run, with the number of HTTP requests made (Ceph's reader makes
//! one per cluster).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::util;

const MIB: u64 = 1 << 20;

fn make_disk(dir: &Path) -> Result<std::path::PathBuf> {
    let raw = dir.join("half.raw");
    let qcow = dir.join("half.qcow2");
    util::output(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "raw"])
            .arg(&raw)
            .arg("4G"),
    )?;
    // Every other MiB holds data: 2 GiB allocated, spread over the whole disk.
    let slots: Vec<u64> = (0..4096).step_by(2).collect();
    for chunk in slots.chunks(256) {
        let mut c = Command::new("qemu-io");
        c.args(["-f", "raw"]);
        for s in chunk {
            c.arg("-c")
                .arg(format!("write -P {} {} {}", s % 251 + 1, s * MIB, MIB));
        }
        util::output(c.arg(&raw))?;
    }
    util::output(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&qcow),
    )?;
    std::fs::remove_file(&raw)?;
    Ok(qcow)
}

pub fn run(rbdm: &Path) -> Result<()> {
    let dir = util::scratch("bench-source")?;
    let qcow = make_disk(&dir)?;
    let shm = Path::new("/dev/shm/rbdm-bench-source");
    let _ = std::fs::remove_dir_all(shm);
    std::fs::create_dir_all(shm).context("tmpfs at /dev/shm")?;
    let out = |name: &str| shm.join(name);
    let convert = |to: &Path| -> Result<std::time::Duration> {
        let _ = std::fs::remove_file(to);
        util::timed(
            Command::new("qemu-img")
                .args(["convert", "-f", "qcow2", "-O", "raw"])
                .arg(&qcow)
                .arg(to),
        )
    };
    convert(&out("warm.raw"))?;
    std::fs::remove_file(out("warm.raw"))?;
    let peer = convert(&out("peer.raw"))?;
    std::fs::remove_file(out("peer.raw"))?;
    let export = |spec: String, to: &Path| -> Result<std::time::Duration> {
        let _ = std::fs::remove_file(to);
        util::timed(
            Command::new(rbdm)
                .args(["source", "export", "--source-spec", &spec])
                .arg(to),
        )
    };
    let file_spec = format!(
        r#"{{"type":"qcow","stream":{{"type":"file","file_path":"{}"}}}}"#,
        qcow.display()
    );
    let t_file = export(file_spec, &out("file.raw"))?;
    std::fs::remove_file(out("file.raw"))?;
    let log = dir.join("access.log");
    let web = rbdm_tests::servers::nginx_logged(&dir, Some(&log));
    let http_spec = format!(
        r#"{{"type":"qcow","stream":{{"type":"http","url":"{}"}}}}"#,
        web.url("half.qcow2")
    );
    let t_http = export(http_spec, &out("http.raw"))?;
    drop(web);
    let requests = std::fs::read_to_string(&log)
        .map(|l| l.lines().count())
        .unwrap_or(0);
    let _ = std::fs::remove_dir_all(shm);
    println!("\nbench source: 4 GiB qcow2, 2 GiB allocated (64 KiB clusters), written raw into tmpfs, same run");
    println!(
        "  peer  qemu-img convert -O raw (file)   {:>6.2} s",
        peer.as_secs_f64()
    );
    println!(
        "  file  rbdm source export               {:>6.2} s   ratio {:.2}x",
        t_file.as_secs_f64(),
        t_file.as_secs_f64() / peer.as_secs_f64()
    );
    println!(
        "  http  rbdm source export (nginx)       {:>6.2} s   ratio {:.2}x   {requests} HTTP requests (one per cluster would be {})",
        t_http.as_secs_f64(),
        t_http.as_secs_f64() / peer.as_secs_f64(),
        2048 * MIB / (64 * 1024)
    );
    Ok(())
}
