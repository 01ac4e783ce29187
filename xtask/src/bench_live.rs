//! `cargo xtask bench same-store` and `bench live-reads`: a same-store migration against `cp
//! --sparse=always` of the object files, and 4 KiB client reads through NBD while `execute`
//! runs, against a plain image.
//!
//! Both measure a peer in the same run on the same disk and print ratios. `live-reads` also
//! counts source requests (an nginx access log) and fails if an uncopied read costs more
//! than one source read.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::util::{self, Guard};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4096;

/// `rbdm` on one dir store.
struct Rbdm {
    bin: PathBuf,
    store: String,
}

impl Rbdm {
    fn new(named: &Path, store: &Path) -> Rbdm {
        Rbdm {
            bin: named.to_path_buf(),
            store: format!("dir://{}", store.display()),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("RBDM_STORE", &self.store)
            .arg("--no-progress")
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        util::output(&mut self.cmd(args))
    }

    fn timed(&self, args: &[&str]) -> Result<Duration> {
        util::timed(&mut self.cmd(args))
    }

    fn timed_cpu(&self, args: &[&str]) -> Result<(Duration, Duration)> {
        util::timed_cpu(&mut self.cmd(args))
    }

    /// Fills an image with `rbdm bench` writes (sequential from offset 0).
    fn fill(&self, image: &str, io_size: &str, total: &str) -> Result<()> {
        self.run(&[
            "bench",
            "--io-type",
            "write",
            "--io-size",
            io_size,
            "--io-total",
            total,
            "--io-pattern",
            "seq",
            image,
        ])?;
        Ok(())
    }

    /// How far `execute` got, from `rbdm status`: 100 once executed. The figure is the
    /// persisted watermark: every object below it is copied, some above it may be too.
    fn percent(&self, image: &str) -> Result<u64> {
        let out = self.run(&["status", image])?;
        if let Some(rest) = out.split("executing (").nth(1) {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            return digits
                .parse()
                .with_context(|| format!("no percentage in rbdm status:\n{out}"));
        }
        if out.contains("executing") || out.contains("prepared") {
            return Ok(0);
        }
        if out.contains("executed") {
            return Ok(100);
        }
        bail!("rbdm status {image} shows no running migration:\n{out}")
    }

    /// `rbdm nbd export IMAGE` on a Unix socket; returns once it listens (it prints its URI).
    fn export(&self, image: &str, socket: &Path) -> Result<Export> {
        let mut cmd = self.cmd(&["nbd", "export", image, "--export-name", image, "--socket"]);
        cmd.arg(socket);
        let (guard, _uri) = crate::bench::start_rbdm(cmd)?;
        Ok(Export {
            _server: guard,
            socket: socket.to_path_buf(),
            name: image.to_string(),
        })
    }
}

/// A running NBD export.
struct Export {
    _server: Guard,
    socket: PathBuf,
    name: String,
}

/// A byte range of an image that a `qemu-img bench` run stays inside.
#[derive(Clone, Copy)]
struct Window {
    offset: u64,
    len: u64,
}

impl Export {
    /// 4 KiB reads inside `w`, 16 in flight, each far from the last (see `step`): IOPS.
    fn read_iops(&self, w: Window, count: u64) -> Result<f64> {
        // QEMU's raw driver over the NBD export, cut to the window by its offset and size.
        let opts = format!(
            "driver=raw,offset={},size={},file.driver=nbd,file.server.type=unix,file.server.path={},file.export={}",
            w.offset,
            w.len,
            self.socket.display(),
            self.name
        );
        let mut cmd = Command::new("qemu-img");
        cmd.args(["bench", "--image-opts", "-d", "16", "-s", "4k"])
            .arg("-c")
            .arg(count.to_string())
            .arg("-S")
            .arg(step(w.len).to_string())
            .arg(opts);
        let secs = util::qemu_bench_seconds(&mut cmd)?;
        Ok(count as f64 / secs.max(1e-9))
    }
}

/// `qemu-img bench` has no random pattern: it steps by `-S` modulo (size - 4 KiB). A step of
/// an odd number of blocks near size/golden ratio, coprime with the modulus, visits every
/// block before any repeats, each request far from the one before.
fn step(len: u64) -> u64 {
    let n = (len / BLOCK).saturating_sub(1).max(1);
    let mut k = ((n as f64 / 1.618_034) as u64) | 1;
    while gcd(k, n) != 1 {
        k += 2;
    }
    k * BLOCK
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Regular files under `dir`: their paths and allocated bytes.
fn files_under(dir: &Path) -> Result<(Vec<PathBuf>, u64)> {
    let mut files = Vec::new();
    let mut allocated = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in
            std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))?
        {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                todo.push(entry.path());
            } else if meta.is_file() {
                allocated += meta.blocks() * 512;
                files.push(entry.path());
            }
        }
    }
    Ok((files, allocated))
}

