//! `cargo xtask bench`: every figure is a ratio against a peer measured in the same run on the
//! same disk, so numbers from different machines can be compared.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util::{self, Guard};

const BENCHES: &[&str] = &[
    "image",
    "migration",
    "source",
    "nbd",
    "nbd-map",
    "same-store",
    "live-reads",
];

pub fn run(args: &[String]) -> Result<()> {
    // `--vs-ceph` runs `rbd migration` on a throwaway Ceph cluster beside rbdm in the same run.
    let vs_ceph = args.iter().any(|a| a == "--vs-ceph");
    let names: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--vs-ceph")
        .collect();
    let names = if names.is_empty() {
        // `nbd` ends with the `nbd-map` row already: the default list runs it once.
        BENCHES
            .iter()
            .copied()
            .filter(|n| *n != "nbd-map")
            .collect()
    } else {
        names
    };
    for n in &names {
        if !BENCHES.contains(n) {
            bail!("unknown bench {n:?}; known: {}", BENCHES.join(", "));
        }
    }
    let rbdm = util::release_rbdm()?;
    for n in names {
        match n {
            "image" => image(&rbdm)?,
            "migration" => crate::bench_migration::run(&rbdm, vs_ceph)?,
            "same-store" => crate::bench_live::same_store(&rbdm)?,
            "live-reads" => crate::bench_live::reads_during_execute(&rbdm)?,
            "source" => crate::bench_source::run(&rbdm)?,
            "nbd" => nbd(&rbdm)?,
            // The sparse row of `nbd` alone.
            "nbd-map" => crate::bench_nbd_map::run(&rbdm)?,
            _ => unreachable!("checked above"),
        }
    }
    Ok(())
}

/// Issue 2: sequential write then read of a 1 GiB image through the image API (`rbdm bench`,
/// 4 MiB I/Os), against `dd` of a plain file with the same I/O size on the same disk.
fn image(rbdm: &Path) -> Result<()> {
    let dir = util::scratch("bench-image")?;
    let plain = dir.join("plain.img");
    let dd_write = util::timed(Command::new("dd").args([
        "if=/dev/zero",
        &format!("of={}", plain.display()),
        "bs=4M",
        "count=256",
        "conv=fdatasync",
    ]))?;
    let (rb_write, rb_read) = rbdm_seq(rbdm, &dir.join("store"), true)?;
    let dd_read = util::timed(Command::new("dd").args([
        &format!("if={}", plain.display()),
        "of=/dev/null",
        "bs=4M",
    ]))?;
    // The same on a store without data checksums, for their cost (target: within 5%).
    let (bare_write, bare_read) = rbdm_seq(rbdm, &dir.join("store-bare"), false)?;
    println!("\nbench image: 1 GiB sequential, 4 MiB I/Os, same disk, same run (target: within 1.5x of dd)");
    row("write", rb_write, dd_write);
    row("read", rb_read, dd_read);
    println!(
        "checksums (crc32c per 4 KiB block) against a store without them (target: within 1.05x):"
    );
    row_vs("write", rb_write, bare_write);
    row_vs("read", rb_read, bare_read);
    Ok(())
}

/// `rbdm bench` write then read of a new 1 GiB image, one thread, 4 MiB sequential I/Os.
fn rbdm_seq(rbdm: &Path, root: &Path, checksums: bool) -> Result<(Duration, Duration)> {
    let store = format!("dir://{}", root.display());
    let rb = |args: &[&str]| -> Command {
        let mut c = Command::new(rbdm);
        c.env("RBDM_STORE", &store).args(args);
        if !checksums {
            c.env("RBDM_STORE_CHECKSUMS", "off");
        }
        c
    };
    util::output(&mut rb(&["create", "--size", "1G", "bench"]))?;
    let seq_bench = |io_type: &str| {
        rb(&[
            "bench",
            "--io-type",
            io_type,
            "--io-size",
            "4M",
            "--io-threads",
            "1",
            "--io-total",
            "1G",
            "--io-pattern",
            "seq",
            "bench",
        ])
    };
    let write = util::timed(&mut seq_bench("write"))?;
    let read = util::timed(&mut seq_bench("read"))?;
    Ok((write, read))
}

fn row_vs(what: &str, ours: Duration, bare: Duration) {
    println!(
        "  {what:<6} with {:>6.2} s   without {:>6.2} s   ratio {:.3}x",
        ours.as_secs_f64(),
        bare.as_secs_f64(),
        ours.as_secs_f64() / bare.as_secs_f64()
    );
}

fn row(what: &str, ours: Duration, peer: Duration) {
    let gib_s = |d: Duration| 1.0 / d.as_secs_f64();
    println!(
        "  {what:<6} rbdm {:>6.2} s ({:>5.2} GiB/s)   dd {:>6.2} s ({:>5.2} GiB/s)   ratio {:.2}x",
        ours.as_secs_f64(),
        gib_s(ours),
        peer.as_secs_f64(),
        gib_s(peer),
        ours.as_secs_f64() / peer.as_secs_f64()
    );
}

/// The NBD bench's image and file size (`rbdm --size` reads a bare number as MiB).
const NBD_SIZE: &str = "1G";
/// `qemu-img bench` has no random pattern: it steps by `-S` modulo the size. An odd number of
/// 4 KiB blocks near size/golden ratio visits every block, each request far from the last.
const SCATTER_STEP: &str = "679481344"; // 165889 * 4096

/// One `qemu-img bench` case.
struct NbdCase {
    name: &'static str,
    unit: &'static str,
    args: &'static [&'static str],
    count: u64,
    io_size: u64,
}

