//! Images made by qemu-img/qemu-io at test time, read back through the decoder and compared
//! with what QEMU itself reads (`qemu-img convert -O raw`, `qemu-img map`).

mod common;

use std::path::Path;

use anyhow::{ensure, Result};
use common::*;
use rbdm_format_qcow::Compression;
use rbdm_registry::{ExtentState, Point, SourceImage};

const K: u64 = 1024;
const M: u64 = 1024 * 1024;

/// A base raw image with random data in a few places, including the last bytes.
fn base_raw(dir: &Path, name: &str, size: u64, cluster: u64) -> Result<()> {
    let regions = [
        (0, 100 * K),
        (M + 123, 50_000),
        (size / 2, 3 * cluster),
        (size - 10_000, 10_000),
    ];
    random_raw(&dir.join(name), size, &regions, size ^ cluster)
}

/// Writes that exercise partial clusters, zeroing over data and discards.
fn scribble(dir: &Path, fmt: &str, img: &str, size: u64, cluster: u64) -> Result<()> {
    pattern_file(&dir.join("pat"), 256 * K as usize, cluster)?;
    let half = size / 2;
    let cmds = [
        format!("write -s pat {} {}", 3 * K + 17, 5000),
        format!("write -s pat {} {}", 2 * M - 700, 100 * K),
        // Zeroing whole clusters that hold data (v3: zero flag on an allocated cluster).
        format!("write -z {} {}", 0, 2 * cluster),
        // Zeroing part of a cluster.
        format!("write -z {} {}", M + 1000, 700),
        format!("discard {} {}", half, cluster),
        format!("write -s pat {} {}", size - 5000, 4000),
    ];
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io(dir, fmt, img, &cmds)
}

fn make_and_check(dir: &Path, name: &str, size: u64, cluster: u64, opts: &str) -> Result<()> {
    let raw = format!("{name}.base");
    base_raw(dir, &raw, size, cluster)?;
    let o = format!("cluster_size={cluster},{opts}");
    convert_raw(dir, "qcow2", &["-o", &o], &raw, name)?;
    scribble(dir, "qcow2", name, size, cluster)?;
    check_image(dir, name, "qcow2")?;
    Ok(())
}

#[test]
fn v3_cluster_sizes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    make_and_check(d, "c512.qcow2", 3 * M, 512, "compat=1.1")?;
    make_and_check(d, "c4k.qcow2", 8 * M, 4 * K, "compat=1.1")?;
    make_and_check(d, "c64k.qcow2", 16 * M, 64 * K, "compat=1.1")?;
    make_and_check(d, "c2m.qcow2", 24 * M, 2 * M, "compat=1.1")?;
    Ok(())
}

#[test]
fn v2_compat_010() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    make_and_check(d, "v2.qcow2", 16 * M, 64 * K, "compat=0.10")?;
    make_and_check(d, "v2-4k.qcow2", 8 * M, 4 * K, "compat=0.10")?;
    assert_eq!(open(&d.join("v2.qcow2"))?.version(), 2);
    Ok(())
}

/// The zero flag on a cluster that still has a host offset with the old data in it (Ceph
/// Pacific returns that stale data).
#[test]
fn zero_flag_over_allocated_data() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    create_qcow2(d, "z.qcow2", "cluster_size=64k", "4M")?;
    pattern_file(&d.join("pat"), 256 * K as usize, 5)?;
    qemu_io(
        d,
        "qcow2",
        "z.qcow2",
        &["write -s pat 0 256k", "write -z 64k 128k"],
    )?;
    let alloc_zero = |e: &serde_json::Value| {
        e["zero"] == true && e.get("offset").is_some() && e["present"] == true
    };
    ensure!(
        qemu_map_has(d, "z.qcow2", "qcow2", &alloc_zero)?,
        "test image lacks an allocated zero cluster"
    );
    let img = check_image(d, "z.qcow2", "qcow2")?;
    let mut buf = vec![0xffu8; 128 * K as usize];
    img.read(Point::Head, 64 * K, &mut buf)?;
    ensure!(buf.iter().all(|&b| b == 0));
    let lists = img.list_snaps(0, 4 * M)?;
    ensure!(lists[0]
        .iter()
        .any(|e| e.state == ExtentState::Zero && e.offset == 64 * K && e.len >= 128 * K));
    Ok(())
}

