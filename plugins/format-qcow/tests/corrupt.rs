//! Corrupt and refused images: each is a clear error naming the problem (and the offset where
//! there is one), never a panic, never a huge allocation, never silently wrong bytes.

mod alloc;
mod common;

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use common::*;
use rbdm_format_qcow::{QcowError, QcowImage};
use rbdm_registry::{Point, SourceError, SourceImage};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

const K: u64 = 1024;
const M: u64 = 1024 * 1024;
/// No corrupt image may make the decoder allocate more than this at once.
const MAX_ALLOCATION: usize = 16 << 20;
/// Linux's ENOSYS, what `rbd` exits with for an unsupported feature.
const ENOSYS: i32 = 38;

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn open_bytes(dir: &Path, name: &str, bytes: &[u8]) -> Result<Result<QcowImage, QcowError>> {
    let path = dir.join(name);
    std::fs::write(&path, bytes)?;
    Ok(rbdm_format_qcow::open(Box::new(FileStream::open(&path)?)))
}

/// Opening fails as corrupt (EIO) and the message holds every one of `words`.
fn expect_corrupt(dir: &Path, name: &str, bytes: &[u8], words: &[&str]) -> Result<()> {
    match open_bytes(dir, name, bytes)? {
        Ok(_) => bail!("{name}: opened, expected a corrupt-image error"),
        Err(e @ QcowError::Corrupt(_)) => check_words(name, &e.to_string(), words),
        Err(e) => bail!("{name}: expected a corrupt-image error, got {e:?}"),
    }
}

fn check_words(name: &str, msg: &str, words: &[&str]) -> Result<()> {
    for w in words {
        ensure!(
            msg.contains(w),
            "{name}: error {msg:?} does not mention {w:?}"
        );
    }
    Ok(())
}

/// A v3 image with data, a zero cluster, a snapshot and a compressed cluster.
/// Fails if anything allocated `MAX_ALLOCATION` bytes or more so far.
fn no_large_allocation() -> Result<()> {
    ensure!(
        alloc::largest() < MAX_ALLOCATION,
        "an allocation of {} bytes",
        alloc::largest()
    );
    Ok(())
}

fn sample(dir: &Path) -> Result<Vec<u8>> {
    pattern_file(&dir.join("pat"), 256 * K as usize, 13)?;
    create_qcow2(dir, "s.qcow2", "cluster_size=64k", "8M")?;
    qemu_io(
        dir,
        "qcow2",
        "s.qcow2",
        &["write -s pat 0 200k", "write -c -P 0x61 1M 64k"],
    )?;
    qemu_img(dir, &["snapshot", "-c", "snap", "s.qcow2"])?;
    qemu_io(
        dir,
        "qcow2",
        "s.qcow2",
        &["write -s pat 4M 100k", "write -z 64k 64k"],
    )?;
    Ok(std::fs::read(dir.join("s.qcow2"))?)
}

