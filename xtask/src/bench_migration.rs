//! `cargo xtask bench migration`: import-only migration of NOTES.md's disk shape (1 GiB, 369
//! MiB allocated) from qcow2 and raw sources over file, http (nginx) and s3, timed against
//! `qemu-img convert -O raw` of the same file in the same run. With `--vs-ceph` Ceph's own
//! `rbd migration` runs the same imports on a throwaway cluster in the same run (s3 from that
//! cluster's radosgw for both); without it, Ceph Pacific's figures from NOTES.md are shown.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::{ceph, util};

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

/// Ceph Pacific's execute times from NOTES.md, shown when no cluster runs beside us.
const CEPH_NOTES: [(&str, f64); 6] = [
    ("qcow+file", 0.55),
    ("raw+file", 1.61),
    ("qcow+http", 1.40),
    ("raw+http", 3.13),
    ("qcow+s3", 9.39),
    ("raw+s3", 3.75),
];

pub fn run(rbdm: &Path, vs_ceph: bool) -> Result<()> {
    let dir = util::scratch("bench-migration")?;
    let (raw, qcow) = (dir.join("disk.raw"), dir.join("disk.qcow2"));
    make_disk(&raw, &qcow)?;
    // `execute` makes its copies durable (fsync) before it reports `executed`; so does
    // `qemu-img convert -t writeback`. Plain `qemu-img convert` does not sync at all.
    let unsynced = qemu_img_peer(&qcow, &dir.join("converted.raw"), false)?;
    let peer = qemu_img_peer(&qcow, &dir.join("converted.raw"), true)?;
    println!(
        "\nbench migration: import-only, 1 GiB disk with 369 MiB allocated, same run, median of 3"
    );
    println!(
        "  peer: qemu-img convert -t writeback -O raw of the qcow2 (fsyncs at the end, as execute does): {:.2} s; without -t (no sync): {:.2} s",
        peer.as_secs_f64(),
        unsynced.as_secs_f64()
    );
    sparse_tib(rbdm)?;
    let cluster = start_cluster(vs_ceph)?;
    let s3 = S3::start(
        cluster.as_ref(),
        &[("disk.qcow2", &qcow), ("disk.raw", &raw)],
    )?;
    let access_log = dir.join("access.log");
    let web = rbdm_tests::servers::nginx_logged(&dir, Some(&access_log));
    let rbd = if vs_ceph { cluster.as_ref() } else { None };
    println!("  s3 server: {}", s3.kind);
    if rbd.is_some() {
        println!("  row        rbdm execute (requests)  rbd execute (requests)  rbd/rbdm  rbdm/qemu-img  used rbdm | rbd  content rbdm | rbd");
    }
    let mut n = 0;
    for (format, file) in [("qcow", "disk.qcow2"), ("raw", "disk.raw")] {
        for stream in ["file", "http", "s3"] {
            let sspec = stream_spec(stream, &dir, file, &web, &s3);
            let spec = format!(r#"{{"type":"{format}","stream":{sspec}}}"#);
            let name = format!("{format}+{stream}");
            let log = match stream {
                "http" => Some(RequestLog::Lines(access_log.clone())),
                "s3" => s3.log.clone(),
                _ => None,
            };
            // moto is slow enough that one round says all there is to say.
            let rounds = if stream == "s3" && s3.log.is_none() {
                1
            } else {
                3
            };
            let job = Job {
                dir: &dir,
                name: &name,
                spec: &spec,
                truth: &raw,
                log: log.as_ref(),
            };
            let ours = import_rbdm(rbdm, &job, rounds)?;
            match rbd {
                Some(c) => {
                    n += 1;
                    let theirs = import_rbd(c, &job, n)?;
                    row_vs(&name, &ours, &theirs, peer);
                }
                None => {
                    let noted = CEPH_NOTES.iter().find(|c| c.0 == name).map_or(0.0, |c| c.1);
                    row(&name, &ours, peer, noted);
                }
            }
        }
    }
    if let Some(c) = rbd {
        probes(rbdm, c, &dir)?;
    }
    Ok(())
}

/// With `--vs-ceph` a cluster to run `rbd` on; without it, one anyway whenever Ceph is
/// installed, for its radosgw: moto copies the whole object on every ranged GET, so s3 rows
/// against moto measure moto, not us.
fn start_cluster(vs_ceph: bool) -> Result<Option<ceph::Cluster>> {
    if !vs_ceph && !ceph::missing(true).is_empty() {
        return Ok(None);
    }
    match ceph::Cluster::start(&util::scratch("bench-migration-ceph")?, true) {
        Ok(c) => {
            println!(
                "  Ceph cluster (1 mon, 1 BlueStore OSD, radosgw) started in {:.1} s",
                c.started_in.as_secs_f64()
            );
            Ok(Some(c))
        }
        Err(e) if !vs_ceph => {
            println!("  no radosgw ({e:#}); the s3 rows use moto");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The `stream` part of a source-spec; Ceph's `rbd` and rbdm take the same JSON.
fn stream_spec(
    stream: &str,
    dir: &Path,
    file: &str,
    web: &rbdm_tests::servers::Server,
    s3: &S3,
) -> String {
    match stream {
        "file" => format!(
            r#"{{"type":"file","file_path":"{}"}}"#,
            dir.join(file).display()
        ),
        "http" => format!(r#"{{"type":"http","url":"{}"}}"#, web.url(file)),
        _ => format!(
            r#"{{"type":"s3","url":"http://127.0.0.1:{}/images/{file}","access_key":"{}","secret_key":"{}"}}"#,
            s3.port, s3.access_key, s3.secret_key
        ),
    }
}

fn qemu_img_peer(qcow: &Path, out: &Path, durable: bool) -> Result<Duration> {
    let convert = || {
        let mut c = Command::new("qemu-img");
        c.arg("convert");
        if durable {
            c.args(["-t", "writeback"]);
        }
        c.args(["-f", "qcow2", "-O", "raw"]).arg(qcow).arg(out);
        c
    };
    // Warm the page cache for both sides alike.
    util::output(&mut convert())?;
    let mut peers = Vec::new();
    for _ in 0..3 {
        let _ = std::fs::remove_file(out);
        peers.push(util::timed(&mut convert())?);
    }
    let _ = std::fs::remove_file(out);
    Ok(median(peers))
}

/// Where the s3 rows read from: a cluster's radosgw, or moto when Ceph is not installed.
struct S3 {
    kind: &'static str,
    port: u16,
    access_key: String,
    secret_key: String,
    log: Option<RequestLog>,
    _moto: Option<rbdm_tests::servers::Server>,
}

impl S3 {
    fn start(cluster: Option<&ceph::Cluster>, files: &[(&str, &Path)]) -> Result<S3> {
        let Some(rgw) = cluster.and_then(|c| c.rgw().map(|r| (c, r))) else {
            let (moto, ak, sk) = rbdm_tests::servers::moto(files);
            return Ok(S3 {
                kind: "moto (Ceph's radosgw not installed)",
                port: moto.port,
                access_key: ak,
                secret_key: sk,
                log: None,
                _moto: Some(moto),
            });
        };
        let (c, r) = rgw;
        let mut up = Command::new("python3");
        up.args([
            "-c",
            RGW_UPLOAD,
            &r.endpoint(),
            &r.access_key,
            &r.secret_key,
        ]);
        for (name, path) in files {
            up.arg(format!("{name}={}", path.display()));
        }
        util::output(&mut up).context("uploading the disks to radosgw with boto3")?;
        Ok(S3 {
            kind: "radosgw (Ceph Pacific, same cluster)",
            port: r.port,
            access_key: r.access_key.clone(),
            secret_key: r.secret_key.clone(),
            log: Some(RequestLog::Rgw(c.rgw_log())),
            _moto: None,
        })
    }
}

const RGW_UPLOAD: &str = r#"
import sys, boto3, botocore.config
endpoint, ak, sk, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=ak,
                  aws_secret_access_key=sk, config=botocore.config.Config(s3={"addressing_style": "path"}))
s3.create_bucket(Bucket="images")
for f in files:
    name, path = f.split("=", 1)
    s3.upload_file(path, "images", name)
"#;

/// A server log that grows by one line per request served.
#[derive(Clone)]
enum RequestLog {
    /// nginx's access log: every line is a request.
    Lines(PathBuf),
    /// radosgw's log: requests are the `beast:` lines among others.
    Rgw(PathBuf),
}

impl RequestLog {
    fn count(&self) -> u64 {
        let (path, pat) = match self {
            RequestLog::Lines(p) => (p, ""),
            RequestLog::Rgw(p) => (p, " beast: "),
        };
        std::fs::read_to_string(path)
            .map(|t| t.lines().filter(|l| l.contains(pat)).count() as u64)
            .unwrap_or(0)
    }
}

/// One import to measure, the same for rbdm and rbd.
struct Job<'a> {
    dir: &'a Path,
    name: &'a str,
    spec: &'a str,
    /// What the image must read back as.
    truth: &'a Path,
    log: Option<&'a RequestLog>,
}

/// What one side did: median execute time, requests of the first round's prepare + execute,
/// used space, and whether the first round's image read back as the source.
struct Outcome {
    time: Duration,
    rounds: usize,
    requests: Option<u64>,
    used: String,
    same: Result<(), String>,
}

fn import_rbdm(rbdm: &Path, job: &Job, rounds: usize) -> Result<Outcome> {
    let mut times = Vec::new();
    let (mut used, mut requests, mut same) = (String::new(), None, Ok(()));
    for round in 0..rounds {
        let store_dir = job.dir.join(format!("store-{}-{round}", job.name));
        let store = format!("dir://{}", store_dir.display());
        let rb = |args: &[&str]| {
            let mut c = Command::new(rbdm);
            c.env("RBDM_STORE", &store).args(args);
            c
        };
        let before = job.log.map(RequestLog::count);
        util::output(&mut rb(&[
            "migration",
            "prepare",
            "--import-only",
            "--source-spec",
            job.spec,
            "img",
        ]))?;
        times.push(util::timed(&mut rb(&["migration", "execute", "img"]))?);
        if round == 0 {
            requests = before
                .zip(job.log.map(RequestLog::count))
                .map(|(b, a)| a - b);
        }
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
        if round == 0 {
            let out = job.dir.join("export.raw");
            let _ = std::fs::remove_file(&out);
            util::output(rb(&["export", "img"]).arg(&out))?;
            same = same_bytes(job.truth, &out);
            let _ = std::fs::remove_file(&out);
        }
        let _ = std::fs::remove_dir_all(&store_dir);
    }
    Ok(Outcome {
        time: median(times),
        rounds,
        requests,
        used,
        same,
    })
}

/// The same import with Ceph's `rbd` into pool `rbd`: three rounds, or one when the first
/// is slow.
fn import_rbd(c: &ceph::Cluster, job: &Job, n: usize) -> Result<Outcome> {
    let mut times = Vec::new();
    let (mut used, mut requests, mut same) = (String::new(), None, Ok(()));
    for round in 0..3 {
        let image = format!("rbd/img{n}-{round}");
        let before = job.log.map(RequestLog::count);
        util::output(c.rbd().args([
            "migration",
            "prepare",
            "--import-only",
            "--source-spec",
            job.spec,
            &image,
        ]))?;
        times.push(util::timed(c.rbd().args([
            "--no-progress",
            "migration",
            "execute",
            &image,
        ]))?);
        if round == 0 {
            requests = before
                .zip(job.log.map(RequestLog::count))
                .map(|(b, a)| a - b);
        }
        util::output(
            c.rbd()
                .args(["--no-progress", "migration", "commit", &image]),
        )?;
        let du = util::output(c.rbd().args(["du", &image]))?;
        let cols: Vec<&str> = du.lines().last().unwrap_or("").split_whitespace().collect();
        used = cols[cols.len().saturating_sub(2)..].join(" ");
        if round == 0 {
            let out = job.dir.join("export.raw");
            let _ = std::fs::remove_file(&out);
            util::output(c.rbd().args(["--no-progress", "export", &image]).arg(&out))?;
            same = same_bytes(job.truth, &out);
            let _ = std::fs::remove_file(&out);
        }
        util::output(c.rbd().args(["--no-progress", "rm", &image]))?;
        if times[0] > Duration::from_secs(15) {
            break;
        }
    }
    let rounds = times.len();
    Ok(Outcome {
        time: median(times),
        rounds,
        requests,
        used,
        same,
    })
}

/// Ok when both files hold the same bytes; else where they first differ.
fn same_bytes(a: &Path, b: &Path) -> Result<(), String> {
    let open = |p: &Path| std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
    let mut at = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(|e| e.to_string())?;
        let nb = read_full(&mut fb, &mut bb).map_err(|e| e.to_string())?;
        if let Some(i) = ba[..na.min(nb)]
            .iter()
            .zip(&bb[..na.min(nb)])
            .position(|(x, y)| x != y)
        {
            return Err(format!("differs at byte {}", at + i as u64));
        }
        if na != nb {
            return Err(format!(
                "sizes differ after {} bytes",
                at + na.min(nb) as u64
            ));
        }
        if na == 0 {
            return Ok(());
        }
        at += na as u64;
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Small sources that Ceph Pacific is known to import wrongly (NOTES.md): a compressed qcow2,
/// and a qcow2 v3 zero flag over a still-allocated cluster. Both sides import each; the result
/// is checked against qemu-img's reading of the same file.
fn probes(rbdm: &Path, c: &ceph::Cluster, dir: &Path) -> Result<()> {
    let raw = dir.join("probe.raw");
    util::output(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "raw"])
            .arg(&raw)
            .arg("16M"),
    )?;
    util::output(
        Command::new("qemu-io")
            .args([
                "-f",
                "raw",
                "-c",
                "write -P 0x41 0 8M",
                "-c",
                "write -P 0x42 8M 4M",
            ])
            .arg(&raw),
    )?;
    let compressed = dir.join("probe-compressed.qcow2");
    util::output(
        Command::new("qemu-img")
            .args(["convert", "-c", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&compressed),
    )?;
    let zeroed = dir.join("probe-zero-flag.qcow2");
    util::output(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&zeroed),
    )?;
    // Without -u the cluster stays allocated and only gains the zero flag.
    util::output(
        Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write -z 0 1M"])
            .arg(&zeroed),
    )?;
    println!("  correctness probes (16 MiB qcow2 over file; content checked against qemu-img):");
    for (i, (what, qcow)) in [
        ("compressed clusters", &compressed),
        ("zero flag over data", &zeroed),
    ]
    .into_iter()
    .enumerate()
    {
        let truth = dir.join(format!("probe-{i}.truth.raw"));
        util::output(
            Command::new("qemu-img")
                .args(["convert", "-f", "qcow2", "-O", "raw"])
                .arg(qcow)
                .arg(&truth),
        )?;
        let spec = format!(
            r#"{{"type":"qcow","stream":{{"type":"file","file_path":"{}"}}}}"#,
            qcow.display()
        );
        let out = dir.join(format!("probe-{i}.out.raw"));
        let store = format!("dir://{}", dir.join(format!("probe-store-{i}")).display());
        let rb = |args: &[&str]| {
            let mut c = Command::new(rbdm);
            c.env("RBDM_STORE", &store).args(args);
            c
        };
        let ours = probe_side(
            rb(&[
                "migration",
                "prepare",
                "--import-only",
                "--source-spec",
                &spec,
                "img",
            ]),
            rb(&["migration", "execute", "img"]),
            {
                let mut e = rb(&["export", "img"]);
                e.arg(&out);
                e
            },
            &truth,
            &out,
        );
        let image = format!("rbd/probe{i}");
        let mut prep = c.rbd();
        prep.args([
            "migration",
            "prepare",
            "--import-only",
            "--source-spec",
            &spec,
            &image,
        ]);
        let mut exec = c.rbd();
        exec.args(["--no-progress", "migration", "execute", &image]);
        let mut export = c.rbd();
        export.args(["--no-progress", "export", &image]).arg(&out);
        let theirs = probe_side(prep, exec, export, &truth, &out);
        println!("    {what:<20} rbdm: {ours}\n    {:<20} rbd:  {theirs}", "");
        let _ = std::fs::remove_dir_all(dir.join(format!("probe-store-{i}")));
    }
    Ok(())
}

/// Prepare, execute, export, compare: one line saying how it went.
fn probe_side(
    mut prep: Command,
    mut exec: Command,
    mut export: Command,
    truth: &Path,
    out: &Path,
) -> String {
    let _ = std::fs::remove_file(out);
    if let Err(e) = util::output(&mut prep) {
        return format!("prepare failed: {}", last_line(&e.to_string()));
    }
    let executed = match util::output(&mut exec) {
        Ok(_) => "execute exit 0".to_string(),
        Err(e) => format!("execute failed: {}", last_line(&e.to_string())),
    };
    let content = match util::output(&mut export) {
        Err(e) => format!("export failed: {}", last_line(&e.to_string())),
        Ok(_) => match same_bytes(truth, out) {
            Ok(()) => "content same".to_string(),
            Err(e) => format!("content WRONG ({e})"),
        },
    };
    let _ = std::fs::remove_file(out);
    format!("{executed}, {content}")
}

/// The line that names the cause: `rbd`'s own `rbd: ...` line when there is one (librbd logs
/// many lines before it), else the last line.
fn last_line(s: &str) -> &str {
    let lines: Vec<&str> = s.trim_end().lines().collect();
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with("rbd: "))
        .or(lines.last())
        .copied()
        .unwrap_or("")
}

fn row(name: &str, ours: &Outcome, peer: Duration, ceph: f64) {
    let t = ours.time.as_secs_f64();
    println!(
        "  {name:<10} execute {t:>6.2} s   ratio to qemu-img {:.2}x   Ceph Pacific (NOTES.md) {ceph:.2} s   requests {}   du used: {}   content {}",
        t / peer.as_secs_f64(),
        requests(ours),
        ours.used,
        content(ours)
    );
}

fn requests(o: &Outcome) -> String {
    o.requests.map_or("-".to_string(), |r| r.to_string())
}

fn content(o: &Outcome) -> String {
    match &o.same {
        Ok(()) => "same".to_string(),
        Err(e) => format!("WRONG: {e}"),
    }
}

fn row_vs(name: &str, ours: &Outcome, theirs: &Outcome, peer: Duration) {
    let rounds = |o: &Outcome| {
        if o.rounds == 3 {
            String::new()
        } else {
            format!(" ({} run)", o.rounds)
        }
    };
    println!(
        "  {name:<10} {:>7.2} s{} ({:>5})    {:>7.2} s{} ({:>5})    {:>6.1}x   {:>6.2}x       {} | {}   {} | {}",
        ours.time.as_secs_f64(),
        rounds(ours),
        requests(ours),
        theirs.time.as_secs_f64(),
        rounds(theirs),
        requests(theirs),
        theirs.time.as_secs_f64() / ours.time.as_secs_f64(),
        ours.time.as_secs_f64() / peer.as_secs_f64(),
        ours.used,
        theirs.used,
        content(ours),
        content(theirs)
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Peak memory and time of `execute` on a 1 TiB qcow2 with three small extents, against
/// `qemu-img convert -O raw` of the same file to a sparse file, then on a 1 TiB native image
/// holding as little (a same-store migration): cost must follow the data, not the virtual
/// size (target: under 2 s and 128 MiB).
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
    let rbd = |args: &[&str]| {
        let mut c = Command::new(rbdm);
        c.env("RBDM_STORE", &store).args(args);
        c
    };
    let spec = format!(
        r#"{{"type":"qcow","stream":{{"type":"file","file_path":"{}"}}}}"#,
        qcow.display()
    );
    util::output(&mut rbd(&[
        "migration",
        "prepare",
        "--import-only",
        "--source-spec",
        &spec,
        "tib",
    ]))?;
    let ours = Usage::of(&mut rbd(&["migration", "execute", "tib", "--no-progress"]))?;
    let out = dir.join("converted.raw");
    let peer = Usage::of(
        Command::new("qemu-img")
            .args(["convert", "-t", "writeback", "-f", "qcow2", "-O", "raw"])
            .arg(&qcow)
            .arg(&out),
    )?;
    let _ = std::fs::remove_file(&out);
    println!(
        "  1 TiB sparse qcow2 (6 MiB of data): execute {ours}; peer qemu-img convert -t writeback -O raw: {peer} (target: under 2 s, 128 MiB)"
    );
    util::output(&mut rbd(&["create", "--size", "1T", "native"]))?;
    let fill = "bench --io-type write --io-size 64K --io-total 8M --io-pattern rand --no-progress";
    let fill: Vec<&str> = fill.split(' ').chain(["native"]).collect();
    util::output(&mut rbd(&fill))?;
    util::output(&mut rbd(&["migration", "prepare", "native", "native2"]))?;
    let native = Usage::of(&mut rbd(&[
        "migration",
        "execute",
        "native2",
        "--no-progress",
    ]))?;
    println!("  1 TiB sparse native image (8 MiB of data in 128 objects): execute {native}");
    Ok(())
}

/// What a finished command used: wall time, CPU time (user + system: a loaded machine
/// disturbs it less than the wall time) and peak RSS.
struct Usage {
    wall: Duration,
    cpu: Duration,
    rss_mib: i64,
}

impl Usage {
    fn of(cmd: &mut Command) -> Result<Usage> {
        let shown = util::show(cmd);
        let start = std::time::Instant::now();
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {shown}"))?;
        let pid = libc::pid_t::try_from(child.id()).context("child pid out of range")?;
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; wait4 on our own child fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waiting for the child we just spawned; pointers are to live locals.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        let wall = start.elapsed();
        let _ = child.try_wait();
        if rc != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            anyhow::bail!("{shown} failed (wait status {status})");
        }
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec.max(0) as u64)
                + Duration::from_micros(t.tv_usec.max(0) as u64)
        };
        Ok(Usage {
            wall,
            cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
            rss_mib: usage.ru_maxrss / 1024,
        })
    }
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} s ({:.2} s CPU), peak RSS {} MiB",
            self.wall.as_secs_f64(),
            self.cpu.as_secs_f64(),
            self.rss_mib
        )
    }
}
