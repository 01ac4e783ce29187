//! A 1 TiB sparse image with more L2 tables than the L2 cache holds: `list_snaps` over the
//! whole image takes seconds and stays under 64 MiB of live memory (its own test binary, so
//! the counting allocator sees nothing else).

mod alloc;
mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use common::*;
use rbdm_registry::{ExtentState, Point, SourceImage};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

const K: u64 = 1024;
const M: u64 = 1024 * K;
const G: u64 = 1024 * M;
const T: u64 = 1024 * G;

#[test]
fn one_tib_sparse_walk() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    create_qcow2(d, "big.qcow2", "cluster_size=64k", "1T")?;
    // One small write every 1 GiB: 1024 L2 tables of 64 KiB (64 MiB of L2, twice the cache).
    let writes: Vec<String> = (0..1024u64)
        .map(|i| format!("write -P {} {} 4k", i % 250 + 1, i * G + (i % 7) * 64 * K))
        .collect();
    let mut cmds: Vec<&str> = writes.iter().map(String::as_str).collect();
    cmds.push("write -z 5G 64k");
    qemu_io(d, "qcow2", "big.qcow2", &cmds)?;
    qemu_img(d, &["snapshot", "-c", "s", "big.qcow2"])?;
    let at = |i: u64| i * G + (i % 7) * 64 * K;
    let discard = format!("discard {} 64k", at(4));
    qemu_io(d, "qcow2", "big.qcow2", &["write -P 7 3G 8k", &discard])?;

    let img = open(&d.join("big.qcow2"))?;
    ensure!(img.size() == T);
    let before = alloc::live();
    alloc::reset_peak();
    let start = Instant::now();
    let lists = img.list_snaps(0, T)?;
    let took = start.elapsed();
    let peak = alloc::peak() - before;
    eprintln!(
        "1 TiB list_snaps: {took:?}, peak {} KiB above the baseline",
        peak / 1024
    );
    ensure!(
        took < Duration::from_secs(20),
        "walking 1 TiB took {took:?}"
    );
    ensure!(peak < 64 << 20, "walking 1 TiB peaked at {peak} bytes");

    // What the walk says is right: an allocated cluster is data as a whole.
    let expect_snap: Vec<(u64, u64)> = (0..1024u64).map(|i| (at(i), 64 * K)).collect();
    let resolved = resolve(&lists)?;
    ensure!(
        data_ranges(&resolved[0]) == merge_adjacent(&expect_snap),
        "snapshot data ranges"
    );
    let mut expect_head = expect_snap.clone();
    expect_head.push((3 * G, 64 * K));
    expect_head.retain(|&(o, _)| o != at(4));
    expect_head.sort();
    ensure!(
        data_ranges(&resolved[1]) == merge_adjacent(&expect_head),
        "head data ranges"
    );
    ensure!(
        data_ranges(&resolved[1]) == qemu_data_ranges(d, "big.qcow2", "qcow2")?,
        "head data ranges vs qemu-img map"
    );
    // `allocated`: the union over both points, also from metadata alone.
    let start = Instant::now();
    let mut allocated = img.allocated(0, T).expect("qcow knows its allocation")?;
    ensure!(
        start.elapsed() < Duration::from_secs(20),
        "allocated over 1 TiB took {:?}",
        start.elapsed()
    );
    allocated.sort();
    allocated.dedup();
    let mut union = expect_snap.clone();
    union.push((3 * G, 64 * K));
    union.sort();
    ensure!(
        merge_adjacent(&allocated) == merge_adjacent(&union),
        "allocated is the union of both points' data"
    );
    let zero = |o: u64| {
        resolved[1]
            .iter()
            .any(|&(eo, el, s)| s == ExtentState::Zero && eo <= o && o < eo + el)
    };
    ensure!(
        zero(5 * G) && zero(at(4)),
        "zeroed and discarded clusters read as zero"
    );
    // The head shares all but the changed clusters with the snapshot.
    let changed: u64 = lists[1]
        .iter()
        .filter(|e| e.state != ExtentState::Unchanged)
        .map(|e| e.len)
        .sum();
    ensure!(
        changed == 2 * 64 * K,
        "the head differs from the snapshot over {changed} bytes, not 2 clusters"
    );

    let mut buf = vec![0u8; 8 * K as usize];
    img.read(Point::Head, 3 * G, &mut buf)?;
    ensure!(buf.iter().all(|&b| b == 7));
    img.read(Point::Snap(0), at(700), &mut buf[..4 * K as usize])?;
    ensure!(buf[..4 * K as usize]
        .iter()
        .all(|&b| b == (700 % 250 + 1) as u8));
    Ok(())
}

fn merge_adjacent(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(o, l) in ranges {
        match out.last_mut() {
            Some(last) if last.0 + last.1 == o => last.1 += l,
            _ => out.push((o, l)),
        }
    }
    out
}