#[test]
fn header_fields_out_of_range() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let good = sample(d)?;
    ensure!(
        open_bytes(d, "good.qcow2", &good)?.is_ok(),
        "the sample itself must open"
    );
    let patched = |at: usize, v: &[u8]| {
        let mut b = good.clone();
        b[at..at + v.len()].copy_from_slice(v);
        b
    };
    expect_corrupt(
        d,
        "magic",
        &patched(0, b"QFI\0"),
        &["bad magic", "offset 0"],
    )?;
    for bits in [8u32, 22, 40, 100, u32::MAX] {
        expect_corrupt(
            d,
            "bits",
            &patched(20, &bits.to_be_bytes()),
            &["cluster_bits", &bits.to_string(), "offset 20"],
        )?;
    }
    expect_corrupt(
        d,
        "size",
        &patched(24, &u64::MAX.to_be_bytes()),
        &["virtual size", "offset 24"],
    )?;
    // 2^55 bytes fit under 2^56 but need an L1 table over QEMU's 32 MiB limit at 64 KiB clusters.
    expect_corrupt(
        d,
        "size55",
        &patched(24, &(1u64 << 55).to_be_bytes()),
        &["virtual size", "L1", "32 MiB"],
    )?;
    expect_corrupt(
        d,
        "l1size",
        &patched(36, &u32::MAX.to_be_bytes()),
        &["L1 table", "32 MiB"],
    )?;
    expect_corrupt(
        d,
        "l1small",
        &patched(36, &0u32.to_be_bytes()),
        &["L1 table has 0 entries", "offset 36"],
    )?;
    let beyond = (good.len() as u64).next_multiple_of(64 * K) + 64 * K;
    expect_corrupt(
        d,
        "l1eof",
        &patched(40, &beyond.to_be_bytes()),
        &[
            "L1 table",
            "beyond the end of the file",
            &beyond.to_string(),
        ],
    )?;
    expect_corrupt(
        d,
        "l1align",
        &patched(40, &(64 * K + 8).to_be_bytes()),
        &["L1 table", "not cluster aligned"],
    )?;
    expect_corrupt(
        d,
        "reftable",
        &patched(56, &u32::MAX.to_be_bytes()),
        &["refcount_table_clusters", "offset 56"],
    )?;
    expect_corrupt(
        d,
        "refalign",
        &patched(48, &12345u64.to_be_bytes()),
        &["refcount_table_offset", "offset 48"],
    )?;
    expect_corrupt(
        d,
        "reforder",
        &patched(96, &7u32.to_be_bytes()),
        &["refcount_order 7", "offset 96"],
    )?;
    expect_corrupt(
        d,
        "nbsnap",
        &patched(60, &u32::MAX.to_be_bytes()),
        &["nb_snapshots", "offset 60"],
    )?;
    expect_corrupt(
        d,
        "snapeof",
        &patched(64, &(1u64 << 50).to_be_bytes()),
        &["snapshot table entry 0", "beyond the end"],
    )?;
    expect_corrupt(
        d,
        "snapalign",
        &patched(64, &(64 * K + 512).to_be_bytes()),
        &["snapshot table offset", "not cluster aligned"],
    )?;
    expect_corrupt(
        d,
        "corruptbit",
        &patched(72, &2u64.to_be_bytes()),
        &["marked corrupt"],
    )?;
    expect_corrupt(
        d,
        "hdrlen",
        &patched(100, &20u32.to_be_bytes()),
        &["header_length 20", "offset 100"],
    )?;
    // The snapshot's own L1 table beyond the end of the file.
    let snap_at = be64(&good, 64) as usize;
    let mut b = good.clone();
    b[snap_at..snap_at + 8].copy_from_slice(&beyond.to_be_bytes());
    expect_corrupt(
        d,
        "snapl1",
        &b,
        &["snapshot table entry 0", "L1 table", "beyond the end"],
    )?;
    // The snapshot's disk size (extra data bytes 8..16) absurd for its L1.
    let mut b = good.clone();
    ensure!(
        be64(&good, snap_at + 48) == 8 * M,
        "snapshot disk size is not where the spec puts it"
    );
    b[snap_at + 48..snap_at + 56].copy_from_slice(&(1u64 << 55).to_be_bytes());
    expect_corrupt(
        d,
        "snapsize",
        &b,
        &["snapshot table entry 0", "disk size", "32 MiB"],
    )?;
    // An unknown incompatible feature is refused, not ignored (the `qcow` crate's mistake
    // with extended L2).
    match open_bytes(d, "incompat", &patched(72, &(1u64 << 9).to_be_bytes()))? {
        Err(e @ QcowError::Unsupported(_)) => {
            check_words("incompat", &e.to_string(), &["incompatible feature bit 9"])?
        }
        other => bail!("unknown incompatible bit: {:?}", other.map(|_| ())),
    }
    match open_bytes(d, "version", &patched(4, &4u32.to_be_bytes()))? {
        Err(e @ QcowError::Unsupported(_)) => {
            check_words("version", &e.to_string(), &["version 4", "offset 4"])?
        }
        other => bail!("version 4: {:?}", other.map(|_| ())),
    }
    no_large_allocation()?;
    Ok(())
}

#[test]
fn truncated_header() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let good = sample(d)?;
    for len in [
        0usize, 3, 4, 7, 8, 20, 47, 71, 72, 100, 103, 104, 111, 200, 4095,
    ] {
        match open_bytes(d, "t.qcow2", &good[..len])? {
            Err(QcowError::Corrupt(m)) => {
                ensure!(
                    m.contains("bytes") && !m.is_empty(),
                    "truncated to {len}: {m}"
                );
            }
            other => bail!("truncated to {len}: {:?}", other.map(|_| ())),
        }
    }
    // v1 header cut short.
    qemu_img(d, &["create", "-f", "qcow", "v1.qcow", "4M"])?;
    let v1 = std::fs::read(d.join("v1.qcow"))?;
    expect_corrupt(d, "v1t", &v1[..40], &["qcow v1 header", "only 40 bytes"])?;
    Ok(())
}

