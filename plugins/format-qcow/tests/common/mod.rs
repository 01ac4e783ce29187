//! Shared helpers: a local file stream, qemu-img/qemu-io wrappers, and comparisons of what the
//! decoder returns against what QEMU itself produces.
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, ensure, Context};
use rbdm_format_qcow::QcowImage;
use rbdm_registry::conformance::{self, SnapRules};
use rbdm_registry::{ExtentState, Point, SnapExtent, SourceError, SourceImage, Stream};

/// Request counters shared by a stream and every stream opened relative to it.
#[derive(Default)]
pub struct Counters {
    pub reads: AtomicU64,
    pub bytes: AtomicU64,
}

/// Positional reads of a local file; `open_relative` resolves a path below the same directory.
pub struct FileStream {
    path: PathBuf,
    file: File,
    size: u64,
    pub counters: Arc<Counters>,
}

impl FileStream {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Self::open_counted(path, Arc::new(Counters::default()))
    }

    pub fn open_counted(path: &Path, counters: Arc<Counters>) -> anyhow::Result<Self> {
        let path = path
            .canonicalize()
            .with_context(|| format!("{}", path.display()))?;
        let file = File::open(&path)?;
        let size = file.metadata()?.len();
        Ok(FileStream {
            path,
            file,
            size,
            counters,
        })
    }
}

impl Stream for FileStream {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> rbdm_registry::Result<()> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.size)
        {
            return Err(SourceError::io(
                format!("{}: read past end", self.describe()),
                std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            ));
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| SourceError::io(format!("{}: read at {offset}", self.describe()), e))
    }

    fn open_relative(&self, name: &str) -> rbdm_registry::Result<Box<dyn Stream>> {
        let rel = Path::new(name);
        if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(SourceError::PermissionDenied(format!(
                "{name:?} escapes the directory"
            )));
        }
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        let path = dir.join(rel);
        if !path.exists() {
            return Err(SourceError::NotFound(format!(
                "{} does not exist",
                path.display()
            )));
        }
        FileStream::open_counted(&path, self.counters.clone())
            .map(|s| Box::new(s) as Box<dyn Stream>)
            .map_err(|e| SourceError::Invalid(e.to_string()))
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

pub fn open(path: &Path) -> anyhow::Result<QcowImage> {
    Ok(rbdm_format_qcow::open(Box::new(FileStream::open(path)?))?)
}