const NBD_CASES: &[NbdCase] = &[
    NbdCase {
        name: "4K random read",
        unit: "IOPS",
        args: &["-s", "4k", "-S", SCATTER_STEP],
        count: 100_000,
        io_size: 4096,
    },
    NbdCase {
        name: "4K random write",
        unit: "IOPS",
        args: &["-w", "-s", "4k", "-S", SCATTER_STEP],
        count: 50_000,
        io_size: 4096,
    },
    NbdCase {
        name: "1M seq read",
        unit: "MiB/s",
        args: &["-s", "1M"],
        count: 2048,
        io_size: 1 << 20,
    },
    NbdCase {
        name: "1M seq write",
        unit: "MiB/s",
        args: &["-w", "-s", "1M"],
        count: 1024,
        io_size: 1 << 20,
    },
];

/// Issue 4: `rbdm nbd export` of a 1 GiB image against `qemu-nbd` of a 1 GiB raw file on the
/// same disk, both over a Unix socket with their page cache (writeback), both driven by
/// `qemu-img bench` with 16 requests in flight, both fully written first so reads hit data.
/// Each case runs twice per server, alternating; the better run of each counts. Then the
/// sparse row (bench_nbd_map.rs): map and convert of a random-4K image.
fn nbd(rbdm: &Path) -> Result<()> {
    for tool in ["qemu-img", "qemu-nbd"] {
        if !util::have(tool) {
            bail!("bench nbd needs {tool} (Debian: qemu-utils)");
        }
    }
    let dir = util::scratch("bench-nbd")?;
    let store = format!("dir://{}", dir.join("store").display());
    let plain = dir.join("plain.raw");
    let size = NBD_SIZE;
    let rb = |args: &[&str]| -> Command {
        let mut c = Command::new(rbdm);
        c.env("RBDM_STORE", &store).args(args);
        c
    };
    util::output(&mut rb(&["create", "--size", size, "bench"]))?;
    util::output(&mut rb(&[
        "bench",
        "--io-type",
        "write",
        "--io-size",
        "4M",
        "--io-threads",
        "1",
        "--io-total",
        size,
        "bench",
    ]))?;
    util::full_raw(&plain, 1 << 30)?;
    // rbdm's close fsynced its objects; do the same for the file so no writeback is left over.
    util::output(Command::new("sync").arg(&plain))?;

    let mut ours = rb(&["nbd", "export", "bench", "--socket"]);
    ours.arg(dir.join("rbdm.sock"));
    let (ours, our_uri) = start_rbdm(ours)?;
    let (peer, peer_uri) = start_qemu_nbd(&plain, &dir.join("qemu.sock"))?;
    println!("\nbench nbd: 1 GiB over a Unix socket, qemu-img bench -d 16, best of 2 (target: at least 0.8x qemu-nbd)");
    for case in NBD_CASES {
        let (mut mine, mut theirs) = (0.0f64, 0.0f64);
        for _ in 0..2 {
            theirs = theirs.max(qemu_bench(case, &peer_uri)?);
            mine = mine.max(qemu_bench(case, &our_uri)?);
        }
        println!(
            "  {:<16} rbdm {mine:>8.0} {unit:<5}   qemu-nbd {theirs:>8.0} {unit:<5}   ratio {:.2}x",
            case.name,
            mine / theirs,
            unit = case.unit
        );
    }
    drop(ours);
    drop(peer);
    crate::bench_nbd_map::run(rbdm)
}

/// Starts `rbdm nbd export`; the first line it prints is its URI, once it listens.
pub(crate) fn start_rbdm(mut cmd: Command) -> Result<(Guard, String)> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let shown = util::show(&cmd);
    let mut server = Guard(
        cmd.spawn()
            .with_context(|| format!("cannot start {shown}"))?,
    );
    let out = server
        .0
        .stdout
        .take()
        .context("rbdm nbd export has no stdout")?;
    let mut uri = String::new();
    BufReader::new(out)
        .read_line(&mut uri)
        .with_context(|| format!("reading the URI from {shown}"))?;
    let uri = uri.trim().to_string();
    if !uri.starts_with("nbd") {
        bail!("{shown} did not print its URI (got {uri:?})");
    }
    Ok((server, uri))
}

pub(crate) fn start_qemu_nbd(file: &Path, socket: &Path) -> Result<(Guard, String)> {
    let mut cmd = Command::new("qemu-nbd");
    cmd.args(["-f", "raw", "-t", "--cache=writeback", "--socket"])
        .arg(socket)
        .arg(file);
    cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
    let shown = util::show(&cmd);
    let mut server = Guard(
        cmd.spawn()
            .with_context(|| format!("cannot start {shown}"))?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(socket).is_err() {
        if let Ok(Some(status)) = server.0.try_wait() {
            bail!("{shown} exited before listening: {status}");
        }
        if Instant::now() > deadline {
            bail!("{shown} did not listen on {} within 10 s", socket.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((server, format!("nbd+unix:///?socket={}", socket.display())))
}

/// One case against one URI: requests a second, or MiB a second.
fn qemu_bench(case: &NbdCase, uri: &str) -> Result<f64> {
    let count = case.count.to_string();
    let mut cmd = Command::new("qemu-img");
    cmd.args(["bench", "-f", "raw", "-d", "16", "-c", &count])
        .args(case.args)
        .arg(uri);
    let secs = util::qemu_bench_seconds(&mut cmd)?;
    let per_sec = case.count as f64 / secs.max(1e-9);
    Ok(if case.unit == "IOPS" {
        per_sec
    } else {
        per_sec * case.io_size as f64 / f64::from(1 << 20)
    })
}