/// Cutting an image anywhere never panics, and whatever still reads is exactly QEMU's data.
#[test]
fn truncated_body_never_wrong() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let with_snapshot = sample(d)?;
    let head = std::fs::read(qemu_raw(d, "s.qcow2", "qcow2", None, "head.raw")?)?;
    let snap = std::fs::read(qemu_raw(d, "s.qcow2", "qcow2", Some("snap"), "snap.raw")?)?;
    // Without snapshots the tables come first and data last, so most cuts open and then
    // find data missing.
    qemu_img(
        d,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=4k",
            "head.raw",
            "flat.qcow2",
        ],
    )?;
    let flat = std::fs::read(d.join("flat.qcow2"))?;
    let cases = [
        (
            &with_snapshot,
            vec![(Point::Snap(0), &snap), (Point::Head, &head)],
        ),
        (&flat, vec![(Point::Head, &head)]),
    ];
    let mut rng = Rng(7);
    let (mut opened, mut errors) = (0, 0);
    for (good, points) in cases {
        let mut cuts: Vec<usize> = (0..30)
            .map(|_| rng.below(good.len() as u64) as usize)
            .collect();
        // Just past the header, the L1 table, the middle of a data cluster, one byte short.
        cuts.extend([
            4096,
            64 * K as usize,
            192 * K as usize + 100,
            good.len() - 1,
        ]);
        for cut in cuts {
            let img = match open_bytes(d, "cut.qcow2", &good[..cut.min(good.len())])? {
                Ok(img) => img,
                Err(QcowError::Corrupt(_)) => continue,
                Err(e) => bail!("cut at {cut}: unexpected error kind {e:?}"),
            };
            opened += 1;
            let _ = img.list_snaps(0, 8 * M);
            for (point, want) in &points {
                for chunk in 0..8u64 {
                    let mut buf = vec![0u8; M as usize];
                    match img.read(*point, chunk * M, &mut buf) {
                        Ok(()) => {
                            let range = (chunk * M) as usize..((chunk + 1) * M) as usize;
                            ensure!(
                                buf[..] == want[range],
                                "cut at {cut}: {point:?} MiB {chunk} read wrong bytes"
                            );
                        }
                        Err(e) => {
                            errors += 1;
                            ensure!(matches!(e, SourceError::Corrupt(_)), "cut at {cut}: {e:?}");
                            ensure!(
                                e.to_string().contains("beyond the end of the file"),
                                "cut at {cut}: {e}"
                            );
                        }
                    }
                }
            }
        }
    }
    ensure!(
        opened > 10 && errors > 10,
        "too few cuts exercised the read path: {opened} opened, {errors} errors"
    );
    no_large_allocation()?;
    Ok(())
}