fn run(cmd: &str, args: &[&str], dir: &Path) -> anyhow::Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .with_context(|| cmd.to_string())?;
    if !out.status.success() {
        bail!(
            "{cmd} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `qemu-img ARGS` in `dir` (so relative backing names stay relative).
pub fn qemu_img(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    run("qemu-img", args, dir)
}

/// `qemu-img create -f qcow2 -o OPTS NAME SIZE` in `dir`.
pub fn create_qcow2(dir: &Path, name: &str, opts: &str, size: &str) -> anyhow::Result<()> {
    qemu_img(dir, &["create", "-f", "qcow2", "-o", opts, name, size])?;
    Ok(())
}

/// `qemu-img convert -f raw -O FORMAT OPTS... SRC DST` in `dir`.
pub fn convert_raw(
    dir: &Path,
    format: &str,
    opts: &[&str],
    src: &str,
    dst: &str,
) -> anyhow::Result<()> {
    let mut args = vec!["convert", "-f", "raw", "-O", format];
    args.extend_from_slice(opts);
    args.extend([src, dst]);
    qemu_img(dir, &args)?;
    Ok(())
}

/// `qemu-io -f FMT -c CMD... IMG` in `dir`.
pub fn qemu_io(dir: &Path, fmt: &str, img: &str, cmds: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(img);
    let out = run("qemu-io", &args, dir)?;
    // qemu-io reports some failures on stdout with a zero exit status.
    ensure!(!out.contains("failed"), "qemu-io {cmds:?}: {out}");
    Ok(())
}

/// A deterministic byte generator (xorshift), so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A sparse raw file of `size` bytes with random data in `regions`.
pub fn random_raw(path: &Path, size: u64, regions: &[(u64, u64)], seed: u64) -> anyhow::Result<()> {
    let f = File::create(path)?;
    f.set_len(size)?;
    let mut rng = Rng(seed | 1);
    for &(off, len) in regions {
        let len = len.min(size.saturating_sub(off));
        let mut buf = vec![0u8; len as usize];
        rng.fill(&mut buf);
        f.write_all_at(&buf, off)?;
    }
    Ok(())
}

/// A file of random bytes for `qemu-io -c 'write -s FILE ...'`.
pub fn pattern_file(path: &Path, len: usize, seed: u64) -> anyhow::Result<()> {
    let mut buf = vec![0u8; len];
    Rng(seed | 1).fill(&mut buf);
    File::create(path)?.write_all(&buf)?;
    Ok(())
}

/// `qemu-img convert -O raw` of the image (at a snapshot when given) into `out`.
pub fn qemu_raw(
    dir: &Path,
    img: &str,
    fmt: &str,
    snapshot: Option<&str>,
    out: &str,
) -> anyhow::Result<PathBuf> {
    let snap_opt = snapshot.map(|s| format!("snapshot.name={s}"));
    let mut args = vec!["convert", "-f", fmt];
    if let Some(s) = &snap_opt {
        args.push("-l");
        args.push(s);
    }
    args.extend(["-O", "raw", img, out]);
    qemu_img(dir, &args)?;
    Ok(dir.join(out))
}

/// Reads the whole point through the decoder in chunks and compares with QEMU's raw output;
/// then a few hundred reads at random unaligned offsets and lengths.
pub fn assert_same_bytes(
    img: &QcowImage,
    point: Point,
    raw: &Path,
    seed: u64,
) -> anyhow::Result<()> {
    let f = File::open(raw)?;
    let raw_len = f.metadata()?.len();
    let size = match point {
        Point::Head => img.size(),
        Point::Snap(i) => img.snapshots()[i].size,
    };
    // `qemu-img convert -l` of a snapshot smaller than the head pads it to the head's size.
    ensure!(
        raw_len >= size,
        "{point:?}: qemu says {raw_len} bytes, we say {size}"
    );
    ensure_zero(&f, size, raw_len - size).context("qemu's bytes past the snapshot size")?;
    let chunk = 1 << 20;
    let mut ours = vec![0u8; chunk];
    let mut theirs = vec![0u8; chunk];
    let mut off = 0;
    while off < size {
        let n = chunk.min((size - off) as usize);
        img.read(point, off, &mut ours[..n])?;
        f.read_exact_at(&mut theirs[..n], off)?;
        compare(point, off, &ours[..n], &theirs[..n])?;
        off += n as u64;
    }
    let mut rng = Rng(seed | 1);
    for _ in 0..300 {
        let off = rng.below(size);
        let n = (1 + rng.below(300_000)).min(size - off) as usize;
        img.read(point, off, &mut ours[..n.min(chunk)])?;
        f.read_exact_at(&mut theirs[..n.min(chunk)], off)?;
        compare(point, off, &ours[..n.min(chunk)], &theirs[..n.min(chunk)])?;
    }
    // Past the end reads as zeros.
    let mut tail = [0xffu8; 100];
    img.read(point, size, &mut tail)?;
    ensure!(
        tail.iter().all(|&b| b == 0),
        "{point:?}: bytes past the end are not zero"
    );
    Ok(())
}

fn compare(point: Point, off: u64, ours: &[u8], theirs: &[u8]) -> anyhow::Result<()> {
    if let Some(i) = ours.iter().zip(theirs).position(|(a, b)| a != b) {
        bail!(
            "{point:?}: byte at {} differs: ours {:#04x}, qemu {:#04x}",
            off + i as u64,
            ours[i],
            theirs[i]
        );
    }
    Ok(())
}

/// QEMU's `data: true` ranges, merged.
pub fn qemu_data_ranges(dir: &Path, img: &str, fmt: &str) -> anyhow::Result<Vec<(u64, u64)>> {
    let out = qemu_img(dir, &["map", "-f", fmt, "--output=json", img])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let mut ranges = Vec::new();
    for e in v.as_array().context("map output")? {
        if e["data"].as_bool() == Some(true) {
            push_range(
                &mut ranges,
                e["start"].as_u64().context("start")?,
                e["length"].as_u64().context("length")?,
            );
        }
    }
    Ok(ranges)
}

/// Whether QEMU's map shows a cluster with the given flags (to prove a test image holds what
/// the test is about).
pub fn qemu_map_has(
    dir: &Path,
    img: &str,
    fmt: &str,
    pred: &dyn Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<bool> {
    let out = qemu_img(dir, &["map", "-f", fmt, "--output=json", img])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v.as_array().context("map output")?.iter().any(pred))
}

fn push_range(ranges: &mut Vec<(u64, u64)>, off: u64, len: u64) {
    if len == 0 {
        return;
    }
    if let Some(last) = ranges.last_mut() {
        if last.0 + last.1 == off {
            last.1 += len;
            return;
        }
    }
    ranges.push((off, len));
}

/// Replaces `Unchanged` by the state it inherits from the previous point.
pub fn resolve(points: &[Vec<SnapExtent>]) -> anyhow::Result<Vec<Vec<(u64, u64, ExtentState)>>> {
    let mut out: Vec<Vec<(u64, u64, ExtentState)>> = Vec::new();
    for (p, extents) in points.iter().enumerate() {
        let mut resolved = Vec::new();
        for e in extents {
            if e.state != ExtentState::Unchanged {
                resolved.push((e.offset, e.len, e.state));
                continue;
            }
            ensure!(p > 0, "Unchanged at the first point: {e:?}");
            let prev = &out[p - 1];
            let mut covered = e.offset;
            for &(o, l, s) in prev {
                let from = o.max(e.offset);
                let to = (o + l).min(e.offset + e.len);
                if from < to {
                    ensure!(
                        from == covered,
                        "point {p}: Unchanged {e:?} not covered by the previous point"
                    );
                    resolved.push((from, to - from, s));
                    covered = to;
                }
            }
            ensure!(
                covered == e.offset + e.len,
                "point {p}: Unchanged {e:?} beyond the previous point"
            );
        }
        out.push(resolved);
    }
    Ok(out)
}

pub fn data_ranges(resolved: &[(u64, u64, ExtentState)]) -> Vec<(u64, u64)> {
    let mut ranges = Vec::new();
    for &(o, l, s) in resolved {
        if s == ExtentState::Data {
            push_range(&mut ranges, o, l);
        }
    }
    ranges
}

fn ensure_zero(f: &File, off: u64, len: u64) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = off;
    while pos < off + len {
        let n = (buf.len() as u64).min(off + len - pos) as usize;
        f.read_exact_at(&mut buf[..n], pos)?;
        if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
            bail!(
                "reported zero but byte {} is {:#04x}",
                pos + i as u64,
                buf[i]
            );
        }
        pos += n as u64;
    }
    Ok(())
}