/// fsyncs every file under `dir` in one `sync` process (what `rbdm`'s flush does for its
/// objects), and returns how long that took.
fn sync_files(dir: &Path) -> Result<Duration> {
    let (files, _) = files_under(dir)?;
    let mut cmd = Command::new("sync");
    cmd.args(&files);
    util::timed(&mut cmd)
}

/// Wall and CPU time of the copy.
fn cp_sparse(from: &Path, to: &Path) -> Result<(Duration, Duration)> {
    util::timed_cpu(
        Command::new("cp")
            .args(["-r", "--sparse=always"])
            .arg(from)
            .arg(to),
    )
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Same-store migration of a 4 GiB image to another pool, against `cp -r --sparse=always` of
/// the store's object files on the same disk.
///
/// The image: 3 GiB written with 4 MiB I/Os (the last GiB a hole), snapshot `s1`, then the
/// first 512 MiB overwritten with 1 MiB I/Os, so 3.5 GiB of object files (512 MiB of them
/// snapshot clones). Fairness: both sides read a warm page cache (the peer's copy runs once
/// untimed first; the image was just written). Neither side fsyncs its data on its own
/// (`rbdm migration execute` does not flush the destination), so each is timed as it runs
/// and then with an fsync of every file it wrote, as a second figure. Rounds alternate a copy
/// and a migration (to the other pool and back), and the medians count: the machine is shared.
pub fn same_store(rbdm: &Path) -> Result<()> {
    let dir = util::scratch("bench-same-store")?;
    let store = dir.join("store");
    let rb = Rbdm::new(rbdm, &store);
    rb.run(&["create", "--size", "4G", "src"])?;
    rb.fill("src", "4M", "3G")?;
    rb.run(&["snap", "create", "src@s1"])?;
    rb.fill("src", "1M", "512M")?;
    rb.run(&["pool", "create", "target"])?;
    let data = store.join("data");
    let (files, before) = files_under(&data)?;

    let copy = dir.join("copy");
    cp_sparse(&data, &copy)?;
    std::fs::remove_dir_all(&copy)?;
    util::output(Command::new("sync").arg("-f").arg(&dir))?;
    let pools = ["rbd/src", "target/src"];
    let mut rounds = Vec::new();
    // CPU seconds (user + system) of the three rbdm commands and of cp, per round.
    let mut cpu = Vec::new();
    let mut copied = 0;
    let mut after = 0;
    for round in 0..ROUNDS {
        let (cp, cp_cpu) = cp_sparse(&data, &copy)?;
        let cp_sync = sync_files(&copy)?;
        copied = files_under(&copy)?.1;
        std::fs::remove_dir_all(&copy)?;

        let (from, to) = (pools[round % 2], pools[(round + 1) % 2]);
        let (prepare, prepare_cpu) = rb.timed_cpu(&["migration", "prepare", from, to])?;
        let (execute, execute_cpu) = rb.timed_cpu(&["migration", "execute", to])?;
        let (commit, commit_cpu) = rb.timed_cpu(&["migration", "commit", to])?;
        let rb_sync = sync_files(&data)?;
        after = files_under(&data)?.1;
        let snaps = rb.run(&["snap", "ls", to])?;
        if !snaps.contains("s1") {
            bail!("the migrated image lost its snapshot s1:\n{snaps}");
        }
        rounds.push([prepare, execute, commit, rb_sync, cp, cp_sync]);
        cpu.push([prepare_cpu + execute_cpu + commit_cpu, cp_cpu]);
    }
    let med = |i: usize| median(rounds.iter().map(|r| r[i]).collect());
    let total = |r: &[Duration; 6]| r[0] + r[1] + r[2];
    let rb_total = median(rounds.iter().map(total).collect());
    let rb_durable = median(rounds.iter().map(|r| total(r) + r[3]).collect());
    let cp_durable = median(rounds.iter().map(|r| r[4] + r[5]).collect());
    println!(
        "\nbench same-store: 4 GiB image, 3 GiB written + snapshot + 512 MiB rewritten ({} object files, {:.2} GiB allocated), to the other pool and back, page cache warm, median of {ROUNDS}",
        files.len(),
        gib(before)
    );
    println!(
        "  rbdm   prepare {:.2} s + execute {:.2} s + commit {:.2} s = {:.2} s   (+ fsync of its files {:.2} s)   allocated after {:.2} GiB",
        secs(med(0)),
        secs(med(1)),
        secs(med(2)),
        secs(rb_total),
        secs(med(3)),
        gib(after)
    );
    println!(
        "  peer   cp -r --sparse=always of data/ {:.2} s   (+ fsync of its files {:.2} s)   allocated {:.2} GiB",
        secs(med(4)),
        secs(med(5)),
        gib(copied)
    );
    let each: Vec<String> = rounds
        .iter()
        .map(|r| format!("{:.2}/{:.2}", secs(total(r)), secs(r[4])))
        .collect();
    println!(
        "  ratio  {:.2}x as run, {:.2}x with both fsynced   (rounds, rbdm/cp s: {})",
        secs(rb_total) / secs(med(4)),
        secs(rb_durable) / secs(cp_durable),
        each.join(", ")
    );
    let rb_cpu = median(cpu.iter().map(|c| c[0]).collect());
    let cp_cpu = median(cpu.iter().map(|c| c[1]).collect());
    println!(
        "  cpu    rbdm (prepare + execute + commit) {:.2} s, cp {:.2} s: ratio {:.2}x (user + system, less disturbed by other load)",
        secs(rb_cpu),
        secs(cp_cpu),
        secs(rb_cpu) / secs(cp_cpu)
    );
    Ok(())
}

const ROUNDS: usize = 3;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// IOPS of the plain image, then of DST, on the same window.
fn pair(plain: &Export, dst: &Export, w: Window, count: u64) -> Result<(f64, f64)> {
    Ok((plain.read_iops(w, count)?, dst.read_iops(w, count)?))
}

/// `pair` twice, the better run of each side (for states that stay put while measured).
fn best_pair(plain: &Export, dst: &Export, w: Window, count: u64) -> Result<(f64, f64)> {
    let (p1, d1) = pair(plain, dst, w, count)?;
    let (p2, d2) = pair(plain, dst, w, count)?;
    Ok((p1.max(p2), d1.max(d2)))
}

/// One row of the live-reads table: DST's IOPS against the plain image's on the same window.
fn read_row(what: &str, (plain, iops): (f64, f64)) {
    println!(
        "  {what:<44} {iops:>8.0} IOPS   plain {plain:>8.0} IOPS   ratio {:.2}x",
        iops / plain
    );
}

const READS_WHOLE: u64 = 40_000;
const READS_WINDOW: u64 = 20_000;
/// Untimed reads on each export first, so no figure pays for first opens.
const WARM_UP: u64 = 4_000;
/// Slow enough that `execute` of 1 GiB runs for about a minute, while the reads take seconds.
const LIMIT: &str = "16M";

/// 4 KiB random reads through NBD on a migration destination in each state, against a plain
/// image in the same store; then the source requests one uncopied read costs, counted.
pub fn reads_during_execute(rbdm: &Path) -> Result<()> {
    if !util::have("qemu-img") {
        bail!("bench live-reads needs qemu-img (Debian: qemu-utils)");
    }
    let dir = util::scratch("bench-live-reads")?;
    let rb = Rbdm::new(rbdm, &dir.join("store"));
    for image in ["plain", "src"] {
        rb.run(&["create", "--size", "1G", image])?;
        rb.fill(image, "4M", "1G")?;
    }
    rb.run(&["migration", "prepare", "src", "dst"])?;

    let whole = Window {
        offset: 0,
        len: 1 << 30,
    };
    // The copy goes in object order: the first window is copied early, the last one late.
    let first = Window {
        offset: 0,
        len: 64 * MIB,
    };
    let last = Window {
        offset: (1 << 30) - 64 * MIB,
        len: 64 * MIB,
    };
    // Both exports stay up throughout, and each DST figure is taken right after the plain
    // image's on the same window, so a change in the machine's load hits both alike.
    let plain = rb.export("plain", &dir.join("plain.sock"))?;
    let dst = rb.export("dst", &dir.join("dst.sock"))?;
    for e in [&plain, &dst] {
        e.read_iops(whole, WARM_UP)?;
    }
    let prepared = best_pair(&plain, &dst, whole, READS_WHOLE)?;

    let mut exec = rb.cmd(&["migration", "execute", "dst", "--bandwidth-limit", LIMIT]);
    exec.stdout(Stdio::null()).stderr(Stdio::null());
    let mut exec = Guard(
        exec.spawn()
            .context("cannot start rbdm migration execute")?,
    );
    let started = Instant::now();
    // Wait until the watermark is past the first window (every object below it copied).
    let past_first = (100 * (first.offset + first.len)).div_ceil(1 << 30) + 1;
    while rb.percent("dst")? < past_first {
        if let Ok(Some(status)) = exec.0.try_wait() {
            bail!("rbdm migration execute exited early: {status}");
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("rbdm migration execute did not get past the first 64 MiB in 120 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let copied = best_pair(&plain, &dst, first, READS_WINDOW)?;
    let uncopied = best_pair(&plain, &dst, last, READS_WINDOW)?;
    let mixed = pair(&plain, &dst, whole, READS_WHOLE)?;
    // The uncopied window must have stayed uncopied: execute still running, well short of it
    // (the watermark may trail by the objects in flight and one checkpoint interval).
    let at = rb.percent("dst")?;
    if exec.0.try_wait()?.is_some() || at > 80 {
        bail!("execute got too far ({at}%) while the reads ran: raise READS_* or lower LIMIT");
    }
    exec.stop();
    let resume = rb.timed(&["migration", "execute", "dst"])?;
    let executed = best_pair(&plain, &dst, whole, READS_WHOLE)?;
    drop(dst);
    drop(plain);

    println!("\nbench live-reads: 1 GiB images, 4 KiB random reads over NBD (Unix socket), qemu-img bench -d 16, same store, same run, best of 2");
    read_row("DST prepared (all uncopied)", prepared);
    read_row(
        &format!("DST executing ({LIMIT}/s), copied [0, 64M)"),
        copied,
    );
    read_row("DST executing, uncopied [960M, 1G)", uncopied);
    read_row("DST executing, whole image (mixed, one run)", mixed);
    read_row("DST executed (all copied)", executed);
    println!(
        "  (execute was at {at}% after those reads; stopped and resumed unlimited: {:.2} s)",
        secs(resume)
    );
    source_requests(&rb, &dir)
}

const COUNTED_READS: u64 = 5_000;

/// An import-only DST over a raw file on nginx, prepared: N uncopied 4 KiB reads through NBD
/// must cost N range requests of 4 KiB each.
fn source_requests(rb: &Rbdm, dir: &Path) -> Result<()> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    let raw = www.join("disk.raw");
    util::full_raw(&raw, 1 << 30)?;
    let log = dir.join("access.log");
    let web = rbdm_tests::servers::nginx_logged(&www, Some(&log));
    let spec = format!(
        r#"{{"type":"raw","stream":{{"type":"http","url":"{}"}}}}"#,
        web.url("disk.raw")
    );
    rb.run(&[
        "migration",
        "prepare",
        "--import-only",
        "--source-spec",
        &spec,
        "imp",
    ])?;
    let imp = rb.export("imp", &dir.join("imp.sock"))?;
    let whole = Window {
        offset: 0,
        len: 1 << 30,
    };
    // The first reads also open the source (a probe request): keep them out of the count.
    imp.read_iops(whole, 16)?;
    let (n0, b0) = access_log(&log)?;
    let iops = imp.read_iops(whole, COUNTED_READS)?;
    let (n1, b1) = access_log(&log)?;
    drop(imp);
    let per_read = (n1 - n0) as f64 / COUNTED_READS as f64;
    let bytes_per_read = (b1 - b0) as f64 / COUNTED_READS as f64;
    println!(
        "  import-only DST over http (nginx), prepared: {COUNTED_READS} reads -> {} requests, {:.3} requests/read, {bytes_per_read:.0} bytes/read, {iops:.0} IOPS",
        n1 - n0,
        per_read
    );
    if per_read > 1.02 || bytes_per_read > BLOCK as f64 * 1.02 {
        bail!(
            "an uncopied 4 KiB read costs {per_read:.3} source requests and {bytes_per_read:.0} bytes: more than one source read"
        );
    }
    if per_read < 0.98 {
        bail!("only {per_read:.3} requests per read: the reads did not reach the source, the count proves nothing");
    }
    Ok(())
}

/// Requests in nginx's access log (combined format) and the body bytes they sent.
fn access_log(log: &Path) -> Result<(u64, u64)> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("cannot read {}", log.display()))?;
    let mut requests = 0;
    let mut bytes = 0;
    for line in text.lines() {
        requests += 1;
        // `... "GET /disk.raw HTTP/1.1" 206 4096 "-" "ureq/..."`: status, then bytes sent.
        let sent = line
            .split('"')
            .nth(2)
            .and_then(|s| s.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u64>().ok())
            .with_context(|| format!("unexpected access log line: {line}"))?;
        bytes += sent;
    }
    Ok((requests, bytes))
}