/// L2 tables and data clusters pointing outside the file, and a garbage compressed cluster:
/// open succeeds (only the header is read), the read that needs them fails, naming them.
#[test]
fn tables_pointing_outside() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    pattern_file(&d.join("pat"), 64 * K as usize, 3)?;
    create_qcow2(d, "p.qcow2", "cluster_size=64k", "8M")?;
    qemu_io(
        d,
        "qcow2",
        "p.qcow2",
        &["write -s pat 0 64k", "write -c -P 0x33 64k 64k"],
    )?;
    let good = std::fs::read(d.join("p.qcow2"))?;
    let l1 = be64(&good, 40) as usize;
    let l2 = (be64(&good, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let far = 1u64 << 40;

    let mut b = good.clone();
    b[l1..l1 + 8].copy_from_slice(&(far | 1 << 63).to_be_bytes());
    let img = open_bytes(d, "l2eof", &b)?.context("L2 beyond EOF still opens")?;
    let e = img
        .read(Point::Head, 100, &mut [0u8; 10])
        .err()
        .context("read through a missing L2")?;
    check_words(
        "l2eof",
        &e.to_string(),
        &[
            "L2 table for guest offset 100",
            &far.to_string(),
            "beyond the end",
        ],
    )?;
    let e = img
        .list_snaps(0, 8 * M)
        .err()
        .context("list_snaps through a missing L2")?;
    check_words("l2eof", &e.to_string(), &["L2 table"])?;

    let mut b = good.clone();
    b[l2..l2 + 8].copy_from_slice(&(far | 1 << 63).to_be_bytes());
    let img = open_bytes(d, "dataeof", &b)?.context("data beyond EOF still opens")?;
    let e = img
        .read(Point::Head, 1000, &mut [0u8; 10])
        .err()
        .context("read of a missing cluster")?;
    check_words(
        "dataeof",
        &e.to_string(),
        &["data for guest offset 1000", "beyond the end"],
    )?;

    let mut b = good.clone();
    b[l2..l2 + 8].copy_from_slice(&((64 * K + 4 * K) | 1 << 63).to_be_bytes());
    let img = open_bytes(d, "unaligned", &b)?.context("unaligned data still opens")?;
    let e = img
        .read(Point::Head, 0, &mut [0u8; 10])
        .err()
        .context("read of an unaligned cluster")?;
    check_words(
        "unaligned",
        &e.to_string(),
        &["unaligned host offset", "guest offset 0"],
    )?;

    // The compressed cluster's bytes overwritten with garbage.
    let entry = be64(&good, l2 + 8);
    ensure!(
        entry & (1 << 62) != 0,
        "cluster 1 is not compressed: {entry:#x}"
    );
    let host = (entry & ((1 << 54) - 1)) as usize;
    let mut b = good.clone();
    b[host..host + 64].fill(0xff);
    let img = open_bytes(d, "garbage", &b)?.context("garbage compression still opens")?;
    let e = img
        .read(Point::Head, 64 * K, &mut [0u8; 10])
        .err()
        .context("read of garbage")?;
    check_words(
        "garbage",
        &e.to_string(),
        &["compressed cluster for guest offset 65536", "deflate"],
    )?;
    no_large_allocation()?;
    Ok(())
}

/// Random byte changes in the metadata of real images: errors or data, never a panic or a
/// large allocation. (The fuzz targets do this with coverage guidance; this runs in `cargo test`.)
#[test]
fn random_metadata_damage() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let mut images = vec![sample(d)?];
    create_qcow2(d, "x.qcow2", "extended_l2=on,cluster_size=16k", "2M")?;
    qemu_io(
        d,
        "qcow2",
        "x.qcow2",
        &[
            "write -P 1 1000 3000",
            "write -z 100k 1k",
            "write -c -P 2 1M 16k",
        ],
    )?;
    images.push(std::fs::read(d.join("x.qcow2"))?);
    qemu_img(d, &["create", "-f", "qcow", "v1.qcow", "2M"])?;
    qemu_io(
        d,
        "qcow",
        "v1.qcow",
        &["write -P 1 1000 3000", "write -c -P 2 1M 4k"],
    )?;
    images.push(std::fs::read(d.join("v1.qcow"))?);
    let mut rng = Rng(99);
    let mut opened = 0;
    for good in &images {
        let l1 = be64(good, 40) as usize;
        for _ in 0..300 {
            let mut b = good.clone();
            for _ in 0..1 + rng.below(4) {
                // Mostly the header and the L1 table, sometimes anywhere.
                let at = match rng.below(3) {
                    0 => rng.below(112) as usize,
                    1 => l1 + rng.below(64) as usize,
                    _ => rng.below(b.len() as u64) as usize,
                };
                if let Some(byte) = b.get_mut(at) {
                    *byte ^= 1 << rng.below(8);
                }
            }
            let Ok(img) = open_bytes(d, "r.qcow2", &b)? else {
                continue;
            };
            opened += 1;
            let points = img.snapshots().len() + 1;
            let _ = img.list_snaps(0, img.size().min(64 * M));
            for p in 0..points {
                let point = if p + 1 == points {
                    Point::Head
                } else {
                    Point::Snap(p)
                };
                let mut buf = vec![0u8; 256 * K as usize];
                let _ = img.read(point, rng.below(img.size().max(1)), &mut buf);
                let _ = img.read(point, 0, &mut buf);
            }
        }
    }
    ensure!(
        opened > 100,
        "only {opened} damaged images opened: the damage is too coarse to test reads"
    );
    no_large_allocation()?;
    Ok(())
}