#[test]
fn qcow_v1() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    base_raw(d, "v1.base", 8 * M, 4 * K)?;
    convert_raw(d, "qcow", &[], "v1.base", "v1.qcow")?;
    pattern_file(&d.join("pat"), 256 * K as usize, 11)?;
    qemu_io(
        d,
        "qcow",
        "v1.qcow",
        &["write -s pat 5000 70000", "write -s pat 7M 4096"],
    )?;
    let img = check_image(d, "v1.qcow", "qcow")?;
    assert_eq!(img.version(), 1);
    // Compressed v1 clusters (`qemu-img convert -c -O qcow` fails in QEMU 10; qemu-io works,
    // but only on clusters not yet allocated: over allocated ones it writes uncompressed).
    qemu_img(d, &["create", "-f", "qcow", "v1c.qcow", "8M"])?;
    qemu_io(
        d,
        "qcow",
        "v1c.qcow",
        &[
            "write -s pat 64k 9000",
            "write -c -P 0x33 0 4k",
            "write -c -P 0x44 8k 4k",
            "write -c -s pat 4M 4k",
        ],
    )?;
    ensure!(
        qemu_map_has(d, "v1c.qcow", "qcow", &|e| e["compressed"] == true)?,
        "v1c.qcow has no compressed cluster"
    );
    check_image(d, "v1c.qcow", "qcow")?;
    // Odd size and a v1 overlay over a v1 backing.
    base_raw(d, "odd.base", 1_000_001, 4 * K)?;
    convert_raw(d, "qcow", &[], "odd.base", "odd.qcow")?;
    check_image(d, "odd.qcow", "qcow")?;
    qemu_img(
        d,
        &[
            "create", "-f", "qcow", "-b", "v1.qcow", "-F", "qcow", "top.qcow", "9M",
        ],
    )?;
    qemu_io(d, "qcow", "top.qcow", &["write -s pat 12345 9999"])?;
    check_image(d, "top.qcow", "qcow")?;
    Ok(())
}

#[test]
fn compressed_zlib_and_zstd() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    base_raw(d, "c.base", 8 * M, 64 * K)?;
    // Some compressible data too (qemu stores incompressible clusters uncompressed).
    qemu_io(
        d,
        "raw",
        "c.base",
        &["write -P 0x5a 3M 1M", "write -P 0x11 3500k 3000"],
    )?;
    for (name, opts, comp) in [
        ("zlib.qcow2", "cluster_size=64k", Compression::Deflate),
        (
            "zstd.qcow2",
            "cluster_size=64k,compression_type=zstd",
            Compression::Zstd,
        ),
        (
            "zstd4k.qcow2",
            "cluster_size=4k,compression_type=zstd",
            Compression::Zstd,
        ),
        ("zlib2m.qcow2", "cluster_size=2M", Compression::Deflate),
    ] {
        qemu_img(
            d,
            &[
                "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", opts, "c.base", name,
            ],
        )?;
        ensure!(
            qemu_map_has(d, name, "qcow2", &|e| e["compressed"] == true)?,
            "{name} has no compressed cluster"
        );
        // Partial overwrite of a compressed cluster: QEMU decompresses and rewrites it.
        qemu_io(
            d,
            "qcow2",
            name,
            &["write -P 0x77 3M 5000", "write -z 3100k 64k"],
        )?;
        let img = check_image(d, name, "qcow2")?;
        assert_eq!(img.compression(), comp);
    }
    Ok(())
}

