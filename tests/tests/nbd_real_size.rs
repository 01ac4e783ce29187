//! `rbdm nbd export` of a real-sized image, as Ceph's `cli_migration.sh` makes it: 1025 MiB
//! written by `bench --io-pattern rand --io-size 4K --io-total 256M`, about 45 000 data
//! extents. QEMU walks block status one extent per request (`REQ_ONE`, length to the end of
//! the export), so `qemu-img map` and `qemu-img convert` of the export finish in time only if
//! each reply costs what it covers (issue 12, point 5).
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rbdm_tests::*;

/// Generous for a debug build on a loaded machine; before the fix `qemu-img map` printed
/// 30 of about 90 000 entries in 20 s.
const BOUND: Duration = Duration::from_secs(150);

/// Runs `cmd` to completion, or kills it and fails once `bound` has passed.
fn run_within(cmd: &mut Command, bound: Duration, what: &str) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    // Drain stdout on a thread: a map of 90 000 entries does not fit a pipe buffer.
    let mut out = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut buf).map(|_| buf)
    });
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if start.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let elapsed = start.elapsed();
    let stdout = reader.join().expect("reader").expect("stdout");
    let mut output = child.wait_with_output().expect("output");
    output.stdout = stdout;
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (output, elapsed)
}

/// Adjacent extents joined, so maps from different tools compare equal.
fn merged(extents: impl IntoIterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (o, l) in extents {
        match out.last_mut() {
            Some(last) if last.0 + last.1 == o => last.1 += l,
            _ => out.push((o, l)),
        }
    }
    out
}

/// The data extents `qemu-img map --output=json` reports.
fn map_data(json: &[u8]) -> Vec<(u64, u64)> {
    let map: serde_json::Value = serde_json::from_slice(json).expect("map JSON");
    let entries = map.as_array().expect("map is a list");
    let mut pos = 0;
    for e in entries {
        assert_eq!(
            e["start"].as_u64(),
            Some(pos),
            "map entries cover the export: {e}"
        );
        pos += e["length"].as_u64().expect("length");
    }
    assert_eq!(pos, 1025 << 20, "map covers the whole export");
    merged(
        entries
            .iter()
            .filter(|e| e["data"] == true)
            .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap())),
    )
}

/// The image's own allocation, as `rbdm diff` lists it.
fn diff_data(env: &Env, image: &str) -> Vec<(u64, u64)> {
    let diff = env.json(&["diff", image]);
    merged(
        diff.as_array()
            .expect("diff is a list")
            .iter()
            .filter(|e| e["exists"] == "true" || e["exists"] == true)
            .map(|e| (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap())),
    )
}

fn qemu_img(args: &[&str], uri: &str, extra: Option<&Path>) -> Command {
    let mut c = Command::new("qemu-img");
    c.args(args).arg(uri);
    if let Some(p) = extra {
        c.arg(p);
    }
    c
}

#[test]
fn qemu_img_map_and_convert_of_a_random_4k_image_finish_and_match() {
    let env = Env::new();
    env.ok(&["create", "--size", "1025M", "base"]);
    env.bench_rand("base", "4K", "256M");
    let want = diff_data(&env, "base");
    assert!(
        want.len() > 30_000,
        "real-sized in extent count: {} extents",
        want.len()
    );
    let sock = env.path("base.sock");
    let (server, uri) = {
        let mut child = env
            .command(&["nbd", "export", "base", "--socket", sock.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("rbdm nbd export starts");
        let mut line = String::new();
        let out = child.stdout.take().expect("piped");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).unwrap();
        (Killed(child), line.trim().to_string())
    };
    assert!(uri.starts_with("nbd+unix://"), "{uri}");

    let (map, took) = run_within(
        &mut qemu_img(&["map", "--output=json", "-f", "raw"], &uri, None),
        BOUND,
        "qemu-img map",
    );
    eprintln!("qemu-img map of the export: {took:?}");
    assert_eq!(
        map_data(&map.stdout),
        want,
        "map equals the image's allocation"
    );

    let conv = env.path("conv.raw");
    let (_, took) = run_within(
        &mut qemu_img(&["convert", "-f", "raw", "-O", "raw"], &uri, Some(&conv)),
        BOUND,
        "qemu-img convert",
    );
    eprintln!("qemu-img convert of the export: {took:?}");
    drop(server);
    let exp = env.path("exp.raw");
    env.ok(&["export", "base", exp.to_str().unwrap()]);
    same_bytes(&conv, &exp);
}

/// Compares two files a MiB at a time with slice equality (a byte loop takes minutes over
/// 1 GiB in a debug build); names the first differing MiB.
fn same_bytes(a: &Path, b: &Path) {
    use std::io::Read;
    let size = |p: &Path| std::fs::metadata(p).expect("stat").len();
    assert_eq!(
        size(a),
        size(b),
        "{} and {} differ in size",
        a.display(),
        b.display()
    );
    let (mut fa, mut fb) = (
        std::fs::File::open(a).expect("open"),
        std::fs::File::open(b).expect("open"),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    for mib in 0.. {
        let n = fa.read(&mut ba).expect("read");
        if n == 0 {
            return;
        }
        fb.read_exact(&mut bb[..n]).expect("read");
        assert!(ba[..n] == bb[..n], "converted bytes differ in MiB {mib}");
    }
}