#[test]
fn backing_loops_and_depth() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    qemu_img(d, &["create", "-f", "qcow2", "a.qcow2", "1M"])?;
    qemu_img(
        d,
        &[
            "create", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2", "1M",
        ],
    )?;
    // Point a at b without QEMU checking (it would refuse to open the chain).
    qemu_img(
        d,
        &[
            "rebase", "-u", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2",
        ],
    )?;
    let e = open(&d.join("b.qcow2"))
        .err()
        .context("a loop must not open")?;
    check_words(
        "loop",
        &format!("{e:#}"),
        &["backing chain loop", "b.qcow2 -> ", "a.qcow2"],
    )?;
    qemu_img(d, &["create", "-f", "qcow2", "self.qcow2", "1M"])?;
    qemu_img(
        d,
        &[
            "rebase",
            "-u",
            "-f",
            "qcow2",
            "-b",
            "self.qcow2",
            "-F",
            "qcow2",
            "self.qcow2",
        ],
    )?;
    let e = open(&d.join("self.qcow2"))
        .err()
        .context("a self-loop must not open")?;
    check_words("self", &format!("{e:#}"), &["backing chain loop"])?;

    // A chain one deeper than the limit.
    qemu_img(d, &["create", "-f", "qcow2", "c0.qcow2", "1M"])?;
    for i in 1..=rbdm_format_qcow::MAX_CHAIN_DEPTH {
        let (below, top) = (format!("c{}.qcow2", i - 1), format!("c{i}.qcow2"));
        qemu_img(
            d,
            &[
                "create", "-f", "qcow2", "-b", &below, "-F", "qcow2", &top, "1M",
            ],
        )?;
    }
    let top = format!("c{}.qcow2", rbdm_format_qcow::MAX_CHAIN_DEPTH);
    let e = open(&d.join(&top))
        .err()
        .context("too deep a chain must not open")?;
    check_words("depth", &format!("{e:#}"), &["deeper than"])?;
    let ok = format!("c{}.qcow2", rbdm_format_qcow::MAX_CHAIN_DEPTH - 1);
    ensure!(open(&d.join(&ok))?.chain_depth() == rbdm_format_qcow::MAX_CHAIN_DEPTH - 1);

    // A missing backing file: NotFound, naming both files.
    qemu_img(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "gone.qcow2",
            "-F",
            "qcow2",
            "-u",
            "orphan.qcow2",
            "1M",
        ],
    )?;
    match rbdm_format_qcow::open(Box::new(FileStream::open(&d.join("orphan.qcow2"))?)) {
        Err(QcowError::Stream(SourceError::NotFound(m))) => {
            check_words("orphan", &m, &["gone.qcow2", "orphan.qcow2"])?
        }
        other => bail!("missing backing file: {:?}", other.map(|_| ())),
    }
    // A backing name that escapes the directory is refused by the stream, saying so.
    qemu_img(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "../x.qcow2",
            "-F",
            "qcow2",
            "-u",
            "escape.qcow2",
            "1M",
        ],
    )?;
    let e = open(&d.join("escape.qcow2"))
        .err()
        .context("escaping backing name")?;
    check_words("escape", &format!("{e:#}"), &["escapes"])?;
    Ok(())
}

/// Encryption and external data files are refused by name (ENOSYS), not misread.
#[test]
fn refused_features() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let secret = ["--object", "secret,id=sec0,data=123456"];
    let mut args = vec!["create"];
    args.extend(secret);
    args.extend([
        "-f",
        "qcow2",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0",
        "luks.qcow2",
        "4M",
    ]);
    qemu_img(d, &args)?;
    let mut args = vec!["create"];
    args.extend(secret);
    args.extend([
        "-f",
        "qcow",
        "-o",
        "encryption=on,encrypt.key-secret=sec0",
        "aes.qcow",
        "4M",
    ]);
    qemu_img(d, &args)?;
    create_qcow2(d, "ext.qcow2", "data_file=ext.raw", "4M")?;
    for (name, words) in [
        ("luks.qcow2", &["encrypted", "LUKS", "offset 32"][..]),
        ("aes.qcow", &["encrypted", "AES", "offset 36"][..]),
        ("ext.qcow2", &["external data file", "ext.raw"][..]),
    ] {
        match rbdm_format_qcow::open(Box::new(FileStream::open(&d.join(name))?)) {
            Err(e @ QcowError::Unsupported(_)) => {
                check_words(name, &e.to_string(), words)?;
                ensure!(
                    SourceError::from(e).errno() == ENOSYS,
                    "{name}: errno is not ENOSYS"
                );
            }
            other => bail!("{name}: {:?}", other.map(|_| ())),
        }
    }
    Ok(())
}