#[test]
fn extended_l2_subclusters() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    pattern_file(&d.join("pat"), 256 * K as usize, 3)?;
    // Plain image: 64 KiB clusters of 32 × 2 KiB subclusters.
    create_qcow2(d, "x.qcow2", "extended_l2=on,cluster_size=64k", "8M")?;
    qemu_io(
        d,
        "qcow2",
        "x.qcow2",
        &[
            "write -s pat 4196 300",
            "write -s pat 10k 6k",
            "write -z 12k 2k",
            "write -s pat 1M 64k",
            "discard 1040k 8k",
            "write -z 2M 4k",
            "write -s pat 3M 512",
        ],
    )?;
    let img = check_image(d, "x.qcow2", "qcow2")?;
    ensure!(img.extended_l2());
    // An overlay whose partial subcluster writes leave the rest to the backing file.
    base_raw(d, "b.base", 8 * M, 64 * K)?;
    convert_raw(d, "qcow2", &[], "b.base", "b.qcow2")?;
    qemu_img(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "b.qcow2",
            "-F",
            "qcow2",
            "-o",
            "extended_l2=on,cluster_size=128k",
            "xo.qcow2",
            "8M",
        ],
    )?;
    qemu_io(
        d,
        "qcow2",
        "xo.qcow2",
        &[
            "write -s pat 5000 3000",
            "write -z 20k 4k",
            "write -s pat 4M 100",
            "discard 4202496 8k",
        ],
    )?;
    check_image(d, "xo.qcow2", "qcow2")?;
    Ok(())
}

#[test]
fn backing_chain() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    pattern_file(&d.join("pat"), 256 * K as usize, 9)?;
    base_raw(d, "base.raw", 6 * M, 64 * K)?;
    convert_raw(d, "qcow2", &[], "base.raw", "base.qcow2")?;
    qemu_img(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10,cluster_size=4k",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "mid.qcow2",
            "6M",
        ],
    )?;
    qemu_io(
        d,
        "qcow2",
        "mid.qcow2",
        &["write -s pat 70000 9000", "write -s pat 5M 4k"],
    )?;
    // The top is larger than its backing file; beyond it reads zeros.
    qemu_img(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "mid.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
            "10M",
        ],
    )?;
    qemu_io(
        d,
        "qcow2",
        "top.qcow2",
        &[
            "write -s pat 1M 3000",
            "write -z 0 64k",
            "discard 192k 64k",
            "write -s pat 9M 100",
        ],
    )?;
    let top = check_image(d, "top.qcow2", "qcow2")?;
    assert_eq!(top.chain_depth(), 2);
    assert_eq!(top.backing_file(), Some("mid.qcow2"));

    // A raw backing file (dense, so QEMU's hole detection agrees with ours), smaller than the
    // overlay.
    random_raw(&d.join("dense.raw"), 3 * M + 333, &[(0, 3 * M + 333)], 77)?;
    qemu_img(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "dense.raw",
            "-F",
            "raw",
            "overraw.qcow2",
            "5M",
        ],
    )?;
    qemu_io(
        d,
        "qcow2",
        "overraw.qcow2",
        &["write -s pat 100k 5000", "write -z 1M 64k"],
    )?;
    check_image(d, "overraw.qcow2", "qcow2")?;

    // No backing format extension: the format is probed from the magic.
    let mut bytes = std::fs::read(d.join("top.qcow2"))?;
    let ext = [0xe2, 0x79, 0x2a, 0xca];
    let at = bytes
        .windows(4)
        .position(|w| w == ext)
        .expect("backing format extension");
    bytes[at..at + 4].copy_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    std::fs::write(d.join("probed.qcow2"), &bytes)?;
    let probed = open(&d.join("probed.qcow2"))?;
    let raw = qemu_raw(d, "top.qcow2", "qcow2", None, "top2.raw")?;
    assert_same_bytes(&probed, Point::Head, &raw, 5)?;
    Ok(())
}