/// Full check of one image: bytes of every point against `qemu-img convert`, `list_snaps`
/// against those bytes, and the head's data ranges against `qemu-img map`.
pub fn check_image(dir: &Path, name: &str, fmt: &str) -> anyhow::Result<QcowImage> {
    let img = open(&dir.join(name)).with_context(|| format!("opening {name}"))?;
    let mut raws = Vec::new();
    for (i, s) in img.snapshots().iter().enumerate() {
        let raw = qemu_raw(
            dir,
            name,
            fmt,
            Some(&s.name),
            &format!("{name}.snap{i}.raw"),
        )?;
        assert_same_bytes(&img, Point::Snap(i), &raw, i as u64 + 7)
            .with_context(|| format!("{name} snapshot {}", s.name))?;
        raws.push(raw);
    }
    let raw = qemu_raw(dir, name, fmt, None, &format!("{name}.raw"))?;
    assert_same_bytes(&img, Point::Head, &raw, 99).with_context(|| format!("{name} head"))?;
    raws.push(raw);
    // The registry's contract, against our reads, which were just compared with QEMU's.
    let window = img.size().max(1) + 12345;
    let lists = conformance::check_source(&img, window, SnapRules::MERGED)
        .with_context(|| format!("{name} list_snaps"))?;
    let resolved = resolve(&lists)?;
    let ours = data_ranges(resolved.last().context("head")?);
    let theirs = qemu_data_ranges(dir, name, fmt)?;
    ensure!(
        ours == theirs,
        "{name}: data ranges differ\n ours: {ours:?}\n qemu: {theirs:?}"
    );
    // `qemu-img map` has no snapshot option: map a copy whose head was reverted to it.
    for (i, s) in img.snapshots().iter().enumerate() {
        let copy = format!("{name}.at{i}");
        std::fs::copy(dir.join(name), dir.join(&copy))?;
        qemu_img(dir, &["snapshot", "-a", &s.name, &copy])?;
        let theirs = qemu_data_ranges(dir, &copy, fmt)?;
        let ours = data_ranges(&resolved[i]);
        ensure!(
            ours == theirs,
            "{name} at {}: data ranges differ\n ours: {ours:?}\n qemu: {theirs:?}",
            s.name
        );
        std::fs::remove_file(dir.join(&copy))?;
    }
    for r in raws {
        std::fs::remove_file(r)?;
    }
    Ok(img)
}
