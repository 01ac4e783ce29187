//! `cargo xtask bench nbd`, its sparse row (issue 12): `qemu-img map` and `qemu-img convert`
//! of an export of a 1025 MiB image written by random 4 KiB writes (Ceph's QA image, about
//! 45 000 extents), against `qemu-nbd` exporting the same data as a sparse raw file in the
//! same run. QEMU walks block status one extent per request, so this measures what a reply
//! costs rather than bandwidth.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::bench::{start_qemu_nbd, start_rbdm};
use crate::util;

pub fn run(rbdm: &Path) -> Result<()> {
    let dir = util::scratch("bench-nbd-map")?;
    let store = format!("dir://{}", dir.join("store").display());
    let rb = |args: &[&str]| -> Command {
        let mut c = Command::new(rbdm);
        c.env("RBDM_STORE", &store).args(args);
        c
    };
    util::output(&mut rb(&["create", "--size", "1025M", "rand"]))?;
    util::output(&mut rb(&[
        "bench",
        "--io-type",
        "write",
        "--io-pattern",
        "rand",
        "--io-size",
        "4K",
        "--io-total",
        "256M",
        "rand",
    ]))?;
    let mut ours = rb(&["nbd", "export", "rand", "--socket"]);
    ours.arg(dir.join("rbdm.sock"));
    let (ours, our_uri) = start_rbdm(ours)?;
    // The peer's file holds the same data with the same holes: qemu-img writes it sparse.
    let plain = dir.join("plain.raw");
    convert(&our_uri, &plain)?;
    let (peer, peer_uri) = start_qemu_nbd(&plain, &dir.join("qemu.sock"))?;
    let (map_ours, map_peer) = (map(&our_uri)?, map(&peer_uri)?);
    // Not equal maps: qemu-img leaves the bench's all-zero 4 KiB blocks out of the file and
    // allocates its first block. The test (nbd_real_size.rs) checks the map against `diff`.
    let (ours_n, peer_n) = (data_extents(&map_ours.1), data_extents(&map_peer.1));
    if ours_n.len().abs_diff(peer_n.len()) > ours_n.len() / 100 {
        bail!(
            "qemu-img map: {} data extents from rbdm, {} from qemu-nbd of the same data",
            ours_n.len(),
            peer_n.len()
        );
    }

    println!(
        "\nbench nbd: 1025 MiB, random 4 KiB writes ({} data extents), seconds, best of 2 (target: at most 1.5x qemu-nbd)",
        ours_n.len()
    );
    let out = dir.join("out.raw");
    let mut best = [[map_ours.0, map_peer.0], [Duration::MAX; 2]];
    for round in 0..2 {
        if round > 0 {
            best[0][1] = best[0][1].min(map(&peer_uri)?.0);
            best[0][0] = best[0][0].min(map(&our_uri)?.0);
        }
        best[1][1] = best[1][1].min(timed_convert(&peer_uri, &out)?);
        best[1][0] = best[1][0].min(timed_convert(&our_uri, &out)?);
    }
    for (name, [mine, theirs]) in ["qemu-img map", "convert -O raw"].iter().zip(best) {
        println!(
            "  {name:<16} rbdm {:>8.2} s       qemu-nbd {:>8.2} s       ratio {:.2}x",
            mine.as_secs_f64(),
            theirs.as_secs_f64(),
            mine.as_secs_f64() / theirs.as_secs_f64().max(1e-9)
        );
    }
    drop(ours);
    drop(peer);
    Ok(())
}

/// `qemu-img map --output=json`: how long it took and what it printed.
fn map(uri: &str) -> Result<(Duration, String)> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["map", "--output=json", "-f", "raw", uri]);
    let start = std::time::Instant::now();
    let text = util::output(&mut cmd)?;
    Ok((start.elapsed(), text))
}

fn convert(uri: &str, to: &Path) -> Result<()> {
    let _ = std::fs::remove_file(to);
    let mut cmd = Command::new("qemu-img");
    cmd.args(["convert", "-f", "raw", "-O", "raw", uri]).arg(to);
    util::output(&mut cmd).map(drop)
}

fn timed_convert(uri: &str, to: &Path) -> Result<Duration> {
    let start = std::time::Instant::now();
    convert(uri, to)?;
    Ok(start.elapsed())
}

/// The data extents of a JSON map, adjacent ones joined.
fn data_extents(json: &str) -> Vec<(u64, u64)> {
    let entries: Vec<serde_json::Value> = serde_json::from_str(json).unwrap_or_default();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for e in entries.iter().filter(|e| e["data"] == true) {
        let (Some(o), Some(l)) = (e["start"].as_u64(), e["length"].as_u64()) else {
            continue;
        };
        match out.last_mut() {
            Some(last) if last.0 + last.1 == o => last.1 += l,
            _ => out.push((o, l)),
        }
    }
    out
}