#[test]
fn internal_snapshots_v3() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    pattern_file(&d.join("pat"), 256 * K as usize, 21)?;
    base_raw(d, "s.base", 8 * M, 64 * K)?;
    convert_raw(d, "qcow2", &[], "s.base", "s.qcow2")?;
    qemu_img(d, &["snapshot", "-c", "first", "s.qcow2"])?;
    qemu_io(
        d,
        "qcow2",
        "s.qcow2",
        &[
            "write -s pat 1000 2000",
            "write -s pat 6M 128k",
            "write -z 4M 64k",
        ],
    )?;
    qemu_img(d, &["snapshot", "-c", "second", "s.qcow2"])?;
    qemu_io(
        d,
        "qcow2",
        "s.qcow2",
        &["discard 0 64k", "write -s pat 7M 3", "write -z 6M 64k"],
    )?;
    qemu_img(d, &["resize", "s.qcow2", "12M"])?;
    qemu_io(d, "qcow2", "s.qcow2", &["write -s pat 10M 70000"])?;
    qemu_img(d, &["snapshot", "-c", "third", "s.qcow2"])?;
    qemu_io(d, "qcow2", "s.qcow2", &["write -s pat 11M 5000"])?;
    let img = check_image(d, "s.qcow2", "qcow2")?;
    let snaps = img.snapshots();
    let names: Vec<&str> = snaps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["first", "second", "third"]);
    assert_eq!(snaps[0].size, 8 * M);
    assert_eq!(snaps[2].size, 12 * M);
    assert!(snaps[0].timestamp.is_some());
    // Most of each later point is unchanged: the copy engine must be able to skip it.
    let lists = img.list_snaps(0, 12 * M)?;
    for (p, list) in lists.iter().enumerate().skip(1) {
        let unchanged: u64 = list
            .iter()
            .filter(|e| e.state == ExtentState::Unchanged)
            .map(|e| e.len)
            .sum();
        ensure!(
            unchanged >= 7 * M,
            "point {p}: only {unchanged} bytes unchanged: {list:?}"
        );
    }
    // A snapshot index that does not exist is an error, not a panic.
    let mut b = [0u8; 10];
    ensure!(img.read(Point::Snap(3), 0, &mut b).is_err());
    Ok(())
}

#[test]
fn internal_snapshots_v2_small_clusters() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    pattern_file(&d.join("pat"), 256 * K as usize, 23)?;
    base_raw(d, "s2.base", 4 * M, 4 * K)?;
    convert_raw(
        d,
        "qcow2",
        &["-o", "compat=0.10,cluster_size=4k"],
        "s2.base",
        "s2.qcow2",
    )?;
    qemu_img(d, &["snapshot", "-c", "a", "s2.qcow2"])?;
    qemu_io(
        d,
        "qcow2",
        "s2.qcow2",
        &["write -s pat 8000 20000", "write -z 1M 8k"],
    )?;
    qemu_img(d, &["snapshot", "-c", "b", "s2.qcow2"])?;
    qemu_io(d, "qcow2", "s2.qcow2", &["write -s pat 3M 5000"])?;
    check_image(d, "s2.qcow2", "qcow2")?;
    // Snapshots over a backing file: unallocated clusters read the backing head at every point.
    base_raw(d, "bb.base", 4 * M, 64 * K)?;
    convert_raw(d, "qcow2", &[], "bb.base", "bb.qcow2")?;
    qemu_img(
        d,
        &[
            "create", "-f", "qcow2", "-b", "bb.qcow2", "-F", "qcow2", "ov.qcow2", "4M",
        ],
    )?;
    qemu_img(d, &["snapshot", "-c", "empty", "ov.qcow2"])?;
    qemu_io(
        d,
        "qcow2",
        "ov.qcow2",
        &["write -s pat 2M 100k", "write -z 0 64k"],
    )?;
    qemu_img(d, &["snapshot", "-c", "some", "ov.qcow2"])?;
    qemu_io(d, "qcow2", "ov.qcow2", &["discard 2M 64k"])?;
    check_image(d, "ov.qcow2", "qcow2")?;
    Ok(())
}

#[test]
fn odd_size() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    base_raw(d, "odd.base", 1_000_001, 4 * K)?;
    for (name, opts) in [
        ("odd4k.qcow2", "cluster_size=4k"),
        ("odd512.qcow2", "cluster_size=512"),
        ("odd2m.qcow2", "cluster_size=2M"),
    ] {
        convert_raw(d, "qcow2", &["-o", opts], "odd.base", name)?;
        qemu_io(d, "qcow2", name, &["write -P 0x42 999000 1001"])?;
        let img = check_image(d, name, "qcow2")?;
        // QEMU rounds sizes up to 512 bytes.
        assert_eq!(img.size(), 1_000_448);
    }
    // A size that is not a multiple of 512 (QEMU never writes one; other tools may).
    let raw = std::fs::read(qemu_raw(d, "odd4k.qcow2", "qcow2", None, "odd4k.raw")?)?;
    let mut bytes = std::fs::read(d.join("odd4k.qcow2"))?;
    bytes[24..32].copy_from_slice(&1_000_001u64.to_be_bytes());
    std::fs::write(d.join("odder.qcow2"), &bytes)?;
    let img = open(&d.join("odder.qcow2"))?;
    assert_eq!(img.size(), 1_000_001);
    let mut buf = vec![0xffu8; 1_000_100];
    img.read(Point::Head, 0, &mut buf)?;
    ensure!(buf[..1_000_001] == raw[..1_000_001]);
    ensure!(buf[1_000_001..].iter().all(|&b| b == 0));
    let lists = img.list_snaps(0, u64::MAX / 2)?;
    let last = lists[0].last().expect("extents");
    assert_eq!(last.offset + last.len, 1_000_001);
    Ok(())
}

/// Contiguous clusters become one stream request of exactly the requested bytes; a small read
/// in a big cluster fetches only those bytes.
#[test]
fn reads_are_coalesced_and_bounded() -> Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    random_raw(&d.join("dense.raw"), 8 * M, &[(0, 8 * M)], 1)?;
    convert_raw(
        d,
        "qcow2",
        &["-o", "cluster_size=64k"],
        "dense.raw",
        "dense.qcow2",
    )?;
    convert_raw(
        d,
        "qcow2",
        &["-o", "cluster_size=2M"],
        "dense.raw",
        "big.qcow2",
    )?;

    let stream = FileStream::open(&d.join("dense.qcow2"))?;
    let counters = stream.counters.clone();
    let img = rbdm_format_qcow::open(Box::new(stream))?;
    let mut buf = vec![0u8; 4 * M as usize];
    img.read(Point::Head, 0, &mut buf[..1])?; // loads the L2 table
    let (r0, b0) = (counters.reads.load(Relaxed), counters.bytes.load(Relaxed));
    img.read(Point::Head, 100, &mut buf)?;
    let (reads, bytes) = (
        counters.reads.load(Relaxed) - r0,
        counters.bytes.load(Relaxed) - b0,
    );
    ensure!(
        reads == 1 && bytes == 4 * M,
        "a 4 MiB read took {reads} requests, {bytes} bytes"
    );

    let stream = FileStream::open(&d.join("big.qcow2"))?;
    let counters = stream.counters.clone();
    let img = rbdm_format_qcow::open(Box::new(stream))?;
    img.read(Point::Head, 0, &mut buf[..1])?;
    let b0 = counters.bytes.load(Relaxed);
    for i in 0..64u64 {
        img.read(Point::Head, 3 * M + i * 512, &mut buf[..512])?;
    }
    let bytes = counters.bytes.load(Relaxed) - b0;
    ensure!(
        bytes == 64 * 512,
        "64 reads of 512 bytes fetched {bytes} bytes"
    );
    let raw = std::fs::read(d.join("dense.raw"))?;
    img.read(Point::Head, 3 * M + 7, &mut buf[..1000])?;
    ensure!(buf[..1000] == raw[3 * M as usize + 7..3 * M as usize + 1007]);
    Ok(())
}
